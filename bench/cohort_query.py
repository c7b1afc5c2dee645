"""Benchmark: a cohort query end to end (FHIR search + flatten) over 20,000 ImagingStudies.

Claim (issue 4): ``bridge.cohort()….studies()`` returns the series-level DataFrame faster
than the idiom it replaces, fhirpy's ``fetch_all()`` plus hand flattening.

The embedded FHIR store runs in a separate process (``--serve`` mode of this script, so
server and client do not share a GIL), loaded by the script with a deterministic
synthetic record (``imagingkit.sandbox.clinical_scale``, clinical resources left out) of
``--studies`` ImagingStudies. Both methods then ask the same server for the same studies
and build a series-level DataFrame:

* fhirpy: ``client.resources("ImagingStudy").search(...).limit(500).fetch_all()``, then a
  Python loop over studies and series into rows, ``pd.DataFrame(rows)`` and date parsing;
* imagingkit: ``connect(url).cohort()….studies(level="series")``, which also resolves the
  Endpoints and Patients (DICOMweb URL and patient columns) that the fhirpy idiom skips.

Two queries are timed, interleaved, ``--repeat`` times (median wall time): every study,
and the female patients' studies (chained on the server by imagingkit; the fhirpy idiom
sends the same chained parameter).

    .venv/bin/python bench/cohort_query.py [--studies 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import requests

PAGE = 500


def serve(folder: str) -> None:
    """``--serve FOLDER``: serve an embedded FHIR store until stdin closes."""
    from imagingkit.sandbox.fhir.testing import serving_store

    with serving_store(Path(folder)) as (base, _store):
        print(base, flush=True)
        sys.stdin.read()


@contextmanager
def store_process(script: str, prefix: str) -> Iterator[str]:
    """Run *script* ``--serve`` (an embedded FHIR store in its own process, so it shares no
    GIL with the client) on a new temporary folder; yield its FHIR base URL; stop it."""
    folder = tempfile.mkdtemp(prefix=prefix)
    server = subprocess.Popen(
        [sys.executable, script, "--serve", folder],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(script).parent,
    )
    try:
        assert server.stdout is not None
        base = server.stdout.readline().strip()
        if not base.startswith("http"):
            raise SystemExit(f"the FHIR store did not start: {base!r}")
        yield base
    finally:
        if server.stdin:
            server.stdin.close()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def load(base: str, studies: int) -> None:
    from imagingkit.sandbox.clinical import transaction_bundles
    from imagingkit.sandbox.clinical_scale import synthetic_record

    resources = synthetic_record(
        studies, seed=1, clinical=False, endpoint_address="http://127.0.0.1:9/dicom-web"
    )
    with requests.Session() as session:
        for bundle in transaction_bundles(resources):
            response = session.post(base, json=bundle, timeout=600)
            response.raise_for_status()


def with_fhirpy(base: str, gender: str | None) -> pd.DataFrame:
    from fhirpy import SyncFHIRClient

    client = SyncFHIRClient(base)
    search = client.resources("ImagingStudy").limit(PAGE)
    if gender:
        search = search.search(**{"patient.gender": gender})
    rows = []
    for study in search.fetch_all():
        uid = next(
            (
                i["value"].removeprefix("urn:oid:")
                for i in study.get("identifier", [])
                if i.get("system") == "urn:dicom:uid"
            ),
            None,
        )
        for series in study.get("series", []):
            rows.append(
                {
                    "imaging_study_id": study["id"],
                    "patient_ref": study.get("subject", {}).get("reference"),
                    "StudyInstanceUID": uid,
                    "started": study.get("started"),
                    "StudyDescription": study.get("description"),
                    "NumberOfStudyRelatedSeries": study.get("numberOfSeries"),
                    "SeriesInstanceUID": series.get("uid"),
                    "SeriesNumber": series.get("number"),
                    "Modality": series.get("modality", {}).get("code"),
                    "SeriesDescription": series.get("description"),
                    "body_site_code": series.get("bodySite", {}).get("code"),
                    "NumberOfSeriesRelatedInstances": series.get("numberOfInstances"),
                }
            )
    frame = pd.DataFrame(rows)
    frame["StudyDate"] = pd.to_datetime(frame["started"], format="ISO8601", utc=True)
    return frame


def with_imagingkit(base: str, gender: str | None) -> pd.DataFrame:
    import imagingkit

    cohort = imagingkit.connect(base).cohort()
    if gender:
        cohort = cohort.patient(gender=gender)
    return cohort.studies(level="series", progress=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--serve", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    with store_process(__file__, "ik-bench-cohort-") as base:
        start = time.perf_counter()
        load(base, args.studies)
        print(
            f"loaded {args.studies:,} ImagingStudy into the embedded store in "
            f"{time.perf_counter() - start:.0f} s ({base})"
        )
        methods: dict[str, Callable[[str, str | None], pd.DataFrame]] = {
            "fhirpy fetch_all + hand flattening": with_fhirpy,
            "imagingkit cohort().studies()": with_imagingkit,
        }
        for gender in (None, "female"):
            times: dict[str, list[float]] = {name: [] for name in methods}
            rows: dict[str, int] = {}
            for _ in range(args.repeat):
                for name, method in methods.items():
                    begin = time.perf_counter()
                    frame = method(base, gender)
                    times[name].append(time.perf_counter() - begin)
                    rows[name] = len(frame)
            label = "every study" if gender is None else f"patient.gender={gender}"
            baseline = statistics.median(times["fhirpy fetch_all + hand flattening"])
            print(f"\nquery: {label}")
            print(f"{'method':<40} {'rows':>9} {'median s':>9} {'speed-up':>9}")
            for name, values in times.items():
                median = statistics.median(values)
                print(f"{name:<40} {rows[name]:>9,} {median:>9.2f} {baseline / median:>8.1f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
