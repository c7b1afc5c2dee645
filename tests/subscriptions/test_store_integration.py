"""Subscriptions with the rest of the app: STOW-RS → FHIR sync notifies, and ``--auth``.

The "ImagingStudy created or updated" topic fires whatever path wrote the study
(SUBSCRIPTIONS.md, Trigger). Under ``--auth`` (imagingkit.sandbox.authz) a binding token
needs the authorization of reading the Subscription, and deliveries follow the
patient-compartment rules of reads.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file
from store_helpers import (
    FHIR,
    backport_subscription,
    event_numbers,
    legacy_subscription,
    parameters_of,
    patient,
    recv_json,
    recv_text,
    study,
)
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from imagingkit.config import Settings
from imagingkit.dicomweb.multipart import encode_multipart
from imagingkit.sandbox.authz import Grant, parse_scopes
from imagingkit.sandbox.fhir.store import FhirStore
from imagingkit.sandbox.fhir.subscriptions.tokens import Audience
from imagingkit.sandbox.fhir.testing import serving, serving_store
from imagingkit.sandbox.token_endpoint import AuthServer, ClientRegistry
from imagingkit.server.serve import build_components


@contextmanager
def _folder_app(tmp_path: Path) -> Iterator[tuple[str, FhirStore]]:
    """``imagingkit serve --dicom-dir`` in this process: (origin, its FHIR store)."""
    folder = tmp_path / "scans"
    folder.mkdir()
    components = build_components(Settings(data_dir=tmp_path / "data"), dicom_dir=folder)
    with ExitStack() as stack:
        for component in components:
            close = getattr(component, "close", None)
            if close is not None:
                stack.callback(close)
        origin = stack.enter_context(serving(components, timeout=30))
        yield origin, next(c for c in components if isinstance(c, FhirStore))


def test_stow_of_a_new_study_is_an_imagingstudy_event(tmp_path: Path) -> None:
    source = Path(str(get_testdata_file("CT_small.dcm")))
    study_uid = str(pydicom.dcmread(source, stop_before_pixels=True).StudyInstanceUID)
    with _folder_app(tmp_path) as (origin, _):
        fhir = f"{origin}/fhir"
        created = requests.post(
            f"{fhir}/Subscription",
            json=backport_subscription(
                "websocket", filters=("modality=CT",), content="full-resource"
            ),
            headers=FHIR,
            timeout=30,
        ).json()
        token = requests.get(
            f"{fhir}/Subscription/{created['id']}/$get-ws-binding-token", timeout=30
        ).json()
        values = {
            p["name"]: next(v for k, v in p.items() if k.startswith("value"))
            for p in token["parameter"]
        }
        with connect(values["websocket-url"], open_timeout=20) as ws:
            ws.send(json.dumps({"type": "bind-with-token", "payload": {"token": values["token"]}}))
            assert parameters_of(recv_json(ws))["type"] == "handshake"
            body, content_type = encode_multipart(
                [({"Content-Type": "application/dicom"}, source.read_bytes())],
                "application/dicom",
                boundary=uuid.uuid4().hex,
            )
            stored = requests.post(
                f"{origin}/dicom-web/studies",
                data=body,
                headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
                timeout=60,
            )
            assert stored.status_code == 200, stored.text
            note = recv_json(ws, timeout=60)
        assert event_numbers(note) == [1]
        resource = note["entry"][1]["resource"]
        assert resource["resourceType"] == "ImagingStudy"
        uids = [i["value"] for i in resource["identifier"] if i.get("system") == "urn:dicom:uid"]
        assert uids == [f"urn:oid:{study_uid}"]


# --------------------------------------------------------------------------- --auth


def _grant(scope: str, patients: set[str] | None) -> Grant:
    scopes, _ = parse_scopes(scope)
    frozen = None if patients is None else frozenset(patients)
    return Grant("test", tuple(scopes), frozen, expires_at=time.time() + 600)


@contextmanager
def _guarded_store(tmp_path: Path) -> Iterator[tuple[str, FhirStore, AuthServer]]:
    store = FhirStore.for_data_dir(tmp_path, "auth", settings=Settings(data_dir=tmp_path))
    server = AuthServer(ClientRegistry([]))
    try:
        with serving(server.protect([store])) as origin:
            yield f"{origin}/fhir", store, server
    finally:
        store.close()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **FHIR}


def test_binding_tokens_need_the_authorization_of_reading_the_subscription(tmp_path: Path) -> None:
    with _guarded_store(tmp_path) as (base, store, server):
        admin = server.tokens.issue(_grant("system/*.cruds", None))
        clinic_a = server.tokens.issue(_grant("patient/*.rs", {"a"}))
        for pid in ("a", "b"):
            store.upsert(patient(pid))
        created = requests.post(
            f"{base}/Subscription",
            json=backport_subscription("websocket"),
            headers=_bearer(admin),
            timeout=30,
        )
        assert created.status_code == 201, created.text
        sub_id = created.json()["id"]
        operation = f"{base}/Subscription/{sub_id}/$get-ws-binding-token"
        assert requests.get(operation, timeout=30).status_code == 401
        assert requests.get(operation, headers=_bearer(clinic_a), timeout=30).status_code == 403
        assert (
            requests.get(
                f"{base}/Subscription/{sub_id}/$events", headers=_bearer(clinic_a), timeout=30
            ).status_code
            == 403
        )
        answer = requests.get(operation, headers=_bearer(admin), timeout=30)
        assert answer.status_code == 200, answer.text
        token = next(p["valueString"] for p in answer.json()["parameter"] if p["name"] == "token")
        ws_url = base.replace("http://", "ws://") + "/$subscription-ws"
        with connect(ws_url, open_timeout=20) as ws:  # no header needed with a binding token
            ws.send(f"bind-with-token: {token}")
            assert parameters_of(recv_json(ws))["type"] == "handshake"
            store.upsert(study("sb", "b"))
            assert event_numbers(recv_json(ws)) == [1]
        # legacy bind: the upgrade must carry a token that may read Subscriptions
        legacy = requests.post(
            f"{base}/Subscription",
            json=legacy_subscription("ImagingStudy", {"type": "websocket"}),
            headers=_bearer(admin),
            timeout=30,
        ).json()
        with connect(ws_url, open_timeout=20) as ws:
            ws.send(f"bind {legacy['id']}")
            assert recv_text(ws).startswith("error ")
        with connect(
            ws_url, open_timeout=20, additional_headers={"Authorization": f"Bearer {clinic_a}"}
        ) as ws:
            ws.send(f"bind {legacy['id']}")
            assert recv_text(ws).startswith("error ")
        with pytest.raises(InvalidStatus):
            connect(ws_url, open_timeout=20, additional_headers={"Authorization": "Bearer forged"})
        with connect(
            ws_url, open_timeout=20, additional_headers={"Authorization": f"Bearer {admin}"}
        ) as ws:
            ws.send(f"bind {legacy['id']}")
            assert recv_text(ws) == f"bound {legacy['id']}"


def test_a_patient_scoped_binding_never_receives_other_patients_events(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (base, store):
        for pid in ("a", "b"):
            store.upsert(patient(pid))
        sub_id = requests.post(
            f"{base}/Subscription",
            json=backport_subscription("websocket", content="full-resource"),
            headers=FHIR,
            timeout=30,
        ).json()["id"]
        # a token issued to a grant limited to Patient a (what $get-ws-binding-token records)
        token, _ = store.subscriptions.tokens.issue([sub_id], Audience(patients=frozenset({"a"})))
        with connect(base.replace("http://", "ws://") + "/$subscription-ws", open_timeout=20) as ws:
            ws.send(f"bind-with-token: {token}")
            recv_json(ws)
            store.upsert(study("b1", "b"))
            store.upsert(study("a1", "a"))
            store.upsert(patient("b"))
            store.upsert(study("b2", "b"))
            got = recv_json(ws)
            with pytest.raises(TimeoutError):
                ws.recv(timeout=1.5)
        assert [e["resource"]["id"] for e in got["entry"][1:]] == ["a1"]
        assert event_numbers(got) == [2]  # numbers are the Subscription's; b's are withheld
