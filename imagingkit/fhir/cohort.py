"""The cohort builder: an immutable, chainable query over patients and their imaging.

>>> cohort = (bridge.cohort()                                        # doctest: +SKIP
...           .patient(gender="female", age=(40, 80))
...           .condition("http://snomed.info/sct|427359005")
...           .imaging(modality="CT", body_site="CHEST", started=("2015", "2024")))
>>> cohort.count(), cohort.patients(), cohort.studies(level="series")  # doctest: +SKIP
>>> print(cohort.explain())                                          # doctest: +SKIP

Every method returns a new :class:`Cohort`; criteria are combined with AND. A patient is in
the cohort when it meets every patient and clinical criterion and, if there are imaging
criteria, has at least one ImagingStudy meeting all of them. :meth:`Cohort.studies` returns
those studies (all studies of the cohort's patients when there are no imaging criteria).
How the searches are split between server and client is :mod:`imagingkit.fhir.plan`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd

from imagingkit.errors import (
    FHIRError,
    InvalidDateError,
    InvalidQueryError,
    OperationOutcomeError,
)
from imagingkit.fhir.capabilities import Capabilities
from imagingkit.fhir.criteria import (
    BirthDate,
    BodySite,
    ConditionCode,
    Criterion,
    Description,
    Gender,
    Modality,
    PatientIdentifier,
    Started,
    StudyUID,
    body_site_codes,
    criterion_from_dict,
    modality_codes,
    observation,
    parse_date,
    parse_token,
    study_uids,
)
from imagingkit.fhir.endpoints import reference_key
from imagingkit.fhir.fill_in import fill_in
from imagingkit.fhir.flatten import (
    Collected,
    check_level,
    patient_frame,
    studies_frame,
)
from imagingkit.fhir.model import Resource, SeriesBase
from imagingkit.fhir.plan import ID_BATCH, MAX_ID_LIST, Plan, make_plan, with_count

if TYPE_CHECKING:
    from imagingkit.bridge import Bridge

__all__ = ["Cohort"]

log = logging.getLogger("imagingkit.fhir")
_T = TypeVar("_T")
_SUMMARY_COUNT = ("_summary", "count")


def _range(value: Any, what: str) -> tuple[Any, Any]:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return value[0], value[1]
    raise InvalidQueryError(f"{what} {value!r} must be a (low, high) pair; use None for open")


def _birth_range_for_age(low: Any, high: Any, as_of: dt.date) -> BirthDate:
    """Ages [low, high] in whole years on *as_of* → an inclusive birth-date range."""
    for value in (low, high):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise InvalidQueryError(f"age {value!r} is not a whole number of years ≥ 0")
    if low is not None and high is not None and low > high:
        raise InvalidQueryError(f"age range ({low}, {high}) is empty")

    def years_before(years: int) -> dt.date:
        try:
            return as_of.replace(year=as_of.year - years)
        except ValueError:  # 29 February
            return as_of.replace(year=as_of.year - years, day=28)

    latest = years_before(low).isoformat() if low is not None else None
    earliest = (
        (years_before(high + 1) + dt.timedelta(days=1)).isoformat() if high is not None else None
    )
    return BirthDate(earliest, latest, note=f"age {low}–{high} on {as_of.isoformat()}")


@dataclass(frozen=True)
class Cohort:
    """An immutable cohort query bound to a :class:`~imagingkit.bridge.Bridge`.

    Build it with :meth:`patient`, :meth:`condition`, :meth:`observation` and
    :meth:`imaging`; run it with :meth:`count`, :meth:`patients` and :meth:`studies`;
    see the requests with :meth:`explain`.
    """

    bridge: Bridge = field(repr=False, compare=False)
    criteria: tuple[Criterion, ...] = ()

    # -- building -----------------------------------------------------------------------

    def where(self, *criteria: Criterion) -> Cohort:
        """A new cohort with *criteria* added (AND)."""
        return replace(self, criteria=(*self.criteria, *criteria))

    def patient(
        self,
        *,
        gender: str | None = None,
        birth_date: tuple[Any, Any] | None = None,
        age: tuple[int | None, int | None] | None = None,
        identifier: str | tuple[str | None, str] | None = None,
        as_of: dt.date | str | None = None,
    ) -> Cohort:
        """Add patient criteria.

        Parameters
        ----------
        gender : {"male", "female", "other", "unknown"}, optional
            Patient.gender (R4 administrative-gender).
        birth_date : (low, high), optional
            Inclusive birth-date range; FHIR dates (``"1950"``, ``"1950-06"``,
            ``"1950-06-15"``) or ``datetime.date``; ``None`` for an open end.
        age : (low, high), optional
            Inclusive age range in whole years on *as_of* (default: today), turned into a
            birth-date range (kept in provenance, so a re-pull is the same cohort).
        identifier : str or (system, value), optional
            Patient.identifier, ``"value"``, ``"system|value"`` or ``(system, value)``.

        Raises
        ------
        InvalidQueryError, InvalidDateError
            Naming the bad value.
        """
        added: list[Criterion] = []
        if gender is not None:
            added.append(Gender(gender))
        if birth_date is not None:
            low, high = _range(birth_date, "birth_date")
            lo = parse_date(low, what="birth date") if low is not None else None
            hi = parse_date(high, what="birth date") if high is not None else None
            added.append(BirthDate(lo, hi))
        if age is not None:
            low, high = _range(age, "age")
            day = (
                dt.date.fromisoformat(parse_date(as_of, what="as_of")) if as_of else dt.date.today()
            )
            if isinstance(as_of, str) and len(as_of) != 10:
                raise InvalidDateError(f"as_of {as_of!r} must be a full date (YYYY-MM-DD)")
            added.append(_birth_range_for_age(low, high, day))
        if identifier is not None:
            added.append(PatientIdentifier(parse_token(identifier, what="patient identifier")))
        return self.where(*added)

    def condition(self, *codes: str | tuple[str, str], system: str | None = None) -> Cohort:
        """Patients with a Condition coded with any of *codes* (``"code"`` or
        ``"system|code"``; *system* applies to bare codes)."""
        if not codes:
            raise InvalidQueryError("condition() needs at least one code")
        tokens = tuple(
            parse_token(
                (system, c) if system and isinstance(c, str) and "|" not in c else c,
                what="condition code",
            )
            for c in codes
        )
        return self.where(ConditionCode(tokens))

    def observation(
        self,
        code: str | tuple[str, str],
        *,
        value: tuple[float | None, float | None] | None = None,
        unit: str | None = None,
        system: str | None = None,
    ) -> Cohort:
        """Patients with an Observation coded *code* whose value lies in *value* (inclusive;
        ``None`` for an open end) in *unit* (UCUM, optional)."""
        low, high = _range(value, "observation value") if value is not None else (None, None)
        if system and isinstance(code, str) and "|" not in code:
            code = (system, code)
        return self.where(observation(code, low, high, unit))

    def imaging(
        self,
        *,
        modality: str | Sequence[str] | None = None,
        body_site: str | Sequence[str] | None = None,
        started: tuple[Any, Any] | None = None,
        description: str | None = None,
        study_uid: str | Sequence[str] | None = None,
    ) -> Cohort:
        """Add imaging criteria (each must hold on one ImagingStudy).

        Parameters
        ----------
        modality : str or list, optional
            DICOM modality codes, any of (``"CT"``); matches ``series.modality`` as R4's
            ``modality`` search parameter does.
        body_site : str or list, optional
            SNOMED CT codes or Body Part Examined terms (``"CHEST"``), any of.
        started : (low, high), optional
            Inclusive study-date range (FHIR dates).
        description : str, optional
            Text the study or a series description contains (case-insensitive).
        study_uid : str or list, optional
            Study Instance UIDs.
        """
        added: list[Criterion] = []
        if modality is not None:
            added.append(
                Modality(modality_codes([modality] if isinstance(modality, str) else modality))
            )
        if body_site is not None:
            added.append(
                BodySite(body_site_codes([body_site] if isinstance(body_site, str) else body_site))
            )
        if started is not None:
            low, high = _range(started, "started")
            added.append(
                Started(
                    parse_date(low, what="study date") if low is not None else None,
                    parse_date(high, what="study date") if high is not None else None,
                )
            )
        if description is not None:
            added.append(Description(description))
        if study_uid is not None:
            added.append(
                StudyUID(study_uids([study_uid] if isinstance(study_uid, str) else study_uid))
            )
        return self.where(*added)

    # -- provenance ---------------------------------------------------------------------

    def to_dict(self) -> list[dict[str, Any]]:
        """The criteria as plain data (JSON-ready)."""
        return [c.to_dict() for c in self.criteria]

    @classmethod
    def from_dict(cls, bridge: Bridge, criteria: Iterable[Mapping[str, Any]]) -> Cohort:
        """Rebuild a cohort from :meth:`to_dict` output."""
        return cls(bridge, tuple(criterion_from_dict(c) for c in criteria))

    # -- planning -----------------------------------------------------------------------

    def plan(self) -> Plan:
        """The searches this cohort makes on its server (see :mod:`imagingkit.fhir.plan`)."""
        caps = self.bridge.capabilities()
        return make_plan(self.criteria, caps)

    def explain(self) -> str:
        """The requests the cohort will make, and what imagingkit checks itself."""
        plan = self.plan()
        client = self.bridge.fhir
        lines = [f"FHIR server {client.url}", f"  {plan.notes[0]}"]
        step = 0
        if plan.patient_params is not None:
            step += 1
            lines.append(
                f"{step}. GET {client.url_for('Patient', with_count(plan.patient_params))}"
            )
        for query in plan.clinical:
            step += 1
            lines.append(
                f"{step}. GET {client.url_for(query.criterion.target, with_count(query.params))}"
                "  → subjects joined by imagingkit"
            )
        step += 1
        params = list(plan.study_params)
        if plan.restrict_by_patients:
            params.append(("patient", "{Patient/id,… from the steps above}"))
        lines.append(
            f"{step}. GET "
            f"{client.url_for('ImagingStudy', with_count(_with_includes(plan, params)))}"
        )
        if plan.restrict_by_patients:
            lines.append(
                f"   (patient ids {ID_BATCH} per request; above {MAX_ID_LIST} patients the "
                "studies are filtered by imagingkit instead)"
            )
        step += 1
        lines.append(
            f"{step}. GET Endpoint?_id=… and Patient?_id=… for references not included "
            f"({ID_BATCH} ids per request)"
        )
        for level in ("patient", "study"):
            counting = plan.server_count(level)
            if counting.resource_type is not None:
                url = client.url_for(counting.resource_type, [*counting.params, _SUMMARY_COUNT])
                lines.append(f"count({level!r}): counted by the server, one GET {url}")
            else:
                lines.append(f"count({level!r}): retrieved and counted ({counting.reason})")
        lines.append("Notes:")
        lines.extend(f"  - {note}" for note in plan.notes[1:])
        checked = [c.describe() for c in (*plan.patient_checks, *plan.study_checks)]
        if checked:
            lines.append(
                "  - re-checked by imagingkit on every returned resource: " + "; ".join(checked)
            )
        return "\n".join(lines)

    # -- running ------------------------------------------------------------------------

    def _execute(
        self, action: Callable[[_Execution], _T], executor: Executor | None, progress: bool
    ) -> _T:
        """Run *action* on the plan; if the server refuses (HTTP 400) a search its
        CapabilityStatement declares, run it again with every join on the client."""
        execution = _Execution(self, executor, progress)
        try:
            return action(execution)
        except OperationOutcomeError as error:
            caps = execution.plan.capabilities
            pushed = caps.chaining or caps.reverse_chaining or bool(caps.includes)
            if error.status != 400 or not pushed:
                raise
            log.warning("%s; the joins are made by imagingkit instead", error)
            fallback = _Execution(self, executor, progress, forced_client_joins(caps))
            return action(fallback)

    def count(self, level: str = "patient") -> int:
        """How many patients (default), studies, series or instances the cohort holds.

        Always ``len(cohort.patients())`` or ``len(cohort.studies(level=level))``
        (DESIGN.md D6). When :meth:`Plan.server_count <imagingkit.fhir.plan.Plan.server_count>`
        finds one search whose result is exactly the cohort — patients from one Patient
        search, studies from one ImagingStudy search, no join or re-check made by
        imagingkit that could drop a resource — the server counts it: one request with
        ``_summary=count``, read from ``Bundle.total`` (FHIR R4 search §3.1.1.5.7).
        Otherwise, or if the server gives no total or refuses the request (4xx), the
        cohort is retrieved and counted. :meth:`explain` says which.

        Parameters
        ----------
        level : {"patient", "study", "series", "instance"}
            Series and instances are always counted from the retrieved frame (the
            ImagingStudy counts ``numberOfSeries``/``numberOfInstances`` are optional and
            do not know which series a modality or body-site criterion keeps).

        Raises
        ------
        InvalidQueryError
            If *level* is not one of those.
        """
        if level != "patient":
            level = check_level(level)
        total = self._server_total(level)
        if total is not None:
            return total
        if level == "patient":
            return len(self.patients(progress=False))
        frame = self.studies(level=level, progress=False)
        return len(frame)

    def _server_total(self, level: str) -> int | None:
        """``Bundle.total`` of the plan's counting search, or None (count the frame)."""
        query = self.plan().server_count(level)
        if query.resource_type is None:
            return None
        try:
            total = self.bridge.fhir.total(query.resource_type, query.params)
        except FHIRError as error:
            if error.status is None or not 400 <= error.status < 500:
                raise
            log.warning("%s; the cohort is retrieved and counted instead", error)
            return None
        if total is None:
            log.info("%s gave no Bundle.total: the cohort is counted", query.resource_type)
        return total

    def patients(self, *, executor: Executor | None = None, progress: bool = True) -> pd.DataFrame:
        """The cohort's patients: one row each (``patient_ref``, ``patient_id``, PatientID,
        IssuerOfPatientID, PatientSex, PatientBirthDate, gender), sorted by ``patient_ref``."""
        result = self._execute(lambda run: run.run_patients(), executor, progress)
        frame = patient_frame(sorted(result, key=lambda p: p.key))
        frame.attrs["imagingkit"] = self.bridge.provenance(self, "patients", None)
        return frame

    def studies(
        self,
        level: str = "series",
        *,
        matching_series_only: bool = True,
        executor: Executor | None = None,
        progress: bool = True,
    ) -> pd.DataFrame:
        """The cohort's imaging as a DataFrame (DESIGN.md D6).

        Parameters
        ----------
        level : {"study", "series", "instance"}
            One row per study, series (default) or instance.
        matching_series_only : bool
            At series/instance level, keep only the series that meet the series-level
            criteria (modality, body site) themselves; ``False`` keeps every series of
            each matching study.
        executor : concurrent.futures.Executor, optional
            Runs the batched searches and the QIDO-RS fill-in of studies that list no
            series (default: thread pools of ``settings.concurrency``); a
            ``dask.distributed.Client`` runs the fill-in on its cluster.
        progress : bool
            Show progress bars (tqdm.auto) of the ImagingStudies received and filled in.

        Returns
        -------
        pandas.DataFrame
            With ``df.attrs["imagingkit"]``: the query, servers and time, from which
            :func:`imagingkit.from_provenance` pulls the same cohort again.
        """
        level = check_level(level)
        instances = level == "instance"
        result = self._execute(lambda run: run.run(instances=instances), executor, progress)
        frame = self._frame(result, level, matching_series_only, executor, progress)
        frame.attrs["imagingkit"] = self.bridge.provenance(
            self, "studies", level, matching_series_only=matching_series_only
        )
        return frame

    def recheck(
        self,
        study_ids: Sequence[str],
        level: str = "series",
        *,
        matching_series_only: bool = True,
    ) -> pd.DataFrame:
        """The rows :meth:`studies` would give now for the ImagingStudies *study_ids* only.

        The cohort's own plan runs again with the study search restricted by ``_id``
        (FHIR R4 search.html §3.1.1.4.1, ``_id``; :data:`~imagingkit.fhir.plan.ID_BATCH`
        ids per request), so a study is in the result exactly when it is in the cohort
        now, with the columns and dtypes of :meth:`studies` (DESIGN.md D6). A live frame
        uses it to re-check the studies a Subscription reported as changed.

        Parameters
        ----------
        study_ids : sequence of str
            Logical ids of ImagingStudy resources; at least one.
        level, matching_series_only
            As :meth:`studies`.

        Returns
        -------
        pandas.DataFrame
            Without ``attrs["imagingkit"]`` provenance: the rows are a part of the cohort,
            not a query that can be pulled again.

        Raises
        ------
        InvalidQueryError
            *study_ids* is empty.
        """
        level = check_level(level)
        ids = list(study_ids)
        if not ids:
            raise InvalidQueryError("recheck needs at least one ImagingStudy id")
        instances = level == "instance"
        frames = []
        for batch in _batches(ids):

            def action(run: _Execution, restrict: str = ",".join(batch)) -> _Result:
                params = (*run.plan.study_params, ("_id", restrict))
                run.plan = replace(run.plan, study_params=params)
                return run.run(instances=instances)

            frames.append(
                self._frame(self._execute(action, None, False), level, matching_series_only)
            )
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]

    def _frame(
        self,
        result: _Result,
        level: str,
        matching_series_only: bool,
        executor: Executor | None = None,
        progress: bool = False,
    ) -> pd.DataFrame:
        """The DataFrame of one run's resources, filled in by QIDO-RS where studies lack
        series (:func:`imagingkit.fhir.fill_in.fill_in`, concurrent on *executor*)."""
        series_filter = self._series_filter() if matching_series_only else None
        frame = studies_frame(
            result.collected,
            level=level,
            dicomweb=self.bridge.dicomweb,
            series_filter=series_filter,
        )
        factory = self.bridge.dicomweb_client_factory
        if level != "study" and factory is not None:
            frame = fill_in(frame, level, factory, executor=executor, progress=progress)
        return frame

    def _series_filter(self) -> Callable[[SeriesBase], bool] | None:
        checks: list[Modality | BodySite] = [
            c for c in self.criteria if isinstance(c, (Modality, BodySite))
        ]
        if not checks:
            return None
        return lambda series: all(c.series_matches(series) for c in checks)


@dataclass
class _Result:
    collected: Collected
    patient_set: set[str] | None


def _with_includes(plan: Plan, params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out = list(params)
    if plan.include_endpoint:
        out.append(("_include", "ImagingStudy:endpoint"))
    if plan.include_subject:
        out.append(("_include", "ImagingStudy:subject"))
    return out


def _batches(values: Sequence[str], size: int = ID_BATCH) -> Iterator[list[str]]:
    for start in range(0, len(values), size):
        yield list(values[start : start + size])


class _Execution:
    """Runs a cohort's plan: searches in a bounded thread pool, joins on the client."""

    def __init__(
        self,
        cohort: Cohort,
        executor: Executor | None,
        progress: bool = False,
        capabilities: Capabilities | None = None,
    ) -> None:
        self.cohort = cohort
        self.client = cohort.bridge.fhir
        caps = capabilities or cohort.bridge.capabilities()
        self.plan = make_plan(cohort.criteria, caps)
        self.executor = executor
        self.progress = progress
        self._bar: Any = None

    # -- plumbing -----------------------------------------------------------------------

    def _search(
        self, resource_type: str, params: Sequence[tuple[str, str]], *, instances: bool = False
    ) -> Collected:
        collected = Collected()
        for bundle in self.client.pages(resource_type, with_count(params), instances=instances):
            new = collected.add_bundle(bundle)
            if self._bar is not None and new:
                self._bar.update(new)
        return collected

    def _search_many(
        self,
        resource_type: str,
        param_sets: list[list[tuple[str, str]]],
        *,
        instances: bool = False,
    ) -> list[Collected]:
        if len(param_sets) <= 1:
            return [self._search(resource_type, p, instances=instances) for p in param_sets]
        own = None
        executor = self.executor
        if executor is None:
            own = executor = ThreadPoolExecutor(
                max_workers=max(1, self.client.settings.concurrency),
                thread_name_prefix="imagingkit-fhir",
            )
        try:
            futures = [
                executor.submit(self._search, resource_type, p, instances=instances)
                for p in param_sets
            ]
            return [f.result() for f in futures]
        finally:
            if own is not None:
                own.shutdown(wait=True)

    def _by_id(self, resource_type: str, keys: Iterable[str]) -> Collected:
        ids = sorted({k.split("/", 1)[1] for k in keys if k.startswith(f"{resource_type}/")})
        merged = Collected()
        for part in self._search_many(
            resource_type, [[("_id", ",".join(b))] for b in _batches(ids)]
        ):
            _merge(merged, part)
        return merged

    # -- step 1: patients ---------------------------------------------------------------

    def patient_step(self) -> tuple[set[str] | None, dict[str, Resource]]:
        """The patient set of the patient and clinical criteria (None: unrestricted)."""
        plan = self.plan
        found: set[str] | None = None
        patients: dict[str, Resource] = {}
        if plan.patient_params is not None:
            collected = self._search("Patient", plan.patient_params)
            for key, patient in collected.patients.items():
                if key.startswith("Patient/") and all(
                    c.matches(patient) for c in plan.patient_checks
                ):
                    patients[key] = patient
            found = set(patients)
        for query in plan.clinical:
            collected = self._search(query.criterion.target, query.params)
            subjects: set[str] = set()
            for resource in collected.others:
                subject = reference_key(resource.subject.reference)
                target = resource.resourceType == query.criterion.target
                if subject and target and query.criterion.matches(resource):
                    subjects.add(subject)
            found = subjects if found is None else found & subjects
        return found, patients

    # -- step 2 and 3: studies ----------------------------------------------------------

    def run(self, *, instances: bool = False) -> _Result:
        plan = self.plan
        patient_set, known_patients = (
            self.patient_step() if plan.restrict_by_patients else (None, {})
        )
        params = _with_includes(plan, list(plan.study_params))
        collected = Collected()
        if self.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(desc="ImagingStudy", unit=" studies", leave=False)
        try:
            self._study_step(collected, params, patient_set, instances)
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
        collected.patients.update(known_patients)
        self._fill_references(collected)
        kept = []
        for study in collected.studies:
            subject = reference_key(study.subject.reference)
            if patient_set is not None and subject not in patient_set:
                continue
            if not all(c.matches(study) for c in plan.study_checks):
                continue
            if plan.patient_checks and not plan.restrict_by_patients:
                patient = collected.patients.get(subject or "")
                if patient is None or not all(c.matches(patient) for c in plan.patient_checks):
                    continue
            kept.append(study)
        kept.sort(
            key=lambda s: (reference_key(s.subject.reference) or "", s.started or "", s.id or "")
        )
        collected.studies = kept
        return _Result(collected, patient_set)

    def _study_step(
        self,
        collected: Collected,
        params: list[tuple[str, str]],
        patient_set: set[str] | None,
        instances: bool,
    ) -> None:
        """The ImagingStudy search: one, or one per batch of patient ids."""
        if patient_set is not None and not patient_set:
            return
        if (
            patient_set is not None
            and len(patient_set) <= MAX_ID_LIST
            and self.plan.capabilities.supports("ImagingStudy", "patient")
        ):
            sets = [[*params, ("patient", ",".join(b))] for b in _batches(sorted(patient_set))]
            parts = self._search_many("ImagingStudy", sets, instances=instances)
        else:
            parts = [self._search("ImagingStudy", params, instances=instances)]
        for part in parts:
            _merge(collected, part)

    def _fill_references(self, collected: Collected) -> None:
        endpoint_refs = {
            key
            for study in collected.studies
            for ref in (*study.endpoint, *(r for s in study.series for r in s.endpoint))
            if (key := reference_key(ref.reference)) and key.startswith("Endpoint/")
        }
        missing = endpoint_refs - set(collected.endpoints)
        if missing:
            collected.endpoints.update(self._by_id("Endpoint", missing).endpoints)
        subjects = {key for s in collected.studies if (key := reference_key(s.subject.reference))}
        missing = subjects - set(collected.patients)
        if missing:
            collected.patients.update(self._by_id("Patient", missing).patients)

    def run_patients(self) -> list[Resource]:
        plan = self.plan
        # Only imaging criteria ask for a study: patient criteria chained onto the study
        # search (study_params) must not drop the patients without any study.
        if plan.study_checks:
            result = self.run()
            keys = {reference_key(s.subject.reference) for s in result.collected.studies}
            return [
                p
                for k, p in result.collected.patients.items()
                if k in keys and k.startswith("Patient/")
            ]
        found, patients = self.patient_step()
        if found is None:
            everything = self._search("Patient", [])
            return [p for k, p in everything.patients.items() if k.startswith("Patient/")]
        missing = found - set(patients)
        if missing:
            patients.update(self._by_id("Patient", missing).patients)
        return [p for k, p in patients.items() if k in found]


def _merge(into: Collected, other: Collected) -> None:
    for study in other.studies:
        into.add(study)
    into.patients.update(other.patients)
    into.endpoints.update(other.endpoints)
    into.others.extend(other.others)


def forced_client_joins(caps: Capabilities) -> Capabilities:
    """*caps* without chaining, ``_has`` and includes: every join made by imagingkit."""
    return replace(caps, chaining=False, reverse_chaining=False, includes={}, revincludes={})
