"""Notification parsing (sans I/O): the three shapes, handshakes, heartbeats, bad input."""

from __future__ import annotations

import json

import pytest
from client_helpers import notification_bundle

from imagingkit.errors import AuthError, InvalidInputError
from imagingkit.subscriptions import (
    parse_binding_token,
    parse_legacy_frame,
    parse_notifications,
    parse_status_bundle,
)
from imagingkit.subscriptions.notification import bind_with_token_message, reference_key
from imagingkit.subscriptions.resources import (
    heartbeat_period,
    legacy_websocket_url,
    same_origin_websocket,
    topic_subscription,
)
from imagingkit.subscriptions.topics import IMAGINGSTUDY_TOPIC

STUDY = {"resourceType": "ImagingStudy", "id": "abc", "status": "available"}


def test_r4_backport_event_with_full_resource() -> None:
    bundle = notification_bundle("s1", "event-notification", 2, [(2, "ImagingStudy/abc")], [STUDY])
    (note,) = parse_notifications(json.dumps(bundle).encode())
    assert (note.type, note.status, note.subscription_id) == ("event-notification", "active", "s1")
    assert note.shape == "r4-backport"
    assert note.events_since_start == 2
    (event,) = note.events
    assert (event.number, event.focus_key) == (2, "ImagingStudy/abc")
    assert note.resource_for(event) == STUDY


def test_r4_backport_handshake_counts_zero() -> None:
    (note,) = parse_notifications(notification_bundle("s1", "handshake", 0))
    assert note.type == "handshake" and note.events == () and note.events_since_start == 0
    assert not note.numbered


def test_r5_subscription_status_absolute_references() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "subscription-notification",
        "entry": [
            {
                "resource": {
                    "resourceType": "SubscriptionStatus",
                    "status": "active",
                    "type": "event-notification",
                    "eventsSinceSubscriptionStart": "310",
                    "notificationEvent": [
                        {
                            "eventNumber": "310",
                            "focus": {
                                "reference": "https://x.org/fhir/ImagingStudy/abc/_history/3"
                            },
                        }
                    ],
                    "subscription": {"reference": "https://x.org/fhir/Subscription/123"},
                    "topic": IMAGINGSTUDY_TOPIC,
                }
            },
            {"fullUrl": "https://x.org/fhir/ImagingStudy/abc", "resource": STUDY},
        ],
    }
    (note,) = parse_notifications(bundle)
    assert note.shape == "r5" and note.subscription_id == "123"
    assert note.events_since_start == 310
    assert note.events[0].number == 310 and note.events[0].focus_key == "ImagingStudy/abc"
    assert note.resource_for(note.events[0]) == STUDY


def test_medplum_shape_is_unnumbered_and_heartbeat_covers_several() -> None:
    event = {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            {
                "resource": {
                    "resourceType": "SubscriptionStatus",
                    "status": "active",
                    "type": "event-notification",
                    "subscription": {"reference": "Subscription/m1"},
                    "notificationEvent": [
                        {"eventNumber": "0", "focus": {"reference": "ImagingStudy/abc"}}
                    ],
                }
            }
        ],
    }
    (note,) = parse_notifications(event)
    assert note.shape == "r4b" and note.events[0].number is None and not note.numbered
    heartbeat = {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            {
                "resource": {
                    "resourceType": "SubscriptionStatus",
                    "status": "active",
                    "type": "heartbeat",
                    "subscription": {"reference": f"Subscription/{i}"},
                }
            }
            for i in ("m1", "m2")
        ],
    }
    assert [n.subscription_id for n in parse_notifications(heartbeat)] == ["m1", "m2"]


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({"resourceType": "Patient"}), "not 'Patient'"),
        (json.dumps({"resourceType": "Bundle", "type": "searchset", "entry": []}), "searchset"),
        (json.dumps({"resourceType": "Bundle", "type": "history", "entry": []}), "first entry"),
        (json.dumps({"resourceType": "Bundle", "type": "history", "entry": "x"}), "entry"),
    ],
)
def test_malformed_frames_raise_naming_the_problem(frame: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message.replace("'", ".")):
        parse_notifications(frame)  # type: ignore[arg-type]


def test_malformed_fields() -> None:
    bad_type = notification_bundle("s1", "event-notification", 1, [(1, "ImagingStudy/a")])
    bad_type["entry"][0]["resource"]["parameter"][3]["valueCode"] = "surprise"
    with pytest.raises(InvalidInputError, match="surprise"):
        parse_notifications(bad_type)
    bad_number = notification_bundle("s1", "event-notification", 1, [(1, "ImagingStudy/a")])
    bad_number["entry"][0]["resource"]["parameter"][5]["part"][0]["valueString"] = "one"
    with pytest.raises(InvalidInputError, match="event-number 'one'"):
        parse_notifications(bad_number)
    negative = notification_bundle("s1", "heartbeat", 1)
    negative["entry"][0]["resource"]["parameter"][4]["valueString"] = "-4"
    with pytest.raises(InvalidInputError, match="negative"):
        parse_notifications(negative)


def test_status_bundle_and_binding_token() -> None:
    answer = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": notification_bundle("s1", "query-status", 7)["entry"][0]["resource"]}
        ],
    }
    (status,) = parse_status_bundle(answer)
    assert status.type == "query-status" and status.events_since_start == 7
    token = parse_binding_token(
        {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "token", "valueString": "t"},
                {"name": "websocket-url", "valueUrl": "ws://h/fhir/ws"},
                {"name": "subscription", "valueReference": {"reference": "Subscription/s1"}},
            ],
        }
    )
    assert (token.token, token.websocket_url, token.subscriptions) == (
        "t",
        "ws://h/fhir/ws",
        ("Subscription/s1",),
    )
    with pytest.raises(InvalidInputError, match="no token"):
        parse_binding_token({"resourceType": "Parameters", "parameter": []})


def test_bind_framings_and_legacy_frames() -> None:
    assert json.loads(bind_with_token_message("t")) == {
        "type": "bind-with-token",
        "payload": {"token": "t"},
    }
    assert bind_with_token_message("t", "text") == "bind-with-token: t"
    assert parse_legacy_frame("bound s1").kind == "bound"
    assert parse_legacy_frame(b"ping s1").value == "s1"
    assert parse_legacy_frame("error Subscription is not active").value.startswith("Subscription")
    for bad in ("hello", "ping", "bound"):
        with pytest.raises(InvalidInputError):
            parse_legacy_frame(bad)


def test_reference_keys() -> None:
    assert reference_key("ImagingStudy/a") == "ImagingStudy/a"
    assert reference_key("http://h/fhir/ImagingStudy/a/_history/2") == "ImagingStudy/a"
    assert reference_key("#contained") is None and reference_key("urn:uuid:x") is None


def test_websocket_url_must_share_the_fhir_origin() -> None:
    base = "http://127.0.0.1:8042/fhir"
    assert same_origin_websocket("ws://127.0.0.1:8042/fhir/ws", base).endswith("/fhir/ws")
    assert same_origin_websocket("/fhir/ws", base) == "ws://127.0.0.1:8042/fhir/ws"
    for hostile in (
        "ws://evil.example:8042/fhir/ws",
        "ws://127.0.0.1:9999/fhir/ws",
        "wss://127.0.0.1:8042/fhir/ws",
        "http://127.0.0.1:8042/fhir/ws",
    ):
        with pytest.raises(AuthError, match="websocket URL"):
            same_origin_websocket(hostile, base)


def test_subscription_resources() -> None:
    sub = topic_subscription(
        IMAGINGSTUDY_TOPIC, "ImagingStudy?patient=Patient/p1", heartbeat_period=5
    )
    assert sub["criteria"] == IMAGINGSTUDY_TOPIC
    assert sub["_criteria"]["extension"][0]["valueString"] == "ImagingStudy?patient=Patient/p1"
    assert heartbeat_period(sub) == 5
    with pytest.raises(InvalidInputError, match="payload content"):
        topic_subscription(IMAGINGSTUDY_TOPIC, content="everything")
    statement = {
        "rest": [
            {
                "extension": [
                    {
                        "url": "http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket",
                        "valueUrl": "ws://h/ws",
                    }
                ]
            }
        ]
    }
    assert legacy_websocket_url(statement) == "ws://h/ws"
    assert legacy_websocket_url({}) is None
