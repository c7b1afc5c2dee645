"""Helpers of the auth tests: client registries, a header-recording server, the scoped sandbox.

Every server listens on 127.0.0.1 (port 0) and runs on a thread of this process, so its
log records reach ``caplog``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import tornado.httpserver
import tornado.netutil
import tornado.web

from imagingkit import smart
from imagingkit.sandbox.authz import parse_scopes
from imagingkit.sandbox.fhir.testing import serving_app
from imagingkit.sandbox.token_endpoint import AuthServer, ClientRegistry, RegisteredClient

__all__ = [
    "Client",
    "HeaderRecorder",
    "ScopedSandbox",
    "make_client",
    "recording_server",
    "registry_of",
]


@dataclass
class Client:
    """A registered test client with its private key (PEM)."""

    client_id: str
    pem: bytes
    registered: RegisteredClient

    def credential(self, token_url: str, scope: str, **kwargs: Any) -> smart.SmartBackendServices:
        """A SMART Backend Services credential of this client."""
        return smart.SmartBackendServices(token_url, self.client_id, self.pem, scope, **kwargs)

    def assertion(self, token_url: str, **kwargs: Any) -> str:
        """A fresh client assertion for *token_url*."""
        return smart.client_assertion(self.client_id, token_url, self.pem, **kwargs)


@functools.cache
def _key(client_id: str, alg: str) -> bytes:
    return smart.generate_private_key(alg)  # RSA-3072 takes a second: one per client id


def make_client(
    client_id: str,
    scope: str,
    patients: Sequence[str] | None,
    alg: str = "ES384",
    *,
    fresh: bool = False,
) -> Client:
    """A registered client; ``patients=None`` means every patient.

    The key pair is reused for the same *client_id* and *alg* unless *fresh*.
    """
    pem = smart.generate_private_key(alg) if fresh else _key(client_id, alg)
    scopes, _ = parse_scopes(scope)
    registered = RegisteredClient(
        client_id,
        (smart.public_jwk(pem),),
        tuple(scopes),
        None if patients is None else frozenset(patients),
    )
    return Client(client_id, pem, registered)


def registry_of(*clients: Client) -> ClientRegistry:
    """The registry of *clients*."""
    return ClientRegistry(c.registered for c in clients)


def token_for(token_url: str, client: Client, scope: str) -> dict[str, Any]:
    """POST a token request for *client*; return the JSON answer (raises on non-200)."""
    response = requests.post(
        token_url,
        data={
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": smart.CLIENT_ASSERTION_TYPE,
            "client_assertion": client.assertion(token_url),
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


# --------------------------------------------------------------------------- servers on threads


@dataclass
class HeaderRecorder:
    """What a recording server saw: one ``(path, headers)`` per request."""

    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    redirect_to: str | None = None

    def authorizations(self) -> list[str]:
        """Every Authorization header received (should usually be none)."""
        return [h["Authorization"] for _, h in self.seen if "Authorization" in h]


class _RecordingHandler(tornado.web.RequestHandler):
    def initialize(self, recorder: HeaderRecorder) -> None:
        self.recorder = recorder

    def get(self, path: str) -> None:
        self.recorder.seen.append((self.request.path, dict(self.request.headers)))
        if self.recorder.redirect_to is not None:
            # 307 keeps the method and body: the harshest redirect for a POST
            status = 302 if self.request.method == "GET" else 307
            self.redirect(self.recorder.redirect_to + self.request.path, status=status)
            return
        self.set_header("Content-Type", "application/dicom+json")
        self.finish("[]")

    post = get


@contextmanager
def recording_server(redirect_to: str | None = None) -> Iterator[tuple[str, HeaderRecorder]]:
    """A loopback server that records request headers (and may redirect elsewhere)."""
    recorder = HeaderRecorder(redirect_to=redirect_to)
    app = tornado.web.Application([(r"(/.*)", _RecordingHandler, {"recorder": recorder})])
    with serving_app(app) as origin:
        yield origin, recorder


# --------------------------------------------------------------------------- the scoped sandbox


@dataclass
class PatientFacts:
    """What the system token sees of one patient, for the leak tests."""

    id: str
    dicom_patient_id: str
    studies: list[str]
    series: dict[str, str]  # series UID -> study UID
    instance: tuple[str, str, str]  # (study, series, sop) of an image
    resources: dict[str, list[str]]  # type -> ids in the compartment


@dataclass
class ScopedSandbox:
    """The small sandbox served with ``--auth`` and a registry of test clients."""

    origin: str
    auth_server: AuthServer
    clients: dict[str, Client]
    a: PatientFacts
    b: PatientFacts

    @property
    def fhir(self) -> str:
        return f"{self.origin}/fhir"

    @property
    def dicomweb(self) -> str:
        return f"{self.origin}/dicom-web"

    @property
    def token_url(self) -> str:
        return f"{self.origin}/auth/token"

    def headers(self, client: str, scope: str = "system/*.rs") -> dict[str, str]:
        """Authorization for *client* (a fresh token each call)."""
        token = token_for(self.token_url, self.clients[client], scope)["access_token"]
        return {"Authorization": f"Bearer {token}"}


def facts_of(fhir: str, dicomweb: str, headers: Mapping[str, str], patient_id: str) -> PatientFacts:
    """Collect a patient's studies, series, an image and compartment resources."""
    get = lambda url, **kw: requests.get(url, headers=dict(headers), timeout=60, **kw)  # noqa: E731
    resources: dict[str, list[str]] = {}
    for rtype in ("ImagingStudy", "Observation", "Condition", "Encounter", "DiagnosticReport"):
        bundle = get(f"{fhir}/{rtype}", params={"patient": patient_id, "_count": "1000"}).json()
        resources[rtype] = [e["resource"]["id"] for e in bundle.get("entry", [])]
    patient = get(f"{fhir}/Patient/{patient_id}").json()
    dicom_id = patient["identifier"][0]["value"]
    studies = [
        s["0020000D"]["Value"][0]
        for s in get(f"{dicomweb}/studies", params={"PatientID": dicom_id}).json()
    ]
    series: dict[str, str] = {}
    instance: tuple[str, str, str] | None = None
    for study in studies:
        for item in get(f"{dicomweb}/studies/{study}/instances", params={"limit": "50"}).json():
            se, sop = item["0020000E"]["Value"][0], item["00080018"]["Value"][0]
            series[se] = study
            rows = item.get("00280010", {}).get("Value")
            if instance is None and rows:
                instance = (study, se, sop)
    assert instance is not None, f"patient {patient_id} has no image"
    return PatientFacts(patient_id, dicom_id, studies, series, instance, resources)


def pick_patients(store: Any) -> tuple[str, str]:
    """Two patients of a FhirStore that both have imaging studies and observations."""

    def subjects(rtype: str) -> dict[str, int]:
        bundle = store.search(
            rtype, [("_count", "1000"), ("_elements", "subject")], base_url="http://x/fhir"
        )
        counts: dict[str, int] = {}
        for entry in bundle.get("entry", []):
            patient = entry["resource"].get("subject", {}).get("reference", "").split("/")[-1]
            counts[patient] = counts.get(patient, 0) + 1
        return counts

    studies, observations = subjects("ImagingStudy"), subjects("Observation")
    both = sorted((n, p) for p, n in studies.items() if p in observations)
    assert len(both) >= 2, "the sandbox needs two patients with imaging and observations"
    return both[-1][1], both[-2][1]


def write_registry(path: Path, registry: ClientRegistry) -> Path:
    """Write *registry* as a registry file and return its path."""
    path.write_text(json.dumps(registry.to_json()), encoding="utf-8")
    return path
