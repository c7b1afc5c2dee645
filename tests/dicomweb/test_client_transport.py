"""The transport's policies: Retry-After, timeouts, credentials bound to origins (D7)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from dicomweb_helpers import client_for

from imagingkit.auth import AuthMap, BasicAuth, BearerToken
from imagingkit.config import Settings
from imagingkit.dicomweb.transport import RetryPolicy, parse_retry_after
from imagingkit.errors import DICOMwebError

STUDY = "1.2.3.4"


def test_retry_after_parses_seconds_and_http_dates() -> None:
    """RFC 9110 §10.2.3: delay-seconds or an HTTP-date."""
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    later = format_datetime(now + timedelta(seconds=7), usegmt=True)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(later, now=now.timestamp()) == pytest.approx(7.0)
    assert parse_retry_after(format_datetime(now, usegmt=True), now=now.timestamp() + 5) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured_once_then_the_answer_is_used(double_server, status) -> None:
    """A 429/503 with Retry-After is repeated after the delay the server asked for."""
    answers = iter([status])

    def respond(handler, seen):
        code = next(answers, 200)
        if code != 200:
            handler.set_status(code)
            handler.set_header("Retry-After", "1")
            return
        handler.set_header("Content-Type", "application/dicom+json")
        handler.write(json.dumps([{"0020000D": {"vr": "UI", "Value": [STUDY]}}]))

    base, double = double_server(respond)
    client = client_for(base)
    found = client.search_studies(page_size=10)
    assert [r["0020000D"]["Value"][0] for r in found] == [STUDY]
    times = [r for r in double.seen("/studies")]
    assert len(times) == 3  # the refused try, the repeated page, the empty page after it
    assert times[0].query == times[1].query  # the identical request was repeated


def test_retry_waits_at_least_what_the_server_asked(double_server) -> None:
    stamps: list[float] = []

    def respond(handler, seen):
        stamps.append(time.monotonic())
        if len(stamps) == 1:
            handler.set_status(503)
            handler.set_header("Retry-After", "1")
            return
        handler.set_status(204)

    base, _ = double_server(respond)
    assert client_for(base).search_studies() == []
    assert stamps[1] - stamps[0] >= 0.95


def test_a_retry_after_beyond_the_cap_is_reported_not_waited(double_server) -> None:
    def respond(handler, seen):
        handler.set_status(503)
        handler.set_header("Retry-After", "3600")
        handler.write({"detail": "down for maintenance"})

    base, double = double_server(respond)
    client = client_for(base, retry=RetryPolicy(max_retry_after=5))
    with pytest.raises(DICOMwebError) as info:
        client.search_studies()
    assert info.value.status == 503
    assert "down for maintenance" in str(info.value)
    assert len(double.seen("/studies")) == 1


def test_retries_stop_after_the_policy_attempts(double_server) -> None:
    def respond(handler, seen):
        handler.set_status(429)
        handler.set_header("Retry-After", "0")

    base, double = double_server(respond)
    client = client_for(base, retry=RetryPolicy(attempts=3))
    with pytest.raises(DICOMwebError) as info:
        client.search_studies()
    assert info.value.status == 429
    assert len(double.seen("/studies")) == 3


def test_a_silent_server_times_out_with_a_clear_error(double_server) -> None:
    async def respond(handler, seen):
        await asyncio.sleep(3)

    base, _ = double_server(respond)
    client = client_for(base, settings=Settings(timeout=0.5))
    with pytest.raises(DICOMwebError, match=r"no answer within 0\.5 s"):
        client.search_studies()


def test_errors_carry_status_url_and_server_message(double_server) -> None:
    def respond(handler, seen):
        handler.set_status(400)
        handler.set_header("Content-Type", "application/json")
        handler.write({"detail": "PatientID is malformed"})

    base, _ = double_server(respond)
    with pytest.raises(DICOMwebError) as info:
        client_for(base).search_studies({"PatientID": "x"})
    assert info.value.status == 400
    assert info.value.url is not None and "/studies" in info.value.url
    assert "PatientID is malformed" in str(info.value)


def _recorder(handler, seen):
    handler.set_status(204)


def test_credentials_go_only_to_the_mapped_origin(double_server) -> None:
    """D7: a request carries a credential only if its origin is mapped."""
    mapped, mapped_double = double_server(_recorder)
    other, other_double = double_server(_recorder)
    auth = AuthMap({mapped: BearerToken("secret-token")})
    client_for(mapped, auth=auth).search_studies()
    client_for(other, auth=auth).search_studies()
    assert mapped_double.seen()[0].headers.get("authorization") == "Bearer secret-token"
    assert "authorization" not in other_double.seen()[0].headers


def test_a_redirect_to_another_origin_drops_the_credential(double_server) -> None:
    """A hostile redirect (another port is another origin) gets no Authorization."""
    other, other_double = double_server(_recorder)

    def redirect(handler, seen):
        handler.redirect(f"{other}/studies", status=307)

    mapped, mapped_double = double_server(redirect)
    auth = AuthMap({mapped: BasicAuth("alice", "pw")})
    assert client_for(mapped, auth=auth).search_studies() == []
    assert mapped_double.seen()[0].headers["authorization"].startswith("Basic ")
    assert other_double.seen(), "the redirect was not followed"
    assert "authorization" not in other_double.seen()[0].headers


def test_bulk_requests_never_negotiate_compression(double_server) -> None:
    def respond(handler, seen):
        handler.set_status(404)

    base, double = double_server(respond)
    with pytest.raises(DICOMwebError):
        list(client_for(base).iter_series("1.2.3", "1.2.3.4"))
    assert double.seen()[0].headers.get("accept-encoding") == "identity"
