"""FHIRcast 3.0.0 §2-6 Send event notification (request context change).

Checks 19, 20 and 23 of the notes (§17); check 21 does not apply (this hub validates
synchronously and never rejects after a 202).
"""

from __future__ import annotations

import json

import pytest
from fhircast_helpers import (
    PATIENT,
    RawSubscriber,
    event_message,
    new_topic,
    patient_open,
    publish,
)


def test_check_19_publish_on_hub_url_and_topic_alias(hub):
    topic = new_topic()
    sub = RawSubscriber(hub.url, topic, "Patient-open")
    on_base, on_topic = patient_open(topic), patient_open(topic)
    assert publish(hub.url, on_base).status_code == 202
    response = publish(hub.url, on_topic, path=f"/{topic}")
    assert response.status_code == 202
    assert response.json()["id"] == on_topic["id"]
    assert [sub.recv_event()["id"], sub.recv_event()["id"]] == [on_base["id"], on_topic["id"]]
    sub.close()


@pytest.mark.parametrize("content_type", ["application/json", "application/fhir+json"])
def test_check_19_both_content_types_are_accepted(hub, content_type):
    response = publish(hub.url, patient_open(new_topic()), content_type=content_type)
    assert response.status_code == 202


@pytest.mark.parametrize(
    ("remove", "named"),
    [("id", "'id'"), ("timestamp", "'timestamp'"), ("event", "'event'")],
)
def test_check_19_malformed_event_is_4xx(hub, remove, named):
    message = patient_open(new_topic())
    del message[remove]
    response = publish(hub.url, message)
    assert response.status_code == 400
    assert named in response.text


def test_check_19_missing_topic_is_4xx_on_hub_url_but_taken_from_the_alias_path(hub):
    topic = new_topic()
    message = patient_open(topic)
    del message["event"]["hub.topic"]
    assert publish(hub.url, message).status_code == 400
    assert publish(hub.url, message, path=f"/{topic}").status_code == 202
    other = patient_open(new_topic())
    mismatch = publish(hub.url, other, path=f"/{topic}")
    assert mismatch.status_code == 400 and "differs" in mismatch.text


@pytest.mark.parametrize(
    ("name", "context", "named"),
    [
        ("Patient-open", [], "patient"),
        ("ImagingStudy-open", [{"key": "patient", "resource": PATIENT}], "study"),
        ("DiagnosticReport-open", [{"key": "report", "resource": {"id": "r"}}], "patient"),
        ("Patient-open", [{"key": "patient", "resource": PATIENT}] * 2, "repeats"),
        ("Patient-open", [{"resource": PATIENT}], "key"),
    ],
)
def test_required_context_keys_are_validated(hub, name, context, named):
    response = publish(hub.url, event_message(new_topic(), name, context))
    assert response.status_code == 400
    assert named in response.text


def test_check_20_broadcast_to_all_including_requester_with_same_id(hub):
    topic = new_topic()
    requester = RawSubscriber(hub.url, topic, "Patient-open", subscriber__name="requester")
    others = [RawSubscriber(hub.url, topic, "Patient-open") for _ in range(3)]
    message = patient_open(topic)
    publish(hub.url, message)
    for sub in [requester, *others]:
        received = sub.recv_event()
        assert received["id"] == message["id"]
        assert received["event"]["context"] == message["event"]["context"]
        sub.close()


def test_check_23_proprietary_events(make_hub):
    hub = make_hub(extra_events=("org.example.transmogrify",))
    topic = new_topic()
    sub = RawSubscriber(hub.url, topic, "org.example.transmogrify")
    ok = event_message(topic, "ORG.EXAMPLE.TRANSMOGRIFY", [])
    assert publish(hub.url, ok).status_code == 202
    assert sub.recv_event()["event"]["hub.event"] == "org.example.transmogrify"
    unlisted = publish(hub.url, event_message(topic, "org.example.other", []))
    assert unlisted.status_code == 400 and "not supported" in unlisted.text
    broken = publish(hub.url, event_message(topic, "org.example-with-dash", []))
    assert broken.status_code == 400 and "grammar" in broken.text
    sub.close()


def test_any_grammatical_event_when_configured_like_ihe_ira(make_hub):
    hub = make_hub(accept_unknown_events=True)
    topic = new_topic()
    sub = RawSubscriber(hub.url, topic, "Observation-open")
    message = event_message(topic, "Observation-open", [{"key": "observation", "resource": {}}])
    assert publish(hub.url, message).status_code == 202
    assert sub.recv_event()["id"] == message["id"]
    sub.close()


def test_retried_request_is_not_broadcast_twice(hub):
    topic = new_topic()
    sub = RawSubscriber(hub.url, topic, "Patient-open,Patient-close")
    message = patient_open(topic)
    assert publish(hub.url, message).status_code == 202
    assert publish(hub.url, message).status_code == 202
    sentinel = event_message(topic, "Patient-close", [{"key": "patient", "resource": PATIENT}])
    publish(hub.url, sentinel)
    assert [sub.recv_event()["id"], sub.recv_event()["id"]] == [message["id"], sentinel["id"]]
    sub.close()


def test_spec_publish_example_defect_is_refused_with_its_position(hub):
    # 2-6's example has a member inside a coding array after a missing comma: not JSON
    body = json.dumps(patient_open(new_topic()))
    broken = body.replace('"id": "pat-1"', '"id": "pat-1" "text": "MRN"')
    response = publish(hub.url, broken)
    assert response.status_code == 400
    assert "not valid JSON" in response.text and "char" in response.text


def test_coding_value_instead_of_code_is_not_a_reason_to_refuse(hub):
    patient = {
        "resourceType": "Patient",
        "id": "p",
        "identifier": [{"type": {"coding": [{"system": "x", "value": "MR"}]}, "value": "1"}],
    }
    message = event_message(
        new_topic(),
        "Patient-close",
        [{"key": "patient", "resource": patient}],
        timestamp="2018-01-08T01:40:05.14",
    )
    assert publish(hub.url, message).status_code == 202


def test_oversized_request_is_413(make_hub):
    hub = make_hub(max_event_bytes=2000)
    message = patient_open(new_topic(), {"resourceType": "Patient", "id": "p", "x": "y" * 3000})
    assert publish(hub.url, message).status_code == 413


def test_ohif_style_api_hub_aliases(hub):
    topic = new_topic()
    sub = RawSubscriber(hub.url + "/api/hub", topic, "Patient-open", hub__lease="60")
    message = patient_open(topic)
    assert publish(hub.url, message, path=f"/api/hub/{topic}").status_code == 202
    assert sub.recv_event()["id"] == message["id"]
    sub.close()
