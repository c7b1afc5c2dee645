"""FHIRcast 3.0.0 §2-5 Receive event notification: envelope, acknowledgement, SyncError.

Checks 12, 13 (hub side), 15, 16, 17 and 40 of the notes (§17).
"""

from __future__ import annotations

import uuid

import pytest
from fhircast_helpers import (
    RawSubscriber,
    new_topic,
    patient_close,
    patient_open,
    publish,
    sync_error_codes,
    wait_until,
)

from imagingkit.fhircast.protocol import SYNCERROR_SYSTEMS, parse_timestamp


def test_check_12_notification_envelope(hub):
    topic = new_topic()
    sub = RawSubscriber(hub.url, topic, "Patient-open")
    first, second = patient_open(topic), patient_open(topic)
    publish(hub.url, first)
    publish(hub.url, second)
    events = [sub.recv_event(), sub.recv_event()]
    for message in events:
        assert set(message) == {"timestamp", "id", "event"}
        assert parse_timestamp(message["timestamp"]) is not None
        assert message["event"]["hub.topic"] == topic
        assert message["event"]["hub.event"] == "Patient-open"
        assert isinstance(message["event"]["context"], list)
    assert events[0]["id"] != events[1]["id"]
    sub.close()


@pytest.mark.parametrize("status", [200, "200", 202])
def test_check_13_hub_accepts_int_and_string_ack_status(make_hub, clock, status):
    hub = make_hub(clock=clock)
    topic = new_topic()
    sub = RawSubscriber(hub.url, topic, "Patient-open", ack_status=status)
    watcher = RawSubscriber(hub.url, topic, "SyncError")
    publish(hub.url, patient_open(topic))
    sub.recv_event()
    wait_until(lambda: hub.call(hub.hub.subscriptions, topic)[0].pending_acks == 0, what="ack")
    clock.advance(60)
    hub.call(hub.hub.sweep)
    sentinel = patient_open(topic)
    publish(hub.url, sentinel)
    assert sub.recv_event()["id"] == sentinel["id"]  # still subscribed: no SyncError
    assert watcher.nothing_within(0.2)
    sub.close()
    watcher.close()


@pytest.mark.parametrize(("status", "word"), [(409, "refused"), (404, "refused"), (500, "failed")])
def test_check_15_error_ack_makes_the_hub_send_syncerror(hub, status, word):
    topic = new_topic()
    refuser = RawSubscriber(
        hub.url, topic, "Patient-open", ack_status=status, subscriber__name="Refusing Viewer"
    )
    watcher = RawSubscriber(hub.url, topic, "SyncError,Patient-open")
    message = patient_open(topic)
    publish(hub.url, message)
    refuser.recv_event()
    error = watcher.recv_until(lambda m: m.get("event", {}).get("hub.event") == "SyncError")
    outcome = error["event"]["context"][0]
    assert outcome["key"] == "operationoutcome"
    issue = outcome["resource"]["issue"][0]
    assert issue["severity"] == "warning" and issue["code"] == "processing"
    assert word in issue["diagnostics"]
    systems = [c["system"] for c in issue["details"]["coding"]]
    assert systems == list(SYNCERROR_SYSTEMS)  # IHE RAD-155 order
    assert sync_error_codes(error) == {
        "eventid": message["id"],
        "eventname": "Patient-open",
        "subscribername": "Refusing Viewer",
    }
    # a refusal is not unresponsiveness: the refuser stays subscribed
    assert len(hub.call(hub.hub.subscriptions, topic)) == 2
    refuser.close()
    watcher.close()


def test_check_16_no_ack_within_10s_syncerror_then_unsubscribe(clocked_hub, clock):
    hub = clocked_hub
    topic = new_topic()
    silent = RawSubscriber(
        hub.url, topic, "Patient-open", auto_ack=False, subscriber__name="Silent App"
    )
    watcher = RawSubscriber(hub.url, topic, "SyncError,Patient-open")
    message = patient_open(topic)
    publish(hub.url, message)
    silent.recv_event()
    watcher.recv_event()
    clock.advance(9.5)
    hub.call(hub.hub.sweep)
    assert watcher.nothing_within(0.2)  # not yet: 10 s have not passed
    clock.advance(1)
    hub.call(hub.hub.sweep)
    error = watcher.recv_event()
    assert error["event"]["hub.event"] == "SyncError"
    assert sync_error_codes(error)["eventid"] == message["id"]
    assert sync_error_codes(error)["subscribername"] == "Silent App"
    denial = silent.recv(raw=True)
    assert denial["hub.mode"] == "denied" and "unresponsive" in denial["hub.reason"]
    assert silent.closed_within() == 1000
    assert [s.subscriber_name for s in hub.call(hub.hub.subscriptions, topic)] == [None]


def test_check_16_ack_timeout_can_be_disabled_for_clients_that_never_ack(make_hub, clock):
    hub = make_hub(clock=clock, ack_timeout=None)  # OHIF never acknowledges
    topic = new_topic()
    silent = RawSubscriber(hub.url, topic, "Patient-open", auto_ack=False)
    publish(hub.url, patient_open(topic))
    silent.recv_event()
    clock.advance(3600)
    hub.call(hub.hub.sweep)
    sentinel = patient_open(topic)
    publish(hub.url, sentinel)
    assert silent.recv_event()["id"] == sentinel["id"]
    silent.close()


@pytest.mark.parametrize(("code", "expect_error"), [(1000, False), (1001, False), (4000, True)])
def test_check_17_close_codes(hub, code, expect_error):
    topic = new_topic()
    leaving = RawSubscriber(hub.url, topic, "Patient-open", subscriber__name="Leaving")
    watcher = RawSubscriber(hub.url, topic, "SyncError,Patient-close")
    leaving.close(code)
    wait_until(lambda: len(hub.call(hub.hub.subscriptions, topic)) == 1, what="removal")
    sentinel = patient_close(topic)
    publish(hub.url, sentinel)
    first = watcher.recv_event()
    if expect_error:
        assert first["event"]["hub.event"] == "SyncError"
        assert sync_error_codes(first)["subscribername"] == "Leaving"
        assert watcher.recv_event()["id"] == sentinel["id"]
    else:
        assert first["id"] == sentinel["id"]
    watcher.close()


def test_check_40_non_ack_messages_are_ignored_without_closing(hub):
    topic = new_topic()
    sub = RawSubscriber(hub.url, topic, "Patient-open")
    sub.send({"hub.channel.endpoint": sub.endpoint})  # the Nuance-style echo
    sub.send({"id": str(uuid.uuid4()), "status": 200})  # an ack for nothing
    sub.send({"id": 7, "status": "ok"})
    sub.send("[1, 2, 3]")
    sentinel = patient_open(topic)
    publish(hub.url, sentinel)
    assert sub.recv_event()["id"] == sentinel["id"]
    assert hub.hub.stats.ignored_frames >= 3
    sub.close()


@pytest.mark.parametrize("size", [10, 200, 70_000])
def test_events_of_every_frame_length_arrive_intact(hub, size):
    topic = new_topic()
    sub = RawSubscriber(hub.url, topic, "Patient-open")
    message = patient_open(topic, {"resourceType": "Patient", "id": "p", "text": "x" * size})
    publish(hub.url, message)
    assert sub.recv_event()["event"]["context"] == message["event"]["context"]
    sub.close()
