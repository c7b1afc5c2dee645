"""SMART Backend Services: signed client assertions and a self-refreshing token credential.

A backend client proves its identity to the token endpoint with a JWT it signs with its
own private key (``private_key_jwt``, RFC 7523 §2.2) and receives a short-lived bearer
token (SMART App Launch 2.2 "Backend Services"; OAuth 2.0 ``client_credentials``,
RFC 6749 §4.4). This module holds:

- the JSON Web Signature compact form for the two algorithms SMART requires servers to
  support, ``RS384`` (RSASSA-PKCS1-v1_5 with SHA-384) and ``ES384`` (ECDSA P-384 with
  SHA-384), RFC 7515 §3.1 and RFC 7518 §3.3-3.4, on the ``cryptography`` package;
- JSON Web Keys for the public halves (RFC 7517, thumbprints RFC 7638), which is what a
  client registers with an authorization server;
- :class:`SmartBackendServices`, a :class:`~imagingkit.auth.Credential` that obtains a
  token on first use and again shortly before it expires, safely from many threads.

Secrets (private keys, assertions, access tokens) never appear in ``repr``, logs or
exception messages.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from imagingkit.errors import AuthError

__all__ = [
    "ALGORITHMS",
    "CLIENT_ASSERTION_TYPE",
    "SmartBackendServices",
    "client_assertion",
    "generate_private_key",
    "jwk_thumbprint",
    "load_private_key",
    "public_jwk",
    "sign_jwt",
    "unverified_claims",
    "verify_jwt",
]

log = logging.getLogger("imagingkit.smart")

#: The signature algorithms of SMART App Launch 2.2 Backend Services (RS384 and ES384).
ALGORITHMS = ("RS384", "ES384")
#: ``client_assertion_type`` of a JWT client assertion (RFC 7523 §2.2).
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Longest assertion lifetime SMART allows ("no more than five minutes in the future").
MAX_ASSERTION_LIFETIME = 300
_EC_COORDINATE_BYTES = 48  # P-384
_MIN_RSA_BITS = 2048

PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


# --------------------------------------------------------------------------- encoding


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str, what: str) -> bytes:
    if not isinstance(text, str) or not text.isascii():
        raise AuthError(f"{what} is not base64url text")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise AuthError(f"{what} is not base64url text") from None


def _int_bytes(value: int, length: int | None = None) -> bytes:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return value.to_bytes(size, "big")


def _compact_json(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=False).encode("utf-8")


# --------------------------------------------------------------------------- keys


def generate_private_key(alg: str = "ES384") -> bytes:
    """Generate a private key for *alg* and return it as unencrypted PKCS#8 PEM.

    Parameters
    ----------
    alg : {"ES384", "RS384"}
        ``ES384`` gives a P-384 key (RFC 7518 §3.4), ``RS384`` a 3072-bit RSA key.

    Returns
    -------
    bytes
        The PEM text; keep it secret (it identifies the client).
    """
    key: PrivateKey
    if alg == "ES384":
        key = ec.generate_private_key(ec.SECP384R1())
    elif alg == "RS384":
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        raise AuthError(f"unsupported signing algorithm {alg!r}; use one of {ALGORITHMS}")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(key: PrivateKey | bytes | str, password: bytes | None = None) -> PrivateKey:
    """Return a usable private key from PEM text (or a key object, unchanged).

    Raises
    ------
    AuthError
        If the text is not a PEM private key, or is a key type SMART cannot use (only
        RSA of at least 2048 bits and EC P-384 are accepted).
    """
    if isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        loaded: Any = key
    else:
        data = key.encode("utf-8") if isinstance(key, str) else bytes(key)
        try:
            loaded = serialization.load_pem_private_key(data, password=password)
        except (ValueError, TypeError) as exc:
            # the message of cryptography never quotes the key material
            raise AuthError(f"the private key is not a readable PEM private key: {exc}") from None
    _algorithm_of(loaded)  # refuses unusable key types
    return loaded


def _algorithm_of(key: PrivateKey | PublicKey) -> str:
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        if key.key_size < _MIN_RSA_BITS:
            raise AuthError(f"an RSA key of {key.key_size} bits is too short (≥ {_MIN_RSA_BITS})")
        return "RS384"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        if not isinstance(key.curve, ec.SECP384R1):
            raise AuthError(f"an EC key on curve {key.curve.name} cannot sign ES384 (needs P-384)")
        return "ES384"
    raise AuthError(f"a {type(key).__name__} cannot sign RS384 or ES384")


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """Return the RFC 7638 SHA-256 thumbprint of a public JWK (base64url).

    Only the required members take part (``e kty n`` for RSA, ``crv kty x y`` for EC), in
    lexicographic order, without whitespace (RFC 7638 §3.2-3.3).
    """
    kty = jwk.get("kty")
    members = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}.get(str(kty))
    if members is None:
        raise AuthError(f"cannot take the thumbprint of a JWK with kty {kty!r}")
    try:
        canonical = {m: str(jwk[m]) for m in members}
    except KeyError as exc:
        raise AuthError(f"the {kty} JWK lacks its {exc.args[0]!r} member") from None
    digest = hashlib.sha256(json.dumps(canonical, separators=(",", ":")).encode("utf-8"))
    return _b64url(digest.digest())


def public_jwk(
    key: PrivateKey | PublicKey | bytes | str, *, kid: str | None = None
) -> dict[str, str]:
    """Return the public JWK of *key*, as a client registers it (RFC 7517 §4, RFC 7518 §6).

    Parameters
    ----------
    key : private key, public key, or PEM text of a private key
    kid : str, optional
        Key id; the RFC 7638 thumbprint when omitted.

    Returns
    -------
    dict
        ``kty``, the public parameters, ``alg``, ``use="sig"``, ``key_ops=["verify"]`` and
        ``kid``. Never any private parameter.
    """
    if isinstance(key, (bytes, str)):
        key = load_private_key(key)
    public: PublicKey = (
        key.public_key()
        if isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey))
        else key
    )
    alg = _algorithm_of(public)
    jwk: dict[str, str]
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        jwk = {
            "kty": "RSA",
            "n": _b64url(_int_bytes(numbers.n)),
            "e": _b64url(_int_bytes(numbers.e)),
        }
    else:
        point = public.public_numbers()
        jwk = {
            "kty": "EC",
            "crv": "P-384",
            "x": _b64url(_int_bytes(point.x, _EC_COORDINATE_BYTES)),
            "y": _b64url(_int_bytes(point.y, _EC_COORDINATE_BYTES)),
        }
    jwk.update({"alg": alg, "use": "sig", "kid": kid or jwk_thumbprint(jwk)})
    return jwk


def _public_key_from_jwk(jwk: Mapping[str, Any]) -> PublicKey:
    kty = jwk.get("kty")
    if kty == "RSA":
        n = int.from_bytes(_b64url_decode(jwk.get("n", ""), "JWK member 'n'"), "big")
        e = int.from_bytes(_b64url_decode(jwk.get("e", ""), "JWK member 'e'"), "big")
        try:
            rsa_key = rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError as exc:
            raise AuthError(f"the RSA JWK is not a valid public key: {exc}") from None
        _algorithm_of(rsa_key)
        return rsa_key
    if kty == "EC":
        if jwk.get("crv") != "P-384":
            raise AuthError(f"an EC JWK on curve {jwk.get('crv')!r} cannot verify ES384")
        x = int.from_bytes(_b64url_decode(jwk.get("x", ""), "JWK member 'x'"), "big")
        y = int.from_bytes(_b64url_decode(jwk.get("y", ""), "JWK member 'y'"), "big")
        try:
            return ec.EllipticCurvePublicNumbers(x, y, ec.SECP384R1()).public_key()
        except ValueError as exc:
            raise AuthError(f"the EC JWK is not a point on P-384: {exc}") from None
    raise AuthError(f"JWK kty {kty!r} is not supported (RSA or EC)")


# --------------------------------------------------------------------------- JWS


def sign_jwt(
    claims: Mapping[str, Any],
    key: PrivateKey | bytes | str,
    *,
    kid: str | None = None,
    alg: str | None = None,
) -> str:
    """Sign *claims* as a JWS in compact serialisation (RFC 7515 §7.1).

    Parameters
    ----------
    claims : mapping
        The JWT claims set (RFC 7519 §4).
    key : private key or PEM text
    kid : str, optional
        ``kid`` header; the key's RFC 7638 thumbprint when omitted.
    alg : {"RS384", "ES384"}, optional
        Must match the key type; inferred from it when omitted.

    Returns
    -------
    str
        ``header.payload.signature``, each part base64url without padding.
    """
    private = load_private_key(key)
    key_alg = _algorithm_of(private)
    if alg is not None and alg != key_alg:
        raise AuthError(f"a key for {key_alg} cannot sign {alg}")
    header = {"alg": key_alg, "kid": kid or public_jwk(private)["kid"], "typ": "JWT"}
    signing_input = f"{_b64url(_compact_json(header))}.{_b64url(_compact_json(claims))}"
    data = signing_input.encode("ascii")
    if isinstance(private, rsa.RSAPrivateKey):
        signature = private.sign(data, padding.PKCS1v15(), hashes.SHA384())
    else:
        # RFC 7518 §3.4: the JWS signature is R and S as fixed-width big-endian octets
        r, s = decode_dss_signature(private.sign(data, ec.ECDSA(hashes.SHA384())))
        signature = _int_bytes(r, _EC_COORDINATE_BYTES) + _int_bytes(s, _EC_COORDINATE_BYTES)
    return f"{signing_input}.{_b64url(signature)}"


def _verify_signature(public: PublicKey, alg: str, data: bytes, signature: bytes) -> bool:
    try:
        if alg == "RS384" and isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, data, padding.PKCS1v15(), hashes.SHA384())
            return True
        if alg == "ES384" and isinstance(public, ec.EllipticCurvePublicKey):
            if len(signature) != 2 * _EC_COORDINATE_BYTES:
                return False
            r = int.from_bytes(signature[:_EC_COORDINATE_BYTES], "big")
            s = int.from_bytes(signature[_EC_COORDINATE_BYTES:], "big")
            public.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA384()))
            return True
    except InvalidSignature:
        return False
    return False


def unverified_claims(token: str) -> dict[str, Any]:
    """Return a compact JWS's claims *without* checking its signature.

    Only for choosing which keys to verify with (the ``iss`` of a client assertion);
    trust nothing in it until :func:`verify_jwt` succeeds.

    Raises
    ------
    AuthError
        If the token is not a compact JWS with a JSON object payload.
    """
    if not isinstance(token, str) or token.count(".") != 2:
        raise AuthError("the JWT is not in compact serialisation (header.payload.signature)")
    try:
        claims = json.loads(_b64url_decode(token.split(".")[1], "the JWT payload"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AuthError("the JWT payload is not JSON") from None
    if not isinstance(claims, dict):
        raise AuthError("the JWT payload must be a JSON object")
    return claims


def verify_jwt(
    token: str,
    jwks: Sequence[Mapping[str, Any]],
    *,
    algorithms: Sequence[str] = ALGORITHMS,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check a compact JWS against a set of public JWKs and return ``(header, claims)``.

    The ``alg`` header must be one of *algorithms* (never ``none`` nor an HMAC, RFC 8725
    §3.1) and match the key type; with a ``kid`` header only the key of that id is
    tried. Claims are *not* checked here (see the caller for ``iss``, ``aud``, ``exp`` …).

    Raises
    ------
    AuthError
        If the token is malformed, names an unsupported algorithm or unknown key, or the
        signature does not verify. The message never quotes the token.
    """
    if not isinstance(token, str) or token.count(".") != 2:
        raise AuthError("the JWT is not in compact serialisation (header.payload.signature)")
    head_text, body_text, sig_text = token.split(".")
    try:
        header = json.loads(_b64url_decode(head_text, "the JWT header"))
        claims = json.loads(_b64url_decode(body_text, "the JWT payload"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AuthError("the JWT header or payload is not JSON") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise AuthError("the JWT header and payload must be JSON objects")
    alg = header.get("alg")
    if alg not in algorithms:
        raise AuthError(f"JWT alg {alg!r} is not accepted; use one of {tuple(algorithms)}")
    kid = header.get("kid")
    candidates = [k for k in jwks if kid is None or k.get("kid") == kid]
    if not candidates:
        raise AuthError(f"no registered key has kid {kid!r}")
    signature = _b64url_decode(sig_text, "the JWT signature")
    data = f"{head_text}.{body_text}".encode("ascii")
    for jwk in candidates:
        try:
            public = _public_key_from_jwk(jwk)
        except AuthError:
            continue
        if _algorithm_of(public) == alg and _verify_signature(public, alg, data, signature):
            return header, claims
    raise AuthError("the JWT signature does not verify with the registered keys")


def client_assertion(
    client_id: str,
    token_url: str,
    key: PrivateKey | bytes | str,
    *,
    kid: str | None = None,
    lifetime: float = MAX_ASSERTION_LIFETIME,
    now: float | None = None,
) -> str:
    """Build the signed client authentication JWT of SMART Backend Services.

    Claims (SMART App Launch 2.2, Backend Services, "Authenticating to the Token
    endpoint"; RFC 7523 §3): ``iss`` and ``sub`` the client id, ``aud`` the token
    endpoint URL, ``exp`` at most five minutes ahead, a fresh random ``jti``, and ``iat``.

    Parameters
    ----------
    client_id : str
    token_url : str
        The token endpoint exactly as the server publishes it.
    key : private key or PEM text
    kid : str, optional
        The ``kid`` the key was registered under (its thumbprint by default).
    lifetime : float
        Seconds until ``exp`` (capped at 300).
    now : float, optional
        The current epoch time (for tests).
    """
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "iat": issued,
        "exp": issued + int(min(lifetime, MAX_ASSERTION_LIFETIME)),
        "jti": secrets.token_urlsafe(24),
    }
    return sign_jwt(claims, key, kid=kid)


# --------------------------------------------------------------------------- the credential


class SmartBackendServices:
    """A credential from the SMART Backend Services flow that refreshes before expiry.

    On first use (and whenever the token is within *refresh_margin* of expiring) it posts
    a ``client_credentials`` grant authenticated by a freshly signed client assertion
    (:func:`client_assertion`) to *token_url*, and keeps the returned bearer token. It is
    safe to share between threads: one thread fetches while the others wait.

    Parameters
    ----------
    token_url : str
        The token endpoint (``token_endpoint`` of ``.well-known/smart-configuration``).
    client_id : str
        The id the authorization server registered this client under.
    private_key : PEM text or key object
        The client's RS384 (RSA ≥ 2048 bits) or ES384 (P-384) private key.
    scope : str
        The scopes to request, e.g. ``"system/*.rs"`` or
        ``"system/ImagingStudy.rs system/Patient.rs"``.
    kid : str, optional
        The registered key id (RFC 7638 thumbprint by default).
    refresh_margin : float
        Renew this many seconds before expiry (at most a fifth of the token's lifetime).
    timeout : float
        Seconds to wait for the token endpoint.
    name : str, optional
        The principal (see :attr:`principal`); derived from the client, token endpoint
        and scope by default.

    Attributes
    ----------
    patient : str or None
        The ``patient`` launch context of the last token response, if any.
    granted_scope : str or None
        The scope the server granted in its last response.
    tokens_fetched : int
        How many tokens it obtained so far (the first one and every renewal, including
        those after a ``401``: see :meth:`invalidate`).

    Examples
    --------
    >>> cred = SmartBackendServices(  # doctest: +SKIP
    ...     "https://ehr.example.org/auth/token", "my-app", open("key.pem").read(),
    ...     scope="system/*.rs")
    >>> AuthMap({"https://ehr.example.org": cred})  # doctest: +SKIP
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        private_key: PrivateKey | bytes | str,
        scope: str,
        *,
        kid: str | None = None,
        refresh_margin: float = 30.0,
        timeout: float = 30.0,
        name: str | None = None,
    ) -> None:
        from imagingkit.auth import origin_of

        self.token_url = token_url
        self._token_origin = origin_of(token_url)  # refuses a relative URL early
        if not client_id:
            raise AuthError("SMART Backend Services needs a client_id")
        if not scope or not scope.strip():
            raise AuthError("SMART Backend Services needs a scope, e.g. 'system/*.rs'")
        self.client_id = client_id
        self.scope = " ".join(scope.split())
        self._key = load_private_key(private_key)
        self.kid = kid or public_jwk(self._key)["kid"]
        self.refresh_margin = float(refresh_margin)
        self.timeout = float(timeout)
        self._name = name
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0
        self.patient: str | None = None
        self.granted_scope: str | None = None
        self.tokens_fetched = 0

    @classmethod
    def from_fhir_base(
        cls,
        fhir_base: str,
        client_id: str,
        private_key: PrivateKey | bytes | str,
        scope: str,
        **kwargs: Any,
    ) -> SmartBackendServices:
        """Discover the token endpoint from ``{fhir_base}/.well-known/smart-configuration``.

        (SMART App Launch 2.2 §2.1 "Conformance": the discovery document, fetched without
        credentials.)
        """
        url = fhir_base.rstrip("/") + "/.well-known/smart-configuration"
        timeout = float(kwargs.get("timeout", 30.0))
        try:
            response = requests.get(
                url, headers={"Accept": "application/json"}, timeout=timeout, allow_redirects=False
            )
        except requests.RequestException as exc:
            raise AuthError(f"cannot read the SMART configuration: {exc}", url=url) from None
        if response.status_code != 200:
            raise AuthError(
                "no SMART configuration at this FHIR server", url=url, status=response.status_code
            )
        try:
            token_url = response.json()["token_endpoint"]
        except (ValueError, KeyError, TypeError):
            raise AuthError("the SMART configuration names no token_endpoint", url=url) from None
        return cls(str(token_url), client_id, private_key, scope, **kwargs)

    # -- Credential protocol ---------------------------------------------------------

    @property
    def principal(self) -> str:
        """``smart:{client_id}@{token endpoint origin}#{scope digest}`` (no secret)."""
        if self._name:
            return self._name
        digest = hashlib.sha256(self.scope.encode("utf-8")).hexdigest()[:8]
        return f"smart:{self.client_id}@{self._token_origin}#{digest}"

    def authorization(self) -> str:
        """Return ``Bearer <token>``, fetching a new token first if needed."""
        return f"Bearer {self.access_token()}"

    # -- tokens ----------------------------------------------------------------------

    def access_token(self) -> str:
        """The current access token, renewed if it expires within the refresh margin."""
        with self._lock:
            if self._token is None or time.monotonic() >= self._renew_at:
                self._fetch()
            assert self._token is not None
            return self._token

    def invalidate(self, rejected: str | None = None) -> None:
        """Forget the token (e.g. after a 401), so the next request gets a new one.

        Parameters
        ----------
        rejected : str, optional
            The token the server refused, or the ``Authorization`` value that carried it:
            the token is forgotten only if it is still the current one, so that threads
            refused at the same moment cause one renewal, not one each.
        """
        with self._lock:
            current = self._token
            if rejected is None or current is None or rejected in (current, f"Bearer {current}"):
                self._token = None

    def _fetch(self) -> None:
        assertion = client_assertion(self.client_id, self.token_url, self._key, kid=self.kid)
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": assertion,
        }
        started = time.monotonic()
        try:
            response = requests.post(
                self.token_url,
                data=form,
                headers={"Accept": "application/json"},
                timeout=self.timeout,
                allow_redirects=False,  # the assertion is for this endpoint only
            )
        except requests.RequestException as exc:
            raise AuthError(
                f"cannot reach the token endpoint: {type(exc).__name__}", url=self.token_url
            ) from None
        body = _json_object(response)
        if response.status_code != 200:
            error = str(body.get("error", "")) if body else ""
            description = str(body.get("error_description", "")) if body else ""
            detail = ": ".join(p for p in (error, description) if p)[:300] or None
            raise AuthError(
                f"the token endpoint refused client {self.client_id!r}",
                url=self.token_url,
                status=response.status_code,
                server_message=detail,
            )
        token = body.get("access_token") if body else None
        token_type = str(body.get("token_type", "")) if body else ""
        if not isinstance(token, str) or not token or token_type.lower() != "bearer":
            raise AuthError(
                "the token endpoint answered without a bearer access_token",
                url=self.token_url,
                status=response.status_code,
            )
        try:
            lifetime = float(body.get("expires_in", 300))
        except (TypeError, ValueError):
            lifetime = 300.0
        margin = min(self.refresh_margin, max(lifetime, 0.0) / 5)
        self._token = token
        self._renew_at = started + lifetime - margin
        self.tokens_fetched += 1
        patient = body.get("patient")
        self.patient = patient if isinstance(patient, str) else None
        granted = body.get("scope")
        self.granted_scope = granted if isinstance(granted, str) else None
        log.info(
            "SMART token for %s from %s (expires in %.0f s)",
            self.client_id,
            self._token_origin,
            lifetime,
        )

    # -- safety ----------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"SmartBackendServices(token_url={self.token_url!r}, client_id={self.client_id!r}, "
            f"scope={self.scope!r})"
        )

    def __getstate__(self) -> dict[str, Any]:
        # picklable for executors (dask); the lock is rebuilt, the cached token dropped
        state = dict(self.__dict__)
        del state["_lock"]
        state["_token"] = None
        state["_renew_at"] = 0.0
        state["_key"] = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["_key"] = load_private_key(state["_key"])
        self.__dict__.update(state)
        self._lock = threading.Lock()


def _json_object(response: requests.Response) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
