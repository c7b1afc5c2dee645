"""FHIR R4 RESTful interactions of the embedded store, over real HTTP (R4 http §3.1.0).

Each store here is fresh (a temporary SQLite file) and served by the real tornado app on
127.0.0.1; requests and fhirpy are the clients.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import ResourceNotFound

from imagingkit.config import Settings
from imagingkit.errors import FHIRError, InvalidInputError
from imagingkit.sandbox.fhir import FhirStore
from imagingkit.sandbox.fhir.searchparams import (
    COMMON_PARAMETERS,
    RESOURCE_TYPES,
    SEARCH_PARAMETERS,
)
from imagingkit.sandbox.fhir.testing import serving_store

Resource = dict[str, Any]
FHIR_JSON = "application/fhir+json"
PLACEHOLDER = "urn:imagingkit:dicomweb-base"


@pytest.fixture
def base(tmp_path: Path) -> Iterator[str]:
    with serving_store(tmp_path) as (url, _store):
        yield url


def patient(**more: Any) -> Resource:
    return {"resourceType": "Patient", "name": [{"family": "Lovelace"}], **more}


def endpoint(address: str = PLACEHOLDER) -> Resource:
    return {
        "resourceType": "Endpoint",
        "id": "dicomweb",
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs",
        },
        "payloadType": [{"text": "DICOM"}],
        "address": address,
    }


def post(url: str, body: Any, **headers: str) -> requests.Response:
    return requests.post(url, json=body, headers=headers, timeout=30)


def put(url: str, body: Any, **headers: str) -> requests.Response:
    return requests.put(url, json=body, headers=headers, timeout=30)


def get(url: str, **headers: str) -> requests.Response:
    return requests.get(url, headers=headers, timeout=30)


def transaction(*entries: Resource, kind: str = "transaction") -> Resource:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


# --------------------------------------------------------------------------- metadata


def test_capability_statement_lists_exactly_what_is_served(base: str) -> None:
    """R4 http §3.1.0.14 capabilities: generated from the tables the code uses."""
    response = get(f"{base}/metadata")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith(FHIR_JSON)
    statement = response.json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1" and statement["kind"] == "instance"
    assert statement["implementation"]["url"] == base
    rest = statement["rest"][0]
    assert [r["type"] for r in rest["resource"]] == list(RESOURCE_TYPES)
    assert {i["code"] for i in rest["interaction"]} == {
        "transaction",
        "batch",
        "history-system",
        "search-system",
    }
    for resource in rest["resource"]:
        names = [p["name"] for p in resource["searchParam"]]
        assert sorted(names) == sorted([*COMMON_PARAMETERS, *SEARCH_PARAMETERS[resource["type"]]])
        assert {i["code"] for i in resource["interaction"]} == {
            "read", "vread", "update", "patch", "delete", "history-instance", "history-type",
            "create", "search-type",
        }  # fmt: skip
        assert resource["versioning"] == "versioned-update" and resource["updateCreate"]
    imaging = next(r for r in rest["resource"] if r["type"] == "ImagingStudy")
    modality = next(p for p in imaging["searchParam"] if p["name"] == "modality")
    assert modality["definition"] == "http://hl7.org/fhir/SearchParameter/ImagingStudy-modality"
    assert "ImagingStudy.series.modality" in modality["documentation"]
    assert "ImagingStudy:endpoint" in imaging["searchInclude"]


# --------------------------------------------------------------------------- CRUD


def test_create_assigns_id_and_version(base: str) -> None:
    """R4 http §3.1.0.6: 201, Location with the version, ETag, meta; a client id is ignored."""
    response = post(f"{base}/Patient", patient(id="chosen-by-client"))
    assert response.status_code == 201
    body = response.json()
    assert body["id"] != "chosen-by-client"
    assert body["meta"]["versionId"] == "1" and body["meta"]["lastUpdated"].endswith("Z")
    assert response.headers["Location"] == f"{base}/Patient/{body['id']}/_history/1"
    assert response.headers["ETag"] == 'W/"1"'
    assert "GMT" in response.headers["Last-Modified"]
    read = get(f"{base}/Patient/{body['id']}")
    assert read.status_code == 200 and read.json() == body
    assert read.headers["ETag"] == 'W/"1"'
    assert read.headers["Content-Location"] == f"{base}/Patient/{body['id']}/_history/1"


def test_conditional_read(base: str) -> None:
    """R4 http §3.1.0.2.1: ``If-None-Match`` with the current ETag answers 304."""
    put(f"{base}/Patient/c", patient(id="c"))
    assert get(f"{base}/Patient/c", **{"If-None-Match": 'W/"1"'}).status_code == 304
    put(f"{base}/Patient/c", patient(id="c", gender="male"))
    changed = get(f"{base}/Patient/c", **{"If-None-Match": 'W/"1"'})
    assert changed.status_code == 200 and changed.json()["gender"] == "male"


def test_search_shows_resources_exactly_as_read(base: str) -> None:
    put(f"{base}/Patient/r", patient(id="r", name=[{"family": "Émile", "given": ["Zoë"]}]))
    read = get(f"{base}/Patient/r").json()
    found = get(f"{base}/Patient?_id=r").json()["entry"][0]["resource"]
    assert found == read
    pretty = get(f"{base}/Patient?_id=r&_pretty=true")
    assert pretty.json()["entry"][0]["resource"] == read
    assert '\n        "resourceType": "Patient"' in pretty.text  # nested, indented


def test_references_to_this_server_are_stored_relative(base: str) -> None:
    """R4 §2.3.0: an absolute reference under the server's own base is a local one."""
    put(f"{base}/Patient/local", patient(id="local"))
    study = {
        "resourceType": "ImagingStudy",
        "id": "abs",
        "status": "available",
        "subject": {"reference": f"{base}/Patient/local"},
    }
    stored = put(f"{base}/ImagingStudy/abs", study).json()
    assert stored["subject"]["reference"] == "Patient/local"
    assert get(f"{base}/ImagingStudy?patient.family=lovelace").json()["total"] == 1
    ghost = study | {"id": "ghost", "subject": {"reference": f"{base}/Patient/ghost"}}
    assert put(f"{base}/ImagingStudy/ghost", ghost).status_code == 400


def test_update_versions_and_if_match(base: str) -> None:
    """R4 http §3.1.0.4 update and §3.1.0.4.2 If-Match (412 on a stale version)."""
    created = put(f"{base}/Patient/ada", patient(id="ada"))
    assert created.status_code == 201  # create-on-update with a client id
    assert created.headers["Location"] == f"{base}/Patient/ada/_history/1"
    changed = put(f"{base}/Patient/ada", patient(id="ada", gender="female"))
    assert changed.status_code == 200 and changed.json()["meta"]["versionId"] == "2"
    stale = put(f"{base}/Patient/ada", patient(id="ada", gender="other"), **{"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"
    assert get(f"{base}/Patient/ada").json()["gender"] == "female"
    fresh = put(f"{base}/Patient/ada", patient(id="ada", gender="other"), **{"If-Match": 'W/"2"'})
    assert fresh.status_code == 200 and fresh.headers["ETag"] == 'W/"3"'
    # the same content again is not a new version
    same = put(f"{base}/Patient/ada", patient(id="ada", gender="other"))
    assert same.status_code == 200 and same.json()["meta"]["versionId"] == "3"
    assert (
        put(f"{base}/Patient/nobody", patient(id="nobody"), **{"If-Match": 'W/"1"'}).status_code
        == 412
    )


def test_vread_and_history(base: str) -> None:
    """R4 http §3.1.0.3 vread and §3.1.0.13 history (newest first)."""
    put(f"{base}/Patient/h", patient(id="h"))
    put(f"{base}/Patient/h", patient(id="h", gender="male"))
    v1 = get(f"{base}/Patient/h/_history/1")
    assert v1.status_code == 200 and "gender" not in v1.json()
    assert v1.headers["ETag"] == 'W/"1"'
    assert get(f"{base}/Patient/h/_history/2").json()["gender"] == "male"
    assert get(f"{base}/Patient/h/_history/9").status_code == 404
    history = get(f"{base}/Patient/h/_history").json()
    assert history["type"] == "history" and history["total"] == 2
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    assert [e["request"]["method"] for e in history["entry"]] == ["PUT", "PUT"]
    assert history["entry"][1]["response"]["status"] == "201 Created"
    post(f"{base}/Patient", patient())
    assert get(f"{base}/Patient/_history").json()["total"] == 3
    assert get(f"{base}/_history").json()["total"] == 3
    assert get(f"{base}/Patient/nobody/_history").status_code == 404


def test_history_pages_stay_put_while_writes_happen(base: str) -> None:
    for i in range(5):
        put(f"{base}/Patient/x{i}", patient(id=f"x{i}"))
    first = get(f"{base}/_history?_count=2").json()
    seen = [e["resource"]["id"] for e in first["entry"]]
    put(f"{base}/Patient/late", patient(id="late"))  # a write between pages
    url = next(x["url"] for x in first["link"] if x["relation"] == "next")
    for _ in range(10):
        page = get(url).json()
        seen += [e["resource"]["id"] for e in page["entry"]]
        url = next((x["url"] for x in page["link"] if x["relation"] == "next"), None)
        if url is None:
            break
    assert seen == ["x4", "x3", "x2", "x1", "x0"]


def test_search_pages_stay_valid_while_data_changes(base: str) -> None:
    """Paging follows the result list of the first request (a snapshot): writes between
    pages neither shift nor repeat entries; deleted resources are left out."""
    for i in range(5):
        put(f"{base}/Patient/s{i}", patient(id=f"s{i}"))
    first = get(f"{base}/Patient?_sort=-_lastUpdated,-_id&_count=2").json()
    seen = [e["resource"]["id"] for e in first["entry"]]
    assert seen == ["s4", "s3"] and first["total"] == 5
    put(f"{base}/Patient/newest", patient(id="newest"))  # would shift offset paging
    requests.delete(f"{base}/Patient/s0", timeout=30)  # on the last page
    url = next(x["url"] for x in first["link"] if x["relation"] == "next")
    for _ in range(10):
        page = get(url).json()
        seen += [e["resource"]["id"] for e in page.get("entry", [])]
        url = next((x["url"] for x in page["link"] if x["relation"] == "next"), None)
        if url is None:
            break
    assert seen == ["s4", "s3", "s2", "s1"]
    again = get(f"{base}/Patient?_sort=-_lastUpdated,-_id&_count=2").json()
    assert again["total"] == 5
    assert [e["resource"]["id"] for e in again["entry"]] == ["newest", "s4"]


def test_delete(base: str) -> None:
    """R4 http §3.1.0.7: delete, then read answers 410 Gone; history keeps the versions."""
    put(f"{base}/Patient/d", patient(id="d"))
    deleted = requests.delete(f"{base}/Patient/d", timeout=30)
    assert deleted.status_code == 200
    assert deleted.json()["resourceType"] == "OperationOutcome"
    gone = get(f"{base}/Patient/d")
    assert gone.status_code == 410 and gone.json()["issue"][0]["code"] == "deleted"
    assert get(f"{base}/Patient/d/_history/1").status_code == 200
    assert get(f"{base}/Patient/d/_history/2").status_code == 410
    history = get(f"{base}/Patient/d/_history").json()
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "PUT"]
    assert "resource" not in history["entry"][0]
    assert get(f"{base}/Patient?_id=d").json()["total"] == 0
    assert requests.delete(f"{base}/Patient/d", timeout=30).status_code == 200  # idempotent
    again = put(f"{base}/Patient/d", patient(id="d"))
    assert again.status_code == 201 and again.json()["meta"]["versionId"] == "3"
    assert get(f"{base}/Patient/unknown").status_code == 404


def test_conditional_create_update_delete(base: str) -> None:
    """R4 http §3.1.0.6.1 If-None-Exist, §3.1.0.4.3 conditional update, §3.1.0.7.1."""
    ident = {"identifier": [{"system": "urn:mrn", "value": "42"}]}
    first = post(f"{base}/Patient", patient(**ident), **{"If-None-Exist": "identifier=urn:mrn|42"})
    second = post(f"{base}/Patient", patient(**ident), **{"If-None-Exist": "identifier=urn:mrn|42"})
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    post(f"{base}/Patient", patient(**ident))  # a duplicate, made without the condition
    twice = post(f"{base}/Patient", patient(**ident), **{"If-None-Exist": "identifier=urn:mrn|42"})
    assert twice.status_code == 412
    updated = put(
        f"{base}/Patient?identifier=urn:mrn|7",
        patient(identifier=[{"system": "urn:mrn", "value": "7"}]),
    )
    assert updated.status_code == 201
    again = put(
        f"{base}/Patient?identifier=urn:mrn|7",
        patient(identifier=[{"system": "urn:mrn", "value": "7"}], gender="male"),
    )
    assert again.status_code == 200 and again.json()["id"] == updated.json()["id"]
    assert put(f"{base}/Patient?identifier=urn:mrn|42", patient()).status_code == 412
    gone = requests.delete(f"{base}/Patient?identifier=urn:mrn|7", timeout=30)
    assert gone.status_code == 200
    assert get(f"{base}/Patient/{updated.json()['id']}").status_code == 410


# --------------------------------------------------------------------------- Bundles


def test_transaction_resolves_urn_uuid_references(base: str) -> None:
    """R4 http §3.1.0.11.2: fullUrl placeholders become the assigned ids."""
    bundle = transaction(
        {
            "fullUrl": "urn:uuid:4a0e5a8c-0000-4000-8000-000000000001",
            "resource": patient(),
            "request": {"method": "POST", "url": "Patient"},
        },
        {
            "fullUrl": "urn:uuid:4a0e5a8c-0000-4000-8000-000000000002",
            "resource": {
                "resourceType": "ImagingStudy",
                "status": "available",
                "subject": {"reference": "urn:uuid:4a0e5a8c-0000-4000-8000-000000000001"},
                "endpoint": [{"reference": "Endpoint/dicomweb"}],
            },
            "request": {"method": "POST", "url": "ImagingStudy"},
        },
        {"resource": endpoint(), "request": {"method": "PUT", "url": "Endpoint/dicomweb"}},
        {"request": {"method": "GET", "url": "Patient?family=lovelace&colour=blue"}},
    )
    response = post(base, bundle)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in result["entry"]]
    assert statuses == ["201 Created", "201 Created", "201 Created", "200 OK"]
    patient_id = result["entry"][0]["resource"]["id"]
    study = result["entry"][1]["resource"]
    assert study["subject"]["reference"] == f"Patient/{patient_id}"
    assert result["entry"][1]["response"]["location"] == f"ImagingStudy/{study['id']}/_history/1"
    assert result["entry"][1]["fullUrl"] == f"{base}/ImagingStudy/{study['id']}"
    searchset = result["entry"][3]["resource"]
    assert searchset["type"] == "searchset" and searchset["total"] == 1
    found = get(f"{base}/ImagingStudy?patient={patient_id}").json()
    assert found["total"] == 1


def test_transaction_conditional_create_and_delete(base: str) -> None:
    put(f"{base}/Patient/old", patient(id="old", identifier=[{"system": "urn:mrn", "value": "1"}]))
    bundle = transaction(
        {
            "fullUrl": "urn:uuid:1",
            "resource": patient(identifier=[{"system": "urn:mrn", "value": "1"}]),
            "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|1"},
        },
        {
            "resource": {
                "resourceType": "Condition",
                "subject": {"reference": "urn:uuid:1"},
                "code": {"text": "nodule"},
            },
            "request": {"method": "POST", "url": "Condition"},
        },
        {"request": {"method": "DELETE", "url": "Patient/gone"}},
    )
    result = post(base, bundle).json()
    assert result["entry"][0]["response"]["status"] == "200 OK"
    assert result["entry"][0]["resource"]["id"] == "old"
    assert result["entry"][1]["resource"]["subject"]["reference"] == "Patient/old"


def test_batch_entries_succeed_or_fail_alone(base: str) -> None:
    """R4 http §3.1.0.11.1: a batch answers each entry with its own status."""
    bundle = transaction(
        {"resource": patient(id="b1"), "request": {"method": "PUT", "url": "Patient/b1"}},
        {
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": "Patient/missing"},
            },
            "request": {"method": "POST", "url": "Observation"},
        },
        {"request": {"method": "GET", "url": "Patient/b1"}},
        {"request": {"method": "GET", "url": "Patient/nope"}},
        kind="batch",
    )
    result = post(base, bundle).json()
    assert result["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in result["entry"]]
    assert statuses == ["201 Created", "400 Bad Request", "200 OK", "404 Not Found"]
    assert result["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert "Patient/missing" in str(result["entry"][1]["response"]["outcome"])
    assert get(f"{base}/Patient/b1").status_code == 200


def test_prefer_return(base: str) -> None:
    """R4 http §3.1.0.8.4: ``Prefer: return=minimal | representation | OperationOutcome``."""
    minimal = post(f"{base}/Patient", patient(), Prefer="return=minimal")
    assert minimal.status_code == 201 and minimal.content == b""
    assert minimal.headers["Location"].startswith(f"{base}/Patient/")
    outcome = post(f"{base}/Patient", patient(), Prefer="return=OperationOutcome")
    assert outcome.json()["resourceType"] == "OperationOutcome"
    full = post(f"{base}/Patient", patient(), Prefer="return=representation")
    assert full.json()["resourceType"] == "Patient"


# --------------------------------------------------------------------------- formats


def test_content_negotiation(base: str) -> None:
    """R4 http §3.1.0.1.3: JSON only; ``_format``; 406 and 415 otherwise."""
    assert get(f"{base}/metadata?_format=json").status_code == 200
    assert get(f"{base}/metadata?_format=application/fhir%2Bjson").status_code == 200
    xml = get(f"{base}/metadata?_format=xml")
    assert xml.status_code == 406 and xml.json()["resourceType"] == "OperationOutcome"
    assert get(f"{base}/Patient", Accept="application/fhir+xml").status_code == 406
    assert get(f"{base}/Patient", Accept="application/fhir+json").status_code == 200
    plain = requests.post(
        f"{base}/Patient", data="{}", headers={"Content-Type": "text/plain"}, timeout=30
    )
    assert plain.status_code == 415
    as_json = requests.post(
        f"{base}/Patient",
        data='{"resourceType": "Patient"}',
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert as_json.status_code == 201
    pretty = get(f"{base}/Patient/{as_json.json()['id']}?_pretty=true")
    assert pretty.text.startswith('{\n  "resourceType"')


def test_cors_preflight(base: str) -> None:
    response = requests.options(
        f"{base}/Patient",
        headers={"Origin": "http://viewer.example", "Access-Control-Request-Method": "POST"},
        timeout=30,
    )
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"


# --------------------------------------------------------------------------- Endpoint addresses


@pytest.mark.parametrize("base_url", ["/", "/user/ada/imagingkit/"])
def test_endpoint_address_is_the_dicomweb_base_as_served(tmp_path: Path, base_url: str) -> None:
    """The stored placeholder becomes ``{origin}{base_url}dicom-web`` on every way out."""
    with serving_store(tmp_path, base_url=base_url) as (fhir_base, store):
        origin = fhir_base.split("/", 3)
        expected = f"{origin[0]}//{origin[2]}{base_url}dicom-web"
        assert fhir_base == f"{origin[0]}//{origin[2]}{base_url}fhir"
        created = put(f"{fhir_base}/Endpoint/dicomweb", endpoint())
        assert created.json()["address"] == expected
        assert get(f"{fhir_base}/Endpoint/dicomweb").json()["address"] == expected
        study = {
            "resourceType": "ImagingStudy",
            "id": "s",
            "status": "available",
            "endpoint": [{"reference": "Endpoint/dicomweb"}],
        }
        put(f"{fhir_base}/ImagingStudy/s", study)
        bundle = get(f"{fhir_base}/ImagingStudy?_include=ImagingStudy:endpoint").json()
        included = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "include"]
        assert included[0]["address"] == expected
        history = get(f"{fhir_base}/Endpoint/dicomweb/_history").json()
        assert history["entry"][0]["resource"]["address"] == expected
        # stored form: the placeholder; writing back the absolute address keeps it portable
        assert store.read("Endpoint", "dicomweb")["address"] == PLACEHOLDER
        put(f"{fhir_base}/Endpoint/dicomweb", endpoint(address=expected + "/studies"))
        assert store.read("Endpoint", "dicomweb")["address"] == PLACEHOLDER + "/studies"
        assert store.read("Endpoint", "dicomweb", base_url=fhir_base)["address"] == (
            expected + "/studies"
        )


def test_endpoint_placeholder_follows_the_host_the_client_used(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (fhir_base, _store):
        put(f"{fhir_base}/Endpoint/dicomweb", endpoint())
        port = fhir_base.rsplit(":", 1)[1].split("/")[0]
        via_localhost = get(f"http://localhost:{port}/fhir/Endpoint/dicomweb")
        assert via_localhost.json()["address"] == f"http://localhost:{port}/dicom-web"


# --------------------------------------------------------------------------- in-process API


def test_in_process_api(tmp_path: Path) -> None:
    """What loaders use: upsert, read, search, transaction — same rules as REST."""
    store = FhirStore.for_data_dir(tmp_path, "api", settings=Settings(data_dir=tmp_path))
    try:
        first = store.upsert(patient(id="p", gender="female"))
        assert first["meta"]["versionId"] == "1"
        assert store.upsert(patient(id="p", gender="female"))["meta"]["versionId"] == "1"
        assert store.upsert(patient(id="p", gender="male"))["meta"]["versionId"] == "2"
        assert store.read("Patient", "p")["gender"] == "male"
        with pytest.raises(FHIRError) as missing:
            store.read("Patient", "nobody")
        assert missing.value.status == 404
        with pytest.raises(InvalidInputError, match="Patient/ghost"):
            store.upsert(
                {"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/ghost"}}
            )
        with pytest.raises(InvalidInputError, match="id"):
            store.upsert(patient())
        store.upsert(endpoint())
        result = store.transaction(
            transaction(
                {
                    "fullUrl": "ImagingStudy/s",
                    "resource": {
                        "resourceType": "ImagingStudy",
                        "id": "s",
                        "status": "available",
                        "subject": {"reference": "Patient/p"},
                        "endpoint": [{"reference": "Endpoint/dicomweb"}],
                    },
                    "request": {"method": "PUT", "url": "ImagingStudy/s"},
                }
            )
        )
        assert result["entry"][0]["response"]["status"] == "201 Created"
        found = store.search(
            "ImagingStudy",
            [("patient.gender", "male"), ("_include", "ImagingStudy:endpoint")],
            base_url="http://example.test:8042/fhir",
        )
        assert found["total"] == 1
        addresses = [e["resource"].get("address") for e in found["entry"]]
        assert "http://example.test:8042/dicom-web" in addresses
        assert found["entry"][0]["fullUrl"] == "http://example.test:8042/fhir/ImagingStudy/s"
    finally:
        store.close()
    reopened = FhirStore.for_data_dir(tmp_path, "api", settings=Settings(data_dir=tmp_path))
    try:
        assert reopened.read("ImagingStudy", "s")["subject"] == {"reference": "Patient/p"}
    finally:
        reopened.close()


# --------------------------------------------------------------------------- fhirpy


def test_fhirpy_crud(base: str) -> None:
    """fhirpy, the project's FHIR client, works against the store unchanged."""
    client = SyncFHIRClient(base)
    ada = client.resource(
        "Patient", name=[{"family": "Lovelace", "given": ["Ada"]}], gender="female"
    )
    ada.save()
    assert ada.id and ada.meta.versionId == "1"
    fetched = client.reference("Patient", ada.id).to_resource()
    assert fetched.name[0].family == "Lovelace"
    ada["birthDate"] = "1815-12-10"
    ada.save()
    assert ada.meta.versionId == "2"
    observation = client.resource(
        "Observation",
        status="final",
        code={"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
        subject=ada.to_reference(),
        valueQuantity={
            "value": 165,
            "unit": "cm",
            "system": "http://unitsofmeasure.org",
            "code": "cm",
        },
    )
    observation.save()
    found = client.resources("Observation").search(subject=ada.to_reference().reference).fetch()
    assert [o.id for o in found] == [observation.id]
    assert client.resources("Patient").search(birthdate="1815").count() == 1
    observation.delete()
    with pytest.raises(ResourceNotFound):
        client.reference("Observation", "does-not-exist").to_resource()
    assert client.resources("Observation").count() == 0
