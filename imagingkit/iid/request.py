"""The IHE Invoke Image Display request (RAD-106, RAD TF-2 §4.106.4.1.2).

An IID request is a GET on ``<location>/IHEInvokeImageDisplay`` with

* ``requestType=STUDY`` and exactly one of ``studyUID`` or ``accessionNumber``, each a
  comma-separated list (RAD TF-2 Table 4.106.4.1.2-2), or
* ``requestType=PATIENT`` with ``patientID`` (HL7 v2 CX with its issuer) and the
  optional filters ``patientName``, ``patientBirthDate``, ``lowerDateTime``,
  ``upperDateTime``, ``mostRecentResults`` and ``modalitiesInStudy``
  (Table 4.106.4.1.2-1),

plus, for both, ``viewerType``, ``diagnosticQuality`` and ``keyImagesOnly``.

:class:`IIDRequest` is the validated value. Strict mode (the default) follows the
profile: UIDs per PS3.5 §9.1, accession numbers per DICOM SH, XML Schema dates, exact
parameter names, and every parameter known and used at most once. Lenient mode is for
the invokers and archives found in the wild: it accepts UIDs with leading zeros or up to
128 characters, accession numbers up to 64 characters, DICOM-style dates, parameter
names and ``requestType`` in any case, repeated parameters (merged, as Weasis sends
them), empty list items and surrounding blanks, and ignores parameters it does not
know. Neither mode accepts control characters, backslashes in identifiers, or values
that could change the meaning of a URL built from them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from enum import Enum
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from imagingkit.errors import InvalidQueryError
from imagingkit.iid.patient import PatientID, shown, validate_patient_name
from imagingkit.iid.xsd import format_xs_date, format_xs_datetime, parse_xs_date, parse_xs_datetime
from imagingkit.uids import validate_uid

__all__ = [
    "IID_PATH",
    "MAX_LIST_ITEMS",
    "MAX_QUERY_CHARS",
    "MAX_VALUE_CHARS",
    "IIDRequest",
    "RequestType",
]

#: The fixed last path segment of an IID endpoint (RAD TF-2 §4.106.4.1.1).
IID_PATH = "IHEInvokeImageDisplay"
#: Longest query string accepted (browsers and proxies cut URLs near 8 KiB).
MAX_QUERY_CHARS = 8192
#: Longest single parameter value accepted.
MAX_VALUE_CHARS = 4096
#: Most items in one list parameter (studies, accession numbers, modalities).
MAX_LIST_ITEMS = 100
#: Largest ``mostRecentResults`` honoured.
MAX_MOST_RECENT = 1000

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MODALITY = re.compile(r"^[A-Z0-9_]{1,16}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_COUNT = re.compile(r"^[0-9]{1,7}$")
_BOOL = {"true": True, "1": True, "false": False, "0": False}


class RequestType(str, Enum):
    """IID ``requestType`` (RAD TF-2 §4.106.4.1.2)."""

    STUDY = "STUDY"
    PATIENT = "PATIENT"


#: parameter name → (the request types it belongs to, attribute name)
_PARAMETERS: dict[str, tuple[frozenset[RequestType], str]] = {
    "studyUID": (frozenset({RequestType.STUDY}), "study_uids"),
    "accessionNumber": (frozenset({RequestType.STUDY}), "accession_numbers"),
    "patientID": (frozenset({RequestType.PATIENT}), "patient_id"),
    "patientName": (frozenset({RequestType.PATIENT}), "patient_name"),
    "patientBirthDate": (frozenset({RequestType.PATIENT}), "patient_birth_date"),
    "lowerDateTime": (frozenset({RequestType.PATIENT}), "lower_datetime"),
    "upperDateTime": (frozenset({RequestType.PATIENT}), "upper_datetime"),
    "mostRecentResults": (frozenset({RequestType.PATIENT}), "most_recent_results"),
    "modalitiesInStudy": (frozenset({RequestType.PATIENT}), "modalities_in_study"),
    "viewerType": (frozenset(RequestType), "viewer_type"),
    "diagnosticQuality": (frozenset(RequestType), "diagnostic_quality"),
    "keyImagesOnly": (frozenset(RequestType), "key_images_only"),
}
_LIST_PARAMETERS = {"studyUID", "accessionNumber", "modalitiesInStudy"}


def _check_text(name: str, value: str) -> None:
    if len(value) > MAX_VALUE_CHARS:
        raise InvalidQueryError(
            f"{name} is {len(value)} characters long; at most {MAX_VALUE_CHARS} are accepted"
        )
    if _CONTROL.search(value):
        raise InvalidQueryError(f"{name} {shown(value)} contains a control character")


def _split_list(name: str, raw: str, *, lenient: bool) -> list[str]:
    items = raw.split(",")
    if lenient:
        items = [i.strip() for i in items if i.strip()]
    elif any(not i for i in items):
        raise InvalidQueryError(
            f"{name} {shown(raw)} has an empty item; give a comma-separated list without "
            "empty entries"
        )
    if not items:
        raise InvalidQueryError(f"{name} is empty")
    if len(items) > MAX_LIST_ITEMS:
        raise InvalidQueryError(
            f"{name} lists {len(items)} values; at most {MAX_LIST_ITEMS} are accepted"
        )
    return items


def _accession(value: str, *, lenient: bool) -> str:
    limit = 64 if lenient else 16
    if not value.strip():
        raise InvalidQueryError("accessionNumber is empty")
    if "\\" in value or "," in value or _CONTROL.search(value):
        raise InvalidQueryError(
            f"accessionNumber {shown(value)} contains a backslash, comma or control character"
        )
    if len(value) > limit:
        raise InvalidQueryError(
            f"accessionNumber {shown(value)} is {len(value)} characters; at most {limit} "
            + ("allowed" if lenient else "allowed (DICOM SH; lenient mode allows 64)")
        )
    return value


def _modality(value: str, *, lenient: bool) -> str:
    code = value.upper() if lenient else value
    if not _MODALITY.match(code):
        raise InvalidQueryError(
            f"modalitiesInStudy item {shown(value)} is not a DICOM modality code "
            "(upper-case letters, digits and '_', at most 16, e.g. CT or MR)"
        )
    return code


def _boolean(name: str, value: str, *, lenient: bool) -> bool:
    key = value.lower() if lenient else value
    if key not in _BOOL:
        raise InvalidQueryError(f"{name} {shown(value)} is not a boolean (use true or false)")
    return _BOOL[key]


@dataclass(frozen=True)
class IIDRequest:
    """A validated IHE IID request (RAD-106).

    Build one with :meth:`study`, :meth:`patient`, :meth:`from_query` or
    :meth:`from_url`; turn it into a URL with :meth:`to_url`. Construction validates, so
    an ``IIDRequest`` that exists is well formed.

    Attributes
    ----------
    request_type : RequestType
    study_uids : tuple of str
        STUDY: the Study Instance UIDs (``studyUID``).
    accession_numbers : tuple of str
        STUDY: the accession numbers (``accessionNumber``); exclusive with *study_uids*.
    patient_id : PatientID or None
        PATIENT: the patient (``patientID``, HL7 CX).
    patient_name : str or None
        PATIENT: DICOM PN (``patientName``).
    patient_birth_date : date or None
        PATIENT: ``patientBirthDate``.
    lower_datetime, upper_datetime : datetime or None
        PATIENT: inclusive bounds on the study date and time (``lowerDateTime``,
        ``upperDateTime``). The profile's wording is "lower"/"upper" bound; note that
        weasis-pacs-connector reads them the other way round.
    most_recent_results : int or None
        PATIENT: keep only this many most recent studies.
    modalities_in_study : tuple of str
        PATIENT: keep only studies with one of these modalities.
    viewer_type : str or None
        ``viewerType``; ``IHE_BIR`` is the profile's well-known value.
    diagnostic_quality, key_images_only : bool or None
        ``diagnosticQuality`` and ``keyImagesOnly``.
    lenient : bool
        Validated in lenient mode (see the module documentation).
    """

    request_type: RequestType
    study_uids: tuple[str, ...] = ()
    accession_numbers: tuple[str, ...] = ()
    patient_id: PatientID | None = None
    patient_name: str | None = None
    patient_birth_date: date | None = None
    lower_datetime: datetime | None = None
    upper_datetime: datetime | None = None
    most_recent_results: int | None = None
    modalities_in_study: tuple[str, ...] = ()
    viewer_type: str | None = None
    diagnostic_quality: bool | None = None
    key_images_only: bool | None = None
    lenient: bool = field(default=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        try:
            kind = RequestType(self.request_type)
        except ValueError:
            raise InvalidQueryError(
                f"requestType {shown(str(self.request_type))} is not supported "
                "(IID defines STUDY and PATIENT)"
            ) from None
        object.__setattr__(self, "request_type", kind)
        for name in ("study_uids", "accession_numbers", "modalities_in_study"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, name, tuple(value))
        if kind is RequestType.STUDY:
            self._validate_study()
        else:
            self._validate_patient()
        if self.viewer_type is not None and not _TOKEN.match(self.viewer_type):
            raise InvalidQueryError(
                f"viewerType {shown(self.viewer_type)} is not a viewer type name "
                "(letters, digits, '_', '.', '-'; e.g. IHE_BIR)"
            )

    def _validate_study(self) -> None:
        if bool(self.study_uids) == bool(self.accession_numbers):
            raise InvalidQueryError(
                "requestType=STUDY needs exactly one of studyUID and accessionNumber "
                + ("(both were given)" if self.study_uids else "(neither was given)")
            )
        extra = [
            name
            for name, (kinds, attr) in _PARAMETERS.items()
            if RequestType.STUDY not in kinds and getattr(self, attr) not in (None, ())
        ]
        if extra:
            raise InvalidQueryError(
                f"{', '.join(extra)} belong(s) to requestType=PATIENT, not STUDY"
            )
        for items in (self.study_uids, self.accession_numbers):
            if len(items) > MAX_LIST_ITEMS:
                raise InvalidQueryError(f"at most {MAX_LIST_ITEMS} studies per request")
        for uid in self.study_uids:
            validate_uid(uid, lenient=self.lenient, what="studyUID")
        for number in self.accession_numbers:
            _accession(number, lenient=self.lenient)

    def _validate_patient(self) -> None:
        if self.patient_id is None:
            raise InvalidQueryError("requestType=PATIENT needs patientID")
        if not isinstance(self.patient_id, PatientID):
            raise InvalidQueryError(f"patient_id must be a PatientID, not {self.patient_id!r}")
        if self.study_uids or self.accession_numbers:
            raise InvalidQueryError(
                "studyUID and accessionNumber belong to requestType=STUDY, not PATIENT"
            )
        if self.patient_name is not None:
            validate_patient_name(self.patient_name, lenient=self.lenient)
        low, high = self.lower_datetime, self.upper_datetime
        if low is not None and high is not None and _comparable(low) > _comparable(high):
            raise InvalidQueryError(
                f"lowerDateTime {format_xs_datetime(low)} is after upperDateTime "
                f"{format_xs_datetime(high)}; lowerDateTime is the earliest study time wanted"
            )
        n = self.most_recent_results
        if n is not None and (isinstance(n, bool) or not 1 <= n <= MAX_MOST_RECENT):
            raise InvalidQueryError(
                f"mostRecentResults {n!r} must be a whole number from 1 to {MAX_MOST_RECENT}"
            )
        for code in self.modalities_in_study:
            _modality(code, lenient=False)

    # -- construction ---------------------------------------------------------------

    @classmethod
    def study(
        cls,
        study_uids: str | Sequence[str] = (),
        *,
        accession_numbers: str | Sequence[str] = (),
        lenient: bool = False,
        **options: Any,
    ) -> IIDRequest:
        """Build a STUDY request.

        Parameters
        ----------
        study_uids : str or sequence of str
            Study Instance UIDs.
        accession_numbers : str or sequence of str
            Accession numbers; give these *or* *study_uids*.
        lenient : bool
            Validate in lenient mode.
        **options
            ``viewer_type``, ``diagnostic_quality``, ``key_images_only``.
        """
        return cls(
            RequestType.STUDY,
            study_uids=(study_uids,) if isinstance(study_uids, str) else tuple(study_uids),
            accession_numbers=(accession_numbers,)
            if isinstance(accession_numbers, str)
            else tuple(accession_numbers),
            lenient=lenient,
            **options,
        )

    @classmethod
    def patient(
        cls,
        patient_id: PatientID | str,
        *,
        lenient: bool = False,
        **options: Any,
    ) -> IIDRequest:
        """Build a PATIENT request.

        Parameters
        ----------
        patient_id : PatientID or str
            The patient; a string is parsed as HL7 CX (``ID^^^&1.2.3&ISO``).
        lenient : bool
            Validate in lenient mode.
        **options
            ``patient_name``, ``patient_birth_date``, ``lower_datetime``,
            ``upper_datetime``, ``most_recent_results``, ``modalities_in_study``,
            ``viewer_type``, ``diagnostic_quality``, ``key_images_only``.
        """
        if isinstance(patient_id, str):
            patient_id = PatientID.parse(patient_id, lenient=lenient)
        return cls(RequestType.PATIENT, patient_id=patient_id, lenient=lenient, **options)

    @classmethod
    def from_query(
        cls, query: str | Iterable[tuple[str, str]], *, lenient: bool = False
    ) -> IIDRequest:
        """Parse the query part of an IID URL.

        Parameters
        ----------
        query : str or iterable of (name, value)
            The raw query string (without ``?``; percent- and ``+``-decoded here), or
            already decoded pairs.
        lenient : bool
            Parse in lenient mode (see the module documentation).

        Returns
        -------
        IIDRequest

        Raises
        ------
        InvalidQueryError, InvalidUIDError, InvalidDateError
            Naming the parameter and the value at fault.
        """
        pairs = _decode_pairs(query)
        values = _collect(pairs, lenient=lenient)
        kind_raw = values.pop("requestType", None)
        if kind_raw is None:
            raise InvalidQueryError("requestType is missing (IID needs STUDY or PATIENT)")
        kind_text = kind_raw.upper() if lenient else kind_raw
        if kind_text not in RequestType.__members__:
            raise InvalidQueryError(
                f"requestType {shown(kind_raw)} is not supported (IID defines STUDY and PATIENT)"
            )
        kind = RequestType(kind_text)
        kwargs: dict[str, Any] = {}
        for name, raw in values.items():
            kinds, attr = _PARAMETERS[name]
            if kind not in kinds:
                if lenient:
                    continue
                raise InvalidQueryError(
                    f"{name} is not a parameter of requestType={kind.value} "
                    f"(it belongs to requestType={'/'.join(sorted(k.value for k in kinds))})"
                )
            kwargs[attr] = _convert(name, raw, lenient=lenient)
        return cls(kind, lenient=lenient, **kwargs)

    @classmethod
    def from_url(cls, url: str, *, lenient: bool = False) -> IIDRequest:
        """Parse a full IID URL (``…/IHEInvokeImageDisplay?requestType=…``).

        Raises
        ------
        InvalidQueryError
            If the path does not end in ``IHEInvokeImageDisplay`` or a parameter is bad.
        """
        parts = urlsplit(url)
        if not parts.path.rstrip("/").endswith(IID_PATH):
            raise InvalidQueryError(f"{shown(url)} is not an IID URL (path must end in {IID_PATH})")
        return cls.from_query(parts.query, lenient=lenient)

    # -- serialisation --------------------------------------------------------------

    def to_params(self) -> list[tuple[str, str]]:
        """Return the request as ordered ``(name, value)`` pairs, not yet URL-encoded."""
        params: list[tuple[str, str]] = [("requestType", self.request_type.value)]
        for name, (_kinds, attr) in _PARAMETERS.items():
            value = getattr(self, attr)
            if value is None or value == ():
                continue
            if name in _LIST_PARAMETERS:
                params.append((name, ",".join(value)))
            elif isinstance(value, bool):
                params.append((name, "true" if value else "false"))
            elif isinstance(value, datetime):
                params.append((name, format_xs_datetime(value)))
            elif isinstance(value, date):
                params.append((name, format_xs_date(value)))
            elif isinstance(value, PatientID):
                params.append((name, value.to_cx()))
            else:
                params.append((name, str(value)))
        return params

    def to_query(self) -> str:
        """Return the URL query string: ``^``→``%5E``, ``&``→``%26``, list commas literal."""
        return "&".join(f"{name}={_quote_value(name, value)}" for name, value in self.to_params())

    def to_url(self, endpoint: str) -> str:
        """Return the IID URL for the Image Display at *endpoint*.

        Parameters
        ----------
        endpoint : str
            The Image Display's location: either its base (``https://pacs/iid``, as in a
            FHIR ``ihe-iid`` Endpoint.address) or the full ``…/IHEInvokeImageDisplay``
            path. It must be an http(s) URL without a query or fragment.
        """
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidQueryError(f"IID endpoint {shown(endpoint)} is not an http(s) URL")
        if parts.query or parts.fragment:
            raise InvalidQueryError(
                f"IID endpoint {shown(endpoint)} must not carry a query or fragment "
                "(FHIR Endpoint.address for ihe-iid is the bare base)"
            )
        path = parts.path.rstrip("/")
        if not path.endswith("/" + IID_PATH) and path != IID_PATH:
            path = f"{path}/{IID_PATH}"
        return urlunsplit((parts.scheme, parts.netloc, path, self.to_query(), ""))

    def with_studies(self, study_uids: Sequence[str]) -> IIDRequest:
        """Return a STUDY request for *study_uids* keeping the display options."""
        return replace(
            IIDRequest.study(study_uids, lenient=self.lenient),
            viewer_type=self.viewer_type,
            diagnostic_quality=self.diagnostic_quality,
            key_images_only=self.key_images_only,
        )


def _comparable(value: datetime) -> datetime:
    """Return a naive datetime to compare: aware values in UTC, naive ones as given."""
    if value.tzinfo is None:
        return value
    return value.replace(tzinfo=None) - (value.utcoffset() or timedelta(0))


def _quote_value(name: str, value: str) -> str:
    if name in _LIST_PARAMETERS:
        return ",".join(quote(item, safe=":") for item in value.split(","))
    return quote(value, safe=":")


def _decode_pairs(query: str | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    if not isinstance(query, str):
        return [(str(k), str(v)) for k, v in query]
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidQueryError(
            f"the query is {len(query)} characters long; at most {MAX_QUERY_CHARS} are accepted"
        )
    try:
        return parse_qsl(
            query, keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=64
        )
    except UnicodeDecodeError as exc:
        raise InvalidQueryError("the query is not valid UTF-8 after percent-decoding") from exc
    except ValueError as exc:
        raise InvalidQueryError(f"the query cannot be parsed: {exc}") from exc


def _collect(pairs: list[tuple[str, str]], *, lenient: bool) -> dict[str, str]:
    """Map canonical parameter names to raw values; refuse or merge repeats."""
    by_lower = {name.lower(): name for name in (*_PARAMETERS, "requestType")}
    values: dict[str, str] = {}
    for raw_name, value in pairs:
        _check_text(shown(raw_name), raw_name)
        name = by_lower.get(raw_name.lower()) if lenient else raw_name
        if name not in by_lower.values():
            if lenient:
                continue
            hint = by_lower.get(raw_name.lower())
            raise InvalidQueryError(
                f"unknown parameter {shown(raw_name)}"
                + (f" (did you mean {hint!r}?)" if hint else "")
                + "; IID parameters are requestType, "
                + ", ".join(_PARAMETERS)
            )
        assert name is not None
        _check_text(name, value)
        if name in values:
            if lenient and name in _LIST_PARAMETERS:
                values[name] = f"{values[name]},{value}"
                continue
            raise InvalidQueryError(
                f"{name} is given more than once; "
                + ("give one comma-separated list" if name in _LIST_PARAMETERS else "give it once")
            )
        values[name] = value
    return values


def _convert(name: str, raw: str, *, lenient: bool) -> Any:
    if name == "studyUID":
        return tuple(_split_list(name, raw, lenient=lenient))
    if name == "accessionNumber":
        return tuple(_split_list(name, raw, lenient=lenient))
    if name == "modalitiesInStudy":
        return tuple(_modality(m, lenient=lenient) for m in _split_list(name, raw, lenient=lenient))
    if name == "patientID":
        return PatientID.parse(raw, lenient=lenient)
    if name == "patientName":
        return raw
    if name == "patientBirthDate":
        return parse_xs_date(raw, what=name, lenient=lenient)
    if name in ("lowerDateTime", "upperDateTime"):
        return parse_xs_datetime(raw, what=name, lenient=lenient)
    if name == "mostRecentResults":
        text = raw.strip() if lenient else raw
        if not _COUNT.match(text):
            raise InvalidQueryError(
                f"mostRecentResults {shown(raw)} is not a whole number from 1 to {MAX_MOST_RECENT}"
            )
        return int(text)
    if name in ("diagnosticQuality", "keyImagesOnly"):
        return _boolean(name, raw, lenient=lenient)
    return raw  # viewerType, validated by IIDRequest
