"""A scriptable fake FHIR server with a subscription websocket, for fault injection.

The happy paths of the subscription client run against the real embedded store; this
server exists only to do what a good server never does on cue: drop an event, send one
twice or out of order, stay silent past the heartbeat, refuse ``$events``, keep a legacy
Subscription ``requested`` for a while, or advertise a websocket URL on another origin.

Everything listens on 127.0.0.1 (a free port), in a daemon thread with its own loop; the
test drives it with thread-safe methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web
import tornado.websocket

STATUS_PROFILE = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
    "backport-subscription-status-r4"
)
TOPIC = "http://imagingkit.invalid/fhir/SubscriptionTopic/imagingstudy-created-or-updated"


def status_parameters(
    sub_id: str,
    kind: str,
    count: int,
    events: list[tuple[int, str]] = (),  # type: ignore[assignment]
    status: str = "active",
) -> dict[str, Any]:
    """A backport-subscription-status-r4 Parameters."""
    params: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": f"Subscription/{sub_id}"}},
        {"name": "topic", "valueCanonical": TOPIC},
        {"name": "status", "valueCode": status},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(count)},
    ]
    for number, focus in events:
        params.append(
            {
                "name": "notification-event",
                "part": [
                    {"name": "event-number", "valueString": str(number)},
                    {"name": "timestamp", "valueInstant": "2026-01-01T00:00:00Z"},
                    {"name": "focus", "valueReference": {"reference": focus}},
                ],
            }
        )
    return {
        "resourceType": "Parameters",
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": params,
    }


def notification_bundle(
    sub_id: str,
    kind: str,
    count: int,
    events: list[tuple[int, str]] = (),  # type: ignore[assignment]
    resources: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    """An R4 backport notification Bundle."""
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": "urn:uuid:00000000-0000-0000-0000-000000000001",
            "resource": status_parameters(sub_id, kind, count, events),
            "request": {"method": "GET", "url": f"Subscription/{sub_id}/$status"},
            "response": {"status": "200"},
        }
    ]
    for resource in resources:
        entries.append(
            {
                "fullUrl": f"{resource['resourceType']}/{resource['id']}",
                "resource": resource,
                "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"},
                "response": {"status": "200"},
            }
        )
    return {"resourceType": "Bundle", "type": "history", "entry": entries}


@dataclass
class FakeState:
    """What the fake server holds and records."""

    topic: bool = True
    events_supported: bool = True
    hostile_ws_url: str | None = None
    legacy_active_after: int = 0  # GETs answered "requested" before "active"
    heartbeat: int | None = None
    json_binding: bool = True  # False: JSON bind-with-token answered with an error
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    studies: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[tuple[int, str]] = field(default_factory=list)  # (number, focus)
    requests: list[str] = field(default_factory=list)
    binds: list[tuple[str, str]] = field(default_factory=list)  # (frame, status at bind)
    sub_gets: int = 0
    deleted: list[str] = field(default_factory=list)


class FakeFhir:
    """Run the fake server; ``base`` is its FHIR base URL."""

    def __init__(self, state: FakeState | None = None) -> None:
        self.state = state or FakeState()
        self.sockets: list[_Socket] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True, name="fake-fhir")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake FHIR server did not start")

    def _main(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        app = tornado.web.Application(
            [
                (r"/fhir/metadata", _Metadata, {"fake": self}),
                (r"/fhir/ws", _Socket, {"fake": self}),
                (r"/fhir/Subscription", _Subscriptions, {"fake": self}),
                (r"/fhir/Subscription/([^/]+)/\$([a-z-]+)", _Operation, {"fake": self}),
                (r"/fhir/Subscription/([^/$]+)", _Subscription, {"fake": self}),
                (r"/fhir/ImagingStudy/([^/]+)", _Study, {"fake": self}),
                (r"/fhir/ImagingStudy", _Studies, {"fake": self}),
            ]
        )
        sockets = tornado.netutil.bind_sockets(0, address="127.0.0.1")
        self.server = tornado.httpserver.HTTPServer(app)
        self.server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    # -- control (any thread) -------------------------------------------------------------

    def _in_loop(self, fn: Callable[[], Any]) -> Any:
        done = threading.Event()
        box: list[Any] = []

        def run() -> None:
            box.append(fn())
            done.set()

        self.loop.call_soon_threadsafe(run)
        if not done.wait(10):
            raise RuntimeError("fake server loop did not answer")
        return box[0]

    def wait_bound(self, count: int = 1, timeout: float = 10) -> None:
        """Wait until *count* sockets have bound."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(1 for s in list(self.sockets) if s.bound) >= count:
                return
            time.sleep(0.02)
        raise AssertionError(f"{count} bound socket(s) expected")

    def send(self, frame: str | dict[str, Any]) -> None:
        """Send *frame* to every bound socket."""
        text = frame if isinstance(frame, str) else json.dumps(frame)

        def go() -> None:
            for sock in list(self.sockets):
                if sock.bound:
                    sock.write_message(text)

        self._in_loop(go)

    def add_study(self, study_id: str, version: int = 1) -> dict[str, Any]:
        """Store an ImagingStudy (not notified)."""
        study = {
            "resourceType": "ImagingStudy",
            "id": study_id,
            "status": "available",
            "subject": {"reference": "Patient/p1"},
            "meta": {"versionId": str(version), "lastUpdated": "2026-01-01T00:00:00Z"},
        }
        self.state.studies[study_id] = study
        return study

    def event(self, study_id: str, *, deliver: bool = True) -> int:
        """Record an event on *study_id* (and send it unless *deliver* is false)."""
        number = len(self.state.events) + 1
        self.state.events.append((number, f"ImagingStudy/{study_id}"))
        if deliver:
            self.deliver(number)
        return number

    def deliver(self, number: int) -> None:
        """(Re)send event *number*."""
        sub_id = next(iter(self.state.subscriptions))
        focus = dict(self.state.events)[number]
        self.send(notification_bundle(sub_id, "event-notification", number, [(number, focus)]))

    def heartbeat(self) -> None:
        sub_id = next(iter(self.state.subscriptions))
        self.send(notification_bundle(sub_id, "heartbeat", len(self.state.events)))

    def drop_sockets(self) -> None:
        """Close every socket abnormally (as a crashing server would)."""

        def go() -> None:
            for sock in list(self.sockets):
                sock.close(1011, "going away")

        self._in_loop(go)

    def stop(self) -> None:
        def go() -> None:
            self.server.stop()
            for sock in list(self.sockets):
                with contextlib.suppress(Exception):
                    sock.close()

        with contextlib.suppress(RuntimeError):
            self._in_loop(go)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class _Base(tornado.web.RequestHandler):
    def initialize(self, fake: FakeFhir) -> None:
        self.fake = fake
        self.state = fake.state

    def prepare(self) -> None:
        self.state.requests.append(f"{self.request.method} {self.request.uri}")

    def answer(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/fhir+json")
        self.finish(json.dumps(body))


class _Metadata(_Base):
    def get(self) -> None:
        rest: dict[str, Any] = {
            "mode": "server",
            "extension": [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket",
                    "valueUrl": f"ws://127.0.0.1:{self.fake.port}/fhir/ws",
                }
            ],
            "resource": [{"type": "ImagingStudy"}, {"type": "Subscription"}],
        }
        if self.state.topic:
            rest["resource"][1]["extension"] = [
                {"url": "http://example.org/topic", "valueCanonical": TOPIC}
            ]
        self.answer({"resourceType": "CapabilityStatement", "rest": [rest]})


class _Subscriptions(_Base):
    def post(self) -> None:
        sub = json.loads(self.request.body)
        sub_id = f"sub{len(self.state.subscriptions) + 1}"
        sub["id"] = sub_id
        sub["meta"] = {**sub.get("meta", {}), "lastUpdated": "2025-12-31T00:00:00Z"}
        if sub.get("criteria") != TOPIC:
            sub["status"] = "requested" if self.state.legacy_active_after else "active"
        else:
            sub["status"] = "active"
            if self.state.heartbeat:
                sub["channel"]["extension"] = [
                    {
                        "url": "http://hl7.org/fhir/uv/subscriptions-backport/"
                        "StructureDefinition/backport-heartbeat-period",
                        "valueUnsignedInt": self.state.heartbeat,
                    }
                ]
        self.state.subscriptions[sub_id] = sub
        self.answer(sub, 201)


class _Subscription(_Base):
    def get(self, sub_id: str) -> None:
        sub = self.state.subscriptions.get(sub_id)
        if sub is None:
            self.answer({"resourceType": "OperationOutcome", "issue": []}, 404)
            return
        self.state.sub_gets += 1
        if sub["status"] == "requested" and self.state.sub_gets > self.state.legacy_active_after:
            sub["status"] = "active"
        self.answer(sub)

    def put(self, sub_id: str) -> None:
        self.state.subscriptions[sub_id] = json.loads(self.request.body)
        self.answer(self.state.subscriptions[sub_id])

    def delete(self, sub_id: str) -> None:
        self.state.subscriptions.pop(sub_id, None)
        self.state.deleted.append(sub_id)
        self.set_status(204)
        self.finish()


class _Operation(_Base):
    def get(self, sub_id: str, op: str) -> None:
        self.post(sub_id, op)

    def post(self, sub_id: str, op: str) -> None:
        count = len(self.state.events)
        if op == "get-ws-binding-token":
            url = self.state.hostile_ws_url or f"ws://127.0.0.1:{self.fake.port}/fhir/ws"
            self.answer(
                {
                    "resourceType": "Parameters",
                    "parameter": [
                        {"name": "token", "valueString": f"token-{sub_id}"},
                        {"name": "expiration", "valueDateTime": "2099-01-01T00:00:00Z"},
                        {"name": "subscription", "valueString": f"Subscription/{sub_id}"},
                        {"name": "websocket-url", "valueUrl": url},
                    ],
                }
            )
        elif op == "status":
            self.answer(
                {
                    "resourceType": "Bundle",
                    "type": "searchset",
                    "entry": [{"resource": status_parameters(sub_id, "query-status", count)}],
                }
            )
        elif op == "events" and self.state.events_supported:
            low = int(self.get_argument("eventsSinceNumber", "1"))
            high = int(self.get_argument("eventsUntilNumber", str(count)))
            chosen = [(n, f) for n, f in self.state.events if low <= n <= high]
            self.answer(notification_bundle(sub_id, "query-event", count, chosen))
        else:
            self.answer({"resourceType": "OperationOutcome", "issue": []}, 404)


class _Study(_Base):
    def get(self, study_id: str) -> None:
        study = self.state.studies.get(study_id)
        if study is None:
            self.answer({"resourceType": "OperationOutcome", "issue": []}, 404)
        else:
            self.answer(study)


class _Studies(_Base):
    def get(self) -> None:
        entries = [{"resource": s} for s in self.state.studies.values()]
        self.answer({"resourceType": "Bundle", "type": "searchset", "entry": entries})


class _Socket(tornado.websocket.WebSocketHandler):
    def initialize(self, fake: FakeFhir) -> None:
        self.fake = fake
        self.state = fake.state
        self.bound = False

    def open(self, *args: Any) -> None:
        self.fake.sockets.append(self)

    def on_close(self) -> None:
        with contextlib.suppress(ValueError):
            self.fake.sockets.remove(self)

    def on_message(self, message: str | bytes) -> None:
        text = message if isinstance(message, str) else message.decode()
        if text.startswith("bind "):
            sub_id = text[5:].strip()
            sub = self.state.subscriptions.get(sub_id)
            self.state.binds.append((text, (sub or {}).get("status", "unknown")))
            if sub is None or sub["status"] != "active":
                self.write_message(f"error Subscription/{sub_id} is not active")
                return
            self.bound = True
            self.write_message(f"bound {sub_id}")
            return
        try:
            data = json.loads(text)
            token = data["payload"]["token"]
            if not self.state.json_binding:
                outcome = {"resourceType": "OperationOutcome", "issue": [{"code": "invalid"}]}
                self.write_message(json.dumps({"type": "error", "payload": outcome}))
                return
        except (ValueError, KeyError, TypeError):
            if text.startswith("bind-with-token:"):
                token = text.split(":", 1)[1].strip()
            else:
                self.write_message("error unreadable")
                return
        sub_id = token.removeprefix("token-")
        self.state.binds.append((text, self.state.subscriptions[sub_id]["status"]))
        self.bound = True
        self.write_message(
            json.dumps(notification_bundle(sub_id, "handshake", len(self.state.events)))
        )


@contextlib.contextmanager
def fake_fhir(**options: Any) -> Iterator[FakeFhir]:
    """Run a :class:`FakeFhir` with :class:`FakeState` *options* for the block."""
    fake = FakeFhir(FakeState(**options))
    try:
        yield fake
    finally:
        fake.stop()


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    """Poll *predicate* until true (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or predicate}")
