"""Helpers of the embedded store's Subscription tests: resources, a rest-hook receiver,
websocket reads with timeouts. Everything listens on 127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import requests
import tornado.web
from websockets.sync.client import ClientConnection

from imagingkit.sandbox.fhir.testing import serving
from imagingkit.server.app import RouteList
from imagingkit.subscriptions.topics import BACKPORT_SUBSCRIPTION_PROFILE, IMAGINGSTUDY_TOPIC

__all__ = [
    "FHIR",
    "HookReceiver",
    "backport_subscription",
    "binding_token",
    "create",
    "event_numbers",
    "legacy_subscription",
    "parameters_of",
    "patient",
    "put",
    "put_bundle",
    "receiving_hooks",
    "recv_json",
    "recv_text",
    "status_of",
    "study",
    "wait_for",
]

FHIR = {"Content-Type": "application/fhir+json"}
_SD = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
_T = TypeVar("_T")


def patient(id_: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": id_, "gender": "other"}


def study(id_: str, patient_id: str, *, status: str = "available", modality: str = "CT") -> dict:
    coding = {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": modality}
    return {
        "resourceType": "ImagingStudy",
        "id": id_,
        "status": status,
        "subject": {"reference": f"Patient/{patient_id}"},
        "modality": [coding],
        "series": [{"uid": "1.2.3", "modality": coding}],  # the `modality` search parameter
    }


def put_bundle(resources: list[dict[str, Any]], kind: str = "transaction") -> dict[str, Any]:
    """A transaction (or batch) Bundle PUTting each resource under its own id."""
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [
            {"request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}, "resource": r}
            for r in resources
        ],
    }


def legacy_subscription(criteria: str, channel: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "test",
        "criteria": criteria,
        "channel": channel,
    }


def backport_subscription(
    channel_type: str,
    *,
    filters: tuple[str, ...] = (),
    content: str = "id-only",
    heartbeat: int | None = None,
    endpoint: str | None = None,
    headers: tuple[str, ...] = (),
    topic: str = IMAGINGSTUDY_TOPIC,
    timeout: int | None = None,
) -> dict[str, Any]:
    """A Backport topic Subscription as the IG's examples write it."""
    channel: dict[str, Any] = {
        "type": channel_type,
        "payload": "application/fhir+json",
        "_payload": {
            "extension": [{"url": _SD + "backport-payload-content", "valueCode": content}]
        },
    }
    extensions = []
    if heartbeat is not None:
        extensions.append({"url": _SD + "backport-heartbeat-period", "valueUnsignedInt": heartbeat})
    if timeout is not None:
        extensions.append({"url": _SD + "backport-timeout", "valueUnsignedInt": timeout})
    if extensions:
        channel["extension"] = extensions
    if endpoint is not None:
        channel["endpoint"] = endpoint
    if headers:
        channel["header"] = list(headers)
    resource: dict[str, Any] = {
        "resourceType": "Subscription",
        "meta": {"profile": [BACKPORT_SUBSCRIPTION_PROFILE]},
        "status": "requested",
        "reason": "test",
        "criteria": topic,
        "channel": channel,
    }
    if filters:
        resource["_criteria"] = {
            "extension": [
                {"url": _SD + "backport-filter-criteria", "valueString": f} for f in filters
            ]
        }
    return resource


def parameters_of(bundle: dict[str, Any]) -> dict[str, Any]:
    """The status Parameters of a notification, as ``{name: value or [parts…]}``."""
    status = bundle["entry"][0]["resource"]
    assert status["resourceType"] == "Parameters"
    out: dict[str, Any] = {"notification-event": []}
    for item in status["parameter"]:
        if item["name"] == "notification-event":
            parts = {}
            for part in item["part"]:
                value = next(v for k, v in part.items() if k.startswith("value"))
                parts[part["name"]] = value["reference"] if isinstance(value, dict) else value
            out["notification-event"].append(parts)
        else:
            value = next(v for k, v in item.items() if k.startswith("value"))
            out[item["name"]] = value.get("reference", value) if isinstance(value, dict) else value
    return out


def event_numbers(bundle: dict[str, Any]) -> list[int]:
    return [int(e["event-number"]) for e in parameters_of(bundle)["notification-event"]]


def recv_text(ws: ClientConnection, timeout: float = 20.0) -> str:
    message = ws.recv(timeout=timeout)
    assert isinstance(message, str)
    return message


def recv_json(ws: ClientConnection, timeout: float = 20.0) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(recv_text(ws, timeout))
    return body


def wait_for(probe: Callable[[], _T | None], timeout: float = 30.0, what: str = "") -> _T:
    """Poll *probe* until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or probe}")
        time.sleep(0.05)


# --------------------------------------------------------------------------- rest-hook receiver


@dataclass
class Received:
    """One request a :class:`HookReceiver` got."""

    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class HookReceiver:
    """A rest-hook endpoint: records requests and answers ``status`` (changeable)."""

    url: str = ""
    status: int = 200
    received: queue.Queue[Received] = field(default_factory=queue.Queue)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self, timeout: float = 20.0) -> Received:
        return self.received.get(timeout=timeout)

    def next_of(self, kind: str, timeout: float = 20.0) -> Received:
        """The next notification of type *kind* (others before it are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.next(max(0.01, deadline - time.monotonic()))
            if got.body and parameters_of(got.json())["type"] == kind:
                return got

    def drain(self) -> list[Received]:
        out = []
        while True:
            try:
                out.append(self.received.get_nowait())
            except queue.Empty:
                return out


class _HookHandler(tornado.web.RequestHandler):
    def initialize(self, receiver: HookReceiver) -> None:
        self.receiver = receiver

    def post(self, path: str) -> None:
        self.receiver.received.put(
            Received(path, dict(self.request.headers), bytes(self.request.body))
        )
        if path == "redirect":
            self.redirect("/hook/ok", status=307)
            return
        self.set_status(self.receiver.status)
        self.finish()


@dataclass
class _HookApp:
    receiver: HookReceiver
    mount: str = "hook"

    def routes(self, prefix: str) -> RouteList:
        return [(rf"{prefix}/(.*)", _HookHandler, {"receiver": self.receiver})]


@contextmanager
def receiving_hooks() -> Iterator[HookReceiver]:
    """A rest-hook receiver at ``receiver.url`` (``…/hook/ok``; ``…/hook/redirect`` answers 307)."""
    receiver = HookReceiver()
    with serving([_HookApp(receiver)]) as origin:
        receiver.url = f"{origin}/hook/ok"
        yield receiver


def create(base: str, resource: dict[str, Any]) -> dict[str, Any]:
    """POST *resource* and return it as stored (asserting 201)."""
    response = requests.post(
        f"{base}/{resource['resourceType']}", json=resource, headers=FHIR, timeout=30
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def put(base: str, resource: dict[str, Any]) -> requests.Response:
    return requests.put(
        f"{base}/{resource['resourceType']}/{resource['id']}",
        json=resource,
        headers=FHIR,
        timeout=30,
    )


def status_of(base: str, sub_id: str) -> str:
    return str(requests.get(f"{base}/Subscription/{sub_id}", timeout=30).json()["status"])


def binding_token(base: str, sub_id: str, **kwargs: Any) -> dict[str, Any]:
    """``$get-ws-binding-token`` as ``{name: value}`` (asserting 200)."""
    response = requests.get(
        f"{base}/Subscription/{sub_id}/$get-ws-binding-token", timeout=30, **kwargs
    )
    assert response.status_code == 200, response.text
    return {
        p["name"]: next(v for k, v in p.items() if k.startswith("value"))
        for p in response.json()["parameter"]
    }
