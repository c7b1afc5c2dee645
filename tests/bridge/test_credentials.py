"""Credentials never follow an ImagingStudy's Endpoint to another origin (DESIGN.md D7).

A private FHIR store holds studies whose Endpoints point at a second loopback server that
records every request's headers. The bridge holds a token for the FHIR server: the
recorder must never see it, whether the bridge fills series in by QIDO-RS or the
accessor asks for metadata. A token mapped for the recorder's own origin is sent there,
unless the Endpoint says ``requires-access-token = false`` (SMART Imaging Access: a
capability URL). No token appears in the DataFrame, its provenance or ``explain()``.
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Generator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

import imagingkit
from imagingkit.auth import AuthMap, BearerToken
from imagingkit.config import Settings
from imagingkit.sandbox.fhir import FhirStore
from imagingkit.sandbox.fhir.testing import serving

FHIR_TOKEN = "fhir-secret-token-7f3a"
RECORDER_TOKEN = "recorder-token-91c2"
SMART_FLAG = "http://fhir.org/argonaut/smart-imaging/StructureDefinition/requires-access-token"


class _Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, dict[str, str]]]] = []

    def do_GET(self) -> None:
        type(self).seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def recorder() -> Generator[str, None, None]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(10)


def _study(ident: str, uid: str, endpoint: str) -> dict[str, Any]:
    return {
        "resourceType": "ImagingStudy",
        "id": ident,
        "status": "available",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
        "subject": {"reference": "Patient/p"},
        "endpoint": [{"reference": f"Endpoint/{endpoint}"}],
        "series": [{"uid": f"{uid}.1", "modality": {"code": "CT"}}],
    }


def _endpoint(ident: str, address: str, flag: bool | None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Endpoint",
        "id": ident,
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs",
        },
        "payloadType": [{"text": "DICOM"}],
        "address": address,
    }
    if flag is not None:
        resource["extension"] = [{"url": SMART_FLAG, "valueBoolean": flag}]
    return resource


@pytest.fixture(scope="module")
def fhir(recorder: str) -> Generator[str, None, None]:
    folder = Path(tempfile.mkdtemp(prefix="ik-creds-"))
    store = FhirStore(folder / "fhir.sqlite", settings=Settings(data_dir=folder))
    try:
        store.upsert({"resourceType": "Patient", "id": "p", "gender": "other"})
        store.upsert(_endpoint("plain", f"{recorder}/dicom-web", None))
        store.upsert(_endpoint("capability", f"{recorder}/cap/abc123", False))
        store.upsert(_study("s1", "2.25.1001", "plain"))
        store.upsert(_study("s2", "2.25.1002", "capability"))
        with serving([store]) as origin:
            yield f"{origin}/fhir"
    finally:
        store.close()


def _authorizations(since: int) -> list[tuple[str, str | None]]:
    return [(path, headers.get("authorization")) for path, headers in _Recorder.seen[since:]]


def test_the_fhir_token_never_reaches_an_endpoint_elsewhere(fhir: str) -> None:
    start = len(_Recorder.seen)
    bridge = imagingkit.connect(fhir, auth=BearerToken(FHIR_TOKEN))
    frame = bridge.cohort().studies(level="instance")  # QIDO fill-in of instances
    frame.imaging.metadata(progress=False)
    seen = _authorizations(start)
    assert seen, "the bridge should have asked the Endpoint's server"
    assert all(value is None for _path, value in seen), seen
    text = json.dumps(frame.attrs["imagingkit"]) + bridge.cohort().explain() + repr(bridge)
    assert FHIR_TOKEN not in text and FHIR_TOKEN not in frame.to_csv()


def test_mapped_origin_gets_its_own_token_unless_capability_url(fhir: str, recorder: str) -> None:
    start = len(_Recorder.seen)
    auth = AuthMap({fhir: BearerToken(FHIR_TOKEN), recorder: BearerToken(RECORDER_TOKEN)})
    frame = imagingkit.connect(fhir, auth=auth).cohort().studies()
    assert frame["dicomweb_requires_token"].isna().tolist() == [True, False]
    frame.imaging.metadata(progress=False)
    seen = _authorizations(start)
    plain = [value for path, value in seen if path.startswith("/dicom-web/")]
    capability = [value for path, value in seen if path.startswith("/cap/")]
    assert plain and set(plain) == {f"Bearer {RECORDER_TOKEN}"}
    assert capability and set(capability) == {None}
    assert all(FHIR_TOKEN not in (value or "") for _path, value in seen)
