"""``Cohort.count()``: asked of the server (``_summary=count``) when one search is the cohort,
and always equal to ``len()`` of the frame it counts (DESIGN.md D6).

Runs against the embedded FHIR store (which declares chaining, ``_has`` and ``_include``)
and Medplum (no CapabilityStatement: baseline parameters, every join on the client), with
the resources, cohorts and servers of ``test_cohort.py``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from test_cohort import (  # the same resources, servers and cohorts  # noqa: F401
    CASES,
    embedded,
    medplum,
    resources,
)

import imagingkit
from imagingkit.config import Settings
from imagingkit.fhir.cohort import Cohort
from imagingkit.sandbox.fhir import FhirStore
from imagingkit.sandbox.fhir.testing import serving

Build = Callable[[Cohort], Cohort]

#: cohort → the levels each server counts itself (the others are retrieved and counted)
COHORTS: dict[str, tuple[Build, dict[str, set[str]]]] = {
    "everyone": (lambda c: c, {"embedded": {"patient", "study"}, "medplum": {"patient", "study"}}),
    "female": (
        lambda c: c.patient(gender="female"),
        {"embedded": {"patient", "study"}, "medplum": {"patient"}},
    ),
    "born-1950s-chest-ct": (
        lambda c: c.patient(birth_date=("1950", "1959-12-31")).imaging(
            modality="CT", body_site="CHEST"
        ),
        {"embedded": {"study"}, "medplum": set()},
    ),
    "mr-or-cr": (
        lambda c: c.imaging(modality=["MR", "CR"]),
        {"embedded": {"study"}, "medplum": {"study"}},
    ),
    "ct-since-2018": (  # started: the server's time zone may differ, so never its count
        lambda c: c.imaging(modality="CT", started=("2018", None)),
        {"embedded": set(), "medplum": set()},
    ),
}


#: the same for the cohorts of test_cohort.py (observations are joined, descriptions checked
#: by imagingkit; Medplum neither chains nor reverse-chains)
CASES_COUNTED: dict[str, dict[str, set[str]]] = {
    "female-ct": {"embedded": {"study"}, "medplum": set()},
    "lung-nodule-by-age": {"embedded": {"patient"}, "medplum": set()},
    "hemoglobin-range-mr": {"embedded": set(), "medplum": set()},
    "chest-2015-2020-described": {"embedded": set(), "medplum": set()},
    "male-two-conditions-born-1950s": {"embedded": {"patient"}, "medplum": set()},
}


def _server_counted(name: str, server: str) -> set[str]:
    if name in COHORTS:
        return COHORTS[name][1][server]
    return CASES_COUNTED[name.removeprefix("case-")][server]


def _check_counts(base: str, server: str, name: str, build: Build) -> None:
    bridge = imagingkit.connect(base)
    bridge.capabilities()  # read once, so the requests below are the count's own
    cohort = build(bridge.cohort())
    explained = cohort.explain()
    counted = _server_counted(name, server)
    for level in ("patient", "study", "series"):
        before = len(bridge.fhir.requests_made)
        total = cohort.count(level)
        made = bridge.fhir.requests_made[before:]
        if level in counted:
            assert len(made) == 1 and "_summary=count" in made[0], (name, level, made)
            assert f"count({level!r}): counted by the server" in explained
        else:
            assert not any("_summary=count" in url for url in made), (name, level, made)
            if level != "series":
                assert f"count({level!r}): retrieved and counted" in explained
        frame = cohort.patients(progress=False) if level == "patient" else None
        if frame is None:
            frame = cohort.studies(level=level, progress=False)
        assert total == len(frame), (name, level, total, len(frame))


ALL = sorted(COHORTS) + [f"case-{name}" for name in sorted(CASES)]


def _build(name: str) -> Build:
    return COHORTS[name][0] if name in COHORTS else CASES[name.removeprefix("case-")][0]


@pytest.mark.parametrize("name", ALL)
def test_count_equals_the_frame_on_the_embedded_store(name: str, embedded: str) -> None:  # noqa: F811
    _check_counts(embedded, "embedded", name, _build(name))


@pytest.mark.medplum
@pytest.mark.parametrize("name", ALL)
def test_count_equals_the_frame_on_medplum(name: str, medplum: str) -> None:  # noqa: F811
    _check_counts(medplum, "medplum", name, _build(name))


def test_patient_criteria_alone_keep_patients_without_studies(tmp_path: Path) -> None:
    """Chaining the patient criteria onto the study search is for studies only: a patient
    cohort without imaging criteria holds the patients who have no study too (the same
    with server and client joins, and counted by the server)."""
    store = FhirStore(tmp_path / "fhir.sqlite", settings=Settings(data_dir=tmp_path))
    for ident, gender in (("a", "female"), ("b", "female"), ("c", "male")):
        store.upsert({"resourceType": "Patient", "id": ident, "gender": gender})
    for ident in ("a", "c"):
        store.upsert(
            {
                "resourceType": "ImagingStudy",
                "id": f"study-{ident}",
                "status": "available",
                "subject": {"reference": f"Patient/{ident}"},
                "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:2.25.{ord(ident)}"}],
            }
        )
    try:
        with serving([store]) as origin:
            for joins in ("auto", "client"):
                bridge = imagingkit.connect(f"{origin}/fhir", joins=joins)  # type: ignore[arg-type]
                cohort = bridge.cohort().patient(gender="female")
                patients = cohort.patients(progress=False)
                assert list(patients["patient_ref"]) == ["Patient/a", "Patient/b"], joins
                assert cohort.count() == 2
                assert cohort.count("study") == len(cohort.studies(level="study")) == 1
    finally:
        store.close()


class _NoCount(BaseHTTPRequestHandler):
    """Forwards GETs to the embedded store, answering 400 to ``_summary=count``."""

    upstream = ""

    def do_GET(self) -> None:
        if "_summary=count" in self.path:
            outcome = {"resourceType": "OperationOutcome", "issue": [{"code": "not-supported"}]}
            body, status = json.dumps(outcome).encode(), 400
        else:
            answer = requests.get(self.upstream + self.path, timeout=120)
            body, status = answer.content, answer.status_code
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return None


def test_a_server_refusing_the_count_gets_the_cohort_counted(embedded: str) -> None:  # noqa: F811
    """A 4xx answer to ``_summary=count`` falls back to retrieving the cohort."""
    _NoCount.upstream = embedded.rsplit("/fhir", 1)[0]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoCount)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        bridge = imagingkit.connect(f"http://127.0.0.1:{server.server_address[1]}/fhir")
        cohort = bridge.cohort().imaging(modality="CT")
        assert "count('study'): counted by the server" in cohort.explain()
        before = len(bridge.fhir.requests_made)
        total = cohort.count("study")
        made = bridge.fhir.requests_made[before:]
        assert "_summary=count" in made[0] and len(made) > 1  # refused, then retrieved
        assert total == len(cohort.studies(level="study", progress=False)) > 0
    finally:
        server.shutdown()
        thread.join(10)
