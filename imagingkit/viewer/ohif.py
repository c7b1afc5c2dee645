"""Serve a built OHIF viewer (npm ``@ohif/app``'s ``dist/``) against this server's DICOMweb.

``imagingkit serve --ohif DIR`` adds :class:`OHIFApp`. A prebuilt OHIF refers to its
files by absolute ``/`` paths (``index.html``, webpack's public path), so those files
are served from the **origin root**, while OHIF's pages live under ``/ohif/`` (its
``routerBasename``), out of the way of imagingkit's own ``/viewer/``:

* ``/ohif/``, ``/ohif/viewer?StudyInstanceUIDs=…`` and every other page below
  ``/ohif/`` — ``index.html`` (history fallback for OHIF's client-side routes);
* ``/app-config.js`` — the package's own configuration followed by overrides that set
  the router base and make a single DICOMweb data source point at this server's
  ``dicom-web`` (or another DICOMweb root) with the settings OHIF needs for it
  (``notes/reference-servers.md``);
* files of ``DIR`` at the root, with their proper media types (``.wasm`` as
  ``application/wasm``, JS as ``text/javascript``); a missing file is 404, never
  ``index.html``. Paths of the other mounts (``/dicom-web/…``) are never answered here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import tornado.web

from imagingkit.errors import ConfigError
from imagingkit.server.app import RouteList
from imagingkit.server.base import BaseHandler
from imagingkit.viewer import AddSlashHandler

__all__ = ["OHIFApp", "ohif_config_overrides"]

_MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".html": "text/html; charset=utf-8",
}


def ohif_config_overrides(dicomweb_base: str | None = None) -> str:
    """Return JavaScript that points ``window.config`` at one DICOMweb data source.

    Parameters
    ----------
    dicomweb_base : str, optional
        The DICOMweb root; default this page's origin + ``/dicom-web``.
    """
    configuration = {
        "friendlyName": "imagingkit DICOMweb",
        "name": "imagingkit",
        "qidoSupportsIncludeField": True,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": True,
        "supportsFuzzyMatching": False,
        "supportsWildcard": True,
        "staticWado": False,
        "singlepart": "bulkdata,video",
        "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
        "omitQuotationForMultipartRequest": True,
    }
    root = json.dumps(dicomweb_base.rstrip("/")) if dicomweb_base else "null"
    return f"""
// imagingkit: one DICOMweb data source on this server (imagingkit.viewer.ohif)
(function (config) {{
  var root = {root} || window.location.origin + "/dicom-web";
  var configuration = {json.dumps(configuration)};
  configuration.qidoRoot = root;
  configuration.wadoRoot = root;
  configuration.wadoUriRoot = root;
  config.routerBasename = "/ohif";
  config.defaultDataSourceName = "imagingkit";
  config.dataSources = [{{
    namespace: "@ohif/extension-default.dataSourcesModule.dicomweb",
    sourceName: "imagingkit",
    configuration: configuration
  }}];
  config.investigationalUseDialog = {{ option: "never" }};
  config.showCPUFallbackMessage = false;
  config.showWarningMessageForCrossOrigin = false;
  config.httpErrorHandler = function (error) {{
    console.warn("DICOMweb request failed", error && error.status);
  }};
}})(window.config = window.config || {{}});
"""


class OHIFApp:
    """A built OHIF app: pages below ``/ohif/``, files at the root (a :class:`Component`).

    Parameters
    ----------
    dist : path
        The built app: the folder holding ``index.html`` and ``app-config.js``
        (``dist/`` of the npm package ``@ohif/app``).
    dicomweb_base : str, optional
        DICOMweb root OHIF queries; default this server's ``/dicom-web``.
    reserved : sequence of str
        Mounts of the other components; OHIF never answers below them.

    Raises
    ------
    ConfigError
        If *dist* does not look like a built OHIF app.
    """

    mount = "ohif"

    def __init__(
        self,
        dist: str | Path,
        *,
        dicomweb_base: str | None = None,
        reserved: Sequence[str] = ("dicom-web", "fhir", "fhircast", "iid", "viewer"),
    ) -> None:
        self.dist = Path(dist).expanduser().resolve()
        for name in ("index.html", "app-config.js"):
            if not (self.dist / name).is_file():
                raise ConfigError(
                    f"--ohif {str(self.dist)!r} is not a built OHIF app (no {name}); "
                    "give the dist/ folder of the npm package @ohif/app"
                )
        self.dicomweb_base = dicomweb_base
        self.reserved = tuple(reserved)

    def routes(self, prefix: str) -> RouteList:
        """Serve OHIF's pages below ``{prefix}/`` and its files at the root."""
        if prefix != f"/{self.mount}":
            raise ConfigError("OHIF must be served at the origin root (use base URL '/')")
        index = (self.dist / "index.html").read_bytes()
        config = (self.dist / "app-config.js").read_text(encoding="utf-8")
        config += ohif_config_overrides(self.dicomweb_base)
        not_reserved = "".join(f"(?!{re.escape(m)}(?:/|$))" for m in (*self.reserved, self.mount))
        return [
            (rf"{prefix}", AddSlashHandler, {}),
            (rf"{prefix}/([^.]*)", _IndexHandler, {"body": index}),
            (r"/app-config\.js", _ConfigHandler, {"body": config}),
            (rf"/{not_reserved}(.+\.[A-Za-z0-9]+)", _AssetHandler, {"path": str(self.dist)}),
        ]


class _ConfigHandler(BaseHandler):
    def initialize(self, body: str) -> None:
        self.body = body

    def get(self) -> None:
        self.set_header("Content-Type", "text/javascript; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(self.body)


class _IndexHandler(BaseHandler):
    """``index.html`` for OHIF's client-side routes (history fallback)."""

    def initialize(self, body: bytes) -> None:
        self.body = body

    def get(self, path: str) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("Referrer-Policy", "no-referrer")
        self.finish(self.body)


class _AssetHandler(tornado.web.StaticFileHandler):
    """OHIF's files with the media types browsers insist on (``application/wasm``)."""

    _TYPES: ClassVar[dict[str, str]] = _MEDIA_TYPES

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")

    def get_content_type(self) -> str:
        suffix = Path(self.absolute_path or "").suffix.lower()
        return self._TYPES.get(suffix) or super().get_content_type()
