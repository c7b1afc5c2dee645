"""WADO-RS of the embedded DICOMweb store (PS3.18 §10.4, Sup 203 thumbnails).

Resources, below the store's prefix (``/dicom-web``):

=====================================================  =====================================
``/studies/{s}[/series/{se}[/instances/{i}]]``          instances, ``multipart/related;
                                                        type="application/dicom"``
``…/metadata``                                          DICOM JSON with BulkDataURIs
``…/instances/{i}/frames/{list}``                       frames (native or as stored)
``…/instances/{i}/pixeldata``, ``…/bulkdata/{path}``    pixel data, bulk data values
``…/rendered``, ``…/frames/{list}/rendered``            JPEG / PNG / GIF
``…/thumbnail``, ``…/frames/{list}/thumbnail``          small representative image
=====================================================  =====================================

Instances stream part by part (a 2,000-instance series is never held in memory). When
every file is already a Part-10 file in the requested transfer syntax the answer has a
Content-Length and each part goes out byte for byte from a reused buffer; otherwise parts
are transcoded on worker threads (two ahead of the one being sent) and the answer is
chunked. Instances that cannot be given in any acceptable syntax are left out with 206
and a ``Warning`` header (406 when none is left). Errors are problem+json: malformed UID,
frame list or rendering parameter → 400, unknown UID or frame → 404, an ``Accept`` that
cannot be met → 406. Negotiation itself is in :mod:`imagingkit.dicomweb.mediatypes`, file
handling in :mod:`imagingkit.sandbox.stored_instance`, pictures in :mod:`imagingkit.render`.

Byte ranges (RFC 9110 §14): a ``Range: bytes=…`` request header is honoured on answers
that are one body — a single-part ``application/dicom`` instance, a bulk data value or
pixel data sent as one ``application/octet-stream`` part, a single frame — with 206 and
``Content-Range``; those answers say ``Accept-Ranges: bytes``. A range past the end (or a
malformed one) gets 416 with ``Content-Range: bytes */length``. Multipart answers, a list
of ranges, another unit, and any request with ``If-Range`` (no validators are kept) get
the whole answer with 200, as RFC 9110 §14.2 allows. PS3.18 leaves Range to HTTP: it
is how a client reads part of a large bulk data value (§10.4, BulkDataURIs).

The store mounts these routes with :func:`wado_routes`. STOW-RS shares the study URL
(``POST /studies/{s}``); :func:`imagingkit.sandbox.stow.stow_routes` gives the study
rule's :class:`RetrieveHandler` a ``post``. The :class:`WadoService` holding the worker
threads is in every rule's keyword arguments (``"service"``); call its ``close()`` when
the store closes.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pydicom
from tornado.iostream import StreamClosedError

from imagingkit.config import Settings
from imagingkit.dicomjson import read_dicom_json
from imagingkit.dicomweb.mediatypes import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    InstanceChoice,
    MediaRange,
    choose_frame_representation,
    choose_instance_representation,
    choose_rendered_type,
    frame_media_type,
    parse_accept,
)
from imagingkit.dicomweb.multipart import MultipartWriter, format_media_type
from imagingkit.errors import InvalidDICOMError, InvalidInputError, InvalidQueryError
from imagingkit.render.encode import (
    RENDERED_MEDIA_TYPES,
    THUMBNAIL_SIZE,
    Viewport,
    apply_viewport,
    encode_animation,
    encode_image,
    frame_duration_ms,
    parse_quality,
    thumbnail,
)
from imagingkit.render.lut import Window, display_frame
from imagingkit.sandbox.dicom_index import DicomIndex, InstanceRecord
from imagingkit.sandbox.stored_instance import (
    FileCache,
    StoredInstance,
    as_stored_syntax,
    can_transcode,
    header_cache,
    instance_bytes,
)
from imagingkit.server.app import RouteList
from imagingkit.server.base import BaseHandler, HTTPProblem
from imagingkit.uids import validate_uid

__all__ = [
    "BufferPool",
    "BulkDataHandler",
    "FramesHandler",
    "MetadataHandler",
    "RenderedHandler",
    "RetrieveHandler",
    "ThumbnailHandler",
    "WadoService",
    "byte_range",
    "wado_routes",
]

log = logging.getLogger("imagingkit.sandbox.wado")

T = TypeVar("T")

_UID = r"([^/]+)"
_FRAME_LIST = re.compile(r"^[0-9]+(,[0-9]+)*$")
#: answers are flushed whenever this many bytes are pending
_FLUSH_BYTES = 1 << 20
#: parts prepared ahead of the one being sent (transcoding overlaps sending)
_LOOKAHEAD = 2
#: up to this many files are checked on the event loop before sending them as stored
_INLINE_CHECKS = 16
#: instances whose metadata is written per chunk of a metadata answer
_METADATA_BATCH = 100
_METADATA_CACHE_SIZE = 2048
_JSON_TYPES = ("application/dicom+json", "application/json")


# --------------------------------------------------------------------------- service


class BufferPool:
    """Reusable byte buffers for sending files.

    Writing a fresh half-megabyte buffer per instance costs more in page faults than the
    copy itself on small VMs; reusing a few buffers avoids that. At most *keep* buffers
    of at most *largest* bytes are kept (64 MiB by default, within a Binder's budget).
    """

    def __init__(self, keep: int = 4, largest: int = 16 * 1024 * 1024) -> None:
        self.keep = keep
        self.largest = largest
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def acquire(self, size: int) -> bytearray:
        """Return a buffer of at least *size* bytes."""
        with self._lock:
            for i, buffer in enumerate(self._free):
                if len(buffer) >= size:
                    return self._free.pop(i)
            if self._free and size <= self.largest:
                buffer = self._free.pop()
                buffer.extend(bytes(size - len(buffer)))
                return buffer
        return bytearray(size)

    def release(self, buffer: bytearray) -> None:
        """Give *buffer* back (kept if the pool has room and it is not too large)."""
        with self._lock:
            if len(buffer) <= self.largest and len(self._free) < self.keep:
                self._free.append(buffer)


class WadoService:
    """State shared by the WADO-RS handlers of one store.

    Parameters
    ----------
    index : DicomIndex
        Where instances are looked up.
    prefix : str
        The route prefix (e.g. ``/dicom-web``), used to build BulkDataURIs and
        Content-Locations.
    settings : Settings
        ``concurrency`` bounds the worker threads used for transcoding and rendering.
    """

    def __init__(self, index: DicomIndex, prefix: str, settings: Settings) -> None:
        self.index = index
        self.prefix = prefix.rstrip("/")
        self.settings = settings
        workers = max(2, min(settings.concurrency, os.cpu_count() or 2))
        self.executor: Executor = ThreadPoolExecutor(workers, thread_name_prefix="wado")
        # A token no DICOM JSON text contains; replaced by the request's base URL.
        self._base_token = f"@@base-{uuid.uuid4().hex}@@"
        self.buffers = BufferPool()
        self.headers = header_cache()
        self._metadata: FileCache[str] = FileCache(_METADATA_CACHE_SIZE)

    def close(self) -> None:
        """Stop the worker threads (pending work is finished first)."""
        self.executor.shutdown(wait=True)

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func(*args)`` on a worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(func, *args))

    def metadata_text(self, record: InstanceRecord, base: str) -> str:
        """Return the instance's DICOM JSON object as text (cached per file version).

        BulkDataURIs point at ``{base}/studies/…/instances/…/bulkdata/{tag path}``.
        """
        text = self._metadata.load(record.path, lambda path: self._read_metadata(path, record))
        return text.replace(self._base_token, base)

    def _read_metadata(self, path: Path, record: InstanceRecord) -> str:
        instance_url = self._base_token + _instance_path(record)

        def uri(tag_path: str) -> str:
            return f"{instance_url}/bulkdata/{tag_path}"

        header = read_dicom_json(path, bulkdata_uri=uri)
        return json.dumps(header.dataset, separators=(",", ":"), ensure_ascii=False)


def _instance_path(record: InstanceRecord) -> str:
    return f"/studies/{record.study_uid}/series/{record.series_uid}/instances/{record.sop_uid}"


# --------------------------------------------------------------------------- base handler


_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def byte_range(header: str | None, length: int) -> tuple[int, int] | None:
    """The inclusive byte range a ``Range`` header asks of a *length*-byte body.

    Parameters
    ----------
    header : str or None
        The request's ``Range`` field (RFC 9110 §14.2).
    length : int
        The size of the whole representation.

    Returns
    -------
    tuple of (int, int) or None
        ``(first, last)`` to answer 206; None to answer the whole body with 200 (no
        header, a unit other than bytes, or several ranges, which RFC 9110 lets a server
        ignore).

    Raises
    ------
    HTTPProblem
        416 with ``Content-Range: bytes */length`` when the range is malformed or starts
        past the end (RFC 9110 §14.1.2, §15.5.17).
    """
    if header is None:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    found = _RANGE.match(header)
    shown = header if len(header) <= 60 else header[:60] + "…"
    unsatisfiable = HTTPProblem(
        416,
        f"Range {shown!r} cannot be satisfied: the representation has {length} bytes "
        "(RFC 9110 §14.1.2)",
        Content_Range=f"bytes */{length}",
    )
    if found is None or not (found[1] or found[2]) or len(found[1]) > 18 or len(found[2]) > 18:
        raise unsatisfiable
    if not found[1]:  # a suffix: the last n bytes
        suffix = int(found[2])
        if suffix == 0 or length == 0:
            raise unsatisfiable
        return max(0, length - suffix), length - 1
    first = int(found[1])
    last = int(found[2]) if found[2] else length - 1
    if last < first or first >= length:
        raise unsatisfiable
    return first, min(last, length - 1)


class _WadoHandler(BaseHandler):
    cors_methods = "GET, OPTIONS"

    def initialize(self, service: WadoService) -> None:
        self.wado = service
        self._started = False
        self._pending = 0

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header(
            "Access-Control-Expose-Headers",
            "Content-Type, Content-Location, Location, ETag, Warning, Link, X-Total-Count, "
            "Content-Range, Accept-Ranges",
        )

    def requested_range(self, length: int) -> tuple[int, int] | None:
        """The byte range to answer for a one-body answer of *length* bytes (see
        :func:`byte_range`); announces ``Accept-Ranges: bytes``."""
        self.set_header("Accept-Ranges", "bytes")
        if "If-Range" in self.request.headers:
            return None  # no validators are kept, so the condition cannot hold
        return byte_range(self.request.headers.get("Range"), length)

    def send_partial(self, data: bytes, chosen: tuple[int, int] | None) -> bytes:
        """Return the part of *data* to write, setting 206 and Content-Range if ranged."""
        if chosen is None:
            return data
        first, last = chosen
        self.set_status(206)
        self.set_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
        return data[first : last + 1]

    def compute_etag(self) -> str | None:
        return None  # hashing megabytes of pixels per answer is not worth it

    @property
    def base_url(self) -> str:
        """The store's absolute base URL as this request reached it."""
        return f"{self.request.protocol}://{self.request.host}{self.wado.prefix}"

    def accept_ranges(self) -> list[MediaRange]:
        """The ``accept`` query parameter (PS3.18 §8.3.3.1) or else the Accept header."""
        value = self.get_query_argument("accept", None) or self.request.headers.get("Accept")
        return parse_accept(value)

    def not_acceptable(self, what: str) -> HTTPProblem:
        accept = self.get_query_argument("accept", None) or self.request.headers.get("Accept")
        return HTTPProblem(406, f"cannot answer Accept {accept!r} for {what}")

    def records(
        self, study: str, series: str | None = None, instance: str | None = None
    ) -> list[InstanceRecord]:
        """Validate the path's UIDs and return the matching instances (404 if none)."""
        validate_uid(study, lenient=True, what="StudyInstanceUID")
        if series is not None:
            validate_uid(series, lenient=True, what="SeriesInstanceUID")
        if instance is not None:
            validate_uid(instance, lenient=True, what="SOPInstanceUID")
        found = self.wado.index.instances(study, series, instance)
        if not found:
            if instance is not None:
                what = f"instance {instance} of series {series} of study {study}"
            elif series is not None:
                what = f"series {series} of study {study}"
            else:
                what = f"study {study}"
            raise HTTPProblem(404, f"no {what} in this store")
        return found

    async def stored(self, record: InstanceRecord) -> StoredInstance:
        """The parsed header of *record*'s file (cached)."""
        cached = self.wado.headers.peek(record.path)
        if cached is not None:
            return cached
        try:
            return await self.wado.run(self.wado.headers.load, record.path)
        except InvalidInputError as exc:
            raise HTTPProblem(
                500, f"stored file of {record.sop_uid} is unreadable: {exc}"
            ) from None

    async def write_raw(self, *chunks: bytes | memoryview) -> bool:
        """Write *chunks* to the connection after the headers went out, without the
        copies of :meth:`write`/:meth:`flush`; return False if the client went away."""
        connection = self.request.connection
        assert connection is not None
        try:
            for chunk in chunks:
                if len(chunk):
                    await connection.write(chunk)  # type: ignore[arg-type]
        except StreamClosedError:
            return False
        return True

    async def send(self, *chunks: bytes) -> bool:
        """Queue *chunks*, flushing once a megabyte is pending; False if the client left.

        An answer that never reaches the threshold goes out whole at the end with a
        Content-Length (tornado sets it), without chunk framing.
        """
        self._started = True
        for chunk in chunks:
            self.write(chunk)
            self._pending += len(chunk)
        if self._pending < _FLUSH_BYTES:
            return True
        self._pending = 0
        try:
            await self.flush()
        except StreamClosedError:
            return False
        return True


def _frame_numbers(text: str, available: int) -> list[int]:
    """Parse a frame list (``1,3,5``; PS3.18 §10.4.1.1.4) into 0-based indices."""
    if not _FRAME_LIST.match(text):
        raise InvalidQueryError(f"frame list {text[:80]!r} is not comma-separated numbers")
    numbers = [int(n) for n in text.split(",")]
    if any(n < 1 for n in numbers):
        raise InvalidQueryError(f"frame list {text!r}: frame numbers start at 1")
    missing = [n for n in numbers if n > available]
    if missing:
        raise HTTPProblem(
            404, f"frame {missing[0]} does not exist: the instance has {available} frame(s)"
        )
    return [n - 1 for n in numbers]


# --------------------------------------------------------------------------- instances


def _target_syntax(stored: str, choice: InstanceChoice) -> str | None:
    for syntax in choice.syntaxes:
        if syntax is None:
            target = EXPLICIT_VR_LITTLE_ENDIAN
        elif syntax == "*":
            target = as_stored_syntax(stored)
        else:
            target = syntax
        if can_transcode(stored, target):
            return target
    return None


class RetrieveHandler(_WadoHandler):
    """Retrieve a study, series or instance (PS3.18 §10.4.1.1.1), streamed."""

    async def get(self, study: str, series: str | None = None, instance: str | None = None) -> None:
        records = self.records(study, series, instance)
        choice = choose_instance_representation(self.accept_ranges())
        if choice is None:
            raise self.not_acceptable("DICOM instances")
        if choice.single_part and len(records) != 1:
            raise HTTPProblem(
                406, f"application/dicom holds one instance; this resource has {len(records)}"
            )
        plan = [(r, _target_syntax(r.transfer_syntax_uid, choice)) for r in records]
        refused = [r for r, target in plan if target is None]
        jobs = [(r, t) for r, t in plan if t is not None]
        if not jobs:
            shown = ", ".join(f"{r.sop_uid} ({r.transfer_syntax_uid})" for r in refused[:3])
            more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
            accepted = ", ".join(s or "default" for s in choice.syntaxes)
            raise HTTPProblem(
                406,
                f"cannot send instance {shown}{more} in any transfer syntax the request "
                f"accepts ({accepted}); transfer-syntax=* gives it as stored",
            )
        writer = MultipartWriter("application/dicom")
        if len(jobs) <= _INLINE_CHECKS:  # a few syscalls: cheaper than a thread hop
            sizes = _stored_part10_sizes(jobs)
        else:
            sizes = await self.wado.run(_stored_part10_sizes, jobs)
        if sizes is not None:
            await self._send_files(jobs, sizes, writer, choice.single_part, refused)
            return
        failures: list[str] = []
        async for record, target, data in self._prepared(jobs, failures):
            headers = self._part_headers(record, target)
            if not self._started:
                if choice.single_part:  # one instance, already in memory
                    data = self.send_partial(data, self.requested_range(len(data)))
                self._start(writer, choice.single_part, headers, refused)
                self._started = True
                await self.flush()
            head = b"" if choice.single_part else writer.head(headers)
            if not await self.write_raw(head, data):
                return
        if not self._started:  # every instance failed to transcode
            raise HTTPProblem(406, "; ".join(failures[:3]))
        if not choice.single_part:
            self.write(writer.close())
        if failures:
            log.warning("WADO-RS left out %d instance(s): %s", len(failures), failures[:3])

    def _part_headers(self, record: InstanceRecord, target: str) -> dict[str, str]:
        return {
            "Content-Type": format_media_type("application/dicom", {"transfer-syntax": target}),
            "Content-Location": self.base_url + _instance_path(record),
        }

    async def _send_files(
        self,
        jobs: list[tuple[InstanceRecord, str]],
        sizes: list[int],
        writer: MultipartWriter,
        single: bool,
        refused: list[InstanceRecord],
    ) -> None:
        """Send Part-10 files already in their target syntax, byte for byte.

        The length of the whole answer is known, so it goes out with a Content-Length
        (no chunk framing) straight from a reused buffer: no per-part allocation.
        """
        heads = [b"" if single else writer.head(self._part_headers(r, t)) for r, t in jobs]
        close = b"" if single else writer.close()
        chosen = self.requested_range(sizes[0]) if single else None
        self._start(writer, single, self._part_headers(*jobs[0]), refused)
        if chosen is not None:
            await self._send_file_range(jobs[0][0], sizes[0], chosen)
            return
        self.set_header("Content-Length", str(sum(sizes) + sum(map(len, heads)) + len(close)))
        self._started = True
        await self.flush()
        for (record, _), head, size in zip(jobs, heads, sizes, strict=True):
            # one write per part: the part's header block, then the file, in one buffer
            total = len(head) + size
            buffer = self.wado.buffers.acquire(total)
            try:
                with memoryview(buffer) as view, view[:total] as part:
                    part[: len(head)] = head
                    if _read_into(record.path, part[len(head) :]) != size:
                        log.error("%s changed while being sent; closing", record.path)
                        stream = getattr(self.request.connection, "stream", None)
                        if stream is not None:  # the promised Content-Length cannot be kept
                            stream.close()
                        return
                    if not await self.write_raw(part):
                        return
            finally:
                self.wado.buffers.release(buffer)
        await self.write_raw(close)

    async def _send_file_range(
        self, record: InstanceRecord, size: int, chosen: tuple[int, int]
    ) -> None:
        """Send bytes *chosen* (inclusive) of a stored file, in bounded chunks (206)."""
        first, last = chosen
        self.set_status(206)
        self.set_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.set_header("Content-Length", str(last - first + 1))
        self._started = True
        await self.flush()
        position = first
        with open(record.path, "rb") as f:
            f.seek(first)
            while position <= last:  # bounded: each pass moves at least one byte on
                chunk = f.read(min(_FLUSH_BYTES, last + 1 - position))
                if not chunk:
                    log.error("%s shrank while being sent; closing", record.path)
                    stream = getattr(self.request.connection, "stream", None)
                    if stream is not None:
                        stream.close()
                    return
                position += len(chunk)
                if not await self.write_raw(chunk):
                    return

    def _start(
        self,
        writer: MultipartWriter,
        single: bool,
        headers: dict[str, str],
        refused: list[InstanceRecord],
    ) -> None:
        if single:
            self.set_header("Content-Type", headers["Content-Type"])
            self.set_header("Content-Location", headers["Content-Location"])
        else:
            self.set_header("Content-Type", writer.content_type)
        if refused:
            self.set_status(206)
            self.set_header(
                "Warning",
                f'299 imagingkit "{len(refused)} instance(s) left out: no acceptable '
                'transfer syntax"',
            )

    async def _prepared(
        self, jobs: list[tuple[InstanceRecord, str]], failures: list[str]
    ) -> AsyncIterator[tuple[InstanceRecord, str, bytes]]:
        """Yield ``(record, syntax, bytes)`` in order, preparing a few parts ahead."""
        pending: collections.deque[tuple[InstanceRecord, str, Awaitable[bytes] | bytes]] = (
            collections.deque()
        )
        queue = iter(jobs)

        def fill() -> None:
            while len(pending) < _LOOKAHEAD:
                job = next(queue, None)
                if job is None:
                    return
                record, target = job
                pending.append((record, target, self._start_part(record, target)))

        fill()
        while pending:
            record, target, work = pending.popleft()
            fill()
            try:
                data = work if isinstance(work, bytes) else await work
            except (InvalidDICOMError, OSError) as exc:
                failures.append(f"{record.sop_uid}: {exc}")
                continue
            yield record, target, data

    def _start_part(self, record: InstanceRecord, target: str) -> Awaitable[bytes] | bytes:
        """Return the part's bytes now (fast path) or a future of them (transcoding)."""
        if target == record.transfer_syntax_uid:
            try:
                data = record.path.read_bytes()
            except OSError as exc:
                future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
                future.set_exception(exc)
                return future
            if data[128:132] == b"DICM":
                return data  # already a Part-10 file in the wanted syntax
        return self.wado.run(instance_bytes, record.path, record.transfer_syntax_uid, target)


def _stored_part10_sizes(jobs: list[tuple[InstanceRecord, str]]) -> list[int] | None:
    """File sizes if every job is a Part-10 file already in its target syntax, else None."""
    sizes = []
    for record, target in jobs:
        if target != record.transfer_syntax_uid:
            return None
        try:
            with open(record.path, "rb") as f:
                if f.read(132)[128:] != b"DICM":
                    return None
                sizes.append(os.fstat(f.fileno()).st_size)
        except OSError:
            return None
    return sizes


def _read_into(path: Path, target: memoryview) -> int:
    """Fill *target* from the start of the file at *path*; return the bytes read
    (fewer than asked, or -1 if the file is longer, when it changed meanwhile)."""
    try:
        with open(path, "rb", buffering=0) as f:
            done = 0
            while done < len(target):
                count = f.readinto(target[done:])
                if not count:
                    return done
                done += count
            return done if not f.read(1) else -1
    except OSError:
        return 0


# --------------------------------------------------------------------------- metadata


class MetadataHandler(_WadoHandler):
    """Study, series or instance metadata as DICOM JSON (PS3.18 §10.4.1.1.2)."""

    async def get(self, study: str, series: str | None = None, instance: str | None = None) -> None:
        records = self.records(study, series, instance)
        if not any(
            r.media in ("*/*", "application/*") or r.media in _JSON_TYPES
            for r in self.accept_ranges()
        ):
            raise self.not_acceptable("metadata (only application/dicom+json is offered)")
        base = self.base_url
        self.set_header("Content-Type", "application/dicom+json")
        first = True
        for start in range(0, len(records), _METADATA_BATCH):
            batch = records[start : start + _METADATA_BATCH]
            texts = await self.wado.run(self._texts, batch, base)
            chunk = ("[" if first else ",") + ",".join(texts)
            first = False
            if not await self.send(chunk.encode("utf-8")):
                return
        self.write(b"]")

    def _texts(self, batch: list[InstanceRecord], base: str) -> list[str]:
        out = []
        for record in batch:
            try:
                out.append(self.wado.metadata_text(record, base))
            except (InvalidInputError, OSError) as exc:
                log.warning("metadata of %s left out: %s", record.sop_uid, exc)
        return out


# --------------------------------------------------------------------------- frames


def _frame_part_type(instance: StoredInstance, as_stored: bool) -> str:
    if as_stored and instance.encapsulated:
        syntax = instance.transfer_syntax
        return format_media_type(frame_media_type(syntax), {"transfer-syntax": syntax})
    return format_media_type(
        "application/octet-stream", {"transfer-syntax": EXPLICIT_VR_LITTLE_ENDIAN}
    )


class FramesHandler(_WadoHandler):
    """Frames of an instance (PS3.18 §10.4.1.1.4); also ``/pixeldata`` (all frames)."""

    async def get(self, study: str, series: str, instance: str, frames: str | None = None) -> None:
        (record,) = self.records(study, series, instance)
        stored = await self.stored(record)
        if not stored.has_pixels:
            raise HTTPProblem(404, f"instance {instance} has no pixel data")
        if frames is None:
            indices = list(range(stored.number_of_frames))
        else:
            indices = _frame_numbers(frames, stored.number_of_frames)
        await self.send_frames(stored, indices)

    async def send_frames(self, stored: StoredInstance, indices: list[int]) -> None:
        """Answer with the frames *indices* (0-based) of *stored*, negotiated."""
        choice = choose_frame_representation(
            self.accept_ranges(), stored.transfer_syntax, len(indices)
        )
        if choice is None:
            raise self.not_acceptable(
                f"frames of an instance stored as {stored.transfer_syntax} "
                "(only uncompressed frames or the stored compressed form are offered)"
            )
        part_type = _frame_part_type(stored, choice.as_stored)
        writer = MultipartWriter(choice.media)
        read = stored.stored_frame if choice.as_stored else stored.native_frame
        inline = stored.direct_frames and not (choice.as_stored and stored.encapsulated)
        for index in indices:
            try:
                data = read(index) if inline else await self.wado.run(read, index)
            except InvalidDICOMError as exc:
                if self._started:
                    log.warning("frames answer cut short: %s", exc)
                    return
                raise HTTPProblem(406, str(exc)) from None
            if not self._started:
                content_type = part_type if choice.single_part else writer.content_type
                self.set_header("Content-Type", content_type)
                if choice.single_part:  # one frame: a byte range of it may be asked
                    data = self.send_partial(data, self.requested_range(len(data)))
            head = b"" if choice.single_part else writer.head({"Content-Type": part_type})
            if not await self.send(head, data):
                return
        if not choice.single_part:
            self.write(writer.close())


class BulkDataHandler(FramesHandler):
    """Bulk data named by a BulkDataURI (PS3.18 §10.4.1.1.5).

    Pixel Data (``7FE00010``) answers like ``/pixeldata``: one part per frame. Other
    values answer as one ``application/octet-stream`` part, little endian.
    """

    async def get(  # type: ignore[override]
        self, study: str, series: str, instance: str, tag_path: str
    ) -> None:
        (record,) = self.records(study, series, instance)
        stored = await self.stored(record)
        if tag_path.upper() == "7FE00010":
            if not stored.has_pixels:
                raise HTTPProblem(404, f"instance {instance} has no pixel data")
            await self.send_frames(stored, list(range(stored.number_of_frames)))
            return
        data = await self.wado.run(stored.bulk_value, tag_path)
        if data is None:
            raise HTTPProblem(404, f"instance {instance} has no bulk data at {tag_path!r}")
        single = None
        for r in self.accept_ranges():
            if r.media in ("*/*", "multipart/*") or (
                r.media == "multipart/related"
                and r.part_type in (None, "application/octet-stream", "*/*")
            ):
                single = False
            elif r.media in ("application/octet-stream", "application/*"):
                single = True
            if single is not None:
                break
        if single is None:
            raise self.not_acceptable("bulk data (application/octet-stream)")
        if single:
            self.set_header("Content-Type", "application/octet-stream")
            self.write(self.send_partial(data, self.requested_range(len(data))))
            return
        writer = MultipartWriter("application/octet-stream")
        self.set_header("Content-Type", writer.content_type)
        self.write(writer.part(data, {"Content-Type": "application/octet-stream"}) + writer.close())


# --------------------------------------------------------------------------- rendered


@dataclass(frozen=True)
class RenderRequest:
    """The rendering parameters of a request (PS3.18 §8.3.5.1)."""

    media: str
    multipart: bool
    window: Window | None
    viewport: Viewport | None
    quality: int | None


def _decodable(record: InstanceRecord) -> bool:
    return can_transcode(record.transfer_syntax_uid, EXPLICIT_VR_LITTLE_ENDIAN)


def _read_for_rendering(record: InstanceRecord) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(record.path, force=True)
    except Exception as exc:  # a stored file pydicom cannot read
        raise InvalidDICOMError(f"cannot read {record.path.name}: {exc}") from exc


def _display(
    ds: pydicom.Dataset, index: int, request: RenderRequest, thumb: bool = False
) -> np.ndarray:
    image = display_frame(ds, index, window=request.window)  # InvalidDICOMError: 406
    if request.viewport is not None:
        image = apply_viewport(image, request.viewport)
    elif thumb:
        image = thumbnail(image, THUMBNAIL_SIZE)
    return image


def _render(record: InstanceRecord, index: int, request: RenderRequest, thumb: bool) -> bytes:
    image = _display(_read_for_rendering(record), index, request, thumb)
    return encode_image(image, request.media, quality=request.quality)


def _render_animation(record: InstanceRecord, indices: list[int], request: RenderRequest) -> bytes:
    """Frames *indices* of one instance as an animated GIF (PS3.18 Table 8.7.4-1)."""
    ds = _read_for_rendering(record)
    frames = [_display(ds, index, request) for index in indices]
    return encode_animation(frames, frame_duration_ms(ds))


class RenderedHandler(_WadoHandler):
    """Rendered study, series, instance or frames (PS3.18 §10.4.1.1.3, §8.7.4).

    What is rendered depends on the media type chosen (PS3.18 Table 8.7.4-1 gives
    ``image/jpeg`` and ``image/png`` to single-frame images, ``image/gif`` also to
    multi-frame images):

    * ``multipart/related; type="image/…"``: every frame of every image instance of the
      target, one part each, in series, instance and frame order (an instance: all its
      frames; a frame list: those frames);
    * ``image/gif``: a multi-frame instance (or a list of several frames) as one animated
      GIF, each frame shown for the instance's Frame Time (Cine Module, PS3.3 C.7.6.5);
    * ``image/jpeg`` or ``image/png`` (one image): frame 1 of the instance, or of the first
      image instance of a study or series (as Orthanc does); a list of several frames
      needs multipart or GIF (406).
    """

    thumbnail = False

    def render_request(self) -> RenderRequest:
        chosen = choose_rendered_type(self.accept_ranges(), RENDERED_MEDIA_TYPES)
        if chosen is None:
            raise self.not_acceptable(
                f"a rendered image (offered: {', '.join(sorted(RENDERED_MEDIA_TYPES))})"
            )
        window = self.get_query_argument("window", None)
        viewport = self.get_query_argument("viewport", None)
        quality = self.get_query_argument("quality", None)
        return RenderRequest(
            media=chosen[0],
            multipart=chosen[1],
            window=Window.parse(window) if window else None,
            viewport=Viewport.parse(viewport) if viewport else None,
            quality=parse_quality(quality) if quality else None,
        )

    async def get(
        self,
        study: str,
        series: str | None = None,
        instance: str | None = None,
        frames: str | None = None,
    ) -> None:
        request = self.render_request()
        records = [r for r in self.records(study, series, instance) if r.number_of_frames > 0]
        if not records:
            raise HTTPProblem(404, "no image instance to render here")
        if instance is None:  # choose among the images this store can decode
            records = [r for r in records if _decodable(r)] or records
        targets = await self.targets(records, instance is not None, frames, request)
        if not request.multipart and len(targets) > 1:  # only image/gif gets here
            record = targets[0][0]
            indices = [index for _, index in targets]
            try:
                data = await self.wado.run(_render_animation, record, indices, request)
            except InvalidDICOMError as exc:
                raise HTTPProblem(406, f"cannot render {record.sop_uid}: {exc}") from None
            self.set_header("Content-Type", request.media)
            self.write(data)
            return
        writer = MultipartWriter(request.media)
        for record, index in targets:
            try:
                data = await self.wado.run(_render, record, index, request, self.thumbnail)
            except InvalidDICOMError as exc:
                if self._started:
                    log.warning("rendered answer cut short: %s", exc)
                    return
                raise HTTPProblem(406, f"cannot render {record.sop_uid}: {exc}") from None
            if request.multipart:
                if not self._started:
                    self.set_header("Content-Type", writer.content_type)
                head = writer.head({"Content-Type": request.media})
            else:
                self.set_header("Content-Type", request.media)
                head = b""
            if not await self.send(head, data):
                return
        if request.multipart:
            self.write(writer.close())

    async def targets(
        self,
        records: list[InstanceRecord],
        one_instance: bool,
        frames: str | None,
        request: RenderRequest,
    ) -> list[tuple[InstanceRecord, int]]:
        """Which (instance, 0-based frame) pairs to render (see the class docstring).

        More than one pair without multipart means one animated GIF of one instance.
        """
        animate = request.media == "image/gif" and not request.multipart
        if frames is not None:
            stored = await self.stored(records[0])
            indices = _frame_numbers(frames, stored.number_of_frames)
            if len(indices) > 1 and not (request.multipart or animate):
                raise HTTPProblem(
                    406,
                    f"frames {frames[:40]} render as multipart/related or as one animated "
                    'image/gif; ask Accept: multipart/related; type="image/jpeg" or image/gif',
                )
            return [(records[0], i) for i in indices]
        if not request.multipart and not animate:
            return [(records[0], 0)]
        chosen = records[:1] if (one_instance or not request.multipart) else records
        pairs: list[tuple[InstanceRecord, int]] = []
        for record in chosen:
            if record.number_of_frames > 1:  # the file's header has the final word
                count = (await self.stored(record)).number_of_frames
                pairs += [(record, i) for i in range(count)]
            else:
                pairs.append((record, 0))
        return pairs


class ThumbnailHandler(RenderedHandler):
    """Thumbnails (Sup 203, PS3.18 §10.4.1.1.3): one small representative image.

    Study: the middle image of its first series with images; series: its middle image;
    instance: its middle frame; frame: that frame. At most 128 pixels on the longest
    side unless ``viewport`` says otherwise.
    """

    thumbnail = True

    async def targets(
        self,
        records: list[InstanceRecord],
        one_instance: bool,
        frames: str | None,
        request: RenderRequest,
    ) -> list[tuple[InstanceRecord, int]]:
        if frames is not None:
            stored = await self.stored(records[0])
            return [(records[0], _frame_numbers(frames, stored.number_of_frames)[0])]
        first_series = [r for r in records if r.series_uid == records[0].series_uid]
        record = first_series[len(first_series) // 2]
        frame_count = max(1, record.number_of_frames)
        return [(record, frame_count // 2 if frame_count > 1 else 0)]

    def render_request(self) -> RenderRequest:
        request = super().render_request()
        return dataclasses.replace(request, multipart=False)


# --------------------------------------------------------------------------- routes


def wado_routes(index: DicomIndex, prefix: str, settings: Settings) -> RouteList:
    """Return the tornado rules of WADO-RS below *prefix* (no trailing slash).

    Parameters
    ----------
    index : DicomIndex
        The store's index.
    prefix : str
        Route prefix, e.g. ``/dicom-web``.
    settings : Settings

    Returns
    -------
    list of (pattern, handler class, initialize kwargs)
    """
    service = WadoService(index, prefix, settings)
    kwargs = {"service": service}
    p = re.escape(prefix.rstrip("/"))
    study = f"{p}/studies/{_UID}"
    series = f"{study}/series/{_UID}"
    instance = f"{series}/instances/{_UID}"
    frames = f"{instance}/frames/([^/]+)"
    rules: RouteList = []
    for base in (study, series, instance):
        rules += [
            (base, RetrieveHandler, kwargs),
            (f"{base}/metadata", MetadataHandler, kwargs),
            (f"{base}/rendered", RenderedHandler, kwargs),
            (f"{base}/thumbnail", ThumbnailHandler, kwargs),
        ]
    rules += [
        (frames, FramesHandler, kwargs),
        (f"{instance}/pixeldata", FramesHandler, kwargs),
        (f"{instance}/bulkdata/(.+)", BulkDataHandler, kwargs),
        (f"{frames}/rendered", RenderedHandler, kwargs),
        (f"{frames}/thumbnail", ThumbnailHandler, kwargs),
    ]
    return rules
