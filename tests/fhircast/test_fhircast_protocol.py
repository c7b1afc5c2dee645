"""The sans-I/O protocol module: parsing tolerance and builders (notes §14)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from imagingkit.errors import InvalidInputError
from imagingkit.fhircast import protocol
from imagingkit.fhircast.session import TopicSession


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2018-01-08T01:37:05.14", datetime(2018, 1, 8, 1, 37, 5, 140000, timezone.utc)),
        ("2023-04-01T010:38:04.16", datetime(2023, 4, 1, 10, 38, 4, 160000, timezone.utc)),
        ("2019-09-10T14:58:45.988Z", datetime(2019, 9, 10, 14, 58, 45, 988000, timezone.utc)),
        (
            "2020-05-29T11:44:13.1882432-05:00",
            datetime(2020, 5, 29, 16, 44, 13, 188243, timezone.utc),
        ),
        ("2020-05-29T11:44+0200", datetime(2020, 5, 29, 9, 44, tzinfo=timezone.utc)),
        ("2020-13-01T00:00:00Z", None),
        ("2020-01-01T25:00:00Z", None),
        ("yesterday", None),
        (None, None),
    ],
)
def test_lenient_timestamps(text, expected):
    assert protocol.parse_timestamp(text) == expected


def test_formatted_timestamps_round_trip():
    when = datetime(2026, 1, 2, 3, 4, 5, 6, timezone.utc)
    assert protocol.format_timestamp(when) == "2026-01-02T03:04:05.000006Z"
    assert protocol.parse_timestamp(protocol.format_timestamp(when)) == when


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"id": "a", "status": 200}, ("a", 200)),
        ({"id": "a", "status": "200"}, ("a", 200)),  # the spec's example (notes §14.1)
        ({"id": "a", "status": " 409 "}, ("a", 409)),
        ({"id": "a", "status": True}, None),
        ({"id": "a", "status": "OK"}, None),
        ({"id": "a"}, None),
        ({"id": 3, "status": 200}, None),
        ({"hub.channel.endpoint": "wss://x"}, None),
    ],
)
def test_parse_ack(message, expected):
    assert protocol.parse_ack(message) == expected


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("Patient-open", True),
        ("imagingstudy-CLOSE", True),
        ("DiagnosticReport-update", True),
        ("Observation-select", True),
        ("syncerror", True),
        ("userLogout", True),
        ("org.example.patient_transmogrify", True),
        ("org.example.patient-transmogrify", False),
        ("Patient-opened", False),
        ("Patient open", False),
        ("*", False),
        ("", False),
    ],
)
def test_event_grammar(name, ok):
    assert protocol.event_grammar_ok(name) is ok


def test_confirmation_and_denial_shapes():
    assert protocol.confirmation("t", ["Patient-open", "Patient-close"], 7200) == {
        "hub.mode": "subscribe",
        "hub.topic": "t",
        "hub.events": "Patient-open,Patient-close",
        "hub.lease_seconds": 7200,
    }
    assert protocol.denial("t", ["Patient-open"]) == {
        "hub.mode": "denied",
        "hub.topic": "t",
        "hub.events": "Patient-open",
    }
    assert protocol.denial("t", ["Patient-open"], "why")["hub.reason"] == "why"
    assert protocol.ack("x") == {"id": "x", "status": 200}


def test_sync_error_details_accept_the_example_system():
    event = protocol.sync_error(
        "t", event_id="e", event_name="Patient-open", subscriber_name="App", diagnostics="no"
    )
    message = event.to_json()
    coding = message["event"]["context"][0]["resource"]["issue"][0]["details"]["coding"]
    coding[2]["system"] = "https://fhircast.hl7.org/events/syncerror/subscriber"  # 3-2-1 example
    parsed = protocol.parse_event(message)
    assert protocol.sync_error_details(parsed) == {
        "eventid": "e",
        "eventname": "Patient-open",
        "subscribername": "App",
        "diagnostics": "no",
    }


def test_subscription_request_parsing():
    req = protocol.parse_subscription_request(
        "hub.channel.type=WebSocket&hub.mode=subscribe&hub.topic=t&"
        "hub.events=patient-open,Patient-Open,imagingstudy-open&hub.lease=60&"
        "hub.callback=http%3A%2F%2Fx&subscriber.name=OHIF"
    )
    assert req.events == ("Patient-open", "ImagingStudy-open")
    assert req.lease_seconds == 60
    assert req.subscriber_name == "OHIF"
    assert req.tolerated == ("hub.callback", "hub.lease")
    unsub = protocol.parse_subscription_request(
        [
            ("hub.channel.type", "websocket"),
            ("hub.mode", "unsubscribe"),
            ("hub.topic", "t"),
            ("hub.channel.endpoint", "ws://h/ws/abc"),
        ]
    )
    assert unsub.mode == "unsubscribe" and unsub.events == ()
    with pytest.raises(InvalidInputError, match=r"hub\.channel\.endpoint"):
        protocol.parse_subscription_request(
            "hub.channel.type=websocket&hub.mode=unsubscribe&hub.topic=t"
        )
    with pytest.raises(InvalidInputError, match="must be positive"):
        protocol.parse_subscription_request(
            "hub.channel.type=websocket&hub.mode=subscribe&hub.topic=t&"
            "hub.events=Patient-open&hub.lease_seconds=0"
        )


def test_capability_statement_extension_urls():
    def statement(url, sub=True):
        ext = {"url": url}
        if sub:
            ext["extension"] = [{"url": "hub.url", "valueUrl": "https://hub/x"}]
        else:
            ext["valueUri"] = "https://hub/x"
        return {"resourceType": "CapabilityStatement", "rest": [{"extension": [ext]}]}

    for url in (
        "http://fhircast.hl7.org/StructureDefinition/fhircast-configuration-extension",
        "http://hl7.org/fhir/uv/fhircast/StructureDefinition/fhircast-configuration-extension",
    ):
        assert protocol.hub_url_from_capability_statement(statement(url)) == "https://hub/x"
    stu2 = statement("http://fhircast.hl7.org/StructureDefinition/fhircast-configuration", False)
    assert protocol.hub_url_from_capability_statement(stu2) == "https://hub/x"
    assert protocol.hub_url_from_capability_statement(statement("http://other")) is None


def test_session_update_is_atomic_and_versions_chain():
    ids = iter(f"v{i}" for i in range(100))
    session = TopicSession("t", new_id=lambda: next(ids))
    report = {"resourceType": "DiagnosticReport", "id": "r"}
    opened = session.apply(
        protocol.notification(
            "t",
            "DiagnosticReport-open",
            [
                {"key": "report", "resource": report},
                {"key": "patient", "resource": {"resourceType": "Patient", "id": "p"}},
            ],
        )
    )
    assert opened.version_id == "v0"

    def update(version, entries):
        return protocol.notification(
            "t",
            "DiagnosticReport-update",
            [
                {"key": "report", "reference": {"reference": "DiagnosticReport/r"}},
                {
                    "key": "updates",
                    "resource": {"resourceType": "Bundle", "type": "transaction", "entry": entries},
                },
            ],
            version_id=version,
        )

    put = {"request": {"method": "PUT"}, "resource": {"resourceType": "Observation", "id": "o"}}
    applied = session.apply(update("v0", [put]))
    assert (applied.version_id, applied.prior_version_id) == ("v1", "v0")
    with pytest.raises(InvalidInputError):
        session.apply(update("v1", [put, {"request": {"method": "PATCH"}}]))
    assert session.current_context()["context.versionId"] == "v1"
    assert [
        e["resource"]["id"] for e in session.current_context()["context"][-1]["resource"]["entry"]
    ] == ["o"]
