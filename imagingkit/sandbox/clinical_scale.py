"""A FHIR-only synthetic cohort of any size: the sandbox's record without pixel data.

The imaging sandbox is kept small (Binder, seconds to generate); FHIR work — benchmarks,
cohort-query teaching, the differential tests — needs more resources than it has images.
:func:`synthetic_record` builds a deterministic cohort of *n* imaging studies described
only by their DICOM facts (patients, series, instances, reasons) and turns it into FHIR
R4 with the same mapping as the sandbox (:mod:`.clinical_imaging`,
:mod:`.clinical_synthetic`), so its resources have exactly the sandbox's shape.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from imagingkit.sandbox.clinical_imaging import (
    InstanceFacts,
    PatientFacts,
    SeriesFacts,
    StudyFacts,
)

__all__ = ["synthetic_record", "synthetic_studies"]

SNOMED = "http://snomed.info/sct"
#: DICOM UID root of the synthetic studies (2.25 = UUID-derived, PS3.5 §B.2)
_ROOT = "2.25.271828182845904523536028747135"
_FAMILIES = [
    "Smith", "García", "Müller", "Rossi", "Nguyen", "Kowalski", "Okafor", "Jensen", "Dubois",
    "Silva", "O'Brien", "Tanaka", "Kim", "Schmidt", "Brown", "Wilson", "Ahmed", "Costa",
    "Murphy", "Lefèvre", "Ivanova", "Hughes", "Santos", "Walker", "Robinson", "Roberts",
]  # fmt: skip
_GIVEN = {
    "F": ["Anna", "Maria", "Sofia", "Chloé", "Ingrid", "Aisha", "Mei", "Zoë", "Grace", "Eva"],
    "M": ["James", "José", "Jürgen", "Marco", "Minh", "Piotr", "Lars", "Erik", "Liam", "Seán"],
}
_SOP_CLASS = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "SEG": "1.2.840.10008.5.1.4.1.1.66.4",
    "SR": "1.2.840.10008.5.1.4.1.1.88.33",
}
#: (reason code, reason display, description, body part, first modality, later modalities)
_PROTOCOLS = [
    ("427359005", "Solitary nodule of lung", "CT chest", "CHEST", "CT", ("CT", "SEG", "SR")),
    ("233604007", "Pneumonia", "XR chest", "CHEST", "CR", ("CR",)),
    ("230690007", "Cerebrovascular accident", "MR brain", "HEAD", "MR", ("MR",)),
    ("25064002", "Headache", "CT head", "HEAD", "CT", ("CT",)),
    ("125605004", "Fracture of bone", "XR wrist", "WRIST", "DX", ("DX",)),
    ("89164003", "Breast lump", "Mammography", "BREAST", "MG", ("MG", "US")),
    ("300331000", "Lesion of liver", "US abdomen", "ABDOMEN", "US", ("US",)),
    ("93880001", "Primary malignant neoplasm of lung", "PET-CT", "WHOLEBODY", "PT", ("CT",)),
    ("30989003", "Knee pain", "MR knee", "KNEE", "MR", ("MR",)),
]


def synthetic_studies(count: int, *, seed: int = 0) -> tuple[list[StudyFacts], dict[str, Any]]:
    """Describe *count* imaging studies and their patients (deterministic in *seed*).

    Each patient has 1–5 studies between 2010 and 2024, each study 1–4 series of 1–8
    instances following one of the sandbox's clinical stories.

    Returns
    -------
    (list of StudyFacts, dict)
        The studies, and a ``cohort.json``-like mapping (``seed`` and each study's
        ``reason``) for :func:`imagingkit.sandbox.clinical.clinical_record`.
    """
    rng = random.Random(f"imagingkit-synthetic:{seed}")
    studies: list[StudyFacts] = []
    reasons: list[dict[str, Any]] = []
    number = 0
    while len(studies) < count:
        number += 1
        sex = rng.choice("FM")
        born = dt.date(1930, 1, 1) + dt.timedelta(days=rng.randrange(75 * 365))
        patient = PatientFacts(
            patient_id=f"IKX{seed % 1000:03d}{number:06d}",
            issuer="IMAGINGKIT-SYNTHETIC",
            name=f"{rng.choice(_FAMILIES)}^{rng.choice(_GIVEN[sex])}",
            birth_date=born.strftime("%Y%m%d"),
            sex=sex,
        )
        protocol = rng.choice(_PROTOCOLS)
        for visit in range(min(rng.randint(1, 5), count - len(studies))):
            study = _study(rng, patient, f"{_ROOT}.{seed}.{number}.{visit + 1}", protocol)
            studies.append(study)
            reasons.append(
                {
                    "StudyInstanceUID": study.uid,
                    "reason": {"system": SNOMED, "code": protocol[0], "display": protocol[1]},
                }
            )
    return studies, {"seed": seed, "studies": reasons}


def _study(
    rng: random.Random, patient: PatientFacts, uid: str, protocol: tuple[Any, ...]
) -> StudyFacts:
    _code, _display, description, body_part, first, later = protocol
    day = dt.date(2010, 1, 1) + dt.timedelta(days=rng.randrange(15 * 365))
    series = []
    for index in range(rng.randint(1, 4)):
        modality = first if index == 0 else rng.choice(later)
        series_uid = f"{uid}.{index + 1}"
        series.append(
            SeriesFacts(
                uid=series_uid,
                modality=modality,
                number=index + 1,
                description=f"{description} {index + 1}",
                body_part=body_part,
                instances=tuple(
                    InstanceFacts(f"{series_uid}.{i}", _SOP_CLASS[modality], i)
                    for i in range(1, rng.randint(1, 8) + 1)
                ),
            )
        )
    return StudyFacts(
        uid=uid,
        patient=patient,
        accession=f"IKX{rng.randrange(10**7):07d}",
        date=day.strftime("%Y%m%d"),
        time=f"{rng.randint(7, 19):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}",
        description=description,
        series=tuple(series),
    )


def synthetic_record(
    count: int,
    *,
    seed: int = 0,
    clinical: bool = True,
    endpoint_address: str | None = None,
) -> list[dict[str, Any]]:
    """FHIR R4 resources for :func:`synthetic_studies` (*count* ImagingStudies).

    Parameters
    ----------
    count : int
        Number of imaging studies.
    seed : int
        The same seed always gives the same resources.
    clinical : bool
        Also build the clinical record (Encounter, Condition, Observation,
        DiagnosticReport); otherwise only Endpoint, Patients and ImagingStudies.
    endpoint_address : str, optional
        The Endpoint's address (default: the FHIR store's DICOMweb placeholder).
    """
    from imagingkit.sandbox.clinical import DICOMWEB_BASE_PLACEHOLDER, clinical_record

    studies, cohort = synthetic_studies(count, seed=seed)
    return clinical_record(
        studies,
        cohort if clinical else {},
        endpoint_address=endpoint_address or DICOMWEB_BASE_PLACEHOLDER,
    )
