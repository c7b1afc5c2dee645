"""A loopback receiver for the rest-hook channel (Subscriptions Backport IG channels;
FHIR R4 subscription.html §2.46.7.1).

With ``channel.type = rest-hook`` the FHIR server POSTs each notification to
``channel.endpoint``, sending every ``channel.header`` entry as an HTTP header. The
listener (:class:`~imagingkit.subscriptions.listener.AsyncSubscriptionListener` with
``channel="rest-hook"``) runs one :class:`RestHookReceiver` on its own event loop:

- a tornado HTTP server bound to ``127.0.0.1`` only, on a free port (or the one it had
  before, when restarted);
- one unguessable path, ``/imagingkit-hook/<192 random bits>``; anything else is 404;
- a shared secret the server sends as ``Authorization: Bearer <256 random bits>`` (a
  ``channel.header`` of the Subscription), compared in constant time on every POST: a
  POST without it is answered 401, with a wrong one 403, and is never handed on;
- bodies above *max_body* bytes are refused by tornado itself (400, connection closed);
- everything else goes to the ``on_post(body)`` callback, whose return value is the HTTP
  status (the listener answers 400 to a body it cannot parse and counts it).

**Reachability.** The endpoint is the notebook machine's loopback address, so only a FHIR
server on the *same machine* (the embedded store, a local test server) can deliver to
it. That is why the websocket channel — the client connects out to the server — stays
the listener's default.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import socket
from collections.abc import Callable

import tornado.httpserver
import tornado.netutil
import tornado.web

from imagingkit.errors import FHIRError

__all__ = ["DEFAULT_MAX_BODY", "HOOK_PREFIX", "RestHookReceiver"]

log = logging.getLogger("imagingkit.subscriptions")

#: largest notification body accepted (bytes)
DEFAULT_MAX_BODY = 16 * 1024 * 1024
#: first path segment of every endpoint
HOOK_PREFIX = "/imagingkit-hook/"
_HOST = "127.0.0.1"
_SCHEME = "Bearer "


class _Hook(tornado.web.RequestHandler):
    receiver: RestHookReceiver

    def initialize(self, receiver: RestHookReceiver) -> None:
        self.receiver = receiver

    def check_xsrf_cookie(self) -> None:  # a machine-to-machine endpoint: no cookies
        return

    def _refuse(self, status: int) -> None:
        self.receiver.refused += 1
        self.receiver.on_refused()
        self.set_status(status)
        if status == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="imagingkit rest-hook"')
        self.finish()

    def post(self, token: str) -> None:
        receiver = self.receiver
        if not hmac.compare_digest(token.encode(), receiver.path_token.encode()):
            self._refuse(404)
            return
        given = self.request.headers.get("Authorization")
        if given is None:
            self._refuse(401)
            return
        if not hmac.compare_digest(given.encode(), receiver.authorization.encode()):
            self._refuse(403)
            return
        receiver.posts += 1
        try:
            status = receiver.on_post(self.request.body)
        except Exception:  # never let a notification crash the receiver
            log.exception("rest-hook notification handler failed")
            status = 500
        self.set_status(status)
        self.finish()

    def write_error(self, status_code: int, **kwargs: object) -> None:
        self.finish()  # no tornado error page, no traceback

    def log_exception(self, *args: object) -> None:
        return  # 405 and friends are not worth a stack trace


class RestHookReceiver:
    """The HTTP endpoint a FHIR server POSTs rest-hook notifications to (see the module
    docstring).

    Parameters
    ----------
    on_post : callable
        ``on_post(body) -> int``: called on the event loop for every authenticated POST
        with its raw body; returns the HTTP status to answer (2xx accepts it).
    on_refused : callable, optional
        Called for every refused POST (wrong path or secret).
    max_body : int
        Largest body accepted, in bytes.

    Attributes
    ----------
    endpoint : str
        The URL to put into ``channel.endpoint`` (after :meth:`start`).
    header : str
        The ``channel.header`` entry carrying the shared secret.
    posts, refused : int
        Authenticated and refused POSTs so far.
    """

    def __init__(
        self,
        on_post: Callable[[bytes], int],
        *,
        on_refused: Callable[[], None] | None = None,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.on_post = on_post
        self.on_refused = on_refused or (lambda: None)
        self.max_body = max_body
        self.path_token = secrets.token_urlsafe(24)  # 192 bits
        self.authorization = _SCHEME + secrets.token_urlsafe(32)  # 256 bits
        self.port: int | None = None
        self.posts = 0
        self.refused = 0
        self._server: tornado.httpserver.HTTPServer | None = None

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>/imagingkit-hook/<token>``."""
        if self.port is None:
            raise FHIRError("the rest-hook receiver has not been started")
        return f"http://{_HOST}:{self.port}{HOOK_PREFIX}{self.path_token}"

    @property
    def header(self) -> str:
        """``"Authorization: Bearer <secret>"``, for ``Subscription.channel.header``."""
        return f"Authorization: {self.authorization}"

    @property
    def running(self) -> bool:
        """Whether the receiver is listening."""
        return self._server is not None

    def start(self) -> None:
        """Listen on 127.0.0.1 (a free port first; the same port after a :meth:`stop`).

        Must be called on the event loop that will serve it.

        Raises
        ------
        FHIRError
            The port cannot be bound (e.g. taken by another process after a stop).
        """
        if self._server is not None:
            return
        app = tornado.web.Application(
            [(rf"{HOOK_PREFIX}([^/]+)", _Hook, {"receiver": self})],
            default_handler_class=_NotFound,
        )
        try:
            sockets = tornado.netutil.bind_sockets(
                self.port or 0, _HOST, family=socket.AF_INET, reuse_port=False
            )
        except OSError as exc:
            raise FHIRError(f"the rest-hook receiver cannot listen on {_HOST}: {exc}") from None
        server = tornado.httpserver.HTTPServer(
            app, max_body_size=self.max_body, idle_connection_timeout=60, xheaders=False
        )
        server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        self._server = server
        log.info("rest-hook receiver on %s:%d", _HOST, self.port)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop listening and close open connections (at most *timeout* seconds)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stop()
        try:
            await asyncio.wait_for(server.close_all_connections(), timeout)
        except Exception as exc:  # a stuck connection must not block closing
            log.info("rest-hook receiver: connections not closed cleanly (%r)", exc)


class _NotFound(tornado.web.RequestHandler):
    def prepare(self) -> None:
        self.set_status(404)
        self.finish()
