"""Raw FHIRcast helpers for the conformance suite: plain ``requests`` and ``websockets``.

The hub checks must not depend on imagingkit's own client, so subscriptions, frames and
acknowledgements here are built by hand from the notes' JSON.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from imagingkit.fhircast.protocol import Event, format_timestamp

WAIT = 10.0  # seconds any single wait may take before the test fails

PATIENT = {"resourceType": "Patient", "id": "pat-1", "identifier": [{"value": "MRN-1"}]}
PATIENT_2 = {"resourceType": "Patient", "id": "pat-2"}
STUDY = {
    "resourceType": "ImagingStudy",
    "id": "study-1",
    "status": "available",
    "subject": {"reference": "Patient/pat-1"},
    "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.840.99.1"}],
}
REPORT = {
    "resourceType": "DiagnosticReport",
    "id": "report-1",
    "status": "preliminary",
    "subject": {"reference": "Patient/pat-1"},
    "imagingStudy": [{"reference": "ImagingStudy/study-1"}],
}


def http() -> requests.Session:
    """A session that ignores proxy variables (everything here is loopback)."""
    session = requests.Session()
    session.trust_env = False
    return session


def new_topic() -> str:
    return str(uuid.uuid4())


def subscribe_form(
    hub_url: str,
    topic: str,
    events: str,
    *,
    session: requests.Session | None = None,
    headers: dict[str, str] | None = None,
    **extra: str,
) -> requests.Response:
    """POST a websocket subscription form; extra params use ``_`` for ``.``."""
    form = {
        "hub.channel.type": "websocket",
        "hub.mode": "subscribe",
        "hub.topic": topic,
        "hub.events": events,
    }
    form.update({k.replace("__", "."): v for k, v in extra.items()})
    return (session or http()).post(hub_url, data=form, headers=headers, timeout=WAIT)


def event_message(
    topic: str,
    name: str,
    context: list[dict[str, Any]],
    *,
    event_id: str | None = None,
    timestamp: str | None = None,
    **event_members: Any,
) -> dict[str, Any]:
    event: dict[str, Any] = {"hub.topic": topic, "hub.event": name, "context": context}
    event.update(event_members)
    return {
        "timestamp": timestamp or format_timestamp(),
        "id": event_id or str(uuid.uuid4()),
        "event": event,
    }


def publish(
    hub_url: str,
    message: dict[str, Any] | str,
    *,
    path: str = "",
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> requests.Response:
    body = message if isinstance(message, str) else json.dumps(message)
    all_headers = {"Content-Type": content_type, **(headers or {})}
    return http().post(hub_url + path, data=body, headers=all_headers, timeout=WAIT)


def patient_open(topic: str, patient: dict[str, Any] = PATIENT, **kw: Any) -> dict[str, Any]:
    return event_message(topic, "Patient-open", [{"key": "patient", "resource": patient}], **kw)


def patient_close(topic: str, patient: dict[str, Any] = PATIENT, **kw: Any) -> dict[str, Any]:
    return event_message(topic, "Patient-close", [{"key": "patient", "resource": patient}], **kw)


def study_open(topic: str, study: dict[str, Any] = STUDY, **kw: Any) -> dict[str, Any]:
    context = [{"key": "study", "resource": study}, {"key": "patient", "resource": PATIENT}]
    return event_message(topic, "ImagingStudy-open", context, **kw)


def report_context(report: dict[str, Any] = REPORT) -> list[dict[str, Any]]:
    return [
        {"key": "report", "resource": report},
        {"key": "patient", "resource": PATIENT},
        {"key": "study", "resource": STUDY},
    ]


def report_open(topic: str, report: dict[str, Any] = REPORT, **kw: Any) -> dict[str, Any]:
    return event_message(topic, "DiagnosticReport-open", report_context(report), **kw)


def report_close(topic: str, report: dict[str, Any] = REPORT, **kw: Any) -> dict[str, Any]:
    return event_message(topic, "DiagnosticReport-close", report_context(report), **kw)


def report_update(
    topic: str,
    version_id: str | None,
    entries: list[dict[str, Any]],
    *,
    report_id: str = "report-1",
    bundle_id: str = "bundle-1",
    **kw: Any,
) -> dict[str, Any]:
    bundle = {"resourceType": "Bundle", "id": bundle_id, "type": "transaction", "entry": entries}
    context = [
        {"key": "report", "reference": {"reference": f"DiagnosticReport/{report_id}"}},
        {"key": "patient", "reference": {"reference": "Patient/pat-1"}},
        {"key": "updates", "resource": bundle},
    ]
    members = {} if version_id is None else {"context.versionId": version_id}
    return event_message(topic, "DiagnosticReport-update", context, **members, **kw)


def put(resource_id: str, status: str = "preliminary") -> dict[str, Any]:
    return {
        "request": {"method": "PUT", "url": f"Observation/{resource_id}"},
        "resource": {"resourceType": "Observation", "id": resource_id, "status": status},
    }


def delete(ref: str) -> dict[str, Any]:
    return {"fullUrl": ref, "request": {"method": "DELETE", "url": ref}}


class RawSubscriber:
    """A subscriber built from ``requests`` and ``websockets`` only."""

    def __init__(
        self,
        hub_url: str,
        topic: str,
        events: str,
        *,
        auto_ack: bool = True,
        ack_status: int | str = 200,
        headers: dict[str, str] | None = None,
        **extra: str,
    ) -> None:
        self.hub_url = hub_url
        self.topic = topic
        self.auto_ack = auto_ack
        self.ack_status = ack_status
        self.response = subscribe_form(hub_url, topic, events, headers=headers, **extra)
        assert self.response.status_code == 202, self.response.text
        self.endpoint: str = self.response.json()["hub.channel.endpoint"]
        self.ws: ClientConnection = connect(
            self.endpoint, open_timeout=WAIT, proxy=None, legacy=True
        )
        self.confirmation = self.recv(raw=True)
        self.received: list[dict[str, Any]] = []

    def recv(self, timeout: float = WAIT, *, raw: bool = False) -> dict[str, Any]:
        """Return the next JSON message; events are acknowledged when ``auto_ack``."""
        message = json.loads(self.ws.recv(timeout=timeout))
        if not raw and "event" in message:
            self.received.append(message)
            if self.auto_ack:
                self.send({"id": message["id"], "status": self.ack_status})
        return message

    def recv_event(self, timeout: float = WAIT) -> dict[str, Any]:
        """Return the next event notification, skipping non-event messages."""
        deadline = time.monotonic() + timeout
        for _ in range(1000):
            message = self.recv(max(0.01, deadline - time.monotonic()))
            if "event" in message:
                return message
        raise AssertionError("no event notification")

    def recv_until(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = WAIT
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for _ in range(10_000):
            message = self.recv(max(0.01, deadline - time.monotonic()))
            if predicate(message):
                return message
        raise AssertionError("no matching message")

    def nothing_within(self, seconds: float) -> bool:
        """True if no message arrives within *seconds* (used with a sentinel afterwards)."""
        try:
            self.ws.recv(timeout=seconds)
        except TimeoutError:
            return True
        return False

    def send(self, message: dict[str, Any] | str | bytes) -> None:
        self.ws.send(message if isinstance(message, (str, bytes)) else json.dumps(message))

    def closed_within(self, timeout: float = WAIT) -> int | None:
        """Read until the hub closes the socket; return the close code."""
        deadline = time.monotonic() + timeout
        try:
            for _ in range(10_000):
                self.recv(max(0.01, deadline - time.monotonic()))
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None
        except TimeoutError:
            raise AssertionError("the hub did not close the socket") from None
        raise AssertionError("the hub did not close the socket")

    def close(self, code: int = 1000) -> None:
        self.ws.close(code)


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what or predicate}")


class FakeClock:
    """A monotonic clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def sync_error_codes(message: dict[str, Any] | Event) -> dict[str, str]:
    if isinstance(message, Event):
        message = message.to_json()
    outcome = message["event"]["context"][0]["resource"]
    issue = outcome["issue"][0]
    return {c["system"].rsplit("/", 1)[-1]: c["code"] for c in issue["details"]["coding"]}
