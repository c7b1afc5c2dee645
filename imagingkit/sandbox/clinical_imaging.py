"""DICOM headers → FHIR R4 Patient, ImagingStudy and Endpoint (as Azure's DICOMcast does).

Pure mapping functions: DICOM facts in, FHIR resources (plain ``dict``) out. They follow the
R4 ImagingStudy implementation notes (imagingstudy.html#notes): the Study Instance UID is an
``identifier`` with system ``urn:dicom:uid`` and value ``urn:oid:<uid>``, the Accession
Number an identifier of type ``ACSN`` (v2-0203), ``series.uid``/``instance.uid`` are plain
UIDs, ``instance.sopClass`` is a Coding in ``urn:ietf:rfc:3986``; and the Endpoint notes
(endpoint.html): a ``dicom-wado-rs`` Endpoint's address is the DICOMweb service base URL.

Every value taken from a header is checked: a malformed date, an empty name or a missing
number is left out of the resource rather than written wrong (real archives hold all of
these), so every resource built here is valid R4.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

__all__ = [
    "CODING_SCHEMES",
    "DCM_SYSTEM",
    "DICOM_UID_SYSTEM",
    "ENDPOINT_ID",
    "RFC3986_SYSTEM",
    "SNOMED_SYSTEM",
    "CodedReason",
    "InstanceFacts",
    "PatientFacts",
    "SeriesFacts",
    "StudyFacts",
    "body_site_coding",
    "dicom_date",
    "dicom_datetime",
    "dicomweb_endpoint",
    "fhir_id",
    "human_name",
    "imaging_study_id",
    "imaging_study_resource",
    "issuer_system",
    "modality_coding",
    "patient_id",
    "patient_resource",
]

DICOM_UID_SYSTEM = "urn:dicom:uid"
RFC3986_SYSTEM = "urn:ietf:rfc:3986"
DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED_SYSTEM = "http://snomed.info/sct"
V2_0203_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0203"
ENDPOINT_CONNECTION_SYSTEM = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
ENDPOINT_PAYLOAD_SYSTEM = "http://terminology.hl7.org/CodeSystem/endpoint-payload-type"
#: the id of the one Endpoint describing the served DICOMweb base (as DICOMcast does)
ENDPOINT_ID = "dicomweb"

_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_ISSUER_PREFIX = "urn:imagingkit:issuer:"

#: DICOM CID 29 acquisition modalities, with their DCM display names (PS3.16 Annex D).
MODALITY_DISPLAY = {
    "CR": "Computed Radiography",
    "CT": "Computed Tomography",
    "DX": "Digital Radiography",
    "ES": "Endoscopy",
    "IO": "Intra-oral Radiography",
    "MG": "Mammography",
    "MR": "Magnetic Resonance",
    "NM": "Nuclear Medicine",
    "OP": "Ophthalmic Photography",
    "PT": "Positron emission tomography",
    "PX": "Panoramic X-Ray",
    "RF": "Radio Fluoroscopy",
    "SM": "Slide Microscopy",
    "US": "Ultrasound",
    "XA": "X-Ray Angiography",
    "XC": "External-camera Photography",
}

#: BodyPartExamined (PS3.16 Annex L, CID 4031) → SNOMED CT concept and display.
BODY_PART_SNOMED = {
    "ABDOMEN": ("818981001", "Abdomen"),
    "ANKLE": ("70258002", "Ankle joint"),
    "BRAIN": ("12738006", "Brain"),
    "BREAST": ("76752008", "Breast"),
    "CHEST": ("51185008", "Thorax"),
    "CSPINE": ("122494005", "Cervical spine"),
    "ELBOW": ("16953009", "Elbow joint"),
    "FOOT": ("56459004", "Foot"),
    "HAND": ("85562004", "Hand"),
    "HEAD": ("69536005", "Head"),
    "HEART": ("80891009", "Heart"),
    "HIP": ("24136001", "Hip joint"),
    "KIDNEY": ("64033007", "Kidney"),
    "KNEE": ("72696002", "Knee"),
    "LIVER": ("10200004", "Liver"),
    "LSPINE": ("122496007", "Lumbar spine"),
    "LUNG": ("39607008", "Lung"),
    "NECK": ("45048000", "Neck"),
    "PELVIS": ("816092008", "Pelvis"),
    "SHOULDER": ("16982005", "Shoulder"),
    "SKULL": ("89546000", "Skull"),
    "SPINE": ("421060004", "Spine"),
    "TSPINE": ("122495006", "Thoracic spine"),
    "WHOLEBODY": ("38266002", "Entire body as a whole"),
    "WRIST": ("74670003", "Wrist joint"),
}

_GENDER = {"M": "male", "F": "female", "O": "other"}

#: Coding Scheme Designators (PS3.16 Table 8-1) → FHIR code system URIs.
CODING_SCHEMES = {
    "SCT": SNOMED_SYSTEM,
    "SRT": SNOMED_SYSTEM,
    "LN": "http://loinc.org",
    "DCM": DCM_SYSTEM,
    "UCUM": "http://unitsofmeasure.org",
    "I10": "http://hl7.org/fhir/sid/icd-10",
}


@dataclass(frozen=True)
class PatientFacts:
    """Patient-level DICOM attributes (PS3.3 C.7.1.1), as read from a header."""

    patient_id: str
    issuer: str = ""
    name: str = ""
    birth_date: str = ""
    sex: str = ""


@dataclass(frozen=True)
class CodedReason:
    """One item of Reason For Performed Procedure Code Sequence (0040,1012), PS3.3 C.4.15."""

    scheme: str
    code: str
    meaning: str = ""

    def concept(self) -> dict[str, Any]:
        """The FHIR CodeableConcept (DICOM coding scheme designator → FHIR system URI)."""
        coding: dict[str, str] = {"code": self.code}
        system = CODING_SCHEMES.get(self.scheme.upper())
        if system is not None:
            coding["system"] = system
        if self.meaning:
            coding["display"] = self.meaning
        concept: dict[str, Any] = {"coding": [coding]}
        if self.meaning:
            concept["text"] = self.meaning
        return concept


@dataclass(frozen=True)
class InstanceFacts:
    """One SOP instance (PS3.3 C.12.1): its UIDs and Instance Number."""

    sop_uid: str
    sop_class_uid: str
    number: int | None = None


@dataclass(frozen=True)
class SeriesFacts:
    """Series-level attributes (PS3.3 C.7.3.1) and the series' instances."""

    uid: str
    modality: str
    number: int | None = None
    description: str = ""
    body_part: str = ""
    date: str = ""
    time: str = ""
    instances: tuple[InstanceFacts, ...] = ()


@dataclass(frozen=True)
class StudyFacts:
    """Study-level attributes (PS3.3 C.7.2.1), its patient and its series."""

    uid: str
    patient: PatientFacts
    accession: str = ""
    date: str = ""
    time: str = ""
    timezone: str = ""
    description: str = ""
    series: tuple[SeriesFacts, ...] = field(default_factory=tuple)
    reasons: tuple[CodedReason, ...] = ()
    #: PatientSize (0010,1020) in m and PatientWeight (0010,1030) in kg at this study
    patient_size_m: float | None = None
    patient_weight_kg: float | None = None

    @property
    def number_of_instances(self) -> int:
        """Instances in all series of the study."""
        return sum(len(s.instances) for s in self.series)


def fhir_id(prefix: str, *parts: str) -> str:
    """Return a deterministic FHIR id (R4 datatypes.html#id: ``[A-Za-z0-9\\-.]{1,64}``).

    Parameters
    ----------
    prefix : str
        A short type tag, e.g. ``"pat"``.
    *parts : str
        The natural key, e.g. issuer and PatientID.

    Returns
    -------
    str
        ``"{prefix}-{24 hex digits of SHA-256(parts)}"``.
    """
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:24]
    return f"{prefix}-{digest}"


def patient_id(facts: PatientFacts) -> str:
    """Return the Patient resource id: PatientID within its issuer.

    A header without a PatientID (found in real archives) is keyed on its name and
    birth date instead, so that unrelated anonymous patients are not merged.
    """
    if facts.patient_id.strip():
        return fhir_id("pat", facts.issuer.strip(), facts.patient_id.strip())
    return fhir_id("pat", "", "", facts.name.strip(), facts.birth_date.strip())


def imaging_study_id(study_uid: str) -> str:
    """Return the ImagingStudy id: the Study Instance UID itself when it is a valid FHIR id."""
    uid = study_uid.strip()
    return uid if _FHIR_ID.match(uid) else fhir_id("study", uid)


def issuer_system(issuer: str) -> str | None:
    """Map IssuerOfPatientID (0010,0021) to an ``Identifier.system`` URI.

    An OID becomes ``urn:oid:…``; a value that already is a URI is kept; any other
    non-empty value becomes ``urn:imagingkit:issuer:<percent-encoded value>``; an empty
    issuer gives ``None`` (the identifier is then written without a system, as DICOMcast
    does).
    """
    value = issuer.strip()
    if not value:
        return None
    if re.fullmatch(r"[0-2](\.(0|[1-9][0-9]*))+", value):
        return f"urn:oid:{value}"
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s]+", value):
        return value
    return _ISSUER_PREFIX + quote(value, safe="")


def dicom_date(value: str) -> str | None:
    """Convert a DICOM DA (``YYYYMMDD``, PS3.5 §6.2) to a FHIR date, or ``None`` if invalid."""
    text = value.strip().replace(".", "").replace("-", "")
    if not re.fullmatch(r"\d{8}", text):
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8])).isoformat()
    except ValueError:
        return None


def _dicom_time(value: str) -> str | None:
    text = value.strip().replace(":", "").split(".", 1)[0]
    if not re.fullmatch(r"\d{2}(\d{2}(\d{2})?)?", text):
        return None
    hh, mm, ss = int(text[0:2]), int(text[2:4] or 0), int(text[4:6] or 0)
    if hh > 23 or mm > 59 or ss > 60:
        return None
    return f"{hh:02d}:{mm:02d}:{min(ss, 59):02d}"


def _timezone(value: str) -> str:
    match = re.fullmatch(r"([+-])(\d{2})(\d{2})", value.strip())
    if not match or int(match.group(2)) > 14 or int(match.group(3)) > 59:
        return "Z"
    sign, hh, mm = match.groups()
    return f"{sign}{hh}:{mm}"


def dicom_datetime(date: str, time: str = "", timezone: str = "") -> str | None:
    """Combine DICOM DA, TM and TimezoneOffsetFromUTC into a FHIR ``dateTime``.

    A time needs a zone in FHIR (R4 datatypes.html#dateTime): the DICOM offset
    (0008,0201) when present, else UTC. Without a valid time only the date is given.
    """
    day = dicom_date(date)
    if day is None:
        return None
    clock = _dicom_time(time) if time else None
    return day if clock is None else f"{day}T{clock}{_timezone(timezone)}"


def human_name(person_name: str) -> dict[str, Any] | None:
    """Map a DICOM PN (``Family^Given^Middle^Prefix^Suffix``, PS3.5 §6.2.1) to a HumanName.

    Only the alphabetic component group (before the first ``=``) is used. Returns ``None``
    for an empty name.
    """
    alphabetic = person_name.split("=", 1)[0]
    parts = [p.strip() for p in alphabetic.split("^")] + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    name: dict[str, Any] = {"use": "official"}
    if family:
        name["family"] = family
    given_names = [g for g in (given, *middle.split()) if g]
    if given_names:
        name["given"] = given_names
    if prefix:
        name["prefix"] = prefix.split()
    if suffix:
        name["suffix"] = suffix.split()
    if len(name) == 1:
        return None
    name["text"] = " ".join(
        [*name.get("prefix", []), *name.get("given", []), family, *name.get("suffix", [])]
    ).strip()
    return name


def patient_resource(facts: PatientFacts) -> dict[str, Any]:
    """Build the R4 Patient for a DICOM patient (identifier, name, gender, birthDate)."""
    identifier: dict[str, Any] = {
        "use": "usual",
        "type": {"coding": [{"system": V2_0203_SYSTEM, "code": "MR"}]},
        "value": facts.patient_id.strip(),
    }
    system = issuer_system(facts.issuer)
    if system is not None:
        identifier["system"] = system
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": patient_id(facts),
        "active": True,
    }
    if facts.patient_id.strip():
        resource["identifier"] = [identifier]
    name = human_name(facts.name)
    if name is not None:
        resource["name"] = [name]
    resource["gender"] = _GENDER.get(facts.sex.strip().upper(), "unknown")
    birth = dicom_date(facts.birth_date)
    if birth is not None:
        resource["birthDate"] = birth
    return resource


def modality_coding(modality: str) -> dict[str, str]:
    """Return the DCM Coding of a modality (CID 29); display only for known codes."""
    code = modality.strip().upper()
    coding = {"system": DCM_SYSTEM, "code": code}
    if code in MODALITY_DISPLAY:
        coding["display"] = MODALITY_DISPLAY[code]
    return coding


def body_site_coding(body_part: str) -> dict[str, str] | None:
    """Return the SNOMED CT Coding for a BodyPartExamined value, or ``None`` if unmapped."""
    found = BODY_PART_SNOMED.get(body_part.strip().upper())
    if found is None:
        return None
    return {"system": SNOMED_SYSTEM, "code": found[0], "display": found[1]}


def dicomweb_endpoint(address: str, *, endpoint_id: str = ENDPOINT_ID) -> dict[str, Any]:
    """Build the Endpoint for a DICOMweb (WADO-RS) service base (R4 endpoint.html).

    Parameters
    ----------
    address : str
        The service base URL with no trailing slash, or the FHIR store's placeholder that
        it renders as the DICOMweb base actually served.
    endpoint_id : str
        The resource id.
    """
    return {
        "resourceType": "Endpoint",
        "id": endpoint_id,
        "status": "active",
        "connectionType": {
            "system": ENDPOINT_CONNECTION_SYSTEM,
            "code": "dicom-wado-rs",
            "display": "DICOM WADO-RS",
        },
        "name": "imagingkit DICOMweb",
        "payloadType": [
            {
                "coding": [{"system": ENDPOINT_PAYLOAD_SYSTEM, "code": "any", "display": "Any"}],
                "text": "DICOM",
            }
        ],
        "payloadMimeType": ["application/dicom"],
        "address": address.rstrip("/") if "://" in address else address,
    }


def _positive(number: int | None) -> int | None:
    return number if number is not None and number >= 0 else None


def _instance_element(instance: InstanceFacts) -> dict[str, Any]:
    element: dict[str, Any] = {
        "uid": instance.sop_uid,
        "sopClass": {"system": RFC3986_SYSTEM, "code": f"urn:oid:{instance.sop_class_uid}"},
    }
    number = _positive(instance.number)
    if number is not None:
        element["number"] = number
    return element


def _series_element(series: SeriesFacts, timezone: str) -> dict[str, Any]:
    element: dict[str, Any] = {"uid": series.uid}
    number = _positive(series.number)
    if number is not None:
        element["number"] = number
    element["modality"] = modality_coding(series.modality.strip() or "OT")
    if series.description.strip():
        element["description"] = series.description.strip()
    element["numberOfInstances"] = len(series.instances)
    site = body_site_coding(series.body_part)
    if site is not None:
        element["bodySite"] = site
    started = dicom_datetime(series.date, series.time, timezone)
    if started is not None:
        element["started"] = started
    instances = sorted(series.instances, key=lambda i: (i.number is None, i.number or 0, i.sop_uid))
    if instances:
        element["instance"] = [_instance_element(i) for i in instances]
    return element


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def imaging_study_resource(
    study: StudyFacts,
    *,
    endpoint_id: str = ENDPOINT_ID,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the R4 ImagingStudy of a DICOM study (imagingstudy.html).

    Parameters
    ----------
    study : StudyFacts
        The study's DICOM attributes, its patient, series and instances.
    endpoint_id : str
        Id of the Endpoint every study refers to.
    extra : dict, optional
        Further elements (``encounter``, ``reasonCode``, ``reasonReference`` …) merged in.

    Returns
    -------
    dict
        The resource; ``subject`` refers to :func:`patient_id` of the study's patient.
    """
    identifiers: list[dict[str, Any]] = [
        {"use": "official", "system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study.uid}"}
    ]
    if study.accession.strip():
        identifiers.append(
            {
                "use": "usual",
                "type": {"coding": [{"system": V2_0203_SYSTEM, "code": "ACSN"}]},
                "value": study.accession.strip(),
            }
        )
    series = sorted(study.series, key=lambda s: (s.number is None, s.number or 0, s.uid))
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": imaging_study_id(study.uid),
        "identifier": identifiers,
        "status": "available",
        "subject": {"reference": f"Patient/{patient_id(study.patient)}"},
    }
    # a series without Modality is written as OT ("Other"), here and in series[]
    modalities = _unique(s.modality.strip().upper() or "OT" for s in series)
    if modalities:
        resource["modality"] = [modality_coding(m) for m in modalities]
    started = dicom_datetime(study.date, study.time, study.timezone)
    if started is not None:
        resource["started"] = started
    resource["endpoint"] = [{"reference": f"Endpoint/{endpoint_id}"}]
    resource["numberOfSeries"] = len(series)
    resource["numberOfInstances"] = study.number_of_instances
    if study.description.strip():
        resource["description"] = study.description.strip()
    reasons = [r.concept() for r in study.reasons if r.code]
    if reasons:
        resource["reasonCode"] = reasons
    if extra:
        resource.update(extra)
    if series:
        resource["series"] = [_series_element(s, study.timezone) for s in series]
    return resource
