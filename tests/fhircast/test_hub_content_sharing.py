"""FHIRcast 3.0.0 §2-10 Content sharing and §3-6 DiagnosticReport events.

Checks 30–36, 38 and 39 of the notes (§17).
"""

from __future__ import annotations

import pytest
from fhircast_helpers import (
    RawSubscriber,
    delete,
    event_message,
    http,
    new_topic,
    publish,
    put,
    report_close,
    report_open,
    report_update,
)


def current(hub, topic):
    return http().get(f"{hub.url}/{topic}", timeout=10).json()


def content(hub, topic):
    item = [i for i in current(hub, topic)["context"] if i["key"] == "content"]
    assert len(item) == 1
    return item[0]["resource"]


@pytest.fixture
def opened(hub):
    """A topic with DiagnosticReport report-1 open; yields (topic, subscriber, version)."""
    topic = new_topic()
    sub = RawSubscriber(
        hub.url, topic, "DiagnosticReport-open,DiagnosticReport-update,DiagnosticReport-select"
    )
    publish(hub.url, report_open(topic))
    broadcast = sub.recv_event()
    yield topic, sub, broadcast["event"]["context.versionId"]
    sub.close()


def test_check_30_report_open_broadcast_carries_version(hub, opened):
    topic, _sub, version = opened
    assert isinstance(version, str) and version
    assert current(hub, topic)["context.versionId"] == version


def test_check_31_stale_update_is_refused_without_broadcast_or_change(hub, opened):
    topic, sub, version = opened
    assert publish(hub.url, report_update(topic, version, [put("o1")])).status_code == 202
    sub.recv_event()
    before = current(hub, topic)
    stale = publish(hub.url, report_update(topic, version, [put("o2")]))
    assert stale.status_code == 409
    assert "stale" in stale.text
    missing = publish(hub.url, report_update(topic, None, [put("o2")]))
    assert missing.status_code == 400 and "versionId" in missing.text
    assert current(hub, topic) == before
    assert sub.nothing_within(0.2)


def test_check_32_update_broadcast_has_new_version_prior_version_and_same_bundle_id(hub, opened):
    topic, sub, version = opened
    request = report_update(topic, version, [put("o1")], bundle_id="my-bundle")
    response = publish(hub.url, request)
    assert response.status_code == 202
    broadcast = sub.recv_event()
    assert broadcast["id"] == request["id"]
    assert broadcast["event"]["context.priorVersionId"] == version
    new_version = broadcast["event"]["context.versionId"]
    assert new_version not in (None, version)
    assert response.json()["context.versionId"] == new_version
    updates = next(i for i in broadcast["event"]["context"] if i["key"] == "updates")
    assert updates["resource"]["id"] == "my-bundle"
    # the versionId alias of the 2-3 table is accepted on input (notes §14.4)
    alias = report_update(topic, None, [put("o2")])
    alias["event"]["versionId"] = new_version
    assert publish(hub.url, alias).status_code == 202


@pytest.mark.parametrize(
    "bad_entry",
    [
        {"request": {"method": "POST"}, "resource": {"resourceType": "Observation", "id": "x"}},
        {"request": {"method": "DELETE"}},
        {"request": {"method": "PUT"}, "resource": {"resourceType": "Observation"}},
        {"resource": {"resourceType": "Observation", "id": "x"}},
    ],
)
def test_check_33_bundle_with_one_invalid_entry_is_rejected_whole(hub, opened, bad_entry):
    topic, sub, version = opened
    before = content(hub, topic)
    response = publish(hub.url, report_update(topic, version, [put("good"), bad_entry]))
    assert response.status_code == 400
    assert "updates.entry[1]" in response.text
    assert content(hub, topic) == before
    assert current(hub, topic)["context.versionId"] == version
    assert sub.nothing_within(0.2)


def test_check_34_deleting_open_context_resources_or_duplicates_is_rejected(hub, opened):
    topic, _sub, version = opened
    for entries, word in [
        ([delete("DiagnosticReport/report-1")], "cannot be deleted"),
        ([delete("Patient/pat-1")], "cannot be deleted"),
        ([put("o1"), put("o1")], "more than once"),
    ]:
        response = publish(hub.url, report_update(topic, version, entries))
        assert response.status_code == 400
        assert word in response.text


def test_check_35_current_context_accumulates_content_as_collection(hub, opened):
    topic, sub, version = opened
    publish(hub.url, report_update(topic, version, [put("o1"), put("o2")]))
    version = sub.recv_event()["event"]["context.versionId"]
    publish(hub.url, report_update(topic, version, [put("o2", "final"), delete("Observation/o1")]))
    sub.recv_event()
    body = current(hub, topic)
    bundle = content(hub, topic)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    assert all("request" not in entry for entry in bundle["entry"])
    assert [e["resource"] for e in bundle["entry"]] == [
        {"resourceType": "Observation", "id": "o2", "status": "final"}
    ]
    report = next(i for i in body["context"] if i["key"] == "report")["resource"]
    assert report["status"] == "preliminary"  # the original open resources are unchanged


def test_check_36_close_discards_content_and_reopen_starts_empty(hub, opened):
    topic, sub, version = opened
    publish(hub.url, report_update(topic, version, [put("o1")]))
    sub.recv_event()
    publish(hub.url, report_close(topic))
    assert current(hub, topic) == {"context.type": "", "context": []}
    publish(hub.url, report_open(topic))
    reopened = sub.recv_event()
    assert reopened["event"]["context.versionId"] != version
    assert content(hub, topic)["entry"] == []


def test_check_38_oversized_update_is_413(make_hub):
    hub = make_hub(max_update_entries=3)
    topic = new_topic()
    publish(hub.url, report_open(topic))
    version = current(hub, topic)["context.versionId"]
    response = publish(hub.url, report_update(topic, version, [put(f"o{i}") for i in range(4)]))
    assert response.status_code == 413


def _select(topic, references, report_id="report-1"):
    context = [{"key": "report", "reference": {"reference": f"DiagnosticReport/{report_id}"}}]
    context += [{"key": "select", "reference": {"reference": r}} for r in references]
    return event_message(topic, "DiagnosticReport-select", context)


def test_check_39_select_including_empty_selection_is_distributed(hub, opened):
    topic, sub, _version = opened
    for refs in (["Observation/o1", "Observation/o2"], []):
        message = _select(topic, refs)
        assert publish(hub.url, message).status_code == 202
        assert sub.recv_event()["id"] == message["id"]


def test_check_39_select_for_a_report_that_is_not_current_is_rejected(hub, opened):
    topic, sub, _version = opened
    publish(hub.url, report_open(topic, {"resourceType": "DiagnosticReport", "id": "other"}))
    sub.recv_event()
    response = publish(hub.url, _select(topic, ["Observation/o1"], report_id="report-1"))
    assert response.status_code == 409
    unknown = publish(hub.url, _select(topic, [], report_id="never-opened"))
    assert unknown.status_code == 409


def test_update_for_non_current_report_needs_the_capability(make_hub):
    for allowed in (False, True):
        hub = make_hub(non_current_updates=allowed)
        topic = new_topic()
        publish(hub.url, report_open(topic))
        version = current(hub, topic)["context.versionId"]
        publish(hub.url, report_open(topic, {"resourceType": "DiagnosticReport", "id": "r2"}))
        response = publish(hub.url, report_update(topic, version, [put("o1")]))
        assert response.status_code == (202 if allowed else 409)
