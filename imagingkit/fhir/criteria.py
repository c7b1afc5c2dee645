"""Cohort criteria: validated values, their FHIR search parameters and local predicates.

Each criterion knows (1) the R4 search parameters that express it on one resource type,
(2) a predicate that decides it on a decoded resource with the same meaning, used when the
server cannot evaluate it and to re-check what a server returned, and (3) a plain-dict
form for ``df.attrs["imagingkit"]`` provenance.

Meanings (R4 search §3.1.1.4): tokens match ``code`` or ``system|code`` exactly; date
ranges are inclusive by day and compared as R4 ranges (a partial date such as a birth
year is a range), in UTC; quantity bounds are inclusive on ``valueQuantity.value``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from imagingkit.errors import InvalidDateError, InvalidQueryError
from imagingkit.fhir.bodyparts import SNOMED_BY_BODY_PART
from imagingkit.fhir.model import Resource, SeriesBase
from imagingkit.uids import validate_uid

__all__ = [
    "BirthDate",
    "BodySite",
    "ConditionCode",
    "Criterion",
    "Description",
    "Gender",
    "Modality",
    "ObservationValue",
    "PatientIdentifier",
    "Started",
    "StudyUID",
    "Token",
    "criterion_from_dict",
    "parse_date",
    "parse_token",
]

_GENDERS = ("male", "female", "other", "unknown")
_CODE = re.compile(r"^[^\s|,$\\]+( [^\s|,$\\]+)*$")
_MODALITY = re.compile(r"^[A-Z0-9_]{1,16}$")
_DATE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")
_UTC = dt.timezone.utc


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, order=True)
class Token:
    """A code, optionally with its system (R4 search §3.1.1.4.7 ``[system]|[code]``)."""

    system: str | None
    code: str

    def __str__(self) -> str:
        return f"{self.system}|{self.code}" if self.system else self.code

    def matches(self, system: str | None, code: str | None) -> bool:
        return code == self.code and (self.system is None or system == self.system)


def parse_token(value: Any, *, what: str = "code", system: str | None = None) -> Token:
    """Validate a code given as ``"code"``, ``"system|code"`` or ``(system, code)``.

    Raises
    ------
    InvalidQueryError
        Naming the value, if it is empty, has surrounding or double spaces, or holds a
        search separator (``|``, ``,``, ``$``, ``\\``).
    """
    if isinstance(value, tuple) and len(value) == 2:
        system, code = value
    elif isinstance(value, str) and "|" in value:
        system, _, code = value.partition("|")
    else:
        code = value
    if not isinstance(code, str) or not _CODE.match(code):
        raise InvalidQueryError(
            f"{what} {value!r} is not a valid FHIR code (R4 datatypes §2.24.0.1: "
            "no surrounding or repeated spaces, no | , $ or \\)"
        )
    if system is not None and (not isinstance(system, str) or not system or " " in system):
        raise InvalidQueryError(f"code system {system!r} of {what} {value!r} is not a URI")
    return Token(system or None, code)


def parse_date(value: Any, *, what: str = "date") -> str:
    """Validate a FHIR date (``YYYY``, ``YYYY-MM``, ``YYYY-MM-DD`` or a date object).

    Raises
    ------
    InvalidDateError
        Naming the value, if it is not such a date or not a real calendar date.
    """
    if isinstance(value, dt.datetime):
        value = value.date()
    if isinstance(value, dt.date):
        return value.isoformat()
    if not isinstance(value, str) or not _DATE.match(value):
        raise InvalidDateError(
            f"{what} {value!r} is not a FHIR date (R4 datatypes §2.24.0.1: YYYY, YYYY-MM "
            "or YYYY-MM-DD)"
        )
    try:
        _range(value)
    except ValueError as exc:
        raise InvalidDateError(f"{what} {value!r} is not a calendar date") from exc
    return value


def _range(value: str) -> tuple[dt.datetime, dt.datetime]:
    """The R4 implicit range [start, end) of a date, dateTime or instant, in UTC."""
    if len(value) <= 10:
        parts = [int(p) for p in value.split("-")]
        if len(parts) == 1:
            start = dt.datetime(parts[0], 1, 1, tzinfo=_UTC)
            return start, start.replace(year=parts[0] + 1)
        if len(parts) == 2:
            start = dt.datetime(parts[0], parts[1], 1, tzinfo=_UTC)
            nxt = (parts[0] + 1, 1) if parts[1] == 12 else (parts[0], parts[1] + 1)
            return start, dt.datetime(*nxt, 1, tzinfo=_UTC)
        start = dt.datetime(parts[0], parts[1], parts[2], tzinfo=_UTC)
        return start, start + dt.timedelta(days=1)
    moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_UTC)
    moment = moment.astimezone(_UTC)
    return moment, moment + dt.timedelta(seconds=1)


def _within(value: str | None, low: str | None, high: str | None) -> bool:
    """R4 ``ge{low}`` and ``le{high}`` on a date/dateTime value (ranges overlap)."""
    if not value:
        return False
    try:
        start, end = _range(value)
    except ValueError:
        return False
    if low is not None and end <= _range(low)[0]:
        return False
    return not (high is not None and start >= _range(high)[1])


def _date_params(name: str, low: str | None, high: str | None) -> list[tuple[str, str]]:
    params = []
    if low is not None:
        params.append((name, f"ge{low}"))
    if high is not None:
        params.append((name, f"le{high}"))
    return params


def _codings(concept: Any) -> Iterable[tuple[str | None, str | None]]:
    if concept is None:
        return ()
    return ((c.system, c.code) for c in concept.coding)


# --------------------------------------------------------------------------- criteria


@dataclass(frozen=True)
class Criterion:
    """Base of every criterion."""

    #: the resource type it is evaluated on
    target: ClassVar[str] = ""
    #: "patient", "clinical" or "imaging"
    group: ClassVar[str] = ""
    kind: ClassVar[str] = ""

    def params(self) -> list[tuple[str, str]]:
        """R4 search parameters on :attr:`target` (empty: no server form)."""
        return []

    def param_names(self) -> set[str]:
        return {name.split(":")[0] for name, _ in self.params()}

    def matches(self, resource: Resource) -> bool:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Gender(Criterion):
    """Patient.gender (R4 administrative-gender)."""

    value: str
    target: ClassVar[str] = "Patient"
    group: ClassVar[str] = "patient"
    kind: ClassVar[str] = "gender"

    def __post_init__(self) -> None:
        if self.value not in _GENDERS:
            raise InvalidQueryError(
                f"gender {self.value!r} is not one of {', '.join(_GENDERS)} "
                "(R4 administrative-gender)"
            )

    def params(self) -> list[tuple[str, str]]:
        return [("gender", self.value)]

    def matches(self, resource: Resource) -> bool:
        return resource.gender == self.value

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value}

    def describe(self) -> str:
        return f"gender = {self.value}"


@dataclass(frozen=True)
class BirthDate(Criterion):
    """Patient.birthDate within [low, high] (inclusive, by day)."""

    low: str | None = None
    high: str | None = None
    note: str | None = None
    target: ClassVar[str] = "Patient"
    group: ClassVar[str] = "patient"
    kind: ClassVar[str] = "birth_date"

    def params(self) -> list[tuple[str, str]]:
        return _date_params("birthdate", self.low, self.high)

    def matches(self, resource: Resource) -> bool:
        return _within(resource.birthDate, self.low, self.high)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "low": self.low, "high": self.high, "note": self.note}

    def describe(self) -> str:
        text = f"birth date in [{self.low or '…'}, {self.high or '…'}]"
        return f"{text} ({self.note})" if self.note else text


@dataclass(frozen=True)
class PatientIdentifier(Criterion):
    """Patient.identifier = [system|]value."""

    token: Token
    target: ClassVar[str] = "Patient"
    group: ClassVar[str] = "patient"
    kind: ClassVar[str] = "identifier"

    def params(self) -> list[tuple[str, str]]:
        return [("identifier", str(self.token))]

    def matches(self, resource: Resource) -> bool:
        return any(self.token.matches(i.system, i.value) for i in resource.identifier)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "system": self.token.system, "value": self.token.code}

    def describe(self) -> str:
        return f"identifier = {self.token}"


@dataclass(frozen=True)
class ConditionCode(Criterion):
    """The patient has a Condition whose code is any of *tokens*."""

    tokens: tuple[Token, ...]
    target: ClassVar[str] = "Condition"
    group: ClassVar[str] = "clinical"
    kind: ClassVar[str] = "condition"

    def params(self) -> list[tuple[str, str]]:
        return [("code", ",".join(map(str, self.tokens)))]

    def matches(self, resource: Resource) -> bool:
        return any(
            t.matches(system, code) for system, code in _codings(resource.code) for t in self.tokens
        )

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "codes": [str(t) for t in self.tokens]}

    def describe(self) -> str:
        return f"has a Condition coded {' or '.join(map(str, self.tokens))}"


@dataclass(frozen=True)
class ObservationValue(Criterion):
    """The patient has an Observation coded *token* with value in [low, high]."""

    token: Token
    low: float | None = None
    high: float | None = None
    unit: str | None = None
    target: ClassVar[str] = "Observation"
    group: ClassVar[str] = "clinical"
    kind: ClassVar[str] = "observation"

    def params(self) -> list[tuple[str, str]]:
        return [("code", str(self.token))]

    def value_params(self) -> list[tuple[str, str]]:
        """``value-quantity`` bounds (sent only where the server declares the parameter)."""
        suffix = f"||{self.unit}" if self.unit else ""
        bounds = []
        if self.low is not None:
            bounds.append(("value-quantity", f"ge{self.low:g}{suffix}"))
        if self.high is not None:
            bounds.append(("value-quantity", f"le{self.high:g}{suffix}"))
        return bounds

    def matches(self, resource: Resource) -> bool:
        if not any(self.token.matches(s, c) for s, c in _codings(resource.code)):
            return False
        if self.low is None and self.high is None:
            return True
        quantity = resource.valueQuantity
        if quantity is None or quantity.value is None:
            return False
        if self.unit is not None and self.unit not in (quantity.code, quantity.unit):
            return False
        value = quantity.value
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "code": str(self.token),
            "low": self.low,
            "high": self.high,
            "unit": self.unit,
        }

    def describe(self) -> str:
        text = f"has an Observation coded {self.token}"
        if self.low is not None or self.high is not None:
            unit = f" {self.unit}" if self.unit else ""
            text += f" with value in [{self.low if self.low is not None else '…'}, "
            text += f"{self.high if self.high is not None else '…'}]{unit}"
        return text


@dataclass(frozen=True)
class _SeriesCodes(Criterion):
    """A series of the study has one of *codes* (token search on a series element)."""

    codes: tuple[str, ...]
    target: ClassVar[str] = "ImagingStudy"
    group: ClassVar[str] = "imaging"
    param: ClassVar[str] = ""

    def params(self) -> list[tuple[str, str]]:
        return [(self.param, ",".join(self.codes))]

    def matches(self, resource: Resource) -> bool:
        return any(self.series_matches(s) for s in resource.series)

    def series_matches(self, series: SeriesBase) -> bool:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "codes": list(self.codes)}


@dataclass(frozen=True)
class Modality(_SeriesCodes):
    """A series of the study has one of *codes* (R4 ``modality`` = series.modality)."""

    kind: ClassVar[str] = "modality"
    param: ClassVar[str] = "modality"

    def series_matches(self, series: SeriesBase) -> bool:
        return series.modality.code in self.codes

    def describe(self) -> str:
        return f"a series of modality {' or '.join(self.codes)}"


@dataclass(frozen=True)
class BodySite(_SeriesCodes):
    """A series of the study has one of *codes* (SNOMED CT) as bodySite."""

    kind: ClassVar[str] = "body_site"
    param: ClassVar[str] = "bodysite"

    def series_matches(self, series: SeriesBase) -> bool:
        return series.bodySite.code in self.codes

    def describe(self) -> str:
        return f"a series with body site {' or '.join(self.codes)} (SNOMED CT)"


@dataclass(frozen=True)
class Started(Criterion):
    """ImagingStudy.started within [low, high] (inclusive, by day)."""

    low: str | None = None
    high: str | None = None
    target: ClassVar[str] = "ImagingStudy"
    group: ClassVar[str] = "imaging"
    kind: ClassVar[str] = "started"

    def params(self) -> list[tuple[str, str]]:
        return _date_params("started", self.low, self.high)

    def matches(self, resource: Resource) -> bool:
        return _within(resource.started, self.low, self.high)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "low": self.low, "high": self.high}

    def describe(self) -> str:
        return f"study date in [{self.low or '…'}, {self.high or '…'}]"


@dataclass(frozen=True)
class Description(Criterion):
    """Study or series description contains *text* (case-insensitive; client-side only:
    R4 ImagingStudy has no search parameter on descriptions)."""

    text: str
    target: ClassVar[str] = "ImagingStudy"
    group: ClassVar[str] = "imaging"
    kind: ClassVar[str] = "description"

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise InvalidQueryError(f"description text {self.text!r} is empty")

    def matches(self, resource: Resource) -> bool:
        needle = self.text.casefold()
        if resource.description and needle in resource.description.casefold():
            return True
        return any(self.series_matches(s) for s in resource.series)

    def series_matches(self, series: SeriesBase) -> bool:
        return (
            bool(series.description)
            and self.text.casefold() in (series.description or "").casefold()
        )

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text}

    def describe(self) -> str:
        return f"study or series description contains {self.text!r} (checked by imagingkit)"


@dataclass(frozen=True)
class StudyUID(Criterion):
    """ImagingStudy.identifier is ``urn:dicom:uid|urn:oid:{uid}`` for one of *uids*."""

    uids: tuple[str, ...]
    target: ClassVar[str] = "ImagingStudy"
    group: ClassVar[str] = "imaging"
    kind: ClassVar[str] = "study_uid"

    def params(self) -> list[tuple[str, str]]:
        return [("identifier", ",".join(f"urn:dicom:uid|urn:oid:{u}" for u in self.uids))]

    def matches(self, resource: Resource) -> bool:
        return any(
            i.system == "urn:dicom:uid" and (i.value or "").removeprefix("urn:oid:") in self.uids
            for i in resource.identifier
        )

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "uids": list(self.uids)}

    def describe(self) -> str:
        return f"Study Instance UID in {', '.join(self.uids)}"


# --------------------------------------------------------------------------- builders


def modality_codes(values: Iterable[str]) -> tuple[str, ...]:
    """Validate DICOM modality codes (PS3.3 C.7.3.1.1.1: CS, upper case)."""
    codes = []
    for value in values:
        if not isinstance(value, str) or not _MODALITY.match(value):
            raise InvalidQueryError(
                f"modality {value!r} is not a DICOM modality code (PS3.3 C.7.3.1.1.1, e.g. 'CT')"
            )
        codes.append(value)
    return tuple(codes)


def body_site_codes(values: Iterable[str]) -> tuple[str, ...]:
    """SNOMED CT codes from SNOMED codes or Body Part Examined terms (PS3.16 Annex L)."""
    codes: list[str] = []
    for value in values:
        if isinstance(value, str) and value.upper() in SNOMED_BY_BODY_PART:
            codes.extend(SNOMED_BY_BODY_PART[value.upper()])
        elif isinstance(value, str) and value.isdigit():
            codes.append(value)
        else:
            raise InvalidQueryError(
                f"body site {value!r} is neither a SNOMED CT code nor a Body Part Examined "
                "term (PS3.16 Annex L, e.g. 'CHEST')"
            )
    return tuple(dict.fromkeys(codes))


def study_uids(values: Iterable[str]) -> tuple[str, ...]:
    """Validate Study Instance UIDs (PS3.5 §9.1; lenient, as real archives need)."""
    return tuple(validate_uid(v, lenient=True, what="StudyInstanceUID") for v in values)


def _float(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidQueryError(f"{what} {value!r} is not a number")
    return float(value)


def observation(
    code: Any, low: Any = None, high: Any = None, unit: str | None = None
) -> ObservationValue:
    """Build and validate an :class:`ObservationValue`."""
    lo, hi = _float(low, "observation low bound"), _float(high, "observation high bound")
    if lo is not None and hi is not None and lo > hi:
        raise InvalidQueryError(f"observation range [{lo}, {hi}] is empty")
    if unit is not None and not _CODE.match(unit):
        raise InvalidQueryError(f"unit {unit!r} is not a valid UCUM code")
    return ObservationValue(parse_token(code, what="observation code"), lo, hi, unit)


_KINDS: dict[str, type[Criterion]] = {
    c.kind: c
    for c in (
        Gender,
        BirthDate,
        PatientIdentifier,
        ConditionCode,
        ObservationValue,
        Modality,
        BodySite,
        Started,
        Description,
        StudyUID,
    )
}


def criterion_from_dict(data: Mapping[str, Any]) -> Criterion:
    """Rebuild a criterion from :meth:`Criterion.to_dict` (provenance), validating it again.

    Raises
    ------
    InvalidQueryError
        If the mapping names no known criterion or holds bad values.
    """
    kind = data.get("kind") if isinstance(data, Mapping) else None
    if kind not in _KINDS:
        raise InvalidQueryError(f"unknown cohort criterion {data!r}")
    if kind == "gender":
        return Gender(data["value"])
    if kind in ("birth_date", "started"):
        low = parse_date(data["low"]) if data.get("low") else None
        high = parse_date(data["high"]) if data.get("high") else None
        if kind == "started":
            return Started(low, high)
        return BirthDate(low, high, data.get("note"))
    if kind == "identifier":
        return PatientIdentifier(
            parse_token((data.get("system"), data["value"]), what="identifier")
        )
    if kind == "condition":
        return ConditionCode(tuple(parse_token(c, what="condition code") for c in data["codes"]))
    if kind == "observation":
        return observation(data["code"], data.get("low"), data.get("high"), data.get("unit"))
    if kind == "modality":
        return Modality(modality_codes(data["codes"]))
    if kind == "body_site":
        return BodySite(body_site_codes(data["codes"]))
    if kind == "description":
        return Description(data["text"])
    return StudyUID(study_uids(data["uids"]))
