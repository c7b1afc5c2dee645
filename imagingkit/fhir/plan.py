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

**Counting on the server.** :meth:`Plan.server_count` says when one search's
``Bundle.total`` under ``_summary=count`` (R4 search §3.1.1.5.7) *is* the count of the
cohort: when the cohort is a single Patient search (patients) or a single ImagingStudy
search (studies), with no client-side join, and every client-side re-check is one the
server's parameter already decides exactly (:data:`SERVER_EXACT`), so the re-check cannot
drop a resource the server counted. Otherwise the cohort is downloaded and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from imagingkit.fhir.capabilities import Capabilities
from imagingkit.fhir.client import Params
from imagingkit.fhir.criteria import (
    BirthDate,
    BodySite,
    ConditionCode,
    Criterion,
    Gender,
    Modality,
    ObservationValue,
    StudyUID,
)

__all__ = [
    "ID_BATCH",
    "MAX_ID_LIST",
    "PAGE_SIZE",
    "SERVER_EXACT",
    "ClinicalQuery",
    "Plan",
    "ServerCount",
    "make_plan",
    "with_count",
]

#: ``_count`` asked for on every search (servers may cap it).
PAGE_SIZE = 500
#: ids per ``patient=``/``_id=`` request (keeps URLs well under 8 KB).
ID_BATCH = 40
#: above this many patients, studies are searched without an id list and filtered locally.
MAX_ID_LIST = 2000

#: Criteria whose R4 search parameter accepts exactly the resources the client-side
#: predicate accepts, on any conformant server, so the client's re-check never drops a
#: resource the server matched:
#:
#: * ``gender``: codes of the required administrative-gender value set, all lower case;
#: * ``birthdate``: a ``date`` element searched with whole dates, ranges compared as
#:   R4 search §3.1.1.4.3 says (no time zone on either side);
#: * ``modality`` / ``bodysite``: tokens whose codes have no case to be lenient about
#:   (DICOM CS values are upper case, PS3.5 §6.2, and validated so; SNOMED CT codes are
#:   digits) matched on ``series.modality`` / ``series.bodySite`` as the predicates do;
#: * ``identifier`` of a Study UID: ``urn:dicom:uid|urn:oid:`` + digits and dots.
#:
#: Not in it: a patient identifier (token case sensitivity is the server's choice, R4
#: search §3.1.1.4.10), ``started`` (a dateTime searched with dates: a server may read the
#: bounds in its own time zone, R4 search §3.1.1.4.3, the client reads them in UTC), a
#: description (no R4 parameter) and Observation values (two bounds on one Observation).
SERVER_EXACT: tuple[type[Criterion], ...] = (Gender, BirthDate, Modality, BodySite, StudyUID)


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

    def server_count(self, level: str) -> ServerCount:
        """Whether the server can count the cohort's patients or studies exactly.

        Parameters
        ----------
        level : {"patient", "study"}
            Series and instances are never counted by the server: ``numberOfSeries`` and
            ``numberOfInstances`` are optional, may disagree with the listed series, and
            count series a modality or body-site criterion leaves out of the frame.

        Returns
        -------
        ServerCount
            The one search whose ``Bundle.total`` (``_summary=count``, R4 search
            §3.1.1.5.7) equals ``len()`` of the cohort's frame, or why there is none.
        """
        exact = self._exact_checks
        if level == "patient":
            if self.study_checks:
                return ServerCount(reason="patients with a matching study: joined by imagingkit")
            if self.clinical:
                return ServerCount(reason="Condition/Observation subjects joined by imagingkit")
            if not exact(self.patient_checks):
                return ServerCount(reason=self._why_not(self.patient_checks))
            return ServerCount("Patient", self.patient_params or ())
        if level == "study":
            if self.restrict_by_patients:
                return ServerCount(reason="studies restricted to patients found by another search")
            if not exact((*self.patient_checks, *self.study_checks)):
                return ServerCount(reason=self._why_not((*self.patient_checks, *self.study_checks)))
            return ServerCount("ImagingStudy", self.study_params)
        return ServerCount(
            reason=f"{level}s: numberOfSeries/numberOfInstances are optional and ignore "
            "series criteria, so the frame is counted"
        )

    def _exact_checks(self, criteria: Sequence[Criterion]) -> bool:
        return all(
            isinstance(c, SERVER_EXACT) and _server_side(self.capabilities, c) for c in criteria
        )

    def _why_not(self, criteria: Sequence[Criterion]) -> str:
        inexact = [c.describe() for c in criteria if not self._exact_checks([c])]
        return "checked by imagingkit, not decided exactly by the server: " + "; ".join(inexact)


@dataclass(frozen=True)
class ServerCount:
    """The search that counts a cohort on the server, or the reason there is none.

    Attributes
    ----------
    resource_type : str or None
        ``"Patient"`` or ``"ImagingStudy"``; None when the cohort must be downloaded.
    params : tuple
        The search parameters (without ``_summary=count``).
    reason : str
        Why the server cannot count it (empty when it can).
    """

    resource_type: str | None = None
    params: tuple[tuple[str, str], ...] = ()
    reason: str = ""


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
