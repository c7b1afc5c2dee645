"""Listener faults on a scriptable fake server: dropped, duplicated and out-of-order events,
$events recovery or re-query, heartbeat silence, legacy bind timing, hostile URLs, bad frames.
"""

from __future__ import annotations

import pytest
from client_helpers import fake_fhir, notification_bundle, wait_until

from imagingkit.errors import AuthError
from imagingkit.fhir.client import FhirClient
from imagingkit.subscriptions import SubscriptionListener

FAST = {"grace": 0.3, "backoff": (0.05, 0.5), "timeout": 10.0}


def test_check_45_dropped_event_is_replayed_by_events_operation() -> None:
    with fake_fhir() as fake:
        fake.add_study("a")
        fake.add_study("b")
        fake.add_study("c")
        with SubscriptionListener(FhirClient(fake.base), **FAST) as listener:
            assert (listener.mode, listener.channel) == ("topic", "token")
            fake.wait_bound()
            fake.event("a")
            fake.event("b", deliver=False)  # lost in transit
            fake.event("c")
            change = listener.wait_for("ImagingStudy/b", timeout=15)
            assert change.source == "events" and change.number == 2
            assert change.resource is not None and change.resource["id"] == "b"  # fetched
            assert listener.stats.gaps_detected == 1 and listener.stats.recoveries == 1
            assert any(
                "$events?eventsSinceNumber=2&eventsUntilNumber=2" in r for r in fake.state.requests
            )
            assert sorted(c.number for c in listener.changes()) == [1, 2, 3]
        assert fake.state.deleted == ["sub1"]  # close() deletes the Subscription it created


def test_duplicates_and_out_of_order_are_delivered_once() -> None:
    with fake_fhir() as fake:
        for name in "abc":
            fake.add_study(name)
        with SubscriptionListener(FhirClient(fake.base), grace=2.0, timeout=10.0) as listener:
            fake.wait_bound()
            fake.event("a")
            fake.event("b", deliver=False)
            fake.event("c")
            fake.deliver(3)  # duplicate
            fake.deliver(2)  # straggler, within the grace period
            fake.deliver(1)  # duplicate
            listener.wait_for("ImagingStudy/b", timeout=10)
            wait_until(lambda: listener.stats.duplicates == 2, what="two duplicates")
            assert [c.number for c in listener.changes()] == [1, 3, 2]  # arrival order
            assert listener.stats.recoveries == 0  # the straggler arrived in time
            assert not any("$events" in r for r in fake.state.requests)


def test_without_events_operation_a_gap_is_covered_by_requery() -> None:
    with fake_fhir(events_supported=False) as fake:
        fake.add_study("a")
        fake.add_study("b")
        with SubscriptionListener(FhirClient(fake.base), **FAST) as listener:
            fake.wait_bound()
            fake.event("a", deliver=False)
            fake.event("b")
            change = listener.wait_for(lambda c: c.source == "requery", timeout=15)
            assert change.focus in ("ImagingStudy/a", "ImagingStudy/b")
            assert listener.stats.requeries >= 1
            assert any(
                r.startswith("GET /fhir/ImagingStudy?_lastUpdated=ge") for r in fake.state.requests
            )


def test_check_45_heartbeat_silence_asks_status_and_reconnects() -> None:
    with fake_fhir(heartbeat=1) as fake:
        fake.add_study("a")
        with SubscriptionListener(FhirClient(fake.base), **FAST) as listener:
            fake.wait_bound()
            fake.event("a", deliver=False)  # then silence: no heartbeat, no event
            change = listener.wait_for("ImagingStudy/a", timeout=20)
            assert listener.stats.silences >= 1 and listener.stats.status_checks >= 1
            assert change.source in ("events", "requery")
            wait_until(lambda: listener.stats.reconnects >= 1, what="a reconnect")
            assert any("/$status" in r for r in fake.state.requests)


def test_reconnect_after_a_dropped_socket_catches_up_from_the_handshake_count() -> None:
    with fake_fhir() as fake:
        fake.add_study("a")
        fake.add_study("b")
        with SubscriptionListener(FhirClient(fake.base), **FAST) as listener:
            fake.wait_bound()
            fake.event("a")
            listener.wait_for("ImagingStudy/a", timeout=10)
            fake.drop_sockets()
            fake.event("b", deliver=False)  # happens while the client is away
            change = listener.wait_for("ImagingStudy/b", timeout=20)
            assert change.source == "events"
            assert listener.stats.reconnects == 1 and listener.status == "connected"


def test_check_46_legacy_bind_is_sent_only_once_active_and_ping_requeries() -> None:
    with fake_fhir(topic=False, legacy_active_after=3) as fake:
        fake.add_study("a")
        client = FhirClient(fake.base)
        with SubscriptionListener(client, binding="bind", **FAST) as listener:
            assert (listener.mode, listener.channel) == ("criteria", "bind")
            assert fake.state.binds == [(f"bind {listener.subscription_id}", "active")]
            assert fake.state.sub_gets >= 4  # polled while "requested"
            fake.add_study("b")
            fake.send(f"ping {listener.subscription_id}")
            change = listener.wait_for("ImagingStudy/b", timeout=10)
            assert change.source == "requery" and change.resource is not None
            fake.drop_sockets()
            wait_until(lambda: listener.stats.reconnects == 1, what="reconnect")
            wait_until(lambda: len(fake.state.binds) == 2, what="re-bind")
            assert fake.state.binds[1][1] == "active"
            requeries = listener.stats.requeries
            assert requeries >= 3  # bound, ping, bound again


def test_legacy_subscription_that_never_activates_is_not_bound() -> None:
    with fake_fhir(topic=False, legacy_active_after=10_000) as fake:
        with pytest.raises(Exception, match="not 'active'"):
            SubscriptionListener(FhirClient(fake.base), binding="bind", active_timeout=1.0)
        assert fake.state.binds == []
        assert fake.state.deleted == ["sub1"]  # nothing left behind


@pytest.mark.parametrize(
    "hostile", ["ws://attacker.invalid:80/fhir/ws", "ws://127.0.0.2:{port}/fhir/ws"]
)
def test_hostile_websocket_url_is_refused_before_the_token_leaves(hostile: str) -> None:
    with fake_fhir() as fake:
        fake.state.hostile_ws_url = hostile.format(port=fake.port)
        with pytest.raises(AuthError, match="another origin"):
            SubscriptionListener(FhirClient(fake.base), **FAST)
        assert fake.state.binds == [] and fake.state.deleted == ["sub1"]


def test_malformed_frames_are_counted_and_survived() -> None:
    with fake_fhir() as fake:
        fake.add_study("a")
        with SubscriptionListener(FhirClient(fake.base), **FAST) as listener:
            fake.wait_bound()
            fake.send("{not json")
            fake.send({"resourceType": "Bundle", "type": "history", "entry": []})
            broken = notification_bundle("sub1", "event-notification", 1, [(1, "ImagingStudy/a")])
            broken["entry"][0]["resource"]["parameter"][3]["valueCode"] = "bogus"
            fake.send(broken)
            fake.send('{"type": "pong"}')  # a control frame, not malformed
            wait_until(lambda: listener.stats.malformed == 3, what="3 malformed frames")
            fake.event("a")
            assert listener.wait_for("ImagingStudy/a", timeout=10).number == 1
            assert listener.status == "connected"


def test_text_framing_fallback() -> None:
    with fake_fhir(json_binding=False) as fake:
        client = FhirClient(fake.base)
        with SubscriptionListener(client, framing="auto", **FAST) as listener:
            assert listener.channel == "token" and listener.status == "connected"
            assert fake.state.binds[-1][0] == "bind-with-token: token-sub1"
            fake.add_study("a")
            fake.event("a")
            assert listener.wait_for("ImagingStudy/a", timeout=10).number == 1
