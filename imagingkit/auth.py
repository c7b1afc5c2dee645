"""Credentials bound to origins (DESIGN.md D7).

A request carries a credential only if its origin (scheme, host, port) is mapped in the
:class:`AuthMap`. A hostile ``Endpoint.address`` on another origin therefore gets nothing,
and a redirect to another origin loses the credential. Secrets never appear in ``repr``,
logs, DataFrames, cache keys or exception messages: cache keys use
:attr:`Credential.principal`, a non-secret name.

Credentials: :class:`BearerToken` (RFC 6750), :class:`BasicAuth` (RFC 7617) and
:class:`~imagingkit.smart.SmartBackendServices` (SMART Backend Services, re-exported here).

SMART Imaging Access reuse: an ImagingStudy's Endpoint may say (extension
``requires-access-token``) that its WADO-RS service takes the token the FHIR server
accepted. :meth:`AuthMap.for_endpoint` decides which credential a DICOMweb request to
that Endpoint carries, and sends the FHIR credential to another origin only when the
user declared that origin with :meth:`AuthMap.with_reuse`.

One retry after ``401``: the FHIR and DICOMweb clients send their requests through
:meth:`AuthMap.requests_auth`. When a request carrying a *refreshable* credential
(:class:`Refreshable`: it can :meth:`~Refreshable.invalidate` its token, as
:class:`~imagingkit.smart.SmartBackendServices` does) is answered ``401`` — the token
was revoked or forgotten before its ``expires_in`` (RFC 6750 §3.1 ``invalid_token``; a
restarted sandbox) — the token is invalidated, a new one fetched and the same request,
to the same URL, sent once more. Never twice, never with a fixed token
(:class:`BearerToken`, :class:`BasicAuth`: a second try would fail the same way), never
for a request whose body cannot be sent again, and never to an origin whose request
carried no credential of the map.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import requests
from requests.auth import AuthBase
from requests.cookies import extract_cookies_to_jar

from imagingkit.errors import AuthError, redact_url

if TYPE_CHECKING:
    from imagingkit.smart import SmartBackendServices

__all__ = [
    "REQUIRES_ACCESS_TOKEN",
    "AuthMap",
    "BasicAuth",
    "BearerToken",
    "Credential",
    "OriginAuth",
    "Refreshable",
    "SmartBackendServices",
    "origin_of",
    "requires_access_token",
]

log = logging.getLogger("imagingkit.auth")

#: The SMART Imaging Access extension on an Endpoint (argonaut smart-imaging 0.1.0,
#: ``SmartWadoEndpoint``); any extension URL ending in ``/requires-access-token`` counts.
REQUIRES_ACCESS_TOKEN = (
    "http://fhir.org/argonaut/smart-imaging/StructureDefinition/requires-access-token"
)


def __getattr__(name: str) -> Any:
    # SmartBackendServices lives in imagingkit.smart (it needs `cryptography`); importing
    # it lazily keeps `import imagingkit.auth` light for code that only uses tokens.
    if name == "SmartBackendServices":
        from imagingkit.smart import SmartBackendServices

        return SmartBackendServices
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def origin_of(url: str) -> str:
    """Return the RFC 6454 origin ``scheme://host[:port]`` of *url*, lower-cased.

    Default ports are dropped so ``https://a.org`` and ``https://a.org:443`` are one origin.

    Raises
    ------
    AuthError
        If *url* has no scheme or host.
    """
    parts = urlsplit(url)
    if not parts.scheme or not parts.hostname:
        shown = redact_url(url)  # never echo user:password@
        raise AuthError(f"cannot bind credentials to {shown!r}: not an absolute http(s) URL")
    scheme = parts.scheme.lower()
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        raise AuthError(f"URL {redact_url(url)!r} has an invalid port") from None
    default = {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(scheme)
    if port is None or port == default:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


@runtime_checkable
class Credential(Protocol):
    """Anything that can authorise a request to one origin."""

    @property
    def principal(self) -> str:
        """A stable, non-secret name of who is authenticated (used in cache keys)."""
        ...

    def authorization(self) -> str:
        """Return the value of the ``Authorization`` header (may refresh a token)."""
        ...


@runtime_checkable
class Refreshable(Protocol):
    """A credential whose token can be dropped and obtained again (after a ``401``)."""

    def invalidate(self, rejected: str | None = None) -> None:
        """Forget the token, or only if *rejected* (an ``Authorization`` value) is it."""
        ...


@dataclass(frozen=True)
class BearerToken:
    """A fixed OAuth 2.0 bearer token (RFC 6750 §2.1)."""

    token: str = field(repr=False)
    name: str | None = None

    @property
    def principal(self) -> str:
        if self.name:
            return self.name
        return "bearer:" + hashlib.sha256(self.token.encode()).hexdigest()[:12]

    def authorization(self) -> str:
        return f"Bearer {self.token}"


@dataclass(frozen=True)
class BasicAuth:
    """HTTP Basic credentials (RFC 7617)."""

    username: str
    password: str = field(repr=False)

    @property
    def principal(self) -> str:
        return f"basic:{self.username}"

    def authorization(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def requires_access_token(endpoint: Mapping[str, Any]) -> bool | None:
    """Return the SMART Imaging Access ``requires-access-token`` flag of an Endpoint.

    Parameters
    ----------
    endpoint : mapping
        An Endpoint resource (contained or external), as JSON.

    Returns
    -------
    bool or None
        ``True``: send the token that authorised the FHIR request; ``False``: the address
        is a capability URL, send no token; ``None``: the Endpoint does not say.
    """
    for extension in endpoint.get("extension") or ():
        if not isinstance(extension, Mapping):
            continue
        url = str(extension.get("url", ""))
        if url == REQUIRES_ACCESS_TOKEN or url.endswith("/requires-access-token"):
            value = extension.get("valueBoolean")
            return value if isinstance(value, bool) else None
    return None


class AuthMap:
    """Credentials keyed by origin.

    Parameters
    ----------
    mapping : mapping of str to Credential, optional
        ``{url or origin: credential}``; only the origin of each key is kept.

    Examples
    --------
    >>> auth = AuthMap({"https://fhir.example.org": BearerToken("t")})
    >>> auth.headers_for("https://fhir.example.org/Patient")
    {'Authorization': 'Bearer t'}
    >>> auth.headers_for("https://evil.example.net/steal")
    {}
    """

    def __init__(self, mapping: Mapping[str, Credential] | None = None) -> None:
        self._by_origin: dict[str, Credential] = {}
        for url, credential in (mapping or {}).items():
            self.add(url, credential)

    def add(self, url: str, credential: Credential) -> None:
        """Bind *credential* to the origin of *url*."""
        if not isinstance(credential, Credential):
            raise AuthError(f"{type(credential).__name__} is not a credential")
        self._by_origin[origin_of(url)] = credential

    def credential_for(self, url: str) -> Credential | None:
        """Return the credential bound to *url*'s origin, or ``None``."""
        try:
            return self._by_origin.get(origin_of(url))
        except AuthError:
            return None

    def headers_for(self, url: str) -> dict[str, str]:
        """Return the headers to add to a request to *url* (empty if unmapped)."""
        credential = self.credential_for(url)
        if credential is None:
            return {}
        return {"Authorization": credential.authorization()}

    def requests_auth(self) -> OriginAuth:
        """This map as a ``requests`` auth hook (with the one retry after ``401``).

        Examples
        --------
        >>> session.get(url, auth=auth_map.requests_auth())  # doctest: +SKIP
        """
        return OriginAuth(self)

    def principal_for(self, url: str) -> str:
        """Return the non-secret principal for *url* (``"anonymous"`` if unmapped)."""
        credential = self.credential_for(url)
        return "anonymous" if credential is None else credential.principal

    def origins(self) -> list[str]:
        """Return the mapped origins."""
        return sorted(self._by_origin)

    def with_reuse(self, fhir_base: str, dicomweb_base: str) -> AuthMap:
        """Return a copy that also sends the FHIR server's credential to *dicomweb_base*.

        Declare this when one token serves both services (SMART Imaging Access servers
        whose Endpoints say ``requires-access-token``, Google Cloud Healthcare, Medplum).
        The same credential object is shared, so a refreshing credential refreshes once
        and both origins have one principal (one cache partition, DESIGN.md D8).

        Raises
        ------
        AuthError
            If no credential is mapped for *fhir_base*'s origin.
        """
        credential = self.credential_for(fhir_base)
        if credential is None:
            raise AuthError(f"no credential is mapped for {origin_of(fhir_base)}; nothing to reuse")
        copy = AuthMap(self._by_origin)
        copy.add(dicomweb_base, credential)
        return copy

    def for_endpoint(
        self,
        endpoint: Mapping[str, Any] | str,
        fhir_base: str,
        *,
        requires_access_token: bool | None = None,
    ) -> AuthMap:
        """Return the credentials for DICOMweb requests to an ImagingStudy's Endpoint.

        SMART Imaging Access (argonaut smart-imaging 0.1.0, "Retrieving images"): with
        ``requires-access-token = false`` the address is a capability URL and gets no
        credential; otherwise the Endpoint's origin gets the credential mapped for it,
        which is the FHIR server's when both share an origin or when the user declared
        the reuse with :meth:`with_reuse`. An Endpoint elsewhere never receives the FHIR
        credential just because it asks for it (DESIGN.md D7): a warning names the origin
        to declare if it is trusted.

        Parameters
        ----------
        endpoint : mapping or str
            The Endpoint resource, or just its ``address``.
        fhir_base : str
            The FHIR base URL the ImagingStudy came from.
        requires_access_token : bool, optional
            The flag, when the caller already read it; otherwise it is read from the
            Endpoint's extension (see :func:`requires_access_token`).

        Returns
        -------
        AuthMap
            At most the Endpoint's origin, bound to the credential to send there. Every
            other origin (bulk data URIs elsewhere, redirects) gets nothing.
        """
        if isinstance(endpoint, Mapping):
            address = str(endpoint.get("address") or "")
            flag = (
                requires_access_token
                if requires_access_token is not None
                else _endpoint_flag(endpoint)
            )
        else:
            address, flag = str(endpoint), requires_access_token
        try:
            origin = origin_of(address)
        except AuthError:
            return AuthMap()
        if flag is False:
            return AuthMap()
        credential = self._by_origin.get(origin)
        if credential is None:
            if flag is True and self.credential_for(fhir_base) is not None:
                log.warning(
                    "the Endpoint at %s asks for the FHIR server's token, but that origin is "
                    "not mapped; no credential is sent. If you trust it, use "
                    "auth.with_reuse(%r, %r)",
                    origin,
                    fhir_base,
                    origin,
                )
            return AuthMap()
        return AuthMap({origin: credential})

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{o!r}: {type(c).__name__}({c.principal})" for o, c in self._by_origin.items()
        )
        return f"AuthMap({{{shown}}})"


_endpoint_flag = requires_access_token  # for_endpoint's keyword argument shadows the name


class OriginAuth(AuthBase):
    """``requests`` auth: the :class:`AuthMap`'s header for each request's own origin.

    Sets ``Authorization`` from :meth:`AuthMap.headers_for` (and removes any other), and
    for a :class:`Refreshable` credential retries once after ``401`` with a new token
    (see the module docstring). Call it again on each redirect hop
    (``Session.rebuild_auth``) to re-derive the header for that hop's origin.

    Parameters
    ----------
    auth : AuthMap
    """

    def __init__(self, auth: AuthMap) -> None:
        self.auth = auth

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers.pop("Authorization", None)
        credential = self.auth.credential_for(request.url or "")
        if credential is None:
            return request
        request.headers["Authorization"] = credential.authorization()
        if isinstance(credential, Refreshable) and self._retry not in request.hooks["response"]:
            request.register_hook("response", self._retry)
        return request

    def _retry(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        """The response hook: one new token and one more try after a ``401``."""
        request = response.request
        if response.status_code != 401 or getattr(request, "_imagingkit_retry", False):
            return response
        sent = request.headers.get("Authorization")
        credential = self.auth.credential_for(request.url or "")
        if sent is None or not isinstance(credential, Refreshable):
            return response  # this hop carried no credential of ours (another origin)
        if not isinstance(request.body, (bytes, str, type(None))):
            return response  # a streamed body cannot be sent again
        credential.invalidate(sent)  # only if no other thread already replaced it
        log.info("401 from %s: retrying once with a new token", origin_of(request.url or ""))
        response.content  # noqa: B018 - read it, so the connection goes back to the pool
        response.close()
        again = request.copy()
        again._imagingkit_retry = True
        again.headers["Authorization"] = credential.authorization()  # fetches: may raise
        if response.raw is not None:
            extract_cookies_to_jar(again._cookies, request, response.raw)
            again.prepare_cookies(again._cookies)
        retried: requests.Response = response.connection.send(again, **kwargs)
        retried.history.append(response)
        retried.request = again
        return retried
