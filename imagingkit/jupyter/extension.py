"""The Jupyter server extension: imagingkit's components at ``{base_url}imagingkit/``.

``pip install imagingkit`` enables it (``jupyter-config/jupyter_server_config.d/
imagingkit.json``). It serves the same components as ``imagingkit serve`` (DESIGN.md D3),
each below ``{base_url}imagingkit/``: ``fhir/``, ``dicom-web/``, ``fhircast/``,
``iid/IHEInvokeImageDisplay`` and ``viewer/``, behind Jupyter's own authentication
(:mod:`imagingkit.jupyter.authentication`).

What is served depends on the configuration (traitlets, ``c.ImagingkitApp.<name>`` in a
Jupyter config file or ``--ImagingkitApp.<name>=…`` on the command line; each default
comes from an environment variable):

* ``sandbox`` (``IMAGINGKIT_SANDBOX=1``): the generated sandbox cohort of ``size``
  (``IMAGINGKIT_SANDBOX_SIZE``, default ``small``) and ``seed``;
* ``dicom_dir`` (``IMAGINGKIT_DICOM_DIR``): the user's own folder of Part-10 files;
* neither: only the FHIRcast hub and the built-in viewer (no data is generated unless
  asked for).

``data_dir`` defaults to ``$IMAGINGKIT_DATA_DIR`` as everywhere (:mod:`imagingkit.config`).
The components are built on a background thread after the server has started; until
they are ready their paths answer 503 with ``Retry-After``
(:mod:`imagingkit.jupyter.mount`). The server's shutdown closes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

import tornado.web
from jupyter_server.extension.application import ExtensionApp
from jupyter_server.utils import url_path_join
from traitlets import Bool, Enum, Int, Unicode, default

from imagingkit import __version__
from imagingkit.config import get_settings
from imagingkit.jupyter.authentication import is_open, jupyter_authenticated
from imagingkit.jupyter.mount import ComponentMount
from imagingkit.server.app import Component

__all__ = ["SIZES", "ImagingkitApp"]

SIZES = ("small", "default", "medium", "large")
_TRUE = {"1", "true", "yes", "on"}


def _wrap(mount: str, handler_class: type[Any]) -> type[Any]:
    return handler_class if is_open(mount, handler_class) else jupyter_authenticated(handler_class)


def _close_all(
    components: list[Component], log: logging.Logger | logging.LoggerAdapter[Any]
) -> None:
    for component in components:
        close = getattr(component, "close", None)
        if close is None:
            continue
        try:
            close()
        except Exception:  # one component failing to close must not keep the others open
            log.exception("imagingkit: closing %s failed", component.mount)


class ImagingkitApp(ExtensionApp):
    """imagingkit's FHIR, DICOMweb, FHIRcast, IID and viewer endpoints inside Jupyter."""

    name = "imagingkit"
    description = "imagingkit: FHIR, DICOMweb, FHIRcast, IID and a viewer inside Jupyter"
    version = __version__
    load_other_extensions = True

    sandbox = Bool(
        help="Serve the generated sandbox cohort (generated on first use, then cached). "
        "Default: $IMAGINGKIT_SANDBOX (1/true/yes/on)."
    ).tag(config=True)
    size = Enum(SIZES, help="Sandbox size. Default: $IMAGINGKIT_SANDBOX_SIZE, else 'small'.").tag(
        config=True
    )
    seed = Int(42, help="Sandbox seed: the same seed always gives the same data.").tag(config=True)
    dicom_dir = Unicode(
        help="Serve this folder of DICOM Part-10 files instead of the sandbox. "
        "Default: $IMAGINGKIT_DICOM_DIR."
    ).tag(config=True)
    data_dir = Unicode(
        help="Where sandbox data and indexes are kept. Default: $IMAGINGKIT_DATA_DIR, "
        "else $XDG_CACHE_HOME/imagingkit, else ~/.cache/imagingkit."
    ).tag(config=True)
    retry_after = Int(
        5, help="Seconds clients are asked to wait (Retry-After) while the data is prepared."
    ).tag(config=True)

    @default("sandbox")
    def _default_sandbox(self) -> bool:
        return os.environ.get("IMAGINGKIT_SANDBOX", "").strip().lower() in _TRUE

    @default("size")
    def _default_size(self) -> str:
        size = os.environ.get("IMAGINGKIT_SANDBOX_SIZE", "").strip() or "small"
        return size if size in SIZES else "small"

    @default("dicom_dir")
    def _default_dicom_dir(self) -> str:
        return os.environ.get("IMAGINGKIT_DICOM_DIR", "")

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return str(get_settings().data_dir)

    # --- lifecycle -------------------------------------------------------------------

    def initialize_handlers(self) -> None:
        """Register the mount (answering 503 until the components are ready)."""
        assert self.serverapp is not None, "initialize_handlers runs on a linked extension"
        web_app = self.serverapp.web_app
        prefix = url_path_join(web_app.settings.get("base_url", "/"), "imagingkit")
        self.mount = ComponentMount(web_app, prefix, wrap=_wrap, retry_after=self.retry_after)
        if self.sandbox and not self.dicom_dir:
            self.mount.info["sandbox"] = {"size": self.size, "seed": self.seed}
        elif self.dicom_dir:  # data, not the sandbox: kernels know before it is ready
            self.mount.info["dicom_dir"] = True
        self.components: list[Component] = []
        self._closed = False
        # tornado's add_handlers: Jupyter's override lints handler classes for
        # @web.authenticated and cannot take a router; every handler behind the mount
        # authenticates in prepare() (imagingkit.jupyter.authentication)
        tornado.web.Application.add_handlers(web_app, ".*$", [self.mount.rule()])

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        """Build the components on a thread once the server's event loop runs."""
        loop = asyncio.get_running_loop()
        thread = threading.Thread(
            target=self._build_in_background, args=(loop,), name="imagingkit-start", daemon=True
        )
        thread.start()

    def build_components(self) -> list[Component]:
        """Create the components for the configured data source (may take a while)."""
        from imagingkit.fhircast.hub import FhircastHub
        from imagingkit.server.serve import build_components
        from imagingkit.viewer import BuiltinViewer

        settings = get_settings(data_dir=self.data_dir or None)
        if not self.sandbox and not self.dicom_dir:
            return [BuiltinViewer(), FhircastHub()]
        return build_components(
            settings,
            sandbox=self.sandbox,
            dicom_dir=Path(self.dicom_dir) if self.dicom_dir else None,
            size=self.size,
            seed=self.seed,
        )

    def _build_in_background(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            components = self.build_components()
        except Exception as exc:
            self.log.exception("imagingkit could not start")
            message = str(exc) or type(exc).__name__
            with contextlib.suppress(RuntimeError):  # RuntimeError: the server stopped
                loop.call_soon_threadsafe(self.mount.fail, message)
            return
        try:
            loop.call_soon_threadsafe(self._install, components)
        except RuntimeError:  # the loop is closed: the server stopped meanwhile
            _close_all(components, self.log)

    def _install(self, components: list[Component]) -> None:
        if self._closed:
            _close_all(components, self.log)
            return
        self.components = components
        self.mount.install(components)
        mounts = ", ".join(self.mount.mounts)
        self.log.info("imagingkit ready at %s/ (%s)", self.mount.prefix, mounts)

    async def stop_extension(self) -> None:
        """Stop serving and close every component (websockets get 1001, stores close)."""
        self._closed = True
        mount = getattr(self, "mount", None)
        if mount is not None:
            mount.stop()
        components, self.components = getattr(self, "components", []), []
        _close_all(components, self.log)
        self.log.info("imagingkit stopped (%d components closed)", len(components))
