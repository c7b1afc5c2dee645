"""QIDO-RS: search the embedded store for studies, series and instances (PS3.18 §10.6).

Resources: ``/studies``, ``/series``, ``/instances``, ``/studies/{s}/series``,
``/studies/{s}/instances`` and ``/studies/{s}/series/{se}/instances``.

Query parameters (PS3.18 §8.3.4)
    ``{attributeID}={value}``
        *attributeID* is a keyword (``PatientID``) or a tag (``00100020``). Matching follows
        PS3.4 §C.2.2.2:

        * an empty value or ``*`` is universal matching (the attribute is just returned);
        * UI: a list of UIDs separated by ``,`` or ``\\`` (list of UID matching);
        * DA and TM: a single value or a range ``a-b``, ``-b``, ``a-`` (range matching); a
          time with fewer components covers its whole span (``14`` is 14:00:00–14:59:59.999999);
        * a date and its time given together (``StudyDate`` with ``StudyTime``, and likewise
          ``SeriesDate``/``SeriesTime``, ``PerformedProcedureStepStartDate``/``…Time``,
          ``ContentDate``/``ContentTime``, ``AcquisitionDate``/``AcquisitionTime``) match as
          one date-time (combined date-time range matching, PS3.4 C.2.2.2.5.1, which
          PS3.18 §8.3.4.1 asks of origin servers): ``StudyDate=20200101-20200102&
          StudyTime=2300-0100`` is 2020-01-01 23:00 up to 2020-01-02 01:00:59.999999. Each
          time bound belongs to the date bound on its side (a missing one is the start or
          the end of that day); a bound without a date has no effect. An entity without a
          date or without a time has no date-time and does not match (as with range
          matching of one attribute; Empty Value Matching is not supported). A range that
          ends before it starts is refused with 400;
        * PN: literal or ``*``/``?`` wildcard matching, insensitive to case and to trailing
          empty components (PS3.4 allows this for PN);
        * IS, US and other numbers: equality;
        * other strings: literal (case-sensitive) or ``*``/``?`` wildcard matching;
        * a multi-valued attribute matches when any of its values does.

        Attributes of lower levels may be given at higher levels (e.g. ``Modality`` on
        ``/studies``): an entity matches when at least one of its series or instances does.
        Matching needs the attribute to be indexed (see
        :data:`~imagingkit.sandbox.dicom_index.DECODED_TAGS`); others are refused with 400,
        but can still be returned with ``includefield``. Sequence matching is not supported.
    ``ModalitiesInStudy``
        Matches studies with a series of that modality; ``\\``-separated values are
        alternatives.
    ``includefield``
        Keywords or tags, repeated or comma-separated, or ``all`` (at most
        :data:`MAX_INCLUDEFIELDS`). ``all`` returns all available attributes of the level
        (PS3.18 §8.3.4.3, Tables 10.6.3-3 to -5): for instances the whole header without
        bulk data; for studies and series the attributes of :data:`LEVEL_ATTRIBUTES`
        (the modules of the Patient and Study, or the Series, Equipment and Frame of
        Reference information entities, PS3.3 A.1.2) as one representative file of the
        study or series holds them (its first instance), with those of the levels above.
        Representative headers are cached per file version; searches without
        ``includefield`` never read a file.
    ``fuzzymatching=true``
        Person names then also match when each word of the query starts a name component,
        case-insensitively (``smi jo`` matches ``Smith^John``).
    ``multiplevaluematching=true``
        ``,`` and ``\\`` separate alternative values for every attribute (PS3.4 C.2.2.2.8).
    ``emptyvaluematching``
        Not supported: answered with a ``Warning: 299`` header (PS3.18 §8.3.4.5).
    ``limit``, ``offset``
        Paging; ``limit`` above ``settings.max_query_limit`` is capped with a ``Warning``.

Responses
    ``application/dicom+json`` (``application/json`` also accepted), an array — ``[]``
    with 200 when nothing matches. Results are ordered by StudyDate, StudyTime,
    StudyInstanceUID, then SeriesNumber, SeriesInstanceUID, then InstanceNumber,
    SOPInstanceUID (missing values first). Errors are ``application/problem+json``:
    400 for a malformed parameter (the detail names it), 404 for an unknown study or
    series in the path, 406 for an unsupported ``Accept``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydicom.datadict
import tornado.ioloop

from imagingkit.config import Settings
from imagingkit.dicomjson import DicomJson
from imagingkit.errors import InvalidDateError, InvalidDICOMError, InvalidQueryError
from imagingkit.sandbox import authz
from imagingkit.sandbox.dicom_index import (
    INDEXED_ATTRIBUTES,
    LEVEL_TAGS,
    DicomIndex,
    IndexedAttribute,
    fold_person_name,
    normalize_date,
    normalize_time,
)
from imagingkit.sandbox.stored_instance import FileCache
from imagingkit.server.app import RouteList
from imagingkit.server.base import BaseHandler, HTTPProblem
from imagingkit.uids import is_valid_uid

__all__ = [
    "DATE_TIME_PAIRS",
    "LEVEL_ATTRIBUTES",
    "MAX_INCLUDEFIELDS",
    "QidoQuery",
    "QidoResult",
    "negotiate_json",
    "parse_query",
    "qido_routes",
    "search",
]

log = logging.getLogger("imagingkit.sandbox.qido")

#: more ``includefield`` entries than this are refused (400)
MAX_INCLUDEFIELDS = 500
#: larger limits and offsets are clamped to this (SQLite integers are 64-bit)
_MAX_INT = 2**62

LEVELS = ("study", "series", "instance")
_ALIAS = {"study": "st", "series": "se", "instance": "i"}
_TABLE = {"study": "studies", "series": "series", "instance": "instances"}
_KEY = {"study": "study_uid", "series": "series_uid", "instance": "sop_uid"}
_DEPTH = {"study": 0, "series": 1, "instance": 2}

# Attributes the store computes rather than reads (PS3.18 Tables 10.6.3-3 to -5).
_MODALITIES_IN_STUDY = 0x00080061
_SOP_CLASSES_IN_STUDY = 0x00080062
_INSTANCE_AVAILABILITY = 0x00080056
_RETRIEVE_URL = 0x00081190
_STUDY_SERIES = 0x00201206
_STUDY_INSTANCES = 0x00201208
_SERIES_INSTANCES = 0x00201209
_COMPUTED = {
    _MODALITIES_IN_STUDY: "study",
    _SOP_CLASSES_IN_STUDY: "study",
    _STUDY_SERIES: "study",
    _STUDY_INSTANCES: "study",
    _SERIES_INSTANCES: "series",
    _INSTANCE_AVAILABILITY: "any",
    _RETRIEVE_URL: "any",
}
_CONTROL_PARAMETERS = {
    "limit",
    "offset",
    "includefield",
    "fuzzymatching",
    "multiplevaluematching",
    "emptyvaluematching",
    "charset",
    "accept",
}
_COLUMNS: dict[int, IndexedAttribute] = {
    a.tag: a for attributes in INDEXED_ATTRIBUTES.values() for a in attributes
}
_TAG_TEXT = re.compile(r"^[0-9A-Fa-f]{8}$")
_NUMBER_VRS = frozenset({"IS", "US", "SS", "UL", "SL", "SV", "UV"})
_FLOAT_VRS = frozenset({"DS", "FL", "FD"})

JSON_TYPES = ("application/dicom+json", "application/json")


def _module_tags(*keywords: str) -> frozenset[int]:
    return frozenset(int(pydicom.datadict.tag_for_keyword(k) or 0) for k in keywords) - {0}


#: The attributes ``includefield=all`` returns at the study and series levels: the
#: modules of the information entities at that level of the query model (PS3.3 A.1.2,
#: PS3.4 C.6.1.1.2–C.6.1.1.4), and Timezone Offset From UTC (PS3.18 Table 10.6.3-3/-4).
LEVEL_ATTRIBUTES: dict[str, frozenset[int]] = {
    "study": _module_tags(
        # Patient (PS3.3 C.7.1.1)
        *("PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence"),
        *("TypeOfPatientID", "PatientBirthDate", "PatientBirthTime", "PatientSex"),
        *("PatientBirthDateInAlternativeCalendar", "PatientDeathDateInAlternativeCalendar"),
        *("PatientAlternativeCalendar", "ReferencedPatientPhotoSequence", "QualityControlSubject"),
        *("ReferencedPatientSequence", "OtherPatientIDs", "OtherPatientIDsSequence"),
        *("OtherPatientNames", "EthnicGroup", "EthnicGroupCodeSequence", "PatientComments"),
        *("PatientSpeciesDescription", "PatientSpeciesCodeSequence", "PatientBreedDescription"),
        *("PatientBreedCodeSequence", "BreedRegistrationSequence", "StrainDescription"),
        *("StrainNomenclature", "StrainCodeSequence", "StrainAdditionalInformation"),
        *("StrainStockSequence", "GeneticModificationsSequence", "ResponsiblePerson"),
        *("ResponsiblePersonRole", "ResponsibleOrganization", "PatientIdentityRemoved"),
        *("DeidentificationMethod", "DeidentificationMethodCodeSequence"),
        *("SourcePatientGroupIdentificationSequence", "GroupOfPatientsIdentificationSequence"),
        # Clinical Trial Subject (C.7.1.3)
        *("ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialProtocolName"),
        *("ClinicalTrialSiteID", "ClinicalTrialSiteName", "ClinicalTrialSubjectID"),
        *("ClinicalTrialSubjectReadingID", "ClinicalTrialProtocolEthicsCommitteeName"),
        "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
        # General Study (C.7.2.1)
        *("StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName"),
        *("ReferringPhysicianIdentificationSequence", "ConsultingPhysicianName"),
        *("ConsultingPhysicianIdentificationSequence", "StudyID", "AccessionNumber"),
        *("IssuerOfAccessionNumberSequence", "StudyDescription", "PhysiciansOfRecord"),
        *("PhysiciansOfRecordIdentificationSequence", "NameOfPhysiciansReadingStudy"),
        *("PhysiciansReadingStudyIdentificationSequence", "RequestingServiceCodeSequence"),
        *("ReferencedStudySequence", "ProcedureCodeSequence"),
        "ReasonForPerformedProcedureCodeSequence",
        # Patient Study (C.7.2.2)
        *("AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "PatientAge"),
        *("PatientSize", "PatientWeight", "PatientBodyMassIndex", "MeasuredAPDimension"),
        *("MeasuredLateralDimension", "PatientSizeCodeSequence", "MedicalAlerts", "Allergies"),
        *("SmokingStatus", "PregnancyStatus", "LastMenstrualDate", "PatientState"),
        *("Occupation", "AdditionalPatientHistory", "AdmissionID", "IssuerOfAdmissionIDSequence"),
        *("ServiceEpisodeID", "IssuerOfServiceEpisodeIDSequence", "ServiceEpisodeDescription"),
        *("PatientSexNeutered", "ReasonForVisit", "ReasonForVisitCodeSequence"),
        # Clinical Trial Study (C.7.2.3)
        *("ClinicalTrialTimePointID", "ClinicalTrialTimePointDescription"),
        *("ConsentForClinicalTrialUseSequence", "TimezoneOffsetFromUTC"),
    ),
    "series": _module_tags(
        # General Series (C.7.3.1)
        *("Modality", "SeriesInstanceUID", "SeriesNumber", "Laterality", "SeriesDate"),
        *("SeriesTime", "PerformingPhysicianName", "PerformingPhysicianIdentificationSequence"),
        *("ProtocolName", "SeriesDescription", "SeriesDescriptionCodeSequence", "OperatorsName"),
        *("OperatorIdentificationSequence", "ReferencedPerformedProcedureStepSequence"),
        *("RelatedSeriesSequence", "BodyPartExamined", "PatientPosition"),
        *("SmallestPixelValueInSeries", "LargestPixelValueInSeries", "RequestAttributesSequence"),
        *("PerformedProcedureStepID", "PerformedProcedureStepStartDate"),
        *("PerformedProcedureStepStartTime", "PerformedProcedureStepEndDate"),
        *("PerformedProcedureStepEndTime", "PerformedProcedureStepDescription"),
        *("PerformedProtocolCodeSequence", "CommentsOnThePerformedProcedureStep"),
        *("AnatomicalOrientationType", "TreatmentSessionUID", "TimezoneOffsetFromUTC"),
        # Clinical Trial Series (C.7.3.2)
        *("ClinicalTrialCoordinatingCenterName", "ClinicalTrialSeriesID"),
        "ClinicalTrialSeriesDescription",
        # PET Series (C.8.9.1), the series module of a modality that has one
        *("SeriesType", "Units", "CountsSource", "ReprojectionMethod", "SUVType"),
        *("RandomsCorrectionMethod", "AttenuationCorrectionMethod", "DecayCorrection"),
        *("ReconstructionMethod", "ScatterCorrectionMethod", "CorrectedImage"),
        # Frame of Reference (C.7.4.1) and Synchronization (C.7.4.2)
        *("FrameOfReferenceUID", "PositionReferenceIndicator"),
        *("SynchronizationFrameOfReferenceUID", "SynchronizationTrigger"),
        *("TriggerSourceOrType", "SynchronizationChannel", "AcquisitionTimeSynchronized"),
        *("TimeSource", "TimeDistributionProtocol", "NTPSourceAddress"),
        # General Equipment (C.7.5.1) and SC Equipment (C.8.6.1)
        *("Manufacturer", "InstitutionName", "InstitutionAddress", "StationName"),
        *("InstitutionalDepartmentName", "InstitutionalDepartmentTypeCodeSequence"),
        *("ManufacturerModelName", "ManufacturerDeviceClassUID", "DeviceSerialNumber"),
        *("SoftwareVersions", "GantryID", "UDISequence", "DeviceUID", "SpatialResolution"),
        *("DateOfLastCalibration", "TimeOfLastCalibration", "PixelPaddingValue"),
        *("ConversionType", "SecondaryCaptureDeviceID", "SecondaryCaptureDeviceManufacturer"),
        "SecondaryCaptureDeviceManufacturerModelName",
        *("SecondaryCaptureDeviceSoftwareVersions", "VideoImageFormatAcquired"),
        "DigitalImageFormatAcquired",
    ),
}
#: representative headers kept per index (``includefield`` beyond the index's columns)
_HEADER_CACHE_SIZE = 512
_header_caches: weakref.WeakKeyDictionary[DicomIndex, FileCache[DicomJson]] = (
    weakref.WeakKeyDictionary()
)
_header_caches_lock = threading.Lock()


def _header_cache(index: DicomIndex) -> FileCache[DicomJson]:
    with _header_caches_lock:
        cache = _header_caches.get(index)
        if cache is None:
            cache = _header_caches[index] = FileCache(_HEADER_CACHE_SIZE)
        return cache


# --------------------------------------------------------------------------- attributes


@dataclass(frozen=True)
class Attribute:
    """A DICOM attribute named in a query (PS3.6)."""

    tag: int
    keyword: str
    vr: str

    @property
    def key(self) -> str:
        """The DICOM JSON key, ``"GGGGEEEE"``."""
        return f"{self.tag:08X}"


def resolve_attribute(name: str, parameter: str) -> Attribute:
    """Return the attribute a keyword or ``GGGGEEEE`` tag names.

    A dotted path (``00081115.0020000E``) names its first, top-level attribute.

    Raises
    ------
    InvalidQueryError
        If *name* is neither a known keyword nor a tag.
    """
    head = name.split(".", 1)[0].strip()
    tag = int(head, 16) if _TAG_TEXT.match(head) else pydicom.datadict.tag_for_keyword(head)
    if tag is None:
        raise InvalidQueryError(
            f"{parameter}: {name[:80]!r} is not a DICOM attribute keyword or tag (PS3.18 §8.3.4.1)"
        )
    try:
        vr = str(pydicom.datadict.dictionary_VR(tag))
        keyword = str(pydicom.datadict.keyword_for_tag(tag)) or f"{tag:08X}"
    except KeyError:
        vr, keyword = "UN", f"{tag:08X}"  # private or unknown public tag
    if " or " in vr:
        vr = "US" if vr.startswith("US") else vr.split(" or ")[0]
    return Attribute(tag, keyword, vr)


# --------------------------------------------------------------------------- the query


@dataclass
class _Condition:
    """An SQL condition on one level's table, written against the alias ``{t}``."""

    level: str
    sql: str
    params: list[Any]


@dataclass
class QidoQuery:
    """A parsed and validated QIDO-RS request (PS3.18 §8.3.4).

    Attributes
    ----------
    level : {"study", "series", "instance"}
    conditions : list
        Matching, as SQL on the index (internal).
    include : set of int
        Tags to return besides the level's defaults (matching keys are included).
    include_all : bool
        ``includefield=all``.
    limit : int
        Results per page (already capped).
    offset : int
    warnings : list of str
        Texts for ``Warning: 299`` response headers.
    """

    level: str
    conditions: list[_Condition] = field(default_factory=list)
    include: set[int] = field(default_factory=set)
    include_all: bool = False
    limit: int = 0
    offset: int = 0
    warnings: list[str] = field(default_factory=list)


def _single(args: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = args.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise InvalidQueryError(f"{name} given {len(values)} times; give it once")
    return values[0]


def _flag(args: Mapping[str, Sequence[str]], name: str) -> bool:
    value = _single(args, name)
    if value is None or value.strip().lower() == "false":
        return False
    if value.strip().lower() == "true":
        return True
    raise InvalidQueryError(f"{name}={value[:40]!r}: expected 'true' or 'false'")


def _integer(args: Mapping[str, Sequence[str]], name: str, minimum: int) -> int | None:
    value = _single(args, name)
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()):
        shown = value if len(value) <= 40 else value[:40] + "…"
        raise InvalidQueryError(f"{name}={shown!r}: expected a whole number ≥ {minimum}")
    # Absurdly long numbers are clamped, not converted (callers cap them anyway).
    number = int(text) if len(text) <= 18 else _MAX_INT
    if number < minimum:
        raise InvalidQueryError(f"{name}={value!r}: expected a whole number ≥ {minimum}")
    return min(number, _MAX_INT)


def parse_query(
    level: str, args: Mapping[str, Sequence[str]], *, max_limit: int, service: str = "imagingkit"
) -> QidoQuery:
    """Validate QIDO-RS query parameters and turn them into a :class:`QidoQuery`.

    Parameters
    ----------
    level : {"study", "series", "instance"}
        The level searched.
    args : mapping of str to list of str
        The decoded query parameters.
    max_limit : int
        ``settings.max_query_limit``.
    service : str
        The base URL named in ``Warning`` headers (PS3.18 §8.3.4.5).

    Raises
    ------
    InvalidQueryError, InvalidDateError, InvalidUIDError
        For a malformed parameter; the message names it and its value.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown QIDO level {level!r}")
    query = QidoQuery(level=level)
    fuzzy = _flag(args, "fuzzymatching")
    multiple = _flag(args, "multiplevaluematching")
    if _flag(args, "emptyvaluematching"):
        query.warnings.append(
            f"299 {service}: The emptyvaluematching parameter is not supported. "
            "Empty Value Matching has not been performed."
        )
    limit = _integer(args, "limit", 1)
    query.offset = _integer(args, "offset", 0) or 0  # past the end: an empty page
    if limit is None:
        query.limit = max_limit
    elif limit > max_limit:
        query.limit = max_limit
        shown = args["limit"][0].strip()
        shown = shown if len(shown) <= 24 else f"{shown[:20]}..."  # headers are ASCII
        query.warnings.append(
            f"299 {service}: The limit {shown} exceeds the maximum of {max_limit} results "
            f"supported by the server; at most {max_limit} results are returned."
        )
    else:
        query.limit = limit
    _parse_includefields(args.get("includefield", []), query)
    combined = _combined_date_times(args, query, multiple)
    for name, values in args.items():
        if name in _CONTROL_PARAMETERS or name.lower() in _CONTROL_PARAMETERS:
            continue
        if name in combined:
            continue
        attribute = resolve_attribute(name, name)
        for value in values:
            query.include.add(attribute.tag)
            condition = _condition(attribute, value, fuzzy=fuzzy, multiple=multiple)
            if condition is not None:
                query.conditions.append(condition)
    return query


def _parse_includefields(values: Sequence[str], query: QidoQuery) -> None:
    names = [n.strip() for value in values for n in value.split(",") if n.strip()]
    if len(names) > MAX_INCLUDEFIELDS:
        raise InvalidQueryError(
            f"includefield names {len(names)} attributes; at most {MAX_INCLUDEFIELDS} are allowed"
        )
    for name in names:
        if name.lower() == "all":
            query.include_all = True
        else:
            query.include.add(resolve_attribute(name, "includefield").tag)


# --------------------------------------------------------------------------- matching


def _glob(text: str) -> str:
    """Turn a DICOM wildcard pattern into an SQLite GLOB pattern (``*`` and ``?`` agree)."""
    return text.replace("[", "[[]")


def _has_wildcard(text: str) -> bool:
    return "*" in text or "?" in text


def _alternatives(attribute: Attribute, value: str, multiple: bool) -> list[str]:
    if attribute.vr == "UI" or multiple:
        return re.split(r"[,\\]", value)
    if attribute.tag == _MODALITIES_IN_STUDY:
        return value.split("\\")
    return [value]


def _condition(attribute: Attribute, raw: str, *, fuzzy: bool, multiple: bool) -> _Condition | None:
    """Return the condition for ``attribute=raw``, or None for universal matching."""
    value = raw.strip() if attribute.vr not in ("LT", "ST", "UT") else raw
    if value in ("", "*"):
        return None
    name = attribute.keyword
    if attribute.vr == "SQ":
        raise InvalidQueryError(f"{name}: sequence matching is not supported (PS3.4 C.2.2.2.6)")
    if attribute.tag in _COMPUTED:
        return _computed_condition(attribute, value, multiple)
    target = _target(attribute)
    parts: list[str] = []
    params: list[Any] = []
    alternatives = [a.strip() for a in _alternatives(attribute, value, multiple) if a.strip()]
    if not alternatives:
        raise InvalidQueryError(f"{name}={raw[:80]!r} holds no value to match")
    if attribute.vr == "UI":
        uids = alternatives
        for uid in uids:
            if not is_valid_uid(uid, lenient=True):
                raise InvalidQueryError(
                    f"{name}={raw[:80]!r}: {uid[:80]!r} is not a UID (PS3.5 §9.1)"
                )
        sql, sql_params = target.match_in(uids)
        return _Condition(target.level, sql, sql_params)
    for alternative in alternatives:
        sql, sql_params = _match_one(attribute, target, alternative, raw, fuzzy)
        parts.append(sql)
        params.extend(sql_params)
    sql = parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"
    return _Condition(target.level, sql, params)


@dataclass(frozen=True)
class _Target:
    """Where an attribute's values live: a column, or the stored JSON (``attrs``) of a level."""

    level: str
    column: str | None
    key: str
    vr: str

    def each_value(self, test: str) -> str:
        """SQL true when any value of the attribute in ``{t}.attrs`` passes *test*."""
        return (
            f"EXISTS (SELECT 1 FROM json_each({{t}}.attrs, '$.\"{self.key}\".Value') WHERE {test})"
        )

    def compare(self, op: str, value: Any, transform: str = "value") -> tuple[str, list[Any]]:
        if self.column is not None:
            return f"{{t}}.{self.column} {op} ?", [value]
        return self.each_value(f"{transform} {op} ?"), [value]

    def expression(self, normalizer: str) -> str:
        """SQL for the attribute's (first) value, normalized like its column would be."""
        if self.column is not None:
            return f"{{t}}.{self.column}"
        return f"{normalizer}(json_extract({{t}}.attrs, '$.\"{self.key}\".Value[0]'))"

    def match_in(self, values: list[str]) -> tuple[str, list[Any]]:
        marks = ", ".join("?" * len(values))
        if self.column is not None:
            return f"{{t}}.{self.column} IN ({marks})", list(values)
        return self.each_value(f"value IN ({marks})"), list(values)

    def between(self, low: str | None, high: str | None, transform: str) -> tuple[str, list[Any]]:
        tests, params = [], []
        expression = f"{{t}}.{self.column}" if self.column is not None else transform
        if low is not None:
            tests.append(f"{expression} >= ?")
            params.append(low)
        if high is not None:
            tests.append(f"{expression} <= ?")
            params.append(high)
        test = " AND ".join(tests)
        if self.column is not None:
            return f"({test})", params
        return self.each_value(test), params


def _target(attribute: Attribute) -> _Target:
    column = _COLUMNS.get(attribute.tag)
    if column is not None:
        return _Target(column.level, column.column, attribute.key, attribute.vr)
    for level in LEVELS:
        if attribute.tag in LEVEL_TAGS[level]:  # decoded: in that level's stored JSON
            return _Target(level, None, attribute.key, attribute.vr)
    raise InvalidQueryError(
        f"{attribute.keyword}: matching on this attribute is not supported by this server "
        "(it can be returned with includefield)"
    )


def _match_one(
    attribute: Attribute, target: _Target, value: str, raw: str, fuzzy: bool
) -> tuple[str, list[Any]]:
    name, vr = attribute.keyword, attribute.vr
    if vr in ("DA", "TM", "DT"):
        return _range(attribute, target, value, raw)
    if vr == "PN":
        return _person_name(target, value, fuzzy)
    if vr in _NUMBER_VRS:
        if not re.fullmatch(r"[+-]?\d{1,18}", value):
            raise InvalidQueryError(f"{name}={raw[:80]!r}: expected a whole number")
        return target.compare("=", int(value))
    if vr in _FLOAT_VRS:
        try:
            number = float(value)
        except ValueError:
            raise InvalidQueryError(f"{name}={raw[:80]!r}: expected a number") from None
        return target.compare("=", number)
    if _has_wildcard(value):
        return target.compare("GLOB", _glob(value))
    return target.compare("=", value)


_DT_VALUE = re.compile(r"\d{4,14}(\.\d{1,6})?")


def _range(attribute: Attribute, target: _Target, value: str, raw: str) -> tuple[str, list[Any]]:
    """Single value or range matching of DA, TM and DT (PS3.4 C.2.2.2.5)."""
    name, vr = attribute.keyword, attribute.vr
    low_text, sep, high_text = value.partition("-")
    if "-" in high_text:
        raise InvalidDateError(
            f"{name}={raw[:80]!r} is not a {vr} value or range (PS3.4 C.2.2.2.5)"
        )
    if sep and not low_text and not high_text:
        raise InvalidDateError(f"{name}={raw[:80]!r}: a range needs at least one end")
    if vr == "DA":
        low = _date(low_text, name, raw) if low_text else None
        high = _date(high_text, name, raw) if high_text else None
        if not sep:
            return target.compare("=", low, "ik_date(value)")
        return target.between(low, high, "ik_date(value)")
    if vr == "TM":
        # a time covers its whole span: "14" is 14:00:00.000000 to 14:59:59.999999
        low = _time(low_text, name, raw, upper=False) if low_text else None
        high_source = high_text if sep else low_text
        high = _time(high_source, name, raw, upper=True) if high_source else None
        return target.between(low, high, "ik_time(value)")
    # DT, compared as text (no timezone offsets): a value matches as a prefix
    for part in (low_text, high_text):
        if part and not _DT_VALUE.fullmatch(part):
            raise InvalidDateError(
                f"{name}={raw[:80]!r}: {part[:30]!r} is not a DT value YYYYMMDDHHMMSS.FFFFFF"
            )
    if not sep:
        return target.compare("GLOB", low_text + "*")
    return target.between(low_text or None, (high_text + "\uffff") if high_text else None, "value")


#: date and time attributes matched together as one date-time when both are given
#: (PS3.4 C.2.2.2.5.1); each pair lives on one level of the index
DATE_TIME_PAIRS: tuple[tuple[str, str], ...] = (
    ("StudyDate", "StudyTime"),
    ("SeriesDate", "SeriesTime"),
    ("PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime"),
    ("ContentDate", "ContentTime"),
    ("AcquisitionDate", "AcquisitionTime"),
)
_DAY_START = "000000.000000"
_DAY_END = "235959.999999"


def _combined_date_times(
    args: Mapping[str, Sequence[str]], query: QidoQuery, multiple: bool
) -> set[str]:
    """Add a combined date-time condition for each date/time pair given together.

    Returns the parameter names consumed (their attributes are returned as matching keys).
    A pair where either value is universal (empty or ``*``), or either is repeated, is
    left to ordinary matching of each attribute.
    """
    named: dict[int, tuple[str, str]] = {}
    for name, values in args.items():
        if name in _CONTROL_PARAMETERS or name.lower() in _CONTROL_PARAMETERS or len(values) != 1:
            continue
        head = name.strip()
        tag = int(head, 16) if _TAG_TEXT.match(head) else pydicom.datadict.tag_for_keyword(head)
        if tag is not None:
            named[int(tag)] = (name, values[0].strip())
    consumed: set[str] = set()
    for date_attr, time_attr in _PAIR_ATTRIBUTES:
        if date_attr.tag not in named or time_attr.tag not in named:
            continue
        (date_name, date_value), (time_name, time_value) = (
            named[date_attr.tag],
            named[time_attr.tag],
        )
        if date_value in ("", "*") or time_value in ("", "*"):
            continue
        if multiple and any(c in date_value + time_value for c in ",\\"):
            raise InvalidQueryError(
                f"{date_name}={date_value[:40]!r} with {time_name}={time_value[:40]!r}: "
                "combined date-time matching takes one value or range each, not a list "
                "(PS3.4 C.2.2.2.5.1)"
            )
        query.conditions.append(_combined_condition(date_attr, date_value, time_attr, time_value))
        query.include.update((date_attr.tag, time_attr.tag))
        consumed.update((date_name, time_name))
    return consumed


_PAIR_ATTRIBUTES = tuple(
    (resolve_attribute(d, d), resolve_attribute(t, t)) for d, t in DATE_TIME_PAIRS
)


def _bounds(attribute: Attribute, value: str) -> tuple[str | None, str | None]:
    """The (low, high) normalized bounds of a DA or TM value or range (None: open)."""
    name = attribute.keyword
    low_text, sep, high_text = value.partition("-")
    if "-" in high_text or (sep and not low_text and not high_text):
        raise InvalidDateError(
            f"{name}={value[:80]!r} is not a {attribute.vr} value or range (PS3.4 C.2.2.2.5)"
        )
    if not sep:
        high_text = low_text
    if attribute.vr == "DA":
        low = _date(low_text, name, value) if low_text else None
        high = _date(high_text, name, value) if high_text else None
    else:
        low = _time(low_text, name, value, upper=False) if low_text else None
        high = _time(high_text, name, value, upper=True) if high_text else None
    return low, high


def _combined_condition(
    date_attr: Attribute, date_value: str, time_attr: Attribute, time_value: str
) -> _Condition:
    """Combined date-time range matching of one date/time pair (PS3.4 C.2.2.2.5.1)."""
    date_low, date_high = _bounds(date_attr, date_value)
    time_low, time_high = _bounds(time_attr, time_value)
    low = date_low + (time_low or _DAY_START) if date_low else None
    high = date_high + (time_high or _DAY_END) if date_high else None
    if low is not None and high is not None and low > high:
        raise InvalidDateError(
            f"{date_attr.keyword}={date_value[:40]!r} with {time_attr.keyword}="
            f"{time_value[:40]!r}: the combined date-time range ends before it starts "
            f"({low[:8]} {low[8:14]} > {high[:8]} {high[8:14]}); a range over midnight "
            "needs a date range (PS3.4 C.2.2.2.5.1)"
        )
    date_target, time_target = _target(date_attr), _target(time_attr)
    day = date_target.expression("ik_date")
    moment = time_target.expression("ik_time")
    tests = [f"{day} IS NOT NULL", f"{moment} IS NOT NULL"]
    params: list[Any] = []
    if low is not None:  # both are fixed-width text, so text order is time order
        tests.append(f"{day} || {moment} >= ?")
        params.append(low)
    if high is not None:
        tests.append(f"{day} || {moment} <= ?")
        params.append(high)
    return _Condition(date_target.level, "(" + " AND ".join(tests) + ")", params)


def _date(text: str, name: str, raw: str) -> str:
    normalized = normalize_date(text) if re.fullmatch(r"\d{8}", text.strip()) else None
    if normalized is None:
        raise InvalidDateError(
            f"{name}={raw[:80]!r}: {text[:20]!r} is not a date YYYYMMDD (PS3.5 §6.2, DA)"
        )
    return normalized


def _time(text: str, name: str, raw: str, *, upper: bool) -> str:
    normalized = normalize_time(text, upper=upper) if ":" not in text else None
    if normalized is None:
        raise InvalidDateError(
            f"{name}={raw[:80]!r}: {text[:20]!r} is not a time HHMMSS.FFFFFF (PS3.5 §6.2, TM)"
        )
    return normalized


def _person_name(target: _Target, value: str, fuzzy: bool) -> tuple[str, list[Any]]:
    expression = f"{{t}}.{target.column}" if target.column is not None else "ik_pn(value)"
    wildcard = _has_wildcard(value)
    folded = value.casefold() if wildcard else (fold_person_name(value) or "")
    pattern = _glob(folded)
    tests = [f"{expression} GLOB ?", f"{expression} GLOB ?"]
    params: list[Any] = [pattern, pattern + "=*"]
    if fuzzy:
        words = [w for w in re.split(r"[\s^=,]+", folded) if w]
        if words:
            word_tests = []
            for word in words:
                start = _glob(word) + "*"
                word_tests.append(
                    f"({expression} GLOB ? OR {expression} GLOB ? OR {expression} GLOB ? "
                    f"OR {expression} GLOB ?)"
                )
                params_word = [start, "*^" + start, "* " + start, "*=" + start]
                params.extend(params_word)
            tests.append("(" + " AND ".join(word_tests) + ")")
    test = "(" + " OR ".join(tests) + ")"
    if target.column is not None:
        return test, params
    return target.each_value(test), params


def _computed_condition(attribute: Attribute, value: str, multiple: bool) -> _Condition:
    name = attribute.keyword
    if attribute.tag == _MODALITIES_IN_STUDY:
        tests, params = [], []
        for alternative in _alternatives(attribute, value, multiple):
            alternative = alternative.strip()
            if not alternative:
                continue
            if _has_wildcard(alternative):
                tests.append("se2.modality GLOB ?")
                params.append(_glob(alternative))
            else:
                tests.append("se2.modality = ?")
                params.append(alternative)
        sql = (
            "EXISTS (SELECT 1 FROM series se2 WHERE se2.study_uid = {t}.study_uid AND ("
            + " OR ".join(tests or ["1"])
            + "))"
        )
        return _Condition("study", sql, params)
    if attribute.tag == _SOP_CLASSES_IN_STUDY:
        uids = [u.strip() for u in re.split(r"[,\\]", value) if u.strip()]
        if not uids:
            raise InvalidQueryError(f"{name}={value[:80]!r} holds no UID to match")
        for uid in uids:
            if not is_valid_uid(uid, lenient=True):
                raise InvalidQueryError(f"{name}={value[:80]!r}: {uid[:80]!r} is not a UID")
        marks = ", ".join("?" * len(uids))
        sql = (
            "EXISTS (SELECT 1 FROM instances i2 WHERE i2.study_uid = {t}.study_uid "
            f"AND i2.sop_class_uid IN ({marks}))"
        )
        return _Condition("study", sql, uids)
    raise InvalidQueryError(
        f"{name}: the store computes this attribute; it can be returned (includefield) "
        "but not matched"
    )


# --------------------------------------------------------------------------- search


@dataclass
class QidoResult:
    """The matches of a search and whether more exist past *limit*.

    Attributes
    ----------
    encoded : list of str
        Each match as the text of a DICOM JSON object (assembled from stored JSON, never
        decoded on the way, which keeps large pages fast).
    more : bool
    """

    encoded: list[str]
    more: bool

    @property
    def items(self) -> list[DicomJson]:
        """The matches as DICOM JSON objects."""
        return [json.loads(text) for text in self.encoded]

    def json_text(self) -> str:
        """The response body: a JSON array of the matches."""
        return "[" + ",".join(self.encoded) + "]"


def _where(query: QidoQuery, level: str) -> tuple[list[str], list[Any]]:
    """Turn the query's conditions into SQL for a search at *level*."""
    clauses: list[str] = []
    params: list[Any] = []
    for condition in query.conditions:
        if _DEPTH[condition.level] <= _DEPTH[level]:
            clauses.append(condition.sql.replace("{t}", _ALIAS[condition.level]))
        else:  # a lower level's attribute: some child must match
            alias = _ALIAS[condition.level] + "x"
            parent_key = _KEY[level]
            clauses.append(
                f"EXISTS (SELECT 1 FROM {_TABLE[condition.level]} {alias} "
                f"WHERE {alias}.{parent_key} = {_ALIAS[level]}.{parent_key} AND "
                f"{condition.sql.replace('{t}', alias)})"
            )
        params.extend(condition.params)
    return clauses, params


_SELECT = {
    "study": (
        "SELECT st.study_uid, st.attrs AS study_attrs, "
        "(SELECT COUNT(*) FROM series x WHERE x.study_uid = st.study_uid) AS n_series, "
        "(SELECT COUNT(*) FROM instances x WHERE x.study_uid = st.study_uid) AS n_instances, "
        "(SELECT group_concat(m, '\\') FROM (SELECT DISTINCT x.modality AS m FROM series x "
        "WHERE x.study_uid = st.study_uid AND x.modality IS NOT NULL ORDER BY m)) AS modalities "
        "FROM studies st"
    ),
    "series": (
        "SELECT se.series_uid, se.study_uid, se.attrs AS series_attrs, "
        "(SELECT COUNT(*) FROM instances x WHERE x.series_uid = se.series_uid) AS n_instances "
        "FROM series se JOIN studies st ON st.study_uid = se.study_uid"
    ),
    "instance": (
        "SELECT i.sop_uid, i.series_uid, i.study_uid, i.attrs AS instance_attrs "
        "FROM instances i JOIN series se ON se.series_uid = i.series_uid "
        "JOIN studies st ON st.study_uid = i.study_uid"
    ),
}
_ORDER = {
    "study": " ORDER BY st.study_date, st.study_time, st.study_uid",
    "series": " ORDER BY st.study_date, st.study_time, st.study_uid, se.series_number, "
    "se.series_uid",
    "instance": " ORDER BY st.study_date, st.study_time, st.study_uid, se.series_number, "
    "se.series_uid, i.instance_number, i.sop_uid",
}


def search(
    index: DicomIndex,
    query: QidoQuery,
    *,
    base_url: str,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> QidoResult:
    """Run a QIDO-RS search against the index (PS3.18 §10.6).

    Parameters
    ----------
    index : DicomIndex
    query : QidoQuery
        From :func:`parse_query`.
    base_url : str
        The DICOMweb base URL (``http://host/dicom-web``) for ``RetrieveURL`` values.
    study_uid, series_uid : str, optional
        The study (and series) of a nested resource; the caller checked they exist.

    Returns
    -------
    QidoResult
    """
    level = query.level
    clauses, params = _where(query, level)
    if study_uid is not None:
        clauses.insert(0, f"{_ALIAS[level]}.study_uid = ?")
        params.insert(0, study_uid)
    if series_uid is not None:
        clauses.insert(1, f"{_ALIAS[level]}.series_uid = ?")
        params.insert(1, series_uid)
    sql = _SELECT[level]
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    sql += _ORDER[level] + " LIMIT ? OFFSET ?"
    rows = index.query(sql, [*params, query.limit + 1, query.offset])
    more = len(rows) > query.limit
    builder = _ResultBuilder(index, query, base_url)
    return QidoResult([builder.build(row) for row in rows[: query.limit]], more)


def _members(obj: DicomJson) -> str:
    """A JSON object's members without the braces (``'"k":v,"k2":v2'``)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)[1:-1]


def _stored_members(text: str | None) -> str:
    return text[1:-1] if text and len(text) > 2 else ""


class _ResultBuilder:
    """Assemble each result's DICOM JSON text from a row (PS3.18 Tables 10.6.3-3 to -5).

    A result holds its level's attributes and those of the levels above (disjoint sets,
    stored as JSON per row), the computed attributes, and any ``includefield`` attribute
    only the file has (read from the instance, or a study's or series' first instance).
    """

    def __init__(self, index: DicomIndex, query: QidoQuery, base_url: str):
        self.index = index
        self.query = query
        self.base_url = base_url.rstrip("/")
        level = query.level
        # Nested resources too carry the parent levels' attributes (PS3.18 §10.6.3.3
        # requires them for the non-nested forms; Orthanc and viewers expect them always).
        self.levels = LEVELS[: _DEPTH[level] + 1]
        held = frozenset().union(*(LEVEL_TAGS[lv] for lv in self.levels))
        self.from_file = {t for t in query.include if t not in held and t not in _COMPUTED}
        self.whole_header = query.include_all and level == "instance"
        if query.include_all and level != "instance":  # the levels' full sets (PS3.3 A.1.2)
            every = frozenset().union(*(LEVEL_ATTRIBUTES[lv] for lv in self.levels))
            self.from_file |= {t for t in every if t not in held and t not in _COMPUTED}
        self.wanted_keys = frozenset(f"{t:08X}" for t in self.from_file)
        self.fragments: dict[tuple[str, str], str] = {}  # rows share studies and series

    def _fragment(self, row: Any, lv: str) -> str:
        """A level's stored attributes; a parent level's are fetched once per page."""
        if lv == self.query.level:
            return _stored_members(row[f"{lv}_attrs"])
        uid = row[_KEY[lv]]
        cached = self.fragments.get((lv, uid))
        if cached is None:
            found = self.index.query(f"SELECT attrs FROM {_TABLE[lv]} WHERE {_KEY[lv]} = ?", (uid,))
            cached = _stored_members(found[0][0]) if found else ""
            self.fragments[(lv, uid)] = cached
        return cached

    def build(self, row: Any) -> str:
        parts = [self._fragment(row, lv) for lv in reversed(self.levels)]
        parts.append(self._retrieve_members(row))
        if self.query.level != "instance":
            parts.append(_members(self._computed(row)))
        if self.whole_header or self.from_file:
            extra = self._from_file(
                row, exclude=set().union(*(LEVEL_TAGS[lv] for lv in self.levels))
            )
            if extra:
                parts.append(_members(extra))
        return "{" + ",".join(p for p in parts if p) + "}"

    def _retrieve_members(self, row: Any) -> str:
        """RetrieveURL and InstanceAvailability, written directly (every row has them)."""
        level = self.query.level
        url = f"{self.base_url}/studies/{row['study_uid']}"
        if level in ("series", "instance"):
            url += f"/series/{row['series_uid']}"
        if level == "instance":
            url += f"/instances/{row['sop_uid']}"
        return (
            f'"{_RETRIEVE_URL:08X}":{{"vr":"UR","Value":[{json.dumps(url, ensure_ascii=False)}]}},'
            f'"{_INSTANCE_AVAILABILITY:08X}":{{"vr":"CS","Value":["ONLINE"]}}'
        )

    def _computed(self, row: Any) -> DicomJson:
        """The counts and summaries the store computes for studies and series."""
        level = self.query.level
        study_uid = row["study_uid"]
        out: DicomJson = {}
        if level == "study":
            modalities = [m for m in (row["modalities"] or "").split("\\") if m]
            out[f"{_MODALITIES_IN_STUDY:08X}"] = (
                {"vr": "CS", "Value": modalities} if modalities else {"vr": "CS"}
            )
            out[f"{_STUDY_SERIES:08X}"] = {"vr": "IS", "Value": [row["n_series"]]}
            out[f"{_STUDY_INSTANCES:08X}"] = {"vr": "IS", "Value": [row["n_instances"]]}
            if _SOP_CLASSES_IN_STUDY in self.query.include or self.query.include_all:
                out[f"{_SOP_CLASSES_IN_STUDY:08X}"] = self._sop_classes(study_uid)
        elif level == "series":
            out[f"{_SERIES_INSTANCES:08X}"] = {"vr": "IS", "Value": [row["n_instances"]]}
        return out

    def _sop_classes(self, study_uid: str) -> DicomJson:
        rows = self.index.query(
            "SELECT DISTINCT sop_class_uid FROM instances WHERE study_uid = ? "
            "AND sop_class_uid IS NOT NULL ORDER BY sop_class_uid",
            (study_uid,),
        )
        values = [r[0] for r in rows]
        return {"vr": "UI", "Value": values} if values else {"vr": "UI"}

    def _from_file(self, row: Any, exclude: set[int]) -> DicomJson:
        """Attributes only the file's header has (includefield beyond the index).

        An instance's own file, or the representative file of a study or series: its
        first instance in series and instance order. Headers are cached per file version.
        """
        level = self.query.level
        key = _KEY[level]
        found = self.index.query(
            "SELECT i.sop_uid, i.path FROM instances i JOIN series se "
            f"ON se.series_uid = i.series_uid WHERE i.{key} = ? ORDER BY se.series_number, "
            "se.series_uid, i.instance_number, i.sop_uid LIMIT 1",
            (row[key],),
        )
        if not found:
            return {}
        sop, path = found[0]
        try:
            header = _header_cache(self.index).load(
                self.index.root / path, lambda _: self.index.header(sop) or {}
            )
        except InvalidDICOMError as exc:  # the file changed or vanished since it was indexed
            log.warning("includefield: cannot read the header of %s: %s", sop, exc)
            return {}
        skip = {f"{t:08X}" for t in exclude | set(_COMPUTED)}
        if self.whole_header:
            return {k: v for k, v in header.items() if k not in skip}
        return {k: v for k, v in header.items() if k in self.wanted_keys and k not in skip}


# --------------------------------------------------------------------------- HTTP


def negotiate_json(accept: str | None) -> str:
    """Pick the response media type for a JSON resource from an ``Accept`` header.

    Returns ``application/dicom+json`` unless only ``application/json`` is acceptable.

    Raises
    ------
    HTTPProblem
        406 if neither ``application/dicom+json`` nor ``application/json`` is acceptable
        (PS3.18 §8.7.3).
    """
    if accept is None or not accept.strip():
        return JSON_TYPES[0]
    acceptable: list[str] = []
    for item in accept.split(","):
        media, *params = [p.strip() for p in item.split(";")]
        media = media.lower()
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            acceptable.append(media)
    for media in acceptable:
        if media in (JSON_TYPES[0], "application/*", "*/*"):
            return JSON_TYPES[0]
    if JSON_TYPES[1] in acceptable:
        return JSON_TYPES[1]
    raise HTTPProblem(
        406,
        f"cannot answer with any of Accept: {accept[:200]!r}; this resource is available as "
        "application/dicom+json or application/json (PS3.18 §8.7.3)",
    )


class QidoHandler(BaseHandler):
    """GET handler for one QIDO-RS resource (see the module docstring)."""

    cors_methods = "GET, HEAD, OPTIONS"

    def initialize(
        self, index: DicomIndex, settings: Settings, prefix: str, level: str, **_: Any
    ) -> None:
        self.index = index
        self.config = settings
        self.prefix = prefix
        self.level = level

    def base_url(self) -> str:
        """The DICOMweb base URL as the client sees it."""
        return f"{self.request.protocol}://{self.request.host}{self.prefix}"

    def query_arguments(self) -> dict[str, list[str]]:
        """The request's query parameters, decoded (400 if not UTF-8)."""
        args: dict[str, list[str]] = {}
        for name, values in self.request.query_arguments.items():
            try:
                args[name] = [v.decode("utf-8") for v in values]
            except UnicodeDecodeError:
                raise InvalidQueryError(f"{name}: the value is not UTF-8 text") from None
        return args

    async def get(self, study_uid: str | None = None, series_uid: str | None = None) -> None:
        """Answer a search (PS3.18 §10.6.1)."""
        args = self.query_arguments()
        accept = self.request.headers.get("Accept")
        if "accept" in args:
            accept = args["accept"][-1]
        media_type = negotiate_json(accept)
        if study_uid is not None:
            _check_uid(study_uid, "StudyInstanceUID")
        if series_uid is not None:
            _check_uid(series_uid, "SeriesInstanceUID")
        base = self.base_url()
        query = parse_query(self.level, args, max_limit=self.config.max_query_limit, service=base)
        query.conditions += [_Condition("study", *f) for f in authz.qido_filters(self)]  # --auth
        loop = tornado.ioloop.IOLoop.current()
        result = await loop.run_in_executor(None, self._search, query, base, study_uid, series_uid)
        if result.more:
            query.warnings.append(
                f"299 {base}: The number of results exceeded the maximum supported by the "
                "server or the requested limit. Additional results can be requested."
            )
        for warning in query.warnings:
            self.add_header("Warning", warning)
        self.set_header("Content-Type", f"{media_type}; charset=utf-8")
        self.finish(result.json_text())

    def _search(
        self, query: QidoQuery, base: str, study_uid: str | None, series_uid: str | None
    ) -> QidoResult:
        if study_uid is not None and not self.index.query(
            "SELECT 1 FROM studies WHERE study_uid = ?", (study_uid,)
        ):
            raise HTTPProblem(404, f"no study {study_uid} in this store")
        if series_uid is not None and not self.index.query(
            "SELECT 1 FROM series WHERE series_uid = ? AND study_uid = ?", (series_uid, study_uid)
        ):
            raise HTTPProblem(404, f"no series {series_uid} in study {study_uid}")
        return search(self.index, query, base_url=base, study_uid=study_uid, series_uid=series_uid)


def _check_uid(value: str, what: str) -> None:
    if not is_valid_uid(value, lenient=True):
        shown = value if len(value) <= 80 else value[:80] + "…"
        raise InvalidQueryError(f"{what} {shown!r} in the path is not a UID (PS3.5 §9.1)")


def qido_routes(prefix: str, common: dict[str, Any]) -> RouteList:
    """The QIDO-RS routes below *prefix* (``common`` holds index, settings, prefix)."""
    uid = r"([^/]+)"
    return [
        (rf"{prefix}/series/?", QidoHandler, {**common, "level": "series"}),
        (rf"{prefix}/instances/?", QidoHandler, {**common, "level": "instance"}),
        (rf"{prefix}/studies/{uid}/series/?", QidoHandler, {**common, "level": "series"}),
        (rf"{prefix}/studies/{uid}/instances/?", QidoHandler, {**common, "level": "instance"}),
        (
            rf"{prefix}/studies/{uid}/series/{uid}/instances/?",
            QidoHandler,
            {**common, "level": "instance"},
        ),
    ]
