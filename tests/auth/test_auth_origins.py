"""Credentials never cross origins (DESIGN.md D7), and SMART Imaging Access token reuse.

Real loopback servers record the headers they receive: a hostile ``Endpoint.address`` on
another origin, and the target of a redirect to another origin, never see a credential.
An Endpoint saying ``requires-access-token`` gets the FHIR server's credential only on
the FHIR server's own origin or on an origin the user declared with ``with_reuse``.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import requests
from auth_support import ScopedSandbox, recording_server

from imagingkit.auth import REQUIRES_ACCESS_TOKEN, AuthMap, BasicAuth, BearerToken
from imagingkit.auth import requires_access_token as flag_of
from imagingkit.dicomweb.transport import Transport
from imagingkit.errors import AuthError

SECRET = "s3cr3t-token-value"


def _endpoint(address: str, flag: bool | None = None) -> dict[str, Any]:
    endpoint: dict[str, Any] = {
        "resourceType": "Endpoint",
        "status": "active",
        "connectionType": {"code": "dicom-wado-rs"},
        "address": address,
    }
    if flag is not None:
        endpoint["extension"] = [{"url": REQUIRES_ACCESS_TOKEN, "valueBoolean": flag}]
    return endpoint


# --------------------------------------------------------------------------- the rules


def test_requires_access_token_is_read_from_the_extension() -> None:
    assert flag_of(_endpoint("https://x", True)) is True
    assert flag_of(_endpoint("https://x", False)) is False
    assert flag_of(_endpoint("https://x")) is None
    other_url = {"extension": [{"url": "urn:x/requires-access-token", "valueBoolean": True}]}
    assert flag_of(other_url) is True
    assert flag_of({"extension": [{"url": REQUIRES_ACCESS_TOKEN, "valueString": "true"}]}) is None


@pytest.mark.parametrize(
    ("address", "flag", "expected"),
    [
        ("https://fhir.example.org/dicomweb", True, "fhir"),  # same origin as FHIR
        ("https://fhir.example.org/dicomweb", None, "fhir"),
        ("https://fhir.example.org/dicomweb", False, None),  # a capability URL
        ("https://pacs.example.org/wado", True, None),  # elsewhere, not declared
        ("https://pacs.example.org/wado", None, None),
        ("https://images.example.org/wado", True, "images"),  # its own mapping
        ("https://images.example.org/wado", False, None),
        ("https://reuse.example.org/wado", True, "fhir"),  # declared with_reuse
        ("https://reuse.example.org/wado", None, "fhir"),
        ("https://reuse.example.org/wado", False, None),
        ("https://fhir.example.org:8443/wado", True, None),  # another port: another origin
        ("http://fhir.example.org/wado", True, None),  # another scheme: another origin
        ("not a url", True, None),
        ("", True, None),
    ],
)
def test_for_endpoint_decision_table(address: str, flag: bool | None, expected: str | None) -> None:
    fhir_token, images_token = BearerToken(SECRET, name="fhir"), BasicAuth("u", "p")
    auth = AuthMap(
        {"https://fhir.example.org": fhir_token, "https://images.example.org": images_token}
    ).with_reuse("https://fhir.example.org/r4", "https://reuse.example.org")
    chosen = auth.for_endpoint(_endpoint(address, flag), "https://fhir.example.org/r4")
    headers = chosen.headers_for(f"{address}/studies/1.2.3")
    if expected is None:
        assert headers == {} and chosen.origins() == []
    else:
        credential = {"fhir": fhir_token, "images": images_token}[expected]
        assert headers == {"Authorization": credential.authorization()}
        assert len(chosen.origins()) == 1  # nothing else: other origins get nothing
    # the keyword flag overrides the resource's
    assert (
        auth.for_endpoint(
            address, "https://fhir.example.org", requires_access_token=False
        ).origins()
        == []
    )


def test_asking_for_the_token_from_another_origin_warns(caplog: pytest.LogCaptureFixture) -> None:
    auth = AuthMap({"https://fhir.example.org": BearerToken(SECRET)})
    with caplog.at_level(logging.WARNING, logger="imagingkit.auth"):
        chosen = auth.for_endpoint(
            _endpoint("https://evil.example.net/wado", True), "https://fhir.example.org"
        )
    assert chosen.origins() == []
    assert "https://evil.example.net" in caplog.text and "with_reuse" in caplog.text
    assert SECRET not in caplog.text


def test_with_reuse_needs_a_mapped_fhir_origin() -> None:
    with pytest.raises(AuthError, match="no credential"):
        AuthMap().with_reuse("https://fhir.example.org", "https://pacs.example.org")
    auth = AuthMap({"https://fhir.example.org": BearerToken(SECRET)})
    reused = auth.with_reuse("https://fhir.example.org", "https://pacs.example.org/wado")
    assert auth.origins() == ["https://fhir.example.org"]  # the original is unchanged
    assert reused.principal_for("https://pacs.example.org/x") == auth.principal_for(
        "https://fhir.example.org/y"
    )


def test_secrets_stay_out_of_repr_principals_and_errors() -> None:
    auth = AuthMap(
        {
            "https://a.example.org": BearerToken(SECRET),
            "https://b.example.org": BasicAuth("u", SECRET),
        }
    )
    shown = f"{auth!r} {auth.principal_for('https://a.example.org')} {auth.principal_for('https://b.example.org')}"
    assert SECRET not in shown
    assert SECRET not in repr(BearerToken(SECRET)) and SECRET not in repr(BasicAuth("u", SECRET))
    for bad in (f"https://user:{SECRET}@", f"https://user:{SECRET}@host:99999999"):
        with pytest.raises(AuthError) as caught:
            auth.add(bad, BearerToken(SECRET))
        assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)


# --------------------------------------------------------------------------- on the wire


def test_a_hostile_endpoint_on_another_origin_receives_nothing() -> None:
    with recording_server() as (fhir_origin, fhir_seen), recording_server() as (evil, evil_seen):
        auth = AuthMap({fhir_origin: BearerToken(SECRET)})
        transport = Transport(auth=auth)
        transport.get(f"{fhir_origin}/fhir/ImagingStudy")  # the mapped origin gets it …
        assert fhir_seen.authorizations() == [f"Bearer {SECRET}"]
        for flag in (True, None, False):
            chosen = auth.for_endpoint(_endpoint(f"{evil}/wado", flag), f"{fhir_origin}/fhir")
            Transport(auth=chosen).get(f"{evil}/wado/studies/1.2.3/metadata")
        transport.get(f"{evil}/wado/studies/1.2.3")  # … and the full map sends nothing there
        assert len(evil_seen.seen) == 4
        assert evil_seen.authorizations() == []
        assert all(SECRET not in str(h) for _, h in evil_seen.seen)


def test_redirects_to_another_origin_drop_credentials() -> None:
    with recording_server() as (elsewhere, elsewhere_seen):
        with recording_server(redirect_to=elsewhere) as (mapped, mapped_seen):
            auth = AuthMap({mapped: BearerToken(SECRET)})
            response = Transport(auth=auth).get(f"{mapped}/dicom-web/studies")
            assert response.url.startswith(elsewhere)
            assert mapped_seen.authorizations() == [f"Bearer {SECRET}"]
            assert len(elsewhere_seen.seen) == 1
            assert elsewhere_seen.authorizations() == []
        # a declared reuse origin redirecting onwards: the third origin gets nothing either
        with recording_server(redirect_to=elsewhere) as (reuse, reuse_seen):
            fhir = "https://fhir.example.org"
            auth = AuthMap({fhir: BearerToken(SECRET)}).with_reuse(fhir, reuse)
            chosen = auth.for_endpoint(_endpoint(f"{reuse}/wado", True), fhir)
            Transport(auth=chosen).get(f"{reuse}/wado/studies/1.2.3/metadata")
            assert reuse_seen.authorizations() == [f"Bearer {SECRET}"]
            assert elsewhere_seen.authorizations() == []


def test_smart_imaging_access_reuse_against_the_sandbox(scoped_sandbox: ScopedSandbox) -> None:
    """The FHIR token, chosen for the study's Endpoint, retrieves its pixels (same origin);
    the same Endpoint moved to another origin gets no token."""
    sandbox = scoped_sandbox
    credential = sandbox.clients["clinic-a"].credential(sandbox.token_url, "patient/*.rs")
    auth = AuthMap({sandbox.fhir: credential})
    bundle = requests.get(
        f"{sandbox.fhir}/ImagingStudy",
        params={"patient": sandbox.a.id, "_include": "ImagingStudy:endpoint"},
        headers=auth.headers_for(sandbox.fhir),
        timeout=60,
    ).json()
    endpoint = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Endpoint"
    )
    assert endpoint["address"] == sandbox.dicomweb
    study, series, sop = sandbox.a.instance
    chosen = auth.for_endpoint(endpoint, sandbox.fhir)
    url = f"{endpoint['address']}/studies/{study}/series/{series}/instances/{sop}/metadata"
    datasets, _ = Transport(auth=chosen).get_json(url)
    assert datasets[0]["00080018"]["Value"] == [sop]
    with pytest.raises(Exception) as refused:  # no token: the sandbox answers 401
        Transport(auth=AuthMap()).get(url)
    assert "401" in str(refused.value)
    with recording_server() as (evil, seen):
        moved = {**endpoint, "address": f"{evil}/dicom-web"}
        Transport(auth=auth.for_endpoint(moved, sandbox.fhir)).get(f"{evil}/dicom-web/studies")
        assert seen.authorizations() == []
