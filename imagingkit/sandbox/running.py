"""Start the sandbox inside this process, for notebooks: ``start()`` → FHIR + DICOMweb URLs.

>>> from imagingkit.sandbox.running import start          # doctest: +SKIP
>>> sandbox = start()            # generates the data on first use, then reuses it
>>> bridge = imagingkit.connect(sandbox.fhir_url)
>>> sandbox.stop()

The same stores as ``imagingkit serve --sandbox`` (DESIGN.md D4), served by tornado on a
background thread and a free loopback port, so a notebook needs no terminal (Binder) and
its kernel's own event loop is left alone (DESIGN.md D2).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from imagingkit.config import Settings, get_settings

__all__ = ["RunningSandbox", "start"]


@dataclass
class RunningSandbox:
    """A sandbox served on loopback by this process."""

    url: str
    _stack: contextlib.ExitStack = field(repr=False)

    @property
    def fhir_url(self) -> str:
        """The FHIR R4 base (no trailing slash)."""
        return f"{self.url}/fhir"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb base (no trailing slash)."""
        return f"{self.url}/dicom-web"

    def stop(self) -> None:
        """Stop serving and close the stores."""
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
