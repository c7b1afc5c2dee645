"""FHIRcast 3.0.0 §2-4 Subscribing: request, confirmation, denial, unsubscribe, replay.

Checks 2–11, 24 and 41 of the notes (§17).
"""

from __future__ import annotations

import base64

import pytest
from fhircast_helpers import (
    RawSubscriber,
    http,
    new_topic,
    patient_close,
    patient_open,
    publish,
    study_open,
    subscribe_form,
    wait_until,
)
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect


def _random_bits(endpoint: str) -> int:
    token = endpoint.rsplit("/", 1)[-1]
    return len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))) * 8


def test_check_02_subscribe_returns_202_with_unguessable_endpoints(hub):
    topic = new_topic()
    first = subscribe_form(hub.url, topic, "Patient-open")
    second = subscribe_form(hub.url, topic, "Patient-open")
    assert first.status_code == second.status_code == 202
    assert first.headers["Content-Type"].startswith("application/json")
    a, b = first.json()["hub.channel.endpoint"], second.json()["hub.channel.endpoint"]
    assert a.startswith("ws://127.0.0.1:") and "/fhircast/ws/" in a
    assert a != b
    assert _random_bits(a) >= 122 and _random_bits(b) >= 122


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"hub.channel.type": None}, "hub.channel.type"),
        ({"hub.channel.type": "webhook"}, "webhook"),
        ({"hub.mode": "publish"}, "hub.mode"),
        ({"hub.topic": ""}, "hub.topic"),
        ({"hub.events": ""}, "hub.events"),
        ({"hub.events": "Patient open"}, "grammar"),
        ({"hub.lease_seconds": "soon"}, "hub.lease_seconds"),
    ],
)
def test_check_03_bad_subscription_requests_get_4xx_plain_text(hub, change, expected):
    form = {
        "hub.channel.type": "websocket",
        "hub.mode": "subscribe",
        "hub.topic": new_topic(),
        "hub.events": "Patient-open",
    }
    for key, value in change.items():
        if value is None:
            form.pop(key)
        else:
            form[key] = value
    response = http().post(hub.url, data=form, timeout=10)
    assert 400 <= response.status_code < 500
    assert response.headers["Content-Type"].startswith("text/plain")
    assert expected in response.text


def test_check_04_repeated_parameter_is_refused(hub):
    body = (
        "hub.channel.type=websocket&hub.mode=subscribe&hub.topic=t&"
        "hub.events=Patient-open&hub.events=Patient-close"
    )
    response = http().post(
        hub.url,
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    )
    assert response.status_code == 400
    assert "hub.events" in response.text and "more than once" in response.text


def test_check_05_first_ws_message_is_exactly_the_confirmation(hub):
    topic = new_topic()
    sub = RawSubscriber(hub.url, topic, "Patient-open,Patient-close", hub__lease_seconds="600")
    confirmation = sub.confirmation
    assert set(confirmation) == {"hub.mode", "hub.topic", "hub.events", "hub.lease_seconds"}
    assert confirmation["hub.mode"] == "subscribe"
    assert confirmation["hub.topic"] == topic
    assert confirmation["hub.events"] == "Patient-open,Patient-close"
    assert isinstance(confirmation["hub.lease_seconds"], int)
    assert 0 < confirmation["hub.lease_seconds"] <= 600
    sub.close()


def test_check_06_unknown_or_stale_endpoint_is_refused(hub):
    endpoint = subscribe_form(hub.url, new_topic(), "Patient-open").json()["hub.channel.endpoint"]
    forged = endpoint.rsplit("/", 1)[0] + "/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    with pytest.raises(InvalidStatus) as refused:
        connect(forged, open_timeout=10, proxy=None, legacy=True)
    assert refused.value.response.status_code == 404


def test_check_06_endpoint_cannot_be_connected_twice(hub):
    sub = RawSubscriber(hub.url, new_topic(), "Patient-open")
    with pytest.raises(InvalidStatus) as refused:
        connect(sub.endpoint, open_timeout=10, proxy=None, legacy=True)
    assert refused.value.response.status_code == 409
    sub.close()


def test_check_07_event_names_are_case_insensitive_and_deduplicated(hub):
    topic = new_topic()
    sub = RawSubscriber(hub.url, topic, "patient-open,PATIENT-OPEN,Patient-Open")
    assert sub.confirmation["hub.events"] == "Patient-open"
    message = patient_open(topic)
    message["event"]["hub.event"] = "PATIENT-open"
    assert publish(hub.url, message).status_code == 202
    event = sub.recv_event()
    assert event["id"] == message["id"]
    assert event["event"]["hub.event"].lower() == "patient-open"
    sub.close()


def test_check_08_resubscribe_replaces_events_without_duplicates(hub):
    topic = new_topic()
    sub = RawSubscriber(hub.url, topic, "Patient-open", subscriber__name="viewer")
    again = subscribe_form(
        hub.url,
        topic,
        "Patient-close",
        hub__channel__endpoint=sub.endpoint,
        subscriber__name="viewer",
    )
    assert again.status_code == 202
    assert again.json()["hub.channel.endpoint"] == sub.endpoint
    reconfirmed = sub.recv(raw=True)
    assert reconfirmed["hub.mode"] == "subscribe"
    assert reconfirmed["hub.events"] == "Patient-close"
    assert len(hub.call(hub.hub.subscriptions, topic)) == 1
    publish(hub.url, patient_open(topic))
    close = patient_close(topic)
    publish(hub.url, close)
    assert sub.recv_event()["id"] == close["id"]  # the open was not delivered
    sub.close()


def test_check_09_lease_expiry_denies_and_closes(clocked_hub, clock):
    hub = clocked_hub
    topic = new_topic()
    sub = RawSubscriber(hub.url, topic, "Patient-open", hub__lease_seconds="30")
    assert sub.confirmation["hub.lease_seconds"] == 30
    clock.advance(31)
    hub.call(hub.hub.sweep)
    denial = sub.recv(raw=True)
    assert denial["hub.mode"] == "denied"
    assert denial["hub.topic"] == topic
    assert denial["hub.events"] == "Patient-open"
    assert "lease" in denial["hub.reason"]
    assert sub.closed_within() == 1000
    assert hub.call(hub.hub.subscriptions, topic) == []


def test_check_09_lease_is_capped_by_the_hub(make_hub):
    hub = make_hub(max_lease_seconds=100)
    sub = RawSubscriber(hub.url, new_topic(), "Patient-open", hub__lease_seconds="99999")
    assert sub.confirmation["hub.lease_seconds"] == 100
    sub.close()


def test_check_10_replay_latest_unclosed_open_per_anchor_only_for_subscribed_events(hub):
    topic = new_topic()
    first = patient_open(topic, timestamp="2024-01-01T10:00:00.000Z")
    second = patient_open(
        topic, {"resourceType": "Patient", "id": "pat-2"}, timestamp="2024-01-01T10:05:00.000Z"
    )
    study = study_open(topic, timestamp="2024-01-01T10:06:00.000Z")
    for message in (first, second, study):
        assert publish(hub.url, message).status_code == 202
    only_patients = RawSubscriber(hub.url, topic, "Patient-open")
    replayed = only_patients.recv_event()
    assert replayed["id"] == second["id"]
    assert replayed["timestamp"] == "2024-01-01T10:05:00.000Z"  # the original time
    assert only_patients.nothing_within(0.3)  # no ImagingStudy-open, no older Patient-open
    both = RawSubscriber(hub.url, topic, "Patient-open,ImagingStudy-open")
    ids = [both.recv_event()["id"], both.recv_event()["id"]]
    assert ids == [second["id"], study["id"]]
    only_patients.close()
    both.close()


def test_check_10_closed_anchor_is_not_replayed(hub):
    topic = new_topic()
    publish(hub.url, patient_open(topic))
    publish(hub.url, patient_close(topic))
    sub = RawSubscriber(hub.url, topic, "Patient-open,Patient-close")
    assert sub.nothing_within(0.3)
    sub.close()


def test_check_11_never_delivers_unsubscribed_events(hub):
    topic = new_topic()
    sub = RawSubscriber(hub.url, topic, "Patient-close")
    publish(hub.url, patient_open(topic))
    publish(hub.url, study_open(topic))
    sentinel = patient_close(topic)
    publish(hub.url, sentinel)
    assert sub.recv_event()["id"] == sentinel["id"]
    sub.close()


def test_check_24_unsubscribe_202_then_denial_then_close(hub):
    topic = new_topic()
    sub = RawSubscriber(hub.url, topic, "Patient-open")
    response = http().post(
        hub.url,
        data={
            "hub.channel.type": "websocket",
            "hub.mode": "unsubscribe",
            "hub.topic": topic,
            "hub.channel.endpoint": sub.endpoint,
        },
        timeout=10,
    )
    assert response.status_code == 202
    assert response.json() == {"hub.channel.endpoint": sub.endpoint}
    denial = sub.recv(raw=True)
    assert denial["hub.mode"] == "denied"
    assert denial["hub.topic"] == topic and denial["hub.events"] == "Patient-open"
    assert sub.closed_within() == 1000
    with pytest.raises(InvalidStatus):
        connect(sub.endpoint, open_timeout=10, proxy=None, legacy=True)
    # unsubscribing again: the endpoint is gone
    again = http().post(
        hub.url,
        data={
            "hub.channel.type": "websocket",
            "hub.mode": "unsubscribe",
            "hub.topic": topic,
            "hub.channel.endpoint": sub.endpoint,
        },
        timeout=10,
    )
    assert again.status_code == 404 and again.headers["Content-Type"].startswith("text/plain")


def test_check_41_webhook_era_parameters_are_tolerated(hub):
    topic = new_topic()
    sub = RawSubscriber(
        hub.url,
        topic,
        "Patient-open",
        hub__callback="http://127.0.0.1:1/ignored",
        hub__secret="s3cret",
        hub__lease="120",  # OHIF's spelling of hub.lease_seconds
        subscriber__name="OHIF",
    )
    assert sub.confirmation["hub.lease_seconds"] == 120
    assert "hub.callback" not in sub.confirmation and "hub.secret" not in sub.confirmation
    sub.close()


def test_json_subscription_is_accepted(hub):
    topic = new_topic()
    response = http().post(
        hub.url,
        json={
            "hub.channel.type": "websocket",
            "hub.mode": "subscribe",
            "hub.topic": topic,
            "hub.events": "Patient-open",
        },
        timeout=10,
    )
    assert response.status_code == 202
    assert response.json()["hub.channel.endpoint"].startswith("ws://")


def test_ira_requires_subscriber_name_when_configured(make_hub):
    hub = make_hub(require_subscriber_name=True)
    response = subscribe_form(hub.url, new_topic(), "DiagnosticReport-open")
    assert response.status_code == 400 and "subscriber.name" in response.text
    ok = subscribe_form(hub.url, new_topic(), "DiagnosticReport-open", subscriber__name="IRA")
    assert ok.status_code == 202


def test_unsupported_events_are_not_granted(hub):
    topic = new_topic()
    sub = RawSubscriber(hub.url, topic, "Patient-open,Observation-open")
    assert sub.confirmation["hub.events"] == "Patient-open"  # a subset is granted
    sub.close()
    response = subscribe_form(hub.url, topic, "Observation-open")
    assert response.status_code == 400


def test_never_connected_subscription_is_dropped(clocked_hub, clock):
    hub = clocked_hub
    topic = new_topic()
    assert subscribe_form(hub.url, topic, "Patient-open").status_code == 202
    assert len(hub.call(hub.hub.subscriptions, topic)) == 1
    clock.advance(61)
    hub.call(hub.hub.sweep)
    assert hub.call(hub.hub.subscriptions, topic) == []


def test_unsubscribe_before_connect(hub):
    topic = new_topic()
    endpoint = subscribe_form(hub.url, topic, "Patient-open").json()["hub.channel.endpoint"]
    response = http().post(
        hub.url,
        data={
            "hub.channel.type": "websocket",
            "hub.mode": "unsubscribe",
            "hub.topic": topic,
            "hub.channel.endpoint": endpoint,
        },
        timeout=10,
    )
    assert response.status_code == 202
    wait_until(lambda: hub.call(hub.hub.subscriptions, topic) == [], what="unsubscribed")
