"""The rest-hook channel of the embedded store against a real HTTP receiver on loopback.

Subscriptions Backport IG channels (handshake before active, Content-Type = payload,
channel.header as HTTP headers) and errors (a failed delivery sets ``error``; event
numbers keep counting and ``$events`` returns what was missed); R4 legacy rest-hooks.
"""

from __future__ import annotations

from pathlib import Path

import requests
from store_helpers import (
    backport_subscription,
    create,
    event_numbers,
    legacy_subscription,
    parameters_of,
    patient,
    put,
    receiving_hooks,
    status_of,
    study,
    wait_for,
)

from imagingkit.sandbox.fhir.testing import serving_store


def test_handshake_activates_and_notifications_carry_headers(tmp_path: Path) -> None:
    with receiving_hooks() as hook, serving_store(tmp_path) as (base, store):
        store.upsert(patient("p1"))
        sub = create(
            base,
            backport_subscription(
                "rest-hook",
                endpoint=hook.url,
                headers=("Authorization: Bearer secret-for-the-hook", "X-Trace: 42"),
                content="full-resource",
            ),
        )
        assert sub["status"] == "requested"
        handshake = hook.next()
        assert handshake.headers["Content-Type"] == "application/fhir+json"
        assert handshake.headers["Authorization"] == "Bearer secret-for-the-hook"
        assert handshake.headers["X-Trace"] == "42"
        status = parameters_of(handshake.json())
        assert status["type"] == "handshake"
        assert status["status"] == "requested"
        assert status["events-since-subscription-start"] == "0"
        assert wait_for(lambda: status_of(base, sub["id"]) == "active")
        store.upsert(study("s1", "p1"))
        note = hook.next()
        assert note.headers["X-Trace"] == "42"
        bundle = note.json()
        assert event_numbers(bundle) == [1]
        assert bundle["entry"][1]["resource"]["id"] == "s1"
        assert parameters_of(bundle)["subscription"] == f"{base}/Subscription/{sub['id']}"


def test_failed_handshake_sets_error(tmp_path: Path) -> None:
    with receiving_hooks() as hook, serving_store(tmp_path) as (base, _):
        hook.status = 500
        sub = create(base, backport_subscription("rest-hook", endpoint=hook.url))
        hook.next()
        assert wait_for(lambda: status_of(base, sub["id"]) == "error")
        stored = requests.get(f"{base}/Subscription/{sub['id']}", timeout=30).json()
        assert "500" in stored["error"]
        # nothing listens on this port: refused connection → error as well
        dead = create(base, backport_subscription("rest-hook", endpoint="http://127.0.0.1:9/x"))
        assert wait_for(lambda: status_of(base, dead["id"]) == "error")


def test_redirects_are_never_followed(tmp_path: Path) -> None:
    with receiving_hooks() as hook, serving_store(tmp_path) as (base, _):
        endpoint = hook.url.replace("/hook/ok", "/hook/redirect")
        sub = create(
            base, backport_subscription("rest-hook", endpoint=endpoint, headers=("X-Key: k",))
        )
        assert hook.next().path == "redirect"
        assert wait_for(lambda: status_of(base, sub["id"]) == "error")
        assert hook.drain() == []  # the 307 target was never asked


def test_delivery_failure_keeps_counting_and_events_recovers(tmp_path: Path) -> None:
    with receiving_hooks() as hook, serving_store(tmp_path) as (base, store):
        store.upsert(patient("p1"))
        sub_id = create(base, backport_subscription("rest-hook", endpoint=hook.url))["id"]
        hook.next()
        wait_for(lambda: status_of(base, sub_id) == "active")
        store.upsert(study("s1", "p1"))
        assert event_numbers(hook.next().json()) == [1]
        hook.status = 503
        store.upsert(study("s2", "p1"))
        assert event_numbers(hook.next().json()) == [2]
        assert wait_for(lambda: status_of(base, sub_id) == "error")
        store.upsert(study("s3", "p1"))
        store.upsert(study("s4", "p1"))
        assert store.subscriptions.events.count(sub_id) == 4  # numbered, not delivered
        status = parameters_of(
            requests.get(f"{base}/Subscription/{sub_id}/$status", timeout=30).json()
        )
        assert status["status"] == "error"
        assert status["events-since-subscription-start"] == "4"
        missed = requests.get(
            f"{base}/Subscription/{sub_id}/$events",
            params={"eventsSinceNumber": "2", "eventsUntilNumber": "4"},
            timeout=30,
        ).json()
        assert event_numbers(missed) == [2, 3, 4]
        # the client re-activates: a new handshake, then numbering goes on from 5
        hook.status = 200
        hook.drain()
        current = requests.get(f"{base}/Subscription/{sub_id}", timeout=30).json()
        assert put(base, {**current, "status": "requested"}).status_code == 200
        assert (
            parameters_of(hook.next_of("handshake").json())["events-since-subscription-start"]
            == "4"
        )
        wait_for(lambda: status_of(base, sub_id) == "active")
        assert "error" not in requests.get(f"{base}/Subscription/{sub_id}", timeout=30).json()
        store.upsert(study("s5", "p1"))
        assert event_numbers(hook.next_of("event-notification").json()) == [5]


def test_rest_hook_heartbeats(tmp_path: Path) -> None:
    with receiving_hooks() as hook, serving_store(tmp_path) as (base, _):
        sub_id = create(base, backport_subscription("rest-hook", endpoint=hook.url, heartbeat=1))[
            "id"
        ]
        beat = parameters_of(hook.next_of("heartbeat", timeout=20).json())
        assert beat["subscription"].endswith(sub_id)
        assert beat["events-since-subscription-start"] == "0"


def test_legacy_rest_hook_posts_the_resource_or_nothing(tmp_path: Path) -> None:
    with receiving_hooks() as hook, serving_store(tmp_path) as (base, store):
        store.upsert(patient("p1"))
        with_body = {"type": "rest-hook", "endpoint": hook.url, "payload": "application/fhir+json"}
        create(base, legacy_subscription("ImagingStudy?modality=CT", with_body))
        empty = {"type": "rest-hook", "endpoint": hook.url + "?empty", "header": ["X-Kind: ping"]}
        create(base, legacy_subscription("ImagingStudy?modality=CT", empty))
        store.upsert(study("mr", "p1", modality="MR"))  # matches neither
        store.upsert(study("ct", "p1"))
        got = [hook.next(), hook.next()]
        assert hook.drain() == []
        body = next(g for g in got if g.body)
        assert body.json()["id"] == "ct"
        assert body.headers["Content-Type"] == "application/fhir+json"
        ping = next(g for g in got if not g.body)
        assert ping.headers["X-Kind"] == "ping"
