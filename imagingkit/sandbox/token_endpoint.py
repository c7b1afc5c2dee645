"""The sandbox's authorization server for SMART Backend Services (``imagingkit serve --auth``).

:class:`AuthServer` is an app component mounted at ``/auth``:

====================================================  =====================================
``POST /auth/token``                                  token endpoint (client_credentials)
``GET  /auth/``, ``/fhir/.well-known/smart-configuration``  SMART discovery document
====================================================  =====================================

A client authenticates with a JWT it signs with its private key (``private_key_jwt``,
RFC 7523 §2.2; SMART App Launch 2.2 Backend Services). The endpoint checks, in order:
``grant_type=client_credentials``; ``client_assertion_type`` is the JWT-bearer URN; the
assertion's ``iss`` is a registered client and ``sub`` equals it; the signature verifies
with one of the client's registered public keys (``RS384`` or ``ES384``, selected by
``kid``); ``aud`` is this token endpoint's URL as the client reached it; ``exp`` is in the
future and at most five minutes (plus one minute of clock skew) away; ``jti`` was never
seen before (replays are refused until the assertion expires). Failures answer 400 with
an OAuth error object (RFC 6749 §5.2): ``invalid_request``, ``invalid_client``,
``invalid_scope`` or ``unsupported_grant_type`` with an ``error_description``.

Clients are registered in a JSON file (``--auth FILE``)::

    {"clients": [
      {"client_id": "pacs-sync", "patients": "*", "scope": "system/*.cruds",
       "jwks": {"keys": [{"kty": "EC", "crv": "P-384", "x": "…", "y": "…", "kid": "…"}]}},
      {"client_id": "study-app", "patients": ["pat-1"], "scope": "patient/*.rs system/*.rs",
       "jwks": {"keys": […]}}
    ]}

``patients`` is ``"*"`` (every patient) or the Patient ids the client is pre-authorised
for; ``scope`` is the most it may ask for. A client with a patient list may only read and
search; its ``patient/…`` scopes need exactly one patient, which the token response
names as the ``patient`` context. ``system/…`` and ``patient/…`` scopes are never granted
together. Without a file, ``--auth`` generates a registry and the clients' private keys in
``DATA_DIR/auth/<store>/`` (see :meth:`AuthServer.for_sandbox`). Issued tokens are opaque,
live :attr:`AuthServer.token_lifetime` seconds (300 by default) and are what the guards of
:mod:`imagingkit.sandbox.authz` check.

**FHIRcast.** ``scope`` may also hold FHIRcast scopes (FHIRcast 3.0.0 ``2-2``,
``fhircast/Patient-open.read``, ``fhircast/*.write``, ``fhircast/*.*``), and a client may
ask for them with or without resource scopes (``system/*.rs fhircast/*.read``). The
served hub (:class:`~imagingkit.fhircast.hub.FhircastHub`) then checks its bearer tokens
against the same :class:`~imagingkit.sandbox.authz.TokenStore`: subscribing needs the
``read`` scope of each event (events without it are not granted; none: 403), publishing
the ``write`` scope of the event, and the lease never outlives the token (``2-4``). The
token response names the hub as ``hub.url`` (``2-1``; there is no ``hub.topic``: a
backend client has no user session, the applications agree on topics themselves).

FHIRcast scopes are **never granted to a client limited to some patients**: FHIRcast has
no patient-scoped scopes, and a hub cannot screen a session's context by patient (a
``Patient-open`` carries whichever patient the user opened). Such a registry entry is
refused, and so is such a token request (``invalid_scope``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from imagingkit.errors import AuthError, InvalidInputError, SandboxError
from imagingkit.fhircast.auth import TokenInfo
from imagingkit.sandbox.authz import (
    FhircastScope,
    Grant,
    Scope,
    TokenStore,
    parse_fhircast_scopes,
    parse_scopes,
    valid_patient_id,
)
from imagingkit.sandbox.guards import protect
from imagingkit.server.app import Component, RouteList
from imagingkit.server.base import BaseHandler
from imagingkit.smart import (
    ALGORITHMS,
    CLIENT_ASSERTION_TYPE,
    MAX_ASSERTION_LIFETIME,
    generate_private_key,
    public_jwk,
    unverified_claims,
    verify_jwt,
)

if TYPE_CHECKING:
    from imagingkit.fhircast.hub import FhircastHub
    from imagingkit.sandbox.fhir.store import FhirStore

__all__ = ["AuthServer", "ClientRegistry", "FhircastTokens", "RegisteredClient", "TokenIssuer"]

log = logging.getLogger("imagingkit.sandbox.auth")

#: Clock skew tolerated on ``exp`` (seconds).
CLOCK_SKEW = 60
_SMART_IMAGING = "http://fhir.org/argonaut/smart-imaging/capabilities/backend-services"


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class RegisteredClient:
    """A backend client the sandbox knows.

    Attributes
    ----------
    client_id : str
    jwks : tuple of dict
        Its public keys (RFC 7517 JWK Set ``keys``).
    scopes : tuple of Scope
        The most it may be granted.
    patients : frozenset of str or None
        The Patients it is pre-authorised for (``None``: all).
    fhircast : tuple of FhircastScope
        The most it may be granted on the FHIRcast hub (only without a patient list).
    """

    client_id: str
    jwks: tuple[Mapping[str, Any], ...]
    scopes: tuple[Scope, ...]
    patients: frozenset[str] | None
    fhircast: tuple[FhircastScope, ...] = ()

    @classmethod
    def from_json(cls, item: Any, where: str) -> RegisteredClient:
        """Read one ``clients[]`` entry; *where* names it in error messages.

        Raises
        ------
        SandboxError
            Naming the entry and the bad field.
        """
        if not isinstance(item, Mapping):
            raise SandboxError(f"{where}: a client must be a JSON object")
        client_id = item.get("client_id")
        if not isinstance(client_id, str) or not client_id.strip():
            raise SandboxError(f"{where}: client_id must be a non-empty string")
        keys = (item.get("jwks") or {}).get("keys") if isinstance(item.get("jwks"), dict) else None
        if not isinstance(keys, list) or not keys:
            raise SandboxError(f"{where} ({client_id}): jwks must hold a non-empty 'keys' list")
        for key in keys:
            if not isinstance(key, Mapping) or any(k in key for k in ("d", "p", "q")):
                raise SandboxError(
                    f"{where} ({client_id}): jwks must hold public keys only (found a private key)"
                )
        scope_text = str(item.get("scope", ""))
        try:
            scopes, _ = parse_scopes(scope_text)
            fhircast = parse_fhircast_scopes(scope_text)
        except InvalidInputError as exc:
            raise SandboxError(f"{where} ({client_id}): {exc}") from None
        if not scopes and not fhircast:
            raise SandboxError(
                f"{where} ({client_id}): scope names no resource scope (nor a FHIRcast scope)"
            )
        raw_patients = item.get("patients")
        patients: frozenset[str] | None
        if raw_patients == "*":
            patients = None
        elif isinstance(raw_patients, list) and raw_patients:
            bad = [p for p in raw_patients if not isinstance(p, str) or not valid_patient_id(p)]
            if bad:
                raise SandboxError(f"{where} ({client_id}): {bad[0]!r} is not a Patient id")
            patients = frozenset(raw_patients)
            writes = [s for s in scopes if s.permissions & set("cud")]
            if writes:
                raise SandboxError(
                    f"{where} ({client_id}): {writes[0]} — a client limited to some patients "
                    "may only read and search (use r and s)"
                )
            if fhircast:
                raise SandboxError(
                    f"{where} ({client_id}): {fhircast[0]} — a client limited to some "
                    "patients gets no FHIRcast scope (a hub cannot screen context by patient)"
                )
        else:
            raise SandboxError(
                f'{where} ({client_id}): patients must be "*" or a non-empty list of Patient ids'
            )
        keys_ = tuple(dict(k) for k in keys)
        return cls(client_id, keys_, tuple(scopes), patients, tuple(fhircast))

    @property
    def scope_text(self) -> str:
        """Every scope it may be granted, space-separated (resource, then FHIRcast)."""
        return " ".join([*(str(s) for s in self.scopes), *(str(s) for s in self.fhircast)])

    def to_json(self) -> dict[str, Any]:
        """The registry entry of this client."""
        return {
            "client_id": self.client_id,
            "patients": "*" if self.patients is None else sorted(self.patients),
            "scope": self.scope_text,
            "jwks": {"keys": [dict(k) for k in self.jwks]},
        }


class ClientRegistry:
    """The registered backend clients, by id.

    Parameters
    ----------
    clients : iterable of RegisteredClient
    """

    def __init__(self, clients: Iterable[RegisteredClient]) -> None:
        self._clients: dict[str, RegisteredClient] = {}
        for client in clients:
            if client.client_id in self._clients:
                raise SandboxError(f"client {client.client_id!r} is registered twice")
            self._clients[client.client_id] = client

    @classmethod
    def from_file(cls, path: Path) -> ClientRegistry:
        """Read a registry file (format in the module docstring).

        Raises
        ------
        SandboxError
            If the file is missing, not JSON, or an entry is malformed (named).
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise SandboxError(f"cannot read the client registry {str(path)!r}: {exc}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SandboxError(f"the client registry {str(path)!r} is not JSON: {exc}") from None
        clients = data.get("clients") if isinstance(data, dict) else None
        if not isinstance(clients, list):
            raise SandboxError(f"the client registry {str(path)!r} needs a 'clients' list")
        return cls(
            RegisteredClient.from_json(item, f"{Path(path).name} clients[{i}]")
            for i, item in enumerate(clients)
        )

    def get(self, client_id: str) -> RegisteredClient | None:
        """The client registered under *client_id*, or None."""
        return self._clients.get(client_id)

    def __iter__(self) -> Any:
        return iter(self._clients.values())

    def to_json(self) -> dict[str, Any]:
        """The registry as the JSON of a registry file."""
        return {"clients": [c.to_json() for c in self._clients.values()]}


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def generate_registry(folder: Path, patient_ids: Sequence[str]) -> ClientRegistry:
    """Create a demonstration registry and its clients' private keys in *folder*.

    Clients: ``imagingkit-system`` (every patient, ``system/*.cruds``, and on the
    FHIRcast hub ``fhircast/*.read fhircast/*.write``: it may follow and drive any
    session) and, for each of *patient_ids*, ``imagingkit-patient-<n>`` (that patient
    only, ``patient/*.rs`` and ``system/*.rs``; no FHIRcast scope, see the module
    docstring). Each private key is ``<client_id>.pem`` (mode 0600, ES384); the registry
    is ``clients.json``. A registry generated before FHIRcast scopes existed is reused
    as it is: delete the folder to get the new one.
    """
    folder.mkdir(parents=True, exist_ok=True)
    clients = []
    plan: list[tuple[str, frozenset[str] | None, str]] = [
        ("imagingkit-system", None, "system/*.cruds fhircast/*.read fhircast/*.write")
    ]
    plan += [
        (f"imagingkit-patient-{n}", frozenset({pid}), "patient/*.rs system/*.rs")
        for n, pid in enumerate(patient_ids, start=1)
    ]
    for client_id, patients, scope in plan:
        pem = generate_private_key("ES384")
        _write_private(folder / f"{client_id}.pem", pem)
        scopes, _ = parse_scopes(scope)
        fhircast = tuple(parse_fhircast_scopes(scope))
        jwks = (public_jwk(pem),)
        clients.append(RegisteredClient(client_id, jwks, tuple(scopes), patients, fhircast))
    registry = ClientRegistry(clients)
    tmp = folder / "clients.json.tmp"
    tmp.write_text(json.dumps(registry.to_json(), indent=2), encoding="utf-8")
    tmp.replace(folder / "clients.json")
    return registry


# --------------------------------------------------------------------------- issuing


class _Refusal(Exception):
    """An OAuth error response (RFC 6749 §5.2)."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


class TokenIssuer:
    """Checks token requests and issues tokens (the logic of ``POST /auth/token``).

    Parameters
    ----------
    registry : ClientRegistry
    tokens : TokenStore
    token_lifetime : float
        Seconds an access token lives.
    clock : callable
        Returns epoch seconds (for tests).
    """

    def __init__(
        self,
        registry: ClientRegistry,
        tokens: TokenStore,
        *,
        token_lifetime: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.tokens = tokens
        self.token_lifetime = float(token_lifetime)
        self.clock = clock
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def token_response(
        self, form: Mapping[str, str], token_url: str, *, hub_url: str | None = None
    ) -> dict[str, Any]:
        """Answer a token request (its form fields) made at *token_url*.

        Parameters
        ----------
        form : mapping
        token_url : str
            The token endpoint's URL as the client reached it (the assertion's ``aud``).
        hub_url : str, optional
            The FHIRcast hub checking these tokens, named in a response that grants
            FHIRcast scopes (FHIRcast 3.0.0 ``2-1`` ``hub.url``).

        Returns
        -------
        dict
            The RFC 6749 §5.1 response: ``access_token``, ``token_type``, ``expires_in``,
            ``scope``, for a patient context ``patient``, and ``hub.url`` with FHIRcast
            scopes.

        Raises
        ------
        _Refusal
            With the OAuth ``error`` code and a description.
        """
        if form.get("grant_type") != "client_credentials":
            raise _Refusal(
                "unsupported_grant_type",
                f"grant_type {form.get('grant_type')!r} is not supported; use client_credentials",
            )
        if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            raise _Refusal(
                "invalid_request", f"client_assertion_type must be {CLIENT_ASSERTION_TYPE}"
            )
        assertion = form.get("client_assertion")
        if not assertion:
            raise _Refusal("invalid_request", "client_assertion is missing")
        client = self._authenticate(assertion, token_url, form.get("client_id"))
        grant = self._grant(client, form.get("scope", ""))
        token = self.tokens.issue(grant)
        log.info("token for client %s (scope %s)", client.client_id, grant.scope_text)
        response: dict[str, Any] = {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": int(self.token_lifetime),
            "scope": grant.scope_text,
        }
        if grant.patient is not None:
            response["patient"] = grant.patient
        if grant.fhircast and hub_url is not None:
            response["hub.url"] = hub_url
        return response

    def _authenticate(
        self, assertion: str, token_url: str, form_client_id: str | None
    ) -> RegisteredClient:
        try:
            claimed = unverified_claims(assertion)
        except AuthError as exc:
            raise _Refusal("invalid_client", exc.message) from None
        issuer = claimed.get("iss")
        client = self.registry.get(issuer) if isinstance(issuer, str) else None
        if client is None:
            raise _Refusal("invalid_client", f"client {issuer!r} is not registered")
        if form_client_id is not None and form_client_id != client.client_id:
            raise _Refusal("invalid_client", "client_id does not match the assertion's iss")
        try:
            _, claims = verify_jwt(assertion, client.jwks, algorithms=ALGORITHMS)
        except AuthError as exc:
            raise _Refusal("invalid_client", exc.message) from None
        if claims.get("sub") != client.client_id:
            raise _Refusal("invalid_client", "the assertion's sub must equal its iss")
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if token_url not in audiences:
            raise _Refusal("invalid_client", f"the assertion's aud must be {token_url}")
        now = self.clock()
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise _Refusal("invalid_client", "the assertion has no numeric exp")
        if exp <= now:
            raise _Refusal("invalid_client", "the assertion has expired")
        if exp > now + MAX_ASSERTION_LIFETIME + CLOCK_SKEW:
            raise _Refusal(
                "invalid_client", "the assertion's exp is more than five minutes in the future"
            )
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise _Refusal("invalid_client", "the assertion has no jti")
        with self._lock:
            for key in [k for k, until in self._seen.items() if until <= now]:
                del self._seen[key]
            if (client.client_id, jti) in self._seen:
                raise _Refusal("invalid_client", "this assertion's jti was already used (replay)")
            self._seen[(client.client_id, jti)] = float(exp)
        return client

    def _grant(self, client: RegisteredClient, scope_text: str) -> Grant:
        try:
            requested, _ = parse_scopes(scope_text)
            casting = [piece for s in parse_fhircast_scopes(scope_text) for piece in s.split()]
        except InvalidInputError as exc:
            raise _Refusal("invalid_scope", exc.message) from None
        if not requested and not casting:
            raise _Refusal(
                "invalid_scope",
                "scope names no resource scope (e.g. system/*.rs) nor a FHIRcast scope",
            )
        contexts = {s.context for s in requested}
        if len(contexts) > 1:
            raise _Refusal(
                "invalid_scope", "patient/ and system/ scopes cannot be granted together"
            )
        if "user" in contexts:
            raise _Refusal("invalid_scope", "user/ scopes need a user; backend clients have none")
        if casting and client.patients is not None:
            raise _Refusal(
                "invalid_scope",
                "FHIRcast scopes are not granted to clients limited to some patients "
                "(a FHIRcast session's context is not limited to a patient)",
            )
        granted = tuple(s for s in requested if any(r.covers(s) for r in client.scopes))
        granted_casting = tuple(
            dict.fromkeys(s for s in casting if any(r.covers(s) for r in client.fhircast))
        )
        if not granted and not granted_casting:
            raise _Refusal(
                "invalid_scope",
                f"client {client.client_id} may not be granted {scope_text.strip()!r}",
            )
        patient = None
        if "patient" in contexts and granted:
            if client.patients is None or len(client.patients) != 1:
                raise _Refusal(
                    "invalid_scope",
                    "patient/ scopes need one patient context; this client has none",
                )
            (patient,) = client.patients
        return Grant(
            client_id=client.client_id,
            scopes=granted,
            patients=client.patients,
            patient=patient,
            expires_at=self.clock() + self.token_lifetime,
            fhircast=granted_casting,
        )


class FhircastTokens:
    """The FHIRcast hub's token validator under ``--auth``: the token endpoint's grants.

    A :data:`~imagingkit.fhircast.auth.TokenValidator` reading the same
    :class:`~imagingkit.sandbox.authz.TokenStore` as the FHIR and DICOMweb guards. A
    known token stands for its FHIRcast scopes (FHIRcast 3.0.0 ``2-2``; none for a token
    granted only resource scopes, which the hub then refuses with 403) and its expiry,
    which caps the lease (``2-4``); unknown or expired tokens are ``None`` (401).

    Parameters
    ----------
    tokens : TokenStore
    """

    def __init__(self, tokens: TokenStore) -> None:
        self.tokens = tokens

    def __call__(self, token: str) -> TokenInfo | None:
        grant = self.tokens.lookup(token)
        if grant is None:
            return None
        return TokenInfo(
            frozenset(str(s) for s in grant.fhircast),
            expires_at=grant.expires_at,
            subject=grant.client_id,
        )

    def __repr__(self) -> str:
        return f"FhircastTokens({self.tokens!r})"


# --------------------------------------------------------------------------- handlers


class _TokenHandler(BaseHandler):
    cors_methods = "POST, OPTIONS"

    def initialize(self, issuer: TokenIssuer, hub_path: str | None) -> None:
        self.issuer = issuer
        self.hub_path = hub_path

    def post(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("Pragma", "no-cache")
        ctype = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        try:
            if ctype != "application/x-www-form-urlencoded":
                raise _Refusal(
                    "invalid_request", "send the request as application/x-www-form-urlencoded"
                )
            try:
                pairs = parse_qsl(self.request.body.decode("utf-8"), keep_blank_values=True)
            except UnicodeDecodeError:
                raise _Refusal("invalid_request", "the request body is not UTF-8") from None
            form: dict[str, str] = {}
            for name, value in pairs:
                if name in form:  # RFC 6749 §3.2: parameters MUST NOT repeat
                    raise _Refusal("invalid_request", f"parameter {name!r} is repeated")
                form[name] = value
            origin = f"{self.request.protocol}://{self.request.host}"
            hub_url = None if self.hub_path is None else origin + self.hub_path
            answer = self.issuer.token_response(form, origin + self.request.path, hub_url=hub_url)
        except _Refusal as refusal:
            log.info("token request refused: %s (%s)", refusal.error, refusal.description)
            self.set_status(400)
            answer = {"error": refusal.error, "error_description": refusal.description}
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(answer))


class _SmartConfigurationHandler(BaseHandler):
    cors_methods = "GET, OPTIONS"

    def initialize(self, auth_prefix: str, fhir_prefix: str, scopes: list[str]) -> None:
        self.auth_prefix = auth_prefix
        self.fhir_prefix = fhir_prefix
        self.scopes = scopes

    def get(self) -> None:
        origin = f"{self.request.protocol}://{self.request.host}"
        document = {
            "issuer": f"{origin}{self.auth_prefix}",
            "token_endpoint": f"{origin}{self.auth_prefix}/token",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
            "scopes_supported": self.scopes,
            "capabilities": [
                "client-confidential-asymmetric",
                "permission-v1",
                "permission-v2",
                "smart-imaging-access",
                _SMART_IMAGING,
            ],
            "associated_endpoints": [
                {"url": f"{origin}{self.fhir_prefix}", "capabilities": ["smart-imaging-access"]}
            ],
        }
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(document))


# --------------------------------------------------------------------------- component


class AuthServer:
    """The sandbox's SMART Backend Services authorization server (a server Component).

    Parameters
    ----------
    registry : ClientRegistry
        The clients it knows.
    token_lifetime : float
        Seconds an access token lives (SMART recommends at most 300).
    fhir_mount : str
        Where the FHIR store is mounted; the discovery document is also served at
        ``{fhir}/.well-known/smart-configuration`` (SMART App Launch 2.2 §2.1).

    Examples
    --------
    >>> server = AuthServer(ClientRegistry.from_file(path))       # doctest: +SKIP
    >>> components = server.protect([dicomweb_store, fhir_store])  # doctest: +SKIP
    """

    mount = "auth"

    def __init__(
        self, registry: ClientRegistry, *, token_lifetime: float = 300.0, fhir_mount: str = "fhir"
    ) -> None:
        self.registry = registry
        self.tokens = TokenStore()
        self.token_lifetime = float(token_lifetime)
        self.issuer = TokenIssuer(registry, self.tokens, token_lifetime=token_lifetime)
        self.fhir_mount = fhir_mount
        #: the FHIRcast hub :meth:`protect` gave this server's tokens to, if any
        self.hub: FhircastHub | None = None

    @classmethod
    def for_sandbox(
        cls,
        folder: Path,
        fhir: FhirStore,
        *,
        registry: ClientRegistry | None = None,
        token_lifetime: float = 300.0,
    ) -> AuthServer:
        """The server for ``imagingkit serve --auth [FILE]``.

        Parameters
        ----------
        folder : Path
            Where a generated registry lives (``DATA_DIR/auth/<store>``); reused when
            ``clients.json`` is already there.
        fhir : FhirStore
            The served FHIR store; the generated per-patient clients are for its first
            two Patients (by id).
        registry : ClientRegistry, optional
            The clients to use instead of the generated ones (``--auth FILE``).
        """
        if registry is not None:
            return cls(registry, token_lifetime=token_lifetime)
        registry_file = Path(folder) / "clients.json"
        if registry_file.is_file():
            return cls(ClientRegistry.from_file(registry_file), token_lifetime=token_lifetime)
        page = fhir.search(
            "Patient", [("_sort", "_id"), ("_count", "2")], base_url="http://sandbox.invalid/fhir"
        )
        patient_ids = [e["resource"]["id"] for e in page.get("entry", []) if "resource" in e]
        registry = generate_registry(Path(folder), patient_ids)
        log.warning("generated SMART backend clients and their keys in %s", folder)
        return cls(registry, token_lifetime=token_lifetime)

    def routes(self, prefix: str) -> RouteList:
        """The token endpoint and discovery documents (*prefix* is ``{base}auth``)."""
        prefix = prefix.rstrip("/")
        base = prefix[: -len(self.mount)] if prefix.endswith(self.mount) else prefix + "/"
        fhir_prefix = f"{base}{self.fhir_mount}"
        scopes = sorted({s for client in self.registry for s in client.scope_text.split()})
        discovery = {"auth_prefix": prefix, "fhir_prefix": fhir_prefix, "scopes": scopes}
        hub_path = None if self.hub is None else f"{base}{self.hub.mount}"
        return [
            (rf"{prefix}/token", _TokenHandler, {"issuer": self.issuer, "hub_path": hub_path}),
            (rf"{prefix}/?", _SmartConfigurationHandler, discovery),
            (
                rf"{fhir_prefix}/\.well-known/smart-configuration",
                _SmartConfigurationHandler,
                discovery,
            ),
        ]

    def protect(self, components: Sequence[Component]) -> list[Component]:
        """This server first, then *components* with their FHIR and DICOMweb stores guarded.

        (First: tornado takes the first matching route, and the FHIR store answers every
        other path below ``/fhir``.) A :class:`~imagingkit.fhircast.hub.FhircastHub`
        among them without a token validator gets :class:`FhircastTokens` of this
        server, so it answers only to this server's tokens with FHIRcast scopes.
        """
        from imagingkit.fhircast.hub import FhircastHub

        for component in components:
            if isinstance(component, FhircastHub) and component.token_validator is None:
                component.token_validator = FhircastTokens(self.tokens)
                self.hub = component
        return [self, *protect(components, self.tokens)]

    def __repr__(self) -> str:
        return f"AuthServer({len(list(self.registry))} clients, {self.tokens!r})"
