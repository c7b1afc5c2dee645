"""FHIRcast 3.0.0 §2-2 FHIRcast scopes and §2-4 leases under OAuth.

Checks 9 (lease ≤ token lifetime) and 22 of the notes (§17).
"""

from __future__ import annotations

import time

import pytest
from fhircast_helpers import (
    RawSubscriber,
    http,
    new_topic,
    patient_open,
    publish,
    study_open,
    subscribe_form,
)

from imagingkit.fhircast.auth import StaticTokenValidator, TokenInfo
from imagingkit.fhircast.protocol import scope_allows

TOPIC = "topic-of-the-token"


@pytest.fixture
def secured(make_hub):
    tokens = StaticTokenValidator(
        {
            "reader": "fhircast/*.read",
            "writer": "fhircast/*.read fhircast/Patient-open.write",
            "study-reader": "fhircast/ImagingStudy-open.read",
            "all": "fhircast/*.*",
            "short": TokenInfo(frozenset({"fhircast/*.read"}), expires_at=time.time() + 120),
            "expired": TokenInfo(frozenset({"fhircast/*.*"}), expires_at=time.time() - 1),
            "one-topic": TokenInfo(frozenset({"fhircast/*.*"}), topics=frozenset({TOPIC})),
        }
    )
    return make_hub(token_validator=tokens)


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_discovery_needs_no_token(secured):
    response = http().get(f"{secured.url}/.well-known/fhircast-configuration", timeout=10)
    assert response.status_code == 200


@pytest.mark.parametrize(
    "headers", [{}, bearer("unknown"), bearer("expired"), {"Authorization": "Basic x"}]
)
def test_requests_without_a_valid_token_are_401(secured, headers):
    topic = new_topic()
    for response in (
        subscribe_form(secured.url, topic, "Patient-open", headers=headers),
        publish(secured.url, patient_open(topic), headers=headers),
        http().get(f"{secured.url}/{topic}", headers=headers, timeout=10),
    ):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "unknown" not in response.text  # the token never appears in errors


def test_check_22_publish_needs_the_write_scope_of_that_event(secured):
    topic = new_topic()
    assert publish(secured.url, patient_open(topic), headers=bearer("reader")).status_code == 403
    assert publish(secured.url, patient_open(topic), headers=bearer("writer")).status_code == 202
    denied = publish(secured.url, study_open(topic), headers=bearer("writer"))
    assert denied.status_code == 403 and "ImagingStudy-open.write" in denied.text
    assert publish(secured.url, study_open(topic), headers=bearer("all")).status_code == 202


def test_check_22_token_restricted_to_a_topic(secured):
    other = new_topic()
    assert publish(secured.url, patient_open(TOPIC), headers=bearer("one-topic")).status_code == 202
    assert publish(secured.url, patient_open(other), headers=bearer("one-topic")).status_code == 403
    refused = subscribe_form(secured.url, other, "Patient-open", headers=bearer("one-topic"))
    assert refused.status_code == 403
    got = http().get(f"{secured.url}/{other}", headers=bearer("one-topic"), timeout=10)
    assert got.status_code == 403


def test_subscription_is_granted_only_the_readable_events(secured):
    topic = new_topic()
    sub = RawSubscriber(
        secured.url, topic, "Patient-open,ImagingStudy-open", headers=bearer("study-reader")
    )
    assert sub.confirmation["hub.events"] == "ImagingStudy-open"
    sub.close()
    refused = subscribe_form(secured.url, topic, "Patient-open", headers=bearer("study-reader"))
    assert refused.status_code == 403


def test_get_current_context_needs_read_scope_of_the_anchor(secured):
    topic = new_topic()
    publish(secured.url, patient_open(topic), headers=bearer("all"))
    url = f"{secured.url}/{topic}"
    assert http().get(url, headers=bearer("study-reader"), timeout=10).status_code == 403
    assert http().get(url, headers=bearer("reader"), timeout=10).status_code == 200


def test_check_09_lease_is_capped_at_the_token_lifetime(secured):
    sub = RawSubscriber(
        secured.url,
        new_topic(),
        "Patient-open",
        headers=bearer("short"),
        hub__lease_seconds="7200",
    )
    assert 0 < sub.confirmation["hub.lease_seconds"] <= 120
    sub.close()


def test_websocket_connect_is_ticket_based(secured):
    # browsers cannot send Authorization on the upgrade: the endpoint is the ticket (4-3)
    sub = RawSubscriber(secured.url, new_topic(), "Patient-open", headers=bearer("reader"))
    assert sub.confirmation["hub.mode"] == "subscribe"
    sub.close()


@pytest.mark.parametrize(
    ("scopes", "event", "access", "allowed"),
    [
        (["fhircast/Patient-open.read"], "patient-OPEN", "read", True),
        (["fhircast/Patient-open.read"], "Patient-open", "write", False),
        (["fhircast/*.write"], "DiagnosticReport-update", "write", True),
        (["fhircast/Patient-open.*"], "Patient-open", "write", True),
        (["patient/*.read", "fhircast/Patient-close.read"], "Patient-open", "read", False),
        (["fhircast/org.example.transmogrify.read"], "org.example.transmogrify", "read", True),
    ],
)
def test_scope_grammar(scopes, event, access, allowed):
    assert scope_allows(scopes, event, access) is allowed


def test_unauthenticated_requests_learn_nothing_about_their_body(secured):
    assert publish(secured.url, "{not json").status_code == 401
    assert publish(secured.url, {"id": "x"}).status_code == 401
