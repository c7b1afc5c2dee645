"""``transaction`` and ``batch`` Bundles posted to the service base (FHIR R4 http §3.1.0.11).

Transaction (all or nothing)
----------------------------
All entries run inside one SQLite transaction: if any entry fails, nothing is written and
the answer is that entry's error as an OperationOutcome (its status, e.g. 400, 404, 412).
Following R4 http §3.1.0.11.2:

1. every entry is checked (request method and url, resource type, ``If-Match`` …);
2. ids are decided first: a ``POST`` gets a new UUID (or, with ``ifNoneExist`` matching
   one resource, that resource's id), a ``PUT Type/id`` keeps its id, a conditional
   ``PUT Type?query`` gets the id of its single match or a new one;
3. every reference equal to an entry's ``fullUrl`` (``urn:uuid:…``, ``urn:oid:…`` or an
   absolute URL) is replaced by ``Type/id``; a conditional reference ``Type?query`` is
   replaced by its single match (none or several → 412 / 400);
4. references must then resolve: to a resource in the store or written by the same
   transaction (a ``urn:uuid`` that names no entry, or ``Patient/x`` that does not exist,
   is a 400 and nothing is written);
5. entries run in the order DELETE, POST, PUT/PATCH, GET; two entries may not write the
   same resource.

PATCH entries (R4 http.html "patch" and "transaction"): ``request.url`` is ``Type/id`` or
``Type?criteria`` (conditional patch: no match → 404, several → 412), and the resource is
a ``Binary`` with ``contentType`` ``application/json-patch+json`` whose ``data`` is the
base64 JSON Patch (:func:`.patch.json_patch_from_binary`). References the patch writes go
through step 3 like those of a PUT. FHIRPath Patch (a ``Parameters`` resource) is refused.

The response (``transaction-response``) has one entry per request entry, in the same
order, with ``response.status``/``location``/``etag``/``lastModified`` and, unless
``Prefer: return=minimal``, the resource as stored.

Batch
-----
Each entry runs alone (its own SQLite transaction); a failed entry gets an error status
and an OperationOutcome in ``response.outcome`` and does not affect the others. Entries of
a batch cannot refer to each other.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from imagingkit.errors import FHIRError, ImagingKitError, InvalidInputError
from imagingkit.sandbox.fhir.interactions import Interactions, Response, status_line
from imagingkit.sandbox.fhir.outcome import fhir_error, outcome_for
from imagingkit.sandbox.fhir.patch import JSON_PATCH, json_patch_from_binary
from imagingkit.sandbox.fhir.references import TYPE_RE, check_id, iter_references, parse_reference
from imagingkit.sandbox.fhir.repository import check_type
from imagingkit.sandbox.fhir.representation import BaseUrls

__all__ = ["process_bundle"]

_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


@dataclass
class _Entry:
    index: int
    method: str
    url: str
    type: str | None = None
    id: str | None = None
    query: str | None = None
    resource: dict[str, Any] | None = None
    full_url: str | None = None
    if_none_exist: str | None = None
    if_match: str | None = None
    reuse: Any = None  # an existing Stored for a conditional create that matched
    operations: Any = None  # the JSON Patch of a PATCH entry
    extra: dict[str, Any] = field(default_factory=dict)


def _parse_entry(index: int, raw: Any, *, copy: bool = True) -> _Entry:
    where = f"Bundle.entry[{index}]"
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{where} is not an object")
    request = raw.get("request")
    if not isinstance(request, dict):
        raise InvalidInputError(f"{where} has no request (method and url)")
    method = request.get("method")
    url = request.get("url")
    if method not in _ORDER or not isinstance(url, str) or not url:
        raise InvalidInputError(
            f"{where}.request needs a method (GET, POST, PUT, PATCH, DELETE) and a url; got "
            f"{method!r} {url!r}"
        )
    entry = _Entry(index, method, url)
    entry.full_url = raw.get("fullUrl") if isinstance(raw.get("fullUrl"), str) else None
    entry.if_none_exist = request.get("ifNoneExist")
    entry.if_match = request.get("ifMatch")
    if method in ("POST", "PUT"):
        resource = raw.get("resource")
        if not isinstance(resource, dict):
            raise InvalidInputError(f"{where} ({method} {url}) has no resource")
        # references are rewritten in place: work on a private copy of a caller's dict
        entry.resource = json.loads(json.dumps(resource)) if copy else resource
    if method == "PATCH":
        entry.operations = _patch_of(raw.get("resource"), where)
    if method == "GET" or method == "HEAD":
        return entry
    parts = urlsplit(url)
    path = [p for p in parts.path.strip("/").split("/") if p]
    if not path or not TYPE_RE.match(path[0]):
        raise InvalidInputError(f"{where}.request.url {url!r} does not start with a type")
    entry.type = check_type(path[0])
    if parts.query:
        entry.query = parts.query
    if method == "POST" and len(path) != 1:
        raise InvalidInputError(f"{where}: POST url must be the type alone, not {url!r}")
    if method in ("PUT", "DELETE", "PATCH"):
        if len(path) == 2:
            entry.id = check_id(path[1], what=f"{where}.request.url id")
        elif len(path) != 1 or not entry.query:
            raise InvalidInputError(
                f"{where}: {method} url must be Type/id or Type?criteria, not {url!r}"
            )
    if entry.resource is not None and entry.resource.get("resourceType") != entry.type:
        raise InvalidInputError(
            f"{where}: resourceType {entry.resource.get('resourceType')!r} does not match "
            f"the url {url!r}"
        )
    return entry


def _patch_of(resource: Any, where: str) -> Any:
    """The JSON Patch of a PATCH entry: a Binary holding it (R4 http.html "patch")."""
    kind = resource.get("resourceType") if isinstance(resource, dict) else None
    if kind == "Binary":
        return json_patch_from_binary(resource, where=where)
    if kind == "Parameters":
        raise InvalidInputError(
            f"{where}: FHIRPath Patch (a Parameters resource) is not supported; carry a JSON "
            f"Patch in a Binary with contentType {JSON_PATCH}"
        )
    raise InvalidInputError(
        f"{where} (PATCH) needs a Binary resource holding the JSON Patch ({JSON_PATCH})"
    )


def _check_bundle(bundle: Any) -> tuple[str, list[Any]]:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise InvalidInputError("POST to the service base needs a Bundle resource")
    kind = bundle.get("type")
    if kind not in ("transaction", "batch"):
        raise InvalidInputError(
            f"Bundle.type {kind!r} cannot be processed; use transaction or batch"
        )
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise InvalidInputError("Bundle.entry must be a list")
    return kind, entries


def _response_entry(response: Response, urls: BaseUrls | None, minimal: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    stored = response.stored
    if stored is not None and urls is not None and not stored.deleted:
        out["fullUrl"] = f"{urls.fhir}/{stored.type}/{stored.id}"
    if response.body is not None and not minimal:
        out["resource"] = response.body
    info: dict[str, Any] = {"status": status_line(response.status)}
    if stored is not None:
        if response.status == 201:
            info["location"] = response.location
        info["etag"] = stored.etag
        info["lastModified"] = stored.last_updated
    out["response"] = info
    return out


def _error_entry(exc: BaseException) -> dict[str, Any]:
    status, outcome = outcome_for(exc)
    return {"response": {"status": status_line(status), "outcome": outcome}}


def _at_most_one(interactions: Interactions, entry: _Entry, type_: str, query: str) -> Any:
    """The single resource matching a conditional *query*, None if none, 412 if several."""
    found = interactions.find(type_, query)
    if len(found) > 1:
        raise fhir_error(
            412, f"Bundle.entry[{entry.index}]: {type_}?{query} matches several resources"
        )
    return found[0] if found else None


def _plan_ids(interactions: Interactions, entries: list[_Entry]) -> dict[str, str]:
    """Decide the id of every written entry; return ``{fullUrl: "Type/id"}``."""
    mapping: dict[str, str] = {}
    written: set[str] = set()
    for entry in entries:
        if entry.method == "POST":
            assert entry.type is not None
            if entry.if_none_exist:
                entry.reuse = _at_most_one(interactions, entry, entry.type, entry.if_none_exist)
                if entry.reuse is not None:
                    entry.id = entry.reuse.id
            if entry.id is None:
                entry.id = str(uuid.uuid4())
        elif entry.method == "PUT" and entry.id is None:
            assert entry.type is not None and entry.query is not None
            match = _at_most_one(interactions, entry, entry.type, entry.query)
            body_id = entry.resource.get("id") if entry.resource else None
            entry.id = match.id if match else (body_id or str(uuid.uuid4()))
        elif entry.method == "DELETE" and entry.id is None:
            assert entry.type is not None and entry.query is not None
            match = _at_most_one(interactions, entry, entry.type, entry.query)
            entry.id = match.id if match else None
        elif entry.method == "PATCH" and entry.id is None:
            assert entry.type is not None and entry.query is not None
            match = _at_most_one(interactions, entry, entry.type, entry.query)
            if match is None:
                raise fhir_error(
                    404, f"Bundle.entry[{entry.index}]: no {entry.type} matches {entry.query!r}"
                )
            entry.id = match.id
        if entry.method in ("POST", "PUT", "DELETE", "PATCH") and entry.id is not None:
            key = f"{entry.type}/{entry.id}"
            if key in written and entry.reuse is None:
                raise InvalidInputError(
                    f"Bundle.entry[{entry.index}] writes {key} again; a transaction may "
                    "write each resource once"
                )
            written.add(key)
            if entry.full_url:
                mapping[entry.full_url] = key
    return mapping


def _resolve_references(
    interactions: Interactions,
    resource: dict[str, Any],
    mapping: dict[str, str],
    urls: BaseUrls | None,
) -> None:
    for path, ref_value in iter_references(resource, resource["resourceType"]):
        text = ref_value["reference"]
        if text in mapping:
            ref_value["reference"] = mapping[text]
        elif "?" in text and TYPE_RE.match(text.split("?", 1)[0]):
            rtype, query = text.split("?", 1)
            check_type(rtype)
            found = interactions.find(rtype, query)
            if len(found) != 1:
                raise fhir_error(
                    412 if found else 400,
                    f"{path}: conditional reference {text!r} matches "
                    f"{'several' if found else 'no'} resources",
                )
            ref_value["reference"] = f"{rtype}/{found[0].id}"
        elif urls is not None and text.startswith(urls.fhir + "/"):
            ref = parse_reference(text[len(urls.fhir) + 1 :])
            if ref.type and ref.id:
                ref_value["reference"] = f"{ref.type}/{ref.id}"


def _run_transaction(
    interactions: Interactions,
    raw_entries: list[Any],
    urls: BaseUrls | None,
    minimal: bool,
    copy: bool,
) -> dict[str, Any]:
    entries = [_parse_entry(i, raw, copy=copy) for i, raw in enumerate(raw_entries)]
    responses: dict[int, Response] = {}
    with interactions.storage.transaction():
        mapping = _plan_ids(interactions, entries)
        for entry in entries:
            if entry.resource is not None:
                _resolve_references(interactions, entry.resource, mapping, urls)
        pending = {f"{e.type}/{e.id}" for e in entries if e.method in ("POST", "PUT")}
        removed = {f"{e.type}/{e.id}" for e in entries if e.method == "DELETE" and e.id}
        for entry in sorted(entries, key=lambda e: (_ORDER[e.method], e.index)):
            try:
                responses[entry.index] = _run_entry(
                    interactions, entry, urls, pending, removed, mapping, strict=False
                )
            except ImagingKitError as exc:
                exc.message = f"Bundle.entry[{entry.index}] ({entry.method} {entry.url}): " + (
                    exc.message
                )
                raise
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "transaction-response",
        "entry": [_response_entry(responses[e.index], urls, minimal) for e in entries],
    }


def _run_entry(
    interactions: Interactions,
    entry: _Entry,
    urls: BaseUrls | None,
    pending: set[str],
    removed: set[str],
    mapping: dict[str, str],
    *,
    strict: bool,
) -> Response:
    """Run one entry; *strict* applies to the searches of GET entries (lenient in Bundles,
    as for a plain GET without ``Prefer: handling=strict``)."""
    if entry.method in ("GET", "HEAD"):
        if urls is None:
            raise InvalidInputError("GET entries need a base URL to build their answers")
        return interactions.get(entry.url, urls, strict=strict)
    assert entry.type is not None
    if entry.method == "DELETE":
        if entry.id is None:
            return Response(204, None)
        return interactions.delete(entry.type, entry.id, if_match=entry.if_match)
    if entry.method == "POST":
        if entry.reuse is not None:
            return Response(200, interactions.show(entry.reuse, urls), entry.reuse)
        return interactions.create(
            entry.type, entry.resource, urls, id_=entry.id, pending=pending, removed=removed
        )
    if entry.method == "PATCH":
        assert entry.id is not None
        return interactions.patch(
            entry.type,
            entry.id,
            entry.operations,
            urls,
            if_match=entry.if_match,
            pending=pending,
            removed=removed,
            rewrite=lambda patched: _resolve_references(interactions, patched, mapping, urls),
        )
    assert entry.id is not None and entry.resource is not None
    if "id" not in entry.resource and entry.query:
        entry.resource["id"] = entry.id
    return interactions.update(
        entry.type,
        entry.id,
        entry.resource,
        urls,
        if_match=entry.if_match,
        pending=pending,
        removed=removed,
    )


def _run_batch(
    interactions: Interactions,
    raw_entries: list[Any],
    urls: BaseUrls | None,
    minimal: bool,
    copy: bool,
) -> dict[str, Any]:
    out = []
    for index, raw in enumerate(raw_entries):
        try:
            with interactions.storage.transaction():
                entry = _parse_entry(index, raw, copy=copy)
                _plan_ids(interactions, [entry])
                if entry.resource is not None:
                    _resolve_references(interactions, entry.resource, {}, urls)
                response = _run_entry(interactions, entry, urls, set(), set(), {}, strict=False)
            out.append(_response_entry(response, urls, minimal))
        except (ImagingKitError, FHIRError) as exc:
            out.append(_error_entry(exc))
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "batch-response",
        "entry": out,
    }


def process_bundle(
    interactions: Interactions,
    bundle: Any,
    urls: BaseUrls | None,
    *,
    minimal: bool = False,
    copy: bool = True,
) -> dict[str, Any]:
    """Process a transaction or batch Bundle and return the response Bundle.

    Parameters
    ----------
    interactions : Interactions
    bundle : Any
        The posted Bundle (parsed JSON).
    urls : BaseUrls or None
        Where the store is reached (for ``fullUrl`` and Endpoint addresses); None for
        in-process callers.
    minimal : bool
        ``Prefer: return=minimal``: leave resources out of the response entries.
    copy : bool
        Work on copies of the entries' resources (False when the Bundle was just parsed
        from a request and nobody else holds it).

    Raises
    ------
    InvalidInputError, FHIRError
        For a transaction, the first failing entry's error (nothing is written).
    """
    kind, entries = _check_bundle(bundle)
    if kind == "transaction":
        return _run_transaction(interactions, entries, urls, minimal, copy)
    return _run_batch(interactions, entries, urls, minimal, copy)
