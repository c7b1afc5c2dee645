"""The sandbox's FHIR R4 record (issue 3 point 1): valid R4, linked, true to the DICOM files.

Validation uses an independent implementation of the R4 (4.0.1) structure definitions, the
PyPI package ``fhir.resources`` 6.4 (its last release whose default model is R4; 7.x and
later are R5/R4B), plus the required value-set bindings it does not check. Consistency is
checked against the DICOM files read here with pydicom, not through imagingkit's index.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import warnings
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from imagingkit.config import Settings
from imagingkit.sandbox.clinical import (
    DICOMWEB_BASE_PLACEHOLDER,
    build_clinical_resources,
    load_into,
    sync_imaging_from_index,
    transaction_bundles,
)
from imagingkit.sandbox.clinical_imaging import (
    dicom_date,
    dicom_datetime,
    human_name,
    issuer_system,
)
from imagingkit.sandbox.clinical_scale import synthetic_record
from imagingkit.sandbox.dicom_index import DicomIndex
from imagingkit.sandbox.fhir import FhirStore
from imagingkit.sandbox.fhir.testing import serving

fhir_resources = pytest.importorskip("fhir.resources", reason="pip install 'fhir.resources==6.4.0'")

Resource = dict[str, Any]

#: Required bindings of the elements we write (R4 valuesets), which the validator skips.
REQUIRED_CODES: dict[tuple[str, str], set[str]] = {
    ("Patient", "gender"): {"male", "female", "other", "unknown"},
    ("ImagingStudy", "status"): {
        "registered", "available", "cancelled", "entered-in-error", "unknown",
    },
    ("Encounter", "status"): {
        "planned", "arrived", "triaged", "in-progress", "onleave", "finished", "cancelled",
        "entered-in-error", "unknown",
    },
    ("Observation", "status"): {
        "registered", "preliminary", "final", "amended", "corrected", "cancelled",
        "entered-in-error", "unknown",
    },
    ("DiagnosticReport", "status"): {
        "registered", "partial", "preliminary", "final", "amended", "corrected", "appended",
        "cancelled", "entered-in-error", "unknown",
    },
    ("Endpoint", "status"): {"active", "suspended", "error", "off", "entered-in-error", "test"},
    ("Condition", "clinicalStatus"): {
        "active", "recurrence", "relapse", "inactive", "remission", "resolved",
    },
    ("Condition", "verificationStatus"): {
        "unconfirmed", "provisional", "differential", "confirmed", "refuted", "entered-in-error",
    },
}  # fmt: skip


def _codes(value: Any) -> set[str]:
    if isinstance(value, str):
        return {value}
    return {c["code"] for c in value.get("coding", [])}


def r4_problems(resource: Resource) -> list[str]:
    """Why *resource* is not valid FHIR R4 (empty when it is)."""
    problems = []
    try:
        fhir_resources.construct_fhir_element(resource["resourceType"], resource)
    except Exception as exc:  # the validator's pydantic ValidationError
        problems.append(str(exc))
    for (type_, element), allowed in REQUIRED_CODES.items():
        present = resource["resourceType"] == type_ and element in resource
        if present and not _codes(resource[element]) <= allowed:
            problems.append(f"{element}={resource[element]!r} outside its required value set")
    return problems


def as_served(resource: Resource) -> Resource:
    """*resource* as the store serves it: the Endpoint placeholder rendered as a URL."""
    if resource.get("address") == DICOMWEB_BASE_PLACEHOLDER:
        return {**resource, "address": "http://127.0.0.1:8042/dicom-web"}
    return resource


def references(node: Any) -> Iterator[str]:
    """Every ``Reference.reference`` inside *node*."""
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield node["reference"]
        for value in node.values():
            yield from references(value)
    elif isinstance(node, list):
        for item in node:
            yield from references(item)


def by_key(resources: list[Resource]) -> dict[str, Resource]:
    return {f"{r['resourceType']}/{r['id']}": r for r in resources}


def of_type(resources: list[Resource], type_: str) -> list[Resource]:
    return [r for r in resources if r["resourceType"] == type_]


# --------------------------------------------------------------------------- validator


def test_the_validator_is_r4() -> None:
    assert fhir_resources.__fhir_version__ == "4.0.1"


@pytest.mark.parametrize(
    "broken",
    [
        {"series": [{"modality": {"code": "CT"}}]},  # series.uid is 1..1
        {"started": "2020-13-01"},  # not a dateTime
        {"numberOfSeries": -1},  # unsignedInt
        {"modalities": []},  # no such element
    ],
)
def test_the_validator_rejects_broken_imaging_studies(broken: dict[str, Any]) -> None:
    study = {
        "resourceType": "ImagingStudy",
        "id": "x",
        "status": "available",
        "subject": {"reference": "Patient/p"},
        **broken,
    }
    assert r4_problems(study)


def test_the_value_set_check_rejects_an_unknown_code() -> None:
    assert r4_problems({"resourceType": "Patient", "id": "p", "gender": "F"})


# --------------------------------------------------------------------------- the sandbox


def _quiet_scan(index: DicomIndex) -> None:
    """Index the sandbox; its real-world files are deliberately odd, so pydicom warns."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        index.scan()


@pytest.fixture(scope="module")
def sandbox_record(sandbox_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Resource]:
    index = DicomIndex(tmp_path_factory.mktemp("clinical-index") / "index.sqlite", sandbox_dir)
    try:
        _quiet_scan(index)
        return build_clinical_resources(sandbox_dir, index)
    finally:
        index.close()


@pytest.fixture(scope="module")
def headers(sandbox_dir: Path) -> list[Dataset]:
    """Every DICOM file of the sandbox, read here with pydicom (no pixels)."""
    found = []
    for path in sorted(p for p in sandbox_dir.rglob("*") if p.is_file()):
        try:
            with warnings.catch_warnings():  # the real-world files are deliberately odd
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # cohort.json and any non-DICOM file
            continue
        if "StudyInstanceUID" in ds and "SOPInstanceUID" in ds:
            found.append(ds)
    assert found
    return found


@pytest.fixture(scope="module")
def cohort(sandbox_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((sandbox_dir / "cohort.json").read_text())
    return data


def test_sandbox_record_is_valid_r4(sandbox_record: list[Resource]) -> None:
    problems = {
        f"{r['resourceType']}/{r['id']}": p
        for r in sandbox_record
        if (p := r4_problems(as_served(r)))
    }
    assert not problems
    kinds = {r["resourceType"] for r in sandbox_record}
    assert kinds == {
        "Endpoint", "Patient", "ImagingStudy", "Encounter", "Condition", "Observation",
        "DiagnosticReport",
    }  # fmt: skip


def test_synthetic_record_is_valid_r4() -> None:
    record = synthetic_record(60, seed=11)
    problems = {f"{r['resourceType']}/{r['id']}": r4_problems(as_served(r)) for r in record}
    assert not {k: v for k, v in problems.items() if v}
    assert len(of_type(record, "ImagingStudy")) == 60


@pytest.mark.parametrize("record_name", ["sandbox", "synthetic"])
def test_every_reference_resolves(record_name: str, request: pytest.FixtureRequest) -> None:
    record = (
        request.getfixturevalue("sandbox_record")
        if record_name == "sandbox"
        else synthetic_record(40, seed=5)
    )
    known = by_key(record)
    assert len(known) == len(record), "ids are unique per type"
    dangling = {f"{r['resourceType']}/{r['id']}": ref for r in record for ref in references(r)}
    assert {k: v for k, v in dangling.items() if v not in known} == {}


def test_the_record_is_deterministic(
    sandbox_dir: Path, sandbox_record: list[Resource], tmp_path: Path
) -> None:
    index = DicomIndex(tmp_path / "again.sqlite", sandbox_dir)
    try:
        _quiet_scan(index)
        again = build_clinical_resources(sandbox_dir, index)
    finally:
        index.close()
    assert again == sandbox_record
    assert synthetic_record(30, seed=3) == synthetic_record(30, seed=3)
    assert synthetic_record(30, seed=3) != synthetic_record(30, seed=4)


def test_patients_agree_with_the_dicom_headers(
    sandbox_record: list[Resource], headers: list[Dataset]
) -> None:
    """identifier = PatientID (issuer as system), name, gender and birthDate as in DICOM."""
    patients = of_type(sandbox_record, "Patient")
    by_identifier = {
        (p["identifier"][0].get("system"), p["identifier"][0]["value"]): p
        for p in patients
        if "identifier" in p
    }
    sexes = {"M": "male", "F": "female", "O": "other"}
    for ds in headers:
        patient_id = str(ds.get("PatientID", "")).strip()
        if not patient_id:
            continue
        issuer = str(ds.get("IssuerOfPatientID", "")).strip()
        patient = by_identifier[(issuer_system(issuer), patient_id)]
        assert patient["gender"] == sexes.get(str(ds.get("PatientSex", "")).strip(), "unknown")
        assert patient.get("birthDate") == dicom_date(str(ds.get("PatientBirthDate", "")))
        name = ds.get("PatientName")
        if name and name.family_name:
            assert patient["name"][0]["family"] == name.family_name
        if name and name.given_name.strip():
            assert patient["name"][0]["given"][0] == name.given_name.split()[0]
    # the generated cohort's patients all carry the sandbox issuer
    assert {p["identifier"][0].get("system") for p in patients if "identifier" in p} >= {
        "urn:imagingkit:issuer:IMAGINGKIT-SANDBOX"
    }


def test_imaging_studies_agree_with_the_dicom_files(
    sandbox_record: list[Resource], headers: list[Dataset]
) -> None:
    """One ImagingStudy per Study Instance UID, with the files' series, instances and counts."""
    files: dict[str, dict[str, dict[str, Dataset]]] = defaultdict(lambda: defaultdict(dict))
    for ds in headers:
        files[ds.StudyInstanceUID][ds.SeriesInstanceUID][ds.SOPInstanceUID] = ds
    studies = {
        s["identifier"][0]["value"].removeprefix("urn:oid:"): s
        for s in of_type(sandbox_record, "ImagingStudy")
    }
    assert set(studies) == set(files)
    for uid, series in files.items():
        study = studies[uid]
        first = next(iter(next(iter(series.values())).values()))
        assert study["identifier"][0] == {
            "use": "official", "system": "urn:dicom:uid", "value": f"urn:oid:{uid}",
        }  # fmt: skip
        if str(first.get("AccessionNumber", "")).strip():
            acsn = [i for i in study["identifier"] if i.get("type")]
            assert acsn[0]["value"] == first.AccessionNumber
            assert acsn[0]["type"]["coding"][0]["code"] == "ACSN"
        assert study["status"] == "available"
        assert study["numberOfSeries"] == len(series)
        assert study["numberOfInstances"] == sum(len(i) for i in series.values())
        if dicom_date(str(first.get("StudyDate", ""))):
            assert study["started"][:10] == dicom_date(str(first.StudyDate))
        assert study["endpoint"] == [{"reference": "Endpoint/dicomweb"}]
        for element in study["series"]:
            instances = series[element["uid"]]
            one = next(iter(instances.values()))
            assert element["modality"]["code"] == (one.get("Modality") or "OT")
            assert element["modality"]["system"] == "http://dicom.nema.org/resources/ontology/DCM"
            assert element["numberOfInstances"] == len(instances)
            assert {i["uid"] for i in element["instance"]} == set(instances)
            for item in element["instance"]:
                assert item["sopClass"] == {
                    "system": "urn:ietf:rfc:3986",
                    "code": f"urn:oid:{instances[item['uid']].SOPClassUID}",
                }
        modalities = {e["modality"]["code"] for e in study["series"]}
        assert {m["code"] for m in study["modality"]} == modalities


def test_every_cohort_study_has_its_clinical_record(
    sandbox_record: list[Resource], cohort: dict[str, Any], headers: list[Dataset]
) -> None:
    """Encounter, Condition (onset before), vitals and labs (LOINC, UCUM), report."""
    record = by_key(sandbox_record)
    measured = {
        ds.StudyInstanceUID: (float(ds.PatientSize) * 100, float(ds.PatientWeight))
        for ds in headers
        if ds.get("PatientSize") and ds.get("PatientWeight")
    }
    for entry in cohort["studies"]:
        study = record[f"ImagingStudy/{entry['StudyInstanceUID']}"]
        started = dt.datetime.fromisoformat(study["started"].replace("Z", "+00:00"))
        reason = entry["reason"]
        assert study["reasonCode"][0]["coding"][0]["code"] == reason["code"]
        condition = record[study["reasonReference"][0]["reference"]]
        assert condition["code"]["coding"][0] == reason
        onset = condition["onsetDateTime"]
        assert onset[:10] <= study["started"][:10]
        assert condition["subject"] == study["subject"]
        encounter = record[study["encounter"]["reference"]]
        period = {
            k: dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
            for k, v in encounter["period"].items()
        }
        assert period["start"] < started < period["end"]
        observations = [
            o for o in of_type(sandbox_record, "Observation")
            if o["encounter"] == study["encounter"]
        ]  # fmt: skip
        codes = {o["code"]["coding"][0]["code"] for o in observations}
        assert {"29463-7", "8480-6", "2160-0", "718-7", "2345-7"} <= codes
        for observation in observations:
            when = dt.datetime.fromisoformat(
                observation["effectiveDateTime"].replace("Z", "+00:00")
            )
            assert period["start"] <= when < started
            quantity = observation["valueQuantity"]
            assert quantity["system"] == "http://unitsofmeasure.org"
            assert quantity["code"] in {"cm", "kg", "mm[Hg]", "mg/dL", "g/dL"}
            code = observation["code"]["coding"][0]["code"]
            if code == "29463-7" and entry["StudyInstanceUID"] in measured:
                assert quantity["value"] == pytest.approx(measured[entry["StudyInstanceUID"]][1])
            if code == "8302-2" and entry["StudyInstanceUID"] in measured:
                assert quantity["value"] == pytest.approx(measured[entry["StudyInstanceUID"]][0])
        reports = [
            r for r in of_type(sandbox_record, "DiagnosticReport")
            if r["imagingStudy"] == [{"reference": f"ImagingStudy/{study['id']}"}]
        ]  # fmt: skip
        assert len(reports) == 1
        assert reports[0]["code"]["coding"][0]["code"] == "18748-4"
        assert (
            reports[0]["issued"] > study["started"]
            or reports[0]["issued"][:10] >= study["started"][:10]
        )
    heights = [
        o
        for o in of_type(sandbox_record, "Observation")
        if o["code"]["coding"][0]["code"] == "8302-2"
    ]
    assert len(heights) == len({h["subject"]["reference"] for h in heights}) > 0


# --------------------------------------------------------------------------- in the store


def test_loaded_record_is_served_with_working_endpoints(
    sandbox_record: list[Resource], tmp_path: Path
) -> None:
    """load_into: transaction Bundles; the Endpoint renders as the DICOMweb base served,
    also under a Jupyter-like base URL (issue 3: correct under --port 0 and base_url)."""
    store = FhirStore(tmp_path / "fhir.sqlite", settings=Settings())
    try:
        assert load_into(store, sandbox_record) == len(sandbox_record)
        assert load_into(store, sandbox_record) == len(sandbox_record)  # idempotent
        for base_url in ("/", "/user/ann/imagingkit/"):
            with serving([store], base_url=base_url) as origin:
                fhir = f"{origin}{base_url}fhir"
                bundle = requests.get(
                    f"{fhir}/ImagingStudy?_include=ImagingStudy:endpoint&_count=1000", timeout=60
                ).json()
                studies = [
                    e for e in bundle["entry"] if e["resource"]["resourceType"] == "ImagingStudy"
                ]
                assert len(studies) == len(of_type(sandbox_record, "ImagingStudy"))
                assert all(e["resource"]["meta"]["versionId"] == "1" for e in studies)
                endpoints = [
                    e["resource"]
                    for e in bundle["entry"]
                    if e["resource"]["resourceType"] == "Endpoint"
                ]
                assert [e["address"] for e in endpoints] == [f"{origin}{base_url}dicom-web"]
    finally:
        store.close()


def test_bundles_keep_a_patients_resources_together() -> None:
    record = synthetic_record(80, seed=2)
    bundles = list(transaction_bundles(record, max_entries=50))
    assert sum(len(b["entry"]) for b in bundles) == len(record)
    seen: dict[str, int] = {}
    for number, bundle in enumerate(bundles):
        for entry in bundle["entry"]:
            assert entry["request"] == {
                "method": "PUT",
                "url": f"{entry['resource']['resourceType']}/{entry['resource']['id']}",
            }
            subject = entry["resource"].get("subject", {}).get("reference")
            if subject:
                assert seen.setdefault(subject, number) == number


# --------------------------------------------------------------------------- --dicom-dir


def _write_instance(
    folder: Path, study: str, series: str, sop: str, number: int, **patient: str
) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "OT", 1, number
    for keyword, value in patient.items():
        setattr(ds, keyword, value)
    ds.Rows = ds.Columns = 2
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(4)
    path = folder / f"{sop}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_sync_keeps_patient_and_imaging_study_in_step_with_a_folder(tmp_path: Path) -> None:
    """--dicom-dir: Patient/ImagingStudy from headers (missing values tolerated), updated
    as files arrive, untouched when nothing changed."""
    folder = tmp_path / "dicom"
    folder.mkdir()
    # a tidy patient, and one with no PatientID, an invalid birth date and no sex
    _write_instance(
        folder, "2.25.100", "2.25.100.1", "2.25.100.1.1", 1,
        PatientID="P-1", IssuerOfPatientID="2.16.840.1.113883.3.1", PatientName="Roe^Jane",
        PatientBirthDate="19700230", PatientSex="F", StudyDate="20240105", StudyTime="093000",
    )  # fmt: skip
    _write_instance(folder, "2.25.200", "2.25.200.1", "2.25.200.1.1", 1, PatientName="Anon")
    index = DicomIndex(tmp_path / "index.sqlite", folder)
    store = FhirStore(tmp_path / "fhir.sqlite", settings=Settings())
    try:
        index.scan()
        written = sync_imaging_from_index(store, index)
        assert sorted(written) == sorted(
            ["Endpoint/dicomweb", "ImagingStudy/2.25.100", "ImagingStudy/2.25.200"]
            + [w for w in written if w.startswith("Patient/")]
        )
        assert len([w for w in written if w.startswith("Patient/")]) == 2
        study = store.read("ImagingStudy", "2.25.100")
        patient = store.read("Patient", study["subject"]["reference"].split("/")[1])
        assert patient["identifier"][0]["system"] == "urn:oid:2.16.840.1.113883.3.1"
        assert patient["gender"] == "female" and "birthDate" not in patient  # 30 February
        assert study["started"] == "2024-01-05T09:30:00Z"
        anonymous = store.read("ImagingStudy", "2.25.200")
        assert not r4_problems({k: v for k, v in anonymous.items() if k != "meta"})
        assert store.read("Endpoint", "dicomweb")["address"] == DICOMWEB_BASE_PLACEHOLDER

        assert sync_imaging_from_index(store, index) == []  # nothing changed

        _write_instance(folder, "2.25.100", "2.25.100.2", "2.25.100.2.7", 7, PatientID="P-1",
                        IssuerOfPatientID="2.16.840.1.113883.3.1", PatientName="Roe^Jane",
                        PatientSex="F")  # fmt: skip
        index.scan()
        assert sync_imaging_from_index(store, index) == ["ImagingStudy/2.25.100"]
        study = store.read("ImagingStudy", "2.25.100")
        assert (study["numberOfSeries"], study["numberOfInstances"]) == (2, 2)
        assert study["meta"]["versionId"] == "2"
    finally:
        store.close()
        index.close()


def test_sync_keeps_elements_it_does_not_derive(tmp_path: Path) -> None:
    """A sandbox study's encounter and reasons survive a sync after new files arrive."""
    folder = tmp_path / "dicom"
    folder.mkdir()
    _write_instance(folder, "2.25.300", "2.25.300.1", "2.25.300.1.1", 1, PatientID="Q")
    index = DicomIndex(tmp_path / "index.sqlite", folder)
    store = FhirStore(tmp_path / "fhir.sqlite", settings=Settings())
    try:
        index.scan()
        sync_imaging_from_index(store, index)
        study = store.read("ImagingStudy", "2.25.300")
        study.pop("meta")
        study["reasonCode"] = [{"text": "kept"}]
        store.upsert(study)
        shutil.copy(folder / "2.25.300.1.1.dcm", tmp_path / "spare.dcm")
        _write_instance(folder, "2.25.300", "2.25.300.1", "2.25.300.1.2", 2, PatientID="Q")
        index.scan()
        assert sync_imaging_from_index(store, index, study_uids=["2.25.300"]) == [
            "ImagingStudy/2.25.300"
        ]
        again = store.read("ImagingStudy", "2.25.300")
        assert again["reasonCode"] == [{"text": "kept"}] and again["numberOfInstances"] == 2
    finally:
        store.close()
        index.close()


# --------------------------------------------------------------------------- mapping details


@pytest.mark.parametrize(
    "value,expected",
    [
        ("20240229", "2024-02-29"),
        ("20230229", None),
        ("2024", None),
        ("", None),
        ("1999.12.31", "1999-12-31"),
    ],
)
def test_dicom_dates(value: str, expected: str | None) -> None:
    assert dicom_date(value) == expected


def test_dicom_datetimes_carry_a_zone() -> None:
    assert dicom_datetime("20240105", "0930", "+0100") == "2024-01-05T09:30:00+01:00"
    assert dicom_datetime("20240105", "093000.123456") == "2024-01-05T09:30:00Z"
    assert dicom_datetime("20240105", "99") == "2024-01-05"
    assert dicom_datetime("bad", "0930") is None


def test_person_names() -> None:
    assert human_name("Yamada^Tarou^^Dr.^=山田^太郎") == {
        "use": "official", "family": "Yamada", "given": ["Tarou"], "prefix": ["Dr."],
        "text": "Dr. Tarou Yamada",
    }  # fmt: skip
    assert human_name("^^^^") is None


def test_issuer_systems() -> None:
    assert issuer_system("1.2.3") == "urn:oid:1.2.3"
    assert issuer_system("https://hospital.example/mrn") == "https://hospital.example/mrn"
    assert issuer_system("MAIN HOSPITAL") == "urn:imagingkit:issuer:MAIN%20HOSPITAL"
    assert issuer_system("  ") is None
