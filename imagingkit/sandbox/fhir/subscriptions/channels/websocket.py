"""The websocket channel (FHIR R4 subscription.html; Subscriptions Backport IG, channels).

One endpoint, ``{fhir base}/$subscription-ws``, speaks both protocols on text frames:

R4 legacy (criteria Subscriptions)
    client ``bind <id>`` → server ``bound <id>``; on each match ``ping <id>``. A bind for
    an unknown, topic-based or not-``active`` Subscription is answered ``error <message>``
    and the socket stays open (unlike HAPI, which closes it).

Backport (topic Subscriptions)
    client ``bind-with-token`` with a token from ``$get-ws-binding-token``, as JSON
    ``{"type": "bind-with-token", "payload": {"token": "…"}}`` (Medplum) or as text
    ``bind-with-token: <token>``; the server answers one ``handshake`` Bundle per
    Subscription the token names, then sends ``event-notification`` and ``heartbeat``
    Bundles (JSON text frames). A socket may bind several tokens;
    ``unbind-from-token`` (both framings) stops them. The client sends no acks.

Also: JSON ``{"type": "ping"}`` → ``{"type": "pong"}``, text ``ping`` → ``pong``. Anything
else — malformed JSON, unknown types, binary frames, frames over 8 KiB, unknown or expired
tokens — gets an error (text ``error <message>``, or JSON ``{"type": "error", "payload":
<OperationOutcome>}`` when the request was JSON) and the socket stays open. Frames over
1 MiB close the socket (1009). A socket that stops reading is closed once 1,000
messages wait for it, so a stalled client never holds the server's memory.

Under ``--auth`` the upgrade request may carry ``Authorization: Bearer``; ``bind <id>``
needs it (with a grant that may read Subscriptions), since a legacy bind has no token.
``bind-with-token`` needs no header: the binding token was issued under the same
authorization as reading the Subscription.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import tornado.ioloop
import tornado.websocket

from imagingkit.sandbox.fhir.outcome import operation_outcome
from imagingkit.sandbox.fhir.references import ID_RE
from imagingkit.sandbox.fhir.representation import BaseUrls
from imagingkit.sandbox.fhir.subscriptions.tokens import EVERYONE, Audience

if TYPE_CHECKING:
    from imagingkit.sandbox.fhir.subscriptions.service import SubscriptionService

__all__ = ["SocketHub", "SubscriptionSocket"]

log = logging.getLogger("imagingkit.fhir.subscriptions")

_MAX_FRAME = 8 * 1024
_MAX_MESSAGE = 1024 * 1024
_MAX_PENDING = 1000
_MAX_BINDINGS = 100


@dataclass
class Bound:
    """One Subscription bound on one socket."""

    subscription: str
    legacy: bool
    audience: Audience = EVERYONE
    token: str | None = None
    last_sent: float = field(default_factory=time.monotonic)


class SocketHub:
    """The open subscription sockets, for deliveries from any thread."""

    def __init__(self) -> None:
        self._sockets: set[SubscriptionSocket] = set()
        self._lock = threading.Lock()

    def add(self, socket: SubscriptionSocket) -> None:
        with self._lock:
            self._sockets.add(socket)

    def remove(self, socket: SubscriptionSocket) -> None:
        with self._lock:
            self._sockets.discard(socket)

    def bound(self, subscription: str | None = None) -> list[tuple[SubscriptionSocket, Bound]]:
        """``(socket, binding)`` pairs, for one Subscription or all."""
        with self._lock:
            sockets = list(self._sockets)
        return [
            (socket, bound)
            for socket in sockets
            for bound in list(socket.bindings.values())
            if subscription is None or bound.subscription == subscription
        ]

    def close_all(self) -> None:
        """Close every socket (1001, going away), from any thread."""
        with self._lock:
            sockets = list(self._sockets)
            self._sockets.clear()
        for socket in sockets:
            socket.close_soon(1001, "server closing")

    def __len__(self) -> int:
        with self._lock:
            return len(self._sockets)


class SubscriptionSocket(tornado.websocket.WebSocketHandler):
    """The websocket endpoint (see the module docstring)."""

    #: the ``--auth`` guard lets this handler authenticate itself (see guards.py)
    authenticates_itself = True

    def initialize(self, service: SubscriptionService, prefix: str, mount: str) -> None:
        self.service = service
        self.prefix = prefix
        self.mount = mount
        self.bindings: dict[str, Bound] = {}
        self.loop: tornado.ioloop.IOLoop | None = None
        self.audience: Audience | None = EVERYONE  # None: --auth and no valid header
        self._pending = 0
        self._closed = False

    @property
    def max_message_size(self) -> int:
        return _MAX_MESSAGE

    def check_origin(self, origin: str) -> bool:
        return True  # same policy as the REST API (CORS *); the app listens on loopback

    @property
    def fhir_base(self) -> str:
        origin = f"{self.request.protocol}://{self.request.host}"
        return BaseUrls.from_fhir_base(origin + self.prefix, self.mount).fhir

    async def get(self, *args: Any, **kwargs: Any) -> None:
        guard = getattr(self, "imagingkit_guard", None)
        if guard is not None:
            self.audience = None
            if self.request.headers.get("Authorization"):
                try:
                    grant = guard.authenticate(self)
                except Exception as exc:  # HTTPProblem 401
                    self.set_status(401)
                    self.finish(str(exc))
                    return
                self.audience = self.service.audience_of(grant)
        await super().get(*args, **kwargs)

    # -- lifecycle ----------------------------------------------------------------------

    def open(self, *args: str, **kwargs: str) -> None:
        self.loop = tornado.ioloop.IOLoop.current()
        self.service.hub.add(self)

    def on_close(self) -> None:
        self._closed = True
        self.service.hub.remove(self)

    def close_soon(self, code: int, reason: str) -> None:
        """Close from any thread."""
        if self.loop is not None and not self._closed:
            self.loop.add_callback(self._close, code, reason)

    def _close(self, code: int, reason: str) -> None:
        if not self._closed:
            self._closed = True
            self.close(code, reason)

    # -- sending (any thread) -------------------------------------------------------------

    def deliver(self, text: str) -> None:
        """Queue *text* for this socket from any thread (thread-safe, never blocks)."""
        if self.loop is not None and not self._closed:
            self.loop.add_callback(self._send, text)

    def _send(self, text: str) -> None:
        if self._closed or self.ws_connection is None:
            return
        if self._pending >= _MAX_PENDING:
            log.warning("closing a subscription websocket that stopped reading")
            self._close(1008, "too many unread notifications")
            return
        self._pending += 1
        try:
            future = self.write_message(text)
        except tornado.websocket.WebSocketClosedError:
            self._pending -= 1
            return
        future.add_done_callback(self._written)

    def _written(self, future: Any) -> None:
        self._pending -= 1
        if future.exception() is not None:
            self._closed = True

    # -- receiving ----------------------------------------------------------------------

    def _error(self, message: str, as_json: bool) -> None:
        if as_json:
            outcome = operation_outcome(message, code="invalid")
            self._send(json.dumps({"type": "error", "payload": outcome}))
        else:
            self._send(f"error {message}")

    async def on_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self._error("binary frames are not understood; send text", False)
            return
        if len(message) > _MAX_FRAME:
            self._error(f"frame of {len(message)} characters is too long (max {_MAX_FRAME})", False)
            return
        text = message.strip()
        if text.startswith(("{", "[")):
            await self._on_json(text)
            return
        verb, _, rest = text.partition(" ")
        if verb == "bind":
            await self._bind_legacy(rest.strip())
        elif verb == "unbind" and rest.strip() in self.bindings:
            self.bindings.pop(rest.strip(), None)
            self._send(f"unbound {rest.strip()}")
        elif text == "ping":
            self._send("pong")
        elif text.startswith(("bind-with-token:", "unbind-from-token:")):
            name, _, token = text.partition(":")
            if name == "bind-with-token":
                await self._bind_token(token.strip(), False)
            else:
                self._unbind_token(token.strip())
        else:
            shown = text[:80] + ("…" if len(text) > 80 else "")
            self._error(
                f"unknown request {shown!r}; expected 'bind <id>', 'bind-with-token: <token>' "
                "or JSON bind-with-token",
                False,
            )

    async def _on_json(self, text: str) -> None:
        try:
            request = json.loads(text)
        except json.JSONDecodeError as exc:
            self._error(f"the frame is not valid JSON: {exc}", True)
            return
        kind = request.get("type") if isinstance(request, dict) else None
        payload = request.get("payload") if isinstance(request, dict) else None
        token = payload.get("token") if isinstance(payload, dict) else None
        if kind == "ping":
            self._send(json.dumps({"type": "pong"}))
        elif kind in ("bind-with-token", "unbind-from-token"):
            if not isinstance(token, str) or not token:
                self._error(f"{kind} needs payload.token (a string)", True)
            elif kind == "bind-with-token":
                await self._bind_token(token, True)
            else:
                self._unbind_token(token)
        else:
            self._error(
                f"unknown message type {str(kind)[:40]!r}; expected bind-with-token, "
                "unbind-from-token or ping",
                True,
            )

    def _room(self, as_json: bool) -> bool:
        if len(self.bindings) >= _MAX_BINDINGS:
            self._error(f"a socket may bind at most {_MAX_BINDINGS} Subscriptions", as_json)
            return False
        return True

    async def _bind_legacy(self, sub_id: str) -> None:
        if not ID_RE.match(sub_id):
            self._error(f"bind needs a Subscription id, got {sub_id[:80]!r}", False)
            return
        if self.audience is None:
            self._error(
                "this server needs authorization: send 'Authorization: Bearer' when "
                "connecting (with a token that may read Subscriptions)",
                False,
            )
            return
        if not self.audience_reads_subscriptions(self.audience):
            self._error("this token may not read Subscriptions", False)
            return
        spec = self.service.spec(sub_id)
        if spec is None:
            self._error(f"Subscription/{sub_id} is not known", False)
        elif spec.backport:
            self._error(
                f"Subscription/{sub_id} is topic-based: get a token from "
                "$get-ws-binding-token and send bind-with-token",
                False,
            )
        elif spec.channel != "websocket":
            self._error(f"Subscription/{sub_id} has channel type {spec.channel}", False)
        elif spec.status != "active":
            self._error(f"Subscription/{sub_id} is {spec.status}, not active", False)
        elif self._room(False):
            self.bindings[sub_id] = Bound(sub_id, True, self.audience)
            self._send(f"bound {sub_id}")

    @staticmethod
    def audience_reads_subscriptions(audience: Audience) -> bool:
        """Patient-scoped grants cannot read Subscriptions (authz: compartment types only)."""
        if audience.patients is not None:
            return False
        return audience.readable is None or "Subscription" in audience.readable

    async def _bind_token(self, token: str, as_json: bool) -> None:
        binding = self.service.tokens.lookup(token)
        if binding is None:
            self._error("the binding token is unknown or expired; get a new one", as_json)
            return
        for sub_id in binding.subscriptions:
            if not self._room(as_json):
                return
            spec = self.service.spec(sub_id)
            if spec is None:
                self._error(f"Subscription/{sub_id} is not known", as_json)
                continue
            bound = Bound(sub_id, not spec.backport, binding.audience, token)
            self.bindings[sub_id] = bound
            handshake = await tornado.ioloop.IOLoop.current().run_in_executor(
                self.service.executor, self.service.handshake_text, sub_id, self.fhir_base
            )
            if handshake is not None:
                bound.last_sent = time.monotonic()
                self._send(handshake)

    def _unbind_token(self, token: str) -> None:
        for sub_id, bound in list(self.bindings.items()):
            if bound.token == token:
                del self.bindings[sub_id]
