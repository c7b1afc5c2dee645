"""Tornado handlers of the FHIR R4 REST API (FHIR R4 http §3.1.0).

URL layout below the store's prefix (``{base_url}fhir``)::

    GET    /metadata                          CapabilityStatement
    POST   /                                  transaction / batch Bundle
    GET    /_history                          system history
    GET    /?_type=…   POST /_search          system search (common parameters)
    GET    /{type}?…   POST /{type}/_search   search
    POST   /{type}                            create (If-None-Exist: conditional create)
    PUT    /{type}?…   DELETE /{type}?…       conditional update / delete
    GET    /{type}/_history                   type history
    GET    /{type}/{id}                       read
    PUT    /{type}/{id}                       update (If-Match), create-on-update
    PATCH  /{type}/{id}   PATCH /{type}?…     patch (JSON Patch, If-Match), conditional patch
    DELETE /{type}/{id}                       delete
    GET    /{type}/{id}/_history[/{vid}]      instance history, vread

Content: ``application/fhir+json`` (``application/json`` accepted too); ``_format`` and
``Accept`` asking for anything else (XML, Turtle) get 406; a body in another media type
gets 415. ``_pretty=true`` indents. ``Prefer: return=minimal | representation |
OperationOutcome`` and ``Prefer: handling=strict | lenient`` are honoured. Every error is
an OperationOutcome (never HTML or problem+json).

The SQLite work runs on one worker thread per store, so a long transaction does not
stall the other services of the app (the DICOMweb store shares the event loop).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from email.utils import formatdate
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import tornado.ioloop
import tornado.web

from imagingkit.errors import ImagingKitError, InvalidInputError
from imagingkit.sandbox import authz
from imagingkit.sandbox.fhir.bundle import process_bundle
from imagingkit.sandbox.fhir.capability import capability_statement
from imagingkit.sandbox.fhir.dates import now_instant
from imagingkit.sandbox.fhir.interactions import Interactions, Response
from imagingkit.sandbox.fhir.outcome import ISSUE_CODES, operation_outcome, outcome_for
from imagingkit.sandbox.fhir.patch import JSON_PATCH
from imagingkit.sandbox.fhir.references import check_id
from imagingkit.sandbox.fhir.representation import BaseUrls, dumps
from imagingkit.server.app import RouteList
from imagingkit.server.base import BaseHandler

__all__ = ["FHIR_JSON", "fhir_routes"]

log = logging.getLogger("imagingkit.fhir")

FHIR_JSON = "application/fhir+json"
_JSON_TYPES = {"application/fhir+json", "application/json", "application/json+fhir", "json"}
_FORMAT_ALIASES = {"json", "application/json", "application/fhir+json", "application/json+fhir"}
_T = TypeVar("_T")


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


class FhirHandler(BaseHandler):
    """Shared plumbing: base URLs, content negotiation, OperationOutcome errors."""

    cors_methods = "GET, POST, PUT, PATCH, DELETE, OPTIONS"

    def initialize(
        self, interactions: Interactions, executor: Executor, prefix: str, mount: str
    ) -> None:
        self.interactions = interactions
        self.executor = executor
        self.prefix = prefix
        self.mount = mount

    # -- request context ----------------------------------------------------------------

    @property
    def urls(self) -> BaseUrls:
        """The absolute FHIR and app base URLs as this request reached the server."""
        origin = f"{self.request.protocol}://{self.request.host}"
        return BaseUrls.from_fhir_base(origin + self.prefix, self.mount)

    def query_params(self) -> list[tuple[str, str]]:
        """The decoded query parameters in request order (``_format``/``_pretty`` kept)."""
        return parse_qsl(self.request.query, keep_blank_values=True)

    def prefer(self, key: str) -> str | None:
        """The value of *key* in the ``Prefer`` header (``return``, ``handling``)."""
        for part in self.request.headers.get("Prefer", "").split(";"):
            for item in part.split(","):
                name, _, value = item.strip().partition("=")
                if name.strip().lower() == key:
                    return value.strip().strip('"').lower()
        return None

    @property
    def strict(self) -> bool:
        return self.prefer("handling") == "strict"

    def prepare(self) -> None:
        fmt = self.get_query_argument("_format", None)
        if fmt is not None and _media_type(fmt) not in _FORMAT_ALIASES:
            raise _Status(406, f"_format {fmt!r} is not supported; this server speaks JSON")
        accept = self.request.headers.get("Accept")
        if fmt is None and accept:
            kinds = {_media_type(a) for a in accept.split(",")}
            acceptable = _JSON_TYPES | {"*/*", "application/*", ""}
            if not kinds & acceptable:
                raise _Status(406, f"Accept {accept!r} cannot be met; this server speaks JSON")

    def json_body(self) -> Any:
        """Parse the request body as JSON (415 for another media type, 400 if malformed)."""
        ctype = self.request.headers.get("Content-Type")
        if ctype and _media_type(ctype) not in _JSON_TYPES:
            raise _Status(415, f"Content-Type {ctype!r} is not supported; send {FHIR_JSON}")
        if not self.request.body:
            raise InvalidInputError("the request has no body; a FHIR resource was expected")
        try:
            return json.loads(self.request.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInputError(f"the request body is not valid JSON: {exc}") from None

    def form_params(self) -> list[tuple[str, str]]:
        """The parameters of a ``POST …/_search`` form body (R4 http §3.1.0.10)."""
        ctype = _media_type(self.request.headers.get("Content-Type", ""))
        if ctype not in ("application/x-www-form-urlencoded", ""):
            raise _Status(
                415, f"POST _search needs an application/x-www-form-urlencoded body, not {ctype!r}"
            )
        try:
            return parse_qsl(self.request.body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            raise InvalidInputError("the _search body is not UTF-8") from None

    def patch_body(self) -> Any:
        """The JSON Patch document of a PATCH request (R4 http.html "patch").

        ``application/json-patch+json`` (or plain JSON holding an array) is a JSON Patch;
        a FHIR ``Parameters`` body (FHIRPath Patch) is not supported here (415).
        """
        ctype = _media_type(self.request.headers.get("Content-Type", ""))
        if ctype not in (JSON_PATCH, "", *_JSON_TYPES):
            raise _Status(415, f"Content-Type {ctype!r} is not a patch format; send {JSON_PATCH}")
        if not self.request.body:
            raise InvalidInputError("the PATCH request has no body; a JSON Patch was expected")
        try:
            document = json.loads(self.request.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInputError(f"the PATCH body is not valid JSON: {exc}") from None
        if isinstance(document, dict) and document.get("resourceType") == "Parameters":
            raise _Status(
                415,
                f"FHIRPath Patch ({ctype or 'no Content-Type'}) is not supported; send a JSON "
                f"Patch as {JSON_PATCH}",
            )
        return document

    async def run(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run store work on the store's worker thread."""
        loop = tornado.ioloop.IOLoop.current()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    # -- responses ----------------------------------------------------------------------

    def send_json(self, status: int, body: dict[str, Any] | None) -> None:
        """Write *body* as FHIR JSON with *status*."""
        body = authz.screen_fhir_body(self, body)  # --auth: only what the token may read
        self.set_status(status)
        if body is None:
            self.finish()
            return
        self.set_header("Content-Type", f"{FHIR_JSON}; charset=utf-8")
        pretty = self.get_query_argument("_pretty", "false") == "true"
        text = dumps(body, indent=2 if pretty else None)
        self.finish(text.encode("utf-8"))

    def send(self, response: Response, *, write: bool = False) -> None:
        """Write an interaction's response with its ETag, Last-Modified and Location."""
        stored = response.stored
        if stored is not None and not stored.deleted:
            self.set_header("ETag", stored.etag)
            self.set_header("Last-Modified", formatdate(stored.updated_ms / 1000, usegmt=True))
            where = f"{self.urls.fhir}/{response.location}"
            self.set_header("Content-Location", where)
            if response.status == 201:
                self.set_header("Location", where)
        body = response.body
        if write:
            preference = self.prefer("return")
            if preference == "minimal":
                body = None
            elif preference == "operationoutcome":
                body = operation_outcome(
                    f"{self.request.method} succeeded",
                    severity="information",
                    code="informational",
                )
        self.send_json(response.status, body)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, (_Status, ImagingKitError)):
            _, outcome = outcome_for(exc)
        elif isinstance(exc, tornado.web.HTTPError):
            outcome = operation_outcome(
                exc.log_message or self._reason, code=ISSUE_CODES.get(status_code, "processing")
            )
        else:
            outcome = operation_outcome(
                "internal error while processing the request", code="exception"
            )
        self.clear_header("Content-Location")
        self.clear_header("Location")
        self.set_header("Content-Type", f"{FHIR_JSON}; charset=utf-8")
        self.finish(json.dumps(outcome))

    def _handle_request_exception(self, e: BaseException) -> None:
        if self._finished:
            return
        status = None
        if isinstance(e, _Status):
            status = e.status
        elif isinstance(e, InvalidInputError):
            status = 400
        elif isinstance(e, ImagingKitError) and e.status:
            status = e.status
        if status is not None:
            self.send_error(status, exc_info=(type(e), e, e.__traceback__))
            return
        super()._handle_request_exception(e)


class _Status(ImagingKitError):
    """An HTTP-level refusal (406, 415) raised by the handlers themselves."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message, status=status)


class _RootHandler(FhirHandler):
    async def post(self) -> None:
        bundle = self.json_body()
        minimal = self.prefer("return") == "minimal"
        result = await self.run(
            process_bundle, self.interactions, bundle, self.urls, minimal=minimal, copy=False
        )
        self.send_json(200, result)

    async def get(self) -> None:
        """R4 search §3.1.1.3: search all types (``_type`` narrows), common parameters."""
        await self.system_search(self.query_params())

    async def system_search(self, params: list[tuple[str, str]]) -> None:
        response = await self.run(
            self.interactions.system_search, params, self.urls, strict=self.strict, raw=True
        )
        self.send(response)


class _SystemSearchHandler(_RootHandler):
    async def post(self) -> None:
        """``POST [base]/_search`` with a form body: the same as ``GET [base]?…``."""
        await self.system_search(self.query_params() + self.form_params())


class _MetadataHandler(FhirHandler):
    def get(self) -> None:
        _, now = now_instant()
        self.send_json(200, capability_statement(self.urls.fhir, date=now))


class _HistoryHandler(FhirHandler):
    async def get(self, type_: str | None = None, id_: str | None = None) -> None:
        if id_ is not None:
            check_id(id_)
        response = await self.run(
            self.interactions.history, type_, id_, self.query_params(), self.urls
        )
        self.send(response)


class _TypeHandler(FhirHandler):
    async def get(self, type_: str) -> None:
        params = authz.scope_fhir_search(self, type_, self.query_params())  # --auth scoping
        response = await self.run(
            self.interactions.search,
            type_,
            params,
            self.urls,
            strict=self.strict,
            raw=True,
        )
        self.send(response)

    async def post(self, type_: str) -> None:
        body = self.json_body()
        response = await self.run(
            self.interactions.create,
            type_,
            body,
            self.urls,
            if_none_exist=self.request.headers.get("If-None-Exist"),
        )
        self.send(response, write=True)

    async def put(self, type_: str) -> None:
        query = self.request.query
        if not query:
            raise _Status(405, "PUT needs [type]/[id] or conditional criteria [type]?…")
        body = self.json_body()
        response = await self.run(
            self.interactions.conditional_update, type_, query, body, self.urls
        )
        self.send(response, write=True)

    async def patch(self, type_: str) -> None:
        query = self.request.query
        if not query:
            raise _Status(405, "PATCH needs [type]/[id] or conditional criteria [type]?…")
        body = self.patch_body()
        response = await self.run(
            self.interactions.conditional_patch, type_, query, body, self.urls
        )
        self.send(response, write=True)

    async def delete(self, type_: str) -> None:
        query = self.request.query
        if not query:
            raise _Status(405, "DELETE needs [type]/[id] or conditional criteria [type]?…")
        response = await self.run(self.interactions.conditional_delete, type_, query)
        self.send(response)


class _SearchHandler(FhirHandler):
    async def post(self, type_: str) -> None:
        params = authz.scope_fhir_search(self, type_, self.query_params() + self.form_params())
        response = await self.run(
            self.interactions.search, type_, params, self.urls, strict=self.strict, raw=True
        )
        self.send(response)


class _InstanceHandler(FhirHandler):
    async def get(self, type_: str, id_: str) -> None:
        check_id(id_)
        response = await self.run(self.interactions.read, type_, id_, self.urls)
        stored = response.stored
        if stored is not None and self.request.headers.get("If-None-Match") == stored.etag:
            # R4 http §3.1.0.2.1 conditional read: the client's copy is current
            self.set_header("ETag", stored.etag)
            self.set_status(304)
            self.finish()
            return
        self.send(response)

    async def put(self, type_: str, id_: str) -> None:
        body = self.json_body()
        response = await self.run(
            self.interactions.update,
            type_,
            id_,
            body,
            self.urls,
            if_match=self.request.headers.get("If-Match"),
        )
        self.send(response, write=True)

    async def patch(self, type_: str, id_: str) -> None:
        body = self.patch_body()
        response = await self.run(
            self.interactions.patch,
            type_,
            id_,
            body,
            self.urls,
            if_match=self.request.headers.get("If-Match"),
        )
        self.send(response, write=True)

    async def delete(self, type_: str, id_: str) -> None:
        check_id(id_)
        response = await self.run(
            self.interactions.delete, type_, id_, if_match=self.request.headers.get("If-Match")
        )
        self.send(response)


class _VersionHandler(FhirHandler):
    async def get(self, type_: str, id_: str, version: str) -> None:
        check_id(id_)
        response = await self.run(self.interactions.vread, type_, id_, version, self.urls)
        self.send(response)


class _NotFoundHandler(FhirHandler):
    def prepare(self) -> None:
        raise _Status(404, f"no FHIR interaction at {self.request.path!r}")


def fhir_routes(
    prefix: str, interactions: Interactions, executor: Executor, mount: str
) -> RouteList:
    """Return the tornado rules of the FHIR API below *prefix* (no trailing slash)."""
    kw = {"interactions": interactions, "executor": executor, "prefix": prefix, "mount": mount}
    t = r"([A-Z][A-Za-z]+)"
    i = r"([^/]+)"
    return [
        (rf"{prefix}/?", _RootHandler, kw),
        (rf"{prefix}/metadata", _MetadataHandler, kw),
        (rf"{prefix}/_history", _HistoryHandler, kw),
        (rf"{prefix}/_search", _SystemSearchHandler, kw),
        (rf"{prefix}/{t}/?", _TypeHandler, kw),
        (rf"{prefix}/{t}/_search", _SearchHandler, kw),
        (rf"{prefix}/{t}/_history", _HistoryHandler, kw),
        (rf"{prefix}/{t}/{i}/_history", _HistoryHandler, kw),
        (rf"{prefix}/{t}/{i}/_history/{i}", _VersionHandler, kw),
        (rf"{prefix}/{t}/{i}", _InstanceHandler, kw),
        (rf"{prefix}/.*", _NotFoundHandler, kw),
    ]
