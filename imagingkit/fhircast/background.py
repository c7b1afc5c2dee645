"""Serve a :class:`~imagingkit.fhircast.hub.FhircastHub` on a background thread.

For notebooks, demos and tests: ``with BackgroundHub() as hub: …`` gives a real hub on
loopback (port 0 picks a free port) without blocking the caller, inside or outside a
running event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import tornado.httpserver
import tornado.netutil

from imagingkit.errors import FHIRcastError
from imagingkit.fhircast.hub import FhircastHub
from imagingkit.notify import LoopThread
from imagingkit.server.app import make_app

__all__ = ["BackgroundHub"]

T = TypeVar("T")


class BackgroundHub:
    """A FHIRcast hub listening on *host*:*port* from its own thread.

    Parameters
    ----------
    hub : FhircastHub, optional
        The hub to serve (a default one otherwise).
    host : str
        Interface to bind; loopback by default.
    port : int
        TCP port; ``0`` picks a free one (see :attr:`port`).
    base_url : str
        Path prefix; the hub lives at ``{base_url}fhircast``.

    Attributes
    ----------
    url : str
        ``hub.url``, e.g. ``http://127.0.0.1:40123/fhircast``.
    """

    def __init__(
        self,
        hub: FhircastHub | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        base_url: str = "/",
    ) -> None:
        self.hub = hub or FhircastHub()
        self.host = host
        self._base = "/" + base_url.strip("/") + "/" if base_url.strip("/") else "/"
        self._thread = LoopThread("imagingkit-fhircast-hub", error=FHIRcastError, kind="FHIRcast")
        self._server: tornado.httpserver.HTTPServer | None = None
        try:
            self.port = self._thread.run(self._start(port), 10)
        except BaseException:
            self._thread.stop()
            raise
        shown = f"[{host}]" if ":" in host else host
        self.origin = f"http://{shown}:{self.port}"
        self.url = f"{self.origin}{self._base}{self.hub.mount}"

    async def _start(self, port: int) -> int:
        app = make_app([self.hub], base_url=self._base)
        sockets = tornado.netutil.bind_sockets(port, address=self.host)
        self._server = tornado.httpserver.HTTPServer(app)
        self._server.add_sockets(sockets)
        return int(sockets[0].getsockname()[1])

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 10) -> T:
        """Run ``fn(*args)`` on the hub's loop (hub state is not thread-safe) and return."""
        return self._thread.call(fn, *args, timeout=timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Close every subscription socket (1001), stop listening and end the thread."""
        if not self._thread.alive:
            return

        async def shutdown() -> None:
            self.hub.close()
            if self._server is not None:
                self._server.stop()
                await self._server.close_all_connections()

        try:
            self._thread.run(shutdown(), timeout)
        finally:
            self._thread.stop(timeout)

    def __enter__(self) -> BackgroundHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
