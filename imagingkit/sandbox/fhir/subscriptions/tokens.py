"""Websocket binding tokens (Subscriptions Backport IG, channels: ``$get-ws-binding-token``).

A browser cannot send an ``Authorization`` header on a websocket, so a client that may
read a Subscription asks for a short-lived token and sends it in ``bind-with-token``.
Tokens are 256 random bits (``secrets.token_urlsafe(32)``), kept only as their SHA-256,
expire after :data:`.BINDING_TOKEN_LIFETIME` seconds, may be used again until then (a
reconnect re-binds), and name one or several Subscriptions. Under ``--auth`` a token
remembers the patients its requester may see (:class:`Audience`), and deliveries through
it are screened with the same compartment rules as reads (:mod:`imagingkit.sandbox.authz`).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from imagingkit.sandbox.fhir.subscriptions.definitions import BINDING_TOKEN_LIFETIME

__all__ = ["Audience", "Binding", "BindingTokens"]

_MAX_TOKENS = 10_000


@dataclass(frozen=True)
class Audience:
    """Who receives deliveries: ``patients=None`` means every patient (no ``--auth`` or an
    unrestricted grant); otherwise only resources in those Patients' compartments."""

    patients: frozenset[str] | None = None
    readable: frozenset[str] | None = None  # resource types the grant may read; None: all

    @property
    def restricted(self) -> bool:
        """Whether deliveries must be screened."""
        return self.patients is not None or self.readable is not None


#: the audience of a server without ``--auth``
EVERYONE = Audience()


@dataclass(frozen=True)
class Binding:
    """What a binding token grants.

    Attributes
    ----------
    subscriptions : tuple of str
        The Subscription ids it binds.
    expires_at : float
        Epoch seconds.
    audience : Audience
    """

    subscriptions: tuple[str, ...]
    expires_at: float
    audience: Audience = EVERYONE


class BindingTokens:
    """Issues and checks binding tokens (in memory: a restart forgets them).

    Parameters
    ----------
    lifetime : float
        Seconds a token stays valid.
    """

    def __init__(self, lifetime: float = BINDING_TOKEN_LIFETIME) -> None:
        self.lifetime = float(lifetime)
        self._tokens: dict[str, Binding] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(token: str) -> str:
        return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()

    def issue(
        self, subscriptions: Sequence[str], audience: Audience = EVERYONE
    ) -> tuple[str, Binding]:
        """Return a new token for *subscriptions* and what it grants."""
        now = time.time()
        binding = Binding(tuple(subscriptions), now + self.lifetime, audience)
        token = secrets.token_urlsafe(32)
        with self._lock:
            for key in [k for k, b in self._tokens.items() if b.expires_at <= now]:
                del self._tokens[key]
            if len(self._tokens) >= _MAX_TOKENS:  # bounded: drop the oldest
                oldest = min(self._tokens, key=lambda k: self._tokens[k].expires_at)
                del self._tokens[oldest]
            self._tokens[self._key(token)] = binding
        return token, binding

    def lookup(self, token: str) -> Binding | None:
        """The binding of a valid token, or None (unknown or expired)."""
        with self._lock:
            binding = self._tokens.get(self._key(token))
        if binding is None or binding.expires_at <= time.time():
            return None
        return binding
