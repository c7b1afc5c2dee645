"""The Subscription listener on the rest-hook channel, against the embedded FHIR store.

The store (a real server, over HTTP on loopback) POSTs handshakes, events and heartbeats
to the listener's receiver (Subscriptions Backport IG, channels): events arrive with
their resource; a receiver that was down misses events, which come back through
``$events``; an adopted Subscription is re-pointed at a new receiver and catches up; a
POST without the shared secret is refused (401/403) and never delivered; unreadable
bodies are answered 400 and counted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests
from client_helpers import wait_until
from store_helpers import put as _put
from store_helpers import study

from imagingkit.errors import InvalidInputError
from imagingkit.fhir.client import FhirClient
from imagingkit.sandbox.fhir.testing import serving_store
from imagingkit.subscriptions import Change, SubscriptionListener

FAST: dict[str, Any] = {
    "grace": 0.3,
    "backoff": (0.05, 0.5),
    "heartbeat_period": 2,
    "timeout": 8.0,
    "loop": "thread",
    "channel": "rest-hook",
}


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # loopback only: no proxy
    return session


def _subscription(base: str, sub_id: str | None) -> dict[str, Any]:
    answer = requests.get(f"{base}/Subscription/{sub_id}", timeout=30)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def _secret_header(subscription: dict[str, Any]) -> tuple[str, str]:
    (header,) = [h for h in subscription["channel"]["header"] if h.startswith("Authorization:")]
    name, _, value = header.partition(":")
    return name, value.strip()


def _forged_event(sub_id: str, number: int, focus: str) -> dict[str, Any]:
    """A well-formed backport event notification, as a server would POST it."""
    return {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            {
                "resource": {
                    "resourceType": "Parameters",
                    "parameter": [
                        {
                            "name": "subscription",
                            "valueReference": {"reference": f"Subscription/{sub_id}"},
                        },
                        {"name": "status", "valueCode": "active"},
                        {"name": "type", "valueCode": "event-notification"},
                        {"name": "events-since-subscription-start", "valueString": str(number)},
                        {
                            "name": "notification-event",
                            "part": [
                                {"name": "event-number", "valueString": str(number)},
                                {"name": "focus", "valueReference": {"reference": focus}},
                            ],
                        },
                    ],
                }
            }
        ],
    }


def put(base: str, resource: dict[str, Any]) -> None:
    answer = _put(base, resource)
    assert answer.status_code in (200, 201), answer.text


def _seed(base: str) -> None:
    put(base, {"resourceType": "Patient", "id": "p1"})


def test_rest_hook_events_arrive_with_their_resource(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (base, _store):
        _seed(base)
        with SubscriptionListener(FhirClient(base), "ImagingStudy", **FAST) as listener:
            assert (listener.mode, listener.channel, listener.status) == (
                "topic",
                "rest-hook",
                "connected",
            )
            sub = _subscription(base, listener.subscription_id)
            channel = sub["channel"]
            assert sub["status"] == "active"  # the handshake was answered 2xx
            assert channel["type"] == "rest-hook"
            assert channel["endpoint"].startswith("http://127.0.0.1:")
            token = channel["endpoint"].rsplit("/", 1)[1]
            assert len(token) >= 32  # ≥ 128 random bits, urlsafe base64
            assert _secret_header(sub)[1].startswith("Bearer ")
            got: list[Change] = []
            listener.on_change(got.append)

            put(base, study("s1", "p1"))
            change = listener.wait_for("ImagingStudy/s1", timeout=30)
            assert change.source == "notification" and change.number == 1
            assert change.resource is not None and change.resource["id"] == "s1"
            put(base, study("s1", "p1", status="cancelled"))
            updated = listener.wait_for(lambda c: c.number == 2, timeout=30)
            assert updated.resource is not None and updated.resource["status"] == "cancelled"
            wait_until(lambda: len(got) == 2, what="both callbacks")
            assert [c.number for c in got] == [1, 2]
            wait_until(lambda: listener.stats.heartbeats >= 1, timeout=30, what="a heartbeat")
            assert listener.stats.handshakes == 1 and listener.stats.refused == 0
            sub_id = listener.subscription_id
        assert listener.status == "closed"
        gone = requests.get(f"{base}/Subscription/{sub_id}", timeout=30)
        assert gone.status_code in (404, 410)  # close() deleted it


def test_posts_without_the_secret_are_refused_and_bad_bodies_counted(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (base, _store):
        _seed(base)
        put(base, study("s1", "p1"))
        options = {**FAST, "max_body": 64 * 1024}
        with SubscriptionListener(FhirClient(base), "ImagingStudy", **options) as listener:
            sub = _subscription(base, listener.subscription_id)
            endpoint = sub["channel"]["endpoint"]
            name, secret = _secret_header(sub)
            sub_id = str(listener.subscription_id)
            forged = json.dumps(_forged_event(sub_id, 1, "ImagingStudy/s1")).encode()
            fhir_json = {"Content-Type": "application/fhir+json"}
            http = _session()

            def post(url: str, body: bytes, headers: dict[str, str]) -> int:
                return http.post(url, data=body, headers=headers, timeout=30).status_code

            assert post(endpoint, forged, fhir_json) == 401
            assert post(endpoint, forged, {**fhir_json, name: "Bearer not-the-secret"}) == 403
            assert post(endpoint, forged, {**fhir_json, name: secret.lower()}) == 403
            wrong_path = endpoint.rsplit("/", 1)[0] + "/guessed"
            assert post(wrong_path, forged, {**fhir_json, name: secret}) == 404
            assert http.get(endpoint, timeout=30).status_code == 405
            assert listener.stats.refused == 4

            good = {**fhir_json, name: secret}
            assert post(endpoint, b"{not json", good) == 400
            assert post(endpoint, b'{"resourceType": "Patient"}', good) == 400
            assert post(endpoint, b"", good) == 400
            padded = forged + b" " * (64 * 1024)  # over max_body: never parsed
            try:
                too_big: int | None = post(endpoint, padded, good)
            except requests.RequestException:  # tornado answers 400 and hangs up mid-body
                too_big = None
            assert too_big in (400, None)
            assert listener.stats.malformed == 3
            assert listener.changes() == []  # nothing forged or broken reached a callback

            put(base, study("s2", "p1"))  # still listening
            change = listener.wait_for("ImagingStudy/s2", timeout=30)
            assert change.number == 1 and change.source == "notification"


def test_events_missed_while_the_receiver_was_down_come_back_through_events(
    tmp_path: Path,
) -> None:
    with serving_store(tmp_path) as (base, _store):
        _seed(base)
        with SubscriptionListener(FhirClient(base), "ImagingStudy", **FAST) as listener:
            put(base, study("s1", "p1"))
            listener.wait_for("ImagingStudy/s1", timeout=30)
            receiver = listener._client._receiver
            assert receiver is not None
            listener._run(receiver.stop(), 10)  # fault: the receiver is down
            put(base, study("s2", "p1"))
            put(base, study("s3", "p1"))
            wait_until(
                lambda: _subscription(base, listener.subscription_id)["status"] == "error",
                timeout=30,
                what="the store to mark the Subscription error",
            )
            listener._lt.call(receiver.start)  # back, on the same port and path

            s2 = listener.wait_for("ImagingStudy/s2", timeout=40)
            s3 = listener.wait_for("ImagingStudy/s3", timeout=40)
            # replayed by $events, or found by the re-query that follows a re-activation
            # (whichever comes first; the other does not deliver them again)
            assert {s2.source, s3.source} <= {"events", "requery"}
            assert s2.resource is not None and s2.resource["id"] == "s2"
            wait_until(
                lambda: _subscription(base, listener.subscription_id)["status"] == "active",
                timeout=40,
                what="the listener to re-activate the Subscription",
            )
            assert listener.stats.reactivations >= 1
            # the count in the handshake (or an error heartbeat) revealed events 2-3: $events
            wait_until(lambda: listener.tracker.contiguous == 3, timeout=30, what="events 2-3")
            assert listener.stats.gaps_detected >= 1 and listener.stats.recoveries >= 1

            put(base, study("s4", "p1"))
            s4 = listener.wait_for("ImagingStudy/s4", timeout=40)
            assert (s4.source, s4.number) == ("notification", 4)
            focuses = [c.focus for c in listener.changes()]
            assert sorted(focuses) == [f"ImagingStudy/s{i}" for i in (1, 2, 3, 4)]  # once each


def test_an_adopted_subscription_is_repointed_and_catches_up(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (base, _store):
        _seed(base)
        first = SubscriptionListener(FhirClient(base), "ImagingStudy", on_close="keep", **FAST)
        put(base, study("s1", "p1"))
        first.wait_for("ImagingStudy/s1", timeout=30)
        sub_id, seen = first.subscription_id, first.tracker.contiguous
        old_endpoint = _subscription(base, sub_id)["channel"]["endpoint"]
        first.close()  # a kernel restart: the receiver is gone, the Subscription kept
        put(base, study("s2", "p1"))  # POSTed to nobody

        with SubscriptionListener(
            FhirClient(base), "ImagingStudy", subscription_id=sub_id, after_event=seen, **FAST
        ) as second:
            sub = _subscription(base, sub_id)
            assert sub["status"] == "active"
            assert sub["channel"]["endpoint"] != old_endpoint
            s2 = second.wait_for("ImagingStudy/s2", timeout=40)
            assert s2.source in ("events", "requery") and s2.resource is not None
            wait_until(lambda: second.tracker.contiguous == 2, timeout=30, what="event 2")
            assert second.stats.recoveries == 1  # the handshake's count revealed event 2
            put(base, study("s3", "p1"))
            assert second.wait_for("ImagingStudy/s3", timeout=40).number == 3
            focuses = [c.focus for c in second.changes()]
            assert focuses == ["ImagingStudy/s2", "ImagingStudy/s3"]  # s1 was seen before
        assert _subscription(base, sub_id)["status"] in ("active", "error")  # kept


def test_legacy_criteria_rest_hook_pings_and_requeries(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (base, _store):
        _seed(base)
        options = {**FAST, "topic": None}
        criteria = "ImagingStudy?patient=Patient/p1"
        with SubscriptionListener(FhirClient(base), criteria, **options) as lis:
            assert (lis.mode, lis.channel) == ("criteria", "rest-hook")
            sub = _subscription(base, lis.subscription_id)
            assert "payload" not in sub["channel"]  # empty POSTs: pings
            put(base, {"resourceType": "Patient", "id": "p2"})
            put(base, study("s1", "p1"))
            put(base, study("s9", "p2"))  # outside the criteria
            change = lis.wait_for("ImagingStudy/s1", timeout=30)
            assert change.source == "requery" and change.resource is not None
            assert all(c.focus != "ImagingStudy/s9" for c in lis.changes())


def test_unknown_channel_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="channel"):
        SubscriptionListener(FhirClient("http://127.0.0.1:9/fhir"), channel="email", loop="thread")
