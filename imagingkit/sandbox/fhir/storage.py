"""SQLite storage of FHIR resources, versions and search index (R4 http §3.1.0.4-9).

Tables:

- ``resource``: one row per (type, id) — the current version number, ``lastUpdated``,
  a deleted flag and the ``seq`` of the current version's body in ``history``;
- ``history``: every version ever written (body JSON, or NULL for a delete), append-only;
  ``seq`` orders all writes of the store;
- ``idx_<table>``: the search index (:data:`.indexing.INDEX_TABLES`), rebuilt for a
  resource on each of its writes and emptied when it is deleted;
- ``snapshot``: the ordered result ids of paged searches, so ``next`` links stay valid
  while data changes.

Writes happen only inside :meth:`Storage.transaction` (``BEGIN IMMEDIATE`` … ``COMMIT``),
so a batch of writes is atomic; with WAL journaling a process killed mid-transaction
leaves the database as of the last commit and it opens cleanly. SQL is always
parameterised: user text never becomes SQL.
"""

from __future__ import annotations

import array
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagingkit.errors import SandboxError
from imagingkit.sandbox.fhir.dates import format_instant, now_instant
from imagingkit.sandbox.fhir.indexing import INDEX_TABLES, extract_rows

__all__ = ["SCHEMA_VERSION", "Storage", "Stored"]

log = logging.getLogger("imagingkit.fhir")

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS resource (
    rid INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL,
    UNIQUE (type, id)
);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    rid INTEGER NOT NULL,
    version INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    method TEXT NOT NULL,
    body TEXT,
    UNIQUE (rid, version)
);
CREATE INDEX IF NOT EXISTS history_updated ON history (updated_ms);
CREATE TABLE IF NOT EXISTS snapshot (
    token TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    rids BLOB NOT NULL
);
"""

_INDEX_SCHEMA = {
    "string": "norm TEXT, exact TEXT",
    "token": "system TEXT, code TEXT, text TEXT",
    "date": "low INTEGER, high INTEGER",
    "number": "low REAL, high REAL",
    "quantity": "low REAL, high REAL, system TEXT, code TEXT, unit TEXT",
    "reference": "target_type TEXT, target_id TEXT, url TEXT, local INTEGER",
    "uri": "uri TEXT",
}
_INDEX_LOOKUP = {
    "string": "norm",
    "token": "code",
    "date": "low",
    "number": "low",
    "quantity": "low",
    "reference": "target_id",
    "uri": "uri",
}


@dataclass(frozen=True)
class Stored:
    """One version of a resource as stored.

    Attributes
    ----------
    rid : int
        Internal row id (stable for the life of the (type, id)).
    type, id : str
        Resource type and logical id.
    version : int
        ``meta.versionId`` as an integer.
    updated_ms : int
        ``meta.lastUpdated`` in epoch milliseconds.
    deleted : bool
        True if this version is a deletion.
    body : str or None
        The resource JSON (None for a deletion).
    method : str
        The interaction that wrote it (``POST``, ``PUT``, ``DELETE``).
    seq : int
        Position in the store's write log.
    """

    rid: int
    type: str
    id: str
    version: int
    updated_ms: int
    deleted: bool
    body: str | None
    method: str = "PUT"
    seq: int = 0

    @property
    def last_updated(self) -> str:
        """``meta.lastUpdated`` as a FHIR instant."""
        return format_instant(self.updated_ms)

    @property
    def etag(self) -> str:
        """The weak ETag of this version (R4 http §3.1.0.9: ``W/"n"``)."""
        return f'W/"{self.version}"'

    def keep(self, resource: dict[str, Any]) -> None:
        """Remember the dict this version was written from; :meth:`resource` hands it out
        (once) instead of parsing the body again."""
        object.__setattr__(self, "_parsed", resource)

    def resource(self) -> dict[str, Any]:
        """Return the parsed resource (raises if this version is a deletion)."""
        if self.body is None:
            raise SandboxError(f"{self.type}/{self.id} version {self.version} is a deletion")
        kept: dict[str, Any] | None = self.__dict__.pop("_parsed", None)
        if kept is not None:
            return kept
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


_SELECT = (
    "SELECT r.rid, r.type, r.id, h.version, h.updated_ms, h.body IS NULL, h.body, h.method, "
    "h.seq FROM history h JOIN resource r ON r.rid = h.rid"
)


def _row(row: Sequence[Any]) -> Stored:
    return Stored(
        rid=row[0],
        type=row[1],
        id=row[2],
        version=row[3],
        updated_ms=row[4],
        deleted=bool(row[5]),
        body=row[6],
        method=row[7],
        seq=row[8],
    )


def _history_filter(
    type_: str | None, id_: str | None, since_ms: int | None, before_seq: int | None
) -> tuple[str, list[Any]]:
    clauses = (
        ("r.type = ?", type_),
        ("r.id = ?", id_),
        ("h.updated_ms >= ?", since_ms),
        ("h.seq < ?", before_seq),
    )
    used = [(clause, value) for clause, value in clauses if value is not None]
    where = " AND ".join(clause for clause, _ in used) or "1 = 1"
    return where, [value for _, value in used]


class Storage:
    """The SQLite database of one FHIR store.

    Parameters
    ----------
    path : Path
        Database file; created (with its folder) if missing.

    Raises
    ------
    SandboxError
        If the file is not a database of this store or cannot be opened.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._depth = 0
        #: called after each COMMIT (still under the lock) with the versions it wrote, in
        #: order; a rolled-back transaction calls nothing (FHIR Subscriptions use this)
        self.commit_hooks: list[Callable[[list[Stored]], None]] = []
        #: ``{resource type: check}`` run by :meth:`write` before storing; a check may
        #: normalise the resource or raise to refuse the write (and roll back)
        self.write_checks: dict[str, Callable[[dict[str, Any]], None]] = {}
        self._written: list[Stored] = []
        try:
            self.conn = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=30
            )
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=OFF")
            self._create_schema()
        except sqlite3.DatabaseError as exc:
            raise SandboxError(f"cannot open FHIR store {str(self.path)!r}: {exc}") from exc

    def _create_schema(self) -> None:
        with self.transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self.conn.execute(statement)
            for table, columns in _INDEX_SCHEMA.items():
                self.conn.execute(
                    f"CREATE TABLE IF NOT EXISTS idx_{table} "
                    f"(rid INTEGER NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL, "
                    f"grp INTEGER NOT NULL, {columns})"
                )
                self.conn.execute(
                    f"CREATE INDEX IF NOT EXISTS idx_{table}_lookup "
                    f"ON idx_{table} (type, param, {_INDEX_LOOKUP[table]})"
                )
                self.conn.execute(
                    f"CREATE INDEX IF NOT EXISTS idx_{table}_rid ON idx_{table} (rid)"
                )
            found = self.conn.execute(
                "SELECT value FROM store_meta WHERE key = 'schema'"
            ).fetchone()
            if found is None:
                self.conn.execute(
                    "INSERT INTO store_meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,)
                )
            elif found[0] != SCHEMA_VERSION:
                raise SandboxError(
                    f"FHIR store {str(self.path)!r} has schema {found[0]}, expected "
                    f"{SCHEMA_VERSION}; delete it to rebuild"
                )

    # -- transactions -------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the block as one SQLite write transaction (nested blocks join the outer one).

        Everything written in the block is committed together, or nothing is if the block
        raises.
        """
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self.conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self.conn.execute("ROLLBACK")
                self._written = []
                raise
            else:
                self.conn.execute("COMMIT")
            finally:
                self._depth = 0
            written, self._written = self._written, []
            if written:
                self._after_commit(written)

    def _after_commit(self, written: list[Stored]) -> None:
        for hook in list(self.commit_hooks):
            try:
                hook(written)
            except Exception:  # the data is committed: a hook's failure must not undo that
                log.exception("FHIR store commit hook %r failed", hook)

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """Hold the store's lock while reading several statements consistently."""
        with self._lock:
            yield self.conn

    # -- reads --------------------------------------------------------------------------

    def current(self, type_: str, id_: str) -> Stored | None:
        """Return the current version of ``type_/id_`` (maybe a deletion), or None."""
        with self._lock:
            row = self.conn.execute(
                _SELECT + " WHERE r.type = ? AND r.id = ? AND h.seq = r.seq", (type_, id_)
            ).fetchone()
        return _row(row) if row else None

    def exists(self, type_: str, id_: str) -> bool:
        """Whether ``type_/id_`` exists and is not deleted."""
        with self._lock:
            row = self.conn.execute(
                "SELECT deleted FROM resource WHERE type = ? AND id = ?", (type_, id_)
            ).fetchone()
        return row is not None and not row[0]

    def version(self, type_: str, id_: str, version: int) -> Stored | None:
        """Return version *version* of ``type_/id_``, or None."""
        with self._lock:
            row = self.conn.execute(
                _SELECT + " WHERE r.type = ? AND r.id = ? AND h.version = ?",
                (type_, id_, version),
            ).fetchone()
        return _row(row) if row else None

    def by_rids(self, rids: Sequence[int]) -> dict[int, Stored]:
        """Return the current, non-deleted versions of the resources *rids*."""
        found: dict[int, Stored] = {}
        with self._lock:
            for start in range(0, len(rids), 500):
                chunk = list(rids[start : start + 500])
                marks = ",".join("?" * len(chunk))
                for row in self.conn.execute(
                    _SELECT + f" WHERE r.rid IN ({marks}) AND h.seq = r.seq AND r.deleted = 0",
                    chunk,
                ):
                    found[row[0]] = _row(row)
        return found

    def history(
        self,
        *,
        type_: str | None = None,
        id_: str | None = None,
        since_ms: int | None = None,
        before_seq: int | None = None,
        limit: int = 100,
    ) -> list[Stored]:
        """Return versions newest first (R4 http §3.1.0.13 history), at most *limit*.

        Parameters
        ----------
        type_, id_ : str, optional
            Restrict to a type, or to one resource.
        since_ms : int, optional
            Only versions written at or after this time (``_since``).
        before_seq : int, optional
            Only versions older than this write (keyset paging).
        limit : int
            Page size.
        """
        where, args = _history_filter(type_, id_, since_ms, before_seq)
        sql = f"{_SELECT} WHERE {where} ORDER BY h.seq DESC LIMIT ?"
        with self._lock:
            rows = self.conn.execute(sql, [*args, limit]).fetchall()
        return [_row(r) for r in rows]

    def count_history(
        self, *, type_: str | None = None, id_: str | None = None, since_ms: int | None = None
    ) -> int:
        """Return how many versions :meth:`history` would list without paging."""
        where, args = _history_filter(type_, id_, since_ms, None)
        sql = f"SELECT COUNT(*) FROM history h JOIN resource r ON r.rid = h.rid WHERE {where}"
        with self._lock:
            return int(self.conn.execute(sql, args).fetchone()[0])

    def query(self, sql: str, args: Sequence[Any] | dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run a parameterised read query built by :mod:`.search` and return its rows."""
        bound = args if isinstance(args, dict) else list(args)
        with self._lock:
            return self.conn.execute(sql, bound).fetchall()

    # -- writes -------------------------------------------------------------------------

    def write(self, resource: dict[str, Any], method: str) -> Stored:
        """Store *resource* as the next version of its (type, id).

        Sets ``meta.versionId`` and ``meta.lastUpdated``, appends the version to the
        history and rebuilds the resource's index rows. Must run inside
        :meth:`transaction`.

        Parameters
        ----------
        resource : dict
            A resource with ``resourceType`` and a valid ``id``; modified in place.
        method : str
            ``POST`` or ``PUT``, recorded in the history.

        Returns
        -------
        Stored
        """
        self._require_transaction()
        rtype, rid_text = resource["resourceType"], resource["id"]
        check = self.write_checks.get(rtype)
        if check is not None:
            check(resource)
        previous = self.conn.execute(
            "SELECT rid, version FROM resource WHERE type = ? AND id = ?", (rtype, rid_text)
        ).fetchone()
        version = previous[1] + 1 if previous else 1
        updated_ms, updated = now_instant()
        meta = dict(resource.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = updated
        ordered = {"resourceType": rtype, "id": rid_text, "meta": meta}
        ordered.update((k, v) for k, v in resource.items() if k not in ordered)
        resource.clear()
        resource.update(ordered)
        rows = extract_rows(resource)
        body = json.dumps(resource, separators=(",", ":"), ensure_ascii=False)
        rid = self._append(previous, rtype, rid_text, version, updated_ms, method, body)
        self._reindex(rid, rtype, rows, fresh=previous is None)
        stored = Stored(rid, rtype, rid_text, version, updated_ms, False, body, method)
        if self.commit_hooks:
            self._written.append(stored)
        stored.keep(resource)
        return stored

    def delete(self, type_: str, id_: str) -> Stored | None:
        """Record a deletion of ``type_/id_`` (R4 http §3.1.0.7); None if absent or deleted."""
        self._require_transaction()
        previous = self.conn.execute(
            "SELECT rid, version, deleted FROM resource WHERE type = ? AND id = ?", (type_, id_)
        ).fetchone()
        if previous is None or previous[2]:
            return None
        version = previous[1] + 1
        updated_ms, _ = now_instant()
        rid = self._append(previous, type_, id_, version, updated_ms, "DELETE", None)
        self._reindex(rid, type_, None)
        stored = Stored(rid, type_, id_, version, updated_ms, True, None, "DELETE")
        if self.commit_hooks:
            self._written.append(stored)
        return stored

    def _append(
        self,
        previous: Sequence[Any] | None,
        type_: str,
        id_: str,
        version: int,
        updated_ms: int,
        method: str,
        body: str | None,
    ) -> int:
        deleted = 1 if body is None else 0
        if previous is None:
            cursor = self.conn.execute(
                "INSERT INTO resource (type, id, version, updated_ms, deleted, seq) "
                "VALUES (?, ?, ?, ?, ?, 0)",
                (type_, id_, version, updated_ms, deleted),
            )
            rid = int(cursor.lastrowid or 0)
        else:
            rid = int(previous[0])
        seq = self.conn.execute(
            "INSERT INTO history (rid, version, updated_ms, method, body) VALUES (?, ?, ?, ?, ?)",
            (rid, version, updated_ms, method, body),
        ).lastrowid
        self.conn.execute(
            "UPDATE resource SET version = ?, updated_ms = ?, deleted = ?, seq = ? WHERE rid = ?",
            (version, updated_ms, deleted, seq, rid),
        )
        return rid

    def _reindex(
        self,
        rid: int,
        type_: str,
        rows: dict[str, list[tuple[Any, ...]]] | None,
        *,
        fresh: bool = False,
    ) -> None:
        for table, columns in INDEX_TABLES.items():
            if not fresh:
                self.conn.execute(f"DELETE FROM idx_{table} WHERE rid = ?", (rid,))
            if not rows or not rows[table]:
                continue
            marks = ",".join("?" * (len(columns) + 4))
            self.conn.executemany(
                f"INSERT INTO idx_{table} (rid, type, param, grp, {', '.join(columns)}) "
                f"VALUES ({marks})",
                [(rid, type_, *row) for row in rows[table]],
            )

    def _require_transaction(self) -> None:
        if not self._depth:
            raise SandboxError("FHIR store writes must run inside Storage.transaction()")

    # -- paging snapshots ---------------------------------------------------------------

    def save_snapshot(self, token: str, rids: Sequence[int], *, keep_ms: int) -> None:
        """Store the ordered result *rids* of a search under *token*; drop old snapshots."""
        blob = array.array("q", rids).tobytes()
        now_ms, _ = now_instant()
        with self.transaction():
            self.conn.execute("DELETE FROM snapshot WHERE created_ms < ?", (now_ms - keep_ms,))
            self.conn.execute(
                "INSERT OR REPLACE INTO snapshot (token, created_ms, rids) VALUES (?, ?, ?)",
                (token, now_ms, blob),
            )

    def load_snapshot(self, token: str) -> list[int] | None:
        """Return the rids saved under *token*, or None if unknown or expired."""
        with self._lock:
            row = self.conn.execute(
                "SELECT rids FROM snapshot WHERE token = ?", (token,)
            ).fetchone()
        if row is None:
            return None
        values = array.array("q")
        values.frombytes(row[0])
        return values.tolist()

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock, suppress(sqlite3.Error):
            self.conn.close()
