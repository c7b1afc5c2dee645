"""The persistent retrieval cache (DESIGN.md D8).

What is stored, and under which key:

* **Keys** are built from the credential's *principal* (a non-secret name from
  :meth:`imagingkit.auth.AuthMap.principal_for`, never a token), the server's origin, the
  DICOM UIDs and the *representation* (transfer syntax, rendering parameters, decoded
  volume options): :class:`CacheKey`. Entries of different principals live in different
  folders and are never served to one another.
* **Instances are immutable** (a SOP Instance UID names one content for ever, PS3.3
  C.12.1.1.1), so entries are never revalidated with the server.
* **Writes are atomic**: an entry is written to a temporary file, flushed to disk
  (``fsync``) and renamed into place, so a reader (or a process killed with ``kill -9``
  mid-write) sees a whole entry or none. Temporary files left by dead processes are
  removed the next time a cache opens the folder.
* **Every read is verified**: each file ends with a footer holding the lengths and an
  XXH3-128 checksum of its content and metadata; an entry that fails verification is
  deleted and reported as a miss (so it is fetched again).
* **Size cap with LRU eviction**: a hit refreshes the entry's modification time; when
  the total exceeds ``max_bytes`` the least recently used entries are removed.

Layout under ``root`` (default ``Settings.data_dir / "cache"``)::

    v1/<origin-slug>-<hash>/origin.json          the origin, for `imagingkit cache info`
    v1/<origin-slug>-<hash>/<principal-hash>/<xx>/<key-hash>.ikc
    tmp/<pid>-<random>.tmp                       writes in progress

File format of an entry: ``payload | metadata (JSON) | footer`` where the footer is
``b"IKCACHE1"``, the payload and metadata lengths (little-endian u64) and the 16-byte
XXH3-128 digest of payload + metadata. The payload starts at offset 0, so an array
entry can be memory-mapped as it is (:meth:`Cache.get_array`).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import queue
import re
import secrets
import struct
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from imagingkit._process import pid_alive
from imagingkit.config import Settings, get_settings
from imagingkit.errors import ConfigError, InvalidInputError

__all__ = ["DEFAULT_MAX_BYTES", "ArrayWriter", "Cache", "CacheInfo", "CacheKey", "write_durably"]

log = logging.getLogger("imagingkit.cache")

#: Default size cap: 20 GiB (override with ``Cache(max_bytes=...)`` or
#: ``IMAGINGKIT_CACHE_MAX_BYTES``).
DEFAULT_MAX_BYTES = 20 * 1024**3

_MAGIC = b"IKCACHE1"
_FOOTER = struct.Struct("<8sQQ16s")
_SUFFIX = ".ikc"
_STALE_TEMP_SECONDS = 24 * 3600
_CHUNK = 16 << 20


@dataclass(frozen=True)
class CacheKey:
    """What identifies one cached representation (DESIGN.md D8).

    Parameters
    ----------
    principal : str
        Who is authenticated (non-secret; ``"anonymous"`` without credentials).
    origin : str
        The server's origin, e.g. ``"https://pacs.example.org"``.
    uids : tuple of str
        Study, series, instance UIDs (as many as the object needs), or other
        identifiers of the resource.
    representation : str
        How the object is represented, e.g. ``"application/dicom; transfer-syntax=*"``
        or ``"volume; modality-lut"``.
    """

    principal: str
    origin: str
    uids: tuple[str, ...]
    representation: str

    def as_json(self) -> dict[str, Any]:
        return {
            "principal": self.principal,
            "origin": self.origin,
            "uids": list(self.uids),
            "representation": self.representation,
        }

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical JSON of the key (the entry's file name)."""
        text = json.dumps(self.as_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class CacheInfo:
    """What :meth:`Cache.info` reports.

    Attributes
    ----------
    root : Path
    entries : int
    bytes : int
        Total size of the entries' files.
    max_bytes : int
    by_origin : dict
        ``{origin: (entries, bytes)}``.
    temporary : int
        Files of writes in progress (or left by killed processes, removed on next open).
    """

    root: Path
    entries: int = 0
    bytes: int = 0
    max_bytes: int = DEFAULT_MAX_BYTES
    by_origin: dict[str, tuple[int, int]] = field(default_factory=dict)
    temporary: int = 0

    def __str__(self) -> str:
        lines = [
            f"cache: {self.root}",
            f"entries: {self.entries}",
            f"size: {_human(self.bytes)} of {_human(self.max_bytes)}",
        ]
        if self.temporary:
            lines.append(f"writes in progress: {self.temporary}")
        for origin, (count, size) in sorted(self.by_origin.items()):
            lines.append(f"  {origin}: {count} entries, {_human(size)}")
        return "\n".join(lines)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _slug(origin: str) -> str:
    text = re.sub(r"[^A-Za-z0-9.]+", "_", origin.split("://", 1)[-1]).strip("_")
    return text[:40] or "origin"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _Committer:
    """One background thread finishing :class:`ArrayWriter` commits in order."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Any] = queue.Queue()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def submit(self, job: Any) -> None:
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(
                    target=self._run, name="imagingkit-cache-commit", daemon=True
                )
                self.thread.start()
        self.queue.put(job)

    def _run(self) -> None:
        while True:
            job = self.queue.get()
            try:
                job()
            except Exception:  # a failed cache write must not kill the thread
                log.exception("cache write failed")
            finally:
                self.queue.task_done()

    def flush(self) -> None:
        self.queue.join()


_COMMITTERS: weakref.WeakSet[_Committer] = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:
    for committer in list(_COMMITTERS):
        committer.flush()


class Cache:
    """An on-disk cache of DICOMweb representations (see the module docstring).

    Parameters
    ----------
    root : path, optional
        The cache folder; defaults to ``settings.data_dir / "cache"``.
    max_bytes : int, optional
        Size cap; defaults to ``$IMAGINGKIT_CACHE_MAX_BYTES`` or :data:`DEFAULT_MAX_BYTES`.
    settings : Settings, optional
        Used only for the default *root*.

    Raises
    ------
    ConfigError
        If *max_bytes* is not positive or the environment variable is not a number.

    Examples
    --------
    >>> cache = Cache(tmp_path, max_bytes=10**9)                  # doctest: +SKIP
    >>> key = CacheKey("anonymous", "http://127.0.0.1:8042", ("1.2.3",), "metadata")
    >>> cache.put(key, b"[]"); cache.get(key)                     # doctest: +SKIP
    b'[]'
    """

    def __init__(
        self,
        root: Path | str | None = None,
        max_bytes: int | None = None,
        *,
        settings: Settings | None = None,
    ) -> None:
        if root is None:
            root = (settings or get_settings()).data_dir / "cache"
        self.root = Path(root).expanduser()
        if max_bytes is None:
            raw = os.environ.get("IMAGINGKIT_CACHE_MAX_BYTES")
            try:
                max_bytes = int(raw) if raw else DEFAULT_MAX_BYTES
            except ValueError:
                raise ConfigError(f"IMAGINGKIT_CACHE_MAX_BYTES={raw!r} is not a number") from None
        if max_bytes <= 0:
            raise ConfigError(f"cache max_bytes must be positive, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._total: int | None = None  # estimate of the entries' size, None = unknown
        self._swept = False
        self._committer = _Committer()
        _COMMITTERS.add(self._committer)

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r}, max_bytes={self.max_bytes})"

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "max_bytes": self.max_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"], state["max_bytes"])  # type: ignore[misc]

    # ------------------------------------------------------------------ paths

    @property
    def _entries_dir(self) -> Path:
        return self.root / "v1"

    @property
    def _tmp_dir(self) -> Path:
        return self.root / "tmp"

    def _origin_dir(self, origin: str) -> Path:
        digest = hashlib.sha256(origin.encode("utf-8")).hexdigest()[:12]
        return self._entries_dir / f"{_slug(origin)}-{digest}"

    def path_for(self, key: CacheKey) -> Path:
        """Return where the entry for *key* lives (whether or not it exists)."""
        principal = hashlib.sha256(key.principal.encode("utf-8")).hexdigest()[:16]
        digest = key.digest
        return self._origin_dir(key.origin) / principal / digest[:2] / (digest + _SUFFIX)

    def _temp_path(self) -> Path:
        self._tmp_dir.mkdir(parents=True, exist_ok=True)
        if not self._swept:
            self._swept = True
            self._remove_stale_temps()
        return self._tmp_dir / f"{os.getpid()}-{secrets.token_hex(8)}.tmp"

    def _remove_stale_temps(self) -> None:
        """Delete temporary files of dead processes (or very old ones)."""
        now = time.time()
        for path in self._tmp_dir.glob("*.tmp"):
            try:
                pid = int(path.name.split("-", 1)[0])
            except ValueError:
                pid = -1
            if pid == os.getpid():
                continue
            try:
                stale = pid < 0 or not pid_alive(pid)
                stale = stale or now - path.stat().st_mtime > _STALE_TEMP_SECONDS
            except OSError:
                continue
            if stale:
                with contextlib.suppress(OSError):
                    path.unlink()

    # ------------------------------------------------------------------ reading

    def _read_footer(self, fd: int, size: int) -> tuple[int, int, bytes] | None:
        if size < _FOOTER.size:
            return None
        magic, payload_len, meta_len, digest = _FOOTER.unpack(
            os.pread(fd, _FOOTER.size, size - _FOOTER.size)
        )
        if magic != _MAGIC or payload_len + meta_len + _FOOTER.size != size:
            return None
        return payload_len, meta_len, digest

    def _open_verified(
        self, key: CacheKey, *, want_payload: bool
    ) -> tuple[Path, dict[str, Any], bytes | None, int] | None:
        """Verify the entry of *key*; return (path, meta, payload or None, payload length)."""
        path = self.path_for(key)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            footer = self._read_footer(fd, size)
            if footer is None:
                raise _Corrupt("bad footer")
            payload_len, meta_len, digest = footer
            hasher = xxhash.xxh3_128()
            payload: bytes | None = None
            if want_payload:
                payload = os.pread(fd, payload_len, 0)
                if len(payload) != payload_len:
                    raise _Corrupt("short read")
                hasher.update(payload)
            else:
                _hash_file_range(fd, payload_len, hasher)
            meta_bytes = os.pread(fd, meta_len, payload_len)
            hasher.update(meta_bytes)
            if hasher.digest() != digest:
                raise _Corrupt("checksum mismatch")
            meta = json.loads(meta_bytes)
            if meta.get("key") != key.as_json():
                raise _Corrupt("entry belongs to another key")
        except (_Corrupt, OSError, ValueError) as exc:
            log.warning("cache entry %s failed verification (%s); removed", path.name, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.utime(path)  # LRU: a hit makes the entry recent
        return path, meta, payload, payload_len

    def get(self, key: CacheKey) -> bytes | None:
        """Return the verified payload of *key*, or None (miss or corrupt entry)."""
        found = self._open_verified(key, want_payload=True)
        return None if found is None else found[2]

    def get_with_meta(self, key: CacheKey) -> tuple[bytes, dict[str, Any]] | None:
        """Return ``(payload, metadata)`` of *key*, or None."""
        found = self._open_verified(key, want_payload=True)
        if found is None or found[2] is None:
            return None
        return found[2], found[1].get("meta", {})

    def get_json(self, key: CacheKey) -> Any:
        """Return the JSON value stored under *key*, or None."""
        payload = self.get(key)
        return None if payload is None else json.loads(payload)

    def get_array(self, key: CacheKey) -> tuple[np.ndarray, dict[str, Any]] | None:
        """Return a cached array, memory-mapped copy-on-write, and its metadata; or None.

        The file's checksum is verified first. Writing to the returned array changes
        private pages only, never the cache.
        """
        found = self._open_verified(key, want_payload=False)
        if found is None:
            return None
        path, meta, _, payload_len = found
        info = meta.get("array") or {}
        try:
            dtype = np.dtype(info["dtype"])
            shape = tuple(int(n) for n in info["shape"])
            if int(np.prod(shape)) * dtype.itemsize != payload_len:
                raise ValueError("array size does not match the payload")
            if payload_len == 0:
                array = np.zeros(shape, dtype)
            else:
                array = np.memmap(path, dtype=dtype, mode="c", shape=shape)
        except (KeyError, TypeError, ValueError, OSError) as exc:
            log.warning("cache entry %s is not an array (%s); removed", path.name, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        return array, meta.get("meta", {})

    def __contains__(self, key: object) -> bool:
        return isinstance(key, CacheKey) and self.path_for(key).exists()

    # ------------------------------------------------------------------ writing

    def _meta_bytes(self, key: CacheKey, meta: Mapping[str, Any] | None, **extra: Any) -> bytes:
        record = {"key": key.as_json(), "created": time.time(), "meta": dict(meta or {}), **extra}
        return json.dumps(record, separators=(",", ":")).encode("utf-8")

    def put(
        self,
        key: CacheKey,
        payload: bytes | bytearray | memoryview,
        meta: Mapping[str, Any] | None = None,
    ) -> bool:
        """Store *payload* under *key* atomically (temp file, fsync, rename).

        Returns
        -------
        bool
            False if the entry is larger than the cache's cap (nothing stored).
        """
        view = memoryview(payload)
        meta_bytes = self._meta_bytes(key, meta)
        if view.nbytes + len(meta_bytes) + _FOOTER.size > self.max_bytes:
            return False
        hasher = xxhash.xxh3_128(view)
        hasher.update(meta_bytes)
        footer = _FOOTER.pack(_MAGIC, view.nbytes, len(meta_bytes), hasher.digest())
        temp = self._temp_path()
        write_durably(temp, view, meta_bytes, footer)
        try:
            self._install(temp, key)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        return True

    def put_json(self, key: CacheKey, value: Any, meta: Mapping[str, Any] | None = None) -> bool:
        """Store a JSON-serialisable *value* under *key*."""
        return self.put(key, json.dumps(value, separators=(",", ":")).encode("utf-8"), meta)

    def _install(self, temp: Path, key: CacheKey) -> None:
        """Rename a finished temp file into place and account for its size."""
        target = self.path_for(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        origin_file = self._origin_dir(key.origin) / "origin.json"
        if not origin_file.exists():
            scratch = origin_file.with_name(f"origin.{os.getpid()}.{secrets.token_hex(4)}")
            scratch.write_text(json.dumps({"origin": key.origin}))
            os.replace(scratch, origin_file)
        size = temp.stat().st_size
        os.replace(temp, target)
        _fsync_dir(target.parent)
        with self._lock:
            if self._total is not None:
                self._total += size
            over = self._total is None or self._total > self.max_bytes
        if over:
            self.evict()

    def array_writer(
        self,
        key: CacheKey,
        shape: Sequence[int],
        dtype: np.dtype[Any] | type | str,
    ) -> ArrayWriter | None:
        """Start an array entry that is filled in place (see :class:`ArrayWriter`).

        Returns None if an array of *shape* would not fit under the cap.
        """
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if nbytes > self.max_bytes or nbytes == 0:
            return None
        return ArrayWriter(self, key, tuple(int(n) for n in shape), dtype)

    def flush(self) -> None:
        """Wait until background commits (of :class:`ArrayWriter`) are on disk."""
        self._committer.flush()

    # ------------------------------------------------------------------ housekeeping

    def _iter_entries(self) -> Iterator[tuple[Path, os.stat_result]]:
        base = self._entries_dir
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.endswith(_SUFFIX):
                    path = Path(dirpath) / name
                    try:
                        yield path, path.stat()
                    except OSError:
                        continue

    def evict(self, target: int | None = None) -> int:
        """Remove least recently used entries until the total is at most *target*.

        *target* defaults to 90 % of ``max_bytes`` (so that eviction does not run on
        every write). Returns the number of entries removed.
        """
        limit = int(self.max_bytes * 0.9) if target is None else target
        with self._lock:
            entries = sorted(self._iter_entries(), key=lambda item: item[1].st_mtime)
            total = sum(st.st_size for _, st in entries)
            removed = 0
            for path, st in entries:
                if total <= limit:
                    break
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed += 1
                total -= st.st_size
            self._total = total
        if removed:
            log.info("cache: evicted %d least recently used entries", removed)
        return removed

    def info(self) -> CacheInfo:
        """Count entries and bytes, in total and per origin."""
        report = CacheInfo(root=self.root, max_bytes=self.max_bytes)
        origins: dict[Path, str] = {}
        for path, st in self._iter_entries():
            origin_dir = path.parents[2]
            if origin_dir not in origins:
                try:
                    origins[origin_dir] = json.loads((origin_dir / "origin.json").read_text())[
                        "origin"
                    ]
                except (OSError, ValueError, KeyError):
                    origins[origin_dir] = origin_dir.name
            origin = origins[origin_dir]
            count, size = report.by_origin.get(origin, (0, 0))
            report.by_origin[origin] = (count + 1, size + st.st_size)
            report.entries += 1
            report.bytes += st.st_size
        if self._tmp_dir.is_dir():
            report.temporary = sum(1 for _ in self._tmp_dir.glob("*.tmp"))
        return report

    def clear(self) -> int:
        """Remove every entry (and temporary files of dead processes); return the count."""
        removed = 0
        with self._lock:
            for path, _ in list(self._iter_entries()):
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed += 1
            self._total = 0
        if self._tmp_dir.is_dir():
            self._remove_stale_temps()
        return removed

    def verify(self) -> list[Path]:
        """Check every entry's checksum; remove and return the paths of bad ones."""
        bad: list[Path] = []
        for path, st in list(self._iter_entries()):
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                footer = self._read_footer(fd, st.st_size)
                ok = False
                if footer is not None:
                    payload_len, meta_len, digest = footer
                    hasher = xxhash.xxh3_128()
                    _hash_file_range(fd, payload_len, hasher)
                    hasher.update(os.pread(fd, meta_len, payload_len))
                    ok = hasher.digest() == digest
            finally:
                os.close(fd)
            if not ok:
                bad.append(path)
                with contextlib.suppress(OSError):
                    path.unlink()
        return bad


def write_durably(path: Path, *chunks: bytes | bytearray | memoryview) -> None:
    """Write *chunks* to a new file *path* and ``fsync`` it; on failure remove it.

    The first half of an atomic write: the caller renames *path* into place.
    """
    try:
        with open(path, "xb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


class _Corrupt(Exception):
    pass


def _hash_file_range(fd: int, length: int, hasher: Any) -> None:
    """Feed bytes ``[0, length)`` of *fd* to *hasher* (memory-mapped when large)."""
    if length == 0:
        return
    import mmap

    with mmap.mmap(fd, length, access=mmap.ACCESS_READ) as mapped, memoryview(mapped) as view:
        for start in range(0, length, _CHUNK):
            hasher.update(view[start : start + _CHUNK])


class ArrayWriter:
    """An array entry filled in place, then committed atomically in the background.

    The array lives in a temporary file, memory-mapped shared, so the data written by
    the caller *is* the future cache entry: no second copy of a large volume is made.
    :meth:`commit` hands back a private (copy-on-write) mapping of the same pages for
    the caller to keep, and a background thread checksums, ``fsync``\\ s and renames
    the file into place (:meth:`Cache.flush` waits for it). Until then — and for ever
    if the process dies first — the entry does not exist.

    Use :meth:`resize` to change the first dimension (the file grows or shrinks; pages
    already written are kept), and :meth:`abort` to give up.
    """

    def __init__(self, cache: Cache, key: CacheKey, shape: tuple[int, ...], dtype: np.dtype[Any]):
        self.cache = cache
        self.key = key
        self.dtype = dtype
        self.shape = shape
        self.path = cache._temp_path()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        self._closed = False
        self._map(shape)

    def _map(self, shape: tuple[int, ...]) -> None:
        nbytes = int(np.prod(shape)) * self.dtype.itemsize
        os.ftruncate(self._fd, nbytes)
        self.shape = shape
        self.array: np.ndarray = (
            np.memmap(self.path, dtype=self.dtype, mode="r+", shape=shape)
            if nbytes
            else np.zeros(shape, self.dtype)
        )

    def resize(self, first: int) -> np.ndarray:
        """Change the first dimension to *first*; return the new (shared) array."""
        if first < 0:
            raise InvalidInputError(f"array length {first} is negative")
        self._release()
        self._map((first, *self.shape[1:]))
        return self.array

    def _release(self) -> None:
        array = self.array
        if isinstance(array, np.memmap):
            # no msync: the data is in the page cache, which every mapping shares; the
            # background commit fsyncs the file
            mm = getattr(array, "_mmap", None)
            del self.array
            if mm is not None:
                with contextlib.suppress(BufferError, ValueError):
                    mm.close()  # fails while views exist; the GC closes it then
        else:
            del self.array

    def commit(
        self, meta: Mapping[str, Any] | None = None, *, background: bool = True
    ) -> np.ndarray:
        """Finish the entry; return the caller's copy-on-write view of the array.

        Parameters
        ----------
        meta : mapping, optional
            JSON-serialisable metadata returned by :meth:`Cache.get_array`.
        background : bool
            Checksum, fsync and rename in the cache's background thread (default) or now.
        """
        if self._closed:
            raise InvalidInputError("this cache entry was already committed or aborted")
        self._closed = True
        shape, dtype = self.shape, self.dtype
        nbytes = int(np.prod(shape)) * dtype.itemsize
        self._release()
        if nbytes:
            view: np.ndarray = np.memmap(self.path, dtype=dtype, mode="c", shape=shape)
        else:
            view = np.zeros(shape, dtype)
        meta_bytes = self.cache._meta_bytes(
            self.key, meta, array={"dtype": dtype.str, "shape": list(shape)}
        )
        fd, path, cache, key = self._fd, self.path, self.cache, self.key

        def finish() -> None:
            try:
                hasher = xxhash.xxh3_128()
                _hash_file_range(fd, nbytes, hasher)
                hasher.update(meta_bytes)
                footer = _FOOTER.pack(_MAGIC, nbytes, len(meta_bytes), hasher.digest())
                os.pwrite(fd, meta_bytes + footer, nbytes)
                os.fsync(fd)
                cache._install(path, key)
            except BaseException:
                with contextlib.suppress(OSError):
                    path.unlink()
                raise
            finally:
                os.close(fd)

        if background:
            cache._committer.submit(finish)
        else:
            finish()
        return view

    def abort(self) -> None:
        """Give up: delete the temporary file."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(AttributeError):
            self._release()
        os.close(self._fd)
        with contextlib.suppress(OSError):
            self.path.unlink()
