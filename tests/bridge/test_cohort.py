"""Cohorts against the embedded FHIR store and a real FHIR engine (Medplum).

The same resources (the sandbox's synthetic record) are loaded into both. Each cohort must
give (1) exactly the studies an independent oracle computes from the resources, (2) the
same DataFrame whether the planner pushes joins to the server (chaining, ``_has``,
``_include`` on the embedded store) or makes them on the client (forced, and on Medplum,
which has no CapabilityStatement, no ``_has`` and no chaining), and (3) the same
DataFrame again from its provenance.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import threading
from collections.abc import Callable, Generator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pytest
import requests

import imagingkit
from imagingkit.config import Settings
from imagingkit.errors import (
    ConfigError,
    InvalidDateError,
    InvalidInputError,
    InvalidQueryError,
    InvalidUIDError,
)
from imagingkit.fhir.cohort import Cohort
from imagingkit.sandbox.clinical import transaction_bundles
from imagingkit.sandbox.clinical_scale import synthetic_record
from imagingkit.sandbox.fhir import FhirStore
from imagingkit.sandbox.fhir.testing import serving

Resource = dict[str, Any]
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
DICOMWEB = "http://127.0.0.1:9/dicom-web"  # an absolute address: the same on both servers
AS_OF = dt.date(2026, 1, 1)


@pytest.fixture(scope="module")
def resources() -> list[Resource]:
    return synthetic_record(160, seed=11, endpoint_address=DICOMWEB)


@pytest.fixture(scope="module")
def embedded(resources: list[Resource]) -> Generator[str, None, None]:
    folder = Path(tempfile.mkdtemp(prefix="ik-cohort-"))
    store = FhirStore(folder / "fhir.sqlite", settings=Settings(data_dir=folder))
    try:
        with serving([store]) as origin:
            base = f"{origin}/fhir"
            for bundle in transaction_bundles(resources):
                response = requests.post(base, json=bundle, timeout=120)
                assert response.status_code == 200, response.text[:500]
            yield base
    finally:
        store.close()


# --------------------------------------------------------------------------- oracle


def _codes(concept: Any) -> set[tuple[str | None, str]]:
    return {(c.get("system"), c["code"]) for c in (concept or {}).get("coding", [])}


def oracle(
    resources: list[Resource],
    *,
    patient: Callable[[Resource], bool] = lambda p: True,
    study: Callable[[Resource], bool] = lambda s: True,
    conditions: set[tuple[str, str]] | None = None,
    observation: tuple[str, float | None, float | None] | None = None,
) -> set[str]:
    """Study ids meeting the criteria, computed directly from the resources."""
    patients = {
        f"Patient/{p['id']}" for p in resources if p["resourceType"] == "Patient" and patient(p)
    }
    if conditions is not None:
        patients &= {
            c["subject"]["reference"]
            for c in resources
            if c["resourceType"] == "Condition" and _codes(c.get("code")) & conditions
        }
    if observation is not None:
        code, low, high = observation
        hits = set()
        for o in resources:
            if o["resourceType"] != "Observation" or (LOINC, code) not in _codes(o.get("code")):
                continue
            value = (o.get("valueQuantity") or {}).get("value")
            if value is None:
                continue
            if (low is None or value >= low) and (high is None or value <= high):
                hits.add(o["subject"]["reference"])
        patients &= hits
    return {
        s["id"]
        for s in resources
        if s["resourceType"] == "ImagingStudy"
        and s["subject"]["reference"] in patients
        and study(s)
    }


def _series_modalities(s: Resource) -> set[str]:
    return {x["modality"]["code"] for x in s.get("series", [])}


def _born_between(low: str, high: str) -> Callable[[Resource], bool]:
    return lambda p: low <= p.get("birthDate", "0000") <= high


CASES: dict[str, tuple[Callable[[Cohort], Cohort], dict[str, Any]]] = {
    "female-ct": (
        lambda c: c.patient(gender="female").imaging(modality="CT"),
        {
            "patient": lambda p: p["gender"] == "female",
            "study": lambda s: "CT" in _series_modalities(s),
        },
    ),
    "lung-nodule-by-age": (
        lambda c: c.patient(age=(40, 90), as_of=AS_OF).condition(f"{SNOMED}|427359005"),
        {
            "patient": _born_between("1935-01-02", "1986-01-01"),
            "conditions": {(SNOMED, "427359005")},
        },
    ),
    "hemoglobin-range-mr": (
        lambda c: c.observation(f"{LOINC}|718-7", value=(12.05, 14.95)).imaging(
            modality=["MR", "CR"]
        ),
        {
            "observation": ("718-7", 12.05, 14.95),
            "study": lambda s: bool(_series_modalities(s) & {"MR", "CR"}),
        },
    ),
    "chest-2015-2020-described": (
        lambda c: c.imaging(
            body_site="CHEST", started=("2015-01-01", "2020-12-31"), description="CHEST"
        ),
        {
            "study": lambda s: (
                any(x.get("bodySite", {}).get("code") == "51185008" for x in s["series"])
                and "2015-01-01" <= s["started"][:10] <= "2020-12-31"
                and (
                    "chest" in s.get("description", "").lower()
                    or any("chest" in x.get("description", "").lower() for x in s["series"])
                )
            ),
        },
    ),
    "male-two-conditions-born-1950s": (
        lambda c: c.patient(gender="male", birth_date=("1950", "1959-12-31")).condition(
            "233604007", "25064002", system=SNOMED
        ),
        {
            "patient": lambda p: (
                p["gender"] == "male" and "1950" <= p.get("birthDate", "")[:4] <= "1959"
            ),
            "conditions": {(SNOMED, "233604007"), (SNOMED, "25064002")},
        },
    ),
}


def _frame(
    base: str, build: Callable[[Cohort], Cohort], joins: str, level: str = "series"
) -> pd.DataFrame:
    bridge = imagingkit.connect(base, joins=joins)  # type: ignore[arg-type]
    return build(bridge.cohort()).studies(level=level)


def _comparable(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.reset_index(drop=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_cohort_matches_oracle_with_server_and_client_joins(
    case: str, embedded: str, resources: list[Resource]
) -> None:
    build, expected = CASES[case]
    server = _frame(embedded, build, "auto")
    client = _frame(embedded, build, "client")
    want = oracle(resources, **expected)
    assert want, f"{case}: the oracle finds nothing, the case tests nothing"
    assert set(server["imaging_study_id"]) == want
    pd.testing.assert_frame_equal(_comparable(server), _comparable(client))


def test_server_plan_uses_has_chaining_and_include(embedded: str) -> None:
    bridge = imagingkit.connect(embedded)
    text = bridge.cohort().patient(gender="female").condition(f"{SNOMED}|427359005").explain()
    assert "_has:Condition:subject:code=" in text
    assert "_include=ImagingStudy:endpoint" in text
    chained = bridge.cohort().patient(gender="male").imaging(modality="CT").explain()
    assert "patient.gender=male" in chained
    client_text = (
        imagingkit.connect(embedded, joins="client")
        .cohort()
        .patient(gender="female")
        .condition(f"{SNOMED}|427359005")
        .explain()
    )
    assert "_has:" not in client_text and "Condition?code=" in client_text


def test_count_patients_and_levels(embedded: str, resources: list[Resource]) -> None:
    cohort = imagingkit.connect(embedded).cohort().patient(gender="female").imaging(modality="CT")
    studies = cohort.studies(level="study")
    series = cohort.studies(level="series")
    instances = cohort.studies(level="instance")
    assert cohort.count("study") == len(studies) == studies["StudyInstanceUID"].nunique()
    assert set(series["Modality"].astype(str)) == {"CT"}  # matching series only
    every = cohort.studies(level="series", matching_series_only=False)
    assert len(every) >= len(series) and "CT" in set(every["Modality"].astype(str))
    assert len(instances) == series["NumberOfSeriesRelatedInstances"].sum()
    patients = cohort.patients()
    assert cohort.count() == len(patients) == studies["patient_ref"].nunique()
    assert set(patients["PatientSex"].astype(str)) == {"F"}
    everyone = imagingkit.connect(embedded).cohort()
    n_patients = sum(r["resourceType"] == "Patient" for r in resources)
    assert everyone.count() == n_patients
    assert everyone.count("study") == sum(r["resourceType"] == "ImagingStudy" for r in resources)


def test_provenance_pulls_the_same_cohort_again(embedded: str) -> None:
    frame = CASES["hemoglobin-range-mr"][0](imagingkit.connect(embedded).cohort()).studies()
    provenance = frame.attrs["imagingkit"]
    assert provenance["fhir"] == embedded and provenance["level"] == "series"
    again = imagingkit.from_provenance(provenance)
    pd.testing.assert_frame_equal(frame, again)
    # JSON round trip, as a notebook would save it
    pd.testing.assert_frame_equal(
        frame, imagingkit.from_provenance(json.loads(json.dumps(provenance)))
    )
    patients = imagingkit.connect(embedded).cohort().patient(gender="male").patients()
    pd.testing.assert_frame_equal(
        patients, imagingkit.from_provenance(patients.attrs["imagingkit"])
    )
    with pytest.raises(InvalidInputError, match="provenance"):
        imagingkit.from_provenance({"format": "something else"})


def test_empty_cohort_keeps_columns_and_dtypes(embedded: str) -> None:
    cohort = imagingkit.connect(embedded).cohort().imaging(study_uid="1.2.3.4.5.6.7.8.9")
    frame = cohort.studies()
    full = imagingkit.connect(embedded).cohort().imaging(modality="CT").studies()
    assert frame.empty
    assert list(frame.columns) == list(full.columns)
    assert frame.dtypes.astype(str).tolist() == full.dtypes.astype(str).tolist()


@pytest.mark.parametrize(
    ("build", "error", "named"),
    [
        (lambda c: c.imaging(study_uid="1.2.abc"), InvalidUIDError, "1.2.abc"),
        (lambda c: c.imaging(study_uid="1.2.3; DROP"), InvalidUIDError, "1.2.3; DROP"),
        (lambda c: c.condition("snomed|12 34 "), InvalidQueryError, "12 34 "),
        (lambda c: c.condition("a,b"), InvalidQueryError, "a,b"),
        (lambda c: c.patient(birth_date=("1950-13-01", None)), InvalidDateError, "1950-13-01"),
        (lambda c: c.patient(birth_date=("yesterday", None)), InvalidDateError, "yesterday"),
        (lambda c: c.imaging(started=("2020-02-30", None)), InvalidDateError, "2020-02-30"),
        (lambda c: c.patient(gender="F"), InvalidQueryError, "'F'"),
        (lambda c: c.imaging(modality="ct"), InvalidQueryError, "'ct'"),
        (lambda c: c.imaging(body_site="elbowish"), InvalidQueryError, "elbowish"),
        (lambda c: c.patient(age=(80, 40)), InvalidQueryError, "80, 40"),
        (lambda c: c.observation("718-7", value=("high", None)), InvalidQueryError, "high"),
        (lambda c: c.imaging(description="  "), InvalidQueryError, "description"),
    ],
)
def test_bad_input_names_the_value(embedded: str, build: Any, error: type, named: str) -> None:
    cohort = imagingkit.connect(embedded).cohort()
    with pytest.raises(error) as caught:
        build(cohort)
    assert named in str(caught.value)


def test_bad_level_and_bad_connect() -> None:
    with pytest.raises(InvalidQueryError, match="'patients'"):
        imagingkit.connect("http://127.0.0.1:9/fhir").cohort().studies(level="patients")
    with pytest.raises(ConfigError):
        imagingkit.connect("http://127.0.0.1:9/fhir", joins="sometimes")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- Medplum


@pytest.fixture(scope="module")
def medplum(resources: list[Resource]) -> Generator[str, None, None]:
    """Medplum's FhirRouter (tests/medplum launcher) loaded with the same resources."""
    from medplum.launcher import medplum_missing_reason, put_bundles, start_medplum

    reason = medplum_missing_reason()
    if reason:
        pytest.skip(reason)
    server = start_medplum()
    try:
        put_bundles(server, resources)
        yield server.url.rstrip("/")
    finally:
        server.stop()


@pytest.mark.medplum
@pytest.mark.parametrize("case", sorted(CASES))
def test_medplum_gives_the_same_dataframe(
    case: str, embedded: str, medplum: str, resources: list[Resource]
) -> None:
    """Medplum has no CapabilityStatement, no ``_has`` and no chaining: every join is made
    on the client, and the frame is the embedded store's, row for row."""
    build, expected = CASES[case]
    theirs = _frame(medplum, build, "auto")
    ours = _frame(embedded, build, "auto")
    assert set(theirs["imaging_study_id"]) == oracle(resources, **expected)
    pd.testing.assert_frame_equal(_comparable(ours), _comparable(theirs))


@pytest.mark.medplum
def test_medplum_plan_falls_back_to_client_joins(medplum: str) -> None:
    bridge = imagingkit.connect(medplum)
    assert not bridge.capabilities().declared
    text = bridge.cohort().patient(gender="female").condition(f"{SNOMED}|427359005").explain()
    assert "_has:" not in text and "patient.gender" not in text and "_include" not in text
    assert "no CapabilityStatement" in text
    instances = CASES["female-ct"][0](bridge.cohort()).studies(level="instance")
    ours = CASES["female-ct"][0](bridge.cohort()).studies(level="series")
    assert len(instances) == ours["NumberOfSeriesRelatedInstances"].sum()


# --------------------------------------------------------------------------- a server that
# declares _has but refuses it


class _Refusing(BaseHTTPRequestHandler):
    """Forwards GETs to the embedded store, answering 400 to any ``_has`` search."""

    upstream = ""
    refused: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        if "_has" in self.path:
            type(self).refused.append(self.path)
            body = json.dumps(
                {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {"severity": "error", "code": "not-supported", "diagnostics": "no _has"}
                    ],
                }
            ).encode()
            status = 400
        else:
            answer = requests.get(self.upstream + self.path, timeout=120)
            body, status = answer.content, answer.status_code
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return None


def test_server_refusing_a_declared_search_falls_back_to_client_joins(
    embedded: str, resources: list[Resource]
) -> None:
    origin = embedded.rsplit("/fhir", 1)[0]
    _Refusing.upstream = origin
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/fhir"
        build, expected = CASES["lung-nodule-by-age"]
        bridge = imagingkit.connect(base)
        assert bridge.capabilities().reverse_chaining  # it declares _has ...
        frame = build(bridge.cohort()).studies()
        assert _Refusing.refused  # ... refuses it, and the cohort is still right
        assert set(frame["imaging_study_id"]) == oracle(resources, **expected)
        reference = _frame(embedded, build, "auto")
        pd.testing.assert_frame_equal(
            _comparable(frame).drop(columns=["dicomweb_url"]),
            _comparable(reference).drop(columns=["dicomweb_url"]),
        )
    finally:
        server.shutdown()
        thread.join(10)
