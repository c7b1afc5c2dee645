"""JSON Web Signatures and Keys of :mod:`imagingkit.smart` (RFC 7515, 7517, 7518, 7638).

PyJWT, an independent implementation, verifies what imagingkit signs and signs what
imagingkit verifies, for both SMART algorithms.
"""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from imagingkit import smart
from imagingkit.errors import AuthError


@pytest.fixture(scope="module", params=["ES384", "RS384"])
def pem(request: pytest.FixtureRequest) -> bytes:
    return smart.generate_private_key(request.param)


def _alg(pem: bytes) -> str:
    return smart.public_jwk(pem)["alg"]


def test_pyjwt_verifies_imagingkit_assertions(pem: bytes) -> None:
    assertion = smart.client_assertion("app", "https://as.example/token", pem, now=1_700_000_000)
    header = jwt.get_unverified_header(assertion)
    assert header == {"alg": _alg(pem), "kid": smart.public_jwk(pem)["kid"], "typ": "JWT"}
    key = jwt.PyJWK(smart.public_jwk(pem)).key
    claims = jwt.decode(
        assertion,
        key,
        algorithms=[_alg(pem)],
        audience="https://as.example/token",
        options={"verify_exp": False},
    )
    assert claims["iss"] == claims["sub"] == "app"
    assert claims["exp"] - claims["iat"] == 300  # SMART: at most five minutes
    assert len(claims["jti"]) >= 16


def test_imagingkit_verifies_pyjwt_tokens(pem: bytes) -> None:
    jwk = smart.public_jwk(pem)
    token = jwt.encode({"hello": "world"}, pem, algorithm=_alg(pem), headers={"kid": jwk["kid"]})
    header, claims = smart.verify_jwt(token, [jwk])
    assert claims == {"hello": "world"} and header["alg"] == _alg(pem)


def test_a_fresh_jti_every_time(pem: bytes) -> None:
    first = smart.unverified_claims(smart.client_assertion("a", "u", pem))
    second = smart.unverified_claims(smart.client_assertion("a", "u", pem))
    assert first["jti"] != second["jti"]


def _tamper(token: str, part: int, value: bytes) -> str:
    parts = token.split(".")
    parts[part] = base64.urlsafe_b64encode(value).rstrip(b"=").decode()
    return ".".join(parts)


def test_tampering_and_algorithm_tricks_are_refused(pem: bytes) -> None:
    jwk = smart.public_jwk(pem)
    token = smart.sign_jwt({"sub": "x"}, pem)
    with pytest.raises(AuthError, match="does not verify"):
        smart.verify_jwt(_tamper(token, 1, b'{"sub":"y"}'), [jwk])
    with pytest.raises(AuthError, match="not accepted"):
        none = {"alg": "none", "kid": jwk["kid"]}
        smart.verify_jwt(_tamper(token, 0, json.dumps(none).encode()), [jwk])
    with pytest.raises(AuthError, match="not accepted"):
        smart.verify_jwt(_tamper(token, 0, json.dumps({"alg": "HS384"}).encode()), [jwk])
    with pytest.raises(AuthError, match="kid"):
        smart.verify_jwt(token, [{**jwk, "kid": "other"}])
    other = smart.public_jwk(smart.generate_private_key("ES384"), kid=jwk["kid"])
    with pytest.raises(AuthError, match="does not verify"):
        smart.verify_jwt(token, [other])
    with pytest.raises(AuthError, match="compact"):
        smart.verify_jwt("a.b", [jwk])
    with pytest.raises(AuthError):
        smart.verify_jwt(token, [jwk], algorithms=["RS256"])


def test_keys_smart_cannot_use_are_refused() -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(AuthError, match="P-384"):
        smart.sign_jwt({}, p256)
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(AuthError, match="too short"):
        smart.public_jwk(short)
    with pytest.raises(AuthError, match="PEM"):
        smart.load_private_key(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(AuthError, match="unsupported"):
        smart.generate_private_key("HS256")


def test_public_jwks_hold_no_private_parameters(pem: bytes) -> None:
    jwk = smart.public_jwk(pem)
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)
    assert jwk["use"] == "sig"
    private = serialization.load_pem_private_key(pem, password=None)
    assert smart.public_jwk(private.public_key())["kid"] == jwk["kid"]  # type: ignore[arg-type]


def test_thumbprint_uses_only_the_required_members(pem: bytes) -> None:
    jwk = smart.public_jwk(pem)
    reordered = dict(reversed(list(jwk.items())))
    assert smart.jwk_thumbprint(reordered) == jwk["kid"]
    assert smart.jwk_thumbprint({**jwk, "alg": "other", "kid": "x", "use": "enc"}) == jwk["kid"]
    with pytest.raises(AuthError):
        smart.jwk_thumbprint({"kty": "oct", "k": "abc"})


def test_thumbprint_matches_the_rfc7638_example() -> None:
    """RFC 7638 §3.1: the RSA key of its example and its thumbprint."""
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
        "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_F"
        "DW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4"
        "vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    jwk = {"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    assert smart.jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
