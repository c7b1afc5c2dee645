"""FHIRcast 3.0.0 §2-7 Conformance: ``.well-known/fhircast-configuration`` (checks 1, 23)."""

from __future__ import annotations

from fhircast_helpers import http

from imagingkit.fhircast.protocol import CATALOGUE


def test_check_01_well_known_under_hub_url(hub):
    response = http().get(f"{hub.url}/.well-known/fhircast-configuration", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["eventsSupported"], list)
    assert body["websocketSupport"] is True
    assert body["fhircastVersion"] == "3.0.0"
    assert body["capabilities"]["supportsGetCurrentContext"] is True
    # the deprecated twin is still sent, as the page asks capable implementers to do
    assert body["getCurrentSupport"] is True
    assert "webhookSupport" not in body
    names = {n.lower() for n in body["eventsSupported"]}
    assert {spec.key for spec in CATALOGUE.values()} <= names
    assert "heartbeat" not in names  # removed from STU3; only behind the compatibility flag


def test_check_01_well_known_when_hub_url_has_a_deeper_path(make_hub):
    hub = make_hub(base_url="/deep/base/")
    assert hub.url.endswith("/deep/base/fhircast")
    response = http().get(f"{hub.url}/.well-known/fhircast-configuration", timeout=10)
    assert response.status_code == 200
    assert response.json()["websocketSupport"] is True


def test_check_23_proprietary_events_are_advertised_when_configured(make_hub):
    hub = make_hub(extra_events=("org.example.researchstudy_transmogrify",), heartbeat_period=60)
    body = http().get(f"{hub.url}/.well-known/fhircast-configuration", timeout=10).json()
    assert "org.example.researchstudy_transmogrify" in body["eventsSupported"]
    assert "heartbeat" in body["eventsSupported"]
