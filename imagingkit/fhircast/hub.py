"""The FHIRcast 3.0.0 hub: tornado handlers and the :class:`FhircastHub` component.

Routes below the mount (``hub.url`` is ``{origin}{base}fhircast``):

============================================  =============================================
``GET  .well-known/fhircast-configuration``   discovery (``2-7``; appended to ``hub.url``)
``POST /``  form or JSON with ``hub.mode``     subscribe / unsubscribe → 202 (``2-4``)
``POST /``  JSON event                         request a context change → 202 (``2-6``)
``POST /{topic}``                              the same publish (compatibility alias)
``GET  /{topic}``                              current context (``2-9``)
``WS   /ws/{endpoint}``                        the subscription's channel (``2-4``, ``2-5``)
``… /api/hub[/{topic}]``                       aliases OHIF uses (medplum/medplum#10035)
============================================  =============================================

All protocol decisions live in :mod:`~imagingkit.fhircast.protocol` and
:mod:`~imagingkit.fhircast.session`; this module routes messages between sockets.
Every method of :class:`FhircastHub` runs on the tornado event loop.

The specification requires HTTPS and WSS (``2``). Served standalone on loopback the hub
answers over plain HTTP and hands out ``ws://`` endpoints; put it behind TLS (or inside
Jupyter Server with TLS) anywhere else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import secrets
import struct
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import tornado.ioloop
import tornado.iostream
import tornado.web
import tornado.websocket
from tornado.util import _websocket_mask

from imagingkit.errors import FHIRcastError, InvalidInputError
from imagingkit.fhircast import protocol
from imagingkit.fhircast.auth import TokenInfo, TokenValidator
from imagingkit.fhircast.protocol import Event, SubscriptionRequest
from imagingkit.fhircast.session import TopicSession, derived_opens
from imagingkit.server.app import RouteList
from imagingkit.server.base import BaseHandler, HTTPProblem

__all__ = ["FhircastHub", "HubPolicy", "HubStats", "SubscriptionInfo"]

log = logging.getLogger("imagingkit.fhircast.hub")

# An acknowledgement exactly as subscribers write it, {"id": "…", "status": 200} (JSON
# whitespace allowed, no escapes in the id, status a JSON integer or a string of digits):
# read without json.loads. Anything else takes json.loads + protocol.parse_ack.
_WS = "[ \t\n\r]*"
_PLAIN_ACK = re.compile(
    rf'{_WS}\{{{_WS}"id"{_WS}:{_WS}"([^"\\\x00-\x1f]*)"{_WS},{_WS}"status"{_WS}:{_WS}'
    rf'(?:(0|[1-9][0-9]*)|"([0-9]+)"){_WS}\}}{_WS}'
)

_DERIVED_ANCHOR = {"patient-open": "Patient", "imagingstudy-open": "ImagingStudy"}


@dataclass(frozen=True)
class HubPolicy:
    """Hub behaviour, including switches for implementations in the field.

    Attributes
    ----------
    ack_timeout : float or None
        Seconds a subscriber has to acknowledge an event before the hub sends a SyncError
        (``2-5``: 10 s). ``None`` disables the check (OHIF never acknowledges).
    unsubscribe_unresponsive : bool
        Unsubscribe a subscriber after ``max_consecutive_sync_errors`` hub-generated
        SyncErrors in a row (``2-5``, PR #601).
    max_consecutive_sync_errors : int
    sync_error_on_abnormal_close : bool
        A socket closed with a code other than 1000/1001 produces a SyncError (``2-5`` MAY).
    derive_opens : bool
        Send implied ``Patient-open``/``ImagingStudy-open`` (and closes) to subscribers that
        did not subscribe to the event itself (``2-5`` hub-generated open events).
    content_sharing : bool
        Versioned DiagnosticReport content (``2-10``).
    non_current_updates : bool
        Accept updates to open reports that are not current (experimental, ``2-10``).
    default_lease_seconds, max_lease_seconds : int
        Granted lease when none / a larger one is requested (``2-4``).
    connect_timeout : float
        A subscription whose socket is not connected within this many seconds is dropped.
    require_subscriber_name : bool
        Refuse subscriptions without ``subscriber.name`` (IHE RAD-146).
    accept_unknown_events : bool
        Accept any grammatical event name (IHE IRA "any events") instead of only those in
        :attr:`extra_events` and the catalogue.
    extra_events : tuple of str
        Proprietary events to support and advertise (``2-3``, reverse-domain names).
    heartbeat_period : float or None
        Emit the ballot-era ``heartbeat`` event to every socket this often (Medplum
        compatibility only; not part of STU3).
    max_event_bytes : int
        Larger publish requests are refused with 413 (``2-10``).
    max_update_entries : int
        Larger update Bundles are refused with 413.
    ws_ping_interval : float or None
        Transport-level websocket pings (liveness without the removed heartbeat, notes §8).
    sweep_interval : float
        How often leases, connect deadlines and acknowledgements are checked.
    """

    ack_timeout: float | None = 10.0
    unsubscribe_unresponsive: bool = True
    max_consecutive_sync_errors: int = 1
    sync_error_on_abnormal_close: bool = True
    derive_opens: bool = True
    content_sharing: bool = True
    non_current_updates: bool = False
    default_lease_seconds: int = 7200
    max_lease_seconds: int = 86400
    connect_timeout: float = 60.0
    require_subscriber_name: bool = False
    accept_unknown_events: bool = False
    extra_events: tuple[str, ...] = ()
    heartbeat_period: float | None = None
    max_event_bytes: int = 1024 * 1024
    max_update_entries: int = 1000
    ws_ping_interval: float | None = 20.0
    sweep_interval: float = 0.1


@dataclass
class HubStats:
    """Counters, for tests, benchmarks and ``/fhircast`` diagnostics."""

    published: int = 0
    delivered: int = 0
    acknowledged: int = 0
    sync_errors: int = 0
    malformed_frames: int = 0
    ignored_frames: int = 0


@dataclass(frozen=True)
class SubscriptionInfo:
    """A read-only view of one subscription."""

    endpoint: str
    topic: str
    events: tuple[str, ...]
    subscriber_name: str | None
    connected: bool
    lease_seconds: int
    pending_acks: int


@dataclass(eq=False)
class _Subscription:
    endpoint: str
    topic: str
    events: dict[str, str]  # lower-case → canonical
    name: str | None
    lease_seconds: int
    expires_at: float
    connect_deadline: float
    token: TokenInfo | None = None
    socket: _ChannelHandler | None = None
    pending: OrderedDict[str, tuple[float, str]] = field(default_factory=OrderedDict)
    consecutive_failures: int = 0
    closed: bool = False

    @property
    def label(self) -> str:
        return self.name or f"subscriber {self.endpoint[:8]}"


class FhircastHub:
    """A FHIRcast 3.0.0 hub served by tornado (a :class:`~imagingkit.server.app.Component`).

    Parameters
    ----------
    policy : HubPolicy, optional
        Behaviour switches; the defaults follow the specification.
    token_validator : callable, optional
        Enables bearer auth: every HTTP request except discovery needs a token, and the
        token's ``fhircast/{Event}.read|write`` scopes decide what may be subscribed and
        published (``2-2``). See :class:`~imagingkit.fhircast.auth.StaticTokenValidator`.
    clock : callable
        Monotonic seconds used for leases and acknowledgement deadlines (tests pass a
        fake clock and call :meth:`sweep`).

    Examples
    --------
    >>> from imagingkit.server.app import make_app
    >>> app = make_app([FhircastHub()])   # hub.url = http://host:port/fhircast
    """

    mount = "fhircast"

    def __init__(
        self,
        policy: HubPolicy | None = None,
        *,
        token_validator: TokenValidator | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy or HubPolicy()
        self.token_validator = token_validator
        self.clock = clock
        self.stats = HubStats()
        self._sessions: dict[str, TopicSession] = {}
        self._subs: dict[str, _Subscription] = {}
        self._by_topic: dict[str, dict[str, _Subscription]] = {}
        self._accepted: dict[str, OrderedDict[str, Event]] = {}
        self._listeners: list[Callable[[Event], None]] = []
        self._timers: list[tornado.ioloop.PeriodicCallback] = []
        self._closed = False

    # --- Component ---------------------------------------------------------------------

    def routes(self, prefix: str) -> RouteList:
        """Return the hub's tornado rules below *prefix* (the hub URL path)."""
        common = {"hub": self, "prefix": prefix}
        return [
            (rf"{prefix}/\.well-known/fhircast-configuration", _ConfigurationHandler, common),
            (rf"{prefix}/ws/([A-Za-z0-9_\-]+)", _ChannelHandler, common),
            (rf"{prefix}/api/hub/?", _HubHandler, common),
            (rf"{prefix}/api/hub/([^/]+)", _HubHandler, common),
            (rf"{prefix}/?", _HubHandler, common),
            (rf"{prefix}/([^/]+)", _HubHandler, common),
        ]

    def close(self) -> None:
        """Stop timers and close every socket with 1001 ("going away")."""
        self._closed = True
        for timer in self._timers:
            timer.stop()
        self._timers.clear()
        for sub in list(self._subs.values()):
            sock = sub.socket
            self._remove(sub)
            if sock is not None:
                sock.close(1001, "hub shutting down")

    # --- introspection -----------------------------------------------------------------

    def events_supported(self) -> list[str]:
        """Return the advertised event names (``eventsSupported``, ``2-7``)."""
        names = [spec.name for spec in protocol.CATALOGUE.values()]
        names.extend(self.policy.extra_events)
        if self.policy.heartbeat_period:
            names.append(protocol.HEARTBEAT.name)
        return names

    def configuration(self) -> dict[str, Any]:
        """Return the discovery document (``2-7``)."""
        return protocol.configuration(
            self.events_supported(), non_current_updates=self.policy.non_current_updates
        )

    def subscriptions(self, topic: str | None = None) -> list[SubscriptionInfo]:
        """Return the live subscriptions, optionally of one *topic*."""
        subs = self._subs.values() if topic is None else self._by_topic.get(topic, {}).values()
        return [
            SubscriptionInfo(
                s.endpoint,
                s.topic,
                tuple(s.events.values()),
                s.name,
                s.socket is not None,
                s.lease_seconds,
                len(s.pending),
            )
            for s in subs
        ]

    def current_context(self, topic: str) -> dict[str, Any]:
        """Return the Get Current Context body of *topic* (``2-9``)."""
        session = self._sessions.get(topic)
        return session.current_context() if session else {"context.type": "", "context": []}

    def add_listener(self, callback: Callable[[Event], None]) -> None:
        """Call *callback* with every broadcast event (on the hub's loop)."""
        self._listeners.append(callback)

    # --- timers ------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._timers or self._closed:
            return
        sweep = tornado.ioloop.PeriodicCallback(self.sweep, self.policy.sweep_interval * 1000)
        sweep.start()
        self._timers.append(sweep)
        if self.policy.heartbeat_period:
            beat = tornado.ioloop.PeriodicCallback(
                self._heartbeat, self.policy.heartbeat_period * 1000
            )
            beat.start()
            self._timers.append(beat)

    def sweep(self) -> None:
        """Expire leases, drop never-connected subscriptions and time out acknowledgements."""
        now = self.clock()
        timeout = self.policy.ack_timeout
        for sub in list(self._subs.values()):
            if sub.closed:
                continue
            if sub.socket is None:
                if now >= sub.connect_deadline or now >= sub.expires_at:
                    log.info("dropping %s: never connected", sub.label)
                    self._remove(sub)
                continue
            if now >= sub.expires_at:
                self._deny(sub, "subscription lease expired")
                continue
            if timeout is None or not sub.pending:
                continue
            expired = []
            for event_id, (deadline, name) in sub.pending.items():
                if deadline > now:
                    break
                expired.append((event_id, name))
            for event_id, name in expired:
                del sub.pending[event_id]
                self._sync_error(
                    sub.topic,
                    event_id=event_id,
                    event_name=name,
                    failed=sub,
                    diagnostics=f"{sub.label} did not acknowledge event {event_id} within "
                    f"{timeout:g} s",
                )
                sub.consecutive_failures += 1
                if (
                    self.policy.unsubscribe_unresponsive
                    and sub.consecutive_failures >= self.policy.max_consecutive_sync_errors
                ):
                    self._deny(sub, f"unresponsive: event {event_id} was not acknowledged")
                    break

    def _heartbeat(self) -> None:
        period = self.policy.heartbeat_period or 0
        for topic, subs in self._by_topic.items():
            beat = protocol.notification(
                topic, protocol.HEARTBEAT.name, [{"key": "period", "decimal": f"{period:g}"}]
            )
            frame = text_frame(beat.dumps())
            for sub in list(subs.values()):
                if sub.socket is not None:
                    sub.socket.send_frame(frame)

    # --- subscriptions -----------------------------------------------------------------

    def _grant(self, req: SubscriptionRequest, token: TokenInfo | None) -> list[str]:
        if token is None:
            return list(req.events)
        if not token.allows_topic(req.topic):
            raise HTTPProblem(403, f"the token does not allow topic {req.topic!r}")
        granted = [e for e in req.events if protocol.scope_allows(token.scopes, e, "read")]
        if not granted:
            raise HTTPProblem(
                403, f"the token grants no fhircast/<event>.read scope for {', '.join(req.events)}"
            )
        return granted

    def _lease(self, req: SubscriptionRequest, token: TokenInfo | None) -> int:
        lease = min(
            req.lease_seconds or self.policy.default_lease_seconds, self.policy.max_lease_seconds
        )
        left = token.seconds_left() if token else None
        if left is not None:
            # with OAuth the lease SHALL NOT outlive the token (2-4)
            lease = min(lease, math.floor(left))
            if lease <= 0:
                raise HTTPProblem(401, "the token has expired", WWW_Authenticate="Bearer")
        return lease

    def subscribe(self, req: SubscriptionRequest, token: TokenInfo | None = None) -> str:
        """Create or update a subscription; return its endpoint id (``2-4``).

        A request carrying ``hub.channel.endpoint`` of an existing subscription on the
        same topic replaces its events and lease (resubscription); the hub confirms again
        on the open socket and replays opens for newly granted events.
        """
        self._ensure_started()
        granted = self._grant(req, token)
        lease = self._lease(req, token)
        now = self.clock()
        events = {e.lower(): e for e in granted}
        if req.endpoint:
            sub = self._lookup(req.endpoint, req.topic)
            added = [e for e in events if e not in sub.events]
            sub.events = events
            sub.name = req.subscriber_name or sub.name
            sub.lease_seconds = lease
            sub.expires_at = now + lease
            sub.token = token or sub.token
            if sub.socket is not None:
                sub.socket.send_text(json.dumps(self._confirmation(sub)))
                self._replay(sub, only=set(added))
            return sub.endpoint
        endpoint = secrets.token_urlsafe(32)  # 256 bits: "cryptographically random" (2-4)
        sub = _Subscription(
            endpoint=endpoint,
            topic=req.topic,
            events=events,
            name=req.subscriber_name,
            lease_seconds=lease,
            expires_at=now + lease,
            connect_deadline=now + self.policy.connect_timeout,
            token=token,
        )
        self._subs[endpoint] = sub
        self._by_topic.setdefault(req.topic, {})[endpoint] = sub
        self._session(req.topic)
        return endpoint

    def unsubscribe(self, req: SubscriptionRequest, token: TokenInfo | None = None) -> str:
        """Cancel a subscription: deny on its socket, close it, forget the endpoint."""
        if token is not None and not token.allows_topic(req.topic):
            raise HTTPProblem(403, f"the token does not allow topic {req.topic!r}")
        sub = self._lookup(req.endpoint or "", req.topic)
        self._deny(sub, "unsubscribed")
        return sub.endpoint

    def _lookup(self, endpoint: str, topic: str) -> _Subscription:
        key = endpoint.rstrip("/").rsplit("/", 1)[-1]
        sub = self._subs.get(key)
        if sub is None or sub.closed or sub.topic != topic:
            raise HTTPProblem(
                404, f"hub.channel.endpoint {endpoint!r} is not a live subscription of this topic"
            )
        return sub

    def _confirmation(self, sub: _Subscription) -> dict[str, Any]:
        remaining = max(0, math.ceil(sub.expires_at - self.clock()))
        return protocol.confirmation(sub.topic, list(sub.events.values()), remaining)

    def _attach(self, sub: _Subscription, sock: _ChannelHandler) -> None:
        sub.socket = sock
        sock.send_text(json.dumps(self._confirmation(sub)))
        self._replay(sub)

    def _replay(self, sub: _Subscription, only: set[str] | None = None) -> None:
        """Send the latest unclosed open per anchor type the subscriber wants (``2-4``)."""
        events = self._session(sub.topic).replay()
        wanted = sub.events if only is None else {k: v for k, v in sub.events.items() if k in only}
        covered: set[str] = set()
        for ev in events:
            if ev.key in wanted:
                self._send(sub, ev, text_frame(ev.dumps()), self._deadline())
                spec = ev.spec
                covered.add(spec.anchor if spec and spec.anchor else ev.key)
        if not self.policy.derive_opens:
            return
        for ev in reversed(events):
            if ev.key in sub.events:
                continue
            for suffix, name, ctx in derived_opens(ev):
                anchor = _DERIVED_ANCHOR.get(name.lower())
                if name.lower() in wanted and anchor not in covered:
                    covered.add(anchor or name)
                    derived = protocol.notification(
                        sub.topic, name, ctx, event_id=f"{ev.id}:{suffix}", timestamp=ev.timestamp
                    )
                    self._send(sub, derived, text_frame(derived.dumps()), self._deadline())

    def _deny(self, sub: _Subscription, reason: str) -> None:
        sock = sub.socket
        self._remove(sub)
        if sock is not None:
            denial = protocol.denial(sub.topic, list(sub.events.values()), reason)
            sock.send_text(json.dumps(denial))
            sock.close(1000, reason[:120])

    def _remove(self, sub: _Subscription) -> None:
        sub.closed = True
        sub.socket = None
        sub.pending.clear()
        self._subs.pop(sub.endpoint, None)
        topic_subs = self._by_topic.get(sub.topic)
        if topic_subs is not None:
            topic_subs.pop(sub.endpoint, None)

    def _session(self, topic: str) -> TopicSession:
        session = self._sessions.get(topic)
        if session is None:
            session = TopicSession(
                topic,
                content_sharing=self.policy.content_sharing,
                non_current_updates=self.policy.non_current_updates,
                max_update_entries=self.policy.max_update_entries,
            )
            self._sessions[topic] = session
        return session

    # --- channel -----------------------------------------------------------------------

    def _on_channel_message(self, sub: _Subscription, message: str | bytes) -> None:
        plain = _PLAIN_ACK.fullmatch(message) if isinstance(message, str) else None
        if plain is not None:  # the usual acknowledgement: same result as parse_ack
            parsed: tuple[str, int] | None = (plain[1], int(plain[2] or plain[3]))
        else:
            try:
                obj = json.loads(message)
            except (ValueError, UnicodeDecodeError):
                self.stats.malformed_frames += 1
                log.debug("ignoring a malformed frame from %s", sub.label)
                return
            parsed = protocol.parse_ack(obj) if isinstance(obj, dict) else None
        if parsed is None:
            # e.g. Nuance-style {"hub.channel.endpoint": …} after connecting (notes §15.2)
            self.stats.ignored_frames += 1
            return
        event_id, status = parsed
        entry = sub.pending.pop(event_id, None)
        if entry is None:
            return
        self.stats.acknowledged += 1
        if 200 <= status < 300:
            sub.consecutive_failures = 0
            return
        if status < 400:
            return
        what = "refused" if status < 500 else "failed to process"
        self._sync_error(
            sub.topic,
            event_id=event_id,
            event_name=entry[1],
            failed=sub,
            diagnostics=f"{sub.label} {what} event {event_id} (status {status})",
        )

    def _on_channel_closed(self, sub: _Subscription, code: int | None) -> None:
        if sub.closed:
            return
        pending = next(iter(sub.pending.items()), None)
        self._remove(sub)
        if code in (1000, 1001) or not self.policy.sync_error_on_abnormal_close:
            return
        event_id, event_name = (
            (pending[0], pending[1][1]) if pending else (str(uuid.uuid4()), "syncerror")
        )
        self._sync_error(
            sub.topic,
            event_id=event_id,
            event_name=event_name,
            failed=sub,
            diagnostics=f"{sub.label} disconnected abnormally (close code {code or 1006})",
        )

    def _sync_error(
        self,
        topic: str,
        *,
        event_id: str,
        event_name: str,
        failed: _Subscription,
        diagnostics: str,
    ) -> None:
        """Broadcast a hub-generated SyncError to the topic's ``syncerror`` subscribers."""
        self.stats.sync_errors += 1
        log.info("SyncError on topic %s: %s", topic, diagnostics)
        error = protocol.sync_error(
            topic,
            event_id=event_id,
            event_name=event_name,
            subscriber_name=failed.name or failed.label,
            diagnostics=diagnostics,
        )
        frame, deadline = text_frame(error.dumps()), self._deadline()
        for sub in list(self._by_topic.get(topic, {}).values()):
            if sub is not failed and "syncerror" in sub.events:
                self._send(sub, error, frame, deadline)

    # --- publishing --------------------------------------------------------------------

    def publish(self, event: Event, token: TokenInfo | None = None) -> Event:
        """Apply a validated context-change request and broadcast it (``2-6``).

        Every subscriber of the topic whose events include it receives the same ``id``,
        the requester included; others receive implied opens if they want those. A
        request whose id was already accepted on the topic is a retry and is not
        broadcast again.

        Raises
        ------
        HTTPProblem
            403 when the token lacks ``fhircast/{event}.write`` or the topic (``2-2``).
        InvalidInputError, FHIRcastError
            From the session (stale version 409, too large 413 …); nothing is sent.
        """
        self._ensure_started()
        if token is not None:
            if not token.allows_topic(event.topic):
                raise HTTPProblem(403, f"the token does not allow topic {event.topic!r}")
            if not protocol.scope_allows(token.scopes, event.name, "write"):
                raise HTTPProblem(403, f"the token lacks scope fhircast/{event.name}.write")
        accepted = self._accepted.setdefault(event.topic, OrderedDict())
        if event.id in accepted:
            return accepted[event.id]
        broadcast = self._session(event.topic).apply(event)
        accepted[event.id] = broadcast
        if len(accepted) > 4096:
            accepted.popitem(last=False)
        self.stats.published += 1
        self._fan_out(broadcast)
        for listener in self._listeners:
            try:
                listener(broadcast)
            except Exception:  # a broken observer must not break the hub
                log.exception("hub listener failed")
        return broadcast

    def _fan_out(self, event: Event) -> None:
        # one serialisation and one frame for every subscriber: a server's frames are
        # unmasked (RFC 6455 §5.1), so the same bytes go to each socket
        frame = text_frame(event.dumps())
        deadline = self._deadline()
        key = event.key
        derived: list[tuple[Event, bytes]] | None = None
        for sub in list(self._by_topic.get(event.topic, {}).values()):
            if sub.socket is None:
                continue
            if key in sub.events:
                self._send(sub, event, frame, deadline)
                continue
            if not self.policy.derive_opens:
                continue
            if derived is None:
                derived = []
                for suffix, name, ctx in derived_opens(event):
                    ev = protocol.notification(
                        event.topic,
                        name,
                        ctx,
                        event_id=f"{event.id}:{suffix}",
                        timestamp=event.timestamp,
                    )
                    derived.append((ev, text_frame(ev.dumps())))
            for ev, ev_frame in derived:
                if ev.key in sub.events:
                    self._send(sub, ev, ev_frame, deadline)

    def _send(self, sub: _Subscription, event: Event, frame: bytes, deadline: float) -> None:
        """Send a pre-built text frame and expect its acknowledgement by *deadline*."""
        sock = sub.socket
        if sock is None:
            return
        sub.pending[event.id] = (deadline, event.name)
        if deadline == math.inf and len(sub.pending) > 1024:
            sub.pending.popitem(last=False)
        if sock.send_frame(frame):
            self.stats.delivered += 1

    def _deadline(self) -> float:
        timeout = self.policy.ack_timeout
        return self.clock() + timeout if timeout is not None else math.inf


# --- handlers ----------------------------------------------------------------------------


class _HubBase(BaseHandler):
    """Errors as ``text/plain`` meant for developers (``2-4``)."""

    def initialize(self, hub: FhircastHub, prefix: str) -> None:
        self.hub = hub
        self.prefix = prefix

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, HTTPProblem):
            for name, value in exc.headers.items():
                self.set_header(name.replace("_", "-"), value)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(self.problem_detail(status_code, exc) + "\n")

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, FHIRcastError) and e.status and not self._finished:
            self.send_error(e.status, exc_info=(type(e), e, e.__traceback__))
            return
        super()._handle_request_exception(e)

    def authenticate(self) -> TokenInfo | None:
        """Return the bearer token's grants, ``None`` when auth is off; 401 otherwise."""
        validator = self.hub.token_validator
        if validator is None:
            return None
        header = self.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPProblem(401, "a bearer token is required", WWW_Authenticate="Bearer")
        info = validator(token.strip())
        if info is None:
            raise HTTPProblem(
                401,
                "the bearer token is invalid or expired",
                WWW_Authenticate='Bearer error="invalid_token"',
            )
        return info

    def write_json(self, status: int, body: Any) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))


class _ConfigurationHandler(_HubBase):
    def get(self) -> None:
        self.write_json(200, self.hub.configuration())


class _HubHandler(_HubBase):
    def get(self, topic: str | None = None) -> None:
        if topic is None:
            self.write_json(200, self.hub.configuration())
            return
        token = self.authenticate()
        context = self.hub.current_context(topic)
        if token is not None:
            if not token.allows_topic(topic):
                raise HTTPProblem(403, f"the token does not allow topic {topic!r}")
            anchor = context.get("context.type")
            name = f"{anchor}-open" if anchor else "*"
            if name == "*":
                allowed = any(s.strip().lower().endswith((".read", ".*")) for s in token.scopes)
            else:
                allowed = protocol.scope_allows(token.scopes, name, "read")
            if not allowed:
                raise HTTPProblem(403, f"the token lacks scope fhircast/{name}.read")
        self.write_json(200, context)

    def post(self, topic: str | None = None) -> None:
        token = self.authenticate()  # 401 before anything about the body is revealed
        body = self.request.body
        if len(body) > self.hub.policy.max_event_bytes:
            raise HTTPProblem(
                413, f"request of {len(body)} bytes exceeds {self.hub.policy.max_event_bytes}"
            )
        ctype = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        is_form = ctype == "application/x-www-form-urlencoded" or (
            not ctype and not body.lstrip().startswith(b"{")
        )
        if is_form:
            self._subscription(body, token)
            return
        message = protocol.loads_object(body, "request body")
        if "hub.mode" in message or "hub.channel.type" in message:
            self._subscription(message, token)  # JSON subscriptions seen in the wild
            return
        self._publish(message, topic, token)

    def _subscription(self, body: bytes | dict[str, Any], token: TokenInfo | None) -> None:
        policy = self.hub.policy
        req = protocol.parse_subscription_request(
            body,
            extra_events=policy.extra_events,
            accept_unknown=policy.accept_unknown_events,
            require_subscriber_name=policy.require_subscriber_name,
        )
        if req.mode == "subscribe":
            endpoint = self.hub.subscribe(req, token)
        else:
            endpoint = self.hub.unsubscribe(req, token)
        scheme = "wss" if self.request.protocol == "https" else "ws"
        url = f"{scheme}://{self.request.host}{self.prefix}/ws/{endpoint}"
        self.write_json(202, {"hub.channel.endpoint": url})

    def _publish(self, message: dict[str, Any], topic: str | None, token: TokenInfo | None) -> None:
        policy = self.hub.policy
        event = protocol.parse_event(
            message,
            extra_events=policy.extra_events,
            accept_unknown=policy.accept_unknown_events,
            default_topic=topic,
        )
        if topic is not None and event.topic != topic:
            raise InvalidInputError(
                f"event.hub.topic {event.topic!r} differs from the topic in the URL {topic!r}"
            )
        broadcast = self.hub.publish(event, token)
        body: dict[str, Any] = {"id": broadcast.id, "hub.event": broadcast.name}
        if broadcast.version_id:
            body["context.versionId"] = broadcast.version_id
        self.write_json(202, body)


class _ChannelHandler(tornado.websocket.WebSocketHandler):
    """The websocket of one subscription (``2-4`` confirmation/denial, ``2-5`` acks)."""

    def initialize(self, hub: FhircastHub, prefix: str) -> None:
        self.hub = hub
        self.sub: _Subscription | None = None

    @property
    def ping_interval(self) -> float | None:
        return self.hub.policy.ws_ping_interval

    @property
    def max_message_size(self) -> int:
        return 256 * 1024

    def check_origin(self, origin: str) -> bool:
        # the unguessable endpoint is the ticket; Origin cannot be trusted anyway (4-3)
        return True

    def prepare(self) -> None:
        endpoint = self.path_args[0] if self.path_args else ""
        sub = self.hub._subs.get(endpoint)
        if sub is None or sub.closed:
            raise tornado.web.HTTPError(404, "unknown or expired hub.channel.endpoint")
        if sub.socket is not None:
            raise tornado.web.HTTPError(409, "this endpoint already has a connection")

    def open(self, endpoint: str) -> None:
        sub = self.hub._subs.get(endpoint)
        if sub is None or sub.closed or sub.socket is not None:
            self.close(1008, "unknown endpoint")
            return
        self.sub = sub
        self.set_nodelay(True)
        self.hub._attach(sub, self)

    def on_message(self, message: str | bytes) -> None:
        if self.sub is not None:
            self.hub._on_channel_message(self.sub, message)

    def on_close(self) -> None:
        if self.sub is not None:
            self.hub._on_channel_closed(self.sub, self.close_code)

    def send_text(self, text: str) -> bool:
        """Send one text frame; return ``False`` if the socket is already closed."""
        conn = self.ws_connection
        if conn is None or conn.is_closing():
            return False
        try:
            future = conn.write_message(text)
        except tornado.websocket.WebSocketClosedError:
            return False
        future.add_done_callback(_consume_exception)
        return True

    def send_frame(self, frame: bytes) -> bool:
        """Write a pre-built unmasked text frame (see :func:`text_frame`).

        On a plain TCP stream with nothing queued the frame goes straight to the socket
        (one ``send``, no write future); whatever the kernel does not take, and every
        frame while tornado still has bytes queued, goes through the stream, so frames
        keep their order.
        """
        conn = self.ws_connection
        if conn is None or conn.is_closing():
            return False
        stream = getattr(conn, "stream", None)
        if stream is None or getattr(conn, "_compressor", None) is not None:
            return self.send_text(_frame_payload(frame).decode("utf-8"))
        try:
            if type(stream) is tornado.iostream.IOStream and not stream.writing():
                try:
                    sent = stream.socket.send(frame)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    sent = 0  # the stream's own write reports the failure and closes
                if sent == len(frame):
                    return True
                frame = frame[sent:]
            stream.write(frame)  # the stream silences errors of its own futures
        except tornado.iostream.StreamClosedError:
            return False
        return True

    def get_websocket_protocol(self) -> tornado.websocket.WebSocketProtocol | None:
        """Use :class:`_BatchedProtocol` (same protocol, cheaper frame reading)."""
        proto = super().get_websocket_protocol()
        if isinstance(proto, tornado.websocket.WebSocketProtocol13) and _BATCHED_READS:
            proto.__class__ = _BatchedProtocol
        return proto


#: The batched reader uses tornado internals: only on the tornado releases it was tested
#: with (6.x up to 6.6); any other release keeps tornado's own reader.
_BATCHED_READS = (6, 3) <= tornado.version_info[:2] <= (6, 6) and all(
    hasattr(tornado.websocket.WebSocketProtocol13, name)
    for name in ("_receive_frame_loop", "_handle_message", "_abort")
)


class _BatchedProtocol(tornado.websocket.WebSocketProtocol13):
    """RFC 6455 frame reading that parses every complete frame of one read at once.

    Tornado reads a frame with three or four awaited ``read_bytes`` calls (header,
    length, mask, payload), each with its own future; acknowledgements are small
    frames, so that bookkeeping cost more than the acknowledgement itself. This loop
    awaits one partial read and splits all complete frames in it (RFC 6455 §5.2),
    then hands each message to tornado's own ``_handle_message`` (close, ping, pong,
    UTF-8 checks), so behaviour is tornado's. With per-message compression negotiated
    it falls back to tornado's loop.
    """

    _message_opcode = 0  # opcode of the fragmented message being collected

    async def _receive_frame_loop(self) -> None:
        if self._decompressor is not None or self.stream is None:
            await super()._receive_frame_loop()
            return
        stream = self.stream
        limit = self.params.max_message_size
        buf = bytearray()
        work = 0
        try:
            while not self.client_terminated:
                chunk = await stream.read_bytes(65536, partial=True)
                self._wire_bytes_in += len(chunk)
                buf += chunk
                pos = await self._frames(buf, limit)
                if pos:
                    del buf[:pos]
                work += len(chunk)
                if work >= 256 * 1024:  # let other sockets in (tornado does the same)
                    work = 0
                    await asyncio.sleep(0)
        except tornado.iostream.StreamClosedError:
            self._abort()
        finally:
            self.handler.on_ws_connection_close(self.close_code, self.close_reason)

    async def _frames(self, buf: bytearray, limit: int) -> int:
        """Handle every complete frame at the start of *buf*; return the bytes used."""
        pos, size = 0, len(buf)
        while size - pos >= 2 and not self.client_terminated:
            first, second = buf[pos], buf[pos + 1]
            fin, opcode, length = first & 0x80, first & 0x0F, second & 0x7F
            if first & 0x70 or (opcode & 0x8 and (length >= 126 or not fin)):
                self._abort()  # undefined extension bits; bad control frame (§5.5)
                return pos
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            fragments = self._fragmented_message_buffer
            if length + (len(fragments) if fragments is not None else 0) > limit:
                self.close(1009, "message too big")
                self._abort()
                return pos
            mask = None
            if second & 0x80:
                mask = bytes(buf[pos + head : pos + head + 4])
                head += 4
            end = pos + head + length
            if end > size:
                break
            data = bytes(buf[pos + head : end])
            pos = end
            if mask is not None:
                data = _websocket_mask(mask, data)
            if opcode == 0:  # continuation
                if fragments is None:
                    self._abort()
                    return pos
                fragments.extend(data)
                if not fin:
                    continue
                opcode, data = self._message_opcode, bytes(fragments)
                self._fragmented_message_buffer = None
            elif not opcode & 0x8:
                if fragments is not None:
                    self._abort()  # a new message inside a fragmented one
                    return pos
                if not fin:
                    self._message_opcode = opcode
                    self._fragmented_message_buffer = bytearray(data)
                    continue
            handled = self._handle_message(opcode, data)
            if handled is not None:
                await handled
        return pos


def text_frame(text: str) -> bytes:
    """Return *text* as one final, unmasked websocket text frame (RFC 6455 §5.2)."""
    payload = text.encode("utf-8")
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x81, size)
    elif size <= 0xFFFF:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


def _frame_payload(frame: bytes) -> bytes:
    marker = frame[1] & 0x7F
    return frame[2 + {126: 2, 127: 8}.get(marker, 0) :]


def _consume_exception(future: Any) -> None:
    # a write to a socket that closed meanwhile fails; on_close handles the subscription
    if not future.cancelled():
        future.exception()
