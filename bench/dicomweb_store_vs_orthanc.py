"""QIDO-RS and WADO-RS throughput: imagingkit's embedded DICOMweb store vs Orthanc.

Claim (issue 2): the embedded store is no slower than Orthanc 1.10 + DICOMweb 1.7 on the
same data. Both servers get the same files — the generated sandbox (for a realistic mix
of studies to query) plus one CT series of ``--instances`` 512×512 int16 slices (for
retrieval) — and are measured in the same run, interleaved, each figure the median of
``--runs`` runs. Every request sends ``Accept-Encoding: identity`` and Orthanc runs with
``HttpCompressionEnabled: false`` (see shared notes: gzip costs Orthanc ≈ 46 ms a
request). Server and client share this machine's cores.

Run: ``.venv/bin/python bench/dicomweb_store_vs_orthanc.py [--size default] [--runs 3]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from servers import IDENTITY, start_imagingkit, start_orthanc  # noqa: E402

INSTANCE_ACCEPT = 'multipart/related; type="application/dicom"'


# --------------------------------------------------------------------------- data


def write_ct_series(folder: Path, count: int, seed: int = 7) -> list[Path]:
    """Write one CT series of *count* 512×512 int16 slices (Explicit VR Little Endian)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-256:256, -256:256]
    body = (xx**2 / 200**2 + yy**2 / 150**2) <= 1
    study, series = (
        generate_uid(entropy_srcs=["bench-study"]),
        generate_uid(entropy_srcs=["bench-series"]),
    )
    paths = []
    for index in range(count):
        pixels = np.where(body, 40, -1000).astype(np.int16)
        pixels += rng.normal(0, 12, pixels.shape).astype(np.int16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["bench", str(index)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID = "Bench^Volume", "BENCH-0001"
        ds.StudyDate, ds.StudyTime, ds.Modality = "20240102", "101500", "CT"
        ds.AccessionNumber, ds.StudyID, ds.SeriesNumber = "BENCH1", "1", 1
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [-250.0, -250.0, -index * 1.25]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [0.98, 0.98], 1.25
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = pixels.tobytes()
        path = folder / f"CT{index:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- HTTP


class Client:
    """One keep-alive HTTP/1.1 connection that sends targets byte for byte."""

    def __init__(self, base: str) -> None:
        origin, _, prefix = base.partition("://")[2].partition("/")
        host, _, port = origin.partition(":")
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.conn = http.client.HTTPConnection(host, int(port), timeout=120)

    def get(self, target: str, accept: str = "application/dicom+json") -> int:
        """GET *target*; return the number of body bytes (raising on a non-200 answer)."""
        self.conn.request("GET", self.prefix + target, headers={**IDENTITY, "Accept": accept})
        response = self.conn.getresponse()
        size = 0
        while chunk := response.read(1 << 20):
            size += len(chunk)
        if response.status != 200:
            raise RuntimeError(f"GET {target} answered {response.status}")
        return size

    def close(self) -> None:
        self.conn.close()


@dataclass
class Server:
    name: str
    dicomweb: str


def qido_mix(headers: Sequence[Dataset]) -> list[str]:
    """A mix of study-, series- and instance-level searches drawn from the data."""
    by_study: dict[str, Dataset] = {}
    for ds in headers:
        by_study.setdefault(str(ds.StudyInstanceUID), ds)
    studies = list(by_study.values())
    a, b = studies[len(studies) // 3], studies[2 * len(studies) // 3]
    dates = sorted(str(ds.StudyDate) for ds in studies if str(ds.get("StudyDate", "")))
    low, high = dates[len(dates) // 4], dates[3 * len(dates) // 4]
    family = str(a.PatientName).split("^")[0][:3]
    return [
        "/studies?limit=100",
        f"/studies?PatientID={a.PatientID}",
        f"/studies?StudyDate={low}-{high}",
        f"/studies?PatientName={family}*",
        f"/studies?StudyInstanceUID={a.StudyInstanceUID},{b.StudyInstanceUID}",
        "/studies?ModalitiesInStudy=CT",
        "/series?Modality=MR",
        f"/studies/{a.StudyInstanceUID}/series",
        f"/studies/{b.StudyInstanceUID}/series",
        f"/studies/{a.StudyInstanceUID}/series/{a.SeriesInstanceUID}/instances",
        f"/instances?SeriesInstanceUID={b.SeriesInstanceUID}",
        "/studies?limit=10&offset=20",
    ]


# --------------------------------------------------------------------------- measures


def qido_seconds(server: Server, queries: Sequence[str], rounds: int) -> tuple[float, ...]:
    """Mean seconds of each query over *rounds* passes of the mix on one connection."""
    client = Client(server.dicomweb)
    totals = [0.0] * len(queries)
    try:
        for _ in range(rounds):
            for i, target in enumerate(queries):
                start = time.perf_counter()
                client.get(target)
                totals[i] += time.perf_counter() - start
    finally:
        client.close()
    return tuple(t / rounds for t in totals)


def per_instance(server: Server, targets: Sequence[str], threads: int) -> tuple[float, float]:
    """Retrieve each instance with its own GET; return (instances/s, MB/s)."""
    chunks = [targets[i::threads] for i in range(threads)]

    def worker(part: Sequence[str]) -> int:
        client = Client(server.dicomweb)
        try:
            return sum(client.get(t, INSTANCE_ACCEPT) for t in part)
        finally:
            client.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(worker, chunks))
    elapsed = time.perf_counter() - start
    return len(targets) / elapsed, total / elapsed / 1e6


def whole_series(server: Server, target: str, count: int) -> tuple[float, float]:
    """Retrieve the series in one multipart answer; return (instances/s, MB/s)."""
    client = Client(server.dicomweb)
    try:
        start = time.perf_counter()
        total = client.get(target, INSTANCE_ACCEPT)
        elapsed = time.perf_counter() - start
    finally:
        client.close()
    return count / elapsed, total / elapsed / 1e6


# --------------------------------------------------------------------------- report

QIDO = "QIDO mix"


def print_tables(medians: dict[tuple[str, str], list[float]], queries: Sequence[str]) -> None:
    """Print the summary table and the per-query QIDO table (Markdown)."""
    ours_q, theirs_q = medians[(QIDO, "embedded")], medians[(QIDO, "Orthanc")]
    speedups = [t / o for o, t in zip(ours_q, theirs_q, strict=True)]
    geometric = statistics.geometric_mean(speedups)
    print("| measure | embedded | Orthanc | embedded / Orthanc |")
    print("|---|---|---|---|")
    mix_ours, mix_theirs = len(queries) / sum(ours_q), len(queries) / sum(theirs_q)
    print(
        f"| QIDO mix, {len(queries)} searches (queries/s) | {mix_ours:,.0f} | {mix_theirs:,.0f} "
        f"| {mix_ours / mix_theirs:.1f}× (per-search geometric mean {geometric:.1f}×) |"
    )
    for name in (k for k, server in medians if server == "embedded" and k != QIDO):
        ours, theirs = medians[(name, "embedded")], medians[(name, "Orthanc")]
        print(
            f"| {name} | {ours[0]:,.0f} inst/s, {ours[1]:,.0f} MB/s "
            f"| {theirs[0]:,.0f} inst/s, {theirs[1]:,.0f} MB/s | {ours[0] / theirs[0]:.2f}× |"
        )
    print("\n| QIDO search | embedded ms | Orthanc ms | speed-up |")
    print("|---|---|---|---|")
    for target, mine, other in zip(queries, ours_q, theirs_q, strict=True):
        shown = target if len(target) <= 60 else target[:57] + "…"
        print(f"| `{shown}` | {mine * 1e3:.1f} | {other * 1e3:.1f} | {other / mine:.1f}× |")


# --------------------------------------------------------------------------- main


def _machine_note() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    orthanc = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version} ", "orthanc", "orthanc-dicomweb"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return (
        f"{dt.date.today().isoformat()}, {os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, "
        f"Python {platform.python_version()}, Orthanc + DICOMweb plugin {orthanc or '?'}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="default", help="sandbox size for the QIDO data")
    parser.add_argument("--instances", type=int, default=500, help="slices in the CT series")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs (median)")
    parser.add_argument("--qido-rounds", type=int, default=10, help="passes over the mix")
    parser.add_argument("--threads", type=int, default=4, help="threads for concurrent GETs")
    parser.add_argument("--data-dir", type=Path, default=REPO / ".cache" / "bench-data")
    args = parser.parse_args(argv)

    from imagingkit.sandbox.generate import ensure_sandbox

    work = Path(tempfile.mkdtemp(prefix="imagingkit-bench-"))
    orthanc = embedded = None
    try:
        print("preparing data …", flush=True)
        sandbox = ensure_sandbox(args.data_dir, size=args.size, seed=42)
        ct_files = write_ct_series(work / "ct-series", args.instances)
        sandbox_files = [
            p for p in sorted(sandbox.rglob("*")) if p.is_file() and p.suffix != ".json"
        ]
        orthanc = start_orthanc(work / "orthanc")
        report = orthanc.upload([*sandbox_files, *ct_files])
        print(
            f"Orthanc stored {len(report.stored)} files "
            f"(refused {len(report.refused)}, duplicates {len(report.duplicates)})",
            flush=True,
        )
        # the embedded store serves exactly the files Orthanc stored
        same = work / "same-files"
        for path in report.stored:
            base = sandbox if path.is_relative_to(sandbox) else work
            target = same / path.relative_to(base)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)
        embedded = start_imagingkit(
            ["--dicom-dir", str(same), "--port", "0", "--data-dir", str(work / "ik-data")],
            log=work / "serve.log",
            data_dir=work / "ik-data",
        )
        servers = [
            Server("embedded", embedded.dicomweb),
            Server("Orthanc", orthanc.dicomweb),
        ]

        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in report.stored]
        queries = qido_mix(headers)
        ct_series = pydicom.dcmread(ct_files[0], stop_before_pixels=True).SeriesInstanceUID
        ct = [h for h in headers if h.SeriesInstanceUID == ct_series]
        study, series = ct[0].StudyInstanceUID, ct[0].SeriesInstanceUID
        instance_targets = [
            f"/studies/{study}/series/{series}/instances/{h.SOPInstanceUID}" for h in ct
        ]
        series_target = f"/studies/{study}/series/{series}"

        measures: dict[str, Callable[[Server], tuple[float, ...]]] = {
            QIDO: lambda s: qido_seconds(s, queries, args.qido_rounds),
            "WADO instance GETs, 1 thread": lambda s: per_instance(s, instance_targets, 1),
            f"WADO instance GETs, {args.threads} threads": lambda s: per_instance(
                s, instance_targets, args.threads
            ),
            "WADO whole-series retrieve": lambda s: whole_series(s, series_target, len(ct)),
        }
        for server in servers:  # warm-up: page cache, connections, lazy imports
            for measure in measures.values():
                measure(server)
        results: dict[tuple[str, str], list[tuple[float, ...]]] = {}
        for run in range(args.runs):
            order = servers if run % 2 == 0 else servers[::-1]
            for name, measure in measures.items():
                for server in order:
                    results.setdefault((name, server.name), []).append(measure(server))
            print(f"run {run + 1}/{args.runs} done", flush=True)
        medians = {
            key: [statistics.median(v) for v in zip(*runs, strict=True)]
            for key, runs in results.items()
        }
        print(f"\n{len(headers)} instances, CT series of {len(ct)} × 512×512 int16")
        print(_machine_note())
        print(f"medians of {args.runs} interleaved runs\n")
        print_tables(medians, queries)
        return 0
    finally:
        if embedded is not None:
            embedded.stop()
        if orthanc is not None:
            orthanc.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
