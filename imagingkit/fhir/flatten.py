"""ImagingStudy search pages → one tidy DataFrame (DESIGN.md D6).

One row per study, series or instance. DICOM attributes use their DICOM keywords
(``StudyInstanceUID``, ``Modality``, ``NumberOfSeriesRelatedInstances`` …, PS3.6) so a
frame joins with idc-index's; FHIR-only values are snake_case (``imaging_study_id``,
``patient_ref``, ``dicomweb_url``). Every column exists whatever the data holds, with a
fixed dtype: text as ``string``, codes as ``category``, counts as ``Int64``, dates as
``datetime64[us]`` (``study_started`` in UTC), flags as ``boolean``.

How it is fast: the pages are decoded by msgspec into typed structs that declare only the
elements read here (:mod:`imagingkit.fhir.model`), the columns are built as Python lists
by comprehensions over the structs, study-level values are computed once per study and
repeated to series rows with one numpy ``take``, and dates are parsed once per study,
vectorised. ``bench/flatten_imagingstudy.py`` measures it against
``pandas.json_normalize`` and FHIR-PYrate.

FHIR ↔ DICOM mapping (R4 ImagingStudy notes): the Study Instance UID is the identifier
with system ``urn:dicom:uid`` (``urn:oid:`` stripped); the Accession Number is the
identifier (or ``basedOn.identifier``) typed ``v2-0203#ACSN``; Body Part Examined comes
from ``series.bodySite`` through PS3.16 Annex L (:mod:`imagingkit.fhir.bodyparts`).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Literal

import msgspec
import numpy as np
import pandas as pd

from imagingkit.errors import FHIRError, InvalidQueryError
from imagingkit.fhir.bodyparts import body_part_of
from imagingkit.fhir.endpoints import (
    DicomWebLocation,
    EndpointInfo,
    EndpointResolver,
    reference_key,
)
from imagingkit.fhir.model import (
    Bundle,
    Identifier,
    Instance,
    Resource,
    ResourceWithInstances,
    SeriesBase,
    decode_bundle,
)

__all__ = [
    "COLUMNS",
    "LEVELS",
    "Collected",
    "Level",
    "categorical",
    "collect",
    "empty_frame",
    "flatten",
    "flatten_resources",
    "patient_frame",
    "studies_frame",
]

Level = Literal["study", "series", "instance"]
LEVELS: tuple[str, ...] = ("study", "series", "instance")
DICOM_UID = "urn:dicom:uid"
_ACSN = "ACSN"
_SEX = {"male": "M", "female": "F", "other": "O"}

#: (column, kind) per level, in order; kinds: str, cat, int, date, utc, bool.
_PATIENT = [
    ("PatientID", "str"),
    ("IssuerOfPatientID", "str"),
    ("PatientSex", "cat"),
    ("PatientBirthDate", "date"),
]
_STUDY = [
    ("imaging_study_id", "str"),
    ("patient_ref", "str"),
    *_PATIENT,
    ("StudyInstanceUID", "str"),
    ("AccessionNumber", "str"),
    ("StudyDate", "date"),
    ("study_started", "utc"),
    ("StudyDescription", "str"),
    ("ModalitiesInStudy", "cat"),
    ("NumberOfStudyRelatedSeries", "int"),
    ("NumberOfStudyRelatedInstances", "int"),
    ("status", "cat"),
]
_SERIES = [
    ("SeriesInstanceUID", "str"),
    ("SeriesNumber", "int"),
    ("Modality", "cat"),
    ("SeriesDescription", "str"),
    ("BodyPartExamined", "cat"),
    ("body_site_code", "cat"),
    ("Laterality", "cat"),
    ("SeriesDate", "date"),
    ("NumberOfSeriesRelatedInstances", "int"),
]
_INSTANCE = [
    ("SOPInstanceUID", "str"),
    ("SOPClassUID", "cat"),
    ("InstanceNumber", "int"),
]
_LOCATION = [
    ("dicomweb_url", "str"),
    ("dicomweb_requires_token", "bool"),
    ("endpoint_convention", "cat"),
]

#: The columns of each level, in order, with their kind.
COLUMNS: dict[str, list[tuple[str, str]]] = {
    "study": [*_STUDY, *_LOCATION],
    "series": [*_STUDY, *_SERIES, *_LOCATION],
    "instance": [*_STUDY, *_SERIES, *_INSTANCE, *_LOCATION],
}


def check_level(level: str) -> Level:
    """Return *level* if it is ``study``, ``series`` or ``instance``, else raise."""
    if level not in LEVELS:
        raise InvalidQueryError(
            f"level {level!r} is not one of {', '.join(repr(x) for x in LEVELS)} (DESIGN.md D6)"
        )
    return level  # type: ignore[return-value]


# --------------------------------------------------------------------------- columns


def _column(values: Sequence[Any], kind: str) -> Any:
    """One pandas array of *kind* from a list with ``None`` holes."""
    if kind == "str":
        return pd.array(np.asarray(values, dtype=object), dtype="string")
    if kind == "cat":
        return categorical(values)
    if kind == "int":
        # numpy turns None into NaN for a float array, in C; FHIR counts fit in float64
        floats = np.asarray(values, dtype=np.float64)
        missing = np.isnan(floats)
        return pd.arrays.IntegerArray(np.where(missing, 0, floats).astype(np.int64), missing)
    if kind == "bool":
        return pd.array(np.asarray(values, dtype=object), dtype="boolean")
    if kind in ("date", "utc"):
        return _dates(values, utc=kind == "utc")
    raise AssertionError(kind)


def _codes(values: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
    """Integer codes (``-1`` for ``None``) and the distinct values in sorted order.

    ``set`` and ``map(dict.__getitem__)`` run in C; few distinct values is the rule.
    """
    distinct = sorted(set(values) - {None})
    lookup: dict[Any, int] = {value: i for i, value in enumerate(distinct)}
    lookup[None] = -1
    codes = np.fromiter(map(lookup.__getitem__, values), dtype=np.int64, count=len(values))
    return codes, distinct


def categorical(values: Sequence[Any]) -> pd.Categorical:
    """A ``category`` array with object categories in sorted order (the D6 code dtype)."""
    codes, distinct = _codes(values)
    return pd.Categorical.from_codes(codes, categories=pd.Index(distinct, dtype=object))


def _dates(values: Sequence[Any], *, utc: bool) -> Any:
    """Parse FHIR date/dateTime strings (ISO 8601, R4 §2.24.0.1), vectorised.

    ``utc=False`` keeps the calendar date only (``datetime64[us]``), as DICOM DA does;
    ``utc=True`` keeps the instant in UTC. Unparseable values become ``NaT``.
    """
    distinct = set(values)
    if 2 * len(distinct) < len(values):  # e.g. series dates: parse each value once
        codes, unique = _codes(values)
        return _dates(unique, utc=utc).take(codes, allow_fill=True)
    texts = values if utc else [v[:10] if v else None for v in values]
    parsed = pd.to_datetime(
        pd.Series(texts, dtype=object), format="ISO8601", errors="coerce", utc=utc
    )
    return parsed.astype("datetime64[us, UTC]" if utc else "datetime64[us]").array


def empty_frame(level: str = "series") -> pd.DataFrame:
    """The DataFrame of *level* with no rows: every column, every dtype."""
    columns = COLUMNS[check_level(level)]
    return pd.DataFrame({name: _column([], kind) for name, kind in columns})


# --------------------------------------------------------------------------- collecting


@dataclass
class Collected:
    """The resources of a search, sorted by role.

    Attributes
    ----------
    studies : list
        ImagingStudy structs, in server order, each once.
    patients : dict
        Patient structs by ``Patient/id`` (and by full URL).
    endpoints : dict
        :class:`EndpointInfo` by ``Endpoint/id`` (and by full URL).
    others : list
        Any other resource (Condition, Observation …).
    """

    studies: list[Resource] = field(default_factory=list)
    patients: dict[str, Resource] = field(default_factory=dict)
    endpoints: dict[str, EndpointInfo] = field(default_factory=dict)
    others: list[Resource] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set, repr=False)

    def add_bundle(self, bundle: Bundle) -> int:
        """Sort one page's entries; return how many ImagingStudies were new."""
        new = 0
        for entry in bundle.entry:
            resource = entry.resource
            if resource is not None:
                new += self.add(resource, entry.fullUrl)
        return new

    def add(self, resource: Resource, full_url: str | None = None) -> int:
        """Add one resource; return 1 if it is an ImagingStudy not seen before."""
        kind = resource.resourceType
        if kind == "ImagingStudy":
            key = resource.id or full_url or str(len(self.studies))
            if key in self._seen:
                return 0
            self._seen.add(key)
            self.studies.append(resource)
            return 1
        if kind == "Patient":
            self.patients[resource.key] = resource
            if full_url:
                self.patients[full_url] = resource
        elif kind == "Endpoint":
            info = EndpointInfo.from_resource(resource)
            self.endpoints[resource.key] = info
            if full_url:
                self.endpoints[full_url] = info
        else:
            self.others.append(resource)
        return 0


def collect(pages: Iterable[bytes | Bundle], *, instances: bool = False) -> Collected:
    """Decode and sort the entries of search pages (raw JSON bytes or decoded Bundles)."""
    collected = Collected()
    with _gc_paused():
        for page in pages:
            bundle = page if isinstance(page, Bundle) else decode_bundle(page, instances=instances)
            collected.add_bundle(bundle)
    return collected


# --------------------------------------------------------------------------- per study


def _study_uid(identifiers: list[Identifier]) -> str | None:
    for identifier in identifiers:
        if identifier.system == DICOM_UID and identifier.value:
            return identifier.value.removeprefix("urn:oid:")
    return None


def _is_accession(identifier: Identifier | None) -> bool:
    kind = identifier.type if identifier is not None else None
    return kind is not None and any(c.code == _ACSN for c in kind.coding)


def _accession(study: Resource) -> str | None:
    for identifier in study.identifier:
        kind = identifier.type
        if kind is not None:
            for coding in kind.coding:
                if coding.code == _ACSN:
                    return identifier.value
    for based in study.basedOn:
        if _is_accession(based.identifier):
            return based.identifier.value if based.identifier else None
    return None


def _patient_values(patient: Resource | None) -> tuple[Any, Any, Any, Any]:
    if patient is None:
        return None, None, None, None
    chosen = None
    for identifier in patient.identifier:
        types = identifier.type.coding if identifier.type else []
        if any(c.code == "MR" for c in types):
            chosen = identifier
            break
    if chosen is None and patient.identifier:
        chosen = patient.identifier[0]
    return (
        chosen.value if chosen else None,
        chosen.system if chosen else None,
        _SEX.get(patient.gender or ""),
        patient.birthDate,
    )


def _modalities(study: Resource) -> str | None:
    codes = [m.code for m in study.modality if m.code]
    if not codes:
        codes = list(dict.fromkeys(s.modality.code for s in study.series if s.modality.code))
    return "\\".join(codes) if codes else None


SeriesFilter = Callable[[SeriesBase], bool]


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many acyclic objects.

    Decoding allocates millions of small objects; every 700 allocations CPython would
    scan them for cycles they cannot have. The collector is re-enabled afterwards (if it
    was enabled), so nothing changes for the caller.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def studies_frame(
    collected: Collected,
    *,
    level: str = "series",
    dicomweb: str | Mapping[str, str] | None = None,
    series_filter: SeriesFilter | None = None,
) -> pd.DataFrame:
    """Build the DataFrame of *level* from collected resources.

    Parameters
    ----------
    collected : Collected
        Studies, their patients and Endpoints (see :func:`collect`).
    level : {"study", "series", "instance"}
        One row per study, series or instance.
    dicomweb : str or mapping, optional
        See :class:`~imagingkit.fhir.endpoints.EndpointResolver`.
    series_filter : callable, optional
        At series and instance level, keep only the series it accepts; a study whose
        series are all refused gives no row. (A study without any series gives one row
        with empty series columns, so it is not lost.)

    Returns
    -------
    pandas.DataFrame
        The columns of :data:`COLUMNS` ``[level]``, in order.
    """
    level = check_level(level)
    if not collected.studies:
        return empty_frame(level)
    with _gc_paused():
        return _build(
            collected, level, EndpointResolver(collected.endpoints, dicomweb), series_filter
        )


def _locations(
    resolver: EndpointResolver,
    owners: Sequence[Resource | SeriesBase],
    contained_of: Callable[[int], Any],
) -> list[DicomWebLocation]:
    """One location per owner of endpoint references, resolving each distinct list once."""
    cache: dict[object, DicomWebLocation] = {}
    out = []
    for i, owner in enumerate(owners):
        refs = owner.endpoint
        key: object = refs[0].reference if len(refs) == 1 else tuple(r.reference for r in refs)
        found = cache.get(key)
        if found is None:
            found = resolver.locate(refs, contained_of(i))
            if not any(r.reference and r.reference.startswith("#") for r in refs):
                cache[key] = found  # contained Endpoints differ from study to study
        out.append(found)
    return out


def _build(
    collected: Collected,
    level: Level,
    resolver: EndpointResolver,
    series_filter: SeriesFilter | None,
) -> pd.DataFrame:
    studies = collected.studies
    refs = [
        ref if ref is None or (ref.count("/") == 1 and ":" not in ref) else reference_key(ref)
        for ref in map(_SUBJECT, studies)
    ]
    patients = collected.patients
    patient_cache: dict[str | None, tuple[Any, Any, Any, Any]] = {}
    for ref in refs:
        if ref not in patient_cache:
            patient_cache[ref] = _patient_values(patients.get(ref) if ref else None)
    patient_rows = [patient_cache[r] for r in refs]
    uids = [_study_uid(s.identifier) for s in studies]
    locations = _locations(resolver, studies, lambda i: studies[i].contained)
    started = [s.started for s in studies]
    study_values: dict[str, list[Any]] = {
        "imaging_study_id": [s.id for s in studies],
        "patient_ref": refs,
        "PatientID": [p[0] for p in patient_rows],
        "IssuerOfPatientID": [p[1] for p in patient_rows],
        "PatientSex": [p[2] for p in patient_rows],
        "PatientBirthDate": [p[3] for p in patient_rows],
        "StudyInstanceUID": uids,
        "AccessionNumber": [_accession(s) for s in studies],
        "StudyDate": started,
        "study_started": started,
        "StudyDescription": [s.description for s in studies],
        "ModalitiesInStudy": [
            "\\".join([m.code for m in s.modality if m.code]) or _modalities(s) for s in studies
        ],
        "NumberOfStudyRelatedSeries": [
            s.numberOfSeries if s.numberOfSeries is not None else (len(s.series) or None)
            for s in studies
        ],
        "NumberOfStudyRelatedInstances": [s.numberOfInstances for s in studies],
        "status": [s.status for s in studies],
    }
    study_columns = {name: _column(study_values[name], kind) for name, kind in _STUDY}
    # per study: "{base}/studies/{uid}" (None when unresolved), the token flag, the convention
    study_urls = [
        f"{loc.base}/studies/{uid}" if loc.base and uid else None
        for loc, uid in zip(locations, uids, strict=True)
    ]
    data: dict[str, Any] = {}
    if level == "study":
        data.update(study_columns)
        urls: Any = study_urls
        row_locations: Any = locations
    else:
        series_rows, owners = _series_rows(studies, series_filter)
        take = np.asarray(owners, dtype=np.intp)
        for name, _kind in _STUDY:
            data[name] = study_columns[name].take(take)
        _add_series_columns(data, series_rows)
        row_locations = np.asarray(locations, dtype=object)[take]
        # "{study url}/series/{uid}": one vectorised concatenation of object arrays
        prefixes = np.asarray([u + "/series/" if u else "" for u in study_urls], dtype=object)
        series_uids = np.asarray(list(map(_UID, series_rows)), dtype=object)
        known = np.asarray([bool(u) for u in study_urls])[take] & (series_uids != None)  # noqa: E711
        none = np.full(len(take), None, dtype=object)
        urls = np.where(known, prefixes[take] + np.where(known, series_uids, ""), none)
        urls = np.where(series_uids == None, np.asarray(study_urls, dtype=object)[take], urls)  # noqa: E711
        _series_endpoints(resolver, studies, series_rows, owners, uids, urls, row_locations)
        if level == "instance":
            urls, row_locations = _expand_instances(
                data, series_rows, list(urls), list(row_locations)
            )
    data["dicomweb_url"] = _column(urls, "str")
    data["dicomweb_requires_token"] = _column(list(map(_REQUIRES_TOKEN, row_locations)), "bool")
    data["endpoint_convention"] = _column(list(map(_CONVENTION, row_locations)), "cat")
    return pd.DataFrame(data, columns=[name for name, _ in COLUMNS[level]])


_REQUIRES_TOKEN = attrgetter("requires_access_token")
_CONVENTION = attrgetter("convention")


def _series_endpoints(
    resolver: EndpointResolver,
    studies: list[Resource],
    series_rows: list[SeriesBase],
    owners: list[int],
    uids: list[str | None],
    urls: np.ndarray,
    row_locations: np.ndarray,
) -> None:
    """Let ``series.endpoint`` override the study's (R4 ImagingStudy notes), in place."""
    positions = [i for i, refs in enumerate(map(_ENDPOINT, series_rows)) if refs]
    if not positions:
        return
    own = _locations(
        resolver,
        [series_rows[p] for p in positions],
        lambda i: studies[owners[positions[i]]].contained,
    )
    for position, location in zip(positions, own, strict=True):
        if location.base is None:
            continue
        row_locations[position] = location
        study_uid = uids[owners[position]]
        series = series_rows[position]
        urls[position] = (
            location.series_url(study_uid, series.uid) if study_uid and series.uid else None
        )


def _series_rows(
    studies: list[Resource], series_filter: SeriesFilter | None
) -> tuple[list[SeriesBase], list[int]]:
    rows: list[SeriesBase] = []
    owners: list[int] = []
    for i, study in enumerate(studies):
        series = study.series
        if not series:
            rows.append(_NO_SERIES)
            owners.append(i)
            continue
        kept = series if series_filter is None else [s for s in series if series_filter(s)]
        rows.extend(kept)
        owners.extend([i] * len(kept))
    return rows, owners


def _body_parts(sites: pd.Categorical) -> pd.Categorical:
    """Body Part Examined from the body-site categorical, mapping categories only."""
    terms = [body_part_of(code) for code in sites.categories]
    unique = list(dict.fromkeys(t for t in terms if t))
    position = {t: i for i, t in enumerate(unique)}
    remap = np.asarray([position.get(t, -1) if t else -1 for t in terms] + [-1], dtype=np.int64)
    return pd.Categorical.from_codes(remap[sites.codes], categories=pd.Index(unique, dtype=object))


_NO_SERIES = SeriesBase()
_SUBJECT = attrgetter("subject.reference")
_ENDPOINT = attrgetter("endpoint")
#: series column → (attribute path, kind); attrgetter walks the structs in C
_SERIES_SOURCES = {
    "SeriesInstanceUID": ("uid", "str"),
    "SeriesNumber": ("number", "int"),
    "Modality": ("modality.code", "cat"),
    "SeriesDescription": ("description", "str"),
    "body_site_code": ("bodySite.code", "cat"),
    "Laterality": ("laterality.code", "cat"),
    "SeriesDate": ("started", "date"),
    "NumberOfSeriesRelatedInstances": ("numberOfInstances", "int"),
}


def _add_series_columns(data: dict[str, Any], rows: list[SeriesBase]) -> None:
    for name, (path, kind) in _SERIES_SOURCES.items():
        data[name] = _column(list(map(attrgetter(path), rows)), kind)
    data["BodyPartExamined"] = _body_parts(data["body_site_code"])


def _expand_instances(
    data: dict[str, Any],
    series_rows: list[SeriesBase],
    urls: list[str | None],
    locations: list[DicomWebLocation],
) -> tuple[list[str | None], list[DicomWebLocation]]:
    """Repeat series rows once per instance and add the instance columns."""
    counts = []
    instances: list[Instance] = []
    for series in series_rows:
        listed = getattr(series, "instance", None) or [_NO_INSTANCE]
        counts.append(len(listed))
        instances.extend(listed)
    repeat = np.repeat(np.arange(len(series_rows)), counts)
    for name, _kind in [*_STUDY, *_SERIES]:
        data[name] = data[name].take(repeat)
    data["SOPInstanceUID"] = _column(list(map(_UID, instances)), "str")
    classes = categorical(list(map(_SOP_CLASS, instances)))
    data["SOPClassUID"] = classes.rename_categories(
        {c: c.removeprefix("urn:oid:") for c in classes.categories}
    )
    data["InstanceNumber"] = _column(list(map(_NUMBER, instances)), "int")
    rows = repeat.tolist()
    new_urls = [
        f"{urls[r]}/instances/{inst.uid}" if urls[r] and inst.uid else urls[r]
        for r, inst in zip(rows, instances, strict=True)
    ]
    return new_urls, [locations[r] for r in rows]


_NO_INSTANCE = Instance()
_UID = attrgetter("uid")
_SOP_CLASS = attrgetter("sopClass.code")
_NUMBER = attrgetter("number")


# --------------------------------------------------------------------------- entry points


def flatten(
    pages: Iterable[bytes | Bundle],
    *,
    level: str = "series",
    dicomweb: str | Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Flatten ImagingStudy search pages (raw JSON bytes) into a DataFrame of *level*.

    Parameters
    ----------
    pages : iterable of bytes
        The searchset Bundles exactly as the server sent them; ``_include``'d Patients
        and Endpoints fill the patient and ``dicomweb_url`` columns.
    level : {"study", "series", "instance"}
    dicomweb : str or mapping, optional
        See :class:`~imagingkit.fhir.endpoints.EndpointResolver`.

    Examples
    --------
    >>> df = flatten([page_bytes], level="series")           # doctest: +SKIP
    >>> df[["StudyInstanceUID", "SeriesInstanceUID", "Modality"]]  # doctest: +SKIP
    """
    level = check_level(level)
    collected = collect(pages, instances=level == "instance")
    return studies_frame(collected, level=level, dicomweb=dicomweb)


def flatten_resources(
    resources: Iterable[Mapping[str, Any]],
    *,
    level: str = "series",
    dicomweb: str | Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Flatten resources given as dicts (ImagingStudy, plus any Patient and Endpoint).

    Raises
    ------
    FHIRError
        If a resource does not have the R4 shape (the message names the element).
    """
    level = check_level(level)
    kind = ResourceWithInstances if level == "instance" else Resource
    collected = Collected()
    for resource in resources:
        try:
            collected.add(msgspec.json.decode(msgspec.json.encode(resource), type=kind))  # type: ignore[arg-type]
        except msgspec.ValidationError as exc:
            raise FHIRError(f"not an R4 resource of the expected shape: {exc}") from exc
    return studies_frame(collected, level=level, dicomweb=dicomweb)


_PATIENT_COLUMNS = [("patient_ref", "str"), ("patient_id", "str"), *_PATIENT, ("gender", "cat")]


def patient_frame(patients: Iterable[Resource]) -> pd.DataFrame:
    """One row per Patient: ``patient_ref``, ``patient_id``, DICOM patient attributes."""
    rows = list(patients)
    values = [_patient_values(p) for p in rows]
    data = {
        "patient_ref": _column([p.key for p in rows], "str"),
        "patient_id": _column([p.id for p in rows], "str"),
        "PatientID": _column([v[0] for v in values], "str"),
        "IssuerOfPatientID": _column([v[1] for v in values], "str"),
        "PatientSex": _column([v[2] for v in values], "cat"),
        "PatientBirthDate": _column([v[3] for v in values], "date"),
        "gender": _column([p.gender for p in rows], "cat"),
    }
    return pd.DataFrame(data, columns=[name for name, _ in _PATIENT_COLUMNS])
