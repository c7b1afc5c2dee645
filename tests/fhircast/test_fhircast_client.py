"""imagingkit's FHIRcast client against the real hub: the subscriber-side checks.

Checks 13, 14, 18, 25, 26, 37, 42, 43 and 44 of the notes (§17), plus the notebook
requirements of issue 6: a running asyncio loop on the caller's thread, callbacks
delivered there, clean closing.
"""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from fhircast_helpers import (
    PATIENT,
    STUDY,
    RawSubscriber,
    event_message,
    http,
    new_topic,
    patient_open,
    publish,
    put,
    report_open,
    report_update,
    sync_error_codes,
    wait_until,
)

from imagingkit.errors import FHIRcastError
from imagingkit.fhircast.client import AsyncFhircastClient, FhircastClient

FAST = {"backoff": (0.05, 0.2), "timeout": 5.0, "loop": "thread"}


@pytest.fixture
def clients():
    made: list[FhircastClient] = []

    def make(hub, topic, events=None, **options):
        kwargs = {**FAST, **options}
        client = (
            FhircastClient(hub.url, topic, **kwargs)
            if events is None
            else FhircastClient(hub.url, topic, events, **kwargs)
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def spy(hub, name):
    """Record the arguments the hub's channel method *name* receives."""
    calls = []
    original = getattr(hub.hub, name)

    def recorder(sub, value):
        calls.append(value)
        original(sub, value)

    setattr(hub.hub, name, recorder)
    return calls


def test_subscribe_confirm_and_receive(hub, clients):
    topic = new_topic()
    client = clients(hub, topic, ["patient-open", "SyncError"])
    assert client.status == "connected" and client.in_sync
    assert client.granted_events == ("Patient-open", "SyncError")
    message = patient_open(topic)
    publish(hub.url, message)
    event = client.wait_for(message["id"])
    assert event.name == "Patient-open"
    assert client.current.anchor == "Patient" and client.current.anchor_id == "pat-1"


def test_check_13_client_acks_every_event_with_an_int_including_its_echo(hub, clients):
    frames = spy(hub, "_on_channel_message")
    topic = new_topic()
    client = clients(hub, topic, ["Patient-open"])
    own = client.open_patient(PATIENT)
    client.wait_for(own.id)
    other = patient_open(topic)
    publish(hub.url, other)
    client.wait_for(other["id"])
    wait_until(lambda: len(frames) >= 2, what="two acks")
    acks = [json.loads(f) for f in frames]
    assert acks == [{"id": own.id, "status": 200}, {"id": other["id"], "status": 200}]
    assert client.is_own(client.wait_for(own.id)) and not client.is_own(
        client.wait_for(other["id"])
    )


def test_check_14_events_older_than_the_current_context_are_ignored(hub, clients):
    topic = new_topic()
    client = clients(hub, topic, ["Patient-open"])
    seen = []
    client.on("Patient-open", lambda ev: seen.append(ev.id))
    newer = patient_open(topic, timestamp="2030-01-01T10:00:00.000Z")
    older = patient_open(topic, PATIENT | {"id": "old"}, timestamp="2030-01-01T09:00:00.000Z")
    latest = patient_open(topic, PATIENT | {"id": "new"}, timestamp="2030-01-01T11:00:00Z")
    for message in (newer, older, latest):
        publish(hub.url, message)
    client.wait_for(latest["id"])
    wait_until(lambda: len(seen) == 2, what="callbacks")
    assert seen == [newer["id"], latest["id"]]
    assert client.stats.stale == 1
    assert client.current.anchor_id == "new"


def test_check_18_ack_202_then_refusal_sends_syncerror(hub, clients):
    topic = new_topic()
    watcher = RawSubscriber(hub.url, topic, "SyncError")
    client = clients(hub, topic, ["Patient-open"], ack_status=202, subscriber_name="Slow App")
    message = patient_open(topic)
    publish(hub.url, message)
    event = client.wait_for(message["id"])
    client.send_sync_error(event, "Slow App cannot open this patient")
    error = watcher.recv_event()
    assert error["event"]["hub.event"] == "SyncError"
    assert sync_error_codes(error) == {
        "eventid": message["id"],
        "eventname": "Patient-open",
        "subscribername": "Slow App",
    }
    watcher.close()


def test_check_25_close_unsubscribes_and_closes_with_1000(hub):
    codes = spy(hub, "_on_channel_closed")
    topic = new_topic()
    watcher = RawSubscriber(hub.url, topic, "SyncError,Patient-close")
    client = FhircastClient(hub.url, topic, ["Patient-open"], **FAST)
    assert len(hub.call(hub.hub.subscriptions, topic)) == 2
    client.close()
    assert client.status == "closed"
    wait_until(lambda: codes == [1000], what="close code 1000")
    assert len(hub.call(hub.hub.subscriptions, topic)) == 1
    sentinel = event_message(topic, "Patient-close", [{"key": "patient", "resource": PATIENT}])
    publish(hub.url, sentinel)
    assert watcher.recv_event()["id"] == sentinel["id"]  # no SyncError for a clean close
    client.close()  # idempotent
    watcher.close()


def test_context_manager_closes(hub):
    topic = new_topic()
    with FhircastClient(hub.url, topic, ["Patient-open"], **FAST) as client:
        assert client.status == "connected"
    assert client.status == "closed"
    assert hub.call(hub.hub.subscriptions, topic) == []


def test_check_26_denial_is_surfaced_and_ends_sync(hub, clients):
    topic = new_topic()
    client = clients(hub, topic, ["Patient-open"])
    denials = []
    client.on_denied(denials.append)
    raw = RawSubscriber(hub.url, topic, "Patient-open")
    http().post(  # someone else unsubscribes the client's endpoint
        hub.url,
        data={
            "hub.channel.type": "websocket",
            "hub.mode": "unsubscribe",
            "hub.topic": topic,
            "hub.channel.endpoint": client.endpoint,
        },
        timeout=10,
    )
    wait_until(lambda: client.status == "denied", what="denied status")
    assert client.denial is not None and client.denial.reason == "unsubscribed"
    assert client.denial.events == ("Patient-open",)
    assert not client.in_sync
    wait_until(lambda: len(denials) == 1, what="denial callback")
    assert len(hub.call(hub.hub.subscriptions, topic)) == 1  # no silent resubscription
    raw.close()


def test_denied_at_subscribe_time_raises_with_status(make_hub):
    from imagingkit.fhircast.auth import StaticTokenValidator

    hub = make_hub(token_validator=StaticTokenValidator({"t": "fhircast/Patient-open.read"}))
    with pytest.raises(FHIRcastError) as refused:
        FhircastClient(hub.url, new_topic(), ["Patient-open"], token="wrong", **FAST)
    assert refused.value.status == 401
    client = FhircastClient(hub.url, new_topic(), ["Patient-open"], token=lambda: "t", **FAST)
    assert client.granted_events == ("Patient-open",)
    client.close()


def test_check_37_prior_version_mismatch_triggers_resync(hub, clients):
    topic = new_topic()
    client = clients(hub, topic)
    message = report_open(topic, timestamp="2030-01-01T10:00:00.000Z")
    publish(hub.url, message)
    client.wait_for(message["id"])
    v0 = client.current.version_id
    # an update stamped before the open is ignored as stale (2-5) and so is missed locally
    missed = report_update(topic, v0, [put("o1")], timestamp="2030-01-01T09:00:00.000Z")
    assert publish(hub.url, missed).status_code == 202
    v1 = hub.call(hub.hub.current_context, topic)["context.versionId"]
    nxt = report_update(topic, v1, [put("o2")], timestamp="2030-01-01T10:01:00.000Z")
    publish(hub.url, nxt)
    v2 = hub.call(hub.hub.current_context, topic)["context.versionId"]
    wait_until(lambda: client.current.version_id == v2, what="re-sync to the hub's version")
    assert set(client.current.content) == {"Observation/o1", "Observation/o2"}
    assert client.stats.resyncs >= 1


def test_client_publishes_report_lifecycle(hub, clients):
    topic = new_topic()
    client = clients(hub, topic)
    opened = client.open_report({"resourceType": "DiagnosticReport", "id": "r9"}, PATIENT, [STUDY])
    client.wait_for(opened.id)
    assert client.current.version_id
    update = client.update_report(put=[put("o1")["resource"]], bundle_id="b1")
    client.wait_for(update.id)
    assert set(client.current.content) == {"Observation/o1"}
    update = client.update_report(delete=["Observation/o1"])
    client.wait_for(update.id)
    assert dict(client.current.content) == {}
    selected = client.select(["Observation/o1"])
    client.wait_for(selected.id)
    assert client.current.selection == ("Observation/o1",)
    closed = client.close_report({"resourceType": "DiagnosticReport", "id": "r9"}, PATIENT)
    client.wait_for(closed.id)
    assert client.current is None
    with pytest.raises(FHIRcastError):
        client.update_report(put=[put("o2")["resource"]])


def test_publish_rejected_by_hub_raises_with_status(hub, clients):
    topic = new_topic()
    client = clients(hub, topic)
    with pytest.raises(FHIRcastError) as refused:
        client.publish(
            "DiagnosticReport-select",
            [{"key": "report", "reference": {"reference": "DiagnosticReport/none"}}],
        )
    assert refused.value.status == 409
    with pytest.raises(ValueError, match="patient"):
        client.publish("Patient-open", [])  # validated locally, nothing sent


def test_check_42_heartbeats_are_ignored(make_hub, clients):
    hub = make_hub(heartbeat_period=0.05)
    client = clients(hub, new_topic())
    seen = []
    client.on("*", seen.append)
    wait_until(lambda: client.stats.heartbeats >= 2, what="heartbeats")
    assert seen == []


def test_check_42_both_select_shapes_and_report_as_resource(hub, clients):
    topic = new_topic()
    client = clients(hub, topic)
    publish(hub.url, report_open(topic))
    report_as_resource = {
        "key": "report",
        "resource": {"resourceType": "DiagnosticReport", "id": "report-1"},
    }
    old_shape = event_message(
        topic,
        "DiagnosticReport-select",
        [
            report_as_resource,
            {
                "key": "select",
                "resources": [
                    {"resourceType": "Observation", "id": "a"},
                    {"resourceType": "Observation", "id": "b"},
                ],
            },
        ],
    )
    publish(hub.url, old_shape)
    client.wait_for(old_shape["id"])
    assert client.current.selection == ("Observation/a", "Observation/b")
    new_shape = event_message(
        topic,
        "DiagnosticReport-select",
        [
            {"key": "report", "reference": {"reference": "DiagnosticReport/report-1"}},
            {"key": "select", "reference": {"reference": "Observation/c"}},
        ],
    )
    publish(hub.url, new_shape)
    client.wait_for(new_shape["id"])
    assert client.current.selection == ("Observation/c",)


def test_check_43_malformed_and_zoneless_timestamps(hub, clients):
    topic = new_topic()
    client = clients(hub, topic, ["Patient-open"])
    for stamp in ("2018-01-08T01:37:05.14", "2023-04-01T010:38:04.16", "yesterday"):
        message = patient_open(topic, timestamp=stamp)
        assert publish(hub.url, message).status_code == 202
        assert client.wait_for(message["id"]).timestamp == stamp


def test_check_44_study_uid_and_accession_from_either_form(hub, clients):
    topic = new_topic()
    client = clients(hub, topic)
    stu3 = {
        "resourceType": "ImagingStudy",
        "id": "s3",
        "status": "available",
        "identifier": [
            {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.4"},
            {
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}
                    ]
                },
                "value": "ACC-1",
            },
        ],
    }
    opened = client.open_study(stu3, PATIENT)
    client.wait_for(opened.id)
    assert (client.current.study_uid, client.current.accession_number) == ("1.2.3.4", "ACC-1")
    stu2 = {
        "resourceType": "ImagingStudy",
        "id": "s2",
        "uid": "urn:oid:5.6.7",
        "basedOn": [{"identifier": {"type": {"coding": [{"code": "ACSN"}]}, "value": "ACC-2"}}],
    }
    opened = client.open_study(stu2)
    client.wait_for(opened.id)
    assert (client.current.study_uid, client.current.accession_number) == ("5.6.7", "ACC-2")


def test_duplicates_are_acked_but_delivered_once(hub, clients):
    topic = new_topic()
    client = clients(hub, topic, ["Patient-open"])
    seen = []
    client.on("Patient-open", lambda ev: seen.append(ev.id))
    message = patient_open(topic)
    publish(hub.url, message)
    client.wait_for(message["id"])

    def resend():
        (sub,) = [s for s in hub.hub._subs.values() if s.topic == topic]
        sub.socket.send_text(json.dumps(message))

    hub.call(resend)
    wait_until(lambda: client.stats.duplicates == 1, what="duplicate")
    assert client.stats.acknowledged == 2
    sentinel = patient_open(topic)
    publish(hub.url, sentinel)
    client.wait_for(sentinel["id"])
    wait_until(lambda: len(seen) == 2, what="callbacks")
    assert seen == [message["id"], sentinel["id"]]


def test_callbacks_run_on_the_callers_running_loop(hub):
    """A notebook cell: the kernel's loop runs on this thread while the client is used."""
    topic = new_topic()

    async def cell():
        loop = asyncio.get_running_loop()
        client = FhircastClient(hub.url, topic, ["Patient-open"], backoff=(0.05, 0.2))
        got = asyncio.Event()
        threads = []

        def on_open(event):
            threads.append(threading.get_ident())
            got.set()

        client.on("Patient-open", on_open)
        client.open_patient(PATIENT)  # a blocking call while this loop is running
        await asyncio.wait_for(got.wait(), 10)
        assert threads == [threading.get_ident()]
        assert client._dispatcher.loop is loop
        client.close()
        return client.status

    assert asyncio.run(cell()) == "closed"


def test_coroutine_callbacks_on_the_callers_loop(hub):
    topic = new_topic()

    async def cell():
        client = FhircastClient(hub.url, topic, ["Patient-open"])
        done = asyncio.Event()

        async def on_open(event):
            await asyncio.sleep(0)
            done.set()

        client.on("Patient-open", on_open)
        client.open_patient(PATIENT)
        await asyncio.wait_for(done.wait(), 10)
        client.close()

    asyncio.run(cell())


def test_async_client_in_an_asyncio_program(hub):
    topic = new_topic()

    async def main():
        async with AsyncFhircastClient(hub.url, topic, ["Patient-open"]) as client:
            received = asyncio.Queue()
            client.add_listener(received.put_nowait)
            sent = await client.publish("Patient-open", [{"key": "patient", "resource": PATIENT}])
            event = await asyncio.wait_for(received.get(), 10)
            assert event.id == sent.id
            context = await client.get_context()
            assert context["context.type"] == "Patient"
        return client.status

    assert asyncio.run(main()) == "closed"


def test_bad_arguments_are_refused_before_any_network(hub):
    with pytest.raises(ValueError, match="topic"):
        FhircastClient(hub.url, "", **FAST)
    with pytest.raises(ValueError, match="grammar"):
        FhircastClient(hub.url, "t", ["Patient open"], **FAST)


def test_unreachable_hub_raises(hub):
    with pytest.raises(FHIRcastError, match="could not reach"):
        FhircastClient("http://127.0.0.1:9/fhircast", "t", **FAST)
