"""Durable event numbers, ``$events`` and ``$status`` (Subscriptions Backport IG: errors
page, Operations): numbers survive a restart, rolled-back writes notify nobody, every
write path is seen.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from store_helpers import (
    FHIR,
    backport_subscription,
    binding_token,
    create,
    event_numbers,
    parameters_of,
    patient,
    put_bundle,
    recv_json,
    study,
)
from websockets.sync.client import connect

from imagingkit.errors import InvalidInputError
from imagingkit.sandbox.fhir.testing import serving_store


def _events(base: str, sub_id: str, **params: str) -> dict:
    answer = requests.get(f"{base}/Subscription/{sub_id}/$events", params=params, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _status(base: str, sub_id: str) -> dict:
    answer = requests.get(f"{base}/Subscription/{sub_id}/$status", timeout=30)
    assert answer.status_code == 200, answer.text
    bundle = answer.json()
    assert bundle["type"] == "searchset" and bundle["total"] == 1
    return parameters_of(bundle)


def test_events_replay_after_the_socket_closed_and_numbering_survives_restart(
    tmp_path: Path,
) -> None:
    with serving_store(tmp_path) as (base, store):
        store.upsert(patient("p1"))
        sub_id = create(base, backport_subscription("websocket", content="full-resource"))["id"]
        token = binding_token(base, sub_id)
        with connect(token["websocket-url"], open_timeout=20) as ws:
            ws.send(f"bind-with-token: {token['token']}")
            recv_json(ws)
            store.upsert(study("s1", "p1"))
            assert event_numbers(recv_json(ws)) == [1]
        for i in range(2, 6):  # nobody listening: events 2..5 are numbered anyway
            store.upsert(study(f"s{i}", "p1", modality="MR"))
        status = _status(base, sub_id)
        assert status["type"] == "query-status"
        assert status["events-since-subscription-start"] == "5"
        assert status["status"] == "active"
        replay = _events(base, sub_id, eventsSinceNumber="2", eventsUntilNumber="4")
        assert replay["type"] == "history"
        assert parameters_of(replay)["type"] == "query-event"
        assert event_numbers(replay) == [2, 3, 4]
        resources = [e["resource"]["id"] for e in replay["entry"][1:]]
        assert resources == ["s2", "s3", "s4"]
        hint = _events(base, sub_id, eventsSinceNumber="5", content="id-only")
        assert event_numbers(hint) == [5]
        assert "resource" not in hint["entry"][1]
        assert hint["entry"][1]["fullUrl"] == f"{base}/ImagingStudy/s5"
    with serving_store(tmp_path) as (base, store):  # restart: same database
        store.upsert(study("s6", "p1"))
        assert _status(base, sub_id)["events-since-subscription-start"] == "6"
        assert event_numbers(_events(base, sub_id, eventsSinceNumber="5")) == [5, 6]
        # the replay shows each resource as its event wrote it
        store.upsert(study("s1", "p1", status="cancelled"))
        first = _events(base, sub_id, eventsSinceNumber="1", eventsUntilNumber="1")
        assert first["entry"][1]["resource"]["status"] == "available"


def test_events_window_is_bounded_and_parameters_are_checked(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (base, store):
        store.upsert(patient("p1"))
        sub_id = create(base, backport_subscription("websocket"))["id"]
        bundle = put_bundle([study(f"t{i}", "p1") for i in range(130)])
        store.transaction(bundle)
        assert store.subscriptions.events.count(sub_id) == 130
        window = _events(base, sub_id)
        assert event_numbers(window) == list(range(1, 101))
        rest = _events(base, sub_id, eventsSinceNumber="101")
        assert event_numbers(rest) == list(range(101, 131))
        posted = requests.post(
            f"{base}/Subscription/{sub_id}/$events",
            json={
                "resourceType": "Parameters",
                "parameter": [
                    {"name": "eventsSinceNumber", "valueString": "7"},
                    {"name": "eventsUntilNumber", "valueString": "8"},
                ],
            },
            headers=FHIR,
            timeout=30,
        )
        assert event_numbers(posted.json()) == [7, 8]
        for params in ({"eventsSinceNumber": "0"}, {"eventsSinceNumber": "x"}, {"content": "all"}):
            bad = requests.get(f"{base}/Subscription/{sub_id}/$events", params=params, timeout=30)
            assert bad.status_code == 400, params
            assert bad.json()["resourceType"] == "OperationOutcome"
        missing = requests.get(f"{base}/Subscription/nope/$events", timeout=30)
        assert missing.status_code == 404


def test_type_level_status_lists_and_filters(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (base, store):
        store.upsert(patient("p1"))
        one = create(base, backport_subscription("websocket"))["id"]
        two = create(base, backport_subscription("websocket", filters=("status=cancelled",)))["id"]
        store.upsert(study("s1", "p1"))
        everything = requests.get(f"{base}/Subscription/$status", timeout=30).json()
        counts = {
            parameters_of({"entry": [e]})["subscription"].rsplit("/", 1)[1]: parameters_of(
                {"entry": [e]}
            )["events-since-subscription-start"]
            for e in everything["entry"]
        }
        assert counts == {one: "1", two: "0"}
        named = requests.get(f"{base}/Subscription/$status", params={"id": two}, timeout=30).json()
        assert named["total"] == 1
        off = requests.get(f"{base}/Subscription/$status", params={"status": "off"}, timeout=30)
        assert off.json()["total"] == 0


def test_rolled_back_transactions_notify_nobody_and_every_path_is_numbered(
    tmp_path: Path,
) -> None:
    with serving_store(tmp_path) as (base, store):
        store.upsert(patient("p1"))
        sub_id = create(base, backport_subscription("websocket"))["id"]
        failing = put_bundle([study("r1", "p1"), study("r2", "nobody")])
        assert requests.post(base, json=failing, headers=FHIR, timeout=30).status_code == 400
        with pytest.raises(InvalidInputError):
            store.transaction(failing)
        with pytest.raises(RuntimeError), store.storage.transaction():  # in-process rollback
            store.storage.write(study("r3", "p1"), "PUT")
            raise RuntimeError("abort")
        assert store.subscriptions.events.count(sub_id) == 0
        assert requests.get(f"{base}/ImagingStudy/r1", timeout=30).status_code == 404
        # REST create, REST update, batch, transaction, in-process upsert: one event each
        requests.post(f"{base}/ImagingStudy", json=study("ignored", "p1"), headers=FHIR, timeout=30)
        requests.put(f"{base}/ImagingStudy/u1", json=study("u1", "p1"), headers=FHIR, timeout=30)
        batch = put_bundle([study("b1", "p1")], "batch")
        requests.post(base, json=batch, headers=FHIR, timeout=30)
        store.transaction(put_bundle([study("b1", "p1", status="cancelled")]))
        store.upsert(study("i1", "p1"))
        store.upsert(study("i1", "p1"))  # unchanged: no new version, no event
        focus = [e["fullUrl"].rsplit("/", 1)[1] for e in _events(base, sub_id)["entry"][1:]]
        assert len(focus) == 5
        assert focus[1:] == ["u1", "b1", "b1", "i1"]
