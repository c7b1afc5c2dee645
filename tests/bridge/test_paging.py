"""FHIR search paging terminates on misbehaving servers (R4 http §3.1.0.14).

A loopback server answers ImagingStudy searches the way broken servers do: ignoring
``_offset`` (every page the same), linking a page to itself, or linking off the FHIR base.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Generator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest

import imagingkit
from imagingkit.errors import FHIRError
from imagingkit.fhir.client import FhirClient

PAGE = 3


def _study(n: int) -> dict[str, Any]:
    return {
        "resourceType": "ImagingStudy",
        "id": f"s{n}",
        "status": "available",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:2.25.{n}"}],
        "subject": {"reference": "Patient/p"},
        "series": [{"uid": f"2.25.{n}.1", "modality": {"code": "CT"}}],
    }


class _Broken(BaseHTTPRequestHandler):
    mode = "ignore-offset"
    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        if parts.path.endswith("/metadata"):
            body: dict[str, Any] = {"resourceType": "OperationOutcome"}
            self._send(404, body)
            return
        offset = int(query.get("_offset", ["0"])[0])
        start = 0 if self.mode == "ignore-offset" else offset
        entries = [{"resource": _study(n)} for n in range(start, start + PAGE)]
        if self.mode == "self-link":
            entries = [{"resource": _study(n)} for n in range(offset, offset + PAGE)]
            link = self.path  # the next page is this page again
        elif self.mode == "elsewhere":
            link = f"http://127.0.0.2:9/other/ImagingStudy?_offset={offset + PAGE}"
        else:
            link = f"{origin}/fhir/ImagingStudy?_offset={offset + PAGE}"
        body = {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": [{"relation": "next", "url": link}],
            "entry": entries,
        }
        self._send(200, body)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def broken() -> Generator[str, None, None]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Broken)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/fhir"
    finally:
        server.shutdown()
        thread.join(10)


@pytest.mark.parametrize("mode", ["ignore-offset", "self-link"])
def test_paging_stops_on_repeated_pages(broken: str, mode: str) -> None:
    _Broken.mode = mode
    before = len(_Broken.requests)
    pages = list(FhirClient(broken).pages("ImagingStudy", []))
    assert len(pages) == 1
    assert len(_Broken.requests) - before <= 3  # the page, maybe one prefetch; no loop
    frame = imagingkit.connect(broken).cohort().studies(progress=False)
    assert frame["imaging_study_id"].tolist() == ["s0", "s1", "s2"]


def test_a_next_link_off_the_fhir_base_is_refused(broken: str) -> None:
    _Broken.mode = "elsewhere"
    with pytest.raises(FHIRError, match="leaves the FHIR base"):
        list(FhirClient(broken).pages("ImagingStudy", []))


def test_a_server_without_capability_statement_is_searched_with_the_baseline(broken: str) -> None:
    _Broken.mode = "ignore-offset"
    bridge = imagingkit.connect(broken)
    assert not bridge.capabilities().declared
    assert "no CapabilityStatement" in bridge.cohort().imaging(modality="CT").explain()
