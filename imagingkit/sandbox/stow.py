"""STOW-RS: store instances into the embedded store (PS3.18 §10.5).

``POST /studies`` and ``POST /studies/{study}`` take a ``multipart/related;
type="application/dicom"`` body, one Part-10 instance per part. Each instance is checked
(readable, complete, carrying its UIDs, of the target study), written to
``root/stow/<study>/<series>/<sop>.dcm`` and indexed.

Crash safety
    Each file is written to ``root/stow/.incoming/<pid>-<random>.part``, flushed and
    fsynced, renamed into place (atomic) and its folder fsynced; only then is it indexed.
    A process killed at any point leaves either no file, a ``.part`` file (ignored by the
    index, whose name starts with ``.``, and removed by :func:`remove_stale_uploads` once
    its writer is dead), or a complete file that the next scan indexes.

Re-storing an instance replaces it: the new file is indexed in place of the old one, and an
older copy under ``root/stow`` is deleted.

Response (PS3.18 §10.5.3, Annex I)
    ``application/dicom+json`` with ReferencedSOPSequence (0008,1199) — SOP Class, SOP
    Instance and RetrieveURL of each stored instance — and FailedSOPSequence (0008,1198)
    with a FailureReason (0008,1197) for each refused one:

    ======  ====================================================================
    0xA700  out of resources (disk full)
    0xA900  the data set lacks a required UID (SOP Class, SOP Instance, Study, Series)
    0xC000  cannot understand: not DICOM, truncated, or a part that is not application/dicom
    0xC409  its Study Instance UID differs from the study in the URL
    0x0110  any other processing failure
    ======  ====================================================================

    HTTP 200 when all were stored, 202 when some were, 409 when none were. A request that
    is not multipart/related of application/dicom gets 415; a malformed or truncated
    multipart body, or one without parts, 400; a body larger than
    ``settings.max_upload_bytes`` 413.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import IO, Any

import pydicom
import tornado.ioloop
import tornado.web
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID

from imagingkit._process import pid_alive
from imagingkit.config import Settings
from imagingkit.dicomjson import DicomJson, DicomJsonHeader, read_dicom_json
from imagingkit.dicomweb.multipart import iter_parts, parse_media_type
from imagingkit.errors import InvalidDICOMError, InvalidInputError
from imagingkit.sandbox.dicom_index import DicomIndex
from imagingkit.sandbox.qido import QidoHandler, negotiate_json
from imagingkit.server.app import RouteList
from imagingkit.server.base import BaseHandler, HTTPProblem
from imagingkit.uids import is_valid_uid

__all__ = [
    "FAILURE_REASONS",
    "StowOutcome",
    "remove_stale_uploads",
    "store_instances",
    "stow_routes",
]

log = logging.getLogger("imagingkit.sandbox.stow")

OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
STUDY_UID_MISMATCH = 0xC409
PROCESSING_FAILURE = 0x0110

#: Failure Reason values this store uses (PS3.18 Table I.2-2)
FAILURE_REASONS = {
    OUT_OF_RESOURCES: "Refused: out of resources",
    DOES_NOT_MATCH_SOP_CLASS: "Error: data set does not match SOP Class",
    CANNOT_UNDERSTAND: "Error: cannot understand",
    STUDY_UID_MISMATCH: "Error: Study Instance UID does not match the target study",
    PROCESSING_FAILURE: "Processing failure",
}

STOW_FOLDER = "stow"
INCOMING = ".incoming"
#: request bodies up to this size stay in memory while they arrive
_SPOOL_IN_MEMORY = 32 * 1024 * 1024
_READ_CHUNK = 1024 * 1024


def _drain_limit(limit: int) -> int:
    """Largest body read (and dropped) to answer 413 cleanly; beyond it the server hangs up."""
    return limit * 2 + 64 * 1024 * 1024


# --------------------------------------------------------------------------- storing


@dataclass
class StowOutcome:
    """The result of a store request (PS3.18 §10.5.3).

    Attributes
    ----------
    stored : list of (sop class, sop instance, retrieve URL)
    failed : list of (sop class, sop instance, failure reason, explanation)
    """

    stored: list[tuple[str, str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, int, str]] = field(default_factory=list)
    study_urls: set[str] = field(default_factory=set)

    @property
    def status(self) -> int:
        """200 if every instance was stored, 202 if some were, 409 if none were."""
        if not self.failed:
            return 200
        return 202 if self.stored else 409

    def response(self) -> DicomJson:
        """The Store Instances Response dataset as DICOM JSON (PS3.18 §I.2)."""
        body: DicomJson = {}
        if len(self.study_urls) == 1:
            body["00081190"] = {"vr": "UR", "Value": sorted(self.study_urls)}
        if self.failed:
            body["00081198"] = {
                "vr": "SQ",
                "Value": [
                    _reference(klass, sop) | {"00081197": {"vr": "US", "Value": [reason]}}
                    for klass, sop, reason, _ in self.failed
                ],
            }
        if self.stored:
            body["00081199"] = {
                "vr": "SQ",
                "Value": [
                    _reference(klass, sop) | {"00081190": {"vr": "UR", "Value": [url]}}
                    for klass, sop, url in self.stored
                ],
            }
        return body


def _reference(sop_class: str, sop_uid: str) -> DicomJson:
    item: DicomJson = {}
    item["00081150"] = {"vr": "UI", "Value": [sop_class]} if sop_class else {"vr": "UI"}
    item["00081155"] = {"vr": "UI", "Value": [sop_uid]} if sop_uid else {"vr": "UI"}
    return item


class _Refused(Exception):
    def __init__(self, reason: int, explanation: str, sop_class: str = "", sop_uid: str = ""):
        super().__init__(explanation)
        self.reason = reason
        self.explanation = explanation
        self.sop_class = sop_class
        self.sop_uid = sop_uid


def _first(dataset: DicomJson, key: str) -> str:
    entry = dataset.get(key) or {}
    values = entry.get("Value") or [None]
    return str(values[0]) if values[0] is not None else ""


def store_instances(
    index: DicomIndex,
    parts: Iterator[tuple[dict[str, str], bytes]],
    *,
    base_url: str,
    study_uid: str | None = None,
) -> StowOutcome:
    """Store each ``application/dicom`` part into the folder and the index (PS3.18 §10.5).

    Parameters
    ----------
    index : DicomIndex
        The store's index; files go below ``index.root / "stow"``.
    parts : iterator of (headers, payload)
        The request's parts (see :func:`imagingkit.dicomweb.multipart.iter_parts`).
    base_url : str
        DICOMweb base URL for the RetrieveURLs.
    study_uid : str, optional
        The study of ``POST /studies/{study}``; instances of another study are refused.

    Returns
    -------
    StowOutcome

    Raises
    ------
    InvalidInputError
        If the multipart body is malformed or truncated, or holds no part at all
        (nothing is stored from a truncated body's unfinished last part).
    """
    outcome = StowOutcome()
    count = 0
    for headers, payload in parts:
        count += 1
        try:
            sop_class, sop_uid, study, url = _store_one(
                index, headers, payload, base_url, study_uid
            )
        except _Refused as refused:
            log.info("STOW-RS refused part %d: %s", count, refused.explanation)
            outcome.failed.append(
                (refused.sop_class, refused.sop_uid, refused.reason, refused.explanation)
            )
            continue
        outcome.stored.append((sop_class, sop_uid, url))
        outcome.study_urls.add(f"{base_url}/studies/{study}")
    if count == 0:
        raise InvalidInputError("the multipart request holds no parts (no instances to store)")
    if study_uid is not None:
        outcome.study_urls = {f"{base_url}/studies/{study_uid}"}
    return outcome


def _store_one(
    index: DicomIndex,
    headers: dict[str, str],
    payload: bytes,
    base_url: str,
    target_study: str | None,
) -> tuple[str, str, str, str]:
    media = parse_media_type(headers.get("content-type", "application/dicom"))[0]
    if media != "application/dicom":
        raise _Refused(CANNOT_UNDERSTAND, f"part of type {media!r} is not application/dicom")
    try:
        header = read_dicom_json(payload)  # whole header: its length locates the pixel data
    except InvalidDICOMError as exc:
        raise _Refused(CANNOT_UNDERSTAND, exc.message) from None
    except Exception as exc:  # the reader must never take the request down
        raise _Refused(CANNOT_UNDERSTAND, f"unreadable: {exc}") from None
    dataset = header.dataset
    sop_class, sop_uid = _first(dataset, "00080016"), _first(dataset, "00080018")
    study, series = _first(dataset, "0020000D"), _first(dataset, "0020000E")
    for keyword, value in (
        ("SOPClassUID", sop_class),
        ("SOPInstanceUID", sop_uid),
        ("StudyInstanceUID", study),
        ("SeriesInstanceUID", series),
    ):
        if not value or not is_valid_uid(value, lenient=True):
            shown = f"{value[:64]!r} is not a UID" if value else "is missing"
            raise _Refused(DOES_NOT_MATCH_SOP_CLASS, f"{keyword} {shown}", sop_class, sop_uid)
    if target_study is not None and study != target_study:
        raise _Refused(
            STUDY_UID_MISMATCH,
            f"StudyInstanceUID {study} differs from the target study {target_study}",
            sop_class,
            sop_uid,
        )
    data = _complete_part10(payload, header, sop_class, sop_uid)
    final = index.root / STOW_FOLDER / study / series / f"{sop_uid}.dcm"
    previous = index.instance(sop_uid)
    try:
        _write_atomically(index.root, final, data)
    except OSError as exc:
        reason = OUT_OF_RESOURCES if exc.errno in (errno.ENOSPC, errno.EDQUOT) else None
        raise _Refused(
            reason or PROCESSING_FAILURE, f"cannot write {final.name}: {exc}", sop_class, sop_uid
        ) from None
    try:
        index.add_file(final)
    except InvalidDICOMError as exc:
        with contextlib.suppress(OSError):
            final.unlink()
        with contextlib.suppress(Exception):
            index.remove_file(final)
        raise _Refused(CANNOT_UNDERSTAND, exc.message, sop_class, sop_uid) from None
    if previous is not None and previous.path != final and _is_stowed(index.root, previous.path):
        # an older copy this store wrote: the new one replaces it
        with contextlib.suppress(OSError):
            previous.path.unlink()
        index.remove_file(previous.path)
    url = f"{base_url}/studies/{study}/series/{series}/instances/{sop_uid}"
    return sop_class, sop_uid, study, url


def _is_stowed(root: Path, path: Path) -> bool:
    try:
        path.relative_to(root / STOW_FOLDER)
    except ValueError:
        return False
    return True


def _complete_part10(
    payload: bytes, header: DicomJsonHeader, sop_class: str, sop_uid: str
) -> bytes:
    """Return the bytes to store: the payload itself if it is a complete Part-10 file.

    A bare dataset (no preamble and file meta) is given its file meta information
    (PS3.10 §7.1). A payload whose pixel data is cut short is refused.
    """
    if header.header_length is not None:
        _check_pixel_data(
            payload, header.header_length, header.transfer_syntax_uid, sop_class, sop_uid
        )
        return payload
    if header.has_preamble:
        return payload
    try:
        ds = pydicom.dcmread(BytesIO(payload), force=True)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(sop_class)
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = UID(header.transfer_syntax_uid)
        ds.file_meta = meta
        out = BytesIO()
        ds.save_as(out, enforce_file_format=True)
    except Exception as exc:
        raise _Refused(
            CANNOT_UNDERSTAND, f"cannot write as Part-10: {exc}", sop_class, sop_uid
        ) from None
    return out.getvalue()


def _check_pixel_data(
    payload: bytes, start: int, syntax: str, sop_class: str, sop_uid: str
) -> None:
    """Refuse a payload whose pixel data element runs past its end (a truncated upload)."""
    if start >= len(payload):
        return  # no pixel data
    if start + 8 > len(payload):
        raise _Refused(CANNOT_UNDERSTAND, "pixel data element is truncated", sop_class, sop_uid)
    implicit = syntax == "1.2.840.10008.1.2"
    if implicit:
        length = int.from_bytes(payload[start + 4 : start + 8], "little")
        value_start = start + 8
    else:
        if start + 12 > len(payload):
            raise _Refused(CANNOT_UNDERSTAND, "pixel data element is truncated", sop_class, sop_uid)
        length = int.from_bytes(payload[start + 8 : start + 12], "little")
        value_start = start + 12
    if length == 0xFFFFFFFF:
        complete = payload.rfind(b"\xfe\xff\xdd\xe0", value_start) >= 0
    else:
        complete = value_start + length <= len(payload)
    if not complete:
        raise _Refused(
            CANNOT_UNDERSTAND, "pixel data is truncated (incomplete upload?)", sop_class, sop_uid
        )


def _write_atomically(root: Path, final: Path, data: bytes) -> None:
    """Write *data* to *final* via a fsynced temporary file and a rename."""
    incoming = root / STOW_FOLDER / INCOMING
    incoming.mkdir(parents=True, exist_ok=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = incoming / f"{os.getpid()}-{uuid.uuid4().hex}.part"
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    _fsync_folder(final.parent)


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_uploads(root: Path) -> int:
    """Delete ``.part`` files left by STOW-RS writers that are no longer running.

    Returns the number of files removed.
    """
    incoming = Path(root) / STOW_FOLDER / INCOMING
    removed = 0
    if not incoming.is_dir():
        return 0
    for temp in incoming.glob("*.part"):
        pid_text = temp.name.split("-", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and pid_alive(int(pid_text)):
            continue
        if pid_text.isdigit() and int(pid_text) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            temp.unlink()
            removed += 1
    return removed


# --------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class StowContext:
    """What the STOW-RS handlers need (passed as the ``stow`` route argument)."""

    index: DicomIndex
    settings: Settings
    prefix: str
    #: called (on a worker thread) with the Study Instance UIDs that a request stored
    listeners: list[Callable[[set[str]], object]] = field(default_factory=list)


class _StowMixin(BaseHandler):
    """``POST`` of STOW-RS, streaming the body to a spooled file (PS3.18 §10.5)."""

    cors_methods = "GET, HEAD, POST, OPTIONS"

    def initialize(self, stow: StowContext, **kwargs: Any) -> None:
        self.stow = stow
        self._body: IO[bytes] | None = None
        self._received = 0
        self._too_large = False
        super().initialize(**kwargs)

    def _limit(self) -> int:
        return int(self.stow.settings.max_upload_bytes)

    async def prepare(self) -> None:
        if self.request.method == "POST":
            limit = self._limit()
            drain = _drain_limit(limit)
            length = self.request.headers.get("Content-Length")
            declared = int(length) if length is not None and length.strip().isdigit() else None
            if declared is not None and declared > drain:
                # far too large to read: answer now (the client may see the connection close)
                raise HTTPProblem(
                    413, f"request body of {declared} bytes exceeds the limit of {limit} bytes"
                )
            # A body over the limit is read and dropped, then answered with 413: answering
            # while the client still sends would reset the connection under it.
            with contextlib.suppress(AttributeError):
                self.request.connection.set_max_body_size(drain)  # type: ignore[union-attr]
            self._too_large = declared is not None and declared > limit
            if not self._too_large:
                # closed in on_finish, whatever happens to the request
                self._body = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115
        parent = super().prepare()
        if parent is not None:
            await parent

    def data_received(self, chunk: bytes) -> None:
        if self._body is None or self._too_large:
            return
        self._received += len(chunk)
        if self._received > self._limit():
            self._too_large = True
            self._body.close()
            return
        self._body.write(chunk)

    def on_finish(self) -> None:
        if self._body is not None:
            self._body.close()
        super().on_finish()

    def _chunks(self) -> Iterator[bytes]:
        body = self._body
        assert body is not None
        body.seek(0)
        while chunk := body.read(_READ_CHUNK):
            yield chunk

    def _check_multipart(self, content_type: str) -> None:
        """Walk the whole body once; raise InvalidInputError if it is malformed or cut short."""
        count = sum(1 for _ in iter_parts(self._chunks(), content_type))
        if count == 0:
            raise InvalidInputError("the multipart request holds no parts (no instances to store)")

    async def post(self, study_uid: str | None = None) -> None:
        """Store the request's instances (PS3.18 §10.5.1)."""
        if self._too_large:
            raise HTTPProblem(413, f"request body exceeds the limit of {self._limit()} bytes")
        media_type = negotiate_json(self.request.headers.get("Accept"))
        if study_uid is not None and not is_valid_uid(study_uid, lenient=True):
            raise InvalidInputError(f"StudyInstanceUID {study_uid[:80]!r} in the path is not a UID")
        content_type = self.request.headers.get("Content-Type", "")
        media, params = parse_media_type(content_type)
        part_type = params.get("type", "application/dicom").lower()
        if media != "multipart/related" or part_type != "application/dicom":
            raise HTTPProblem(
                415,
                f"Content-Type {content_type[:120]!r} is not supported; send "
                'multipart/related; type="application/dicom" (PS3.18 §10.5.1.1)',
            )
        base = f"{self.request.protocol}://{self.request.host}{self.stow.prefix}"
        loop = tornado.ioloop.IOLoop.current()
        # A malformed or truncated body is refused before anything is stored.
        await loop.run_in_executor(None, self._check_multipart, content_type)
        parts = iter_parts(self._chunks(), content_type)
        outcome = await loop.run_in_executor(
            None,
            lambda: store_instances(self.stow.index, parts, base_url=base, study_uid=study_uid),
        )
        if outcome.stored:
            studies = {url.rsplit("/studies/", 1)[1].split("/")[0] for url in outcome.study_urls}
            for listener in self.stow.listeners:
                try:
                    await loop.run_in_executor(None, listener, studies)
                except Exception:  # the instances are stored; a listener must not undo that
                    log.exception("a STOW-RS listener failed for studies %s", sorted(studies))
        self.set_status(outcome.status)
        self.set_header("Content-Type", f"{media_type}; charset=utf-8")
        self.finish(json.dumps(outcome.response(), separators=(",", ":")))


@tornado.web.stream_request_body
class StudiesResource(_StowMixin, QidoHandler):  # type: ignore[misc]
    """``/studies``: GET searches (QIDO-RS), POST stores (STOW-RS)."""


@tornado.web.stream_request_body
class StudyStowResource(_StowMixin):
    """``/studies/{study}`` when no WADO-RS handler serves its GET: POST only."""


def _with_stow(handler: type[tornado.web.RequestHandler]) -> type[tornado.web.RequestHandler]:
    """Give a WADO-RS study handler the STOW-RS ``POST`` of the same URL."""
    combined = type(f"Stow{handler.__name__}", (_StowMixin, handler), {})
    return tornado.web.stream_request_body(combined)


def _is_study_pattern(pattern: str, prefix: str) -> bool:
    sample = f"{prefix}/studies/1.2.3"
    try:
        compiled = re.compile(pattern if pattern.endswith("$") else pattern + "$")
    except re.error:
        return False
    return bool(compiled.match(sample)) and not compiled.match(sample + "/series")


def stow_routes(
    prefix: str,
    common: dict[str, Any],
    wado: RouteList,
    listeners: list[Callable[[set[str]], object]] | None = None,
) -> RouteList:
    """The ``/studies`` and ``/studies/{s}`` routes with STOW-RS, plus the WADO-RS routes.

    The WADO-RS handler of ``/studies/{study}`` (if any) is combined with STOW-RS so the
    same URL answers both ``GET`` (retrieve) and ``POST`` (store). *listeners* are told
    which studies each request stored (the FHIR store keeps its ImagingStudies in step).
    """
    context = StowContext(
        common["index"], common["settings"], prefix, listeners if listeners is not None else []
    )
    rules: RouteList = [
        (rf"{prefix}/studies/?", StudiesResource, {**common, "level": "study", "stow": context})
    ]
    combined = False
    rest: RouteList = []
    for pattern, handler, kwargs in wado:
        if not combined and _is_study_pattern(pattern, prefix):
            rules.append((pattern, _with_stow(handler), {**kwargs, "stow": context}))
            combined = True
        else:
            rest.append((pattern, handler, kwargs))
    if not combined:
        rules.append((rf"{prefix}/studies/([^/]+)/?", StudyStowResource, {"stow": context}))
    return rules + rest
