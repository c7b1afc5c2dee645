"""Credentials bound to origins (DESIGN.md D7).

A request carries a credential only if its origin (scheme, host, port) is mapped in the
:class:`AuthMap`. A hostile ``Endpoint.address`` on another origin therefore gets nothing,
and a redirect to another origin loses the credential. Secrets never appear in ``repr``,
logs, DataFrames, cache keys or exception messages: cache keys use
:attr:`Credential.principal`, a non-secret name.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

from imagingkit.errors import AuthError

__all__ = ["AuthMap", "BasicAuth", "BearerToken", "Credential", "origin_of"]


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
        raise AuthError(f"cannot bind credentials to {url!r}: not an absolute http(s) URL")
    scheme = parts.scheme.lower()
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError as exc:
        raise AuthError(f"URL {url!r} has an invalid port") from exc
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

    def principal_for(self, url: str) -> str:
        """Return the non-secret principal for *url* (``"anonymous"`` if unmapped)."""
        credential = self.credential_for(url)
        return "anonymous" if credential is None else credential.principal

    def origins(self) -> list[str]:
        """Return the mapped origins."""
        return sorted(self._by_origin)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{o!r}: {type(c).__name__}({c.principal})" for o, c in self._by_origin.items()
        )
        return f"AuthMap({{{shown}}})"
