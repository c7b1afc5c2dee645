"""SQLite index over a folder of DICOM Part-10 files: the embedded DICOMweb store's catalogue.

The index holds one row per study, series and instance: the attributes QIDO-RS matches on
in columns, and the attributes each level returns (PS3.18 §10.6.3, Tables 10.6.3-3 to -5,
see :data:`LEVEL_TAGS`) as DICOM JSON. An instance's whole header (without pixel or other
bulk data), which ``includefield`` may ask for, is read from its file on demand by the fast
reader (:meth:`DicomIndex.header`); for the rare files only pydicom reads, its DICOM JSON
is stored at indexing time. Storing every header as JSON would have halved the indexing
rate for no gain: the files are the source of truth and sit next to the index.

Scanning
    :meth:`DicomIndex.scan` walks the folder recursively (any file name, ``.dcm`` or not;
    names starting with ``.`` are skipped), reads only files that are new or whose size or
    ``mtime_ns`` changed, and forgets files that vanished. Files that are not DICOM, or lack
    the identifying UIDs, are skipped with a logged reason and remembered, so they are not
    read again until they change. Headers are read by
    :func:`imagingkit.dicomjson.read_dicom_json` (pixel data is never read; only the indexed
    attributes are decoded, and reading stops after the last of them), in worker processes
    for large batches. So damage after those attributes (a header or pixel data cut short)
    is not noticed by the scan; it shows when the instance is retrieved.

Duplicates
    Two files holding the same SOP Instance UID: the newer file (larger ``mtime_ns``; on a tie
    the smaller path) is served, the other is remembered as a duplicate and takes over if the
    winner disappears.

Crash safety
    Every change is one SQLite transaction in WAL mode; a batch of scanned files is committed
    together. A process killed at any point leaves an index that describes a subset of the
    files, and the next :meth:`~DicomIndex.scan` reconciles it with the folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pydicom.datadict

from imagingkit.dicomjson import DicomJson, DicomJsonHeader, read_dicom_json
from imagingkit.errors import InvalidDICOMError, SandboxError
from imagingkit.uids import is_valid_uid

__all__ = [
    "DECODED_TAGS",
    "INDEXED_ATTRIBUTES",
    "LEVEL_TAGS",
    "DicomIndex",
    "IndexedAttribute",
    "InstanceRecord",
    "ScanReport",
    "fold_person_name",
    "normalize_date",
    "normalize_time",
]

log = logging.getLogger("imagingkit.sandbox.index")

_SCHEMA_VERSION = 2
#: files read per committed transaction while scanning
_BATCH = 500
#: files per task handed to a worker process
_CHUNK = 100
#: below this many files to read, a process pool costs more than it saves
_PARALLEL_THRESHOLD = 1500


@dataclass(frozen=True)
class IndexedAttribute:
    """An attribute kept in a column of the index, for matching and sorting (PS3.18 §10.6.1).

    Attributes
    ----------
    keyword, tag, vr :
        The attribute (PS3.6).
    level : {"study", "series", "instance"}
        The table holding it.
    column : str
        The column name; dates and times are stored normalized (see :func:`normalize_date`,
        :func:`normalize_time`), person names case-folded.
    """

    keyword: str
    tag: int
    vr: str
    level: str
    column: str
    key: str = field(init=False)  # the DICOM JSON key, "GGGGEEEE"

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", _key(self.tag))


def _key(tag: int) -> str:
    return f"{tag:08X}"


def _attrs(level: str, *items: tuple[str, int, str, str]) -> list[IndexedAttribute]:
    return [IndexedAttribute(kw, tag, vr, level, col) for kw, tag, vr, col in items]


#: Attributes with their own column, by level (the QIDO matching keys, PS3.18 Table 10.6.1-5).
INDEXED_ATTRIBUTES: dict[str, list[IndexedAttribute]] = {
    "study": _attrs(
        "study",
        ("StudyInstanceUID", 0x0020000D, "UI", "study_uid"),
        ("StudyDate", 0x00080020, "DA", "study_date"),
        ("StudyTime", 0x00080030, "TM", "study_time"),
        ("AccessionNumber", 0x00080050, "SH", "accession_number"),
        ("ReferringPhysicianName", 0x00080090, "PN", "referring_physician_name"),
        ("PatientName", 0x00100010, "PN", "patient_name"),
        ("PatientID", 0x00100020, "LO", "patient_id"),
        ("PatientBirthDate", 0x00100030, "DA", "patient_birth_date"),
        ("PatientSex", 0x00100040, "CS", "patient_sex"),
        ("StudyID", 0x00200010, "SH", "study_id"),
        ("StudyDescription", 0x00081030, "LO", "study_description"),
    ),
    "series": _attrs(
        "series",
        ("SeriesInstanceUID", 0x0020000E, "UI", "series_uid"),
        ("Modality", 0x00080060, "CS", "modality"),
        ("SeriesNumber", 0x00200011, "IS", "series_number"),
        ("SeriesDescription", 0x0008103E, "LO", "series_description"),
        ("BodyPartExamined", 0x00180015, "CS", "body_part_examined"),
        ("SeriesDate", 0x00080021, "DA", "series_date"),
        ("SeriesTime", 0x00080031, "TM", "series_time"),
        ("PerformedProcedureStepStartDate", 0x00400244, "DA", "pps_start_date"),
        ("PerformedProcedureStepStartTime", 0x00400245, "TM", "pps_start_time"),
        ("Laterality", 0x00200060, "CS", "laterality"),
    ),
    "instance": _attrs(
        "instance",
        ("SOPInstanceUID", 0x00080018, "UI", "sop_uid"),
        ("SOPClassUID", 0x00080016, "UI", "sop_class_uid"),
        ("InstanceNumber", 0x00200013, "IS", "instance_number"),
        ("Rows", 0x00280010, "US", "rows"),
        ("Columns", 0x00280011, "US", "columns"),
        ("BitsAllocated", 0x00280100, "US", "bits_allocated"),
        ("NumberOfFrames", 0x00280008, "IS", "number_of_frames"),
        ("ContentDate", 0x00080023, "DA", "content_date"),
        ("ContentTime", 0x00080033, "TM", "content_time"),
        ("AcquisitionNumber", 0x00200012, "IS", "acquisition_number"),
    ),
}

#: Further attributes kept decoded with each level's row, returned when present
#: (PS3.18 Tables 10.6.3-3 to -5 and common includefield targets).
_EXTRA_RETURN_KEYWORDS: dict[str, tuple[str, ...]] = {
    "study": (
        *("TimezoneOffsetFromUTC", "IssuerOfPatientID", "OtherPatientIDsSequence"),
        *("PatientAge", "PatientSize", "PatientWeight", "ProcedureCodeSequence"),
    ),
    "series": (
        *("TimezoneOffsetFromUTC", "RequestAttributesSequence", "PerformingPhysicianName"),
        *("Manufacturer", "ManufacturerModelName", "InstitutionName", "StationName"),
        *("ProtocolName", "FrameOfReferenceUID", "PatientPosition"),
    ),
    "instance": (
        *("TimezoneOffsetFromUTC", "ImageType", "AcquisitionDate", "AcquisitionTime"),
        *("SliceThickness", "ImagePositionPatient", "ImageOrientationPatient"),
        *("SamplesPerPixel", "PhotometricInterpretation", "PixelSpacing", "BitsStored"),
        *("PixelRepresentation", "WindowCenter", "WindowWidth"),
    ),
}
_EXTRA_RETURN_TAGS: dict[str, tuple[int, ...]] = {
    level: tuple(int(pydicom.datadict.tag_for_keyword(k) or 0) for k in keywords)
    for level, keywords in _EXTRA_RETURN_KEYWORDS.items()
}


def _level_tags() -> dict[str, frozenset[int]]:
    taken: set[int] = set()
    levels = {}
    for level in ("study", "series", "instance"):  # a tag belongs to the highest level naming it
        tags = {a.tag for a in INDEXED_ATTRIBUTES[level]} | set(_EXTRA_RETURN_TAGS[level])
        levels[level] = frozenset(tags - taken)
        taken |= tags
    return levels


#: the attributes each level's row holds and returns (its columns and the extras above);
#: the sets are disjoint
LEVEL_TAGS: dict[str, frozenset[int]] = _level_tags()
_LEVEL_KEYS = {level: frozenset(_key(t) for t in tags) for level, tags in LEVEL_TAGS.items()}

#: the top-level tags the scan decodes, each kept in its level's ``attrs`` (the rest of a
#: header is read from its file on demand)
DECODED_TAGS: frozenset[int] = frozenset().union(*LEVEL_TAGS.values())


@dataclass(frozen=True)
class InstanceRecord:
    """Where an instance lives and what a retrieval needs to know about it (PS3.18 §10.4).

    Attributes
    ----------
    path : Path
        The Part-10 file (absolute).
    study_uid, series_uid, sop_uid, sop_class_uid : str
        Its identifying UIDs (``sop_class_uid`` may be ``""`` in non-conformant files).
    transfer_syntax_uid : str
        As stored in the file (PS3.10 §7.1).
    number_of_frames : int
        ``NumberOfFrames``, or 1 when absent (single-frame objects; 0 for non-images).
    instance_number, rows, columns : int or None
        ``InstanceNumber``, ``Rows``, ``Columns`` when present.
    """

    path: Path
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    number_of_frames: int
    instance_number: int | None
    rows: int | None
    columns: int | None


@dataclass
class ScanReport:
    """What one :meth:`DicomIndex.scan` did.

    Attributes
    ----------
    root : Path
        The scanned folder.
    added, updated, removed, unchanged, skipped : int
        Files newly indexed, re-indexed after a change, forgotten because they vanished,
        left alone, and skipped as not indexable (junk, DICOMDIR, missing UIDs).
    duplicates : int
        Files read that hold an instance another, newer file already provides.
    skipped_files : list of (Path, str)
        Up to 1,000 of this scan's newly skipped files with the reason.
    seconds : float
        Wall-clock time of the scan.
    files_read : int
        Files whose header was read (added + updated + skipped).
    """

    root: Path
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: int = 0
    skipped_files: list[tuple[Path, str]] = field(default_factory=list)
    duplicates: int = 0
    seconds: float = 0.0
    files_read: int = 0

    @property
    def files_per_second(self) -> float:
        """Files read per second (0 when nothing was read)."""
        return self.files_read / self.seconds if self.seconds > 0 and self.files_read else 0.0

    def __str__(self) -> str:
        return (
            f"indexed {self.root}: {self.added} added, {self.updated} updated, "
            f"{self.removed} removed, {self.unchanged} unchanged, {self.skipped} skipped, "
            f"{self.duplicates} duplicates "
            f"in {self.seconds:.2f} s"
        )


# --------------------------------------------------------------------------- normalization


def normalize_date(value: str | None) -> str | None:
    """Return a DA value as ``YYYYMMDD``, or ``None`` if it is not a date (PS3.5 §6.2).

    The pre-1993 ACR-NEMA form ``YYYY.MM.DD`` is accepted.
    """
    if not value:
        return None
    text = value.strip().replace(".", "")
    if len(text) != 8 or not text.isdigit():
        return None
    month, day = int(text[4:6]), int(text[6:8])
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    return text


def normalize_time(value: str | None, *, upper: bool = False) -> str | None:
    """Return a TM value as ``HHMMSS.FFFFFF``, or ``None`` if it is not a time (PS3.5 §6.2).

    Missing trailing components are filled with zeros, or with their largest value when
    *upper* is true (so ``"14"`` as the upper bound of a range means up to 14:59:59.999999,
    PS3.4 §C.2.2.2.5). The ACR-NEMA form ``HH:MM:SS`` is accepted.
    """
    if not value:
        return None
    text = value.strip().replace(":", "")
    whole, _, fraction = text.partition(".")
    if not whole.isdigit() or len(whole) not in (2, 4, 6) or (fraction and not fraction.isdigit()):
        return None
    if len(fraction) > 6 or (fraction and len(whole) != 6):
        return None
    hh, mm, ss = int(whole[0:2]), int(whole[2:4] or 0), int(whole[4:6] or 0)
    if hh > 23 or mm > 59 or ss > 60:
        return None
    fill = "595959" if upper else "000000"
    whole = whole + fill[len(whole) : 6]
    fraction = fraction + ("9" if upper else "0") * (6 - len(fraction))
    return f"{whole}.{fraction}"


def _first(dataset: DicomJson, tag: int) -> Any:
    entry = dataset.get(f"{tag:08X}")
    if not entry:
        return None
    values = entry.get("Value")
    return values[0] if values else None


def _column_value(attribute: IndexedAttribute, dataset: DicomJson) -> Any:
    entry = dataset.get(attribute.key)
    values = entry.get("Value") if entry else None
    value = values[0] if values else None
    if value is None:
        return None
    vr = attribute.vr
    if vr == "DA":
        return normalize_date(str(value))
    if vr == "TM":
        return normalize_time(str(value))
    if vr == "PN":
        return fold_person_name(value)
    if vr in ("IS", "US"):
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    return str(value)


def fold_person_name(value: Any) -> str | None:
    """Return the matching form of a PN JSON value: groups joined by ``=``, case-folded.

    Trailing empty components (``"Doe^John^^"``) are dropped, so they do not matter.
    """
    if isinstance(value, dict):
        groups = [str(value.get(g, "")) for g in ("Alphabetic", "Ideographic", "Phonetic")]
    else:
        groups = str(value).split("=")
    cleaned = [g.strip().rstrip("^ ") for g in groups]
    while cleaned and not cleaned[-1]:
        cleaned.pop()
    return "=".join(cleaned).casefold() or None


def _sql_person_name(value: str | None) -> str | None:
    """``ik_pn()`` in SQL: fold a PN value taken from DICOM JSON (an object's JSON text)."""
    if value is None:
        return None
    if value.startswith("{"):
        try:
            return fold_person_name(json.loads(value))
        except ValueError:
            return None
    return fold_person_name(value)


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Parsed:
    """One file's header, reduced to what the index stores (picklable for worker processes)."""

    rel: str
    size: int
    mtime_ns: int
    uids: tuple[str, str, str]  # study, series, sop
    transfer_syntax_uid: str
    columns: dict[str, tuple[Any, ...]]  # level -> column values in INDEXED_ATTRIBUTES order
    attrs: dict[str, str]  # level -> JSON object of its LEVEL_TAGS present in the file
    header_json: str | None  # the whole header's JSON when pydicom had to read the file


@dataclass(frozen=True)
class _Skipped:
    rel: str
    size: int
    mtime_ns: int
    reason: str


#: bytes read first; enough for almost every header, so a file is opened once
_PREFIX = 128 * 1024


def _read_header(path: str) -> tuple[DicomJsonHeader, str | None]:
    """Read a file's header: the decoded attributes, and the JSON of all if pydicom read it."""
    with open(path, "rb") as f:
        prefix = f.read(_PREFIX)
        whole = len(prefix) < _PREFIX
    header = None
    if not whole:
        try:
            header = read_dicom_json(prefix, only=DECODED_TAGS)
        except InvalidDICOMError:
            header = None  # the header is longer than the prefix
        if header is not None and not header.fast:
            header = None  # pydicom read a cut-off copy: read the file itself
    if header is None:
        header = read_dicom_json(prefix if whole else path, only=DECODED_TAGS)
    if header.fast:
        return header, None  # the fast reader reads this file again on demand
    full = read_dicom_json(prefix if whole else path).dataset
    return header, json.dumps(full, separators=(",", ":"), ensure_ascii=False)


def _level_json(dataset: DicomJson, keys: frozenset[str]) -> str:
    return json.dumps(
        {k: v for k, v in dataset.items() if k in keys}, separators=(",", ":"), ensure_ascii=False
    )


def _parse_file(
    root: str,
    rel: str,
    size: int,
    mtime_ns: int,
    seen: dict[tuple[str, str], tuple[tuple[Any, ...], str]] | None = None,
) -> _Parsed | _Skipped:
    """Read one file's header; never raises (a failure becomes a :class:`_Skipped`).

    *seen* carries the study and series rows already built in this batch, so each is
    built once per batch.
    """
    path = os.path.join(root, rel)
    try:
        header, header_json = _read_header(path)
    except InvalidDICOMError as exc:
        return _Skipped(rel, size, mtime_ns, exc.message)
    except OSError as exc:
        return _Skipped(rel, size, mtime_ns, f"unreadable: {exc.strerror or exc}")
    except Exception as exc:  # a reader bug must not stop a scan
        return _Skipped(rel, size, mtime_ns, f"unreadable: {type(exc).__name__}: {exc}")
    dataset = header.dataset
    uids = []
    for keyword, tag in _IDENTIFYING_UIDS:
        value = _first(dataset, tag)
        if not value:
            return _Skipped(rel, size, mtime_ns, f"not an indexable instance: no {keyword}")
        if not is_valid_uid(str(value), lenient=True):
            return _Skipped(rel, size, mtime_ns, f"{keyword} {str(value)[:70]!r} is not a UID")
        uids.append(str(value))
    columns: dict[str, tuple[Any, ...]] = {}
    attrs: dict[str, str] = {}
    for level, uid in (("study", uids[0]), ("series", uids[1]), ("instance", uids[2])):
        # A study's (series') row is written from one of its files: in a batch, the first.
        known = seen.get((level, uid)) if seen is not None else None
        if known is None:
            known = (
                tuple(_column_value(a, dataset) for a in INDEXED_ATTRIBUTES[level]),
                _level_json(dataset, _LEVEL_KEYS[level]),
            )
            if seen is not None and level != "instance":
                seen[(level, uid)] = known
        columns[level], attrs[level] = known
    return _Parsed(
        rel=rel,
        size=size,
        mtime_ns=mtime_ns,
        uids=(uids[0], uids[1], uids[2]),
        transfer_syntax_uid=header.transfer_syntax_uid,
        columns=columns,
        attrs=attrs,
        header_json=header_json,
    )


_IDENTIFYING_UIDS = (
    ("StudyInstanceUID", 0x0020000D),
    ("SeriesInstanceUID", 0x0020000E),
    ("SOPInstanceUID", 0x00080018),
)


def _parse_chunk(root: str, items: Sequence[tuple[str, int, int]]) -> list[_Parsed | _Skipped]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's complaints about odd files
        seen: dict[tuple[str, str], tuple[tuple[Any, ...], str]] = {}
        return [_parse_file(root, rel, size, mtime, seen) for rel, size, mtime in items]


# --------------------------------------------------------------------------- schema


def _schema() -> str:
    study_cols = ", ".join(f"{a.column} {_sql_type(a)}" for a in INDEXED_ATTRIBUTES["study"][1:])
    series_cols = ", ".join(f"{a.column} {_sql_type(a)}" for a in INDEXED_ATTRIBUTES["series"][1:])
    inst_cols = ", ".join(f"{a.column} {_sql_type(a)}" for a in INDEXED_ATTRIBUTES["instance"][1:])
    return f"""
    CREATE TABLE IF NOT EXISTS files (
        path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
        sop_uid TEXT, reason TEXT) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS files_sop ON files(sop_uid);
    CREATE TABLE IF NOT EXISTS studies (
        study_uid TEXT PRIMARY KEY, {study_cols}, attrs TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS studies_order ON studies(study_date, study_time, study_uid);
    CREATE INDEX IF NOT EXISTS studies_patient ON studies(patient_id);
    CREATE TABLE IF NOT EXISTS series (
        series_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, {series_cols},
        attrs TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS series_study ON series(study_uid, series_number);
    CREATE INDEX IF NOT EXISTS series_modality ON series(modality);
    CREATE TABLE IF NOT EXISTS instances (
        sop_uid TEXT PRIMARY KEY, series_uid TEXT NOT NULL, study_uid TEXT NOT NULL,
        path TEXT NOT NULL UNIQUE, mtime_ns INTEGER NOT NULL, transfer_syntax_uid TEXT NOT NULL,
        {inst_cols}, attrs TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid, instance_number);
    CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
    CREATE TABLE IF NOT EXISTS headers (sop_uid TEXT PRIMARY KEY, json TEXT NOT NULL);
    """


def _sql_type(attribute: IndexedAttribute) -> str:
    return "INTEGER" if attribute.vr in ("IS", "US") else "TEXT"


# --------------------------------------------------------------------------- the index


class DicomIndex:
    """The SQLite catalogue of a folder of Part-10 files (see the module docstring).

    Parameters
    ----------
    db_path : Path
        The SQLite file (created with its parent folder if missing).
    root : Path
        The folder of DICOM files it describes.

    Notes
    -----
    One connection guarded by a lock serves every thread; each write is a transaction.
    """

    def __init__(self, db_path: Path, root: Path) -> None:
        self.db_path = Path(db_path)
        self.root = Path(root).resolve()
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._db = self._connect()
            self._open()
        except sqlite3.DatabaseError as exc:
            # The index is a cache of the folder: a damaged one is set aside and rebuilt.
            with contextlib.suppress(Exception):
                self._db.close()
            aside = self.db_path.with_name(f"{self.db_path.name}.damaged-{time.time_ns()}")
            log.warning("DICOM index %s is unreadable (%s); rebuilding it", self.db_path, exc)
            try:
                if self.db_path.exists():
                    self.db_path.rename(aside)
                for suffix in ("-wal", "-shm"):
                    Path(f"{self.db_path}{suffix}").unlink(missing_ok=True)
                self._db = self._connect()
                self._open()
            except (OSError, sqlite3.DatabaseError) as again:
                raise SandboxError(
                    f"cannot open the DICOM index {str(self.db_path)!r}: {again}"
                ) from again

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(
            str(self.db_path), isolation_level=None, check_same_thread=False, timeout=30
        )

    def _open(self) -> None:
        db = self._db
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError("quick_check failed")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=OFF")
        # Normalizers for matching values inside stored DICOM JSON (see imagingkit.sandbox.qido)
        db.create_function("ik_pn", 1, _sql_person_name, deterministic=True)
        db.create_function("ik_date", 1, normalize_date, deterministic=True)
        db.create_function("ik_time", 1, normalize_time, deterministic=True)
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, _SCHEMA_VERSION):  # written by another version: rebuild
            log.warning("DICOM index %s has schema %s; rebuilding it", self.db_path, version)
            with self._transaction():
                for table in ("files", "studies", "series", "instances", "headers"):
                    db.execute(f"DROP TABLE IF EXISTS {table}")
        with self._transaction():
            for statement in _schema().split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    # -- transactions ---------------------------------------------------------------

    class _Txn:
        def __init__(self, index: DicomIndex) -> None:
            self.index = index

        def __enter__(self) -> sqlite3.Connection:
            self.index._lock.acquire()
            try:
                self.index._db.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.index._lock.release()
                raise
            return self.index._db

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            try:
                self.index._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
            finally:
                self.index._lock.release()

    def _transaction(self) -> DicomIndex._Txn:
        return DicomIndex._Txn(self)

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        """Run a read-only SQL statement against the index and return all rows.

        Used by the QIDO-RS layer; rows are :class:`sqlite3.Row` (indexable by name).
        """
        with self._lock:
            cursor = self._db.execute(sql, params)
            cursor.row_factory = sqlite3.Row
            return list(cursor.fetchall())

    # -- scanning -------------------------------------------------------------------

    def _walk(self) -> Iterator[tuple[str, int, int]]:
        """Yield ``(relative path, size, mtime_ns)`` of every candidate file, sorted."""
        stack = [self.root]
        root_len = len(str(self.root)) + 1
        while stack:
            folder = stack.pop()
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as exc:
                log.warning("cannot list %s: %s", folder, exc.strerror or exc)
                continue
            subfolders = []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        subfolders.append(Path(entry.path))
                        continue
                    if not entry.is_file():
                        continue
                    st = entry.stat()
                except OSError:
                    continue
                yield entry.path[root_len:], st.st_size, st.st_mtime_ns
            stack.extend(reversed(subfolders))

    def scan(self, progress: bool = False) -> ScanReport:
        """Bring the index in line with the folder (see the module docstring).

        Parameters
        ----------
        progress : bool
            Show a progress bar (tqdm) while reading headers.

        Returns
        -------
        ScanReport
        """
        started = time.perf_counter()
        report = ScanReport(root=self.root)
        known = {
            row[0]: (row[1], row[2], row[3], row[4])
            for row in self.query("SELECT path, size, mtime_ns, sop_uid, reason FROM files")
        }
        to_read: list[tuple[str, int, int]] = []
        seen: set[str] = set()
        for rel, size, mtime_ns in self._walk():
            seen.add(rel)
            previous = known.get(rel)
            if previous is not None and previous[0] == size and previous[1] == mtime_ns:
                report.unchanged += 1
                continue
            to_read.append((rel, size, mtime_ns))
        vanished = [rel for rel in known if rel not in seen]
        if vanished:
            report.removed = self._forget(vanished)
        queued = {item[0] for item in to_read}
        to_read.extend(self._orphaned_duplicates(seen, queued))
        report.unchanged -= len(to_read) - len(queued)
        self._read_and_store(to_read, known, report, progress)
        # reading may have orphaned more duplicates (a file now holds another instance)
        queued = {item[0] for item in to_read}
        again = self._orphaned_duplicates(seen, queued)
        if again:
            report.unchanged -= len(again)
            self._read_and_store(again, known, report, progress)
            to_read.extend(again)
        self._count_outcomes(to_read, known, report)
        report.seconds = time.perf_counter() - started
        log.info("%s", report)
        return report

    def _orphaned_duplicates(self, seen: set[str], queued: set[str]) -> list[tuple[str, int, int]]:
        """Duplicates whose instance lost its file: they get another chance to be served."""
        rows = self.query(
            "SELECT f.path, f.size, f.mtime_ns FROM files f WHERE f.reason LIKE 'duplicate%' "
            "AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.sop_uid = f.sop_uid)"
        )
        return [(p, size, mtime) for p, size, mtime in rows if p in seen and p not in queued]

    def _count_outcomes(
        self,
        items: list[tuple[str, int, int]],
        known: dict[str, tuple[int, int, str | None, str | None]],
        report: ScanReport,
    ) -> None:
        """Classify the files read: newly served, served again after a change, duplicate."""
        if not items:
            return
        state = {
            row[0]: row[1]
            for row in self.query("SELECT path, reason FROM files WHERE sop_uid IS NOT NULL")
        }
        for rel, _, _ in items:
            if rel not in state:
                continue  # skipped, counted when stored
            if state[rel] is not None:
                report.duplicates += 1
                continue
            previous = known.get(rel)
            if previous is not None and previous[2] is not None and previous[3] is None:
                report.updated += 1
            else:
                report.added += 1

    def _read_and_store(
        self,
        items: list[tuple[str, int, int]],
        known: dict[str, tuple[int, int, str | None, str | None]],
        report: ScanReport,
        progress: bool,
    ) -> None:
        if not items:
            return
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(items), unit="file", desc="indexing")
        root = str(self.root)
        workers = min(os.cpu_count() or 1, 8)
        results: Iterable[list[_Parsed | _Skipped]]
        pool = None
        if len(items) >= _PARALLEL_THRESHOLD and workers > 1:
            chunks = [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=_process_context())
            results = pool.map(_parse_chunk, [root] * len(chunks), chunks)
        else:
            chunks = [items[i : i + _BATCH] for i in range(0, len(items), _BATCH)]
            results = (_parse_chunk(root, chunk) for chunk in chunks)
        try:
            for batch in results:
                with self._transaction() as db:
                    self._write_batch(db, batch, known, report)
                report.files_read += len(batch)
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
            if bar is not None:
                bar.close()

    def _write_batch(
        self,
        db: sqlite3.Connection,
        batch: list[_Parsed | _Skipped],
        known: dict[str, tuple[int, int, str | None, str | None]],
        report: ScanReport,
    ) -> None:
        """Store a batch of read files inside the caller's transaction.

        New files of instances not yet indexed (the common case) are inserted with one
        statement per table; everything else (changed files, duplicates) one by one.
        """
        parsed = [r for r in batch if isinstance(r, _Parsed)]
        sops = [p.uids[2] for p in parsed]
        indexed: set[str] = set()
        for start in range(0, len(sops), 500):
            part = sops[start : start + 500]
            marks = ", ".join("?" * len(part))
            indexed.update(
                row[0]
                for row in db.execute(
                    f"SELECT sop_uid FROM instances WHERE sop_uid IN ({marks})", part
                )
            )
        seen_twice = {sop for sop, n in Counter(sops).items() if n > 1}
        simple = [
            p
            for p in parsed
            if p.rel not in known and p.uids[2] not in indexed and p.uids[2] not in seen_twice
        ]
        self._insert_many(db, simple)
        chosen = {id(p) for p in simple}
        for result in batch:
            if isinstance(result, _Skipped):
                self._store_skipped(db, result, report)
            elif id(result) not in chosen:
                self._store(db, result)

    def _store_skipped(
        self, db: sqlite3.Connection, result: _Skipped, report: ScanReport | None
    ) -> None:
        self._drop_path(db, result.rel)
        db.execute(
            "INSERT OR REPLACE INTO files(path, size, mtime_ns, sop_uid, reason) "
            "VALUES (?, ?, ?, NULL, ?)",
            (result.rel, result.size, result.mtime_ns, result.reason),
        )
        log.warning("skipped %s: %s", self.root / result.rel, result.reason)
        if report is not None:
            report.skipped += 1
            if len(report.skipped_files) < 1000:
                report.skipped_files.append((self.root / result.rel, result.reason))

    def _store(self, db: sqlite3.Connection, parsed: _Parsed) -> bool:
        """Write one parsed file inside the caller's transaction.

        Returns ``False`` if the file lost to another file of the same instance (it is then
        remembered as a duplicate).
        """
        sop_uid = parsed.uids[2]
        existing = db.execute(
            "SELECT path, mtime_ns FROM instances WHERE sop_uid = ?", (sop_uid,)
        ).fetchone()
        if existing is not None and existing[0] != parsed.rel:
            other, other_mtime = existing
            other_exists = (self.root / other).exists()
            if other_exists and (other_mtime, _neg(other)) > (parsed.mtime_ns, _neg(parsed.rel)):
                self._drop_path(db, parsed.rel)
                db.execute(
                    "INSERT OR REPLACE INTO files(path, size, mtime_ns, sop_uid, reason) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (
                        parsed.rel,
                        parsed.size,
                        parsed.mtime_ns,
                        sop_uid,
                        f"duplicate of SOPInstanceUID {sop_uid} in {other}",
                    ),
                )
                return False
            # the other file loses: it becomes the duplicate
            db.execute(
                "UPDATE files SET reason = ? WHERE path = ?",
                (f"duplicate of SOPInstanceUID {sop_uid} in {parsed.rel}", other),
            )
        self._drop_path(db, parsed.rel)
        self._delete_instance(db, sop_uid, keep_file_row=True)
        self._insert_many(db, [parsed], replace=True)
        return True

    def _insert_many(
        self, db: sqlite3.Connection, items: Sequence[_Parsed], replace: bool = False
    ) -> None:
        """Insert rows for files of instances not in the index (inside a transaction)."""
        if not items:
            return
        # A study's (series') row comes from the first of its files stored in bulk;
        # a single re-stored or changed file (``replace``) overwrites it.
        verb = "REPLACE" if replace else "IGNORE"
        db.executemany(_INSERT_SQL[f"studies_{verb}"], [_study_row(p) for p in items])
        db.executemany(_INSERT_SQL[f"series_{verb}"], [_series_row(p) for p in items])
        db.executemany(_INSERT_SQL["instances"], [_instance_row(p) for p in items])
        db.executemany(
            _INSERT_SQL["headers"],
            [(p.uids[2], p.header_json) for p in items if p.header_json is not None],
        )
        db.executemany(
            _INSERT_SQL["files"], [(p.rel, p.size, p.mtime_ns, p.uids[2]) for p in items]
        )

    def _drop_path(self, db: sqlite3.Connection, rel: str) -> None:
        """Forget whatever the index says about the file *rel* (inside a transaction)."""
        row = db.execute("SELECT sop_uid FROM instances WHERE path = ?", (rel,)).fetchone()
        if row is not None:
            self._delete_instance(db, row[0], keep_file_row=False)
        db.execute("DELETE FROM files WHERE path = ?", (rel,))

    def _delete_instance(self, db: sqlite3.Connection, sop_uid: str, keep_file_row: bool) -> None:
        row = db.execute(
            "SELECT series_uid, study_uid, path FROM instances WHERE sop_uid = ?", (sop_uid,)
        ).fetchone()
        if row is None:
            return
        series_uid, study_uid, path = row
        db.execute("DELETE FROM instances WHERE sop_uid = ?", (sop_uid,))
        db.execute("DELETE FROM headers WHERE sop_uid = ?", (sop_uid,))
        if not keep_file_row:
            db.execute("DELETE FROM files WHERE path = ?", (path,))
        if (
            db.execute(
                "SELECT 1 FROM instances WHERE series_uid = ? LIMIT 1", (series_uid,)
            ).fetchone()
            is None
        ):
            db.execute("DELETE FROM series WHERE series_uid = ?", (series_uid,))
        if (
            db.execute(
                "SELECT 1 FROM instances WHERE study_uid = ? LIMIT 1", (study_uid,)
            ).fetchone()
            is None
        ):
            db.execute("DELETE FROM studies WHERE study_uid = ?", (study_uid,))

    def _forget(self, rels: Sequence[str]) -> int:
        removed = 0
        for start in range(0, len(rels), _BATCH):
            with self._transaction() as db:
                for rel in rels[start : start + _BATCH]:
                    if db.execute("SELECT 1 FROM instances WHERE path = ?", (rel,)).fetchone():
                        removed += 1
                    self._drop_path(db, rel)
        return removed

    # -- single files ---------------------------------------------------------------

    def _relative(self, path: Path) -> str:
        absolute = Path(os.path.abspath(path))
        try:
            return str(absolute.relative_to(self.root))
        except ValueError:
            raise SandboxError(
                f"{str(path)!r} is not inside the indexed folder {str(self.root)!r}"
            ) from None

    def add_file(self, path: Path) -> InstanceRecord:
        """Index (or re-index) one Part-10 file inside the folder.

        Parameters
        ----------
        path : Path
            The file; must lie inside :attr:`root`.

        Returns
        -------
        InstanceRecord
            The record now served for the file's SOP Instance UID (another, newer file
            may hold the same instance; see "Duplicates" in the module docstring).

        Raises
        ------
        InvalidDICOMError
            If the file is not an indexable DICOM instance (it is remembered as skipped).
        """
        rel = self._relative(path)
        st = os.stat(self.root / rel)
        (result,) = _parse_chunk(str(self.root), [(rel, st.st_size, st.st_mtime_ns)])
        with self._transaction() as db:
            if isinstance(result, _Skipped):
                self._store_skipped(db, result, None)
            else:
                self._store(db, result)
        if isinstance(result, _Skipped):
            raise InvalidDICOMError(f"{self.root / rel}: {result.reason}")
        record = self.instance(result.uids[2])
        if record is None:  # pragma: no cover - stored in the transaction above
            raise SandboxError(f"instance {result.uids[2]} vanished from the index")
        return record

    def remove_file(self, path: Path) -> None:
        """Forget one file (after it was deleted)."""
        rel = self._relative(path)
        with self._transaction() as db:
            self._drop_path(db, rel)

    # -- lookups --------------------------------------------------------------------

    _RECORD_SQL = (
        "SELECT i.path, i.study_uid, i.series_uid, i.sop_uid, i.sop_class_uid, "
        "i.transfer_syntax_uid, i.number_of_frames, i.instance_number, i.rows, i.columns "
        "FROM instances i JOIN series s ON s.series_uid = i.series_uid "
    )
    _RECORD_ORDER = " ORDER BY s.series_number, s.series_uid, i.instance_number, i.sop_uid"

    def _record(self, row: Sequence[Any]) -> InstanceRecord:
        frames = row[6]
        if frames is None:
            frames = 1 if row[8] is not None else 0
        return InstanceRecord(
            path=self.root / row[0],
            study_uid=row[1],
            series_uid=row[2],
            sop_uid=row[3],
            sop_class_uid=row[4] or "",
            transfer_syntax_uid=row[5],
            number_of_frames=int(frames),
            instance_number=row[7],
            rows=row[8],
            columns=row[9],
        )

    def instances(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[InstanceRecord]:
        """Return the instances of a study, series or single instance (PS3.18 §10.4.1).

        Ordered by series number, series UID, instance number, SOP Instance UID; an empty
        list when nothing matches.
        """
        sql = self._RECORD_SQL + "WHERE i.study_uid = ?"
        params: list[Any] = [study_uid]
        if series_uid is not None:
            sql += " AND i.series_uid = ?"
            params.append(series_uid)
        if sop_uid is not None:
            sql += " AND i.sop_uid = ?"
            params.append(sop_uid)
        return [self._record(row) for row in self.query(sql + self._RECORD_ORDER, params)]

    def instance(self, sop_uid: str) -> InstanceRecord | None:
        """Return the record of one SOP Instance UID, or ``None``."""
        rows = self.query(self._RECORD_SQL + "WHERE i.sop_uid = ?", (sop_uid,))
        return self._record(rows[0]) if rows else None

    def header(self, sop_uid: str) -> DicomJson | None:
        """Return an instance's header as DICOM JSON (no pixel or bulk data), or ``None``.

        Read from the file with the fast reader (:func:`~imagingkit.dicomjson.read_dicom_json`);
        for the rare files only pydicom reads, from the JSON stored at indexing time.

        Raises
        ------
        InvalidDICOMError
            If the file changed into something unreadable since it was indexed.
        """
        record = self.instance(sop_uid)
        if record is None:
            return None
        rows = self.query("SELECT json FROM headers WHERE sop_uid = ?", (sop_uid,))
        if rows:
            return dict(json.loads(rows[0][0]))
        try:
            return read_dicom_json(record.path).dataset
        except OSError as exc:
            raise InvalidDICOMError(
                f"{record.path}: indexed file is no longer readable ({exc.strerror or exc})"
            ) from None

    def counts(self) -> dict[str, int]:
        """Return the number of studies, series, instances, skipped files and duplicates."""
        row = self.query(
            "SELECT (SELECT COUNT(*) FROM studies), (SELECT COUNT(*) FROM series), "
            "(SELECT COUNT(*) FROM instances), "
            "(SELECT COUNT(*) FROM files WHERE reason IS NOT NULL AND sop_uid IS NULL), "
            "(SELECT COUNT(*) FROM files WHERE reason IS NOT NULL AND sop_uid IS NOT NULL)"
        )[0]
        keys = ("studies", "series", "instances", "skipped", "duplicates")
        return dict(zip(keys, row, strict=True))

    def verify(self) -> list[str]:
        """Check the index against itself and the folder; return the problems found.

        Checks SQLite's ``integrity_check``, that every instance's file exists with the
        recorded size and mtime, and that studies and series have instances.
        """
        problems = [r[0] for r in self.query("PRAGMA integrity_check") if r[0] != "ok"]
        for rel, size, mtime_ns in self.query(
            "SELECT i.path, f.size, f.mtime_ns FROM instances i "
            "LEFT JOIN files f ON f.path = i.path"
        ):
            try:
                st = os.stat(self.root / rel)
            except OSError:
                problems.append(f"indexed file missing: {rel}")
                continue
            if size is None or (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
                problems.append(f"indexed file changed: {rel}")
        for (uid,) in self.query(
            "SELECT study_uid FROM studies s WHERE NOT EXISTS "
            "(SELECT 1 FROM instances i WHERE i.study_uid = s.study_uid)"
        ):
            problems.append(f"study without instances: {uid}")
        for (uid,) in self.query(
            "SELECT series_uid FROM series s WHERE NOT EXISTS "
            "(SELECT 1 FROM instances i WHERE i.series_uid = s.series_uid)"
        ):
            problems.append(f"series without instances: {uid}")
        return problems

    def close(self) -> None:
        """Close the database (further calls fail)."""
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA optimize")
            self._db.close()

    def __enter__(self) -> DicomIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _columns(level: str) -> list[str]:
    return [a.column for a in INDEXED_ATTRIBUTES[level][1:]]


def _insert(table: str, columns: list[str], verb: str = "INSERT OR REPLACE") -> str:
    return f"{verb} INTO {table}({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


_INSERT_SQL = {
    **{
        f"{table}_{verb}": _insert(table, columns, f"INSERT OR {verb}")
        for table, columns in (
            ("studies", ["study_uid", *_columns("study"), "attrs"]),
            ("series", ["series_uid", "study_uid", *_columns("series"), "attrs"]),
        )
        for verb in ("REPLACE", "IGNORE")
    },
    "instances": _insert(
        "instances",
        [
            *("sop_uid", "series_uid", "study_uid", "path", "mtime_ns", "transfer_syntax_uid"),
            *_columns("instance"),
            "attrs",
        ],
        verb="INSERT",
    ),
    "headers": _insert("headers", ["sop_uid", "json"]),
    "files": "INSERT OR REPLACE INTO files(path, size, mtime_ns, sop_uid, reason) "
    "VALUES (?, ?, ?, ?, NULL)",
}


def _study_row(p: _Parsed) -> tuple[Any, ...]:
    return (p.uids[0], *p.columns["study"][1:], p.attrs["study"])


def _series_row(p: _Parsed) -> tuple[Any, ...]:
    return (p.uids[1], p.uids[0], *p.columns["series"][1:], p.attrs["series"])


def _instance_row(p: _Parsed) -> tuple[Any, ...]:
    study, series, sop = p.uids
    return (
        sop,
        series,
        study,
        p.rel,
        p.mtime_ns,
        p.transfer_syntax_uid,
        *p.columns["instance"][1:],
        p.attrs["instance"],
    )


def _process_context() -> Any:
    """Fork when nothing else runs in this process (fast start), else spawn (safe)."""
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return get_context("fork")
    return get_context("spawn")


def _neg(path: str) -> tuple[int, ...]:
    """Sort key under which the lexicographically smaller path compares larger."""
    return tuple(-ord(c) for c in path)
