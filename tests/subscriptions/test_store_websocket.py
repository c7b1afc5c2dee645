"""The websocket channel of the embedded store, spoken on the wire with ``websockets``.

R4 legacy bind/bound/ping (R4 subscription.html; HAPI's protocol) and the Backport IG
channels page: bind-with-token (JSON and text framing), handshake, event notifications
numbered 1..n, heartbeats; hostile frames get an error and never stop the server.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from store_helpers import (
    backport_subscription,
    binding_token,
    create,
    event_numbers,
    legacy_subscription,
    parameters_of,
    patient,
    put,
    recv_json,
    recv_text,
    status_of,
    study,
    wait_for,
)
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from imagingkit.sandbox.fhir.testing import serving_store
from imagingkit.subscriptions.topics import IMAGINGSTUDY_TOPIC


def _ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/$subscription-ws"


def _silent(ws: object, seconds: float = 1.0) -> None:
    """Assert nothing arrives for *seconds*."""
    with pytest.raises(TimeoutError):
        ws.recv(timeout=seconds)  # type: ignore[attr-defined]


def test_legacy_bind_ping_only_on_matching_writes(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (base, store):
        store.upsert(patient("p1"))
        store.upsert(patient("p2"))
        created = create(
            base, legacy_subscription("ImagingStudy?patient=Patient/p1", {"type": "websocket"})
        )
        sub_id = created["id"]
        assert wait_for(lambda: status_of(base, sub_id) == "active")
        current = requests.get(f"{base}/Subscription/{sub_id}", timeout=30).json()
        put(base, {**current, "status": "off"})
        with connect(_ws_url(base), open_timeout=20) as ws:
            ws.send(f"bind {sub_id}")
            assert recv_text(ws).startswith("error ")  # not active: an error, socket open
            ws.send("bind no-such-subscription")
            assert recv_text(ws).startswith("error ")
            current = requests.get(f"{base}/Subscription/{sub_id}", timeout=30).json()
            put(base, {**current, "status": "requested"})
            assert wait_for(lambda: status_of(base, sub_id) == "active")
            ws.send(f"bind {sub_id}")
            assert recv_text(ws) == f"bound {sub_id}"
            store.upsert(study("other", "p2"))  # does not match
            _silent(ws)
            store.upsert(study("mine", "p1"))
            assert recv_text(ws) == f"ping {sub_id}"
            study_update = study("mine", "p1", status="cancelled")
            requests.put(f"{base}/ImagingStudy/mine", json=study_update, timeout=30)
            assert recv_text(ws) == f"ping {sub_id}"
            requests.delete(f"{base}/ImagingStudy/mine", timeout=30)  # deletes do not ping
            _silent(ws)


def _handshake(ws: object, token: str, framing: str) -> dict:
    if framing == "json":
        ws.send(json.dumps({"type": "bind-with-token", "payload": {"token": token}}))  # type: ignore[attr-defined]
    else:
        ws.send(f"bind-with-token: {token}")  # type: ignore[attr-defined]
    return recv_json(ws)  # type: ignore[arg-type]


@pytest.mark.parametrize("framing", ["json", "text"])
@pytest.mark.parametrize("content", ["full-resource", "id-only", "empty"])
def test_backport_websocket_handshake_and_numbered_events(
    tmp_path: Path, framing: str, content: str
) -> None:
    with serving_store(tmp_path) as (base, store):
        store.upsert(patient("p1"))
        store.upsert(patient("p2"))
        sub = create(
            base,
            backport_subscription(
                "websocket", filters=("ImagingStudy?patient=Patient/p1",), content=content
            ),
        )
        sub_id = sub["id"]
        token = binding_token(base, sub_id)
        assert token["subscription"] == sub_id
        assert token["websocket-url"] == _ws_url(base)
        assert len(token["token"]) >= 40  # 256 random bits, URL-safe base64
        with connect(token["websocket-url"], open_timeout=20) as ws:
            handshake = _handshake(ws, token["token"], framing)
            assert handshake["type"] == "history"
            status = parameters_of(handshake)
            assert status["type"] == "handshake"
            assert status["topic"] == IMAGINGSTUDY_TOPIC
            assert status["subscription"] == f"{base}/Subscription/{sub_id}"
            assert status["events-since-subscription-start"] == "0"
            assert (
                handshake["entry"][0]["request"]["url"] == f"{base}/Subscription/{sub_id}/$status"
            )
            store.upsert(study("s1", "p1"))
            store.upsert(study("s-other", "p2"))  # filtered out
            store.upsert(study("s2", "p1", modality="MR"))
            store.upsert(study("s1", "p1", status="cancelled"))  # an update
            got = [recv_json(ws) for _ in range(3)]
            _silent(ws)
        assert [event_numbers(b) for b in got] == [[1], [2], [3]]
        statuses = [parameters_of(b) for b in got]
        assert [s["events-since-subscription-start"] for s in statuses] == ["1", "2", "3"]
        assert all(s["type"] == "event-notification" for s in statuses)
        events = [s["notification-event"][0] for s in statuses]
        if content == "empty":
            assert all("focus" not in e for e in events)
            assert all(len(b["entry"]) == 1 for b in got)
        else:
            focus = [e["focus"] for e in events]
            assert focus == [
                f"{base}/ImagingStudy/s1",
                f"{base}/ImagingStudy/s2",
                f"{base}/ImagingStudy/s1",
            ]
            entries = [b["entry"][1] for b in got]
            assert [e["request"]["method"] for e in entries] == ["POST", "POST", "PUT"]
            assert [e["response"]["status"] for e in entries] == ["201", "201", "200"]
            if content == "full-resource":
                assert entries[2]["resource"]["status"] == "cancelled"
                assert entries[1]["resource"]["modality"][0]["code"] == "MR"
            else:
                assert all("resource" not in e for e in entries)


def test_one_socket_binds_several_tokens_and_unbinds(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (base, store):
        store.upsert(patient("p1"))
        store.upsert(patient("p2"))
        one = create(base, backport_subscription("websocket", filters=("patient=Patient/p1",)))
        two = create(base, backport_subscription("websocket", filters=("patient=Patient/p2",)))
        first = binding_token(base, one["id"])["token"]
        second = binding_token(base, two["id"])["token"]
        with connect(_ws_url(base), open_timeout=20) as ws:
            assert parameters_of(_handshake(ws, first, "json"))["type"] == "handshake"
            assert parameters_of(_handshake(ws, second, "text"))["type"] == "handshake"
            store.upsert(study("a", "p1"))
            store.upsert(study("b", "p2"))
            subs = {parameters_of(recv_json(ws))["subscription"] for _ in range(2)}
            assert subs == {f"{base}/Subscription/{one['id']}", f"{base}/Subscription/{two['id']}"}
            ws.send(json.dumps({"type": "unbind-from-token", "payload": {"token": first}}))
            ws.send(json.dumps({"type": "ping"}))
            assert recv_json(ws) == {"type": "pong"}
            store.upsert(study("a2", "p1"))
            _silent(ws)
            store.upsert(study("b2", "p2"))
            assert parameters_of(recv_json(ws))["subscription"].endswith(two["id"])


def test_one_token_for_several_subscriptions(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (base, store):
        store.upsert(patient("p1"))
        ids = [create(base, backport_subscription("websocket"))["id"] for _ in range(2)]
        answer = requests.post(
            f"{base}/Subscription/$get-ws-binding-token",
            json={
                "resourceType": "Parameters",
                "parameter": [{"name": "id", "valueString": i} for i in ids],
            },
            headers={"Content-Type": "application/fhir+json"},
            timeout=30,
        ).json()
        token = next(p["valueString"] for p in answer["parameter"] if p["name"] == "token")
        named = [p["valueString"] for p in answer["parameter"] if p["name"] == "subscription"]
        assert named == ids
        with connect(_ws_url(base), open_timeout=20) as ws:
            ws.send(f"bind-with-token: {token}")
            shakes = {parameters_of(recv_json(ws))["subscription"].rsplit("/", 1)[1] for _ in ids}
            assert shakes == set(ids)
            store.upsert(study("s", "p1"))
            notified = {parameters_of(recv_json(ws))["subscription"].rsplit("/", 1)[1] for _ in ids}
            assert notified == set(ids)


def test_heartbeats_carry_the_current_count(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (base, store):
        store.upsert(patient("p1"))
        sub = create(base, backport_subscription("websocket", heartbeat=1))
        store.upsert(study("s1", "p1"))  # event 1, before anyone listens
        token = binding_token(base, sub["id"])["token"]
        with connect(_ws_url(base), open_timeout=20) as ws:
            handshake = parameters_of(_handshake(ws, token, "json"))
            assert handshake["events-since-subscription-start"] == "1"  # missed one: visible
            beats = [parameters_of(recv_json(ws, timeout=10)) for _ in range(2)]
        assert [b["type"] for b in beats] == ["heartbeat", "heartbeat"]
        assert all(b["events-since-subscription-start"] == "1" for b in beats)
        assert all(b["notification-event"] == [] for b in beats)


def test_hostile_frames_get_errors_and_the_server_keeps_serving(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (base, store):
        store.upsert(patient("p1"))
        sub = create(base, backport_subscription("websocket"))
        store.subscriptions.tokens.lifetime = 0.5
        expired = binding_token(base, sub["id"])["token"]
        wait_for(lambda: store.subscriptions.tokens.lookup(expired) is None, what="expiry")
        with connect(_ws_url(base), open_timeout=20, max_size=2**22) as ws:
            for frame in (
                "bind",
                "bind ../../etc/passwd",
                "bind-with-token: ",
                "bind-with-token: not-a-token",
                f"bind-with-token: {expired}",
                "hello",
                "x" * 100_000,
            ):
                ws.send(frame)
                assert recv_text(ws).startswith("error "), frame
            for frame in (
                "{not json",
                "[1, 2]",
                json.dumps({"type": "bind-with-token"}),
                json.dumps({"type": "bind-with-token", "payload": {"token": 12}}),
                json.dumps({"type": "bind-with-token", "payload": {"token": "nope"}}),
                json.dumps({"type": "subscribe-to-everything"}),
            ):
                ws.send(frame)
                reply = recv_json(ws)
                assert reply["type"] == "error", frame
                assert reply["payload"]["resourceType"] == "OperationOutcome"
            ws.send(b"\x00\x01binary")
            assert recv_text(ws).startswith("error ")
            ws.send("ping")
            assert recv_text(ws) == "pong"
        with connect(_ws_url(base), open_timeout=20, max_size=2**22) as ws:
            ws.send("y" * (2 * 1024 * 1024))  # beyond the frame limit: closed (1009)
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=20)
        store.subscriptions.tokens.lifetime = 300
        token = binding_token(base, sub["id"])["token"]
        with connect(_ws_url(base), open_timeout=20) as ws:  # still serving
            assert parameters_of(_handshake(ws, token, "text"))["type"] == "handshake"
        assert requests.get(f"{base}/metadata", timeout=30).status_code == 200


def test_binding_token_needs_a_websocket_subscription(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (base, _):
        sub = create(
            base,
            legacy_subscription(
                "Patient", {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/"}
            ),
        )
        answer = requests.get(f"{base}/Subscription/{sub['id']}/$get-ws-binding-token", timeout=30)
        assert answer.status_code == 400
        assert "websocket" in answer.json()["issue"][0]["diagnostics"]
        missing = requests.get(f"{base}/Subscription/nope/$get-ws-binding-token", timeout=30)
        assert missing.status_code == 404
