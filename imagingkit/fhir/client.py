"""FHIR R4 REST access for imagingkit, on fhirpy (DESIGN.md D1).

:class:`FhirClient` *is* a :class:`fhirpy.SyncFHIRClient` — ``client.resources("Patient")
.search(gender="female").fetch_all()`` works as usual — with the gaps fhirpy leaves
wrapped:

* credentials per origin from an :class:`~imagingkit.auth.AuthMap` (so a SMART backend
  token that refreshes itself is asked for on every request, and a next-link on another
  origin never gets it), instead of one fixed ``authorization`` string;
* one keep-alive ``requests.Session`` instead of a new connection per request;
* errors as imagingkit's :class:`~imagingkit.errors.FHIRError` tree, with the server's
  OperationOutcome text, the URL and the status;
* ``Retry-After``-aware retries on 429/503 (SMART Imaging Access asks clients to repeat
  the request), bounded;
* raw search pages (:meth:`FhirClient.pages`) decoded by msgspec, with paging that
  terminates on servers that repeat pages or ignore ``_offset``;
* the server's :class:`~imagingkit.fhir.capabilities.Capabilities`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import msgspec
import requests
from fhirpy import SyncFHIRClient

from imagingkit.auth import AuthMap, origin_of
from imagingkit.config import Settings, get_settings
from imagingkit.errors import AuthError, FHIRError, OperationOutcomeError
from imagingkit.fhir.capabilities import Capabilities
from imagingkit.fhir.model import Bundle, Link, decode_bundle

__all__ = ["FhirClient", "Params", "search_url"]

log = logging.getLogger("imagingkit.fhir")

Params = Sequence[tuple[str, str]]
#: Upper bound on pages followed for one search (a safety net, not a limit users hit).
MAX_PAGES = 100_000
_RETRY_STATUSES = (429, 503)
_MAX_RETRIES = 3
_MAX_RETRY_AFTER = 30.0
FHIR_JSON = "application/fhir+json"


def search_url(base: str, resource_type: str, params: Params) -> str:
    """The GET URL of a search (R4 search §3.1.1.1), ``:``, ``,`` and ``|`` unescaped."""
    query = urlencode(list(params), safe=":,|$/")
    return f"{base.rstrip('/')}/{resource_type}" + (f"?{query}" if query else "")


def _outcome_text(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return text[:300] or None
    if isinstance(data, dict) and data.get("resourceType") == "OperationOutcome":
        issues = data.get("issue") or []
        parts = [
            str(i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code"))
            for i in issues
            if isinstance(i, dict)
        ]
        return "; ".join(parts) or None
    return None


class FhirClient(SyncFHIRClient):
    """A fhirpy sync client with imagingkit's auth, session, errors and raw paging.

    Parameters
    ----------
    url : str
        The FHIR base URL (``[base]`` of R4 http §3.1.0.1.1).
    auth : AuthMap, optional
        Credentials by origin; requests to unmapped origins carry none.
    settings : Settings, optional
        Timeout and concurrency (default: from the environment).
    session : requests.Session, optional
        A session to reuse (its own ``Authorization`` header, if any, is removed: the
        AuthMap decides).

    Examples
    --------
    >>> client = FhirClient("http://127.0.0.1:8042/fhir")          # doctest: +SKIP
    >>> client.resources("Patient").search(gender="female").fetch_all()  # doctest: +SKIP
    """

    def __init__(
        self,
        url: str,
        *,
        auth: AuthMap | None = None,
        settings: Settings | None = None,
        session: requests.Session | None = None,
    ) -> None:
        base = url.rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise FHIRError(f"FHIR base URL {url!r} is not an http(s) URL")
        origin_of(base)  # refuses a URL without a host
        super().__init__(base)
        self.auth = auth or AuthMap()
        self._origin_auth = self.auth.requests_auth()  # one retry after 401 (imagingkit.auth)
        self.settings = settings or get_settings()
        self.session = session or requests.Session()
        self.session.headers.pop("Authorization", None)
        self._capabilities: Capabilities | None = None
        self.requests_made: list[str] = []

    # -- transport ----------------------------------------------------------------------

    def get_bytes(self, url: str, *, accept: str = FHIR_JSON) -> bytes:
        """GET *url* and return the body (2xx only).

        Raises
        ------
        AuthError
            On 401/403.
        OperationOutcomeError, FHIRError
            On any other error status or a network failure; the message carries the
            server's OperationOutcome text.
        """
        headers = {"Accept": accept}
        for attempt in range(_MAX_RETRIES + 1):
            try:
                response = self.session.get(
                    url, headers=headers, auth=self._origin_auth, timeout=self.settings.timeout
                )
            except requests.RequestException as exc:
                raise FHIRError(f"FHIR request failed: {type(exc).__name__}", url=url) from exc
            self.requests_made.append(url)
            if response.status_code in _RETRY_STATUSES and attempt < _MAX_RETRIES:
                time.sleep(_retry_after(response.headers.get("Retry-After"), attempt))
                continue
            break
        if 200 <= response.status_code < 300:
            return response.content
        self._raise(response, url)
        raise AssertionError("unreachable")

    def _raise(self, response: requests.Response, url: str) -> None:
        message = _outcome_text(response.content)
        status = response.status_code
        if status in (401, 403):
            raise AuthError(
                "the FHIR server refused the credentials",
                url=url,
                status=status,
                server_message=message,
            )
        kind = OperationOutcomeError if message else FHIRError
        raise kind(
            "the FHIR server answered an error", url=url, status=status, server_message=message
        )

    def _do_request(
        self,
        method: str,
        path: str,
        data: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        extra_headers: dict[str, str] | None = None,
        *,
        returning_status: bool = False,
    ) -> Any:
        """fhirpy's transport, routed through the session and the AuthMap."""
        url = self._build_request_url(path, params)
        headers = {**self._build_request_headers(), **(extra_headers or {})}
        headers.pop("Authorization", None)
        try:
            response = self.session.request(
                method,
                url,
                json=data,
                headers=headers,
                auth=self._origin_auth,
                timeout=self.settings.timeout,
            )
        except requests.RequestException as exc:
            raise FHIRError(f"FHIR request failed: {type(exc).__name__}", url=url) from exc
        self.requests_made.append(url)
        if response.status_code == 304:
            return (None, 304) if returning_status else None
        if not 200 <= response.status_code < 300:
            self._raise(response, url)
        from fhirpy.base.utils import AttrDict

        body = json.loads(response.content, object_hook=AttrDict) if response.content else None
        return (body, response.status_code) if returning_status else body

    # -- capabilities -------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        """The server's search abilities, from ``GET [base]/metadata`` (cached).

        A server whose ``/metadata`` is missing or is not a CapabilityStatement gets
        :meth:`Capabilities.baseline`.
        """
        if self._capabilities is None:
            try:
                statement = json.loads(self.get_bytes(f"{self.url}/metadata"))
            except (FHIRError, ValueError) as exc:
                if isinstance(exc, AuthError):
                    raise
                log.info("no CapabilityStatement at %s/metadata: %s", self.url, exc)
                statement = None
            self._capabilities = Capabilities.from_statement(statement)
        return self._capabilities

    # -- searching ----------------------------------------------------------------------

    def url_for(self, resource_type: str, params: Params) -> str:
        """The GET URL of a search on this server."""
        return search_url(self.url, resource_type, params)

    def _next(self, link: str, current: str) -> str:
        """Resolve a next link; one on another origin is moved onto this server's base."""
        absolute = urljoin(current, link)
        if absolute.startswith(self.url + "/") or absolute.startswith(self.url + "?"):
            return absolute
        base_path = urlsplit(self.url).path.rstrip("/")
        parts = urlsplit(absolute)
        if parts.path.startswith(base_path + "/"):
            # a proxy or an internal host name in Bundle.link (fhirpy issue #83)
            query = f"?{parts.query}" if parts.query else ""
            return f"{self.url}{parts.path[len(base_path) :]}{query}"
        raise FHIRError(
            f"the server's next link {link!r} leaves the FHIR base {self.url!r}", url=current
        )

    def pages(
        self, resource_type: str, params: Params, *, instances: bool = False
    ) -> Iterator[Bundle]:
        """Every page of a search, decoded (R4 http §3.1.0.14 paging).

        The next page is requested while the current one is decoded (its ``next`` link is
        read first by a decoder that skips the entries), so the server's time and the
        client's overlap. Stops at the last page, when the server repeats a next link, or
        when a page brings no resource not seen before (servers that ignore ``_offset``).
        """
        url = self.url_for(resource_type, params)
        seen_links: set[str] = {url}
        seen_ids: set[str] = set()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="imagingkit-page") as pool:
            pending: Future[bytes] | None = pool.submit(self.get_bytes, url)
            for _ in range(MAX_PAGES):
                if pending is None:
                    return
                data = pending.result()
                link = _next_link(data, url)
                next_url = self._next(link, url) if link else None
                repeated = next_url in seen_links
                pending = None
                if next_url is not None and not repeated:
                    seen_links.add(next_url)
                    pending = pool.submit(self.get_bytes, next_url)
                bundle = decode_bundle(data, instances=instances, url=url)
                ids = {
                    f"{e.resource.resourceType}/{e.resource.id}"
                    for e in bundle.entry
                    if e.resource is not None
                }
                if bundle.entry and ids <= seen_ids:
                    log.warning("%s repeats a page: paging stopped", url)
                    _abandon(pending)
                    return
                seen_ids |= ids
                yield bundle
                if repeated:
                    log.warning("%s links back to a page already read: paging stopped", next_url)
                    return
                url = next_url or url
        raise FHIRError(f"more than {MAX_PAGES} pages", url=url)

    def total(self, resource_type: str, params: Params) -> int | None:
        """``Bundle.total`` of ``_summary=count`` (R4 search §3.1.1.5.8), if the server says."""
        bundle = decode_bundle(
            self.get_bytes(self.url_for(resource_type, [*params, ("_summary", "count")]))
        )
        return bundle.total

    def close(self) -> None:
        """Close the session."""
        self.session.close()


class _Links(msgspec.Struct, gc=False):
    """Only ``Bundle.link``: the entries are skipped without building anything."""

    link: list[Link] = []


_LINKS = msgspec.json.Decoder(_Links)


def _next_link(data: bytes, url: str) -> str | None:
    """The ``next`` link of a page's raw JSON (None if absent or unreadable here: the full
    decode that follows reports unreadable pages)."""
    try:
        links = _LINKS.decode(data).link
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return next((k.url for k in links if k.relation == "next" and k.url), None)


def _abandon(pending: Future[bytes] | None) -> None:
    if pending is not None:
        pending.cancel()


def _retry_after(value: str | None, attempt: int) -> float:
    """Seconds to wait: the server's ``Retry-After`` seconds, else exponential backoff."""
    try:
        seconds = float(value) if value else 0.5 * 2**attempt
    except ValueError:
        seconds = 0.5 * 2**attempt
    return max(0.0, min(seconds, _MAX_RETRY_AFTER))
