"""One retry after 401 with a new SMART token (imagingkit.auth.OriginAuth).

A token can die before its ``expires_in``: revoked, or forgotten by a restarted server
(RFC 6750 §3.1 ``invalid_token``). The FHIR and DICOMweb clients then invalidate the
SMART Backend Services token, fetch a new one and send the request once more — only
for a refreshing credential, only once, and only to the origin the credential is for.

The restart is real: ``imagingkit serve --sandbox --auth`` stopped and started again on
the same port and data directory (the registry and keys are kept, the tokens are not).
The fault cases (a server that refuses every token, a redirect to another origin) use
small loopback servers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import tornado.web
from serve_support import AuthSandboxProcess

import imagingkit
from imagingkit.auth import AuthMap, BearerToken, Credential
from imagingkit.config import Settings
from imagingkit.dicomweb.client import DicomWebClient
from imagingkit.errors import AuthError, DICOMwebError
from imagingkit.fhir.client import FhirClient
from imagingkit.sandbox.fhir.testing import serving_app

TIMEOUT = 60


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthSandboxProcess]:
    process = AuthSandboxProcess.started(tmp_path_factory.mktemp("refresh-on-401"))
    try:
        yield process
    finally:
        process.stop()


def test_after_a_restart_the_bridge_and_dicomweb_fetch_one_new_token(
    sandbox: AuthSandboxProcess, tmp_path: Path
) -> None:
    fhir, dicomweb = sandbox.mount("fhir"), sandbox.mount("dicom-web")
    credential = sandbox.credential()
    auth = AuthMap({fhir: credential})  # one origin: FHIR, DICOMweb and the token endpoint
    settings = Settings(data_dir=tmp_path)
    bridge = imagingkit.connect(fhir=fhir, auth=auth, settings=settings)
    dicom = DicomWebClient(dicomweb, auth=auth, settings=settings, cache=False)
    try:
        series = bridge.cohort().studies(level="series")
        assert len(series) > 0
        study, series_uid = series.iloc[0][["StudyInstanceUID", "SeriesInstanceUID"]]
        found = dicom.search_instances(study_uid=study, series_uid=series_uid, limit=1)
        sop = found[0]["00080018"]["Value"][0]
        assert credential.tokens_fetched == 1
        stale = credential.access_token()

        sandbox.restart()
        # DICOMweb first: the WADO-RS retrieve gets 401, a new token, and succeeds
        part10 = dicom.retrieve_instance(study, series_uid, sop)
        assert part10[128:132] == b"DICM"
        assert credential.tokens_fetched == 2
        assert credential.access_token() != stale

        # a fixed token is not refreshed: the caller gets the 401
        fixed = FhirClient(fhir, auth=AuthMap({fhir: BearerToken(stale)}), settings=settings)
        with pytest.raises(AuthError) as caught:
            fixed.get_bytes(f"{fhir}/Patient?_count=1")
        assert caught.value.status == 401
        assert fixed.requests_made == [f"{fhir}/Patient?_count=1"]
        fixed.close()

        sandbox.restart()
        # then a bridge query (FHIR searches through fhirpy and raw paging)
        again = bridge.cohort().studies(level="series")
        assert sorted(again["SeriesInstanceUID"]) == sorted(series["SeriesInstanceUID"])
        assert credential.tokens_fetched == 3
    finally:
        dicom.close()
        bridge.close()


# --------------------------------------------------------------------------- fault servers


@dataclass
class Seen:
    """What a loopback fault server received."""

    authorizations: list[str | None] = field(default_factory=list)
    redirect_to: str | None = None


class _FaultHandler(tornado.web.RequestHandler):
    def initialize(self, seen: Seen) -> None:
        self.seen = seen

    def get(self, path: str) -> None:
        self.seen.authorizations.append(self.request.headers.get("Authorization"))
        if self.seen.redirect_to is not None:
            self.redirect(self.seen.redirect_to + path, status=302)
            return
        self.set_status(401)
        self.set_header("WWW-Authenticate", 'Bearer error="invalid_token"')
        self.finish("token refused")


@pytest.fixture
def refusing() -> Iterator[tuple[str, Seen]]:
    """A server answering 401 to every request, whatever the token."""
    seen = Seen()
    app = tornado.web.Application([(r"(/.*)", _FaultHandler, {"seen": seen})])
    with serving_app(app) as origin:
        yield origin, seen


def _refused_status(kind: str, origin: str, credential: Credential, tmp_path: Path) -> int | None:
    """GET ``{origin}/base/studies`` with the FHIR client or the DICOMweb transport.

    The request must fail; return the status of the error raised.
    """
    auth, settings = AuthMap({origin: credential}), Settings(data_dir=tmp_path)
    url = f"{origin}/base/studies"
    with pytest.raises((AuthError, DICOMwebError)) as caught:
        if kind == "fhir":
            client = FhirClient(f"{origin}/base", auth=auth, settings=settings)
            try:
                client.get_bytes(url)
            finally:
                client.close()
        else:
            dicom = DicomWebClient(f"{origin}/base", auth=auth, settings=settings, cache=False)
            try:
                dicom.transport.get(url)
            finally:
                dicom.close()
    return caught.value.status


@pytest.mark.parametrize("kind", ["fhir", "dicomweb"])
def test_a_server_refusing_every_token_is_asked_twice_only(
    sandbox: AuthSandboxProcess, refusing: tuple[str, Seen], kind: str, tmp_path: Path
) -> None:
    origin, seen = refusing
    credential = sandbox.credential()
    assert _refused_status(kind, origin, credential, tmp_path) == 401
    assert credential.tokens_fetched == 2
    first, second = seen.authorizations
    assert first and second and first != second  # the retry carried the new token


@pytest.mark.parametrize("kind", ["fhir", "dicomweb"])
def test_a_fixed_token_is_not_retried(
    refusing: tuple[str, Seen], kind: str, tmp_path: Path
) -> None:
    origin, seen = refusing
    assert _refused_status(kind, origin, BearerToken("fixed-token"), tmp_path) == 401
    assert seen.authorizations == ["Bearer fixed-token"]


@pytest.mark.parametrize("kind", ["fhir", "dicomweb"])
def test_a_401_from_another_origin_after_a_redirect_is_not_retried(
    sandbox: AuthSandboxProcess, refusing: tuple[str, Seen], kind: str, tmp_path: Path
) -> None:
    elsewhere, refused = refusing
    mapped = Seen(redirect_to=elsewhere)
    app = tornado.web.Application([(r"(/.*)", _FaultHandler, {"seen": mapped})])
    credential = sandbox.credential()
    with serving_app(app) as origin:
        assert _refused_status(kind, origin, credential, tmp_path) == 401
    assert len(mapped.authorizations) == 1 and mapped.authorizations[0] is not None
    assert refused.authorizations == [None]  # no credential, no retry, at the other origin
    assert credential.tokens_fetched == 1


def test_concurrent_401s_cause_one_renewal(sandbox: AuthSandboxProcess) -> None:
    """invalidate(rejected) forgets the token only while it is still the rejected one."""
    credential = sandbox.credential()
    stale = credential.authorization()
    credential.invalidate(stale)
    fresh = credential.authorization()
    credential.invalidate(stale)  # a second thread refused with the old token
    assert credential.authorization() == fresh
    assert credential.tokens_fetched == 2
    assert (
        requests.get(
            sandbox.mount("dicom-web") + "/studies?limit=1",
            headers={"Authorization": fresh},
            timeout=TIMEOUT,
        ).status_code
        == 200
    )
