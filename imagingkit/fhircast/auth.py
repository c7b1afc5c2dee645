"""Bearer-token checks for the FHIRcast hub (``2-2`` FHIRcast scopes).

The hub does not issue tokens. It asks a :data:`TokenValidator` what a bearer token
grants: its scopes (``fhircast/{Event}.read|write``), when it expires (the lease is capped
at that time, ``2-4``) and, optionally, which topics it may use. A SMART authorization
server would be wrapped as a validator; the sandbox uses :class:`StaticTokenValidator`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

__all__ = ["StaticTokenValidator", "TokenInfo", "TokenValidator"]


@dataclass(frozen=True)
class TokenInfo:
    """What one bearer token grants.

    Attributes
    ----------
    scopes : frozenset of str
        SMART scopes, e.g. ``{"fhircast/ImagingStudy-open.read", "fhircast/*.write"}``.
    expires_at : float or None
        Expiry as a POSIX time (``time.time()``); ``None`` never expires.
    topics : frozenset of str or None
        Topics the token may use; ``None`` allows every topic.
    subject : str or None
        Who the token belongs to (for logs; never the token itself).
    """

    scopes: frozenset[str]
    expires_at: float | None = None
    topics: frozenset[str] | None = None
    subject: str | None = None

    def allows_topic(self, topic: str) -> bool:
        """Return whether the token may use *topic*."""
        return self.topics is None or topic in self.topics

    def seconds_left(self, now: float | None = None) -> float | None:
        """Return seconds until expiry, or ``None`` if it never expires."""
        if self.expires_at is None:
            return None
        return self.expires_at - (time.time() if now is None else now)


#: a callable returning what a token grants, or ``None`` if the token is unknown/invalid
TokenValidator = Callable[[str], "TokenInfo | None"]


class StaticTokenValidator:
    """A fixed map of tokens, for the sandbox and tests.

    Parameters
    ----------
    tokens : mapping
        ``token → TokenInfo``, or ``token → "space separated scopes"``.

    Examples
    --------
    >>> check = StaticTokenValidator({"t1": "fhircast/*.read fhircast/Patient-open.write"})
    >>> sorted(check("t1").scopes)
    ['fhircast/*.read', 'fhircast/Patient-open.write']
    >>> check("nope") is None
    True
    """

    def __init__(self, tokens: Mapping[str, TokenInfo | str | Iterable[str]]) -> None:
        self._tokens: dict[str, TokenInfo] = {}
        for token, info in tokens.items():
            if isinstance(info, TokenInfo):
                self._tokens[token] = info
            elif isinstance(info, str):
                self._tokens[token] = TokenInfo(frozenset(info.split()))
            else:
                self._tokens[token] = TokenInfo(frozenset(info))

    def __call__(self, token: str) -> TokenInfo | None:
        info = self._tokens.get(token)
        if info is None:
            return None
        left = info.seconds_left()
        if left is not None and left <= 0:
            return None
        return info
