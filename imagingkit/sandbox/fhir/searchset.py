"""Search and history results as Bundles, with paging and includes (R4 search §3.1.1.5).

Paging
------
A search runs once and its ordered result ids are kept as a *snapshot* (in the store's
database, for :data:`SNAPSHOT_KEEP_MS`). The ``next``/``previous``/``first``/``last`` links
name the snapshot (``_snapshot=…&_offset=…``) together with the search itself, so paging
goes on over the same result list while other clients write: nothing is skipped or shown
twice. Resources deleted since the first page are left out of later pages; updated ones
are shown as they are now. A link whose snapshot has expired runs the search again and
pages by offset. ``Bundle.total`` is the number of matches (omitted for ``_total=none``).

The ``self`` link repeats only the parameters that shaped the result: unknown parameters
that were ignored are left out of it.

Includes
--------
``_include`` adds the resources the matches refer to, ``_revinclude`` those referring to
the matches (``search.mode = include``); ``:iterate`` includes are applied again to the
included resources until no new resource appears (every resource is added once, so
reference cycles terminate). Warnings (a capped ``_count``, ignored parameters) come as an
OperationOutcome entry with ``search.mode = outcome``.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlencode

from imagingkit.sandbox.fhir.dates import now_instant
from imagingkit.sandbox.fhir.outcome import operation_outcome
from imagingkit.sandbox.fhir.representation import BaseUrls, RawJSON, rendered, subset
from imagingkit.sandbox.fhir.search import (
    MAX_COUNT,
    Include,
    SearchRequest,
    compile_search,
)
from imagingkit.sandbox.fhir.searchparams import SEARCH_PARAMETERS
from imagingkit.sandbox.fhir.storage import Storage, Stored

__all__ = ["SNAPSHOT_KEEP_MS", "Searcher", "history_bundle"]

#: How long a paging snapshot is kept (ms).
SNAPSHOT_KEEP_MS = 2 * 3600 * 1000
#: Most resources one page may include through _include/_revinclude.
MAX_INCLUDED = 10_000
_CHUNK = 500


def _chunks(values: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def _bundle(kind: str) -> dict[str, Any]:
    _, now = now_instant()
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": now},
        "type": kind,
    }


def _entry(
    stored: Stored, urls: BaseUrls, mode: str, request: SearchRequest, raw: bool
) -> dict[str, Any]:
    resource: dict[str, Any] | RawJSON
    partial = request.elements is not None or request.summary not in (None, "false")
    if raw and not partial and stored.type != "Endpoint" and stored.body is not None:
        resource = RawJSON(stored.body)  # shown as stored: no need to parse it
    else:
        resource = rendered(stored.resource(), urls)
        if partial:
            resource = subset(resource, elements=request.elements, summary=request.summary)
    return {
        "fullUrl": f"{urls.fhir}/{stored.type}/{stored.id}",
        "resource": resource,
        "search": {"mode": mode},
    }


class Searcher:
    """Runs parsed searches against a :class:`.storage.Storage` and pages the results."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def match_rids(self, request: SearchRequest, fhir_base: str | None = None) -> list[int]:
        """Return the ordered rids of every match of *request* (no paging)."""
        sql, args = compile_search(request, fhir_base=fhir_base)
        return [row[0] for row in self.storage.query(sql, args)]

    def bundle(
        self, request: SearchRequest, urls: BaseUrls, *, raw: bool = False
    ) -> dict[str, Any]:
        """Return the searchset Bundle page that *request* asks for.

        With *raw*, resources shown unchanged are :class:`.representation.RawJSON` (for
        :func:`.representation.dumps`); otherwise every resource is a dict.
        """
        rids: list[int] | None = None
        if request.snapshot:
            rids = self.storage.load_snapshot(request.snapshot)
        snapshot = request.snapshot if rids is not None else None
        if rids is None:
            rids = self.match_rids(request, urls.fhir)
        total = len(rids)
        bundle = _bundle("searchset")
        if request.total != "none" or request.summary == "count":
            bundle["total"] = total
        # a system search (R4 search §3.1.1.3) pages at the service base itself
        base = f"{urls.fhir}/{request.resource_type}" if request.resource_type else urls.fhir
        if request.summary == "count" or request.count == 0:
            bundle["link"] = [{"relation": "self", "url": _link(base, request.used)}]
            self._add_warnings(bundle, request, [])
            return bundle
        count, offset = request.count, request.offset
        paged = offset > 0 or offset + count < total
        if paged and snapshot is None:
            snapshot = secrets.token_urlsafe(12)
            self.storage.save_snapshot(snapshot, rids, keep_ms=SNAPSHOT_KEEP_MS)
        page_rids = rids[offset : offset + count]
        found = self.storage.by_rids(page_rids)
        matches = [found[rid] for rid in page_rids if rid in found]
        included, capped = self._included(matches, request.includes)
        bundle["link"] = self._links(base, request, snapshot, total, paged)
        entries = [_entry(s, urls, "match", request, raw) for s in matches]
        entries += [_entry(s, urls, "include", request, raw) for s in included]
        warnings = (
            [f"_include/_revinclude stopped after {MAX_INCLUDED} resources"] if capped else []
        )
        self._add_warnings(bundle, request, warnings, entries)
        if entries:
            bundle["entry"] = entries
        return bundle

    @staticmethod
    def _links(
        base: str, request: SearchRequest, snapshot: str | None, total: int, paged: bool
    ) -> list[dict[str, str]]:
        count, offset = request.count, request.offset
        used = list(request.used)
        if not any(name == "_count" for name, _ in used):
            used.append(("_count", str(count)))

        def page(at: int) -> str:
            extra: list[tuple[str, str]] = [("_offset", str(at))]
            if snapshot:
                extra.append(("_snapshot", snapshot))
            return _link(base, used + extra)

        self_url = page(offset) if offset else _link(base, request.used)
        links = [{"relation": "self", "url": self_url}]
        if not paged:
            return links
        last = max(0, (total - 1) // count * count) if count else 0
        links.append({"relation": "first", "url": page(0)})
        if offset > 0:
            links.append({"relation": "previous", "url": page(max(0, offset - count))})
        if offset + count < total:
            links.append({"relation": "next", "url": page(offset + count)})
        links.append({"relation": "last", "url": page(last)})
        return links

    @staticmethod
    def _add_warnings(
        bundle: dict[str, Any],
        request: SearchRequest,
        warnings: list[str],
        entries: list[dict[str, Any]] | None = None,
    ) -> None:
        messages = list(warnings)
        if request.count_capped_from is not None:
            messages.append(
                f"_count={request.count_capped_from} exceeds the maximum page size; "
                f"pages hold at most {MAX_COUNT} resources"
            )
        if request.ignored:
            messages.append(
                "ignored unknown or unsupported search parameters: " + ", ".join(request.ignored)
            )
        if not messages:
            return
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [
                operation_outcome(m, severity="warning", code="not-supported")["issue"][0]
                for m in messages
            ],
        }
        entry = {"resource": outcome, "search": {"mode": "outcome"}}
        if entries is None:
            bundle.setdefault("entry", []).append(entry)
        else:
            entries.append(entry)

    def _included(
        self, matches: list[Stored], includes: list[Include]
    ) -> tuple[list[Stored], bool]:
        if not includes or not matches:
            return [], False
        seen = {s.rid for s in matches}
        out: list[Stored] = []
        frontier = matches
        first = True
        while frontier:
            active = [i for i in includes if first or i.iterate]
            new: list[int] = []
            for include in active:
                for rid in self._include_rids(frontier, include):
                    if rid not in seen:
                        seen.add(rid)
                        new.append(rid)
            if len(out) + len(new) > MAX_INCLUDED:
                new = new[: MAX_INCLUDED - len(out)]
                found = self.storage.by_rids(new)
                out.extend(found[r] for r in new if r in found)
                return out, True
            found = self.storage.by_rids(new)
            frontier = [found[r] for r in new if r in found]
            out.extend(frontier)
            first = False
        return out, False

    def _include_rids(self, frontier: list[Stored], include: Include) -> list[int]:
        params = (
            [include.param.name]
            if include.param is not None
            else [
                p.name for p in SEARCH_PARAMETERS[include.source].values() if p.type == "reference"
            ]
        )
        rids: list[int] = []
        if not include.reverse:
            sources = [s.rid for s in frontier if s.type == include.source]
            for chunk in _chunks(sources):
                for name in params:
                    sql = (
                        "SELECT t.rid FROM idx_reference x JOIN resource t "
                        "ON t.type = x.target_type AND t.id = x.target_id "
                        f"WHERE x.rid IN ({','.join('?' * len(chunk))}) AND x.type = ? "
                        "AND x.param = ? AND x.local = 1 AND t.deleted = 0"
                    )
                    args: list[Any] = [*chunk, include.source, name]
                    if include.target:
                        sql += " AND x.target_type = ?"
                        args.append(include.target)
                    rids.extend(row[0] for row in self.storage.query(sql, args))
            return rids
        by_type: dict[str, list[str]] = {}
        for stored in frontier:
            if include.target and stored.type != include.target:
                continue
            by_type.setdefault(stored.type, []).append(stored.id)
        for target_type, ids in by_type.items():
            for chunk in _chunks(ids):
                for name in params:
                    sql = (
                        "SELECT x.rid FROM idx_reference x WHERE x.type = ? AND x.param = ? "
                        "AND x.local = 1 AND x.target_type = ? "
                        f"AND x.target_id IN ({','.join('?' * len(chunk))}) ORDER BY x.rid"
                    )
                    args = [include.source, name, target_type, *chunk]
                    rids.extend(row[0] for row in self.storage.query(sql, args))
        return rids


def _link(base: str, params: Sequence[tuple[str, str]]) -> str:
    return f"{base}?{urlencode(list(params), safe=':,/')}" if params else base


def history_bundle(
    storage: Storage,
    urls: BaseUrls,
    *,
    type_: str | None,
    id_: str | None,
    since_ms: int | None,
    since_text: str | None,
    count: int,
    before_seq: int | None,
) -> dict[str, Any]:
    """Return a page of the history of a resource, a type or the whole store (R4 http §3.1.0.13).

    Versions come newest first; the ``next`` link continues below the last version shown
    (``_before=<write sequence>``), so writes made meanwhile do not shift pages.
    """
    versions = storage.history(
        type_=type_, id_=id_, since_ms=since_ms, before_seq=before_seq, limit=count + 1
    )
    more = len(versions) > count
    versions = versions[:count]
    bundle = _bundle("history")
    bundle["total"] = storage.count_history(type_=type_, id_=id_, since_ms=since_ms)
    path = urls.fhir + "".join(f"/{p}" for p in (type_, id_) if p) + "/_history"
    params: list[tuple[str, str]] = [("_count", str(count))]
    if since_text:
        params.append(("_since", since_text))
    self_params = [*params, ("_before", str(before_seq))] if before_seq else params
    bundle["link"] = [{"relation": "self", "url": _link(path, self_params)}]
    if more and versions:
        bundle["link"].append(
            {"relation": "next", "url": _link(path, [*params, ("_before", str(versions[-1].seq))])}
        )
    entries = []
    for stored in versions:
        entry: dict[str, Any] = {"fullUrl": f"{urls.fhir}/{stored.type}/{stored.id}"}
        if stored.body is not None:
            entry["resource"] = rendered(json.loads(stored.body), urls)
        method = stored.method
        url = f"{stored.type}/{stored.id}" if method != "POST" else stored.type
        entry["request"] = {"method": method, "url": url}
        status = {"POST": "201 Created", "DELETE": "204 No Content"}.get(
            method, "200 OK" if stored.version > 1 else "201 Created"
        )
        entry["response"] = {
            "status": status,
            "etag": stored.etag,
            "lastModified": stored.last_updated,
        }
        entries.append(entry)
    if entries:
        bundle["entry"] = entries
    return bundle
