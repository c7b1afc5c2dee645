"""One tornado application factory for every host (DESIGN.md D3).

``imagingkit serve`` runs it standalone; the Jupyter server extension mounts the same
routes under ``{base_url}imagingkit/``. Each capability is a :class:`Component` that
contributes routes below its own path segment.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

import tornado.web

from imagingkit import __version__
from imagingkit.server.base import BaseHandler

__all__ = ["Component", "RouteList", "make_app", "mounted_urls"]

RouteList = list[tuple[str, type[tornado.web.RequestHandler], dict[str, Any]]]


class Component(Protocol):
    """A capability served by the app (the DICOMweb store, the FHIR store, the hub …)."""

    #: the path segment it lives under, e.g. ``"dicom-web"`` (DESIGN.md URL layout)
    mount: str

    def routes(self, prefix: str) -> RouteList:
        """Return tornado rules whose patterns start with *prefix* (no trailing slash)."""
        ...


class _IndexHandler(BaseHandler):
    def initialize(self, mounts: Sequence[str], base_url: str) -> None:
        self.mounts = mounts
        self.base_url = base_url

    def get(self) -> None:
        root = f"{self.request.protocol}://{self.request.host}{self.base_url}"
        self.set_header("Content-Type", "application/json")
        self.finish(
            json.dumps(
                {"imagingkit": __version__, "endpoints": {m: f"{root}{m}/" for m in self.mounts}}
            )
        )


def _normalise_base(base_url: str) -> str:
    base = "/" + base_url.strip("/") + "/"
    return "/" if base == "//" else base


def make_app(
    components: Sequence[Component],
    *,
    base_url: str = "/",
    **tornado_settings: Any,
) -> tornado.web.Application:
    """Build the tornado application serving *components* under *base_url*.

    Parameters
    ----------
    components : sequence of Component
        The capabilities to serve; each is mounted at ``{base_url}{component.mount}/``.
    base_url : str
        Path prefix, ``"/"`` standalone or ``"{jupyter base_url}imagingkit/"``.
    **tornado_settings
        Passed to :class:`tornado.web.Application`.

    Returns
    -------
    tornado.web.Application
    """
    base = _normalise_base(base_url)
    rules: RouteList = []
    for component in components:
        rules.extend(component.routes(f"{base}{component.mount}"))
    mounts = [c.mount for c in components]
    rules.append((rf"{base}?", _IndexHandler, {"mounts": mounts, "base_url": base}))
    tornado_settings.setdefault("compress_response", False)
    return tornado.web.Application(rules, **tornado_settings)


def mounted_urls(
    origin: str, components: Sequence[Component], base_url: str = "/"
) -> dict[str, str]:
    """Return ``{mount: absolute URL}`` for *components* served at *origin*."""
    base = _normalise_base(base_url)
    return {c.mount: f"{origin.rstrip('/')}{base}{c.mount}" for c in components}
