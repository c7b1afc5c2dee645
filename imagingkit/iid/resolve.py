"""Find the studies an IID request means: FHIR ImagingStudy search, QIDO-RS fallback.

A PATIENT request (RAD TF-2 §4.106.4.1.2) names a patient and optional filters; a STUDY
request may name accession numbers instead of Study Instance UIDs. Viewers need UIDs,
so :class:`HTTPStudyResolver` looks them up over HTTP, against any FHIR R4 server and
any DICOMweb server (the embedded stores by default):

* PATIENT → ``Patient?identifier=[system|]value`` (with ``birthdate``, ``family`` and
  ``given`` when the request has them), then ``ImagingStudy?subject=Patient/<id>`` with
  ``started=ge…``/``le…``, ``modality=…`` and ``_sort=-started`` (FHIR R4 §3.1.1.4;
  ImagingStudy search parameters). The same filters are applied again to what comes
  back, so a server that ignores a parameter cannot widen the result.
* If FHIR is unreachable, errs, finds nothing, or finds several patients with that
  value in different identifier systems while the request names an issuer, QIDO-RS
  ``/studies?PatientID=…&StudyDate=…`` (PS3.18 §10.6) is asked instead; its results
  are kept when their IssuerOfPatientID is empty or equals the request's issuer.
* A patient ID that matches several patients and comes without an issuer is refused
  (``IIDError`` with status 409) rather than showing another patient's images.
* accessionNumber → ``/studies?AccessionNumber=…`` (QIDO-RS).

The result is most recent first, cut to ``mostRecentResults``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

import tornado.httpclient

from imagingkit.errors import IIDError
from imagingkit.iid.request import IIDRequest
from imagingkit.uids import is_valid_uid

__all__ = ["HTTPStudyResolver", "StudyMatch", "StudyResolver", "filter_studies"]

#: StudyDate, StudyTime
_DATE_FIELDS = ("00080020", "00080030")
#: … and ModalitiesInStudy, IssuerOfPatientID, PatientName, PatientBirthDate
_PATIENT_FIELDS = (*_DATE_FIELDS, "00080061", "00100021", "00100010", "00100030")
#: pages followed at most in one search (FHIR ``next`` links, QIDO offsets)
MAX_PAGES = 20
PAGE_SIZE = 100


@dataclass(frozen=True)
class StudyMatch:
    """A study found for a request.

    Attributes
    ----------
    study_uid : str
    started : datetime or None
        Study date and time (FHIR ``ImagingStudy.started``, DICOM StudyDate+StudyTime).
    modalities : frozenset of str
    """

    study_uid: str
    started: datetime | None = None
    modalities: frozenset[str] = field(default_factory=frozenset)


class StudyResolver(Protocol):
    """Turns IID requests into Study Instance UIDs; plug in your own for other sources."""

    async def studies_for_patient(self, request: IIDRequest) -> list[str]:
        """Return the Study Instance UIDs for a PATIENT request, most recent first."""
        ...

    async def studies_for_accessions(self, accession_numbers: Sequence[str]) -> list[str]:
        """Return the Study Instance UIDs with these accession numbers."""
        ...


def _naive_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value
    return value.astimezone(timezone.utc).replace(tzinfo=None)


def filter_studies(matches: Iterable[StudyMatch], request: IIDRequest) -> list[str]:
    """Apply a PATIENT request's date range, modalities and count to *matches*.

    The range is inclusive. A study without a date is kept only when no range is given.
    Naive times (no zone) on either side are compared by wall-clock value.

    Returns
    -------
    list of str
        Unique Study Instance UIDs, most recent first (undated last).
    """
    low, high = request.lower_datetime, request.upper_datetime
    wanted = set(request.modalities_in_study)
    kept: dict[str, StudyMatch] = {}
    for match in matches:
        if low is not None or high is not None:
            if match.started is None:
                continue
            if low is not None and _cmp(match.started, low) < 0:
                continue
            if high is not None and _cmp(match.started, high) > 0:
                continue
        if wanted and not (wanted & match.modalities):
            continue
        kept.setdefault(match.study_uid, match)
    ordered = sorted(
        kept.values(),
        key=lambda m: (m.started is not None, _naive_utc(m.started) if m.started else datetime.min),
        reverse=True,
    )
    uids = [m.study_uid for m in ordered]
    if request.most_recent_results is not None:
        uids = uids[: request.most_recent_results]
    return uids


def _cmp(a: datetime, b: datetime) -> int:
    """Compare, treating a naive side as wall-clock time in the other side's zone."""
    if (a.tzinfo is None) != (b.tzinfo is None):
        a, b = a.replace(tzinfo=None), b.replace(tzinfo=None)
    return (a > b) - (a < b)


def _fhir_datetime(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        if len(value) == 4:
            return datetime(int(value), 1, 1)
        if len(value) == 7:
            return datetime(int(value[:4]), int(value[5:7]), 1)
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _dicom_datetime(study_date: str | None, study_time: str | None) -> datetime | None:
    if not study_date or len(study_date) != 8 or not study_date.isdigit():
        return None
    try:
        day = date(int(study_date[:4]), int(study_date[4:6]), int(study_date[6:8]))
    except ValueError:
        return None
    t = (study_time or "").split(".")[0]
    hh, mm, ss = (
        int(t[i : i + 2]) if len(t) >= i + 2 and t[i : i + 2].isdigit() else 0 for i in (0, 2, 4)
    )
    try:
        return datetime(day.year, day.month, day.day, hh, mm, min(ss, 59))
    except ValueError:
        return datetime(day.year, day.month, day.day)


def imaging_study_match(resource: dict[str, Any]) -> StudyMatch | None:
    """Read the Study Instance UID, start and modalities of a FHIR R4 ImagingStudy."""
    uid = None
    for ident in resource.get("identifier") or []:
        value = ident.get("value") or ""
        if ident.get("system") == "urn:dicom:uid" or value.startswith("urn:oid:"):
            candidate = value.removeprefix("urn:oid:")
            if is_valid_uid(candidate, lenient=True):
                uid = candidate
                break
    if uid is None:
        return None
    modalities = {c.get("code") for c in resource.get("modality") or [] if c.get("code")}
    for series in resource.get("series") or []:
        code = (series.get("modality") or {}).get("code")
        if code:
            modalities.add(code)
    return StudyMatch(uid, _fhir_datetime(resource.get("started")), frozenset(modalities))


def _first(dataset: dict[str, Any], tag: str) -> Any:
    values = (dataset.get(tag) or {}).get("Value") or []
    return values[0] if values else None


def qido_match(dataset: dict[str, Any]) -> StudyMatch | None:
    """Read a QIDO-RS study result (DICOM JSON, PS3.18 §F.2)."""
    uid = _first(dataset, "0020000D")
    if not isinstance(uid, str) or not is_valid_uid(uid, lenient=True):
        return None
    modalities = (dataset.get("00080061") or {}).get("Value") or []
    return StudyMatch(
        uid,
        _dicom_datetime(_first(dataset, "00080020"), _first(dataset, "00080030")),
        frozenset(m for m in modalities if isinstance(m, str)),
    )


class HTTPStudyResolver:
    """Resolve through a FHIR R4 server and a DICOMweb server over HTTP.

    Parameters
    ----------
    fhir_base : str or None
        FHIR base URL; ``None`` skips FHIR and goes to QIDO directly.
    dicomweb_base : str or None
        DICOMweb root for QIDO-RS.
    timeout : float
        Seconds per request.
    headers : dict, optional
        Sent with every request (e.g. ``Authorization``).
    """

    def __init__(
        self,
        fhir_base: str | None,
        dicomweb_base: str | None,
        *,
        timeout: float = 30.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.fhir_base = fhir_base.rstrip("/") if fhir_base else None
        self.dicomweb_base = dicomweb_base.rstrip("/") if dicomweb_base else None
        self.timeout = timeout
        self.headers = dict(headers or {})

    async def _get_json(self, url: str, accept: str) -> Any:
        client = tornado.httpclient.AsyncHTTPClient()
        try:
            response = await client.fetch(
                url,
                headers={**self.headers, "Accept": accept},
                request_timeout=self.timeout,
                connect_timeout=self.timeout,
                follow_redirects=False,
                raise_error=False,
            )
        except OSError as exc:
            raise IIDError(f"cannot reach {url.split('?')[0]} ({exc})", url=url) from exc
        if response.code == 204:
            return None
        if response.code != 200:
            text = response.body[:300].decode("utf-8", "replace") if response.body else ""
            raise IIDError(
                "lookup failed", url=url, status=response.code, server_message=text or None
            )
        try:
            return json.loads(response.body)
        except ValueError as exc:
            raise IIDError("lookup answered with invalid JSON", url=url) from exc

    # -- FHIR -----------------------------------------------------------------------

    async def _fhir_search(
        self, resource: str, params: list[tuple[str, str]]
    ) -> list[dict[str, Any]]:
        assert self.fhir_base is not None
        url: str | None = f"{self.fhir_base}/{resource}?{urlencode(params)}"
        origin = urlsplit(self.fhir_base)[:2]
        found: list[dict[str, Any]] = []
        for _ in range(MAX_PAGES):
            if url is None:
                break
            bundle = await self._get_json(url, "application/fhir+json")
            if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
                raise IIDError(f"FHIR {resource} search did not answer a Bundle", url=url)
            for entry in bundle.get("entry") or []:
                item = entry.get("resource") or {}
                if item.get("resourceType") == resource:
                    found.append(item)
            url = next(
                (
                    link.get("url")
                    for link in bundle.get("link") or []
                    if link.get("relation") == "next"
                ),
                None,
            )
            # Follow paging only on the FHIR server itself (no requests elsewhere).
            if url is not None and urlsplit(url)[:2] != origin:
                break
        return found

    async def _patients_fhir(self, request: IIDRequest) -> list[str]:
        pid = request.patient_id
        assert pid is not None
        system = pid.fhir_system()
        token = pid.value.replace("\\", "\\\\").replace("|", "\\|").replace(",", "\\,")
        params = [("identifier", f"{system}|{token}" if system else token)]
        if request.patient_birth_date:
            params.append(("birthdate", request.patient_birth_date.isoformat()))
        if request.patient_name:
            family, _, rest = request.patient_name.split("=")[0].partition("^")
            if family:
                params.append(("family", family))
            given = rest.split("^")[0]
            if given:
                params.append(("given", given))
        patients = await self._fhir_search("Patient", params)
        ids = [p["id"] for p in patients if isinstance(p.get("id"), str)]
        if len(ids) > 1 and system is None:
            raise IIDError(
                f"patientID {pid.value!r} matches {len(ids)} patients in different "
                "identifier systems; give its assigning authority (e.g. ID^^^&OID&ISO)",
                status=409,
            )
        return ids

    async def _studies_fhir(self, request: IIDRequest) -> list[StudyMatch]:
        matches: list[StudyMatch] = []
        for patient in await self._patients_fhir(request):
            params = [("subject", f"Patient/{patient}"), ("_count", str(PAGE_SIZE))]
            params.append(("_sort", "-started"))
            if request.lower_datetime:
                params.append(("started", "ge" + _fhir_search_time(request.lower_datetime)))
            if request.upper_datetime:
                params.append(("started", "le" + _fhir_search_time(request.upper_datetime)))
            if request.modalities_in_study:
                params.append(("modality", ",".join(request.modalities_in_study)))
            for study in await self._fhir_search("ImagingStudy", params):
                match = imaging_study_match(study)
                if match is not None:
                    matches.append(match)
        return matches

    # -- QIDO -----------------------------------------------------------------------

    async def _qido(self, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        if not self.dicomweb_base:
            raise IIDError("no DICOMweb server is configured for QIDO-RS lookups")
        found: list[dict[str, Any]] = []
        for page in range(MAX_PAGES):
            query = [*params, ("limit", str(PAGE_SIZE)), ("offset", str(page * PAGE_SIZE))]
            url = f"{self.dicomweb_base}/studies?{urlencode(query)}"
            batch = await self._get_json(url, "application/dicom+json")
            if batch is None:
                break
            if not isinstance(batch, list):
                raise IIDError("QIDO-RS did not answer a JSON array", url=url)
            found.extend(item for item in batch if isinstance(item, dict))
            if len(batch) < PAGE_SIZE:
                break
        return found

    async def _studies_qido(self, request: IIDRequest) -> list[StudyMatch]:
        pid = request.patient_id
        assert pid is not None
        params = [("PatientID", pid.value)]
        if request.lower_datetime or request.upper_datetime:
            # StudyDate has no time zone: ask a day wider, then filter exactly below
            day = timedelta(days=1)
            low = request.lower_datetime
            high = request.upper_datetime
            params.append(
                (
                    "StudyDate",
                    f"{(low - day).strftime('%Y%m%d') if low else ''}-"
                    f"{(high + day).strftime('%Y%m%d') if high else ''}",
                )
            )
        # one includefield per attribute: some servers (Orthanc 1.10) do not decode %2C
        params += [("includefield", tag) for tag in _PATIENT_FIELDS]
        matches = []
        issuers: set[str] = set()
        for dataset in await self._qido(params):
            if _first(dataset, "00100020") not in (None, pid.value):
                continue  # a server that ignored the filter
            issuer = _first(dataset, "00100021") or ""
            if issuer and pid.issuer and issuer not in (pid.namespace, pid.universal_id):
                continue
            birth = _first(dataset, "00100030")
            wanted_birth = request.patient_birth_date
            if wanted_birth and birth and birth != wanted_birth.strftime("%Y%m%d"):
                continue
            if request.patient_name and not _same_name(
                _first(dataset, "00100010"), request.patient_name
            ):
                continue
            match = qido_match(dataset)
            if match is not None:
                matches.append(match)
                issuers.add(issuer)
        if not pid.issuer and len(issuers) > 1:
            raise IIDError(
                f"patientID {pid.value!r} belongs to patients of {len(issuers)} issuers; "
                "give its assigning authority (e.g. ID^^^ISSUER)",
                status=409,
            )
        return matches

    # -- public ---------------------------------------------------------------------

    async def studies_for_patient(self, request: IIDRequest) -> list[str]:
        """Return the patient's matching studies, most recent first.

        Raises
        ------
        IIDError
            If neither FHIR nor QIDO could answer (status 502), or the patient is
            ambiguous (status 409).
        """
        problems: list[str] = []
        pid = request.patient_id
        assert pid is not None
        if self.fhir_base:
            try:
                found = filter_studies(await self._studies_fhir(request), request)
                if found:
                    return found
            except IIDError as exc:
                # ambiguous in FHIR: DICOM's IssuerOfPatientID may still tell them apart
                if exc.status == 409 and not (pid.issuer and self.dicomweb_base):
                    raise
                problems.append(f"FHIR: {_brief(exc)}")
        if self.dicomweb_base:
            try:
                return filter_studies(await self._studies_qido(request), request)
            except IIDError as exc:
                if exc.status == 409:
                    raise
                problems.append(f"QIDO-RS: {_brief(exc)}")
        if problems:
            raise IIDError(
                "could not look up the patient's studies; " + "; ".join(problems), status=502
            )
        return []

    async def studies_for_accessions(self, accession_numbers: Sequence[str]) -> list[str]:
        """Return the studies with these accession numbers (QIDO-RS ``AccessionNumber``).

        Accession numbers are unique only within their issuer, so studies of more than
        one patient (PatientID and IssuerOfPatientID) are refused, not shown together.

        Raises
        ------
        IIDError
            If QIDO-RS cannot answer (status 502), or the numbers match studies of
            several patients (status 409).
        """
        uids: list[str] = []
        patients: set[tuple[str, str]] = set()
        fields = (*_DATE_FIELDS, "00100020", "00100021")
        for number in accession_numbers:
            try:
                results = await self._qido(
                    [("AccessionNumber", number), *(("includefield", t) for t in fields)]
                )
            except IIDError as exc:
                raise IIDError(
                    f"could not look up accession numbers: QIDO-RS: {_brief(exc)}", status=502
                ) from exc
            for dataset in results:
                if _first(dataset, "00080050") not in (None, number):
                    continue  # a server that ignored the filter
                match = qido_match(dataset)
                if match is not None and match.study_uid not in uids:
                    uids.append(match.study_uid)
                    patients.add(
                        (
                            str(_first(dataset, "00100020") or ""),
                            str(_first(dataset, "00100021") or ""),
                        )
                    )
        if len(patients) > 1:
            raise IIDError(
                f"the accession number(s) match studies of {len(patients)} different patients; "
                "ask by studyUID instead",
                status=409,
            )
        return uids


def _brief(exc: IIDError) -> str:
    """The error without its URL (which repeats the patient's identifiers)."""
    return exc.message + (f" (HTTP {exc.status})" if exc.status else "")


def _fhir_search_time(value: datetime) -> str:
    """FHIR search dateTime: seconds precision; a naive value is sent without zone."""
    if value.tzinfo is not None and value.utcoffset() == timedelta(0):
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    return value.isoformat(timespec="seconds")


def _same_name(stored: Any, wanted: str) -> bool:
    """Compare a DICOM JSON PN with a PN string, case-insensitively, ignoring empty tails."""
    if stored is None:
        return True
    text = stored.get("Alphabetic", "") if isinstance(stored, dict) else str(stored)

    def norm(pn: str) -> list[str]:
        parts = [p.strip().casefold() for p in pn.split("=")[0].split("^")]
        while parts and not parts[-1]:
            parts.pop()
        return parts

    return norm(text) == norm(wanted)
