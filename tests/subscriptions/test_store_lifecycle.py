"""Subscription resources in the embedded store: validation, lifecycle, discovery.

FHIR R4 subscription.html (status requested → active, off, end) and the Subscriptions
Backport IG (backport-subscription profile, CapabilityStatement topic canonicals).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests
from store_helpers import (
    FHIR,
    backport_subscription,
    create,
    legacy_subscription,
    patient,
    put,
    status_of,
    study,
    wait_for,
)

from imagingkit.sandbox.fhir.testing import serving_store
from imagingkit.subscriptions.topics import IMAGINGSTUDY_TOPIC

WS = {"type": "websocket"}


def _refused(base: str, resource: dict[str, Any], words: str) -> None:
    response = requests.post(f"{base}/Subscription", json=resource, headers=FHIR, timeout=30)
    assert response.status_code == 400, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert words in outcome["issue"][0]["diagnostics"], outcome


def test_bad_subscriptions_are_refused_with_an_operation_outcome(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (base, _):
        _refused(base, legacy_subscription("Nonsense?x=1", WS), "resource type")
        _refused(base, legacy_subscription("ImagingStudy?modality=a,b&bogus=1", WS), "bogus")
        _refused(base, legacy_subscription("ImagingStudy?_sort=date", WS), "result parameter")
        _refused(base, legacy_subscription("ImagingStudy?date=notadate", WS), "date")
        _refused(base, legacy_subscription("ImagingStudy", {"type": "email"}), "email")
        _refused(base, legacy_subscription("ImagingStudy", {"type": "rest-hook"}), "endpoint")
        for endpoint in ("ftp://127.0.0.1/x", "/relative", "http://", "javascript:alert(1)"):
            channel = {"type": "rest-hook", "endpoint": endpoint}
            _refused(base, legacy_subscription("ImagingStudy", channel), "http(s)")
        bad_header = {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/x", "header": ["x"]}
        _refused(base, legacy_subscription("ImagingStudy", bad_header), "header")
        unknown = backport_subscription("websocket", topic="http://example.org/Topic/nope")
        _refused(base, unknown, "unknown topic")
        _refused(base, backport_subscription("websocket", heartbeat=0), "heartbeat")
        huge = backport_subscription("websocket", heartbeat=10**9)
        _refused(base, huge, "heartbeat")
        wrong_filter = backport_subscription("websocket", filters=("Patient?gender=male",))
        _refused(base, wrong_filter, "ImagingStudy")
        _refused(base, backport_subscription("websocket", content="everything"), "content")
        _refused(base, {**legacy_subscription("ImagingStudy", WS), "status": "on"}, "status")
        _refused(base, {**legacy_subscription("ImagingStudy", WS), "end": "soon"}, "end")
        # nothing was stored, and a transaction with a bad Subscription writes nothing
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"request": {"method": "PUT", "url": "Patient/p1"}, "resource": patient("p1")},
                {
                    "request": {"method": "POST", "url": "Subscription"},
                    "resource": legacy_subscription("Nope", WS),
                },
            ],
        }
        answer = requests.post(base, json=bundle, headers=FHIR, timeout=30)
        assert answer.status_code == 400
        assert requests.get(f"{base}/Subscription", timeout=30).json()["total"] == 0
        assert requests.get(f"{base}/Patient/p1", timeout=30).status_code == 404


def test_any_host_and_loopback_endpoints_are_accepted(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (base, _):
        for endpoint in ("http://127.0.0.1:9/hook", "https://hooks.example.org/fhir?x=1"):
            channel = {"type": "rest-hook", "endpoint": endpoint}
            create(base, legacy_subscription("Patient", channel))


def test_lifecycle_requested_active_off_and_restart(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (base, _):
        created = create(base, {**legacy_subscription("ImagingStudy", WS), "status": "active"})
        assert created["status"] == "requested"  # only the server activates
        sub_id = created["id"]
        assert wait_for(lambda: status_of(base, sub_id) == "active", what="active")
        history = requests.get(f"{base}/Subscription/{sub_id}/_history", timeout=30).json()
        statuses = [e["resource"]["status"] for e in reversed(history["entry"])]
        assert statuses == ["requested", "active"]
        topic = create(base, backport_subscription("websocket"))
        assert wait_for(lambda: status_of(base, topic["id"]) == "active")
        current = requests.get(f"{base}/Subscription/{sub_id}", timeout=30).json()
        assert put(base, {**current, "status": "off"}).status_code == 200
        assert status_of(base, sub_id) == "off"
    with serving_store(tmp_path) as (base, store):  # the same database, a new process state
        assert status_of(base, sub_id) == "off"
        assert status_of(base, topic["id"]) == "active"
        spec = store.subscriptions.spec(topic["id"])
        assert spec is not None and spec.status == "active"


def test_end_in_the_past_turns_the_subscription_off(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (base, store):
        soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2))
        created = create(base, {**legacy_subscription("ImagingStudy", WS), "end": soon})
        assert wait_for(lambda: status_of(base, created["id"]) == "active")
        assert wait_for(lambda: status_of(base, created["id"]) == "off", timeout=30)
        store.upsert(patient("p1"))
        store.upsert(study("s1", "p1"))
        assert store.subscriptions.events.count(created["id"]) == 0


def test_capability_statement_advertises_websocket_topics_and_operations(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (base, _):
        statement = requests.get(f"{base}/metadata", timeout=30).json()
        rest = statement["rest"][0]
        ws = [
            e["valueUrl"]
            for e in rest["extension"]
            if e["url"] == "http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket"
        ]
        assert ws == [base.replace("http://", "ws://") + "/$subscription-ws"]
        subscription = next(r for r in rest["resource"] if r["type"] == "Subscription")
        topics = [e["valueCanonical"] for e in subscription["extension"]]
        assert topics == [IMAGINGSTUDY_TOPIC]
        names = {o["name"] for o in subscription["operation"]}
        assert names == {"status", "events", "get-ws-binding-token"}
        assert any("backport-subscription-server-r4" in u for u in statement["instantiates"])


@pytest.mark.parametrize("path", ["Subscription/$status", "Subscription/x/$events"])
def test_operations_do_not_shadow_resource_routes(tmp_path: Path, path: str) -> None:
    with serving_store(tmp_path) as (base, store):
        store.upsert(patient("p1"))
        assert requests.get(f"{base}/Patient/p1", timeout=30).status_code == 200
        assert requests.get(f"{base}/Subscription", timeout=30).status_code == 200
        answer = requests.get(f"{base}/{path}", timeout=30)
        assert answer.status_code in (200, 404)
        assert answer.json()["resourceType"] in ("Bundle", "OperationOutcome")


def test_closing_the_component_stops_heartbeats_deliveries_and_sockets(tmp_path: Path) -> None:
    from store_helpers import binding_token, receiving_hooks
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with receiving_hooks() as hook, serving_store(tmp_path) as (base, store):
        store.upsert(patient("p1"))
        create(base, backport_subscription("rest-hook", endpoint=hook.url, heartbeat=1))
        hook.next_of("heartbeat")
        sub = create(base, backport_subscription("websocket", heartbeat=1))
        token = binding_token(base, sub["id"])
        with connect(token["websocket-url"], open_timeout=20) as ws:
            ws.send(f"bind-with-token: {token['token']}")
            ws.recv(timeout=20)
            started = time.monotonic()
            store.subscriptions.close()
            assert time.monotonic() - started < 10
            with pytest.raises(ConnectionClosed) as closed:
                while True:  # heartbeats sent before the close may still be queued
                    ws.recv(timeout=20)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        hook.drain()
        store.upsert(study("s1", "p1"))
        time.sleep(2.5)
        assert hook.drain() == []  # no heartbeat, no notification after close
        assert requests.get(f"{base}/metadata", timeout=30).status_code == 200


def test_a_deleted_subscription_is_forgotten(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (base, store):
        store.upsert(patient("p1"))
        sub = {**backport_subscription("websocket"), "id": "again"}
        assert put(base, sub).status_code == 201
        store.upsert(study("s1", "p1"))
        assert store.subscriptions.events.count("again") == 1
        assert requests.delete(f"{base}/Subscription/again", timeout=30).status_code == 200
        assert requests.get(f"{base}/Subscription/again/$status", timeout=30).status_code == 404
        store.upsert(study("s2", "p1"))
        assert put(base, sub).status_code == 201  # a new Subscription under the same id
        status = requests.get(f"{base}/Subscription/again/$status", timeout=30).json()
        count = next(
            p["valueString"]
            for p in status["entry"][0]["resource"]["parameter"]
            if p["name"] == "events-since-subscription-start"
        )
        assert count == "0"
