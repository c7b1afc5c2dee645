"""FHIR R4 ``patch`` on the embedded store (R4 http.html "patch", RFC 6902, RFC 6901).

Over real HTTP against a fresh store on 127.0.0.1: JSON Patch on an instance and as a
conditional patch, version contention (``If-Match``), the result processed as an update
(validation, a new version, a ``PATCH`` history entry, search indexes), PATCH entries in
transaction and batch Bundles (a Binary carrying the JSON Patch), and the Subscription
event a patched ImagingStudy produces. :func:`apply_json_patch` is also checked on plain
JSON against the rules of RFC 6902 §4 and RFC 6901 §3-§5.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from subscriptions.store_helpers import (
    backport_subscription,
    binding_token,
    create,
    event_numbers,
    recv_json,
)
from websockets.sync.client import connect

from imagingkit.errors import FHIRError, InvalidInputError
from imagingkit.sandbox.fhir.patch import JSON_PATCH, apply_json_patch
from imagingkit.sandbox.fhir.testing import serving_store

Resource = dict[str, Any]
PATCH_HEADERS = {"Content-Type": JSON_PATCH}
DCM = "http://dicom.nema.org/resources/ontology/DCM"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    with serving_store(tmp_path) as (url, store):
        store.upsert({"resourceType": "Patient", "id": "p1", "gender": "female"})
        store.upsert({"resourceType": "Patient", "id": "p2", "gender": "male"})
        store.upsert(_study("s1", "p1"))
        yield url


def _study(id_: str, patient: str, status: str = "available") -> Resource:
    return {
        "resourceType": "ImagingStudy",
        "id": id_,
        "status": status,
        "subject": {"reference": f"Patient/{patient}"},
        "series": [{"uid": "1.2.3", "modality": {"system": DCM, "code": "CT"}}],
    }


def patch(url: str, operations: Any, **headers: str) -> requests.Response:
    return requests.patch(
        url, data=json.dumps(operations), headers={**PATCH_HEADERS, **headers}, timeout=30
    )


def _ids(base: str, query: str) -> set[str]:
    bundle = requests.get(f"{base}/{query}", timeout=30).json()
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"}


def _diagnostics(response: requests.Response) -> str:
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    return " ".join(i.get("diagnostics", "") for i in outcome["issue"])


def _binary(operations: Any) -> Resource:
    data = base64.b64encode(json.dumps(operations).encode()).decode()
    return {"resourceType": "Binary", "contentType": JSON_PATCH, "data": data}


# --------------------------------------------------------------------------- RFC 6902 / 6901


def test_every_operation_applies_in_order_to_a_copy() -> None:
    """RFC 6902 §4.1-§4.6 on plain JSON; the input document is left unchanged."""
    document = {"a": {"b": [1, 2]}, "c": "x", "d": {"e": True}}
    result = apply_json_patch(
        document,
        [
            {"op": "add", "path": "/a/b/1", "value": 9},  # insert before index 1
            {"op": "add", "path": "/a/b/-", "value": 3},  # append
            {"op": "replace", "path": "/c", "value": "y"},
            {"op": "copy", "from": "/a/b", "path": "/f"},
            {"op": "move", "from": "/d/e", "path": "/g"},
            {"op": "remove", "path": "/a/b/0"},
            {"op": "test", "path": "/a/b", "value": [9, 2, 3]},
            {"op": "test", "path": "/f", "value": [1, 9, 2, 3]},
        ],
    )
    assert result == {"a": {"b": [9, 2, 3]}, "c": "y", "d": {}, "f": [1, 9, 2, 3], "g": True}
    assert list(result) == ["a", "c", "d", "f", "g"]  # replace keeps the member's place
    assert document == {"a": {"b": [1, 2]}, "c": "x", "d": {"e": True}}


def test_pointer_escapes_and_the_whole_document() -> None:
    """RFC 6901 §3-§4: ``~1`` is ``/``, ``~0`` is ``~``; ``""`` is the whole document."""
    document = {"a/b": 1, "m~n": 2, "": 3}
    result = apply_json_patch(
        document,
        [
            {"op": "test", "path": "/a~1b", "value": 1},
            {"op": "test", "path": "/m~0n", "value": 2},
            {"op": "test", "path": "/", "value": 3},
            {"op": "replace", "path": "/m~0n", "value": 5},
        ],
    )
    assert result["m~n"] == 5
    assert apply_json_patch(document, [{"op": "replace", "path": "", "value": {"z": 1}}]) == {
        "z": 1
    }
    with pytest.raises(InvalidInputError, match="~"):
        apply_json_patch(document, [{"op": "test", "path": "/m~2n", "value": 2}])


def test_test_compares_json_values() -> None:
    """RFC 6902 §4.6: numbers by value, objects in any order, ``true`` is not ``1``."""
    document = {"n": 1, "o": {"x": 1, "y": [1, 2]}, "t": True}
    apply_json_patch(document, [{"op": "test", "path": "/n", "value": 1.0}])
    apply_json_patch(document, [{"op": "test", "path": "/o", "value": {"y": [1, 2], "x": 1}}])
    for path, value in (("/t", 1), ("/n", True), ("/o/y", [2, 1]), ("/n", "1")):
        with pytest.raises(FHIRError) as failed:
            apply_json_patch(document, [{"op": "test", "path": path, "value": value}])
        assert failed.value.status == 422 and "test" in failed.value.message


@pytest.mark.parametrize(
    ("operations", "error", "named"),
    [
        ({"op": "add"}, InvalidInputError, "JSON array"),
        ([{"op": "frobnicate", "path": "/a"}], InvalidInputError, "frobnicate"),
        ([{"op": "add", "path": "/a"}], InvalidInputError, "'value'"),
        ([{"op": "move", "path": "/a"}], InvalidInputError, "'from'"),
        ([{"path": "/a", "value": 1}], InvalidInputError, "op None"),
        ([{"op": "add", "path": "a", "value": 1}], InvalidInputError, "JSON Pointer"),
        ([{"op": "remove", "path": "/missing"}], FHIRError, "operation 0 (remove /missing)"),
        ([{"op": "add", "path": "/x/y", "value": 1}], FHIRError, "/x does not exist"),
        ([{"op": "add", "path": "/a/5", "value": 1}], FHIRError, "out of range"),
        ([{"op": "add", "path": "/a/01", "value": 1}], FHIRError, "not an array index"),
        ([{"op": "replace", "path": "/q", "value": 1}], FHIRError, "does not exist"),
        ([{"op": "move", "from": "/o", "path": "/o/p"}], FHIRError, "own children"),
        (
            [{"op": "test", "path": "/a", "value": [1]}, {"op": "remove", "path": "/nope"}],
            FHIRError,
            "operation 1 (remove /nope)",
        ),
    ],
)
def test_malformed_or_unappliable_operations(
    operations: Any, error: type[Exception], named: str
) -> None:
    """A malformed document is a 400; an operation that cannot apply is a 422 naming it."""
    with pytest.raises(error) as failed:
        apply_json_patch({"a": [1], "o": {"p": 1}}, operations)
    assert named in str(failed.value)
    if isinstance(failed.value, FHIRError):
        assert failed.value.status == 422


# --------------------------------------------------------------------------- REST patch


def test_patch_makes_a_new_version_with_history_and_index(served: str) -> None:
    url = f"{served}/ImagingStudy/s1"
    answer = patch(
        url,
        [
            {"op": "test", "path": "/status", "value": "available"},
            {"op": "replace", "path": "/status", "value": "cancelled"},
            {"op": "replace", "path": "/subject/reference", "value": "Patient/p2"},
            {"op": "add", "path": "/description", "value": "re-read"},
        ],
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["ETag"] == 'W/"2"'
    assert answer.headers["Content-Location"].endswith("/ImagingStudy/s1/_history/2")
    body = answer.json()
    assert body["status"] == "cancelled" and body["description"] == "re-read"
    assert body["meta"]["versionId"] == "2"
    assert requests.get(url, timeout=30).json() == body
    history = requests.get(f"{url}/_history", timeout=30).json()
    assert [e["request"]["method"] for e in history["entry"]] == ["PATCH", "PUT"]
    assert history["entry"][0]["request"]["url"] == "ImagingStudy/s1"
    assert history["entry"][0]["response"]["status"] == "200 OK"
    # the search index follows the patched resource
    assert _ids(served, "ImagingStudy?status=cancelled") == {"s1"}
    assert _ids(served, "ImagingStudy?status=available") == set()
    assert _ids(served, "ImagingStudy?subject=Patient/p2") == {"s1"}


def test_if_match_guards_the_patch(served: str) -> None:
    """R4: servers that support PATCH SHALL support resource contention on it."""
    url = f"{served}/Patient/p1"
    stale = patch(
        url, [{"op": "replace", "path": "/gender", "value": "other"}], **{"If-Match": 'W/"7"'}
    )
    assert stale.status_code == 412
    assert "version 1" in _diagnostics(stale)
    current = patch(
        url, [{"op": "replace", "path": "/gender", "value": "other"}], **{"If-Match": 'W/"1"'}
    )
    assert current.status_code == 200 and current.json()["gender"] == "other"
    # a version check fails before any operation runs: 412, not the test's 422
    both = patch(
        url, [{"op": "test", "path": "/gender", "value": "female"}], **{"If-Match": 'W/"1"'}
    )
    assert both.status_code == 412


def test_failed_operations_change_nothing(served: str) -> None:
    url = f"{served}/ImagingStudy/s1"
    failed = patch(
        url,
        [
            {"op": "replace", "path": "/status", "value": "cancelled"},
            {"op": "test", "path": "/status", "value": "available"},
        ],
    )
    assert failed.status_code == 422
    assert "operation 1 (test /status)" in _diagnostics(failed)
    missing = patch(url, [{"op": "remove", "path": "/series/3"}])
    assert missing.status_code == 422 and "operation 0 (remove /series/3)" in _diagnostics(missing)
    stored = requests.get(url, timeout=30).json()
    assert stored["status"] == "available" and stored["meta"]["versionId"] == "1"


@pytest.mark.parametrize(
    ("operations", "named"),
    [
        ([{"op": "replace", "path": "/id", "value": "other"}], "operation 0 (replace /id)"),
        (
            [{"op": "add", "path": "/gender", "value": "x"}, {"op": "remove", "path": "/id"}],
            "operation 1 (remove /id)",
        ),
        (
            [{"op": "replace", "path": "/resourceType", "value": "Condition"}],
            "operation 0 (replace /resourceType)",
        ),
        ([{"op": "replace", "path": "", "value": [1]}], "non-object"),
        ([{"op": "add", "path": "/meta", "value": "text"}], "meta must be an object"),
        (
            [{"op": "add", "path": "/link", "value": [{"other": {"reference": "Patient/nobody"}}]}],
            "Patient/nobody",
        ),
        ([{"op": "add", "path": "/x", "value": 1, "from": 2}, {"op": "nope"}], "nope"),
    ],
)
def test_a_patch_whose_result_is_not_a_valid_update_is_refused(
    served: str, operations: Any, named: str
) -> None:
    """The result is processed as an update: the same 400s, naming the operation."""
    answer = patch(f"{served}/Patient/p1", operations)
    assert answer.status_code == 400, answer.text
    assert named in _diagnostics(answer)
    assert requests.get(f"{served}/Patient/p1", timeout=30).json()["meta"]["versionId"] == "1"


def test_patch_of_unknown_deleted_and_unsupported_bodies(served: str) -> None:
    op = [{"op": "replace", "path": "/gender", "value": "other"}]
    assert patch(f"{served}/Patient/nobody", op).status_code == 404
    requests.delete(f"{served}/Patient/p2", timeout=30)
    assert patch(f"{served}/Patient/p2", op).status_code == 410
    assert patch(f"{served}/Observation/x", op).status_code == 404
    fhirpath_patch = {"resourceType": "Parameters", "parameter": []}
    answer = requests.patch(
        f"{served}/Patient/p1",
        json=fhirpath_patch,
        headers={"Content-Type": "application/fhir+json"},
        timeout=30,
    )
    assert answer.status_code == 415 and "FHIRPath Patch" in _diagnostics(answer)
    xml = requests.patch(
        f"{served}/Patient/p1",
        data="<diff/>",
        headers={"Content-Type": "application/xml-patch+xml"},
        timeout=30,
    )
    assert xml.status_code == 415
    # plain JSON holding an array is read as a JSON Patch
    plain = requests.patch(f"{served}/Patient/p1", json=op, timeout=30)
    assert plain.status_code == 200 and plain.json()["gender"] == "other"


def test_prefer_return_minimal_and_no_op_patch(served: str) -> None:
    url = f"{served}/Patient/p1"
    minimal = patch(url, [{"op": "add", "path": "/active", "value": True}], Prefer="return=minimal")
    assert minimal.status_code == 200 and minimal.content == b""
    assert minimal.headers["ETag"] == 'W/"2"'
    # nothing changes: as for an update, the version stays
    same = patch(url, [{"op": "test", "path": "/active", "value": True}])
    assert same.status_code == 200 and same.json()["meta"]["versionId"] == "2"


def test_endpoint_is_patched_as_the_client_sees_it(served: str) -> None:
    """The address is rendered for the client; a patch tests it in that form."""
    endpoint = {
        "resourceType": "Endpoint",
        "id": "dicomweb",
        "status": "active",
        "connectionType": {"code": "dicom-wado-rs"},
        "payloadType": [{"text": "DICOM"}],
        "address": "urn:imagingkit:dicomweb-base",
    }
    assert requests.put(f"{served}/Endpoint/dicomweb", json=endpoint, timeout=30).ok
    shown = requests.get(f"{served}/Endpoint/dicomweb", timeout=30).json()["address"]
    assert shown.startswith("http://127.0.0.1:")
    answer = patch(
        f"{served}/Endpoint/dicomweb",
        [
            {"op": "test", "path": "/address", "value": shown},
            {"op": "replace", "path": "/status", "value": "off"},
        ],
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["address"] == shown and answer.json()["status"] == "off"


def test_conditional_patch(served: str) -> None:
    """R4 conditional patch: no match → 404, one → patched, several → 412."""
    op = [{"op": "add", "path": "/active", "value": False}]
    none = patch(f"{served}/Patient?gender=unknown", op)
    assert none.status_code == 404
    several = patch(f"{served}/Patient?_id=p1,p2", op)
    assert several.status_code == 412
    one = patch(f"{served}/Patient?gender=male", op)
    assert one.status_code == 200 and one.json()["id"] == "p2"
    assert one.json()["active"] is False and one.json()["meta"]["versionId"] == "2"
    assert patch(f"{served}/Patient", op).status_code == 405


# --------------------------------------------------------------------------- Bundles


def test_transaction_patch_entries_resolve_references_and_roll_back(served: str) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "request": {"method": "PATCH", "url": "ImagingStudy/s1", "ifMatch": 'W/"1"'},
                "resource": _binary(
                    [
                        {
                            "op": "replace",
                            "path": "/subject/reference",
                            "value": "urn:uuid:0c4d7f4e-1b64-4b8e-9e1a-3c1b2b1f6c11",
                        }
                    ]
                ),
            },
            {
                "fullUrl": "urn:uuid:0c4d7f4e-1b64-4b8e-9e1a-3c1b2b1f6c11",
                "request": {"method": "POST", "url": "Patient"},
                "resource": {"resourceType": "Patient", "gender": "other"},
            },
            {
                "request": {"method": "PATCH", "url": "Patient?gender=female"},
                "resource": _binary([{"op": "add", "path": "/active", "value": True}]),
            },
        ],
    }
    answer = requests.post(served, json=bundle, timeout=30)
    assert answer.status_code == 200, answer.text
    entries = answer.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["200 OK", "201 Created", "200 OK"]
    new_patient = entries[1]["resource"]["id"]
    assert entries[0]["resource"]["subject"]["reference"] == f"Patient/{new_patient}"
    assert entries[0]["response"]["etag"] == 'W/"2"'
    assert entries[2]["resource"]["id"] == "p1" and entries[2]["resource"]["active"] is True
    # one failing patch undoes the whole transaction
    failing = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "request": {"method": "PUT", "url": "Patient/p9"},
                "resource": {"resourceType": "Patient", "id": "p9"},
            },
            {
                "request": {"method": "PATCH", "url": "Patient/p1"},
                "resource": _binary([{"op": "test", "path": "/active", "value": False}]),
            },
        ],
    }
    refused = requests.post(served, json=failing, timeout=30)
    assert refused.status_code == 422
    assert "Bundle.entry[1]" in _diagnostics(refused)
    assert "operation 0 (test /active)" in _diagnostics(refused)
    assert requests.get(f"{served}/Patient/p9", timeout=30).status_code == 404
    # conditional PATCH without a match fails the transaction with 404
    unmatched = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "request": {"method": "PATCH", "url": "Patient?gender=unknown"},
                "resource": _binary([{"op": "add", "path": "/active", "value": True}]),
            }
        ],
    }
    assert requests.post(served, json=unmatched, timeout=30).status_code == 404


def test_batch_patch_entries_succeed_or_fail_alone(served: str) -> None:
    fhirpath = {"resourceType": "Parameters", "parameter": []}
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "request": {"method": "PATCH", "url": "Patient/p1"},
                "resource": _binary([{"op": "replace", "path": "/gender", "value": "other"}]),
            },
            {
                "request": {"method": "PATCH", "url": "Patient/p2", "ifMatch": 'W/"5"'},
                "resource": _binary([{"op": "replace", "path": "/gender", "value": "other"}]),
            },
            {"request": {"method": "PATCH", "url": "Patient/p2"}, "resource": fhirpath},
            {
                "request": {"method": "PATCH", "url": "Patient/p2"},
                "resource": {"resourceType": "Binary", "contentType": JSON_PATCH, "data": "%%"},
            },
            {
                "request": {"method": "PATCH", "url": "Patient/p2"},
                "resource": _binary([{"op": "remove", "path": "/birthDate"}]),
            },
        ],
    }
    answer = requests.post(served, json=bundle, timeout=30)
    assert answer.status_code == 200, answer.text
    statuses = [e["response"]["status"].split()[0] for e in answer.json()["entry"]]
    assert statuses == ["200", "412", "400", "400", "422"]
    outcome = answer.json()["entry"][2]["response"]["outcome"]
    assert "FHIRPath Patch" in outcome["issue"][0]["diagnostics"]
    assert requests.get(f"{served}/Patient/p1", timeout=30).json()["gender"] == "other"
    assert requests.get(f"{served}/Patient/p2", timeout=30).json()["gender"] == "male"


# --------------------------------------------------------------------------- notifications


def test_a_patched_imaging_study_is_a_subscription_event(tmp_path: Path) -> None:
    """The commit hooks fire for PATCH like any write (REST and Bundle entries)."""
    with serving_store(tmp_path) as (base, store):
        store.upsert({"resourceType": "Patient", "id": "p1"})
        store.upsert(_study("s1", "p1"))
        sub = create(base, backport_subscription("websocket", content="full-resource"))
        token = binding_token(base, sub["id"])
        with connect(token["websocket-url"], open_timeout=20) as ws:
            ws.send(f"bind-with-token: {token['token']}")
            recv_json(ws)  # the handshake
            answer = patch(
                f"{base}/ImagingStudy/s1",
                [{"op": "replace", "path": "/status", "value": "cancelled"}],
            )
            assert answer.status_code == 200, answer.text
            event = recv_json(ws)
            assert event_numbers(event) == [1]
            focus = event["entry"][1]["resource"]
            assert focus["id"] == "s1" and focus["status"] == "cancelled"
            assert focus["meta"]["versionId"] == "2"
            in_bundle = {
                "resourceType": "Bundle",
                "type": "batch",
                "entry": [
                    {
                        "request": {"method": "PATCH", "url": "ImagingStudy/s1"},
                        "resource": _binary(
                            [{"op": "replace", "path": "/status", "value": "available"}]
                        ),
                    }
                ],
            }
            assert requests.post(base, json=in_bundle, timeout=30).ok
            again = recv_json(ws)
            assert event_numbers(again) == [2]
            assert again["entry"][1]["resource"]["status"] == "available"


def test_capability_statement_advertises_patch(served: str) -> None:
    statement = requests.get(f"{served}/metadata", timeout=30).json()
    for resource in statement["rest"][0]["resource"]:
        assert "patch" in {i["code"] for i in resource["interaction"]}
    preflight = requests.options(
        f"{served}/Patient/p1",
        headers={"Origin": "http://example.org", "Access-Control-Request-Method": "PATCH"},
        timeout=30,
    )
    assert "PATCH" in preflight.headers.get("Access-Control-Allow-Methods", "")


def test_in_process_patch_has_the_rest_semantics(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (_base, store):
        store.upsert({"resourceType": "Patient", "id": "p1", "gender": "female"})
        patched = store.patch("Patient", "p1", [{"op": "add", "path": "/active", "value": True}])
        assert patched["active"] is True and patched["meta"]["versionId"] == "2"
        with pytest.raises(FHIRError) as stale:
            store.patch("Patient", "p1", [], if_match='W/"1"')
        assert stale.value.status == 412
        with pytest.raises(FHIRError) as failed:
            store.patch("Patient", "p1", [{"op": "test", "path": "/active", "value": False}])
        assert failed.value.status == 422
        assert store.read("Patient", "p1")["meta"]["versionId"] == "2"
