"""imagingkit inside Jupyter: the server extension and the notebook helpers.

The extension (:class:`~imagingkit.jupyter.extension.ImagingkitApp`, enabled by
``pip install``) serves imagingkit's components at ``{base_url}imagingkit/`` of the
Jupyter server behind Jupyter's authentication (DESIGN.md D3). In a notebook,
:func:`base_urls` and :func:`connect` find them through the server running the kernel.

Importing this package does not import Jupyter Server; the extension module is loaded
by the server itself.
"""

from __future__ import annotations

from typing import Any

from imagingkit.jupyter.server_info import JupyterServer, base_urls, connect, current_server

__all__ = ["JupyterServer", "base_urls", "connect", "current_server"]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """The extension points Jupyter Server loads (``jpserver_extensions``)."""
    from imagingkit.jupyter.extension import ImagingkitApp

    return [{"module": "imagingkit.jupyter", "app": ImagingkitApp}]


def _load_jupyter_server_extension(serverapp: Any) -> Any:
    """Load the extension into *serverapp* (for loaders that ignore the app point)."""
    from imagingkit.jupyter.extension import ImagingkitApp

    return ImagingkitApp._load_jupyter_server_extension(serverapp)
