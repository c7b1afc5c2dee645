"""FHIRcast 3.0.0 §2-9 Get Current Context and §4-2 multiple anchors, derived opens.

Checks 27, 28 and 29 of the notes (§17).
"""

from __future__ import annotations

from fhircast_helpers import (
    RawSubscriber,
    http,
    new_topic,
    patient_open,
    publish,
    report_close,
    report_open,
    study_open,
)


def current(hub, topic):
    response = http().get(f"{hub.url}/{topic}", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()


def test_check_27_current_context_lifecycle(hub):
    topic = new_topic()
    assert current(hub, topic) == {"context.type": "", "context": []}
    opened = study_open(topic)
    publish(hub.url, opened)
    body = current(hub, topic)
    assert body["context.type"] == "ImagingStudy"
    assert isinstance(body["context.versionId"], str) and body["context.versionId"]
    assert body["context"] == opened["event"]["context"]
    close = study_open(topic)
    close["event"]["hub.event"] = "ImagingStudy-close"
    publish(hub.url, close)
    assert current(hub, topic) == {"context.type": "", "context": []}


def test_check_27_version_changes_with_the_context(hub):
    topic = new_topic()
    publish(hub.url, patient_open(topic))
    first = current(hub, topic)["context.versionId"]
    publish(hub.url, study_open(topic))
    assert current(hub, topic)["context.versionId"] != first


def test_check_28_multi_tab_close_current_leaves_context_empty_but_replays_older_tab(hub):
    topic = new_topic()
    report_a = {"resourceType": "DiagnosticReport", "id": "A", "status": "preliminary"}
    report_b = {"resourceType": "DiagnosticReport", "id": "B", "status": "preliminary"}
    open_a = report_open(topic, report_a)
    publish(hub.url, open_a)
    publish(hub.url, report_open(topic, report_b))
    assert current(hub, topic)["context"][0]["resource"]["id"] == "B"
    publish(hub.url, report_close(topic, report_b))
    assert current(hub, topic) == {"context.type": "", "context": []}
    newcomer = RawSubscriber(hub.url, topic, "DiagnosticReport-open")
    replayed = newcomer.recv_event()
    assert replayed["id"] == open_a["id"]
    assert replayed["event"]["context"][0]["resource"]["id"] == "A"
    newcomer.close()


def test_check_28_switching_back_to_a_tab_restores_it(hub):
    topic = new_topic()
    report_a = {"resourceType": "DiagnosticReport", "id": "A", "status": "preliminary"}
    publish(hub.url, report_open(topic, report_a))
    version_a = current(hub, topic)["context.versionId"]
    publish(hub.url, report_open(topic, {"resourceType": "DiagnosticReport", "id": "B"}))
    publish(hub.url, report_open(topic, report_a))
    body = current(hub, topic)
    assert body["context"][0]["resource"]["id"] == "A"
    assert body["context.versionId"] == version_a


def test_check_29_derived_opens_only_for_subscribers_of_those_events(hub):
    topic = new_topic()
    reporter = RawSubscriber(hub.url, topic, "DiagnosticReport-open,Patient-open")
    patient_only = RawSubscriber(hub.url, topic, "Patient-open")
    viewer = RawSubscriber(hub.url, topic, "ImagingStudy-open")
    unrelated = RawSubscriber(hub.url, topic, "Encounter-open,Patient-close")
    message = report_open(topic)
    publish(hub.url, message)
    assert reporter.recv_event()["id"] == message["id"]
    derived_patient = patient_only.recv_event()
    assert derived_patient["event"]["hub.event"] == "Patient-open"
    assert derived_patient["event"]["context"][0]["resource"]["id"] == "pat-1"
    assert derived_patient["timestamp"] == message["timestamp"]
    derived_study = viewer.recv_event()
    assert derived_study["event"]["hub.event"] == "ImagingStudy-open"
    assert derived_study["event"]["context"][0]["resource"]["id"] == "study-1"
    sentinel = patient_open(topic)
    sentinel["event"]["hub.event"] = "Patient-close"
    publish(hub.url, sentinel)
    assert unrelated.recv_event()["id"] == sentinel["id"]  # nothing derived for Encounter
    # no duplicate: the reporter got the DiagnosticReport-open, not also a Patient-open
    assert reporter.nothing_within(0.2)
    for sub in (reporter, patient_only, viewer, unrelated):
        sub.close()


def test_check_29_derived_opens_are_replayed_too(hub):
    topic = new_topic()
    publish(hub.url, report_open(topic))
    viewer = RawSubscriber(hub.url, topic, "ImagingStudy-open,Patient-open")
    names = sorted(viewer.recv_event()["event"]["hub.event"] for _ in range(2))
    assert names == ["ImagingStudy-open", "Patient-open"]
    assert viewer.nothing_within(0.2)
    viewer.close()


def test_derived_opens_can_be_switched_off(make_hub):
    hub = make_hub(derive_opens=False)
    topic = new_topic()
    patient_only = RawSubscriber(hub.url, topic, "Patient-open")
    publish(hub.url, report_open(topic))
    sentinel = patient_open(topic)
    publish(hub.url, sentinel)
    assert patient_only.recv_event()["id"] == sentinel["id"]
    patient_only.close()


def test_get_on_hub_url_is_the_configuration(hub):
    assert http().get(hub.url, timeout=10).json()["websocketSupport"] is True
