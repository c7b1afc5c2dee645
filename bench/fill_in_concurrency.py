"""QIDO-RS fill-in of ImagingStudies that list no series: sequential vs concurrent, on Orthanc.

Claim (DESIGN.md D2): filling in series (and instances) by QIDO-RS for studies whose
ImagingStudy lists none runs on the bulk executor — a pool of ``Settings.concurrency``
threads by default — and is several times faster than one study after another, with the
same frame.

Data: ``--studies`` synthetic studies of ``--series`` series × ``--instances`` tiny CT
instances (16×16, Explicit VR Little Endian), uploaded once through Orthanc's REST API
into ``.cache/bench-fill-in`` (kept between runs), served by Orthanc 1.10 + DICOMweb 1.7
on loopback. The embedded FHIR store (``imagingkit.sandbox.fhir.FhirStore``, on a thread
of this process) holds one ImagingStudy per study *without* its series, and an Endpoint
whose address is Orthanc's DICOMweb base. The frame comes from
``connect(fhir, fill_in=False).cohort().studies(level)`` once; then, in alternating order
in each of ``--runs`` runs, :func:`imagingkit.fhir.fill_in.fill_in` fills it in:

* sequential: ``executor=ThreadPoolExecutor(max_workers=1)`` — one study after another,
  as fill-in did before it used the bulk runner;
* concurrent: the default (a pool of ``Settings.concurrency`` threads, ``--workers``).

Both results are checked equal (``pandas.testing.assert_frame_equal``) before timing.
Server and client share the machine's two cores. Figures are medians.

Run: ``.venv/bin/python bench/fill_in_concurrency.py [--studies 120] [--runs 3] [--level series]``
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from servers import IDENTITY, start_orthanc  # noqa: E402

import imagingkit  # noqa: E402
from imagingkit.config import Settings  # noqa: E402
from imagingkit.fhir.fill_in import fill_in  # noqa: E402
from imagingkit.sandbox.fhir import FhirStore  # noqa: E402
from imagingkit.sandbox.fhir.testing import serving  # noqa: E402

SIZE = 16
ROOT = "2.25.7740"  # a fixed UID prefix: the same studies on every run


def _uid(*parts: int) -> str:
    return ".".join([ROOT, *(str(p) for p in parts)])


def tiny_ct(study: int, series: int, instance: int) -> bytes:
    """One 16×16 CT instance of a synthetic study (deterministic)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = _uid(study + 1, series + 1, instance + 1)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = _uid(study + 1)
    ds.SeriesInstanceUID = _uid(study + 1, series + 1)
    ds.PatientID = f"BENCH-{study:04d}"
    ds.PatientName = f"Bench^{study:04d}"
    ds.StudyDate = "20240101"
    ds.Modality = "CT"
    ds.BodyPartExamined = "CHEST"
    ds.SeriesNumber = series + 1
    ds.InstanceNumber = instance + 1
    ds.SeriesDescription = f"series {series + 1}"
    ds.Rows = ds.Columns = SIZE
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    values = np.random.default_rng(study * 1000 + series * 100 + instance)
    ds.PixelData = values.integers(0, 4096, (SIZE, SIZE), dtype=np.uint16).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def ensure_studies(orthanc_url: str, studies: int, series: int, instances: int) -> None:
    """Upload what Orthanc does not hold yet (it keeps its storage between runs)."""
    held = requests.get(f"{orthanc_url}/studies", headers=IDENTITY, timeout=60).json()
    if len(held) >= studies:
        return
    print(f"uploading {studies} studies to Orthanc (once) ...", flush=True)
    jobs = [(s, r, i) for s in range(studies) for r in range(series) for i in range(instances)]

    def upload(job: tuple[int, int, int]) -> None:
        response = requests.post(
            f"{orthanc_url}/instances",
            data=tiny_ct(*job),
            headers={**IDENTITY, "Content-Type": "application/dicom"},
            timeout=60,
        )
        response.raise_for_status()

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(upload, jobs))


def fhir_resources(studies: int, dicomweb: str) -> list[dict[str, object]]:
    """A Patient, an Endpoint at Orthanc, and one ImagingStudy per study without series."""
    endpoint = {
        "resourceType": "Endpoint",
        "id": "orthanc",
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs",
        },
        "payloadType": [{"text": "DICOM"}],
        "address": dicomweb,
    }
    out: list[dict[str, object]] = [
        {"resourceType": "Patient", "id": "bench", "gender": "unknown"},
        endpoint,
    ]
    for study in range(studies):
        out.append(
            {
                "resourceType": "ImagingStudy",
                "id": f"bench-{study:04d}",
                "status": "available",
                "subject": {"reference": "Patient/bench"},
                "started": "2024-01-01",
                "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{_uid(study + 1)}"}],
                "endpoint": [{"reference": "Endpoint/orthanc"}],
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=120)
    parser.add_argument("--series", type=int, default=2)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--level", choices=("series", "instance"), default="series")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=Settings().concurrency)
    parser.add_argument("--workdir", type=Path, default=REPO / ".cache" / "bench-fill-in")
    args = parser.parse_args()

    orthanc = start_orthanc(args.workdir / f"orthanc-{args.series}x{args.instances}", timeout=180)
    scratch = Path(tempfile.mkdtemp(prefix="imagingkit-bench-fill-in-"))
    settings = Settings(data_dir=scratch, concurrency=args.workers)
    store = FhirStore(scratch / "fhir.sqlite", settings=settings)
    try:
        ensure_studies(orthanc.url, args.studies, args.series, args.instances)
        for resource in fhir_resources(args.studies, orthanc.dicomweb):
            store.upsert(resource)
        with serving([store]) as origin:
            bridge = imagingkit.connect(f"{origin}/fhir", settings=settings, fill_in=False)
            bare = bridge.cohort().studies(level=args.level, progress=False)
            assert len(bare) == args.studies and bare["SeriesInstanceUID"].isna().all()
            expected_rows = args.studies * args.series
            expected_rows *= args.instances if args.level == "instance" else 1

            def sequential() -> pd.DataFrame:
                with ThreadPoolExecutor(max_workers=1) as one:
                    return fill_in(bare, args.level, bridge.dicomweb_client, executor=one)

            def concurrent() -> pd.DataFrame:
                return fill_in(bare, args.level, bridge.dicomweb_client)

            one, many = sequential(), concurrent()  # warm-up, and the same frame
            assert len(one) == expected_rows, f"{len(one)} rows, expected {expected_rows}"
            pd.testing.assert_frame_equal(one, many, check_exact=True)

            times: dict[str, list[float]] = {"sequential": [], "concurrent": []}
            for run in range(args.runs):
                order = (
                    ["sequential", "concurrent"] if run % 2 == 0 else ["concurrent", "sequential"]
                )
                for name in order:
                    call = sequential if name == "sequential" else concurrent
                    start = time.perf_counter()
                    call()
                    times[name].append(time.perf_counter() - start)
                print(
                    f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items())
                )
        med = {k: statistics.median(v) for k, v in times.items()}
        requests_per_study = 1 + (args.series if args.level == "instance" else 0)
        print()
        print(
            f"{args.studies} studies × {args.series} series × {args.instances} instances, "
            f"level={args.level} ({requests_per_study} QIDO-RS request(s) per study), "
            f"Orthanc + DICOMweb plugin on loopback, median of {args.runs} interleaved runs"
        )
        for name in ("sequential", "concurrent"):
            label = "1 worker" if name == "sequential" else f"{args.workers} workers"
            rate = args.studies / med[name]
            print(f"{name:11s} ({label:10s}) {med[name]:7.2f} s  {rate:7.1f} studies/s")
        print(f"concurrent vs sequential: {med['sequential'] / med['concurrent']:.2f}×")
    finally:
        store.close()
        orthanc.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
