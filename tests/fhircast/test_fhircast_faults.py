"""Faults: silent and vanishing subscribers, hub restarts, malformed input, topic isolation."""

from __future__ import annotations

import json
import math
import socket
import threading
import time

from fhircast_helpers import (
    PATIENT,
    FakeClock,
    RawSubscriber,
    event_message,
    new_topic,
    patient_open,
    publish,
    sync_error_codes,
    wait_until,
)

from imagingkit.fhircast.background import BackgroundHub
from imagingkit.fhircast.client import FhircastClient
from imagingkit.fhircast.hub import FhircastHub, text_frame
from imagingkit.fhircast.protocol import notification

FAST = {"backoff": (0.05, 0.3), "timeout": 5.0, "loop": "thread", "max_reconnect_attempts": 200}


def numbered(topic, i):
    patient = {"resourceType": "Patient", "id": f"p{i}"}
    return patient_open(topic, patient, event_id=f"e{i:04d}")


def test_subscriber_that_never_acknowledges_is_dropped_without_harming_others(make_hub):
    clock = FakeClock()
    hub = make_hub(clock=clock)
    topic = new_topic()
    silent = RawSubscriber(
        hub.url, topic, "Patient-open", auto_ack=False, subscriber__name="Never Acks"
    )
    client = FhircastClient(hub.url, topic, ["Patient-open", "SyncError"], **FAST)
    try:
        for i in range(20):
            assert publish(hub.url, numbered(topic, i)).status_code == 202
        client.wait_for("e0019")
        # The well-behaved client's acks travel back asynchronously: advancing the fake
        # clock before the hub has them would (rightly) drop that client too.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pending = sorted(s.pending_acks for s in hub.call(hub.hub.subscriptions, topic))
            if pending == [0, 20]:
                break
            time.sleep(0.05)
        assert pending == [0, 20], pending
        clock.advance(11)
        hub.call(hub.hub.sweep)
        error = client.wait_for("SyncError")
        assert sync_error_codes(error)["subscribername"] == "Never Acks"
        assert sync_error_codes(error)["eventid"] == "e0000"
        for _ in range(20):
            silent.recv_event()
        assert silent.recv(raw=True)["hub.mode"] == "denied"
        assert silent.closed_within() == 1000
        publish(hub.url, numbered(topic, 20))
        client.wait_for("e0020")
        ids = [e.id for e in client.received() if e.name == "Patient-open"]
        assert ids == [f"e{i:04d}" for i in range(21)]
        assert len(hub.call(hub.hub.subscriptions, topic)) == 1
    finally:
        client.close()


def test_subscriber_disconnecting_mid_stream(hub):
    topic = new_topic()
    client = FhircastClient(hub.url, topic, ["Patient-open", "SyncError"], **FAST)
    vanishing = RawSubscriber(hub.url, topic, "Patient-open", subscriber__name="Vanishing")
    stop = threading.Event()
    published: list[str] = []

    def publisher():
        for i in range(200):
            if stop.is_set():
                return
            message = numbered(topic, i)
            assert publish(hub.url, message).status_code == 202
            published.append(message["id"])

    thread = threading.Thread(target=publisher)
    thread.start()
    try:
        for _ in range(5):
            vanishing.recv_event()
        # the TCP connection dies without a close frame
        vanishing.ws.socket.shutdown(socket.SHUT_RDWR)
        vanishing.ws.socket.close()
        thread.join(60)
        assert not thread.is_alive() and len(published) == 200
        client.wait_for("e0199")
        error = client.wait_for("SyncError")
        assert sync_error_codes(error)["subscribername"] == "Vanishing"
        ids = [e.id for e in client.received() if e.name == "Patient-open"]
        assert ids == published  # nothing lost, nothing duplicated, in order
        assert [s.subscriber_name for s in hub.call(hub.hub.subscriptions, topic)] == ["imagingkit"]
    finally:
        stop.set()
        thread.join(60)
        client.close()


def test_hub_restart_clients_resubscribe_and_resynchronise():
    first = BackgroundHub(FhircastHub())
    port, topic = first.port, new_topic()
    a = FhircastClient(first.url, topic, subscriber_name="A", **FAST)
    b = FhircastClient(first.url, topic, subscriber_name="B", **FAST)
    second = None
    try:
        a.wait_for(a.open_patient(PATIENT).id)
        b.wait_for("Patient-open")
        assert b.current.anchor_id == "pat-1"
        old_endpoint = b.endpoint
        first.stop()  # sockets closed with 1001; nothing listens for a while
        wait_until(lambda: b.status == "reconnecting", what="reconnecting")
        second = BackgroundHub(FhircastHub(), port=port)
        # the restarted hub learns a new context before or while the clients come back
        assert (
            publish(
                second.url, patient_open(topic, {"resourceType": "Patient", "id": "pat-2"})
            ).status_code
            == 202
        )
        for client in (a, b):
            wait_until(lambda c=client: c.status == "connected", what="reconnected")
            wait_until(
                lambda c=client: c.current is not None and c.current.anchor_id == "pat-2",
                what="re-synchronised context",
            )
            assert client.stats.reconnects >= 1 and client.in_sync
        assert b.endpoint != old_endpoint  # a fresh subscription, not a reused endpoint
        sent = b.open_patient({"resourceType": "Patient", "id": "pat-3"})
        a.wait_for(sent.id)
        assert len(second.call(second.hub.subscriptions, topic)) == 2
    finally:
        a.close()
        b.close()
        if second is not None:
            second.stop()
        first.stop()


def test_hub_restart_with_empty_state_clears_the_local_context():
    first = BackgroundHub(FhircastHub())
    port, topic = first.port, new_topic()
    client = FhircastClient(first.url, topic, **FAST)
    second = None
    try:
        client.wait_for(client.open_patient(PATIENT).id)
        contexts = []
        client.on_context(contexts.append)
        first.stop()
        second = BackgroundHub(FhircastHub(), port=port)
        wait_until(
            lambda: client.status == "connected" and client.stats.resyncs >= 1, what="resync"
        )
        assert client.current is None
        wait_until(lambda: contexts == [None], what="context-change callback")
    finally:
        client.close()
        if second is not None:
            second.stop()
        first.stop()


def test_malformed_frames_from_a_subscriber_are_ignored(hub):
    topic = new_topic()
    sub = RawSubscriber(hub.url, topic, "Patient-open")
    sub.send("{not json")
    sub.send(b"\xff\xfe binary garbage")
    sub.send('{"id": "x", "status": ')
    sentinel = patient_open(topic)
    publish(hub.url, sentinel)
    assert sub.recv_event()["id"] == sentinel["id"]
    wait_until(lambda: hub.hub.stats.malformed_frames >= 3, what="counted")
    wait_until(lambda: hub.call(hub.hub.subscriptions, topic)[0].pending_acks == 0, what="ack")
    sub.close()


def test_malformed_frames_from_the_hub_are_survived_by_the_client(hub):
    topic = new_topic()
    client = FhircastClient(hub.url, topic, ["Patient-open", "SyncError"], **FAST)
    watcher = RawSubscriber(hub.url, topic, "SyncError")
    try:
        broken_event = {"id": "broken-1", "event": {"hub.event": "Patient-open"}}

        def inject():
            (sub,) = [s for s in hub.hub._subs.values() if s.name == "imagingkit"]
            for frame in ("garbage", "[1, 2]", '{"hub.mode": "?"}'):
                sub.socket.send_text(frame)
            # tracked like a real delivery, so the hub expects its acknowledgement
            tracked = notification(topic, "Patient-open", [], event_id="broken-1")
            hub.hub._send(sub, tracked, text_frame(json.dumps(broken_event)), math.inf)

        hub.call(inject)
        sentinel = patient_open(topic)
        publish(hub.url, sentinel)
        client.wait_for(sentinel["id"])
        assert client.stats.malformed == 3  # "garbage", "[1, 2]" and the broken event
        assert client.status == "connected"
        # the unparseable event was answered 400, so the hub reports a SyncError (2-5)
        assert sync_error_codes(watcher.recv_event())["eventid"] == "broken-1"
    finally:
        client.close()
        watcher.close()


def test_malformed_json_publish_is_400_and_changes_nothing(hub):
    topic = new_topic()
    for body in ("", "{", "[]", '{"id": 1}', "null", "\x00"):
        response = publish(hub.url, body)
        assert response.status_code == 400, body
        assert response.headers["Content-Type"].startswith("text/plain")
    assert hub.call(hub.hub.current_context, topic) == {"context.type": "", "context": []}


def test_topic_isolation(hub):
    t1, t2 = new_topic(), new_topic()
    on_t1 = RawSubscriber(hub.url, t1, "Patient-open")
    on_t2 = RawSubscriber(hub.url, t2, "Patient-open")
    client_t2 = FhircastClient(hub.url, t2, ["Patient-open"], **FAST)
    try:
        secret = patient_open(t1)
        publish(hub.url, secret)
        assert on_t1.recv_event()["id"] == secret["id"]
        sentinel = event_message(t2, "Patient-open", [{"key": "patient", "resource": PATIENT}])
        publish(hub.url, sentinel)
        assert on_t2.recv_event()["id"] == sentinel["id"]
        client_t2.wait_for(sentinel["id"])
        assert [e.id for e in client_t2.received()] == [sentinel["id"]]
        assert hub.call(hub.hub.current_context, t2)["context"] == sentinel["event"]["context"]
        # an endpoint of t1 cannot be unsubscribed or resubscribed through t2
        from fhircast_helpers import subscribe_form

        hijack = subscribe_form(hub.url, t2, "Patient-open", hub__channel__endpoint=on_t1.endpoint)
        assert hijack.status_code == 404
    finally:
        client_t2.close()
        on_t1.close()
        on_t2.close()
