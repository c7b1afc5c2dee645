"""Cohort searches: imagingkit's embedded FHIR store vs a real FHIR engine (Medplum).

Claim (issue 3): the embedded store answers typical cohort searches over a realistic
volume — 20,000 ImagingStudy resources and their patients — at least as fast as a real
FHIR engine, Medplum's FhirRouter over its in-memory repository (``tests/medplum``).

Both servers run as their own processes on loopback and get the same resources, generated
here (deterministic, :func:`imagingkit.sandbox.clinical_scale.synthetic_record`: the
sandbox's R4 shape), loaded
through transaction Bundles of PUTs (50 entries each, Medplum's limit) in the same run.
Each search is then timed on both, interleaved, as the median of ``--runs`` runs of a
full HTTP round trip. The table shows both times, their ratio (embedded / Medplum; < 1
means the embedded store is faster) and each server's ``total``, so that a search one
engine does not implement (Medplum's in-memory engine ignores chaining and ``_include``)
is visible rather than silently fast.

Run: ``.venv/bin/python bench/fhir_store_vs_medplum.py [--studies 20000] [--runs 5]``
"""

from __future__ import annotations

import argparse
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from medplum.launcher import (  # noqa: E402
    MedplumServer,
    medplum_missing_reason,
    start_medplum,
)

from imagingkit.sandbox.clinical import transaction_bundle  # noqa: E402
from imagingkit.sandbox.clinical_scale import synthetic_record  # noqa: E402

CHUNK = 50
SEED = 20_000


# --------------------------------------------------------------------------- servers


@dataclass
class Engine:
    """A FHIR base URL under test and how to stop it."""

    name: str
    base: str
    session: requests.Session
    stop: Callable[[], object]

    def get(self, url: str) -> dict[str, Any]:
        absolute = url if url.startswith("http") else self.base + url
        response = self.session.get(
            absolute, headers={"Accept": "application/fhir+json"}, timeout=600
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def load(self, resources: Sequence[dict[str, Any]]) -> float:
        """PUT *resources* in transaction Bundles of CHUNK; return the seconds taken."""
        started = time.perf_counter()
        for start in range(0, len(resources), CHUNK):
            bundle = transaction_bundle(resources[start : start + CHUNK])
            response = self.session.post(
                self.base,
                json=bundle,
                headers={"Content-Type": "application/fhir+json"},
                timeout=600,
            )
            if response.status_code != 200:
                raise SystemExit(f"{self.name} refused a transaction: {response.text[:500]}")
        return time.perf_counter() - started


_EMBEDDED_SERVER = """
import sys
from pathlib import Path
from imagingkit.config import Settings
from imagingkit.sandbox.fhir import FhirStore
from imagingkit.server.serve import serve
serve([FhirStore(Path(sys.argv[1]), settings=Settings())], host="127.0.0.1", port=0)
"""


def start_embedded(workdir: Path, timeout: float = 60) -> Engine:
    """The embedded FHIR store alone, served by ``imagingkit.server.serve`` in its own
    process (as ``imagingkit serve`` does), empty, on a free loopback port."""
    process = subprocess.Popen(
        [sys.executable, "-c", _EMBEDDED_SERVER, str(workdir / "fhir.sqlite")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    base = None
    while base is None and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        found = re.match(r"^\s+fhir\s+(http://\S+)\s*$", line)
        base = found.group(1) if found else None
    if base is None:
        process.kill()
        raise SystemExit("the embedded FHIR store did not start")

    def stop() -> None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()

    return Engine("embedded", base, requests.Session(), stop)


def start_reference() -> Engine:
    reason = medplum_missing_reason()
    if reason:
        raise SystemExit(reason)
    server: MedplumServer = start_medplum(timeout=120)
    return Engine("Medplum", server.url, server.session, server.stop)


# --------------------------------------------------------------------------- searches


def page_through(engine: Engine, url: str) -> tuple[int, int | None]:
    """Follow ``next`` links from *url*; return (entries seen, Bundle.total)."""
    seen, total, pages = 0, None, 0
    next_url: str | None = url
    while next_url and pages < 10_000:
        bundle = engine.get(next_url)
        pages += 1
        total = bundle.get("total", total)
        seen += sum(
            1
            for e in bundle.get("entry", [])
            if e.get("search", {}).get("mode", "match") == "match"
        )
        links = bundle.get("link", [])
        next_url = next((k["url"] for k in links if k["relation"] == "next"), None)
    return seen, total


def one_page(engine: Engine, url: str) -> tuple[int, int | None]:
    bundle = engine.get(url)
    return len(bundle.get("entry", [])), bundle.get("total")


SEARCHES: list[tuple[str, str, Callable[[Engine, str], tuple[int, int | None]]]] = [
    ("CT since 2020", "ImagingStudy?modality=CT&started=ge2020&_count=100", one_page),
    ("women born before 1960", "Patient?gender=female&birthdate=lt1960&_count=100", one_page),
    ("studies of women (chained)", "ImagingStudy?patient.gender=female&_count=100", one_page),
    (
        "MR + _include patient",
        "ImagingStudy?modality=MR&_include=ImagingStudy:patient&_count=100",
        one_page,
    ),
    (
        "page through all CT (_count=500, 1 run)",
        "ImagingStudy?modality=CT&_count=500",
        page_through,
    ),
    ("count MG (_summary=count)", "ImagingStudy?modality=MG&_summary=count", one_page),
    # one run only: Medplum's in-memory identifier search costs ~20 ms per ImagingStudy
    (
        "study by Study UID (1 run)",
        "ImagingStudy?identifier=urn:dicom:uid|urn:oid:{study_uid}",
        one_page,
    ),
    ("studies of one patient", "ImagingStudy?subject=Patient/{patient}", one_page),
    ("family name prefix", "Patient?family=rob&_count=100", one_page),
    ("latest 50 studies (_sort)", "ImagingStudy?_sort=-started&_count=50", one_page),
]


def measure(
    engines: Sequence[Engine], query: str, run: Callable[[Engine, str], Any], runs: int
) -> dict[str, tuple[float, Any]]:
    times: dict[str, list[float]] = {e.name: [] for e in engines}
    answers: dict[str, Any] = {}
    for _ in range(runs):
        for engine in engines:  # interleaved, so drift hits both alike
            started = time.perf_counter()
            answers[engine.name] = run(engine, query)
            times[engine.name].append(time.perf_counter() - started)
    return {name: (statistics.median(values), answers[name]) for name, values in times.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    resources = synthetic_record(args.studies, seed=SEED, clinical=False)
    patients = sum(r["resourceType"] == "Patient" for r in resources)
    print(
        f"generated {args.studies} ImagingStudy + {patients} Patient resources "
        f"in {time.perf_counter() - started:.1f} s"
    )
    first_patient = next(r["id"] for r in resources if r["resourceType"] == "Patient")
    middle_study = [r for r in resources if r["resourceType"] == "ImagingStudy"][args.studies // 2]
    study_uid = middle_study["identifier"][0]["value"].removeprefix("urn:oid:")

    with tempfile.TemporaryDirectory(prefix="imagingkit-bench-fhir-") as tmp:
        engines = [start_embedded(Path(tmp)), start_reference()]
        try:
            for engine in engines:
                seconds = engine.load(resources)
                print(
                    f"loaded into {engine.name:<8} in {seconds:7.1f} s "
                    f"({len(resources) / seconds:,.0f} resources/s)"
                )
            print()
            print(f"python {platform.python_version()}, {platform.machine()}, runs={args.runs}")
            header = (
                f"{'search':<40} {'embedded ms':>12} {'Medplum ms':>11} {'ratio':>7} "
                f"{'emb. total':>10} {'Mp. total':>10}"
            )
            print(header)
            print("-" * len(header))
            for label, template, run in SEARCHES:
                query = template.format(patient=first_patient, study_uid=study_uid)
                runs = 1 if label.endswith("1 run)") else args.runs
                result = measure(engines, query, run, runs)
                (emb_t, emb_a), (mp_t, mp_a) = result["embedded"], result["Medplum"]
                same = _total(emb_a) == _total(mp_a)
                ratio = f"{emb_t / mp_t:7.2f}" if same else "    n/a"
                print(
                    f"{label:<40} {emb_t * 1000:12.1f} {mp_t * 1000:11.1f} "
                    f"{ratio} {_total(emb_a):>10} {_total(mp_a):>10}"
                )
            print(
                "\nratio = embedded / Medplum (< 1: the embedded store is faster); n/a where the"
                "\ntotals differ, i.e. Medplum's in-memory engine does not implement the search."
            )
        finally:
            for engine in engines:
                engine.stop()


def _total(answer: tuple[int, int | None]) -> str:
    count, total = answer
    return str(total) if total is not None else f"{count} seen"


if __name__ == "__main__":
    main()
