"""The sandbox's FHIR R4 clinical record, linked to its imaging (issue 3 point 1).

Two sources, one mapping (:mod:`.clinical_imaging`):

- **imaging** — every study in the DICOM index becomes an ImagingStudy (R4 shape, with
  series, instances and an Endpoint whose address is the DICOMweb base actually served),
  and every patient a Patient whose identifier, name, gender and birthDate are those of the
  DICOM headers. This is all a ``--dicom-dir`` folder gets (as Azure's DICOMcast does),
  kept in step by :func:`sync_imaging_from_index`.
- **clinical** — for the generated cohort (``cohort.json``), the record around each study
  (:mod:`.clinical_synthetic`): Encounter, the Condition that motivated the imaging,
  vitals and labs, and the DiagnosticReport, all seeded by the cohort seed.

Every resource has a deterministic id derived from DICOM UIDs and PatientIDs, so the same
data always gives the same resources, and re-loading them is an idempotent update.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from imagingkit.errors import FHIRError, SandboxError
from imagingkit.sandbox.clinical_imaging import (
    ENDPOINT_ID,
    CodedReason,
    InstanceFacts,
    PatientFacts,
    SeriesFacts,
    StudyFacts,
    dicom_date,
    dicom_datetime,
    dicomweb_endpoint,
    imaging_study_id,
    imaging_study_resource,
    patient_id,
    patient_resource,
)
from imagingkit.sandbox.clinical_synthetic import (
    VisitContext,
    condition_resource,
    diagnostic_report_resource,
    encounter_resource,
    imaging_study_links,
    observation_resources,
)
from imagingkit.sandbox.fhir.representation import PLACEHOLDER

__all__ = [
    "DICOMWEB_BASE_PLACEHOLDER",
    "build_clinical_resources",
    "build_imaging_resources",
    "clinical_record",
    "load_into",
    "populate_fhir_store",
    "study_facts_from_index",
    "study_uids_in_index",
    "sync_imaging_from_index",
    "transaction_bundle",
    "transaction_bundles",
]

log = logging.getLogger("imagingkit.sandbox.clinical")

#: Written as Endpoint.address; the FHIR store renders it as the DICOMweb base URL the
#: client reached (:mod:`imagingkit.sandbox.fhir.representation`), so it stays right under
#: ``--port 0`` and under Jupyter's base URL.
DICOMWEB_BASE_PLACEHOLDER = PLACEHOLDER


class _Record(Protocol):
    path: Any
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    instance_number: int | None


class _Store(Protocol):
    def transaction(self, bundle: dict[str, Any]) -> Any: ...


# --------------------------------------------------------------------------- DICOM facts


def _text(dataset: Any, keyword: str) -> str:
    value = dataset.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _integer(dataset: Any, keyword: str) -> int | None:
    try:
        value = dataset.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _positive_number(dataset: Any, keyword: str) -> float | None:
    try:
        value = float(dataset.get(keyword))
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def _patient_facts(dataset: Any) -> PatientFacts:
    return PatientFacts(
        patient_id=_text(dataset, "PatientID"),
        issuer=_text(dataset, "IssuerOfPatientID"),
        name=_text(dataset, "PatientName"),
        birth_date=_text(dataset, "PatientBirthDate"),
        sex=_text(dataset, "PatientSex"),
    )


def _series_facts(dataset: Any, instances: Iterable[InstanceFacts]) -> SeriesFacts:
    return SeriesFacts(
        uid=_text(dataset, "SeriesInstanceUID"),
        modality=_text(dataset, "Modality"),
        number=_integer(dataset, "SeriesNumber"),
        description=_text(dataset, "SeriesDescription"),
        body_part=_text(dataset, "BodyPartExamined"),
        date=_text(dataset, "SeriesDate"),
        time=_text(dataset, "SeriesTime"),
        instances=tuple(instances),
    )


def _study_facts(dataset: _JsonHeader, series: Iterable[SeriesFacts]) -> StudyFacts:
    reasons = tuple(
        CodedReason(
            scheme=_text(item, "CodingSchemeDesignator"),
            code=_text(item, "CodeValue"),
            meaning=_text(item, "CodeMeaning"),
        )
        for item in dataset.items("ReasonForPerformedProcedureCodeSequence")
    )
    return StudyFacts(
        uid=_text(dataset, "StudyInstanceUID"),
        patient=_patient_facts(dataset),
        accession=_text(dataset, "AccessionNumber"),
        date=_text(dataset, "StudyDate"),
        time=_text(dataset, "StudyTime"),
        timezone=_text(dataset, "TimezoneOffsetFromUTC"),
        description=_text(dataset, "StudyDescription"),
        series=tuple(series),
        reasons=reasons,
        patient_size_m=_positive_number(dataset, "PatientSize"),
        patient_weight_kg=_positive_number(dataset, "PatientWeight"),
    )


class _JsonHeader:
    """Keyword access to a DICOM JSON header (PS3.18 F.2), as :func:`_text` expects."""

    def __init__(self, header: Mapping[str, Any]) -> None:
        self._header = header

    def _values(self, keyword: str) -> tuple[str, list[Any]]:
        from pydicom.datadict import tag_for_keyword

        tag = tag_for_keyword(keyword)
        element = self._header.get(f"{tag:08X}") if tag is not None else None
        if not isinstance(element, Mapping):
            return "", []
        return str(element.get("vr", "")), list(element.get("Value") or [])

    def get(self, keyword: str, default: Any = None) -> Any:
        """The value (a list if several; a PN's alphabetic group); *default* if absent."""
        vr, values = self._values(keyword)
        if not values or vr == "SQ":
            return default
        texts = [v.get("Alphabetic", "") if isinstance(v, Mapping) else v for v in values]
        return texts[0] if len(texts) == 1 else texts

    def items(self, keyword: str) -> list[_JsonHeader]:
        """The items of a sequence attribute."""
        vr, values = self._values(keyword)
        return [_JsonHeader(v) for v in values if vr == "SQ" and isinstance(v, Mapping)]


def study_uids_in_index(index: Any) -> list[str]:
    """Every Study Instance UID the DICOM index holds, sorted."""
    return [row[0] for row in index.query("SELECT study_uid FROM studies ORDER BY study_uid")]


def study_facts_from_index(index: Any, study_uids: Iterable[str]) -> list[StudyFacts]:
    """Read the facts of *study_uids* from the DICOM index.

    Instance UIDs, SOP classes and numbers come from :meth:`DicomIndex.instances`; patient,
    study and series attributes from the stored header of each series' first instance
    (:meth:`DicomIndex.header`; PS3.3 C.7: they are the same in every instance of a study).
    Studies that vanished from the index are skipped.
    """
    facts: list[StudyFacts] = []
    for study_uid in study_uids:
        by_series: dict[str, list[_Record]] = defaultdict(list)
        for record in index.instances(study_uid):
            by_series[record.series_uid].append(record)
        study_header: _JsonHeader | None = None
        series: list[SeriesFacts] = []
        for records in by_series.values():
            stored = index.header(records[0].sop_uid)
            if stored is None:  # removed between the two queries
                continue
            header = _JsonHeader(stored)
            study_header = study_header or header
            series.append(
                _series_facts(
                    header,
                    (InstanceFacts(r.sop_uid, r.sop_class_uid, r.instance_number) for r in records),
                )
            )
        if study_header is not None:
            facts.append(_study_facts(study_header, series))
    return facts


# --------------------------------------------------------------------------- resources


def build_imaging_resources(
    studies: Iterable[StudyFacts],
    *,
    endpoint_address: str = DICOMWEB_BASE_PLACEHOLDER,
    study_extras: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Endpoint, Patients and ImagingStudies for DICOM studies (the DICOMcast mapping).

    Parameters
    ----------
    studies : iterable of StudyFacts
    endpoint_address : str
        The DICOMweb base (or the FHIR store's placeholder for it).
    study_extras : mapping, optional
        Study Instance UID → further ImagingStudy elements (encounter, reasons).

    Returns
    -------
    list of dict
        The Endpoint first, then each Patient once, then the ImagingStudies.
    """
    patients: dict[str, dict[str, Any]] = {}
    imaging: list[dict[str, Any]] = []
    extras = study_extras or {}
    for study in studies:
        patient = patient_resource(study.patient)
        patients.setdefault(patient["id"], patient)
        extra = dict(extras.get(study.uid, {}))
        imaging.append(imaging_study_resource(study, endpoint_id=ENDPOINT_ID, extra=extra))
    return [dicomweb_endpoint(endpoint_address), *patients.values(), *imaging]


def _parse_started(value: str | None) -> dt.datetime:
    if not value:
        return dt.datetime(2000, 1, 1, 9, 0, tzinfo=dt.timezone.utc)
    if "T" not in value:
        day = dt.date.fromisoformat(value)
        return dt.datetime(day.year, day.month, day.day, 9, 0, tzinfo=dt.timezone.utc)
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _cohort_reasons(cohort: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {
        s["StudyInstanceUID"]: s
        for s in cohort.get("studies", [])
        if isinstance(s, Mapping) and s.get("reason", {}).get("code")
    }


def _visits(studies: Sequence[StudyFacts], cohort: Mapping[str, Any]) -> list[VisitContext]:
    """The visits of the studies *cohort* gives a reason for, in chronological order."""
    entries = _cohort_reasons(cohort)
    seed = int(cohort.get("seed", 0))
    visits = []
    for study in studies:
        entry = entries.get(study.uid)
        if entry is None:
            continue
        birth = dicom_date(study.patient.birth_date)
        size = study.patient_size_m
        visits.append(
            VisitContext(
                study_uid=study.uid,
                imaging_study_id=imaging_study_id(study.uid),
                patient_id=patient_id(study.patient),
                started=_parse_started(dicom_datetime(study.date, study.time, study.timezone)),
                gender=patient_resource(study.patient)["gender"],
                birth_date=dt.date.fromisoformat(birth) if birth else None,
                reason=entry["reason"],
                description=study.description,
                seed=seed,
                height_cm=size * 100 if size else None,
                weight_kg=study.patient_weight_kg,
            )
        )
    visits.sort(key=lambda visit: (visit.started, visit.study_uid))
    return visits


def _clinical_resources(
    visits: Sequence[VisitContext],
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Encounters, Conditions, Observations, reports; and ImagingStudy links per study.

    One Condition per patient and reason, recorded at its first visit; whether the
    imaging confirmed it is decided once, there, and holds for every later report.
    """
    resources: list[dict[str, Any]] = []
    extras: dict[str, dict[str, Any]] = {}
    first_of_condition: dict[str, VisitContext] = {}
    measured_height: set[str] = set()
    for visit in visits:
        first = first_of_condition.setdefault(visit.condition_id, visit)
        positive = first.finding_positive()
        resources.append(encounter_resource(visit))
        if first is visit:
            resources.append(condition_resource(visit, confirmed=positive))
        resources.extend(
            observation_resources(visit, with_height=visit.patient_id not in measured_height)
        )
        measured_height.add(visit.patient_id)
        resources.append(diagnostic_report_resource(visit, positive=positive))
        extras[visit.study_uid] = imaging_study_links(visit)
    return resources, extras


def build_clinical_resources(
    root: Path,
    index: Any,
    *,
    endpoint_address: str = DICOMWEB_BASE_PLACEHOLDER,
) -> list[dict[str, Any]]:
    """Build every FHIR resource of the sandbox served from *root*.

    Parameters
    ----------
    root : Path
        The sandbox folder (with ``cohort.json`` when it was generated; a plain DICOM
        folder gets imaging resources only).
    index : DicomIndex
        The index of the Part-10 files under *root*.
    endpoint_address : str
        The Endpoint's address: the DICOMweb base, or the store's placeholder for it.

    Returns
    -------
    list of dict
        Endpoint, Patients, then per patient its Encounters, Conditions, Observations,
        ImagingStudies and DiagnosticReports. Ids are deterministic.
    """
    cohort_path = Path(root) / "cohort.json"
    try:
        cohort = json.loads(cohort_path.read_text()) if cohort_path.exists() else {}
    except (OSError, ValueError) as exc:
        raise SandboxError(f"cannot read {str(cohort_path)!r}: {exc}") from exc
    studies = study_facts_from_index(index, study_uids_in_index(index))
    return clinical_record(studies, cohort, endpoint_address=endpoint_address)


def clinical_record(
    studies: Sequence[StudyFacts],
    cohort: Mapping[str, Any],
    *,
    endpoint_address: str = DICOMWEB_BASE_PLACEHOLDER,
) -> list[dict[str, Any]]:
    """The FHIR record of DICOM studies: imaging resources plus, for the studies *cohort*
    gives a reason, the clinical record around them.

    Parameters
    ----------
    studies : sequence of StudyFacts
    cohort : mapping
        ``cohort.json``'s content: ``seed`` and ``studies[]`` with ``StudyInstanceUID`` and
        ``reason`` (``{}`` for imaging resources only).
    endpoint_address : str
        The Endpoint's address.

    Returns
    -------
    list of dict
        Endpoint first, then each patient's resources together, Patient first.
    """
    clinical, extras = _clinical_resources(_visits(studies, cohort))
    imaging = build_imaging_resources(
        studies, endpoint_address=endpoint_address, study_extras=extras
    )
    return _order_by_patient(imaging + clinical)


def _subject(resource: Mapping[str, Any]) -> str | None:
    if resource["resourceType"] == "Patient":
        return f"Patient/{resource['id']}"
    subject = resource.get("subject", {}).get("reference")
    return subject if isinstance(subject, str) else None


_TYPE_ORDER = {
    "Endpoint": 0,
    "Patient": 1,
    "Encounter": 2,
    "Condition": 3,
    "Observation": 4,
    "ImagingStudy": 5,
    "DiagnosticReport": 6,
}


def _order_by_patient(resources: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Endpoints first, then each patient's resources together (Patient first)."""
    position: dict[str | None, int] = {}
    for resource in resources:
        position.setdefault(_subject(resource), len(position))
    return sorted(
        resources,
        key=lambda r: (
            r["resourceType"] != "Endpoint",
            position[_subject(r)],
            _TYPE_ORDER.get(r["resourceType"], 9),
        ),
    )


# --------------------------------------------------------------------------- loading


def transaction_bundles(
    resources: Sequence[dict[str, Any]], *, max_entries: int = 50
) -> Iterator[dict[str, Any]]:
    """Yield transaction Bundles updating *resources* by id (R4 http.html#transaction).

    Each entry is a PUT to ``Type/id`` (create-on-update keeps our ids). A patient's
    resources stay in one Bundle (they refer to one another, Encounter ↔ Condition
    included), which may exceed *max_entries* only when one patient alone does.
    """
    groups: list[list[dict[str, Any]]] = []
    by_subject: dict[str | None, list[dict[str, Any]]] = {}
    for resource in resources:
        key = _subject(resource)
        if key not in by_subject:
            by_subject[key] = []
            groups.append(by_subject[key])
        by_subject[key].append(resource)
    batch: list[dict[str, Any]] = []
    for group in groups:
        if batch and len(batch) + len(group) > max_entries:
            yield transaction_bundle(batch)
            batch = []
        batch.extend(group)
    if batch:
        yield transaction_bundle(batch)


def transaction_bundle(resources: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One transaction Bundle PUTting each resource to ``Type/id`` (create-on-update)."""
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


def load_into(store: _Store, resources: Sequence[dict[str, Any]], *, max_entries: int = 50) -> int:
    """Load *resources* into a FHIR store with transaction Bundles; return how many.

    Parameters
    ----------
    store : FhirStore
        Anything with ``transaction(bundle)``.
    resources : sequence of dict
        As built by :func:`build_clinical_resources`.
    max_entries : int
        Entries per Bundle (a patient's resources are never split).
    """
    count = 0
    for bundle in transaction_bundles(resources, max_entries=max_entries):
        store.transaction(bundle)
        count += len(bundle["entry"])
    return count


# --------------------------------------------------------------------------- serving


def _record_fingerprint(index: Any, root: Path) -> str:
    """What the served record depends on: this mapping's code, cohort.json, the instances."""
    digest = hashlib.sha256()
    for module in sorted(Path(__file__).parent.glob("clinical*.py")):
        digest.update(module.read_bytes())
    cohort = Path(root) / "cohort.json"
    if cohort.exists():
        digest.update(cohort.read_bytes())
    for (sop_uid,) in index.query("SELECT sop_uid FROM instances ORDER BY sop_uid"):
        digest.update(sop_uid.encode() + b"\n")
    return digest.hexdigest()


def populate_fhir_store(store: Any, index: Any) -> int:
    """Bring the served FHIR store in step with the served DICOM data (at startup).

    A generated sandbox (its folder holds ``cohort.json``) gets its whole record
    (:func:`build_clinical_resources`, loaded with :func:`load_into`); any other folder
    gets Patient and ImagingStudy resources kept in step by :func:`sync_imaging_from_index`.
    Nothing is done when neither the files, ``cohort.json`` nor this mapping changed since
    the last time (a fingerprint is kept beside the store's database).

    Parameters
    ----------
    store : FhirStore
    index : DicomIndex
        The (scanned) index of the served folder.

    Returns
    -------
    int
        How many resources were written or checked (0 when up to date).
    """
    root = Path(index.root)
    marker = Path(store.db_path).with_name(Path(store.db_path).name + ".record")
    fingerprint = _record_fingerprint(index, root)
    loaded = _read_or_none(store, "Endpoint", ENDPOINT_ID) is not None
    if loaded and marker.exists() and marker.read_text() == fingerprint:
        return 0
    if (root / "cohort.json").exists():
        count = load_into(store, build_clinical_resources(root, index))
    else:
        count = len(sync_imaging_from_index(store, index))
    partial = marker.with_name(marker.name + ".tmp")
    partial.write_text(fingerprint)
    partial.replace(marker)
    log.info("FHIR record of %s: %d resources written", root, count)
    return count


# --------------------------------------------------------------------------- --dicom-dir sync


def _same(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    return all(stored.get(key) == value for key, value in wanted.items())


def sync_imaging_from_index(
    store: Any,
    index: Any,
    *,
    study_uids: Iterable[str] | None = None,
    endpoint_address: str = DICOMWEB_BASE_PLACEHOLDER,
) -> list[str]:
    """Bring the store's Patient and ImagingStudy resources in step with the DICOM index.

    For every study (or only *study_uids*, e.g. those a STOW-RS request just stored) the
    Patient and ImagingStudy derived from the headers are compared with the stored ones;
    new or changed ones are written (elements not derived from DICOM, such as
    ``encounter`` or ``reasonReference`` of the sandbox's studies, are kept).

    Parameters
    ----------
    store : FhirStore
        Needs ``read(type, id)`` (raising or returning ``None`` when absent) and
        ``upsert(resource)``.
    index : DicomIndex
    study_uids : iterable of str, optional
        Restrict the sync to these studies.
    endpoint_address : str
        The Endpoint's address (see :data:`DICOMWEB_BASE_PLACEHOLDER`).

    Returns
    -------
    list of str
        ``"Type/id"`` of every resource written.
    """
    uids = list(study_uids) if study_uids is not None else study_uids_in_index(index)
    wanted = build_imaging_resources(
        study_facts_from_index(index, uids), endpoint_address=endpoint_address
    )
    written: list[str] = []
    for resource in wanted:
        stored = _read_or_none(store, resource["resourceType"], resource["id"])
        if stored is not None and _same(stored, resource):
            continue
        merged = {k: v for k, v in (stored or {}).items() if k != "meta"}
        merged.update(resource)
        store.upsert(merged)
        written.append(f"{resource['resourceType']}/{resource['id']}")
    return written


def _read_or_none(store: Any, resource_type: str, resource_id: str) -> dict[str, Any] | None:
    try:
        found = store.read(resource_type, resource_id)
    except FHIRError as exc:
        if exc.status in (404, 410):  # not there yet, or deleted
            return None
        raise
    if found is None:
        return None
    return dict(found) if isinstance(found, Mapping) else None
