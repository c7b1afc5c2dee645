"""The sandbox a notebook works with: ``find_or_start()`` → its URLs and credential.

>>> from imagingkit.sandbox.running import find_or_start   # doctest: +SKIP
>>> sandbox = find_or_start(size="small")
>>> bridge = sandbox.connect()                      # FHIR + DICOMweb, with the credential
>>> ctx.bind(sandbox.hub_url, topic, token=sandbox.token)   # FHIRcast
>>> sandbox.stop()                                  # only stops a sandbox this kernel started

:func:`find_or_start` looks, in order, for

1. the sandbox of the Jupyter server running this kernel (``make demo``, Binder:
   ``IMAGINGKIT_SANDBOX=1 jupyter lab``), served at ``{base_url}imagingkit/`` behind
   Jupyter's token (:mod:`imagingkit.jupyter`); the notebook, the JupyterLab panel and
   every other client of that server then share one FHIRcast hub and one set of stores;
2. the ``imagingkit serve`` named by ``IMAGINGKIT_SERVER_URL``;
3. otherwise it starts the sandbox in this process, as :func:`start` does.

:func:`start` always starts the sandbox in this process: the same stores as
``imagingkit serve --sandbox`` (DESIGN.md D4), served by tornado on a background thread
and a free loopback port, so a script or a notebook needs no terminal and the kernel's own
event loop is left alone (DESIGN.md D2).
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from imagingkit.auth import AuthMap
from imagingkit.config import Settings, get_settings
from imagingkit.errors import ConfigError

if TYPE_CHECKING:
    from imagingkit.bridge import Bridge

__all__ = ["RunningSandbox", "find_or_start", "start"]

#: where a sandbox is served: by this process, by ``imagingkit serve``, by Jupyter
Where = Literal["kernel", "server", "jupyter"]

#: the environment variable naming an ``imagingkit serve`` base URL
SERVER_URL_VARIABLE = "IMAGINGKIT_SERVER_URL"


@dataclass
class RunningSandbox:
    """A running sandbox: its base URL and the credential its URLs need.

    Attributes
    ----------
    url : str
        Base URL without a trailing slash; the components are mounted below it
        (``/fhir``, ``/dicom-web``, ``/fhircast``, ``/iid``, ``/viewer``).
    where : {"kernel", "server", "jupyter"}
        Served by this process (:func:`start`), by the ``imagingkit serve`` of
        ``IMAGINGKIT_SERVER_URL``, or by the Jupyter server running this kernel.
    auth : AuthMap or None
        Credentials bound to the sandbox's origin (Jupyter's token), ``None`` when its
        URLs need none. Never sent to another origin (DESIGN.md D7).
    token : str or None
        The bearer token for the FHIRcast hub (FHIRcast 3.0.0 ``2-2``), ``None`` when the
        hub needs none.
    """

    url: str
    _stack: contextlib.ExitStack | None = field(default=None, repr=False)
    _: KW_ONLY
    where: Where = "kernel"
    auth: AuthMap | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    @property
    def fhir_url(self) -> str:
        """The FHIR R4 base (no trailing slash)."""
        return f"{self.url}/fhir"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb base (no trailing slash)."""
        return f"{self.url}/dicom-web"

    @property
    def hub_url(self) -> str:
        """The FHIRcast hub's ``hub.url`` (FHIRcast 3.0.0 ``2-1``; no trailing slash)."""
        return f"{self.url}/fhircast"

    def headers_for(self, url: str) -> dict[str, str]:
        """The ``Authorization`` header for *url*: empty for any other origin, or none needed.

        For plain HTTP requests (``requests.get(url, headers=sandbox.headers_for(url))``).
        """
        return self.auth.headers_for(url) if self.auth is not None else {}

    def connect(self, **options: Any) -> Bridge:
        """:func:`imagingkit.connect` to this sandbox's FHIR store, with its credential.

        DICOMweb is found through each ImagingStudy's Endpoint, on the same origin, so
        the same credential applies. *options* are passed to :func:`imagingkit.connect`.
        """
        import imagingkit

        options.setdefault("auth", self.auth)
        return imagingkit.connect(self.fhir_url, **options)

    def stop(self) -> None:
        """Stop serving and close the stores, if this process started them.

        A sandbox of the Jupyter server or of ``IMAGINGKIT_SERVER_URL`` is left running.
        """
        if self._stack is not None:
            self._stack.close()

    def __enter__(self) -> RunningSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(
    *,
    size: str = "small",
    seed: int = 42,
    data_dir: str | Path | None = None,
    settings: Settings | None = None,
) -> RunningSandbox:
    """Generate (once) and serve the sandbox on ``127.0.0.1`` in a background thread.

    Parameters
    ----------
    size : {"small", "default", "medium", "large"}
    seed : int
        The same seed always gives the same data.
    data_dir : path, optional
        Where the data is kept (default: ``settings.data_dir``, ``$IMAGINGKIT_DATA_DIR``).
    """
    from imagingkit.sandbox.fhir.testing import serving
    from imagingkit.server.serve import build_components

    settings = settings or get_settings(data_dir=data_dir)
    components = build_components(settings, sandbox=True, size=size, seed=seed)
    stack = contextlib.ExitStack()
    for component in components:
        close = getattr(component, "close", None)
        if close is not None:
            stack.callback(close)
    try:
        origin = stack.enter_context(serving(components, timeout=30))
    except BaseException:
        stack.close()
        raise
    return RunningSandbox(origin, stack)


def _of_jupyter_server(wait: float) -> RunningSandbox | None:
    """The sandbox of the Jupyter server running this kernel, once ready; None if none.

    Raises
    ------
    SandboxError
        The extension's sandbox failed to start, or was not ready within *wait* seconds.
    """
    try:
        from imagingkit.jupyter.server_info import current_server

        server = current_server()
    except (ImportError, ConfigError):  # no Jupyter Server installed, or not its kernel
        return None
    try:
        status = server.status()
    except ConfigError as error:
        if error.status != 404:  # 404: the server runs no imagingkit extension
            warnings.warn(f"the sandbox of this Jupyter server is not used: {error}", stacklevel=3)
        return None
    state = status.get("status")
    endpoints = status.get("endpoints", {})
    serves_data = "sandbox" in status or "dicom_dir" in status or "fhir" in endpoints
    if not serves_data and state != "failed":
        return None  # the extension serves only the FHIRcast hub and the viewer
    if state == "starting":  # the first run generates the data: say why the cell waits
        print(
            f"Waiting (at most {wait:g} s) for the sandbox of this Jupyter server: "
            f"{status.get('detail', state)}",
            flush=True,
        )
        started = time.monotonic()
        server.base_urls(wait)
        print(f"The sandbox is ready ({time.monotonic() - started:.0f} s).", flush=True)
    elif state != "ready":
        server.base_urls(wait)  # raises SandboxError naming the cause ("failed")
    return RunningSandbox(
        server.imagingkit_url, where="jupyter", auth=server.auth(), token=server.token or None
    )


def find_or_start(
    *,
    size: str = "small",
    seed: int = 42,
    data_dir: str | Path | None = None,
    settings: Settings | None = None,
    wait: float = 300.0,
) -> RunningSandbox:
    """Return the sandbox this notebook should use, starting one only if there is none.

    In order: the sandbox of the Jupyter server running this kernel (its Jupyter Server
    extension with ``IMAGINGKIT_SANDBOX=1``, or ``IMAGINGKIT_DICOM_DIR`` for a folder of
    one's own; waiting while it prepares the data), the ``imagingkit serve`` at
    ``$IMAGINGKIT_SERVER_URL``, else :func:`start`. A Jupyter server whose extension serves
    no data (only the FHIRcast hub and the viewer) is passed over.

    Parameters
    ----------
    size, seed, data_dir, settings
        For :func:`start` only; a running sandbox is used whatever its size.
    wait : float
        Seconds to wait for the Jupyter server's sandbox to be ready (its first run
        generates the data); a message says that it is waiting.

    Raises
    ------
    SandboxError
        The Jupyter server's sandbox failed to start or was not ready within *wait* s;
        no other sandbox is started in its place.
    """
    found = _of_jupyter_server(wait)
    if found is not None:
        return found
    server_url = os.environ.get(SERVER_URL_VARIABLE, "").strip()
    if server_url:
        return RunningSandbox(server_url.rstrip("/"), where="server")
    return start(size=size, seed=seed, data_dir=data_dir, settings=settings)
