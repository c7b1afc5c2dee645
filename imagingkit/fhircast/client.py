"""FHIRcast 3.0.0 subscriber and publisher on the ``websockets`` library.

:class:`AsyncFhircastClient` is the asyncio core; :class:`FhircastClient` runs it on a
loop of its own thread so notebook code (whose kernel loop is already running) and plain
scripts use the same blocking API (DESIGN.md D2).

What the client does (FHIRcast STU3 page in brackets):

- subscribes with a form POST, connects to ``hub.channel.endpoint`` and waits for the
  confirmation; a denial raises (``2-4``);
- acknowledges every event with ``{"id", "status": 200}``, its own echoes included
  (``2-5``), before handing it to callbacks;
- drops duplicates by ``id`` and events older than the one that established the current
  context (``2-5``); ignores the ballot ``heartbeat`` (notes §8);
- surfaces a denial (reason, ``in_sync = False``) instead of dropping it (``2-4``);
- after an abnormal close, resubscribes with exponential backoff and re-synchronises from
  Get Current Context (``4-2-1``, ``2-9``); an update whose ``context.priorVersionId`` is
  not the local version also triggers a re-sync (IHE RAD-154);
- renews its lease before it runs out; on close unsubscribes and closes with 1000 (``2-5``).

Callbacks receive :class:`~imagingkit.fhircast.protocol.Event` objects. The sync client
delivers them on the caller's asyncio loop when one is running (e.g. the kernel's, so
widget updates are safe), otherwise on one dispatcher thread, in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

import tornado.httpclient
import websockets
from websockets.asyncio.client import ClientConnection

from imagingkit.errors import FHIRcastError, InvalidInputError
from imagingkit.fhircast import protocol
from imagingkit.fhircast.protocol import Event
from imagingkit.notify import (
    ClientThreads,
    ClosedAtExit,
    EventHistory,
    LoopThread,
    callback_dispatcher,
    invoke,
    open_websocket,
    retry_with_backoff,
)

__all__ = ["AsyncFhircastClient", "ClientStats", "CurrentContext", "Denial", "FhircastClient"]

log = logging.getLogger("imagingkit.fhircast.client")

DEFAULT_EVENTS = (
    "Patient-open",
    "Patient-close",
    "ImagingStudy-open",
    "ImagingStudy-close",
    "DiagnosticReport-open",
    "DiagnosticReport-close",
    "DiagnosticReport-update",
    "DiagnosticReport-select",
    "SyncError",
)

Callback = Callable[[Any], Any]
TokenSource = str | Callable[[], str] | None


@dataclass(frozen=True)
class Denial:
    """A subscription denial received from the hub (``2-4``)."""

    topic: str
    events: tuple[str, ...]
    reason: str | None


@dataclass(frozen=True)
class CurrentContext:
    """The context a subscriber is in: the open that established it plus shared content.

    Attributes
    ----------
    event : Event
        The ``*-open`` event (or, after a re-sync, one built from Get Current Context).
    anchor : str
        Anchor resourceType.
    version_id : str or None
        ``context.versionId`` (tracked even when content is ignored, ``2-10``).
    content : dict
        Shared content, ``"Type/id"`` → resource.
    selection : tuple of str
        References selected by the latest ``DiagnosticReport-select``.
    """

    event: Event
    anchor: str
    version_id: str | None = None
    content: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    selection: tuple[str, ...] = ()

    @property
    def anchor_id(self) -> str | None:
        """Logical id of the anchor resource."""
        spec = protocol.spec_for(f"{self.anchor}-open")
        key = spec.anchor_key if spec else self.anchor.lower()
        return protocol.anchor_id(self.event.value(key or ""))

    @property
    def patient(self) -> Any:
        """The ``patient`` resource or reference, if any."""
        return self.event.value("patient")

    @property
    def study(self) -> Any:
        """The first ``study`` resource or reference, if any."""
        return self.event.value("study")

    @property
    def report(self) -> Any:
        """The ``report`` resource or reference, if any."""
        return self.event.value("report")

    @property
    def study_uid(self) -> str | None:
        """The Study Instance UID of :attr:`study` (STU3 identifier or STU2 ``uid``)."""
        return protocol.study_instance_uid(self.study)

    @property
    def accession_number(self) -> str | None:
        """The accession number of :attr:`study`."""
        return protocol.accession_number(self.study)


@dataclass
class ClientStats:
    """Counters of what the client received."""

    received: int = 0
    acknowledged: int = 0
    duplicates: int = 0
    stale: int = 0
    heartbeats: int = 0
    malformed: int = 0
    reconnects: int = 0
    resyncs: int = 0


def _token(source: TokenSource) -> str | None:
    if source is None:
        return None
    return source() if callable(source) else source


class AsyncFhircastClient:
    """FHIRcast subscriber/publisher for asyncio code.

    Parameters
    ----------
    hub_url : str
        ``hub.url``, e.g. ``http://127.0.0.1:8042/fhircast``.
    topic : str
        ``hub.topic`` of the session.
    events : iterable of str
        Events to subscribe to (case-insensitive).
    subscriber_name : str
        ``subscriber.name``, used by the hub in SyncErrors.
    token : str or callable, optional
        Bearer token (or a function returning a fresh one) for HTTP requests (``2-2``).
    lease_seconds : int, optional
        Requested lease; the hub may grant less.
    ack_status : int
        Status sent in acknowledgements: 200 (applied) or 202 (received; then call
        :meth:`send_sync_error` to refuse later, ``2-5``).
    reconnect : bool
        Resubscribe after an abnormal close.
    backoff : (float, float)
        First and largest reconnect delay, in seconds (doubling, with jitter).
    max_reconnect_attempts : int, optional
        Give up after this many failed attempts in a row (``None``: keep trying).
    timeout : float
        Seconds to wait for HTTP answers and for the confirmation.
    renew_lease : bool
        Resubscribe on the same endpoint at 3/4 of the lease.
    """

    def __init__(
        self,
        hub_url: str,
        topic: str,
        events: Iterable[str] = DEFAULT_EVENTS,
        *,
        subscriber_name: str = "imagingkit",
        token: TokenSource = None,
        lease_seconds: int | None = None,
        ack_status: int = protocol.ACK_OK,
        reconnect: bool = True,
        backoff: tuple[float, float] = (0.1, 10.0),
        max_reconnect_attempts: int | None = None,
        timeout: float = 10.0,
        renew_lease: bool = True,
        max_seen_ids: int = 10_000,
    ) -> None:
        if not topic or not isinstance(topic, str):
            raise InvalidInputError(f"topic must be a non-empty string, got {topic!r}")
        names = [e.strip() for e in events if e and e.strip()]
        if not names:
            raise InvalidInputError("subscribe to at least one event")
        bad = [e for e in names if not protocol.event_grammar_ok(e)]
        if bad:
            raise InvalidInputError(f"event name(s) {', '.join(bad)} break the FHIRcast grammar")
        self.hub_url = hub_url.rstrip("/")
        self.topic = topic
        self.requested_events = tuple(names)
        self.subscriber_name = subscriber_name
        self.token = token
        self.lease_seconds = lease_seconds
        self.ack_status = ack_status
        self.reconnect = reconnect
        self.backoff = backoff
        self.max_reconnect_attempts = max_reconnect_attempts
        self.timeout = timeout
        self.renew_lease = renew_lease
        self.stats = ClientStats()
        self.status = "idle"
        self.denial: Denial | None = None
        self.granted_events: tuple[str, ...] = ()
        self.granted_lease: int | None = None
        self.endpoint: str | None = None
        self.in_sync = False
        self._max_seen = max_seen_ids
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._published: OrderedDict[str, None] = OrderedDict()
        self._current: CurrentContext | None = None
        self._opens: dict[str, Event] = {}
        self._context_time: Any = None
        self._ws: ClientConnection | None = None
        self._http: tornado.httpclient.AsyncHTTPClient | None = None
        self._runner: asyncio.Task[None] | None = None
        self._renewal: asyncio.TimerHandle | None = None
        self._resync_task: asyncio.Future[Any] | None = None
        self._closing = False
        self._listeners: list[tuple[frozenset[str] | None, Callback]] = []
        self._taps: list[Callable[[Event], None]] = []  # run in-loop, before listeners
        self._context_listeners: list[Callback] = []
        self._denial_listeners: list[Callback] = []
        self._status_listeners: list[Callback] = []
        self._deliver: Callable[[Callback, Any], None] = self._call_here

    # --- listeners ---------------------------------------------------------------------

    def add_listener(self, callback: Callback, events: Iterable[str] | None = None) -> None:
        """Call ``callback(event)`` for each new event (all, or only *events*)."""
        keys = frozenset(e.lower() for e in events) if events is not None else None
        self._listeners.append((keys, callback))

    def add_context_listener(self, callback: Callback) -> None:
        """Call ``callback(CurrentContext | None)`` whenever the current context changes."""
        self._context_listeners.append(callback)

    def add_denial_listener(self, callback: Callback) -> None:
        """Call ``callback(Denial)`` when the hub denies the subscription."""
        self._denial_listeners.append(callback)

    def add_status_listener(self, callback: Callback) -> None:
        """Call ``callback(status)`` on ``connected``, ``reconnecting``, ``denied`` …"""
        self._status_listeners.append(callback)

    def _call_here(self, callback: Callback, arg: Any) -> None:
        invoke(callback, arg, logger=log, label="FHIRcast")

    def _set_status(self, status: str) -> None:
        if status == self.status:
            return
        self.status = status
        for cb in list(self._status_listeners):
            self._deliver(cb, status)

    # --- state -------------------------------------------------------------------------

    @property
    def current(self) -> CurrentContext | None:
        """The current context (``None`` when nothing is open)."""
        return self._current

    @property
    def open_contexts(self) -> dict[str, Event]:
        """The latest unclosed open per anchor type, as received."""
        return dict(self._opens)

    def is_own(self, event: Event) -> bool:
        """Whether *event* is the echo of a request this client published (``2-6``)."""
        return event.id in self._published

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe, connect and wait for the confirmation.

        Raises
        ------
        FHIRcastError
            The hub refused (HTTP status in ``.status``), denied the subscription, sent no
            confirmation within the timeout, or could not be reached.
        """
        if self._runner is not None:
            return
        self._http = tornado.httpclient.AsyncHTTPClient(force_instance=True)
        self._closing = False
        try:
            await self._connect()
        except BaseException:
            self._http.close()
            self._http = None
            self._set_status("closed")
            raise
        self._runner = asyncio.ensure_future(self._run())

    async def close(self, timeout: float = 5.0) -> None:
        """Unsubscribe, close the socket with 1000 and stop (``2-5``)."""
        if self._closing and self._runner is None:
            return
        self._closing = True
        if self._renewal is not None:
            self._renewal.cancel()
        ws, endpoint = self._ws, self.endpoint
        if ws is not None and endpoint is not None and self.denial is None:
            form = {
                "hub.channel.type": "websocket",
                "hub.mode": "unsubscribe",
                "hub.topic": self.topic,
                "hub.channel.endpoint": endpoint,
            }
            with contextlib.suppress(FHIRcastError, OSError, asyncio.TimeoutError):
                await asyncio.wait_for(self._post_form(form), timeout)
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(1000, "subscriber closing"), timeout)
        for task in (self._runner, self._resync_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(task, timeout)
        self._runner = None
        if self._http is not None:
            self._http.close()
            self._http = None
        self.in_sync = False
        self._set_status("closed")

    async def __aenter__(self) -> AsyncFhircastClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- HTTP --------------------------------------------------------------------------

    async def _fetch(
        self, method: str, url: str, body: str | None = None, content_type: str | None = None
    ) -> tuple[int, bytes]:
        if self._http is None:
            raise FHIRcastError("the FHIRcast client is not started", url=url)
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        token = _token(self.token)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = tornado.httpclient.HTTPRequest(
            url,
            method=method,
            body=body,
            headers=headers,
            request_timeout=self.timeout,
            connect_timeout=self.timeout,
        )
        try:
            response = await self._http.fetch(request, raise_error=False)
        except (OSError, tornado.httpclient.HTTPClientError) as exc:
            raise FHIRcastError(f"could not reach the FHIRcast hub: {exc}", url=url) from exc
        if response.code == 599:
            raise FHIRcastError(f"could not reach the FHIRcast hub: {response.error}", url=url)
        return response.code, response.body or b""

    async def _post_form(self, form: Mapping[str, str]) -> dict[str, Any]:
        status, body = await self._fetch(
            "POST", self.hub_url, urlencode(form), "application/x-www-form-urlencoded"
        )
        text = body.decode("utf-8", "replace").strip()
        if status != 202 and not 200 <= status < 300:
            raise FHIRcastError(
                f"the hub refused {form.get('hub.mode')}",
                url=self.hub_url,
                status=status,
                server_message=text[:500],
            )
        return protocol.loads_object(body, "subscription response")

    async def get_context(self) -> dict[str, Any]:
        """Return the hub's current context for the topic (Get Current Context, ``2-9``)."""
        url = f"{self.hub_url}/{self.topic}"
        status, body = await self._fetch("GET", url)
        if status != 200:
            raise FHIRcastError(
                "Get Current Context failed",
                url=url,
                status=status,
                server_message=body.decode("utf-8", "replace")[:500],
            )
        return protocol.loads_object(body, "current context")

    # --- subscribing -------------------------------------------------------------------

    async def _connect(self, endpoint: str | None = None) -> None:
        self._set_status("connecting")
        form = {
            "hub.channel.type": "websocket",
            "hub.mode": "subscribe",
            "hub.topic": self.topic,
            "hub.events": ",".join(self.requested_events),
            "subscriber.name": self.subscriber_name,
        }
        if self.lease_seconds:
            form["hub.lease_seconds"] = str(self.lease_seconds)
        answer = await self._post_form(form)
        url = answer.get("hub.channel.endpoint")
        if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
            raise FHIRcastError(
                f"the hub answered no websocket endpoint: {answer!r}", url=self.hub_url
            )
        ws = await open_websocket(
            url,
            timeout=self.timeout,
            max_size=16 * 1024 * 1024,
            error=FHIRcastError,
            what="FHIRcast websocket",
        )
        try:
            first = await asyncio.wait_for(ws.recv(), self.timeout)
            message = protocol.loads_object(first, "confirmation")
        except (
            asyncio.TimeoutError,
            websockets.exceptions.ConnectionClosed,
            InvalidInputError,
        ) as exc:
            await ws.close()
            raise FHIRcastError(f"no subscription confirmation from the hub ({exc!r})") from exc
        if message.get("hub.mode") == "denied":
            await ws.close()
            self._on_denial(message)
            raise FHIRcastError(
                f"the hub denied the subscription: {message.get('hub.reason') or 'no reason'}"
            )
        if message.get("hub.mode") != "subscribe":
            await ws.close()
            raise FHIRcastError(f"expected a subscription confirmation, got {message!r}")
        self._confirmed(message)
        self._ws = ws
        self.endpoint = url
        self.denial = None
        self.in_sync = True
        self._set_status("connected")

    def _confirmed(self, message: Mapping[str, Any]) -> None:
        events = message.get("hub.events")
        if isinstance(events, str):
            self.granted_events = tuple(e.strip() for e in events.split(",") if e.strip())
        lease = message.get("hub.lease_seconds")
        self.granted_lease = int(lease) if isinstance(lease, (int, float)) else None
        if self._renewal is not None:
            self._renewal.cancel()
            self._renewal = None
        if self.renew_lease and self.granted_lease:
            delay = max(1.0, 0.75 * self.granted_lease)
            loop = asyncio.get_running_loop()
            self._renewal = loop.call_later(delay, lambda: asyncio.ensure_future(self._renew()))

    async def _renew(self) -> None:
        if self._closing or self.endpoint is None:
            return
        form = {
            "hub.channel.type": "websocket",
            "hub.mode": "subscribe",
            "hub.topic": self.topic,
            "hub.events": ",".join(self.requested_events),
            "subscriber.name": self.subscriber_name,
            "hub.channel.endpoint": self.endpoint,
        }
        if self.lease_seconds:
            form["hub.lease_seconds"] = str(self.lease_seconds)
        try:
            await self._post_form(form)  # the hub confirms again on the socket
        except (FHIRcastError, InvalidInputError) as exc:
            log.warning("lease renewal failed: %s", exc)

    def _on_denial(self, message: Mapping[str, Any]) -> None:
        events = str(message.get("hub.events") or "")
        self.denial = Denial(
            topic=str(message.get("hub.topic") or self.topic),
            events=tuple(e for e in events.split(",") if e),
            reason=message.get("hub.reason"),
        )
        self.in_sync = False
        if self._closing:
            return
        log.warning("FHIRcast subscription denied: %s", self.denial.reason or "no reason")
        for cb in list(self._denial_listeners):
            self._deliver(cb, self.denial)
        self._set_status("denied")

    # --- receiving ---------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._closing:
            ws = self._ws
            if ws is None:
                break
            try:
                async for message in ws:
                    await self._handle(ws, message)
            except websockets.exceptions.ConnectionClosed:
                pass
            self._ws = None
            if self._closing or self.denial is not None:
                break
            self.in_sync = False
            if not self.reconnect:
                self._set_status("disconnected")
                break
            log.info("FHIRcast socket closed (%s); resubscribing", ws.close_code)
            if not await self._reconnect():
                self._set_status("disconnected")
                break
            await self.resync()

    async def _reconnect(self) -> bool:
        self._set_status("reconnecting")
        connected = await retry_with_backoff(
            self._connect,
            self.backoff,
            self.max_reconnect_attempts,
            stopped=lambda: self._closing,
            retry_on=(FHIRcastError,),
            failed=self._reconnect_failed,
        )
        if connected:
            self.stats.reconnects += 1
        return connected

    def _reconnect_failed(self, exc: BaseException, attempt: int) -> bool:
        if self.denial is not None:
            return False  # a denial is final (2-4)
        log.debug("reconnect attempt %d failed: %s", attempt, exc)
        self._set_status("reconnecting")
        return True

    async def _handle(self, ws: ClientConnection, text: str | bytes) -> None:
        try:
            message = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            self.stats.malformed += 1
            return
        if not isinstance(message, dict):
            self.stats.malformed += 1
            return
        mode = message.get("hub.mode")
        if mode == "denied":
            self._on_denial(message)
            return
        if mode == "subscribe":
            self._confirmed(message)
            return
        if "event" not in message:
            return
        try:
            event = protocol.parse_event(message, accept_unknown=True, validate_context=False)
        except InvalidInputError:
            self.stats.malformed += 1
            if isinstance(message.get("id"), str):
                await self._ack(ws, message["id"], 400)
            return
        self.stats.received += 1
        await self._ack(ws, event.id, self.ack_status)
        if event.id in self._seen:
            self.stats.duplicates += 1
            return
        self._remember(self._seen, event.id)
        if event.key == protocol.HEARTBEAT.key:
            self.stats.heartbeats += 1
            return
        when = event.time
        if when is not None and self._context_time is not None and when < self._context_time:
            self.stats.stale += 1
            return
        self._apply(event, when)
        for tap in self._taps:
            tap(event)
        for keys, cb in list(self._listeners):
            if keys is None or event.key in keys:
                self._deliver(cb, event)

    async def _ack(self, ws: ClientConnection, event_id: str, status: int) -> None:
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            await ws.send(json.dumps(protocol.ack(event_id, status)))
            self.stats.acknowledged += 1

    def _remember(self, store: OrderedDict[str, None], key: str) -> None:
        store[key] = None
        if len(store) > self._max_seen:
            store.popitem(last=False)

    def _apply(self, event: Event, when: Any) -> None:
        spec = event.spec
        if spec is None or spec.anchor is None:
            return
        key = spec.anchor_key or ""
        ident = protocol.anchor_id(event.value(key))
        current = self._current
        if spec.kind == "open":
            self._opens[spec.anchor] = event
            content: Mapping[str, Mapping[str, Any]] = {}
            if current and current.anchor == spec.anchor and current.anchor_id == ident:
                content = current.content
            self._set_current(CurrentContext(event, spec.anchor, event.version_id, content))
            self._context_time = when or self._context_time
        elif spec.kind == "close":
            opened = self._opens.get(spec.anchor)
            if opened is not None and protocol.anchor_id(opened.value(key)) in (ident, None):
                del self._opens[spec.anchor]
            if current and current.anchor == spec.anchor and current.anchor_id in (ident, None):
                self._set_current(None)
            self._context_time = when or self._context_time
        elif current is not None and current.anchor == spec.anchor and current.anchor_id == ident:
            if spec.kind == "update":
                self._apply_update(current, event)
            else:
                selection = tuple(protocol.selected_references(event.context))
                self._set_current(replace(current, selection=selection))

    def _apply_update(self, current: CurrentContext, event: Event) -> None:
        if event.prior_version_id is not None and event.prior_version_id != current.version_id:
            # missed an update: ask the hub for the whole state (IHE RAD-154)
            self._schedule_resync()
            return
        content = dict(current.content)
        bundle = event.value("updates")
        for entry in (bundle or {}).get("entry") or []:
            method = str((entry.get("request") or {}).get("method", "")).upper()
            if method == "PUT" and isinstance(entry.get("resource"), Mapping):
                ref = protocol.reference_of(entry["resource"])
                if ref:
                    content[ref] = entry["resource"]
            elif method == "DELETE":
                url = entry.get("fullUrl") or (entry.get("request") or {}).get("url") or ""
                content.pop("/".join(str(url).rstrip("/").split("/")[-2:]), None)
        self._set_current(replace(current, version_id=event.version_id, content=content))

    def _set_current(self, ctx: CurrentContext | None) -> None:
        self._current = ctx
        for cb in list(self._context_listeners):
            self._deliver(cb, ctx)

    def _schedule_resync(self) -> None:
        if self._resync_task is None or self._resync_task.done():
            self._resync_task = asyncio.ensure_future(self.resync())

    async def resync(self) -> CurrentContext | None:
        """Replace the local context by the hub's Get Current Context (``2-9``, ``4-2-1``)."""
        try:
            body = await self.get_context()
        except (FHIRcastError, InvalidInputError) as exc:
            log.warning("re-synchronisation failed: %s", exc)
            self.in_sync = False
            return self._current
        self.stats.resyncs += 1
        anchor = body.get("context.type") or ""
        raw_items = body.get("context")
        items: list[Any] = raw_items if isinstance(raw_items, list) else []
        if not anchor:
            if self._current is not None:
                self._set_current(None)
            self.in_sync = self.denial is None
            return None
        content: dict[str, Mapping[str, Any]] = {}
        kept = []
        for item in items:
            if isinstance(item, Mapping) and item.get("key") == "content":
                for entry in (item.get("resource") or {}).get("entry") or []:
                    ref = protocol.reference_of((entry or {}).get("resource"))
                    if ref:
                        content[ref] = entry["resource"]
            elif isinstance(item, Mapping):
                kept.append(dict(item))
        version = body.get("context.versionId")
        event = Event(
            id=f"current-context:{version or ''}",
            timestamp="",
            topic=self.topic,
            name=protocol.canonical_event_name(f"{anchor}-open") or f"{anchor}-open",
            context=kept,
            version_id=version,
        )
        ctx = CurrentContext(event, anchor, version, content)
        old = self._current
        if old is None or (old.anchor, old.anchor_id, old.version_id, dict(old.content)) != (
            ctx.anchor,
            ctx.anchor_id,
            ctx.version_id,
            content,
        ):
            self._set_current(ctx)
        self.in_sync = self.denial is None
        return ctx

    # --- publishing --------------------------------------------------------------------

    async def publish(
        self,
        event_name: str,
        context: Sequence[Mapping[str, Any]],
        *,
        event_id: str | None = None,
        timestamp: str | None = None,
        version_id: str | None = None,
    ) -> Event:
        """Request a context change (``2-6``) and return the event as sent.

        The hub echoes it to every subscriber with the same id, this client included.

        Raises
        ------
        InvalidInputError
            The event is malformed (unknown name, missing context key); nothing is sent.
        FHIRcastError
            The hub refused it (``.status`` 4xx/5xx) or could not be reached.
        """
        event = protocol.notification(
            self.topic,
            event_name,
            context,
            event_id=event_id,
            timestamp=timestamp,
            version_id=version_id,
        )
        message = event.to_json()
        event = protocol.parse_event(message, accept_unknown=True)
        self._remember(self._published, event.id)
        status, body = await self._fetch(
            "POST", self.hub_url, json.dumps(message), "application/json"
        )
        if not 200 <= status < 300:
            raise FHIRcastError(
                f"the hub refused {event.name}",
                url=self.hub_url,
                status=status,
                server_message=body.decode("utf-8", "replace").strip()[:500],
            )
        return event

    async def send_sync_error(self, event: Event, reason: str) -> Event:
        """Tell the hub this subscriber could not follow *event* (``2-5``, SyncError)."""
        error = protocol.sync_error(
            self.topic,
            event_id=event.id,
            event_name=event.name,
            subscriber_name=self.subscriber_name,
            diagnostics=reason,
        )
        return await self.publish(error.name, error.context)


# --- the blocking client ------------------------------------------------------------------


_OPEN_CLIENTS = ClosedAtExit(timeout=2)  # the kernel or script is exiting: unsubscribe


class FhircastClient:
    """Blocking FHIRcast client for notebooks and scripts.

    Subscribes on construction; the network runs on a background loop thread, so it
    works inside a running ipykernel loop. Takes the parameters of
    :class:`AsyncFhircastClient`, plus:

    Parameters
    ----------
    loop : asyncio.AbstractEventLoop or "thread" or None
        Where callbacks run. Default: the caller's running loop if there is one (a
        notebook kernel), else a dispatcher thread. ``"thread"`` forces the thread.

    Examples
    --------
    >>> client = FhircastClient("http://127.0.0.1:8042/fhircast", "topic-1")  # doctest: +SKIP
    >>> client.on("ImagingStudy-open", lambda ev: print(ev.value("study")["id"]))
    >>> client.open_study({"resourceType": "ImagingStudy", "id": "s1", ...})
    >>> client.close()
    """

    def __init__(
        self,
        hub_url: str,
        topic: str,
        events: Iterable[str] = DEFAULT_EVENTS,
        *,
        loop: asyncio.AbstractEventLoop | str | None = None,
        **options: Any,
    ) -> None:
        self._dispatcher = callback_dispatcher(
            loop, name="imagingkit-fhircast-callbacks", logger=log, label="FHIRcast"
        )
        self._client = AsyncFhircastClient(hub_url, topic, events, **options)
        self._client._deliver = self._dispatcher
        self._history: EventHistory[Event] = EventHistory()
        # recorded on the network loop itself, so wait_for() never waits on callbacks
        self._client._taps.append(self._history.record)
        self._timeout = self._client.timeout
        self._lt = LoopThread("imagingkit-fhircast", error=FHIRcastError, kind="FHIRcast")
        self._threads = ClientThreads(self._lt, self._dispatcher)
        self._threads.start(self._client.start(), self._timeout * 3)
        _OPEN_CLIENTS.add(self)

    # --- delegation --------------------------------------------------------------------

    @property
    def topic(self) -> str:
        """``hub.topic``."""
        return self._client.topic

    @property
    def status(self) -> str:
        """``connected``, ``reconnecting``, ``denied``, ``disconnected`` or ``closed``."""
        return self._client.status

    @property
    def in_sync(self) -> bool:
        """False after a denial or while disconnected (``2-4``, ``4-2-1``)."""
        return self._client.in_sync

    @property
    def denial(self) -> Denial | None:
        """The denial received, if any, with the hub's reason."""
        return self._client.denial

    @property
    def current(self) -> CurrentContext | None:
        """The current context (``None`` when nothing is open)."""
        return self._client.current

    @property
    def stats(self) -> ClientStats:
        """Counters of received, duplicate, stale … events."""
        return self._client.stats

    @property
    def granted_events(self) -> tuple[str, ...]:
        """Events the hub granted in its confirmation."""
        return self._client.granted_events

    @property
    def endpoint(self) -> str | None:
        """The websocket endpoint of the live subscription."""
        return self._client.endpoint

    def is_own(self, event: Event) -> bool:
        """Whether *event* echoes a request of this client."""
        return self._client.is_own(event)

    def on(self, events: str | Iterable[str] | None, callback: Callback | None = None) -> Any:
        """Register ``callback(event)`` for *events* (``None`` or ``"*"``: all).

        Usable as a decorator: ``@client.on("ImagingStudy-open")``.
        """
        names = None if events in (None, "*") else [events] if isinstance(events, str) else events

        def register(cb: Callback) -> Callback:
            self._lt.call(self._client.add_listener, cb, names, timeout=self._timeout)
            return cb

        return register(callback) if callback is not None else register

    def on_context(self, callback: Callback) -> Callback:
        """Register ``callback(CurrentContext | None)`` for context changes."""
        self._lt.call(self._client.add_context_listener, callback, timeout=self._timeout)
        return callback

    def on_denied(self, callback: Callback) -> Callback:
        """Register ``callback(Denial)``."""
        self._lt.call(self._client.add_denial_listener, callback, timeout=self._timeout)
        return callback

    def on_status(self, callback: Callback) -> Callback:
        """Register ``callback(status)``."""
        self._lt.call(self._client.add_status_listener, callback, timeout=self._timeout)
        return callback

    def mark(self) -> int:
        """Return a position in the received history, for :meth:`wait_for` ``after=``."""
        return self._history.mark()

    def wait_for(
        self,
        match: str | Callable[[Event], bool],
        timeout: float = 10.0,
        *,
        after: int = 0,
    ) -> Event:
        """Block until an event matching *match* has been received; return it.

        *match* is an event name (any case), an event id, or a predicate. Events received
        before the call count too, unless *after* (from :meth:`mark`) excludes them.

        Raises
        ------
        FHIRcastError
            Nothing matched within *timeout* seconds.
        """
        predicate: Callable[[Event], bool]
        if isinstance(match, str):
            wanted = match
            predicate = lambda ev: ev.id == wanted or ev.key == wanted.lower()  # noqa: E731
        else:
            predicate = match
        found = self._history.wait_for(predicate, timeout, after=after)
        if found is None:
            raise FHIRcastError(f"no FHIRcast event matching {match!r} within {timeout} s")
        return found

    def received(self) -> list[Event]:
        """Return the events received so far (most recent 10,000)."""
        return self._history.items()

    def _run(self, coro: Awaitable[Any]) -> Any:
        return self._lt.run(coro, self._timeout * 2)

    def get_context(self) -> dict[str, Any]:
        """Return the hub's current context (``2-9``)."""
        return self._run(self._client.get_context())

    def resync(self) -> CurrentContext | None:
        """Re-synchronise the local context from the hub and return it."""
        return self._run(self._client.resync())

    def publish(self, event_name: str, context: Sequence[Mapping[str, Any]], **kw: Any) -> Event:
        """Request a context change (``2-6``); see :meth:`AsyncFhircastClient.publish`."""
        return self._run(self._client.publish(event_name, context, **kw))

    def send_sync_error(self, event: Event, reason: str) -> Event:
        """Refuse *event* after having acknowledged it with 202 (``2-5``)."""
        return self._run(self._client.send_sync_error(event, reason))

    # --- convenience publishers (3-3, 3-5, 3-6) ------------------------------------------

    def open_patient(self, patient: Mapping[str, Any]) -> Event:
        """Publish ``Patient-open`` (``3-3-1``)."""
        return self.publish("Patient-open", [{"key": "patient", "resource": dict(patient)}])

    def close_patient(self, patient: Mapping[str, Any]) -> Event:
        """Publish ``Patient-close`` (``3-3-2``)."""
        return self.publish("Patient-close", [{"key": "patient", "resource": dict(patient)}])

    def open_study(
        self, study: Mapping[str, Any], patient: Mapping[str, Any] | None = None
    ) -> Event:
        """Publish ``ImagingStudy-open`` (``3-5-1``); *patient* when the subject is one."""
        return self.publish("ImagingStudy-open", _study_context(study, patient))

    def close_study(
        self, study: Mapping[str, Any], patient: Mapping[str, Any] | None = None
    ) -> Event:
        """Publish ``ImagingStudy-close`` (``3-5-2``) with the same id as the open."""
        return self.publish("ImagingStudy-close", _study_context(study, patient))

    def open_report(
        self,
        report: Mapping[str, Any],
        patient: Mapping[str, Any],
        studies: Sequence[Mapping[str, Any]] = (),
    ) -> Event:
        """Publish ``DiagnosticReport-open`` (``3-6-1``)."""
        return self.publish("DiagnosticReport-open", _report_context(report, patient, studies))

    def close_report(
        self,
        report: Mapping[str, Any],
        patient: Mapping[str, Any],
        studies: Sequence[Mapping[str, Any]] = (),
    ) -> Event:
        """Publish ``DiagnosticReport-close`` (``3-6-2``)."""
        return self.publish("DiagnosticReport-close", _report_context(report, patient, studies))

    def update_report(
        self,
        put: Sequence[Mapping[str, Any]] = (),
        delete: Sequence[str] = (),
        *,
        bundle_id: str | None = None,
    ) -> Event:
        """Publish ``DiagnosticReport-update`` for the current report (``3-6-3``).

        *put* are resources to create or replace, *delete* ``"Type/id"`` references; the
        current ``context.versionId`` is sent so the hub can refuse a stale update.
        """
        ctx = self.current
        if ctx is None or ctx.anchor != "DiagnosticReport":
            raise FHIRcastError("no DiagnosticReport is the current context")
        entries: list[dict[str, Any]] = [
            {
                "fullUrl": protocol.reference_of(r),
                "resource": dict(r),
                "request": {"method": "PUT", "url": protocol.reference_of(r)},
            }
            for r in put
        ]
        entries += [{"fullUrl": ref, "request": {"method": "DELETE", "url": ref}} for ref in delete]
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        if bundle_id:
            bundle["id"] = bundle_id
        context: list[dict[str, Any]] = [
            {"key": "report", "reference": {"reference": f"DiagnosticReport/{ctx.anchor_id}"}},
            {"key": "updates", "resource": bundle},
        ]
        return self.publish("DiagnosticReport-update", context, version_id=ctx.version_id)

    def select(self, references: Sequence[str]) -> Event:
        """Publish ``DiagnosticReport-select`` of *references* in the current report."""
        ctx = self.current
        if ctx is None or ctx.anchor != "DiagnosticReport":
            raise FHIRcastError("no DiagnosticReport is the current context")
        context: list[dict[str, Any]] = [
            {"key": "report", "reference": {"reference": f"DiagnosticReport/{ctx.anchor_id}"}}
        ]
        context += [{"key": "select", "reference": {"reference": r}} for r in references]
        return self.publish("DiagnosticReport-select", context)

    # --- closing -----------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Unsubscribe, close the socket with 1000, stop the threads. Idempotent."""
        _OPEN_CLIENTS.discard(self)
        self._threads.stop(
            lambda: self._client.close(timeout),
            timeout=timeout,
            wait=timeout * 2,
            ignore=FHIRcastError,
        )

    def __enter__(self) -> FhircastClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FhircastClient topic={self.topic!r} status={self.status}>"


def _study_context(
    study: Mapping[str, Any], patient: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    context: list[dict[str, Any]] = [{"key": "study", "resource": dict(study)}]
    if patient is not None:
        context.append({"key": "patient", "resource": dict(patient)})
    return context


def _report_context(
    report: Mapping[str, Any],
    patient: Mapping[str, Any],
    studies: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    context: list[dict[str, Any]] = [
        {"key": "report", "resource": dict(report)},
        {"key": "patient", "resource": dict(patient)},
    ]
    context += [{"key": "study", "resource": dict(s)} for s in studies]
    return context
