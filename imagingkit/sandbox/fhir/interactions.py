"""Every RESTful interaction of the store, request data in, :class:`Response` out (R4 http).

Tornado handlers (:mod:`.handlers`) and Bundle processing (:mod:`.bundle`) both call these,
so a transaction entry behaves exactly like the same request sent alone. Conditional
interactions (R4 http §3.1.0.4.3, §3.1.0.7.1, §3.1.0.8.1) are answered with a search:

- conditional create (``If-None-Exist`` / ``ifNoneExist``): no match → create; one →
  200 with the existing resource; several → 412;
- conditional update (``PUT Type?query``): no match → create; one → update it; several →
  412;
- conditional delete (``DELETE Type?query``): deletes the single match; several → 412;
- conditional patch (``PATCH Type?query``, R4 http.html "conditional patch"): no match →
  404; one → patch it; several → 412.

Patch (R4 http.html "patch") applies a JSON Patch (:mod:`.patch`) to the resource as the
client sees it (Endpoint addresses rendered), then processes the result exactly as an
update: ``If-Match`` (checked before the operations run), validation, references, a new
version recorded as ``PATCH`` in the history, index rows and Subscription notifications.
The patched resource keeps the ``resourceType`` and ``id`` of the URL: an operation that
changes them is refused (400), as an update with another id would be.
"""

from __future__ import annotations

import http
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from imagingkit.errors import InvalidInputError
from imagingkit.sandbox.fhir.dates import date_range
from imagingkit.sandbox.fhir.outcome import fhir_error, operation_outcome
from imagingkit.sandbox.fhir.patch import apply_json_patch, operations_touching
from imagingkit.sandbox.fhir.references import TYPE_RE, check_id
from imagingkit.sandbox.fhir.repository import (
    Repository,
    check_type,
    parse_etag,
    validate_resource,
)
from imagingkit.sandbox.fhir.representation import BaseUrls, portable, rendered
from imagingkit.sandbox.fhir.search import (
    DEFAULT_COUNT,
    MAX_COUNT,
    parse_search,
    parse_system_search,
)
from imagingkit.sandbox.fhir.searchset import Searcher, history_bundle
from imagingkit.sandbox.fhir.storage import Storage, Stored

__all__ = ["Interactions", "Response", "status_line"]


def status_line(status: int) -> str:
    """``201`` → ``"201 Created"`` (Bundle.entry.response.status)."""
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


@dataclass
class Response:
    """The outcome of one interaction.

    Attributes
    ----------
    status : int
        HTTP status.
    body : dict or None
        Resource, Bundle or OperationOutcome to return.
    stored : Stored or None
        The version read or written (for ETag, Last-Modified, Location).
    """

    status: int
    body: dict[str, Any] | None
    stored: Stored | None = None

    @property
    def location(self) -> str | None:
        """``Type/id/_history/n`` of a written version."""
        s = self.stored
        if s is None:
            return None
        return f"{s.type}/{s.id}/_history/{s.version}"


def _check_identity(patched: Any, operations: Any, type_: str, id_: str) -> None:
    """A patch may not turn the resource into another one (R4 update rules: 400)."""
    if not isinstance(patched, dict):
        raise InvalidInputError("the JSON Patch replaced the resource with a non-object")
    for member, kept in (("resourceType", type_), ("id", id_)):
        if patched.get(member) != kept:
            raise InvalidInputError(
                f"JSON Patch {operations_touching(operations, member)}: changes {member} "
                f"from {kept!r} to {patched.get(member)!r}; a patch cannot change it"
            )


class Interactions:
    """The store's interactions over one database.

    Parameters
    ----------
    storage : Storage
    """

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.repository = Repository(storage)
        self.searcher = Searcher(storage)

    # -- helpers ------------------------------------------------------------------------

    def show(self, stored: Stored, urls: BaseUrls | None) -> dict[str, Any]:
        """The resource of *stored* as a client at *urls* sees it."""
        return rendered(stored.resource(), urls)

    def find(self, type_: str, query: str | list[tuple[str, str]]) -> list[Stored]:
        """Return the current resources of *type_* matching a search (for conditionals)."""
        params = parse_qsl(query, keep_blank_values=True) if isinstance(query, str) else query
        if not params:
            raise InvalidInputError(f"a conditional {type_} interaction needs search criteria")
        request = parse_search(type_, params, strict=True)
        rids = self.searcher.match_rids(request)
        found = self.storage.by_rids(rids[:2])
        return [found[r] for r in rids[:2] if r in found]

    def find_one(self, type_: str, query: str) -> Stored | None:
        """The one resource a conditional interaction's criteria match, or None.

        Raises
        ------
        OperationOutcomeError
            412 when the criteria match several resources (R4 http §3.1.0.4.3 conditional
            update, conditional patch, conditional delete).
        """
        matches = self.find(type_, query)
        if len(matches) > 1:
            raise fhir_error(412, f"{type_}?{query} matches several resources")
        return matches[0] if matches else None

    # -- instance interactions ----------------------------------------------------------

    def read(self, type_: str, id_: str, urls: BaseUrls | None) -> Response:
        """R4 http §3.1.0.2 read."""
        stored = self.repository.read(type_, id_)
        return Response(200, self.show(stored, urls), stored)

    def vread(self, type_: str, id_: str, version: str, urls: BaseUrls | None) -> Response:
        """R4 http §3.1.0.3 vread."""
        stored = self.repository.vread(type_, id_, version)
        return Response(200, self.show(stored, urls), stored)

    def create(
        self,
        type_: str | None,
        resource: Any,
        urls: BaseUrls | None,
        *,
        if_none_exist: str | None = None,
        id_: str | None = None,
        pending: Collection[str] = (),
        removed: Collection[str] = (),
    ) -> Response:
        """R4 http §3.1.0.6 create, with conditional create when *if_none_exist* is given.

        A client ``id`` in the body is ignored (R4: the server assigns the id).
        """
        if isinstance(resource, dict):
            resource.pop("id", None)
        resource = validate_resource(resource, type_)
        rtype = resource["resourceType"]
        with self.storage.transaction():
            if if_none_exist:
                existing = self.find(rtype, if_none_exist)
                if len(existing) > 1:
                    raise fhir_error(
                        412, f"If-None-Exist {if_none_exist!r} matches several {rtype} resources"
                    )
                if existing:
                    return Response(200, self.show(existing[0], urls), existing[0])
            portable(resource, urls)
            stored = self.repository.create(resource, id_=id_, pending=pending, removed=removed)
        return Response(201, self.show(stored, urls), stored)

    def update(
        self,
        type_: str,
        id_: str,
        resource: Any,
        urls: BaseUrls | None,
        *,
        if_match: str | None = None,
        pending: Collection[str] = (),
        removed: Collection[str] = (),
    ) -> Response:
        """R4 http §3.1.0.4 update, including create-on-update with a client id."""
        resource = validate_resource(resource, type_)
        portable(resource, urls)
        stored, created = self.repository.update(
            type_, id_, resource, if_match=if_match, pending=pending, removed=removed
        )
        return Response(201 if created else 200, self.show(stored, urls), stored)

    def conditional_update(
        self, type_: str, query: str, resource: Any, urls: BaseUrls | None
    ) -> Response:
        """R4 http §3.1.0.4.3 conditional update ``PUT Type?criteria``."""
        check_type(type_)
        with self.storage.transaction():
            match = self.find_one(type_, query)
            body = validate_resource(resource, type_)
            if match is not None:
                # the body may omit the id; if it has one, update() checks it matches
                body.setdefault("id", match.id)
                return self.update(type_, match.id, body, urls)
            if "id" in body:
                return self.update(type_, body["id"], body, urls)
            return self.create(type_, body, urls)

    def patch(
        self,
        type_: str,
        id_: str,
        operations: Any,
        urls: BaseUrls | None,
        *,
        if_match: str | None = None,
        pending: Collection[str] = (),
        removed: Collection[str] = (),
        rewrite: Callable[[dict[str, Any]], None] | None = None,
    ) -> Response:
        """R4 http.html "patch": apply a JSON Patch, then update (200, or 412/404/410/422).

        Parameters
        ----------
        operations : Any
            The parsed JSON Patch document (RFC 6902).
        rewrite : callable, optional
            Called on the patched resource before it is stored (a transaction resolves
            its ``urn:uuid`` references there).
        """
        check_type(type_)
        check_id(id_, what=f"{type_} id in the URL")
        with self.storage.transaction():
            current = self.repository.read(type_, id_)
            if if_match is not None and current.version != parse_etag(if_match):
                have = f"version {current.version}"
                raise fhir_error(412, f"If-Match {if_match!r} failed: {type_}/{id_} has {have}")
            patched = apply_json_patch(self.show(current, urls), operations)
            _check_identity(patched, operations, type_, id_)
            if rewrite is not None:
                rewrite(patched)
            portable(patched, urls)
            stored, _ = self.repository.update(
                type_,
                id_,
                patched,
                if_match=if_match,
                pending=pending,
                removed=removed,
                method="PATCH",
            )
        return Response(200, self.show(stored, urls), stored)

    def conditional_patch(
        self, type_: str, query: str, operations: Any, urls: BaseUrls | None
    ) -> Response:
        """R4 http.html "conditional patch" ``PATCH Type?criteria``: 404 / patch / 412."""
        check_type(type_)
        with self.storage.transaction():
            match = self.find_one(type_, query)
            if match is None:
                raise fhir_error(404, f"no {type_} matches {query!r}")
            return self.patch(type_, match.id, operations, urls)

    def delete(self, type_: str, id_: str, *, if_match: str | None = None) -> Response:
        """R4 http §3.1.0.7 delete; 200 with an OperationOutcome either way."""
        stored = self.repository.delete(type_, id_, if_match=if_match)
        text = f"deleted {type_}/{id_}" if stored else f"{type_}/{id_} did not exist"
        return Response(
            200, operation_outcome(text, severity="information", code="informational"), stored
        )

    def conditional_delete(self, type_: str, query: str) -> Response:
        """R4 http §3.1.0.7.1 conditional delete (one match at most)."""
        check_type(type_)
        with self.storage.transaction():
            match = self.find_one(type_, query)
            if match is None:
                return Response(
                    200,
                    operation_outcome(
                        f"no {type_} matched {query!r}",
                        severity="information",
                        code="informational",
                    ),
                )
            return self.delete(type_, match.id)

    # -- searches and histories ---------------------------------------------------------

    def search(
        self,
        type_: str,
        params: list[tuple[str, str]],
        urls: BaseUrls,
        *,
        strict: bool = False,
        raw: bool = False,
    ) -> Response:
        """R4 http §3.1.0.10 search (GET or POST ``_search``): a searchset Bundle.

        *raw* lets unchanged resources stay stored JSON text (serialise the body with
        :func:`.representation.dumps`).
        """
        check_type(type_)
        request = parse_search(type_, params, strict=strict)
        return Response(200, self.searcher.bundle(request, urls, raw=raw))

    def system_search(
        self,
        params: list[tuple[str, str]],
        urls: BaseUrls,
        *,
        strict: bool = False,
        raw: bool = False,
    ) -> Response:
        """R4 search §3.1.1.3 system search ``GET [base]?_type=…``: a searchset Bundle of
        the listed types (every type without ``_type``), common parameters only."""
        request = parse_system_search(params, strict=strict)
        return Response(200, self.searcher.bundle(request, urls, raw=raw))

    def history(
        self,
        type_: str | None,
        id_: str | None,
        params: list[tuple[str, str]],
        urls: BaseUrls,
    ) -> Response:
        """R4 http §3.1.0.13 history (instance, type or system)."""
        if type_ is not None:
            check_type(type_)
        if type_ and id_ and self.storage.current(type_, id_) is None:
            raise fhir_error(404, f"{type_}/{id_} is not known")
        count, since_ms, since_text, before = DEFAULT_COUNT, None, None, None
        for name, value in params:
            try:
                if name == "_count":
                    count = max(1, min(MAX_COUNT, int(value)))
                elif name == "_since":
                    since_ms, since_text = date_range(value, what="_since")[0], value
                elif name == "_before":
                    before = int(value)
            except ValueError:
                raise InvalidInputError(
                    f"history parameter {name}={value!r} is malformed"
                ) from None
        bundle = history_bundle(
            self.storage,
            urls,
            type_=type_,
            id_=id_,
            since_ms=since_ms,
            since_text=since_text,
            count=count,
            before_seq=before,
        )
        return Response(200, bundle)

    # -- a request given as a relative URL (Bundle entries) -----------------------------

    def get(self, url: str, urls: BaseUrls, *, strict: bool = False) -> Response:
        """Answer a GET named by a relative URL, as in ``Bundle.entry.request.url``."""
        parts = urlsplit(url)
        path = [p for p in parts.path.strip("/").split("/") if p]
        params = parse_qsl(parts.query, keep_blank_values=True)
        if not path:
            return self.system_search(params, urls, strict=strict)
        if len(path) == 1 and TYPE_RE.match(path[0]):
            return self.search(path[0], params, urls, strict=strict)
        if len(path) == 2 and path[1] == "_history":
            return self.history(path[0], None, params, urls)
        if len(path) == 2:
            return self.read(path[0], check_id(path[1]), urls)
        if len(path) == 3 and path[2] == "_history":
            return self.history(path[0], check_id(path[1]), params, urls)
        if len(path) == 4 and path[2] == "_history":
            return self.vread(path[0], check_id(path[1]), path[3], urls)
        raise InvalidInputError(f"cannot answer GET {url!r}")
