"""Seeded clinical facts around each sandbox imaging study (FHIR R4).

For every study of the generated cohort this module writes what a hospital record would
hold around it: the visit (Encounter), the problem that motivated the imaging (Condition,
SNOMED CT, with an onset before the study), a few vitals and labs taken at that visit
(Observation, LOINC codes with UCUM units) and the radiology report (DiagnosticReport,
LOINC 18748-4, pointing at the ImagingStudy).

Values come from a :class:`random.Random` seeded with the cohort seed and the Study
Instance UID, so the same seed always gives the same record, independently of the order in
which studies are processed. Every dateTime that carries a time carries a zone, as R4
requires (datatypes.html#dateTime).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imagingkit.sandbox.clinical_imaging import SNOMED_SYSTEM, fhir_id

__all__ = [
    "LOINC_SYSTEM",
    "UCUM_SYSTEM",
    "VisitContext",
    "condition_resource",
    "diagnostic_report_resource",
    "encounter_resource",
    "imaging_study_links",
    "observation_resources",
]

LOINC_SYSTEM = "http://loinc.org"
UCUM_SYSTEM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"

#: R4 vital-signs profiles the height and weight Observations conform to (observation-vitalsigns)
BODY_HEIGHT_PROFILE = "http://hl7.org/fhir/StructureDefinition/bodyheight"
BODY_WEIGHT_PROFILE = "http://hl7.org/fhir/StructureDefinition/bodyweight"

#: Words in a SNOMED CT display that mark an acute problem seen in the emergency department.
_ACUTE_WORDS = (
    "cerebrovascular",
    "stroke",
    "infarct",
    "hemorrhage",
    "haemorrhage",
    "fracture",
    "injury",
    "trauma",
)
#: Words marking a problem that began days (not months) before the imaging.
_SUBACUTE_WORDS = ("pneumonia", "headache", "infection")

_INTERPRETATION_DISPLAY = {"L": "Low", "N": "Normal", "H": "High"}


@dataclass(frozen=True)
class VisitContext:
    """What one imaging visit's clinical resources are built from.

    Attributes
    ----------
    study_uid : str
        Study Instance UID (the key of every derived id).
    imaging_study_id, patient_id : str
        Ids of the ImagingStudy and of its Patient.
    started : datetime.datetime
        When the study started (timezone-aware).
    gender : str
        The Patient's administrative gender.
    birth_date : datetime.date or None
        The Patient's birth date.
    reason : Mapping
        ``{"system", "code", "display"}``: the SNOMED CT problem motivating the study.
    description : str
        Study description, for the report's text.
    seed : int
        Cohort seed.
    height_cm, weight_kg : float, optional
        Measured values (DICOM PatientSize/PatientWeight); synthetic ones otherwise.
    """

    study_uid: str
    imaging_study_id: str
    patient_id: str
    started: dt.datetime
    gender: str
    birth_date: dt.date | None
    reason: Mapping[str, str]
    description: str
    seed: int
    height_cm: float | None = None
    weight_kg: float | None = None

    def rng(self, purpose: str) -> random.Random:
        """A generator for *purpose*, seeded by the cohort seed and the study UID."""
        return random.Random(f"{self.seed}:{purpose}:{self.study_uid}")

    @property
    def acute(self) -> bool:
        """Whether the reason is an acute problem (emergency visit, onset hours before)."""
        display = self.reason.get("display", "").lower()
        return any(word in display for word in _ACUTE_WORDS)

    @property
    def age(self) -> int | None:
        """Age in whole years at the study."""
        if self.birth_date is None:
            return None
        day = self.started.date()
        born = self.birth_date
        return day.year - born.year - ((day.month, day.day) < (born.month, born.day))

    @property
    def encounter_id(self) -> str:
        """Id of the visit's Encounter."""
        return fhir_id("enc", self.study_uid)

    @property
    def report_id(self) -> str:
        """Id of the study's DiagnosticReport."""
        return fhir_id("rep", self.study_uid)

    @property
    def condition_id(self) -> str:
        """Id of the patient's Condition for this reason (one per patient and code)."""
        return fhir_id("cond", self.patient_id, self.reason.get("code", ""))

    @property
    def admitted(self) -> dt.datetime:
        """Start of the visit: 100–200 minutes before the study."""
        return self.started - dt.timedelta(minutes=self.rng("encounter").randint(100, 200))

    def finding_positive(self) -> bool:
        """Whether the report confirms the suspected problem (about two in three do)."""
        return self.rng("finding").random() < 0.65


def _instant(value: dt.datetime) -> str:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z")


def _reason_concept(reason: Mapping[str, str]) -> dict[str, Any]:
    coding = {
        "system": reason.get("system", SNOMED_SYSTEM),
        "code": reason["code"],
        "display": reason["display"],
    }
    return {"coding": [coding], "text": reason["display"]}


def _ref(kind: str, ident: str) -> dict[str, str]:
    return {"reference": f"{kind}/{ident}"}


def imaging_study_links(visit: VisitContext) -> dict[str, Any]:
    """The ImagingStudy elements that tie it to its visit: ``encounter``, ``reasonCode``
    and ``reasonReference`` (the Condition)."""
    return {
        "encounter": _ref("Encounter", visit.encounter_id),
        "reasonCode": [_reason_concept(visit.reason)],
        "reasonReference": [_ref("Condition", visit.condition_id)],
    }


def encounter_resource(visit: VisitContext) -> dict[str, Any]:
    """The imaging visit (R4 Encounter): finished, emergency or ambulatory, with its length.

    ``reasonReference`` points at the Condition; ``length`` is a UCUM Duration in minutes.
    """
    rng = visit.rng("encounter-end")
    start = visit.admitted
    end = visit.started + dt.timedelta(minutes=rng.randint(15, 120))
    minutes = int((end - start).total_seconds() // 60)
    klass = (
        {"system": ACT_CODE, "code": "EMER", "display": "emergency"}
        if visit.acute
        else {"system": ACT_CODE, "code": "AMB", "display": "ambulatory"}
    )
    return {
        "resourceType": "Encounter",
        "id": visit.encounter_id,
        "status": "finished",
        "class": klass,
        "type": [
            {
                "coding": [
                    {
                        "system": SNOMED_SYSTEM,
                        "code": "363679005",
                        "display": "Imaging",
                    }
                ],
                "text": "Imaging visit",
            }
        ],
        "subject": _ref("Patient", visit.patient_id),
        "period": {"start": _instant(start), "end": _instant(end)},
        "length": {"value": minutes, "unit": "min", "system": UCUM_SYSTEM, "code": "min"},
        "reasonCode": [_reason_concept(visit.reason)],
        "reasonReference": [_ref("Condition", visit.condition_id)],
    }


def condition_resource(visit: VisitContext, *, confirmed: bool) -> dict[str, Any]:
    """The problem that motivated the imaging (R4 Condition, SNOMED CT).

    Its onset is before the study (hours for an acute problem, days for pneumonia or a
    headache, weeks to a year otherwise);
    it was recorded at the imaging visit. A report that confirms the problem makes it
    ``active``/``confirmed``; one that does not makes it ``inactive``/``refuted``.
    """
    rng = visit.rng("condition")
    if visit.acute:
        onset = visit.started - dt.timedelta(hours=rng.randint(1, 10), minutes=rng.randint(0, 59))
    elif any(word in visit.reason.get("display", "").lower() for word in _SUBACUTE_WORDS):
        onset = visit.started - dt.timedelta(days=rng.randint(1, 14))
    else:
        onset = visit.started - dt.timedelta(days=rng.randint(7, 365))
    clinical = ("active", "Active") if confirmed else ("inactive", "Inactive")
    verification = ("confirmed", "Confirmed") if confirmed else ("refuted", "Refuted")
    return {
        "resourceType": "Condition",
        "id": visit.condition_id,
        "clinicalStatus": {
            "coding": [{"system": CONDITION_CLINICAL, "code": clinical[0], "display": clinical[1]}]
        },
        "verificationStatus": {
            "coding": [
                {
                    "system": CONDITION_VERIFICATION,
                    "code": verification[0],
                    "display": verification[1],
                }
            ]
        },
        "category": [
            {
                "coding": [
                    {
                        "system": CONDITION_CATEGORY,
                        "code": "encounter-diagnosis",
                        "display": "Encounter Diagnosis",
                    }
                ]
            }
        ],
        "code": _reason_concept(visit.reason),
        "subject": _ref("Patient", visit.patient_id),
        "encounter": _ref("Encounter", visit.encounter_id),
        "onsetDateTime": _instant(onset) if visit.acute else onset.date().isoformat(),
        "recordedDate": _instant(visit.started),
    }


@dataclass(frozen=True)
class _Measure:
    code: str
    display: str
    category: str
    unit: str
    decimals: int
    low: float | None = None
    high: float | None = None
    profile: str | None = None


_HEIGHT = _Measure("8302-2", "Body height", "vital-signs", "cm", 1, profile=BODY_HEIGHT_PROFILE)
_WEIGHT = _Measure("29463-7", "Body weight", "vital-signs", "kg", 1, profile=BODY_WEIGHT_PROFILE)
_SYSTOLIC = _Measure("8480-6", "Systolic blood pressure", "vital-signs", "mm[Hg]", 0, 90, 140)
_CREATININE = _Measure(
    "2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "laboratory", "mg/dL", 2, 0.6, 1.3
)
_HEMOGLOBIN = _Measure(
    "718-7", "Hemoglobin [Mass/volume] in Blood", "laboratory", "g/dL", 1, 12.0, 17.5
)
_GLUCOSE = _Measure(
    "2345-7", "Glucose [Mass/volume] in Serum or Plasma", "laboratory", "mg/dL", 0, 70, 140
)


def _body_height(visit: VisitContext) -> float:
    """Height in cm, stable for a patient (seeded by the patient, not the study)."""
    person = random.Random(f"{visit.seed}:height:{visit.patient_id}")
    mean, sd = (176.0, 7.0) if visit.gender == "male" else (163.0, 6.5)
    return min(205.0, max(140.0, person.gauss(mean, sd)))


def _values(visit: VisitContext) -> dict[_Measure, float]:
    rng = visit.rng("observations")
    male = visit.gender == "male"
    age = visit.age if visit.age is not None else 50
    height = visit.height_cm or _body_height(visit)
    bmi = min(45.0, max(16.0, rng.gauss(26.5, 4.0)))
    glucose_mean = 150.0 if "diabet" in visit.reason.get("display", "").lower() else 100.0
    return {
        _HEIGHT: height,
        _WEIGHT: visit.weight_kg or bmi * (height / 100.0) ** 2,
        _SYSTOLIC: max(85.0, rng.gauss(112.0 + 0.35 * age + (15 if visit.acute else 0), 14.0)),
        _CREATININE: max(0.4, rng.gauss(1.0 if male else 0.8, 0.22)),
        _HEMOGLOBIN: max(7.0, rng.gauss(14.9 if male else 13.3, 1.2)),
        _GLUCOSE: max(55.0, rng.gauss(glucose_mean, 18.0)),
    }


def _observation(
    visit: VisitContext, measure: _Measure, value: float, when: dt.datetime
) -> dict[str, Any]:
    rounded = round(value, measure.decimals)
    number: float | int = int(rounded) if measure.decimals == 0 else rounded
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": fhir_id("obs", visit.study_uid, measure.code),
    }
    if measure.profile is not None:
        resource["meta"] = {"profile": [measure.profile]}
    category_display = "Vital Signs" if measure.category == "vital-signs" else "Laboratory"
    resource.update(
        {
            "status": "final",
            "category": [
                {
                    "coding": [
                        {
                            "system": OBSERVATION_CATEGORY,
                            "code": measure.category,
                            "display": category_display,
                        }
                    ]
                }
            ],
            "code": {
                "coding": [
                    {"system": LOINC_SYSTEM, "code": measure.code, "display": measure.display}
                ],
                "text": measure.display,
            },
            "subject": _ref("Patient", visit.patient_id),
            "encounter": _ref("Encounter", visit.encounter_id),
            "effectiveDateTime": _instant(when),
            "valueQuantity": {
                "value": number,
                "unit": measure.unit,
                "system": UCUM_SYSTEM,
                "code": measure.unit,
            },
        }
    )
    if measure.low is not None and measure.high is not None:
        flag = "L" if number < measure.low else "H" if number > measure.high else "N"
        resource["interpretation"] = [
            {
                "coding": [
                    {
                        "system": INTERPRETATION,
                        "code": flag,
                        "display": _INTERPRETATION_DISPLAY[flag],
                    }
                ]
            }
        ]
        bound = {"unit": measure.unit, "system": UCUM_SYSTEM, "code": measure.unit}
        resource["referenceRange"] = [
            {"low": {"value": measure.low, **bound}, "high": {"value": measure.high, **bound}}
        ]
    return resource


def observation_resources(visit: VisitContext, *, with_height: bool) -> list[dict[str, Any]]:
    """Vitals and labs taken at the imaging visit (R4 Observation, LOINC, UCUM).

    Weight, systolic blood pressure, creatinine (checked before contrast), hemoglobin and
    glucose at every visit; body height at the patient's first visit (*with_height*).
    Vitals are taken on arrival, labs drawn 15–60 minutes later, all within the visit and
    before the study.
    """
    rng = visit.rng("observation-times")
    arrival = visit.admitted + dt.timedelta(minutes=rng.randint(5, 15))
    drawn = arrival + dt.timedelta(minutes=rng.randint(15, 60))
    values = _values(visit)
    measures = [_WEIGHT, _SYSTOLIC, _CREATININE, _HEMOGLOBIN, _GLUCOSE]
    if with_height:
        measures.insert(0, _HEIGHT)
    return [
        _observation(visit, m, values[m], arrival if m.category == "vital-signs" else drawn)
        for m in measures
    ]


def diagnostic_report_resource(visit: VisitContext, *, positive: bool) -> dict[str, Any]:
    """The radiology report (R4 DiagnosticReport, LOINC 18748-4) on the ImagingStudy."""
    rng = visit.rng("report")
    issued = visit.started + dt.timedelta(hours=rng.randint(1, 20), minutes=rng.randint(0, 59))
    display = visit.reason["display"]
    what = visit.description or "Imaging study"
    resource: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": visit.report_id,
        "status": "final",
        "category": [{"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"}]}],
        "code": {
            "coding": [
                {"system": LOINC_SYSTEM, "code": "18748-4", "display": "Diagnostic imaging study"}
            ],
            "text": what,
        },
        "subject": _ref("Patient", visit.patient_id),
        "encounter": _ref("Encounter", visit.encounter_id),
        "effectiveDateTime": _instant(visit.started),
        "issued": _instant(issued),
        "imagingStudy": [_ref("ImagingStudy", visit.imaging_study_id)],
    }
    if positive:
        resource["conclusion"] = f"{what}: findings consistent with {display.lower()}."
        resource["conclusionCode"] = [_reason_concept(visit.reason)]
    else:
        resource["conclusion"] = f"{what}: no evidence of {display.lower()}."
    return resource
