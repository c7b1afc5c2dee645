"""FHIRcast under ``imagingkit serve --sandbox --auth``: the hub answers to the sandbox's tokens.

FHIRcast 3.0.0 ``2-2``: subscribing needs ``fhircast/{Event}.read`` for each event, a
context change needs ``fhircast/{Event}.write``; ``2-4``: with OAuth the lease never
outlives the token (check 9 of the notes). The tokens come from the sandbox's SMART
Backend Services token endpoint; the websocket needs no token (``4-3``: the unguessable
``hub.channel.endpoint`` is the ticket).

Decision tested here: a client limited to some patients gets no FHIRcast scope (FHIRcast
has no patient-scoped scopes and a hub cannot screen a session's context by patient).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from auth_support import make_client, registry_of
from serve_support import AuthSandboxProcess
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from imagingkit import smart
from imagingkit.errors import FHIRcastError, SandboxError
from imagingkit.fhircast import FhircastClient
from imagingkit.fhircast.hub import FhircastHub
from imagingkit.sandbox.token_endpoint import AuthServer, ClientRegistry, FhircastTokens

TIMEOUT = 60
PATIENT = {"resourceType": "Patient", "id": "fhircast-auth-1"}


@dataclass
class AuthHub:
    """The served sandbox with ``--auth`` and its generated clients' keys."""

    process: AuthSandboxProcess

    @property
    def hub(self) -> str:
        return self.process.mount("fhircast")

    @property
    def fhir(self) -> str:
        return self.process.mount("fhir")

    @property
    def token_url(self) -> str:
        return self.process.token_url

    @property
    def folder(self) -> Path:
        return self.process.clients

    def token_answer(self, client_id: str, scope: str) -> requests.Response:
        form = {
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": smart.CLIENT_ASSERTION_TYPE,
            "client_assertion": smart.client_assertion(
                client_id, self.token_url, self.process.pem(client_id)
            ),
        }
        return requests.post(self.token_url, data=form, timeout=TIMEOUT)

    def bearer(self, client_id: str, scope: str) -> dict[str, str]:
        answer = self.token_answer(client_id, scope)
        assert answer.status_code == 200, answer.text
        return {"Authorization": f"Bearer {answer.json()['access_token']}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthHub]:
    process = AuthSandboxProcess.started(tmp_path_factory.mktemp("fhircast-auth"))
    try:
        yield AuthHub(process)
    finally:
        process.stop()


def subscribe(
    hub: str, topic: str, events: str, headers: dict[str, str] | None = None, **extra: str
) -> requests.Response:
    form = {
        "hub.channel.type": "websocket",
        "hub.mode": "subscribe",
        "hub.topic": topic,
        "hub.events": events,
        **extra,
    }
    return requests.post(hub, data=form, headers=headers or {}, timeout=TIMEOUT)


def publish(hub: str, topic: str, event: str, headers: dict[str, str]) -> requests.Response:
    key, resource = ("patient", PATIENT)
    if event.startswith("ImagingStudy"):
        key = "study"
        resource = {"resourceType": "ImagingStudy", "id": "s-1", "status": "available"}
    message = {
        "timestamp": "2024-01-01T00:00:00Z",
        "id": str(uuid.uuid4()),
        "event": {
            "hub.topic": topic,
            "hub.event": event,
            "context": [{"key": key, "resource": resource}],
        },
    }
    return requests.post(hub, json=message, headers=headers, timeout=TIMEOUT)


def confirmation(endpoint: str) -> dict[str, Any]:
    """Open the subscription's websocket, with no credential, and read the confirmation."""
    with connect(endpoint, open_timeout=TIMEOUT) as ws:
        message: dict[str, Any] = json.loads(ws.recv(timeout=TIMEOUT))
    return message


def test_the_generated_system_client_may_follow_and_drive_sessions(served: AuthHub) -> None:
    registry = json.loads((served.folder / "clients.json").read_text())
    scopes = {c["client_id"]: c["scope"].split() for c in registry["clients"]}
    assert {"fhircast/*.read", "fhircast/*.write"} <= set(scopes["imagingkit-system"])
    for client_id in ("imagingkit-patient-1", "imagingkit-patient-2"):
        assert not [s for s in scopes[client_id] if s.startswith("fhircast/")]
    discovery = requests.get(f"{served.fhir}/.well-known/smart-configuration", timeout=TIMEOUT)
    assert {"fhircast/*.read", "fhircast/*.write"} <= set(discovery.json()["scopes_supported"])
    answer = served.token_answer("imagingkit-system", "system/*.rs fhircast/Patient-open.read")
    assert answer.status_code == 200, answer.text
    assert answer.json()["scope"].split() == ["system/*.rs", "fhircast/Patient-open.read"]
    assert answer.json()["hub.url"] == served.hub  # FHIRcast 2-1 launch parameter


def test_without_a_valid_token_the_hub_answers_401(served: AuthHub) -> None:
    topic = str(uuid.uuid4())
    for headers in ({}, {"Authorization": "Bearer forgotten-or-forged"}):
        refused = subscribe(served.hub, topic, "Patient-open", headers)
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert publish(served.hub, topic, "Patient-open", headers).status_code == 401
        assert (
            requests.get(f"{served.hub}/{topic}", headers=headers, timeout=TIMEOUT).status_code
            == 401
        )
    # discovery stays public (2-7)
    discovery = requests.get(f"{served.hub}/.well-known/fhircast-configuration", timeout=TIMEOUT)
    assert discovery.status_code == 200


def test_subscribing_needs_the_read_scope_of_each_event(served: AuthHub) -> None:
    topic = str(uuid.uuid4())
    # a FHIR token of the same server, without FHIRcast scopes
    resource_only = served.bearer("imagingkit-system", "system/*.rs")
    refused = subscribe(served.hub, topic, "Patient-open", resource_only)
    assert refused.status_code == 403 and "Patient-open" in refused.text
    patient_reader = served.bearer("imagingkit-system", "fhircast/Patient-open.read")
    assert subscribe(served.hub, topic, "ImagingStudy-open", patient_reader).status_code == 403
    partly = subscribe(served.hub, topic, "Patient-open,ImagingStudy-open", patient_reader)
    assert partly.status_code == 202, partly.text
    confirmed = confirmation(partly.json()["hub.channel.endpoint"])
    assert confirmed["hub.mode"] == "subscribe"
    assert confirmed["hub.events"] == "Patient-open"  # only what the token reads


def test_publishing_needs_the_write_scope_of_the_event(served: AuthHub) -> None:
    topic = str(uuid.uuid4())
    reader = served.bearer("imagingkit-system", "fhircast/*.read")
    refused = publish(served.hub, topic, "Patient-open", reader)
    assert refused.status_code == 403 and "Patient-open.write" in refused.text
    patient_writer = served.bearer("imagingkit-system", "fhircast/Patient-open.write")
    assert publish(served.hub, topic, "Patient-open", patient_writer).status_code == 202
    assert publish(served.hub, topic, "ImagingStudy-open", patient_writer).status_code == 403


def test_patient_limited_clients_get_no_fhircast_scope(served: AuthHub, tmp_path: Path) -> None:
    refused = served.token_answer("imagingkit-patient-1", "patient/*.rs fhircast/Patient-open.read")
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_scope"
    assert "patients" in refused.json()["error_description"]
    # its patient token reads its FHIR data but is nobody on the hub
    patient_token = served.bearer("imagingkit-patient-1", "patient/*.rs")
    topic = str(uuid.uuid4())
    assert subscribe(served.hub, topic, "Patient-open", patient_token).status_code == 403
    assert publish(served.hub, topic, "Patient-open", patient_token).status_code == 403
    # and a registry cannot give it one
    client = make_client("clinic", "patient/*.rs", ["p1"])
    entry = {**registry_of(client).to_json()["clients"][0], "scope": "patient/*.rs fhircast/*.read"}
    path = tmp_path / "clients.json"
    path.write_text(json.dumps({"clients": [entry]}))
    with pytest.raises(SandboxError, match="no FHIRcast scope"):
        ClientRegistry.from_file(path)


def test_the_lease_ends_no_later_than_the_token(served: AuthHub) -> None:
    answer = served.token_answer("imagingkit-system", "fhircast/*.read")
    issued = time.time()
    token, expires_in = answer.json()["access_token"], answer.json()["expires_in"]
    headers = {"Authorization": f"Bearer {token}"}
    topic = str(uuid.uuid4())
    asked = subscribe(served.hub, topic, "Patient-open", headers, **{"hub.lease_seconds": "86400"})
    assert asked.status_code == 202, asked.text
    lease = confirmation(asked.json()["hub.channel.endpoint"])["hub.lease_seconds"]
    assert 0 < lease <= expires_in - (time.time() - issued) + 1
    assert lease < 86400 and lease >= expires_in - 30  # capped by the token, not refused


def test_fhircast_clients_with_smart_tokens_share_a_session(served: AuthHub) -> None:
    topic = str(uuid.uuid4())
    follower_cred = served.process.credential("imagingkit-system", "fhircast/*.read")
    driver_cred = served.process.credential(
        "imagingkit-system", "fhircast/Patient-open.read fhircast/Patient-open.write"
    )
    follower = FhircastClient(
        served.hub, topic, ["Patient-open"], token=follower_cred.access_token, loop="thread"
    )
    driver = FhircastClient(
        served.hub, topic, ["Patient-open"], token=driver_cred.access_token, loop="thread"
    )
    try:
        assert follower.granted_events == ("Patient-open",)
        assert follower.endpoint is not None and follower.endpoint.startswith("ws://")
        sent = driver.open_patient(PATIENT)
        received = follower.wait_for(sent.id, timeout=TIMEOUT)
        assert received.value("patient")["id"] == PATIENT["id"]
        with pytest.raises(FHIRcastError) as caught:
            follower.open_patient(PATIENT)  # read-only token
        assert caught.value.status == 403
        # the hub also answers Get Current Context to the reader
        assert follower.get_context()["context.type"] == "Patient"
    finally:
        follower.close()
        driver.close()
    assert follower_cred.tokens_fetched == 1 and driver_cred.tokens_fetched == 1


def test_the_websocket_endpoint_is_the_ticket(served: AuthHub) -> None:
    """4-3: no token on the websocket, but only the 256-bit endpoint the hub handed out."""
    topic = str(uuid.uuid4())
    reader = served.bearer("imagingkit-system", "fhircast/*.read")
    endpoint = subscribe(served.hub, topic, "Patient-open", reader).json()["hub.channel.endpoint"]
    guessed = endpoint.rsplit("/", 1)[0] + "/" + "A" * 43
    with pytest.raises(InvalidStatus) as caught:
        connect(guessed, open_timeout=TIMEOUT)
    assert caught.value.response.status_code == 404
    assert confirmation(endpoint)["hub.events"] == "Patient-open"


def test_protect_gives_only_a_hub_without_a_validator_the_sandbox_tokens() -> None:
    server = AuthServer(registry_of(make_client("system", "system/*.rs fhircast/*.*", None)))
    bare, own = FhircastHub(), FhircastHub(token_validator=lambda token: None)
    unprotected = FhircastHub()
    server.protect([bare])
    server.protect([own])
    assert isinstance(bare.token_validator, FhircastTokens)
    assert bare.token_validator.tokens is server.tokens
    assert own.token_validator is not None and not isinstance(own.token_validator, FhircastTokens)
    assert unprotected.token_validator is None  # without --auth the hub stays open
