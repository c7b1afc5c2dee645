"""The FHIR Subscription listener on the ``websockets`` library (notes §16, checks 45–46).

:class:`AsyncSubscriptionListener` is the asyncio core; :class:`SubscriptionListener` runs it
on a loop of its own thread, so a notebook (whose kernel loop is already running) and a
plain script use the same blocking API (DESIGN.md D2). The loop thread, the callback
dispatcher, the history behind :meth:`SubscriptionListener.wait_for`, the reconnect backoff
and the websocket options are those of every notification client (:mod:`imagingkit.notify`).

What it does:

1. **Subscribes.** It creates a Subscription on the FHIR server (or adopts one by id):
   topic-based (Subscriptions Backport IG) when the server's CapabilityStatement names the
   topic — imagingkit's store names :data:`~imagingkit.subscriptions.topics.IMAGINGSTUDY_TOPIC`
   — otherwise an R4 legacy criteria Subscription on the websocket channel.
2. **Binds.** ``$get-ws-binding-token``, connect to the returned ``websocket-url`` (refused
   unless on the FHIR server's origin: the token is a credential), send ``bind-with-token``
   (JSON framing, or ``text``; with ``framing="auto"`` JSON first and text if the server
   does not answer). A legacy Subscription without binding tokens is bound with
   ``bind <id>`` on the CapabilityStatement's websocket URL, only once ``GET
   Subscription/<id>`` says ``active`` (HAPI closes the socket on an early bind).
3. **Listens.** Notifications are parsed (:mod:`.notification`), deduplicated and checked
   for gaps by event number (:mod:`.gaps`); a gap that outlives the grace period is
   replayed with ``$events`` or, where unsupported, covered by a re-query. Silence beyond
   the heartbeat period → ``$status``, then reconnect. Legacy ``ping`` → re-query with
   ``_lastUpdated=ge<last seen>`` (``ge``, not ``gt``, with versions deduplicated: two
   writes in the same millisecond are not lost).
4. **Reconnects** after a dropped socket with exponential backoff (jittered, bounded),
   re-binds and catches up (the handshake's ``eventsSinceSubscriptionStart`` reveals the
   gap; unnumbered and legacy subscriptions re-query).
5. **Delivers** one :class:`Change` per changed resource — with the resource (from a
   full-resource payload or fetched), unless ``fetch=False``.
6. **Closes**: deletes the Subscription it created (``on_close="delete"``; ``"off"`` sets
   its status to ``off``; ``"keep"`` leaves it — the default for an adopted one), also at
   interpreter exit.

**The rest-hook channel** (``channel="rest-hook"``) replaces steps 2 and 4: the listener
runs a loopback HTTP receiver (:mod:`.resthook`: 127.0.0.1, an unguessable path, a shared
secret in ``channel.header``) and creates the Subscription with ``channel.type =
rest-hook`` and that endpoint. Start-up waits for the server's handshake POST (topic
Subscriptions; a legacy one is polled until ``active`` and pings with an empty POST).
Notifications feed the same parser, gap tracker, ``$events``/re-query recovery and
callbacks as the websocket. A notification reporting status ``error``, or heartbeat
silence (after ``$status``), makes the listener re-activate the Subscription — a PUT with
status ``requested`` and its current endpoint, which the server answers with a new
handshake whose count reveals what was missed (Backport IG ``errors.md``: only the client
re-activates). An adopted Subscription (``subscription_id=``) is re-pointed at the new
receiver the same way. The FHIR server must be able to reach the notebook's loopback
address — it must run on the same machine — which is why the websocket stays the
default.

HTTP goes through :class:`~imagingkit.fhir.client.FhirClient` (the bridge's AuthMap), on
worker threads; nothing carries credentials to another origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

from imagingkit.errors import (
    AuthError,
    FHIRError,
    ImagingKitError,
    InvalidInputError,
)
from imagingkit.fhir.client import FhirClient, search_url
from imagingkit.notify import (
    CallbackDispatcher,
    ClientThreads,
    ClosedAtExit,
    EventHistory,
    LoopThread,
    invoke,
    open_websocket,
    retry_with_backoff,
)
from imagingkit.notify import callback_dispatcher as _callback_dispatcher
from imagingkit.subscriptions.gaps import EventTracker, Gap
from imagingkit.subscriptions.notification import (
    Notification,
    NotificationEvent,
    bind_with_token_message,
    parse_binding_token,
    parse_legacy_frame,
    parse_notifications,
    parse_status_bundle,
)
from imagingkit.subscriptions.resources import (
    criteria_subscription,
    declares_topic,
    heartbeat_period,
    legacy_websocket_url,
    same_origin_websocket,
    topic_subscription,
)
from imagingkit.subscriptions.resthook import DEFAULT_MAX_BODY, RestHookReceiver
from imagingkit.subscriptions.topics import BACKPORT_SUBSCRIPTION_PROFILE, IMAGINGSTUDY_TOPIC

__all__ = [
    "AsyncSubscriptionListener",
    "Change",
    "ListenerStats",
    "SubscriptionListener",
    "callback_dispatcher",
]

log = logging.getLogger("imagingkit.subscriptions")
T = TypeVar("T")
# user callbacks of the listener and the live frame: failures are logged here, labelled
# as the subscription listener's
_CALLBACK_LOG = log
_CALLBACK_LABEL = "subscription listener"
_CALLBACK_THREAD = "imagingkit-subscription-callbacks"
Callback = Callable[[Any], Any]
_MAX_PAGES = 1000
_MAX_VERSIONS = 100_000


@dataclass(frozen=True)
class Change:
    """A resource the Subscription reported as created or changed.

    Attributes
    ----------
    subscription_id : str
    focus : str or None
        ``"Type/id"`` of the changed resource.
    resource : dict or None
        The resource (payload or fetched); None with ``fetch=False``, ``content="empty"``
        or when it no longer exists.
    number : int or None
        The event number (None: legacy or re-query).
    timestamp : str or None
    source : str
        ``"notification"``, ``"events"`` (replayed by ``$events``) or ``"requery"``.
    """

    subscription_id: str
    focus: str | None
    resource: Mapping[str, Any] | None = None
    number: int | None = None
    timestamp: str | None = None
    source: str = "notification"


@dataclass
class ListenerStats:
    """What the listener received and did."""

    notifications: int = 0
    events: int = 0
    handshakes: int = 0
    heartbeats: int = 0
    duplicates: int = 0
    gaps_detected: int = 0
    recoveries: int = 0
    requeries: int = 0
    status_checks: int = 0
    silences: int = 0
    reconnects: int = 0
    malformed: int = 0
    errors: int = 0
    refused: int = 0  # rest-hook POSTs without the right path or secret
    reactivations: int = 0  # rest-hook Subscriptions put back to ``requested``


def _instant(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _split_criteria(criteria: str) -> tuple[str, list[tuple[str, str]]]:
    kind, _, query = criteria.partition("?")
    kind = kind.strip().strip("/")
    if not kind or not kind[:1].isupper() or "/" in kind:
        raise InvalidInputError(f"criteria {criteria!r} is not a search like 'ImagingStudy?…'")
    return kind, parse_qsl(query, keep_blank_values=True)


class _SocketDone(Exception):
    """The socket must be replaced (closed by the server, silence, bad binding)."""


class AsyncSubscriptionListener:
    """FHIR Subscription listener for asyncio code (see the module docstring).

    Parameters
    ----------
    fhir : FhirClient
        The FHIR server, with its credentials (``bridge.fhir``).
    criteria : str
        What to watch, as a search: ``"ImagingStudy"``, ``"ImagingStudy?patient=Patient/p1"``.
        For a topic Subscription it becomes the filter criteria.
    topic : str, "auto" or None
        Topic canonical; ``"auto"`` uses :data:`IMAGINGSTUDY_TOPIC` when the server declares
        it and *criteria* is on ImagingStudy; ``None`` forces a legacy criteria Subscription.
    subscription_id : str, optional
        Adopt this existing Subscription instead of creating one.
    after_event : int, optional
        Resume after this event number (e.g. ``tracker.contiguous`` of an earlier
        listener): later events the handshake reports are replayed with ``$events``.
        Default: start with the events that follow the first handshake.
    content : {"empty", "id-only", "full-resource"}
        Payload content asked of a topic Subscription.
    heartbeat_period : int, optional
        Seconds between heartbeats asked of a topic Subscription.
    binding : {"auto", "token", "bind"}
        How to bind the websocket: ``$get-ws-binding-token`` (topic Subscriptions always),
        legacy ``bind <id>``, or token first and legacy if the server has no tokens.
    framing : {"json", "text", "auto"}
        ``bind-with-token`` framing; ``"auto"`` tries JSON, then text.
    fetch : bool
        Fetch each changed resource the notification did not carry.
    grace : float
        Seconds to wait for out-of-order events before recovering a gap.
    backoff : (float, float)
        First and largest reconnect delay (doubling, jittered).
    max_reconnect_attempts : int, optional
        Give up after this many failed attempts in a row (None: keep trying).
    timeout : float
        Seconds for HTTP answers, the websocket handshake and the binding.
    active_timeout : float
        Seconds to wait for a legacy Subscription to become ``active``.
    on_close : {"delete", "off", "keep"}, optional
        What :meth:`close` does to the Subscription; default ``"delete"`` for one this
        listener created, ``"keep"`` for an adopted one.
    channel : {"websocket", "rest-hook"}
        How notifications arrive. ``"rest-hook"`` runs a receiver on 127.0.0.1: the FHIR
        server must run on the same machine (see the module docstring).
    max_body : int
        Largest rest-hook notification accepted, in bytes.
    """

    def __init__(
        self,
        fhir: FhirClient,
        criteria: str = "ImagingStudy",
        *,
        topic: str | None = "auto",
        subscription_id: str | None = None,
        after_event: int | None = None,
        content: str = "id-only",
        heartbeat_period: int | None = 30,
        binding: str = "auto",
        framing: str = "json",
        fetch: bool = True,
        grace: float = 1.0,
        backoff: tuple[float, float] = (0.2, 10.0),
        max_reconnect_attempts: int | None = None,
        timeout: float = 10.0,
        active_timeout: float = 10.0,
        on_close: str | None = None,
        channel: str = "websocket",
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.resource_type, self.params = _split_criteria(criteria)
        if channel not in ("websocket", "rest-hook"):
            raise InvalidInputError(f"channel {channel!r} is not 'websocket' or 'rest-hook'")
        if binding not in ("auto", "token", "bind"):
            raise InvalidInputError(f"binding {binding!r} is not 'auto', 'token' or 'bind'")
        if framing not in ("json", "text", "auto"):
            raise InvalidInputError(f"framing {framing!r} is not 'json', 'text' or 'auto'")
        if on_close not in (None, "delete", "off", "keep"):
            raise InvalidInputError(f"on_close {on_close!r} is not 'delete', 'off' or 'keep'")
        self.fhir = fhir
        self.criteria = criteria
        self.topic = topic
        self.subscription_id = subscription_id
        self.content = content
        self.heartbeat_period = heartbeat_period
        self.binding = binding
        self.framing = framing
        self.fetch = fetch
        self.backoff = backoff
        self.max_reconnect_attempts = max_reconnect_attempts
        self.timeout = timeout
        self.active_timeout = active_timeout
        self.on_close = on_close
        self.stats = ListenerStats()
        self.status = "idle"
        self.mode = ""  # "topic" or "criteria"
        self.channel = ""  # "token", "bind" or "rest-hook"
        self.channel_type = channel
        self._receiver: RestHookReceiver | None = None
        if channel == "rest-hook":
            self._receiver = RestHookReceiver(
                self._on_post, on_refused=self._on_refused, max_body=max_body
            )
        self._repoint = False  # the Subscription must be PUT with our endpoint first
        self._early: list[Notification] = []  # rest-hook notes before the id is known
        self._handshaken = asyncio.Event()
        self._trouble = asyncio.Event()
        self._alive_since = 0.0
        self.error: ImagingKitError | None = None
        self.tracker = EventTracker(grace=grace)
        if after_event is not None:
            self.tracker.baseline(after_event)
        self._events_supported = True
        self._created = False
        self._since: dt.datetime | None = None
        self._versions: OrderedDict[str, str] = OrderedDict()
        self._ws: ClientConnection | None = None
        self._runner: asyncio.Task[None] | None = None
        self._gap_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._delivering = asyncio.Lock()
        self._closing = False
        self._listeners: list[Callback] = []
        self._status_listeners: list[Callback] = []
        self._taps: list[Callable[[Change], None]] = []  # in-loop, before listeners
        self._deliver: Callable[[Callback, Any], None] = self._call_here

    # -- listeners ----------------------------------------------------------------------

    def add_listener(self, callback: Callback) -> None:
        """Call ``callback(change)`` for every :class:`Change`."""
        self._listeners.append(callback)

    def add_status_listener(self, callback: Callback) -> None:
        """Call ``callback(status)`` on ``connected``, ``reconnecting``, ``failed``, ``closed``."""
        self._status_listeners.append(callback)

    def _call_here(self, callback: Callback, arg: Any) -> None:
        invoke(callback, arg, logger=_CALLBACK_LOG, label=_CALLBACK_LABEL)

    def _set_status(self, status: str) -> None:
        if status != self.status:
            self.status = status
            for cb in list(self._status_listeners):
                self._deliver(cb, status)

    def _emit(self, change: Change) -> None:
        self.stats.events += 1
        for tap in self._taps:
            tap(change)
        for cb in list(self._listeners):
            self._deliver(cb, change)

    # -- HTTP (on worker threads, through the FhirClient and its AuthMap) ------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wait_for(asyncio.to_thread(fn, *args), self.timeout * 3)

    async def _json(self, method: str, path: str, body: Any = None) -> Any:
        return await self._call(self.fhir.execute, path, method, body)

    async def _get_url(self, url: str) -> Any:
        data = await self._call(self.fhir.get_bytes, url)
        try:
            return json.loads(data)
        except ValueError:
            raise FHIRError("the FHIR server answered a body that is not JSON", url=url) from None

    # -- subscribing --------------------------------------------------------------------

    async def start(self) -> None:
        """Create or adopt the Subscription, connect and bind; then listen in the background.

        Raises
        ------
        FHIRError, AuthError, InvalidInputError
            The server refused, a URL would leave its origin, an answer was malformed.
        """
        self._set_status("connecting")
        try:
            if self._receiver is not None:
                self._receiver.start()
            await self._subscribe()
            await self._connect()
        except BaseException:
            self._set_status("failed")
            if self._created:
                await self._cleanup_subscription()
            if self._receiver is not None:
                await self._receiver.stop()
            raise
        self._runner = asyncio.ensure_future(self._run())

    async def _subscribe(self) -> None:
        statement = await self._get_url(f"{self.fhir.url}/metadata")
        self._ws_url = legacy_websocket_url(statement)
        if self.subscription_id:
            sub = await self._json("get", f"Subscription/{self.subscription_id}")
            profiles = ((sub or {}).get("meta") or {}).get("profile") or []
            self.mode = "topic" if BACKPORT_SUBSCRIPTION_PROFILE in profiles else "criteria"
            if self.on_close is None:
                self.on_close = "keep"
            self._repoint = self._receiver is not None
        else:
            topic = self.topic
            if topic == "auto":
                usable = self.resource_type == "ImagingStudy"
                topic = (
                    IMAGINGSTUDY_TOPIC
                    if usable and declares_topic(statement, IMAGINGSTUDY_TOPIC)
                    else None
                )
            if topic:
                self.mode = "topic"
                resource = topic_subscription(
                    topic,
                    self.criteria if self.params else None,
                    content=self.content,
                    heartbeat_period=self.heartbeat_period,
                )
            else:
                self.mode = "criteria"
                resource = criteria_subscription(self.criteria)
            if self._receiver is not None:
                resource = self._rest_hook_channel(resource)
            self._handshaken.clear()
            sub = await self._json("post", "Subscription", resource)
            if not isinstance(sub, Mapping) or not sub.get("id"):
                raise FHIRError("the FHIR server did not return the created Subscription")
            self.subscription_id = str(sub["id"])
            self._created = True
            if self.on_close is None:
                self.on_close = "delete"
        period = heartbeat_period(sub) if self.mode == "topic" else None
        self.tracker.heartbeat_period = period
        self._since = _instant((sub.get("meta") or {}).get("lastUpdated"))
        log.info("Subscription/%s (%s) on %s", self.subscription_id, self.mode, self.fhir.url)
        early, self._early = self._early, []
        if early:  # the handshake may be POSTed before the create is answered
            self._handle_notifications(tuple(early))

    async def _connect(self) -> None:
        """Open the socket and bind the Subscription (raises on failure); for a
        rest-hook, (re-)activate it and wait for the handshake."""
        if self._receiver is not None:
            await self._connect_resthook()
        elif self.mode == "topic" or self.binding == "token":
            await self._connect_token()
        elif self.binding == "bind":
            await self._connect_legacy()
        else:
            try:
                await self._connect_token()
            except FHIRError as exc:
                if exc.status not in (400, 404, 405, 422, 501):
                    raise
                log.info("no binding tokens here (%s); legacy bind", exc)
                self.binding = "bind"
                await self._connect_legacy()

    # -- the rest-hook channel ----------------------------------------------------------

    def _rest_hook_channel(self, resource: Mapping[str, Any]) -> dict[str, Any]:
        """*resource* with ``channel`` pointed at this listener's receiver: type
        ``rest-hook``, the endpoint, the shared secret as a ``channel.header`` (replacing
        any ``Authorization`` header); a legacy Subscription gets no payload (an empty
        POST is a ping, R4 subscription.html §2.46.7.1)."""
        assert self._receiver is not None
        channel = dict(resource.get("channel") or {})
        headers = [
            h
            for h in channel.get("header") or []
            if isinstance(h, str) and not h.lower().startswith("authorization:")
        ]
        channel.update(
            type="rest-hook",
            endpoint=self._receiver.endpoint,
            header=[*headers, self._receiver.header],
        )
        if self.mode == "criteria":
            channel.pop("payload", None)
            channel.pop("_payload", None)
        return {**resource, "channel": channel}

    async def _connect_resthook(self) -> None:
        """Activate the rest-hook Subscription: PUT it back to ``requested`` with this
        receiver's endpoint when needed (adopted, or re-activating after an error), then
        wait for the handshake (topic) or for ``active`` (legacy)."""
        assert self._receiver is not None
        if not self._receiver.running:
            self._receiver.start()
        path = f"Subscription/{self.subscription_id}"
        repointed = self._repoint
        if repointed:
            sub = await self._json("get", path)
            if not isinstance(sub, Mapping):
                raise FHIRError(f"{path} could not be read to re-activate it")
            updated = self._rest_hook_channel(sub)
            updated["status"] = "requested"
            updated.pop("error", None)
            self._handshaken.clear()
            await self._json("put", path, updated)
            self.stats.reactivations += 1
        self._repoint = True  # every later connect re-activates
        if self.mode == "topic":
            await self._await_handshake()
        # servers write ``active`` only once the handshake POST has returned, and number
        # no event before: start() returns when none can be missed any more
        await self._wait_active()
        self.channel = "rest-hook"
        self._trouble.clear()
        self._alive_since = time.monotonic()
        self._set_status("connected")
        if self.mode == "criteria" or repointed:
            # a server numbers no event while the Subscription is ``requested`` (and some,
            # against errors.md, none while it is ``error``): changes made meanwhile are
            # only found by searching; versions already delivered are not emitted again
            await self.requery("re-activated" if repointed else "activated")

    async def _await_handshake(self) -> None:
        try:
            await asyncio.wait_for(self._handshaken.wait(), self.timeout)
            return
        except asyncio.TimeoutError:
            pass
        sub = await self._json("get", f"Subscription/{self.subscription_id}")
        status = (sub or {}).get("status")
        if status == "active":
            return
        assert self._receiver is not None
        detail = (sub or {}).get("error")
        raise FHIRError(
            f"no rest-hook handshake within {self.timeout} s: Subscription/"
            f"{self.subscription_id} is {status!r}{f' ({detail})' if detail else ''}; the "
            f"FHIR server must reach {self._receiver.endpoint.rsplit('/', 1)[0]}/… on this "
            "machine"
        )

    def _on_post(self, body: bytes) -> int:
        """An authenticated rest-hook POST (on the loop): 200, or 400 if unreadable."""
        if self.mode == "criteria":  # legacy: any POST is a ping (R4 §2.46.7.1)
            self.stats.notifications += 1
            self._alive_since = time.monotonic()
            if self.subscription_id and self.status == "connected":
                self._spawn(self.requery("rest-hook ping"))
            return 200
        try:
            notes = parse_notifications(body)
        except InvalidInputError as exc:
            self.stats.malformed += 1
            log.warning("rest-hook notification refused: %s", exc)
            return 400
        self._handle_notifications(notes)
        return 200

    def _on_refused(self) -> None:
        self.stats.refused += 1

    def _rest_silence_budget(self) -> float | None:
        """Silence tolerated on a rest-hook: one heartbeat period more than on a socket
        (servers queue, pool and retry their POSTs, and tick their heartbeats coarsely)."""
        budget = self.tracker.silence_budget()
        period = self.tracker.heartbeat_period
        return None if budget is None or not period else budget + period

    async def _watch_resthook(self) -> None:
        """While listening on a rest-hook: re-activate on a reported ``error`` or after
        heartbeat silence (``$status`` first, which may reveal missed events)."""
        while not self._closing:
            budget = self._rest_silence_budget()
            last = max(self.tracker.last_message or 0.0, self._alive_since)
            wait = None if budget is None else max(0.05, last + budget - time.monotonic())
            try:
                await asyncio.wait_for(self._trouble.wait(), wait)
                reason = "the server reports status error"
            except asyncio.TimeoutError:
                last = max(self.tracker.last_message or 0.0, self._alive_since)
                if budget is None or time.monotonic() - last < budget:
                    continue
                self.stats.silences += 1
                log.warning(
                    "no heartbeat from Subscription/%s for %.1f s: $status, re-activate",
                    self.subscription_id,
                    budget,
                )
                await self.check_status()
                reason = "heartbeat silence"
            if self._closing:
                break
            log.info("re-activating Subscription/%s: %s", self.subscription_id, reason)
            self._trouble.clear()
            if not await self._reconnect():
                self._set_status("failed")
                break

    async def _open(self, url: str) -> ClientConnection:
        """Open the socket at *url*, which has the FHIR server's origin (checked by the
        callers): it carries the credential of that origin (D7), as servers that guard
        the socket like every other path (Jupyter, ``--auth``) expect."""
        return await open_websocket(
            url,
            timeout=self.timeout,
            max_size=64 * 1024 * 1024,
            error=FHIRError,
            what="subscription websocket",
            headers=self.fhir.auth.headers_for(self.fhir.url),
        )

    async def _connect_token(self) -> None:
        # GET: Medplum routes only GET; the Backport IG allows both (no input but the id)
        answer = await self._json(
            "get", f"Subscription/{self.subscription_id}/$get-ws-binding-token"
        )
        token = parse_binding_token(answer)
        url = same_origin_websocket(token.websocket_url, self.fhir.url)
        ws = await self._open(url)
        framings = ["json", "text"] if self.framing == "auto" else [self.framing]
        for framing in framings:
            await ws.send(bind_with_token_message(token.token, framing))
            try:
                first = await self._first_notification(ws)
            except _SocketDone as exc:
                if framing != framings[-1] and ws.state is State.OPEN:
                    log.info("no handshake with %s framing (%s); trying text", framing, exc)
                    continue
                await ws.close()
                raise FHIRError(f"the websocket did not confirm the binding: {exc}") from None
            self.channel = "token"
            self._ws = ws
            self._set_status("connected")
            self._handle_notifications(first)
            return

    async def _first_notification(self, ws: ClientConnection) -> tuple[Notification, ...]:
        """Wait for the handshake (or any notification) after a bind."""
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _SocketDone("no handshake in time")
            try:
                frame = await asyncio.wait_for(ws.recv(), left)
            except asyncio.TimeoutError:
                raise _SocketDone("no handshake in time") from None
            except websockets.exceptions.ConnectionClosed as exc:
                raise _SocketDone(f"socket closed ({exc})") from None
            try:
                return parse_notifications(frame)
            except InvalidInputError as exc:
                text = _outcome(frame)
                if text is not None:
                    raise _SocketDone(f"the server answered: {text}") from None
                self.stats.malformed += 1
                log.warning("malformed frame before the handshake: %s", exc)

    async def _wait_active(self) -> None:
        """Poll ``GET Subscription/<id>`` until ``active`` (legacy bind, HAPI behaviour)."""
        deadline = time.monotonic() + self.active_timeout
        delay = 0.05
        status = None
        while time.monotonic() < deadline:
            sub = await self._json("get", f"Subscription/{self.subscription_id}")
            status = (sub or {}).get("status")
            if status == "active":
                return
            if status in ("error", "off"):
                break
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)
        raise FHIRError(
            f"Subscription/{self.subscription_id} is {status!r}, not 'active', "
            f"after {self.active_timeout} s; not binding"
        )

    async def _connect_legacy(self) -> None:
        if not self._ws_url:
            raise FHIRError(
                "the server advertises no websocket URL (CapabilityStatement "
                "capabilitystatement-websocket) and gives no binding tokens"
            )
        url = same_origin_websocket(self._ws_url, self.fhir.url)
        await self._wait_active()
        ws = await self._open(url)
        await ws.send(f"bind {self.subscription_id}")
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            try:
                frame = await asyncio.wait_for(ws.recv(), max(left, 0.001))
                parsed = parse_legacy_frame(frame)
            except (asyncio.TimeoutError, websockets.exceptions.ConnectionClosed) as exc:
                await ws.close()
                raise FHIRError(f"no 'bound' answer to the bind ({exc!r})") from None
            except InvalidInputError as exc:
                self.stats.malformed += 1
                log.warning("%s", exc)
                continue
            if parsed.kind == "error":
                await ws.close()
                raise FHIRError(f"the server refused the bind: {parsed.value}")
            if parsed.kind == "bound":
                break
        self.channel = "bind"
        self._ws = ws
        self._set_status("connected")
        await self.requery("bound")

    # -- the receive loop ---------------------------------------------------------------

    async def _run(self) -> None:
        if self._receiver is not None:
            await self._watch_resthook()
            return
        while not self._closing:
            ws = self._ws
            if ws is None:
                break
            try:
                await self._listen(ws)
            except _SocketDone as exc:
                log.info("subscription socket replaced: %s", exc)
            finally:
                with contextlib.suppress(Exception):
                    await ws.close()
                self._ws = None
            if self._closing:
                break
            if not await self._reconnect():
                self._set_status("failed")
                break

    async def _listen(self, ws: ClientConnection) -> None:
        while not self._closing:
            budget = self.tracker.silence_budget() if self.channel == "token" else None
            try:
                frame = await asyncio.wait_for(ws.recv(), budget)
            except asyncio.TimeoutError:
                self.stats.silences += 1
                log.warning(
                    "no heartbeat from Subscription/%s for %.1f s: $status, reconnect",
                    self.subscription_id,
                    budget,
                )
                await self.check_status()
                raise _SocketDone("heartbeat silence") from None
            except websockets.exceptions.ConnectionClosed as exc:
                raise _SocketDone(f"closed by the server ({exc})") from None
            if self.channel == "bind":
                await self._handle_legacy(frame)
            else:
                self._handle_frame(frame)

    def _handle_frame(self, frame: str | bytes) -> None:
        if _control(frame):
            return
        try:
            notes = parse_notifications(frame)
        except InvalidInputError as exc:
            self.stats.malformed += 1
            text = _outcome(frame)
            log.warning("subscription frame dropped: %s", text or exc)
            return
        self._handle_notifications(notes)

    def _handle_notifications(self, notes: tuple[Notification, ...]) -> None:
        if self.subscription_id is None:  # a rest-hook handshake before the create answer
            self._early.extend(notes[: max(0, 100 - len(self._early))])
            return
        now = time.monotonic()
        for note in notes:
            if note.subscription_id and note.subscription_id != self.subscription_id:
                continue  # another Subscription bound on the same socket
            self.stats.notifications += 1
            if note.type == "handshake":
                self.stats.handshakes += 1
                self._handshaken.set()
            if note.status == "error" and self.channel == "rest-hook":
                self._trouble.set()  # only the client re-activates (errors.md)
            elif note.type == "heartbeat":
                self.stats.heartbeats += 1
            if note.status == "error" or note.errors:
                self.stats.errors += 1
                log.warning(
                    "Subscription/%s reports %s: %s",
                    self.subscription_id,
                    note.status,
                    "; ".join(note.errors) or "no detail",
                )
            before = self.tracker.gaps_detected
            fresh = self.tracker.observe(note, now)
            self.stats.duplicates = self.tracker.duplicates
            if self.tracker.gaps_detected != before:
                self.stats.gaps_detected = self.tracker.gaps_detected
                log.info("Subscription/%s missed %s", self.subscription_id, self.tracker.missing())
            if fresh:
                self._spawn(self._deliver_events(note, fresh, "notification"))
            if note.type == "handshake" and not note.numbered and self.stats.handshakes > 1:
                self._spawn(self.requery("reconnected"))  # unnumbered server: catch up
        self._arm_gap_timer()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("subscription task failed: %r", task.exception())

    async def _deliver_events(
        self, note: Notification | None, events: list[NotificationEvent], source: str
    ) -> None:
        # one at a time (asyncio.Lock is FIFO): changes are emitted in arrival order even
        # though fetching the resources takes a round trip each
        async with self._delivering:
            await self._deliver_locked(note, events, source)

    async def _deliver_locked(
        self, note: Notification | None, events: list[NotificationEvent], source: str
    ) -> None:
        for event in events:
            resource = note.resource_for(event) if note is not None else None
            key = event.focus_key
            if resource is None and self.fetch and key:
                resource = await self._fetch(key)
            if resource is not None and not self._remember(resource) and source == "events":
                continue  # a replayed version a re-query already delivered
            self._emit(
                Change(
                    self.subscription_id or "",
                    key,
                    resource,
                    event.number,
                    event.timestamp,
                    source,
                )
            )

    async def _fetch(self, key: str) -> Mapping[str, Any] | None:
        try:
            found = await self._get_url(f"{self.fhir.url}/{key}")
        except FHIRError as exc:
            if exc.status in (404, 410):
                return None
            log.warning("could not fetch %s: %s", key, exc)
            return None
        return found if isinstance(found, Mapping) else None

    def _remember(self, resource: Mapping[str, Any]) -> bool:
        """Record a resource version; False if it was seen before."""
        meta = resource.get("meta") or {}
        key = f"{resource.get('resourceType')}/{resource.get('id')}"
        version = str(meta.get("versionId") or meta.get("lastUpdated") or "")
        when = _instant(meta.get("lastUpdated"))
        if when is not None and (self._since is None or when > self._since):
            self._since = when
        if version and self._versions.get(key) == version:
            return False
        self._versions[key] = version
        self._versions.move_to_end(key)
        if len(self._versions) > _MAX_VERSIONS:
            self._versions.popitem(last=False)
        return True

    # -- gaps, status, re-query ---------------------------------------------------------

    def _arm_gap_timer(self) -> None:
        deadline = self.tracker.next_deadline()
        if deadline is None or self._gap_timer is not None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, deadline - time.monotonic())

        def fire() -> None:
            self._gap_timer = None
            self._spawn(self._recover_due())

        self._gap_timer = loop.call_later(delay, fire)

    async def _recover_due(self) -> None:
        for gap in self.tracker.due(time.monotonic()):
            await self._recover(gap)
        self._arm_gap_timer()

    async def _recover(self, gap: Gap) -> None:
        """Replay *gap* with ``$events``; re-query what it cannot bring (``errors.md``)."""
        if self._events_supported:
            path = (
                f"Subscription/{self.subscription_id}/$events"
                f"?eventsSinceNumber={gap.first}&eventsUntilNumber={gap.last}"
            )
            try:
                answer = await self._get_url(f"{self.fhir.url}/{path}")
                notes = parse_notifications(answer)
            except (FHIRError, InvalidInputError) as exc:
                status = getattr(exc, "status", None)
                if status in (400, 404, 405, 501):
                    self._events_supported = False
                log.warning("$events %d–%d failed (%s); re-query", gap.first, gap.last, exc)
            else:
                replayed = [e for n in notes for e in n.events if e.number in gap.numbers()]
                complete = {e.number for e in replayed} >= set(gap.numbers())
                fresh = self.tracker.recovered(gap, replayed)
                self.stats.duplicates = self.tracker.duplicates
                self.stats.recoveries += 1
                for note in notes:
                    mine = [e for e in fresh if e in note.events]
                    if mine:
                        await self._deliver_events(note, mine, "events")
                if complete:
                    return
        self.tracker.abandon(gap)
        await self.requery(f"gap {gap.first}–{gap.last}")

    async def check_status(self) -> Notification | None:
        """Ask ``$status`` (Backport IG); a count beyond what arrived opens a gap."""
        self.stats.status_checks += 1
        url = f"{self.fhir.url}/Subscription/{self.subscription_id}/$status"
        try:
            notes = parse_status_bundle(await self._get_url(url))
        except (FHIRError, InvalidInputError) as exc:
            log.warning("$status failed: %s", exc)
            return None
        mine = [n for n in notes if n.subscription_id in (None, self.subscription_id)]
        if not mine:
            return None
        note = replace(mine[0], type="query-status", events=())
        self.tracker.observe(note, time.monotonic())
        self.stats.gaps_detected = self.tracker.gaps_detected
        self._arm_gap_timer()
        return mine[0]

    async def requery(self, reason: str = "asked") -> int:
        """Search the criteria for resources changed since the last one seen; emit them.

        ``_lastUpdated=ge<last seen>`` (R4 search §3.1.1.4.3); versions already seen are
        skipped. Returns the number of changes emitted.
        """
        self.stats.requeries += 1
        params = list(self.params)
        if self._since is not None:
            stamp = self._since.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
            params.append(("_lastUpdated", f"ge{stamp}"))
        url: str | None = search_url(self.fhir.url, self.resource_type, params)
        found: list[Mapping[str, Any]] = []
        for _ in range(_MAX_PAGES):
            if url is None:
                break
            bundle = await self._get_url(url)
            for entry in (bundle or {}).get("entry") or []:
                resource = (entry or {}).get("resource")
                if isinstance(resource, Mapping) and resource.get("resourceType") == (
                    self.resource_type
                ):
                    found.append(resource)
            url = next(
                (
                    link.get("url")
                    for link in (bundle or {}).get("link") or []
                    if isinstance(link, Mapping) and link.get("relation") == "next"
                ),
                None,
            )
            if url is not None and not url.startswith(self.fhir.url):
                raise FHIRError(f"the next link {url!r} leaves the FHIR base", url=self.fhir.url)
        emitted = 0
        for resource in found:
            if self._remember(resource):
                key = f"{resource['resourceType']}/{resource.get('id')}"
                self._emit(Change(self.subscription_id or "", key, resource, None, None, "requery"))
                emitted += 1
        log.info("re-query (%s) found %d change(s)", reason, emitted)
        return emitted

    async def _handle_legacy(self, frame: str | bytes) -> None:
        try:
            parsed = parse_legacy_frame(frame)
        except InvalidInputError as exc:
            self.stats.malformed += 1
            log.warning("%s", exc)
            return
        self.stats.notifications += 1
        if parsed.kind == "ping" and parsed.value == self.subscription_id:
            await self.requery("ping")
        elif parsed.kind == "error":
            self.stats.errors += 1
            log.warning("subscription websocket error: %s", parsed.value)

    # -- reconnecting -------------------------------------------------------------------

    async def _reconnect(self) -> bool:
        self._set_status("reconnecting")
        connected = await retry_with_backoff(
            self._connect,
            self.backoff,
            self.max_reconnect_attempts,
            stopped=lambda: self._closing,
            retry_on=(ImagingKitError, OSError, asyncio.TimeoutError),
            failed=self._reconnect_failed,
        )
        if connected:
            self.stats.reconnects += 1
        return connected

    def _reconnect_failed(self, exc: BaseException, attempt: int) -> bool:
        if isinstance(exc, AuthError):  # refused credentials do not get better by retrying
            self.error = exc
            log.error("reconnect refused: %s", exc)
            return False
        log.info("reconnect attempt %d failed: %s", attempt, exc)
        self._set_status("reconnecting")
        return True

    # -- closing ------------------------------------------------------------------------

    async def _cleanup_subscription(self) -> None:
        await asyncio.to_thread(self.cleanup_subscription)

    def cleanup_subscription(self) -> None:
        """Delete or switch off the Subscription as ``on_close`` says (blocking HTTP).

        Runs on the caller's thread: at interpreter exit no new worker thread may start.
        """
        action = self.on_close
        if not self.subscription_id or action in (None, "keep"):
            return
        path = f"Subscription/{self.subscription_id}"
        try:
            if action == "delete":
                self.fhir.execute(path, "delete")
            elif action == "off":
                sub = self.fhir.execute(path, "get")
                if isinstance(sub, Mapping):
                    self.fhir.execute(path, "put", {**sub, "status": "off"})
        except ImagingKitError as exc:
            log.warning("could not %s %s: %s", action, path, exc)
        self.on_close = "keep"  # done: never twice

    async def close(self, cleanup: bool = True) -> None:
        """Close the socket, stop listening and (*cleanup*) delete/switch off the
        Subscription."""
        if self._closing:
            return
        self._closing = True
        if self._gap_timer is not None:
            self._gap_timer.cancel()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), self.timeout)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
        for task in list(self._tasks):
            task.cancel()
        if cleanup:
            await self._cleanup_subscription()
        if self._receiver is not None:
            await self._receiver.stop(self.timeout)
        self._set_status("closed")


def _outcome(frame: str | bytes) -> str | None:
    """The text of an error frame: a bare OperationOutcome (Medplum) or
    ``{"type": "error", "payload": OperationOutcome}``; None for anything else."""
    try:
        data = json.loads(frame)
    except (ValueError, UnicodeDecodeError):
        text = frame if isinstance(frame, str) else ""
        return text[6:].strip() or "error" if text.startswith("error") else None
    if isinstance(data, dict) and data.get("type") == "error":
        payload = data.get("payload")
        data = payload if isinstance(payload, dict) else {}
        if not data.get("resourceType"):
            return "error"
    if isinstance(data, dict) and data.get("resourceType") == "OperationOutcome":
        issues = [i for i in data.get("issue") or [] if isinstance(i, dict)]
        return (
            "; ".join(
                str(i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code"))
                for i in issues
            )
            or "error"
        )
    return None


def _control(frame: str | bytes) -> bool:
    """A channel control frame (``pong``), not a notification."""
    if isinstance(frame, str) and frame.strip() == "pong":
        return True
    try:
        data = json.loads(frame)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and data.get("type") == "pong"


# --------------------------------------------------------------------------- blocking API


def callback_dispatcher(loop: asyncio.AbstractEventLoop | str | None) -> CallbackDispatcher:
    """Where callbacks run: *loop*, else the caller's running loop (a notebook kernel's,
    where widget updates are safe), else one dispatcher thread; ``"thread"`` forces it."""
    return _callback_dispatcher(
        loop, name=_CALLBACK_THREAD, logger=_CALLBACK_LOG, label=_CALLBACK_LABEL
    )


def _loop_error(message: str) -> FHIRError:
    return FHIRError(f"subscription listener: {message}")


_OPEN = ClosedAtExit(timeout=3)  # kernel or script exit: remove the Subscriptions we made


class SubscriptionListener:
    """Blocking FHIR Subscription listener for notebooks and scripts.

    Connects on construction; the network runs on a background loop thread, so it works
    inside a running ipykernel loop. Takes the parameters of
    :class:`AsyncSubscriptionListener`, plus:

    Parameters
    ----------
    loop : asyncio.AbstractEventLoop or "thread" or None
        Where callbacks run: default the caller's running loop if any (a notebook kernel,
        so widget updates are safe), else one dispatcher thread, in order.

    Examples
    --------
    >>> listener = SubscriptionListener(bridge.fhir, "ImagingStudy")     # doctest: +SKIP
    >>> listener.on_change(lambda change: print(change.focus))           # doctest: +SKIP
    >>> listener.wait_for(lambda c: c.focus == "ImagingStudy/s9", 30)    # doctest: +SKIP
    >>> listener.close()                                                 # doctest: +SKIP

    A FHIR server on the same machine can POST instead (rest-hook channel):

    >>> SubscriptionListener(fhir, "ImagingStudy", channel="rest-hook")  # doctest: +SKIP
    """

    def __init__(
        self,
        fhir: FhirClient,
        criteria: str = "ImagingStudy",
        *,
        loop: asyncio.AbstractEventLoop | str | None = None,
        **options: Any,
    ) -> None:
        self._dispatcher = callback_dispatcher(loop)
        self._client = AsyncSubscriptionListener(fhir, criteria, **options)
        self._client._deliver = self._dispatcher
        self._history: EventHistory[Change] = EventHistory()
        self._client._taps.append(self._history.record)
        self._timeout = self._client.timeout
        self._lt = LoopThread(
            "imagingkit-subscriptions", error=_loop_error, kind="subscription listener"
        )
        self._threads = ClientThreads(self._lt, self._dispatcher)
        self._threads.start(self._client.start(), self._timeout * 6)
        _OPEN.add(self)

    def _run(self, coro: Awaitable[T], timeout: float) -> T:
        return self._lt.run(coro, timeout)

    # -- state --------------------------------------------------------------------------

    @property
    def subscription_id(self) -> str | None:
        """The Subscription's id on the server."""
        return self._client.subscription_id

    @property
    def mode(self) -> str:
        """``"topic"`` (Backport IG) or ``"criteria"`` (R4 legacy)."""
        return self._client.mode

    @property
    def channel(self) -> str:
        """``"token"`` (bind-with-token), ``"bind"`` (legacy bind) or ``"rest-hook"``."""
        return self._client.channel

    @property
    def status(self) -> str:
        """``connected``, ``reconnecting``, ``failed`` or ``closed``."""
        return self._client.status

    @property
    def stats(self) -> ListenerStats:
        """Counters: events, duplicates, gaps detected, recoveries, reconnects …"""
        return self._client.stats

    @property
    def tracker(self) -> EventTracker:
        """The event-number tracker (``contiguous``, ``missing()``)."""
        return self._client.tracker

    # -- callbacks and waiting ----------------------------------------------------------

    def on_change(self, callback: Callback) -> Callback:
        """Register ``callback(change)``; usable as a decorator."""
        self._lt.call(self._client.add_listener, callback, timeout=self._timeout)
        return callback

    def on_status(self, callback: Callback) -> Callback:
        """Register ``callback(status)``."""
        self._lt.call(self._client.add_status_listener, callback, timeout=self._timeout)
        return callback

    def add_tap(self, tap: Callable[[Change], None]) -> None:
        """Run *tap(change)* on the network thread itself (must be quick, not block)."""
        self._lt.call(self._client._taps.append, tap, timeout=self._timeout)

    def mark(self) -> int:
        """A position in the received history, for :meth:`wait_for` ``after=``."""
        return self._history.mark()

    def wait_for(
        self, match: str | Callable[[Change], bool], timeout: float = 10.0, *, after: int = 0
    ) -> Change:
        """Block until a change matching *match* (a ``"Type/id"`` or a predicate) arrived.

        Raises
        ------
        FHIRError
            Nothing matched within *timeout* seconds.
        """
        if isinstance(match, str):
            wanted = match
            predicate: Callable[[Change], bool] = lambda c: c.focus == wanted  # noqa: E731
        else:
            predicate = match
        found = self._history.wait_for(predicate, timeout, after=after)
        if found is None:
            raise FHIRError(f"no change matching {match!r} within {timeout} s")
        return found

    def changes(self) -> list[Change]:
        """The changes received so far (most recent 10,000)."""
        return self._history.items()

    # -- actions ------------------------------------------------------------------------

    def check_status(self) -> Notification | None:
        """Ask the server's ``$status`` now."""
        return self._run(self._client.check_status(), self._timeout * 3)

    def requery(self) -> int:
        """Re-query the criteria for changes since the last one seen; emit them."""
        return self._run(self._client.requery("asked"), self._timeout * 6)

    def close(self, timeout: float = 5.0) -> None:
        """Close the socket, delete (or switch off) the Subscription, stop the threads."""
        _OPEN.discard(self)
        self._threads.stop(
            lambda: self._client.close(cleanup=False),
            timeout=timeout,
            wait=timeout * 3,
            ignore=ImagingKitError,
        )
        self._client.cleanup_subscription()  # here: works at interpreter exit too

    def __enter__(self) -> SubscriptionListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<SubscriptionListener Subscription/{self.subscription_id} {self.mode} {self.status}>"
        )
