"""The query plan of a cohort: which criteria the server evaluates, which the client does.

The planner reads the server's :class:`~imagingkit.fhir.capabilities.Capabilities` and
puts every criterion where it can be evaluated exactly:

1. **Patients** (patient and clinical criteria): one ``Patient`` search with the patient
   parameters, and, where the server supports ``_has`` (R4 search §3.1.1.4.6),
   ``_has:Condition:subject:code=…`` for each Condition criterion. Conditions the server
   cannot reverse-chain, and every Observation criterion (two value bounds must hold on
   the *same* Observation, which ``_has`` cannot say), are searched on their own type and
   joined on the subject by the client.
2. **Studies**: one ``ImagingStudy`` search with the imaging parameters; patient criteria
   become chained parameters (``patient.gender=…``, R4 search §3.1.1.4.5) when the server
   chains and nothing else restricts the patients; otherwise the patient set of step 1 is
   sent as ``patient=Patient/a,Patient/b,…`` in batches (or, for large sets, the studies
   are filtered on the client). ``_include=ImagingStudy:endpoint`` and
   ``ImagingStudy:subject`` bring the Endpoints and Patients along where listed.
3. **References** not included (Endpoints, Patients) are read with ``_id`` searches.

Whatever the server evaluated, every criterion that can be checked on the returned
resource is checked again by the client, so a server that is lenient (e.g. token case)
or ignores a parameter cannot widen the result: the same cohort gives the same rows on
any server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from imagingkit.fhir.capabilities import Capabilities
from imagingkit.fhir.client import Params
from imagingkit.fhir.criteria import (
    ConditionCode,
    Criterion,
    ObservationValue,
)

__all__ = [
    "ID_BATCH",
    "MAX_ID_LIST",
    "PAGE_SIZE",
    "ClinicalQuery",
    "Plan",
    "make_plan",
    "with_count",
]

#: ``_count`` asked for on every search (servers may cap it).
PAGE_SIZE = 500
#: ids per ``patient=``/``_id=`` request (keeps URLs well under 8 KB).
ID_BATCH = 40
#: above this many patients, studies are searched without an id list and filtered locally.
MAX_ID_LIST = 2000


@dataclass(frozen=True)
class ClinicalQuery:
    """A Condition or Observation search whose subjects are joined on the client."""

    criterion: Criterion
    params: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Plan:
    """What a cohort will ask, and what imagingkit will check itself.

    Attributes
    ----------
    patient_params : tuple or None
        The Patient search (None: no Patient search restricts the cohort).
    patient_checks : tuple
        Patient criteria checked on the returned Patients.
    clinical : tuple of ClinicalQuery
        Condition/Observation searches joined on the subject.
    study_params : tuple
        The ImagingStudy search (without the patient id batches).
    study_checks : tuple
        Imaging criteria checked on the returned ImagingStudies.
    restrict_by_patients : bool
        Whether the study search is restricted to the patient set of step 1.
    notes : tuple of str
        Why the plan is what it is.
    """

    capabilities: Capabilities
    patient_params: tuple[tuple[str, str], ...] | None
    patient_checks: tuple[Criterion, ...]
    clinical: tuple[ClinicalQuery, ...]
    study_params: tuple[tuple[str, str], ...]
    study_checks: tuple[Criterion, ...]
    restrict_by_patients: bool
    include_endpoint: bool
    include_subject: bool
    notes: tuple[str, ...] = field(default=())

    @property
    def has_patient_step(self) -> bool:
        return self.patient_params is not None or bool(self.clinical)


def _server_side(caps: Capabilities, criterion: Criterion) -> bool:
    return bool(criterion.params()) and all(
        caps.supports(criterion.target, name) for name in criterion.param_names()
    )


def make_plan(criteria: Sequence[Criterion], caps: Capabilities) -> Plan:
    """Plan the searches of a cohort with *criteria* on a server with *caps*."""
    notes: list[str] = [caps.describe()]
    patient = [c for c in criteria if c.group == "patient"]
    conditions = [c for c in criteria if isinstance(c, ConditionCode)]
    observations = [c for c in criteria if isinstance(c, ObservationValue)]
    imaging = [c for c in criteria if c.group == "imaging"]

    patient_params: list[tuple[str, str]] = []
    for criterion in patient:
        if _server_side(caps, criterion):
            patient_params.extend(criterion.params())
        else:
            notes.append(f"{criterion.describe()}: not searchable here, checked by imagingkit")
    clinical: list[ClinicalQuery] = []
    for condition in conditions:
        if caps.can_reverse_chain("Condition", "subject", "code"):
            patient_params.extend(
                (f"_has:Condition:subject:{name}", value) for name, value in condition.params()
            )
            notes.append(f"{condition.describe()}: _has on the server")
        else:
            clinical.append(_clinical(caps, condition))
            notes.append(f"{condition.describe()}: Condition search, joined by imagingkit")
    for obs in observations:
        query = _clinical(caps, obs)
        if caps.supports("Observation", "value-quantity"):
            query = ClinicalQuery(obs, (*query.params, *obs.value_params()))
        elif obs.low is not None or obs.high is not None:
            notes.append(f"{obs.describe()}: value range checked by imagingkit")
        clinical.append(query)
        notes.append(f"{obs.describe()}: Observation search, joined by imagingkit")

    study_params: list[tuple[str, str]] = []
    for criterion in imaging:
        if _server_side(caps, criterion):
            study_params.extend(criterion.params())
        elif criterion.params():
            notes.append(f"{criterion.describe()}: not searchable here, checked by imagingkit")
    chain = (
        bool(patient)
        and not clinical
        and not conditions
        and all(
            _server_side(caps, c)
            and all(
                caps.can_chain("ImagingStudy", "patient", "Patient", n) for n in c.param_names()
            )
            for c in patient
        )
    )
    if chain:
        study_params.extend(
            (f"patient.{name}", value) for c in patient for name, value in c.params()
        )
        notes.append("patient criteria chained onto the ImagingStudy search")
    include_endpoint = caps.supports_include("ImagingStudy", "endpoint")
    include_subject = caps.supports_include("ImagingStudy", "subject")
    has_patient_step = bool(patient_params) or bool(clinical) or bool(patient)
    return Plan(
        capabilities=caps,
        patient_params=(tuple(patient_params) if (patient_params or patient) else None),
        patient_checks=tuple(patient),
        clinical=tuple(clinical),
        study_params=tuple(study_params),
        study_checks=tuple(imaging),
        restrict_by_patients=has_patient_step and not chain,
        include_endpoint=include_endpoint,
        include_subject=include_subject,
        notes=tuple(notes),
    )


def _clinical(caps: Capabilities, criterion: Criterion) -> ClinicalQuery:
    params = criterion.params() if _server_side(caps, criterion) else []
    return ClinicalQuery(criterion, tuple(params))


def with_count(params: Params) -> list[tuple[str, str]]:
    """*params* plus the page size."""
    return [*params, ("_count", str(PAGE_SIZE))]
