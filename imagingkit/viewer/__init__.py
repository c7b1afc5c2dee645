"""The built-in viewer page at ``{base}viewer/`` (DESIGN.md D3).

A small, dependency-free page (HTML, JS and CSS shipped in ``static/``; no CDN) that
lists a study's series with QIDO-RS (PS3.18 §10.6) and pages through their frames as
WADO-RS rendered images (PS3.18 §9.5) with window presets (lung, mediastinum, bone,
brain, abdomen) and wheel/keyboard scrolling. Open ``/viewer/?study=<uid>[,<uid>]
[&series=<uid>]``; without a study it lists the server's studies.

By default the page talks to this server's own ``dicom-web`` mount; another DICOMweb
server can be configured (it must then send CORS headers).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import tornado.web

from imagingkit.errors import ConfigError
from imagingkit.server.app import RouteList
from imagingkit.server.base import BaseHandler

__all__ = ["STATIC_DIR", "BuiltinViewer"]

#: the page's assets, shipped in the package
STATIC_DIR = Path(__file__).parent / "static"


class BuiltinViewer:
    """The built-in viewer as an app :class:`~imagingkit.server.app.Component`.

    Parameters
    ----------
    dicomweb_base : str, optional
        The DICOMweb root the page queries. Default: ``../dicom-web`` relative to the
        page, i.e. this server's own store.
    """

    mount = "viewer"

    def __init__(self, dicomweb_base: str | None = None) -> None:
        if dicomweb_base is not None:
            parts = urlsplit(dicomweb_base)
            if parts.scheme not in ("http", "https", "") or parts.query or parts.fragment:
                raise ConfigError(f"viewer DICOMweb base {dicomweb_base!r} is not an http(s) URL")
        self.dicomweb_base = dicomweb_base

    def routes(self, prefix: str) -> RouteList:
        """Serve the page at ``{prefix}/`` and its assets below ``{prefix}/static/``."""
        page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
        page = page.replace("__DICOMWEB_BASE__", html.escape(self.dicomweb_base or "../dicom-web"))
        connect = "'self'"
        if self.dicomweb_base and urlsplit(self.dicomweb_base).netloc:
            parts = urlsplit(self.dicomweb_base)
            connect += f" {parts.scheme}://{parts.netloc}"
        csp = (
            f"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
            f"connect-src {connect}; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'self'"
        )
        return [
            (rf"{prefix}", AddSlashHandler, {}),
            (rf"{prefix}/", ViewerPageHandler, {"page": page, "csp": csp}),
            (rf"{prefix}/static/(.*)", ViewerAssetHandler, {"path": str(STATIC_DIR)}),
        ]


class AddSlashHandler(BaseHandler):
    """``{mount}`` → ``{mount}/``, keeping the query (relative asset URLs need the slash)."""

    def get(self) -> None:
        query = f"?{self.request.query}" if self.request.query else ""
        self.redirect(f"{self.request.path}/{query}", status=301)


class ViewerPageHandler(BaseHandler):
    """Serves the viewer page."""

    cors_methods = "GET, OPTIONS"

    def initialize(self, page: str, csp: str) -> None:
        self.page = page
        self.csp = csp

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", self.csp)
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-cache")
        self.finish(self.page)


class ViewerAssetHandler(tornado.web.StaticFileHandler):
    """Serves ``static/`` with explicit types and ``nosniff``."""

    _TYPES: ClassVar[dict[str, str]] = {
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
    }

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")

    def get_content_type(self) -> str:
        suffix = Path(self.absolute_path or "").suffix
        return self._TYPES.get(suffix) or super().get_content_type()

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")
