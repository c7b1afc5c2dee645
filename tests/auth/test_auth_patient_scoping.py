"""A token for patient A reads neither the resources nor the pixels of patient B.

Every level of both stores, against the small sandbox served with the token endpoint
(the ``scoped_sandbox`` fixture): FHIR read, vread, history, search, ``_include``,
``_revinclude``, chained and ``_has`` searches, paging; QIDO-RS at every level and WADO-RS
instances, metadata, frames, rendered, thumbnails, pixel data and bulk data. Each refusal
has a positive control (patient A's own data, or the all-access client), so the tests can
fail.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
from auth_support import ScopedSandbox

TIMEOUT = 60


def _get(url: str, headers: dict[str, str], **params: str) -> requests.Response:
    return requests.get(url, headers=headers, params=params or None, timeout=TIMEOUT)


def _entries(bundle: dict[str, Any], mode: str | None = None) -> list[dict[str, Any]]:
    return [
        e["resource"]
        for e in bundle.get("entry", [])
        if "resource" in e and (mode is None or e.get("search", {}).get("mode") == mode)
    ]


def _patient_of(resource: dict[str, Any]) -> str | None:
    if resource["resourceType"] == "Patient":
        return str(resource["id"])
    reference = (resource.get("subject") or {}).get("reference", "")
    return reference.split("/")[-1] if reference else None


def _assert_only(bundle: dict[str, Any], patient: str) -> list[dict[str, Any]]:
    resources = [r for r in _entries(bundle) if r["resourceType"] not in ("OperationOutcome",)]
    owners = {_patient_of(r) for r in resources if r["resourceType"] != "Endpoint"}
    assert owners <= {patient}, f"resources of other patients: {owners - {patient}}"
    return resources


@pytest.fixture(scope="module")
def sandbox(scoped_sandbox: ScopedSandbox) -> ScopedSandbox:
    return scoped_sandbox


@pytest.fixture(scope="module")
def token_a(sandbox: ScopedSandbox) -> dict[str, str]:
    return sandbox.headers("clinic-a", "patient/*.rs")


@pytest.fixture(scope="module")
def token_system(sandbox: ScopedSandbox) -> dict[str, str]:
    return sandbox.headers("system", "system/*.rs")


# --------------------------------------------------------------------------- FHIR read


@pytest.mark.parametrize("rtype", ["Patient", "ImagingStudy", "Observation"])
def test_fhir_read_of_patient_b_is_forbidden(
    sandbox: ScopedSandbox, token_a: dict[str, str], rtype: str
) -> None:
    a, b = sandbox.a, sandbox.b
    own = a.id if rtype == "Patient" else a.resources[rtype][0]
    other = b.id if rtype == "Patient" else b.resources[rtype][0]
    assert _get(f"{sandbox.fhir}/{rtype}/{own}", token_a).status_code == 200
    refused = _get(f"{sandbox.fhir}/{rtype}/{other}", token_a)
    assert refused.status_code == 403
    assert refused.json()["resourceType"] == "OperationOutcome"
    assert other not in refused.text or "does not grant" in refused.text
    assert "identifier" not in refused.text  # nothing of the resource itself


def test_fhir_vread_and_history_of_patient_b_are_forbidden(
    sandbox: ScopedSandbox, token_a: dict[str, str], token_system: dict[str, str]
) -> None:
    b = sandbox.b
    assert _get(f"{sandbox.fhir}/Patient/{b.id}/_history/1", token_system).status_code == 200
    assert _get(f"{sandbox.fhir}/Patient/{b.id}/_history/1", token_a).status_code == 403
    assert _get(f"{sandbox.fhir}/Patient/{sandbox.a.id}/_history/1", token_a).status_code == 200
    for path in (f"Patient/{b.id}/_history", "Patient/_history", "_history"):
        assert _get(f"{sandbox.fhir}/{path}", token_system).status_code == 200
        assert _get(f"{sandbox.fhir}/{path}", token_a).status_code == 403, path


def test_conditional_read_does_not_reveal_versions_of_patient_b(
    sandbox: ScopedSandbox, token_a: dict[str, str], token_system: dict[str, str]
) -> None:
    url = f"{sandbox.fhir}/Patient/{sandbox.b.id}"
    etag = _get(url, token_system).headers["ETag"]
    refused = requests.get(url, headers={**token_a, "If-None-Match": etag}, timeout=TIMEOUT)
    assert refused.status_code == 403


# --------------------------------------------------------------------------- FHIR search


def test_searches_return_only_patient_a(
    sandbox: ScopedSandbox, token_a: dict[str, str], token_system: dict[str, str]
) -> None:
    a = sandbox.a
    everyone = _get(f"{sandbox.fhir}/Patient", token_system, _count="1000").json()
    assert everyone["total"] > 2
    mine = _get(f"{sandbox.fhir}/Patient", token_a, _count="1000").json()
    assert mine["total"] == 1
    assert [p["id"] for p in _assert_only(mine, a.id)] == [a.id]
    for rtype in ("ImagingStudy", "Observation", "Condition", "Encounter", "DiagnosticReport"):
        bundle = _get(f"{sandbox.fhir}/{rtype}", token_a, _count="1000").json()
        found = _assert_only(bundle, a.id)
        assert sorted(r["id"] for r in found) == sorted(a.resources[rtype]), rtype
        assert bundle["total"] == len(a.resources[rtype])
    count = _get(f"{sandbox.fhir}/Observation", token_a, _summary="count").json()
    assert count["total"] == len(a.resources["Observation"])


@pytest.mark.parametrize(
    "query",
    [
        {"patient": "{b}"},
        {"patient": "Patient/{b}"},
        {"subject": "Patient/{b}"},
        {"subject:Patient": "{b}"},
    ],
)
def test_searching_patient_b_by_reference_is_forbidden(
    sandbox: ScopedSandbox, token_a: dict[str, str], query: dict[str, str]
) -> None:
    params = {k: v.format(b=sandbox.b.id) for k, v in query.items()}
    refused = _get(f"{sandbox.fhir}/ImagingStudy", token_a, **params)
    assert refused.status_code == 403
    assert _get(f"{sandbox.fhir}/Patient", token_a, _id=sandbox.b.id).status_code == 403
    own = {k: v.replace(sandbox.b.id, sandbox.a.id) for k, v in params.items()}
    bundle = _get(f"{sandbox.fhir}/ImagingStudy", token_a, **own).json()
    assert bundle["total"] == len(sandbox.a.resources["ImagingStudy"])


def test_post_search_is_scoped_too(sandbox: ScopedSandbox, token_a: dict[str, str]) -> None:
    url = f"{sandbox.fhir}/Observation/_search"
    bundle = requests.post(url, headers=token_a, data={"_count": "1000"}, timeout=TIMEOUT)
    assert bundle.status_code == 200
    assert bundle.json()["total"] == len(sandbox.a.resources["Observation"])
    _assert_only(bundle.json(), sandbox.a.id)
    refused = requests.post(url, headers=token_a, data={"patient": sandbox.b.id}, timeout=TIMEOUT)
    assert refused.status_code == 403


def test_includes_never_bring_in_patient_b(
    sandbox: ScopedSandbox, token_a: dict[str, str], token_system: dict[str, str]
) -> None:
    a = sandbox.a
    params = {"_count": "1000", "_include": ["ImagingStudy:subject", "ImagingStudy:encounter"]}
    url = f"{sandbox.fhir}/ImagingStudy"
    everything = requests.get(url, headers=token_system, params=params, timeout=TIMEOUT).json()
    all_included = _entries(everything, "include")
    assert {_patient_of(r) for r in all_included} >= {a.id, sandbox.b.id}
    mine = requests.get(url, headers=token_a, params=params, timeout=TIMEOUT).json()
    _assert_only(mine, a.id)
    expected = {(r["resourceType"], r["id"]) for r in all_included if _patient_of(r) == a.id}
    assert {(r["resourceType"], r["id"]) for r in _entries(mine, "include")} == expected
    assert ("Patient", a.id) in expected
    revinclude = {
        "_id": a.id,
        "_revinclude": ["ImagingStudy:patient", "Observation:subject", "Condition:patient"],
    }
    bundle = requests.get(
        f"{sandbox.fhir}/Patient", headers=token_a, params=revinclude, timeout=TIMEOUT
    ).json()
    kinds = {r["resourceType"] for r in _entries(bundle, "include")}
    assert {"ImagingStudy", "Observation"} <= kinds
    _assert_only(bundle, a.id)


@pytest.mark.parametrize(
    ("path", "params", "leak"),
    [
        ("Observation", {"_id": "xref-a", "_include": "Observation:performer"}, "Patient/{b}"),
        (
            "Observation",
            {"_id": "xref-a", "_include": "Observation:has-member"},
            "Observation/xref-b",
        ),
        ("Patient", {"_id": "{a}", "_revinclude": "Observation:performer"}, "Observation/xref-b"),
    ],
)
def test_includes_across_patients_are_left_out(
    sandbox: ScopedSandbox,
    token_a: dict[str, str],
    token_system: dict[str, str],
    path: str,
    params: dict[str, str],
    leak: str,
) -> None:
    """References that cross patients (the fixture wrote two) never bring B's data in."""
    filled = {k: v.format(a=sandbox.a.id) for k, v in params.items()}
    leaked = leak.format(b=sandbox.b.id)
    url = f"{sandbox.fhir}/{path}"

    def included(headers: dict[str, str]) -> set[str]:
        bundle = _get(url, headers, **filled).json()
        return {f"{r['resourceType']}/{r['id']}" for r in _entries(bundle, "include")}

    assert leaked in included(token_system)  # the reference is there …
    assert leaked not in included(token_a)  # … and A's token does not follow it
    assert len(_entries(_get(url, token_a, **filled).json(), "match")) == 1


def test_iterated_includes_stay_in_the_compartment(
    sandbox: ScopedSandbox, token_a: dict[str, str]
) -> None:
    params = {
        "_count": "1000",
        "_include": "Observation:patient",
        "_revinclude:iterate": "ImagingStudy:patient",
        "_include:iterate": "ImagingStudy:endpoint",
    }
    bundle = requests.get(
        f"{sandbox.fhir}/Observation", headers=token_a, params=params, timeout=TIMEOUT
    ).json()
    found = _assert_only(bundle, sandbox.a.id)
    assert "Endpoint" in {r["resourceType"] for r in found}  # service configuration


def test_chained_and_has_searches_stay_in_the_compartment(
    sandbox: ScopedSandbox, token_a: dict[str, str], token_system: dict[str, str]
) -> None:
    b_patient = _get(f"{sandbox.fhir}/Patient/{sandbox.b.id}", token_system).json()
    b_identifier = b_patient["identifier"][0]["value"]
    url = f"{sandbox.fhir}/ImagingStudy"
    # the all-access client finds B's studies through the chain …
    found = _get(url, token_system, **{"patient.identifier": b_identifier}).json()
    assert found["total"] == len(sandbox.b.resources["ImagingStudy"]) > 0
    # … patient A's client does not
    assert _get(url, token_a, **{"patient.identifier": b_identifier}).json()["total"] == 0
    a_identifier = _get(f"{sandbox.fhir}/Patient/{sandbox.a.id}", token_a).json()["identifier"]
    own = _get(url, token_a, **{"subject:Patient.identifier": a_identifier[0]["value"]}).json()
    assert own["total"] == len(sandbox.a.resources["ImagingStudy"])
    study_b = sandbox.b.resources["ImagingStudy"][0]
    has = _get(f"{sandbox.fhir}/Patient", token_a, **{"_has:ImagingStudy:patient:_id": study_b})
    assert has.status_code == 200 and has.json()["total"] == 0
    has_all = _get(
        f"{sandbox.fhir}/Patient", token_system, **{"_has:ImagingStudy:patient:_id": study_b}
    )
    assert has_all.json()["total"] == 1


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("Observation", {"performer:Patient.identifier": "x"}),
        ("Patient", {"link:Patient.gender": "male"}),
        ("Endpoint", {"_has:ImagingStudy:endpoint:patient": "Patient/{b}"}),
        ("Patient", {"_has:Observation:performer:code": "x"}),
    ],
)
def test_searches_that_could_reach_other_patients_are_refused(
    sandbox: ScopedSandbox, token_a: dict[str, str], path: str, params: dict[str, str]
) -> None:
    filled = {k: v.format(b=sandbox.b.id) for k, v in params.items()}
    refused = _get(f"{sandbox.fhir}/{path}", token_a, **filled)
    assert refused.status_code == 403
    assert "other patients" in refused.json()["issue"][0]["diagnostics"]


def test_paging_and_snapshots_stay_in_the_compartment(
    sandbox: ScopedSandbox, token_a: dict[str, str], token_system: dict[str, str]
) -> None:
    # a paging link of the all-access client's search, followed with A's token
    first = _get(f"{sandbox.fhir}/Observation", token_system, _count="2").json()
    next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    assert "_snapshot=" in next_url
    page = requests.get(next_url, headers=token_a, timeout=TIMEOUT).json()
    _assert_only(page, sandbox.a.id)
    assert page["total"] == len(sandbox.a.resources["Observation"])
    # A's own paging covers exactly A's observations
    seen: list[str] = []
    url: str | None = f"{sandbox.fhir}/Observation?_count=2"
    for _ in range(500):
        if url is None:
            break
        bundle = requests.get(url, headers=token_a, timeout=TIMEOUT).json()
        seen += [r["id"] for r in _assert_only(bundle, sandbox.a.id)]
        url = next((lk["url"] for lk in bundle["link"] if lk["relation"] == "next"), None)
    assert sorted(seen) == sorted(sandbox.a.resources["Observation"])


def test_patient_tokens_cannot_write(sandbox: ScopedSandbox, token_a: dict[str, str]) -> None:
    patient = _get(f"{sandbox.fhir}/Patient/{sandbox.a.id}", token_a).json()
    put = requests.put(
        f"{sandbox.fhir}/Patient/{sandbox.a.id}", headers=token_a, json=patient, timeout=TIMEOUT
    )
    assert put.status_code == 403
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": []}
    assert (
        requests.post(sandbox.fhir, headers=token_a, json=bundle, timeout=TIMEOUT).status_code
        == 403
    )


def test_imaging_only_scope_reads_studies_and_their_endpoints(sandbox: ScopedSandbox) -> None:
    """SMART Imaging Access: patient/ImagingStudy.rs, ImagingStudy?patient=…&_include=endpoint."""
    headers = sandbox.headers("imaging-a", "patient/ImagingStudy.rs")
    bundle = _get(
        f"{sandbox.fhir}/ImagingStudy",
        headers,
        patient=sandbox.a.id,
        _include="ImagingStudy:endpoint",
    ).json()
    kinds = [r["resourceType"] for r in _entries(bundle)]
    assert kinds.count("ImagingStudy") == len(sandbox.a.resources["ImagingStudy"])
    assert "Endpoint" in kinds
    refused = _get(f"{sandbox.fhir}/Patient/{sandbox.a.id}", headers)
    assert refused.status_code == 403
    assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]
    # _include of a type outside the scope is left out
    with_subject = _get(
        f"{sandbox.fhir}/ImagingStudy", headers, _include="ImagingStudy:subject"
    ).json()
    assert "Patient" not in {r["resourceType"] for r in _entries(with_subject)}
    study = sandbox.a.instance[0]
    assert _get(f"{sandbox.dicomweb}/studies/{study}/metadata", headers).status_code == 200


# --------------------------------------------------------------------------- DICOMweb


def _uids(items: list[dict[str, Any]], tag: str = "0020000D") -> set[str]:
    return {item[tag]["Value"][0] for item in items}


@pytest.mark.parametrize("level", ["studies", "series", "instances"])
def test_qido_returns_only_patient_a(
    sandbox: ScopedSandbox,
    token_a: dict[str, str],
    token_system: dict[str, str],
    level: str,
) -> None:
    url = f"{sandbox.dicomweb}/{level}"
    everything = _get(url, token_system, includefield="00100020").json()
    assert _uids(everything) >= set(sandbox.a.studies) | set(sandbox.b.studies)
    mine = _get(url, token_a, includefield="00100020").json()
    assert mine and _uids(mine) <= set(sandbox.a.studies)
    assert {i["00100020"]["Value"][0] for i in mine} == {sandbox.a.dicom_patient_id}
    by_id = _get(url, token_a, PatientID=sandbox.b.dicom_patient_id).json()
    assert by_id == []
    by_uid = _get(url, token_a, StudyInstanceUID=sandbox.b.studies[0]).json()
    assert by_uid == []


def test_nested_qido_of_a_study_of_patient_b_is_forbidden(
    sandbox: ScopedSandbox, token_a: dict[str, str]
) -> None:
    study, series, _ = sandbox.b.instance
    own_study, own_series, _ = sandbox.a.instance
    for template in (
        "studies/{s}/series",
        "studies/{s}/instances",
        "studies/{s}/series/{se}/instances",
    ):
        assert (
            _get(
                f"{sandbox.dicomweb}/{template.format(s=own_study, se=own_series)}", token_a
            ).status_code
            == 200
        )
        refused = _get(f"{sandbox.dicomweb}/{template.format(s=study, se=series)}", token_a)
        assert refused.status_code == 403, template
        assert refused.headers["Content-Type"].startswith("application/problem+json")


WADO_PATHS = [
    ("studies/{s}", "multipart/related; type=application/dicom"),
    ("studies/{s}/series/{se}", "multipart/related; type=application/dicom"),
    ("studies/{s}/series/{se}/instances/{i}", "multipart/related; type=application/dicom"),
    ("studies/{s}/metadata", "application/dicom+json"),
    ("studies/{s}/series/{se}/metadata", "application/dicom+json"),
    ("studies/{s}/series/{se}/instances/{i}/metadata", "application/dicom+json"),
    (
        "studies/{s}/series/{se}/instances/{i}/frames/1",
        "multipart/related; type=application/octet-stream",
    ),
    (
        "studies/{s}/series/{se}/instances/{i}/pixeldata",
        "multipart/related; type=application/octet-stream",
    ),
    (
        "studies/{s}/series/{se}/instances/{i}/bulkdata/7FE00010",
        "multipart/related; type=application/octet-stream",
    ),
    ("studies/{s}/rendered", "image/png"),
    ("studies/{s}/series/{se}/rendered", "image/png"),
    ("studies/{s}/series/{se}/instances/{i}/rendered", "image/png"),
    ("studies/{s}/series/{se}/instances/{i}/frames/1/rendered", "image/png"),
    ("studies/{s}/thumbnail", "image/png"),
    ("studies/{s}/series/{se}/thumbnail", "image/png"),
    ("studies/{s}/series/{se}/instances/{i}/thumbnail", "image/png"),
    ("studies/{s}/series/{se}/instances/{i}/frames/1/thumbnail", "image/png"),
]


@pytest.mark.parametrize(("template", "accept"), WADO_PATHS)
def test_wado_of_patient_b_is_forbidden(
    sandbox: ScopedSandbox,
    token_a: dict[str, str],
    token_system: dict[str, str],
    template: str,
    accept: str,
) -> None:
    s, se, i = sandbox.b.instance
    url = f"{sandbox.dicomweb}/{template.format(s=s, se=se, i=i)}"
    allowed = requests.get(url, headers={**token_system, "Accept": accept}, timeout=TIMEOUT)
    assert allowed.status_code == 200, allowed.text[:300]
    refused = requests.get(url, headers={**token_a, "Accept": accept}, timeout=TIMEOUT)
    assert refused.status_code == 403
    assert len(refused.content) < 1000 and b"DICM" not in refused.content
    own_s, own_se, own_i = sandbox.a.instance
    own = f"{sandbox.dicomweb}/{template.format(s=own_s, se=own_se, i=own_i)}"
    assert (
        requests.get(own, headers={**token_a, "Accept": accept}, timeout=TIMEOUT).status_code == 200
    )


def test_patient_b_token_is_symmetric(sandbox: ScopedSandbox) -> None:
    """Patient B's client (RS384 key) sees B's pixels and not A's."""
    headers = sandbox.headers("clinic-b", "patient/*.rs")
    s, se, i = sandbox.a.instance
    metadata = f"{sandbox.dicomweb}/studies/{s}/series/{se}/instances/{i}/metadata"
    assert _get(metadata, headers).status_code == 403
    own = sandbox.b.instance
    own_metadata = (
        f"{sandbox.dicomweb}/studies/{own[0]}/series/{own[1]}/instances/{own[2]}/metadata"
    )
    assert _get(own_metadata, headers).status_code == 200
    assert _uids(_get(f"{sandbox.dicomweb}/studies", headers).json()) == set(sandbox.b.studies)


def test_stow_needs_an_all_access_write_scope(
    sandbox: ScopedSandbox, token_a: dict[str, str], token_system: dict[str, str]
) -> None:
    body = b"--x\r\nContent-Type: application/dicom\r\n\r\nnot dicom\r\n--x--\r\n"
    headers = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=x'}
    url = f"{sandbox.dicomweb}/studies"
    for token in (token_a, token_system):  # system/*.rs: read only
        response = requests.post(url, headers={**token, **headers}, data=body, timeout=TIMEOUT)
        assert response.status_code == 403
        assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    writer = sandbox.headers("system", "system/*.cruds")
    response = requests.post(url, headers={**writer, **headers}, data=body, timeout=TIMEOUT)
    assert response.status_code not in (401, 403)  # past the guard: the store judges the body


# --------------------------------------------------------------------------- authentication


@pytest.mark.parametrize(
    "path", ["fhir/Patient", "fhir/ImagingStudy", "dicom-web/studies", "dicom-web/instances"]
)
@pytest.mark.parametrize(
    ("authorization", "error"),
    [
        (None, None),
        ("Bearer not-a-token", "invalid_token"),
        ("Basic dXNlcjpwYXNz", "invalid_request"),
        ("Bearer", "invalid_request"),
    ],
)
def test_requests_without_a_valid_token_get_401(
    sandbox: ScopedSandbox, path: str, authorization: str | None, error: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = requests.get(f"{sandbox.origin}/{path}", headers=headers, timeout=TIMEOUT)
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="imagingkit"')
    if error:
        assert f'error="{error}"' in challenge


def test_discovery_and_capability_statement_are_public(sandbox: ScopedSandbox) -> None:
    config = requests.get(f"{sandbox.fhir}/.well-known/smart-configuration", timeout=TIMEOUT)
    assert config.status_code == 200
    document = config.json()
    assert document["token_endpoint"] == sandbox.token_url
    assert "private_key_jwt" in document["token_endpoint_auth_methods_supported"]
    assert set(document["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}
    assert "smart-imaging-access" in document["capabilities"]
    assert requests.get(f"{sandbox.fhir}/metadata", timeout=TIMEOUT).status_code == 200
    preflight = requests.options(
        f"{sandbox.dicomweb}/studies",
        headers={"Origin": "http://viewer.test", "Access-Control-Request-Method": "GET"},
        timeout=TIMEOUT,
    )
    assert preflight.status_code == 204


# --------------------------------------------------------------------------- PATCH, system search


def test_patch_needs_the_update_scope(sandbox: ScopedSandbox, token_a: dict[str, str]) -> None:
    """JSON Patch writes like an update (FHIR R4 http "patch"): read scopes are not enough."""
    url = f"{sandbox.fhir}/Observation/xref-a"
    patch = [{"op": "add", "path": "/comment", "value": "patched under auth"}]
    headers = {"Content-Type": "application/json-patch+json"}
    for reader in (token_a, sandbox.headers("system", "system/*.rs")):
        refused = requests.patch(url, headers={**headers, **reader}, json=patch, timeout=TIMEOUT)
        assert refused.status_code == 403, refused.text
    writer = sandbox.headers("system", "system/*.rus")
    done = requests.patch(url, headers={**headers, **writer}, json=patch, timeout=TIMEOUT)
    assert done.status_code == 200, done.text
    assert done.json()["comment"] == "patched under auth"
    unauthenticated = requests.patch(url, headers=headers, json=patch, timeout=TIMEOUT)
    assert unauthenticated.status_code == 401


def test_system_search_needs_search_scope_on_every_type(sandbox: ScopedSandbox) -> None:
    """``GET [base]?_type=…`` (R4 search §3.1.1.3) is guarded like each type's search."""
    studies_only = sandbox.headers("system", "system/ImagingStudy.rs")
    allowed = _get(sandbox.fhir, studies_only, _type="ImagingStudy")
    assert allowed.status_code == 200, allowed.text
    assert {r["resourceType"] for r in _entries(allowed.json())} == {"ImagingStudy"}
    assert _get(sandbox.fhir, studies_only, _type="ImagingStudy,Patient").status_code == 403
    assert _get(sandbox.fhir, studies_only).status_code == 403  # no _type: every type
    everything = _get(sandbox.fhir, sandbox.headers("system", "system/*.rs"), _type="Patient")
    assert everything.status_code == 200
    assert len(_entries(everything.json())) >= 2
    assert _get(sandbox.fhir, {}, _type="Patient").status_code == 401


def test_patient_tokens_cannot_search_the_whole_system(
    sandbox: ScopedSandbox, token_a: dict[str, str]
) -> None:
    for params in ({"_type": "Patient"}, {"_type": "ImagingStudy"}, {}):
        assert _get(sandbox.fhir, token_a, **params).status_code == 403
