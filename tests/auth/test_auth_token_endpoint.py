"""The sandbox's SMART Backend Services token endpoint and the client credential.

The token endpoint refuses every malformed, forged, expired or replayed client assertion
with an OAuth error object (RFC 6749 §5.2); :class:`SmartBackendServices` gets a token,
shares it between threads, renews it before it expires, and never shows a secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import pickle
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from auth_support import Client, make_client, recording_server, registry_of, token_for

from imagingkit import smart
from imagingkit.auth import AuthMap
from imagingkit.config import Settings
from imagingkit.errors import AuthError
from imagingkit.sandbox.fhir.store import FhirStore
from imagingkit.sandbox.fhir.testing import serving
from imagingkit.sandbox.token_endpoint import AuthServer

TIMEOUT = 30


@dataclass
class SmallServer:
    origin: str
    server: AuthServer
    clients: dict[str, Client]

    @property
    def token_url(self) -> str:
        return f"{self.origin}/auth/token"

    @property
    def fhir(self) -> str:
        return f"{self.origin}/fhir"


@contextmanager
def small_server(folder: Path, *, token_lifetime: float = 300.0) -> Iterator[SmallServer]:
    """A FHIR store with Patients p1 and p2 behind the token endpoint."""
    store = FhirStore.for_data_dir(folder, "auth", settings=Settings(data_dir=folder))
    for pid in ("p1", "p2"):
        store.upsert({"resourceType": "Patient", "id": pid, "gender": "female"})
    clients = {
        "reader": make_client("reader", "system/*.rs", None),
        "p1-app": make_client("p1-app", "patient/*.rs system/*.rs", ["p1"], alg="RS384"),
        "two-patients": make_client("two-patients", "patient/*.rs system/*.rs", ["p1", "p2"]),
    }
    server = AuthServer(registry_of(*clients.values()), token_lifetime=token_lifetime)
    try:
        with serving(server.protect([store])) as origin:
            yield SmallServer(origin, server, clients)
    finally:
        store.close()


@pytest.fixture
def small(tmp_path: Path) -> Iterator[SmallServer]:
    with small_server(tmp_path) as running:
        yield running


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(client: str, aud: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": client,
        "sub": client,
        "aud": aud,
        "exp": now + 240,
        "jti": f"j{time.time_ns()}",
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _form(assertion: str, scope: str = "system/*.rs", **changes: str | None) -> dict[str, str]:
    form = {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": smart.CLIENT_ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    form.update({k: v for k, v in changes.items() if v is not None})
    return {k: v for k, v in form.items() if changes.get(k, "") is not None}


def _refused(small: SmallServer, form: Any, error: str, **kwargs: Any) -> dict[str, Any]:
    response = requests.post(small.token_url, data=form, timeout=TIMEOUT, **kwargs)
    assert response.status_code == 400, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = response.json()
    assert body["error"] == error, body
    assert body["error_description"]
    assert "access_token" not in body
    return body


# --------------------------------------------------------------------------- issuing


def test_token_response_follows_rfc6749_and_smart(small: SmallServer) -> None:
    answer = token_for(small.token_url, small.clients["reader"], "system/*.rs launch openid")
    assert answer["token_type"] == "bearer"
    assert answer["expires_in"] == 300
    assert answer["scope"] == "system/*.rs"  # non-resource scopes are not granted
    assert "patient" not in answer
    headers = {"Authorization": f"Bearer {answer['access_token']}"}
    assert (
        requests.get(f"{small.fhir}/Patient", headers=headers, timeout=TIMEOUT).json()["total"] == 2
    )
    narrower = token_for(small.token_url, small.clients["reader"], "system/Patient.r")
    assert narrower["scope"] == "system/Patient.r"


def test_patient_context_for_a_one_patient_client(small: SmallServer) -> None:
    answer = token_for(small.token_url, small.clients["p1-app"], "patient/*.rs")
    assert answer["patient"] == "p1"
    headers = {"Authorization": f"Bearer {answer['access_token']}"}
    bundle = requests.get(f"{small.fhir}/Patient", headers=headers, timeout=TIMEOUT).json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["p1"]
    # the same client with system/ scopes is still limited to its patient
    system = token_for(small.token_url, small.clients["p1-app"], "system/*.rs")
    headers = {"Authorization": f"Bearer {system['access_token']}"}
    assert "patient" not in system
    response = requests.get(f"{small.fhir}/Patient/p2", headers=headers, timeout=TIMEOUT)
    assert response.status_code == 403


def _forged(small: SmallServer) -> dict[str, str]:
    """Assertions that must all be refused as invalid_client, by name."""
    url = small.token_url
    reader = small.clients["reader"]
    other_key = smart.generate_private_key("ES384")
    kid = smart.public_jwk(reader.pem)["kid"]
    good = smart.sign_jwt(_claims("reader", url), reader.pem)
    head, body, sig = good.split(".")
    tampered_body = _b64(
        json.dumps(_claims("reader", url, sub="reader", jti="x", exp=2**40)).encode()
    )
    none_head = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    hs_head = _b64(json.dumps({"alg": "HS384", "typ": "JWT", "kid": kid}).encode())
    hs_input = f"{hs_head}.{body}".encode()
    hs_sig = _b64(
        hmac.new(
            json.dumps(smart.public_jwk(reader.pem)).encode(), hs_input, hashlib.sha384
        ).digest()
    )
    return {
        "unregistered client": smart.sign_jwt(_claims("stranger", url), other_key),
        "signed with another key": smart.sign_jwt(_claims("reader", url), other_key, kid=kid),
        "tampered payload": f"{head}.{tampered_body}.{sig}",
        "alg none": f"{none_head}.{body}.",
        "alg HS384 (key confusion)": f"{hs_head}.{body}.{hs_sig}",
        "expired": smart.sign_jwt(_claims("reader", url, exp=int(time.time()) - 5), reader.pem),
        "exp too far ahead": smart.sign_jwt(
            _claims("reader", url, exp=int(time.time()) + 3600), reader.pem
        ),
        "no exp": smart.sign_jwt(_claims("reader", url, exp=None), reader.pem),
        "wrong aud": smart.sign_jwt(_claims("reader", url + "x"), reader.pem),
        "other server's aud": smart.sign_jwt(
            _claims("reader", "https://ehr.example.org/token"), reader.pem
        ),
        "sub is not iss": smart.sign_jwt(_claims("reader", url, sub="p1-app"), reader.pem),
        "no jti": smart.sign_jwt(_claims("reader", url, jti=None), reader.pem),
        "not a JWT": "abc",
        "payload not JSON": f"{head}.{_b64(b'not json')}.{sig}",
    }


def test_forged_expired_and_malformed_assertions_are_invalid_client(small: SmallServer) -> None:
    for name, assertion in _forged(small).items():
        body = _refused(small, _form(assertion), "invalid_client")
        assert assertion[:40] not in body["error_description"] or len(assertion) < 8, name


def test_a_replayed_assertion_is_refused(small: SmallServer) -> None:
    assertion = small.clients["reader"].assertion(small.token_url)
    first = requests.post(small.token_url, data=_form(assertion), timeout=TIMEOUT)
    assert first.status_code == 200
    body = _refused(small, _form(assertion), "invalid_client")
    assert "replay" in body["error_description"]


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"grant_type": "authorization_code"}, "unsupported_grant_type"),
        ({"grant_type": None}, "unsupported_grant_type"),
        ({"client_assertion_type": "urn:other"}, "invalid_request"),
        ({"client_assertion_type": None}, "invalid_request"),
        ({"client_assertion": None}, "invalid_request"),
        ({"client_id": "p1-app"}, "invalid_client"),
        ({"scope": "system/*.cruds"}, "invalid_scope"),
        ({"scope": "system/Patient.rs?gender=female"}, "invalid_scope"),
        ({"scope": "system/*.xyz"}, "invalid_scope"),
        ({"scope": "openid"}, "invalid_scope"),
        ({"scope": "patient/*.rs"}, "invalid_scope"),  # an all-patients client: no context
        ({"scope": "user/*.rs"}, "invalid_scope"),
        ({"scope": None}, "invalid_scope"),
    ],
)
def test_bad_token_requests_get_oauth_errors(
    small: SmallServer, changes: dict[str, str | None], error: str
) -> None:
    assertion = small.clients["reader"].assertion(small.token_url)
    _refused(small, _form(assertion, **changes), error)


def test_scope_rules_for_patient_limited_clients(small: SmallServer) -> None:
    url = small.token_url
    two = small.clients["two-patients"]
    _refused(small, _form(two.assertion(url), scope="patient/*.rs"), "invalid_scope")
    mixed = _form(small.clients["p1-app"].assertion(url), scope="patient/*.rs system/*.rs")
    _refused(small, mixed, "invalid_scope")
    write = _form(small.clients["p1-app"].assertion(url), scope="system/Patient.u")
    _refused(small, write, "invalid_scope")


def test_the_request_must_be_a_form_without_repeated_parameters(small: SmallServer) -> None:
    assertion = small.clients["reader"].assertion(small.token_url)
    _refused(
        small,
        json.dumps(_form(assertion)),
        "invalid_request",
        headers={"Content-Type": "application/json"},
    )
    repeated = [*_form(assertion).items(), ("scope", "system/*.rs")]
    _refused(small, repeated, "invalid_request")


# --------------------------------------------------------------------------- the credential


def test_credential_fetches_once_and_shares_the_token_between_threads(small: SmallServer) -> None:
    credential = small.clients["reader"].credential(small.token_url, "system/*.rs")
    barrier = threading.Barrier(16)
    values: list[str] = []

    def use() -> None:
        barrier.wait(timeout=10)
        values.append(credential.authorization())

    threads = [threading.Thread(target=use) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(values) == 16 and len(set(values)) == 1
    assert len(small.server.tokens) == 1  # one token request for sixteen threads
    auth = AuthMap({small.origin: credential})
    response = requests.get(
        f"{small.fhir}/Patient", headers=auth.headers_for(small.fhir), timeout=TIMEOUT
    )
    assert response.status_code == 200
    assert credential.granted_scope == "system/*.rs"


def test_credential_renews_before_expiry(tmp_path: Path) -> None:
    with small_server(tmp_path, token_lifetime=3) as small:
        credential = small.clients["reader"].credential(small.token_url, "system/*.rs")
        first = credential.authorization()
        assert credential.authorization() == first  # reused while fresh
        time.sleep(2.5)  # past the renewal point (lifetime minus a fifth), before expiry
        second = credential.authorization()
        assert second != first
        url = f"{small.fhir}/Patient"
        old = requests.get(url, headers={"Authorization": first}, timeout=TIMEOUT)
        assert old.status_code == 200  # the first token had not expired yet
        time.sleep(0.8)
        expired = requests.get(url, headers={"Authorization": first}, timeout=TIMEOUT)
        assert expired.status_code == 401
        assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]
        credential.invalidate()
        third = credential.authorization()
        assert third not in (first, second)
        assert (
            requests.get(url, headers={"Authorization": third}, timeout=TIMEOUT).status_code == 200
        )


def test_refusals_raise_auth_error_without_secrets(small: SmallServer) -> None:
    stranger = make_client("reader", "system/*.rs", None, fresh=True)  # unregistered key
    credential = stranger.credential(small.token_url, "system/*.rs")
    with pytest.raises(AuthError) as caught:
        credential.authorization()
    error = caught.value
    assert error.status == 400
    assert error.server_message is not None and error.server_message.startswith("invalid_client")
    text = f"{error} {error!r} {credential!r} {credential.principal}"
    pem_body = stranger.pem.decode().splitlines()[1]
    assert pem_body not in text and "BEGIN" not in text
    assert "eyJ" not in text  # no JWT (base64url of '{"') anywhere


def test_discovery_from_the_fhir_base(small: SmallServer) -> None:
    client = small.clients["reader"]
    credential = smart.SmartBackendServices.from_fhir_base(
        small.fhir, client.client_id, client.pem, "system/*.rs"
    )
    assert credential.token_url == small.token_url
    assert credential.authorization().startswith("Bearer ")


def test_token_endpoint_redirects_are_not_followed(small: SmallServer) -> None:
    with recording_server(redirect_to=small.origin) as (origin, recorder):
        credential = small.clients["reader"].credential(f"{origin}/auth/token", "system/*.rs")
        with pytest.raises(AuthError):
            credential.authorization()
    assert len(recorder.seen) == 1
    assert len(small.server.tokens) == 0  # the assertion never reached the real endpoint


def test_credentials_survive_pickling_without_their_token(small: SmallServer) -> None:
    credential = small.clients["reader"].credential(small.token_url, "system/*.rs")
    token = credential.access_token()
    copy = pickle.loads(pickle.dumps(credential))
    assert copy.principal == credential.principal
    assert token not in repr(copy.__dict__)
    assert copy.authorization().startswith("Bearer ")


def test_tokens_and_assertions_never_reach_the_logs(
    small: SmallServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    credential = small.clients["reader"].credential(small.token_url, "system/*.rs")
    auth = AuthMap({small.origin: credential})
    token = credential.access_token()
    ok = requests.get(
        f"{small.fhir}/Patient", headers=auth.headers_for(small.fhir), timeout=TIMEOUT
    )
    assert ok.status_code == 200
    assertion = small.clients["reader"].assertion(small.token_url)
    requests.post(small.token_url, data=_form(assertion), timeout=TIMEOUT)
    requests.post(small.token_url, data=_form(assertion), timeout=TIMEOUT)  # a replay
    bad = requests.get(
        f"{small.fhir}/Patient", headers={"Authorization": "Bearer " + token[::-1]}, timeout=TIMEOUT
    )
    assert bad.status_code == 401
    text = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert caplog.records  # the flow did log
    for secret in (token, token[::-1], assertion, assertion.split(".")[2]):
        assert secret not in text
    assert token not in repr(auth) and token not in auth.principal_for(small.fhir)
