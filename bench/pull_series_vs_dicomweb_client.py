"""Pull a ≥ 2,000-instance CT series from Orthanc into numpy: imagingkit vs dicomweb-client.

Claim (issue 4): imagingkit's cold pull is ≥ 3× dicomweb-client's sequential
``retrieve_series`` + pydicom ``pixel_array`` on this 2-core machine, and a warm (cached)
pull is ≥ 10× the cold one. Also reported: imagingkit's throughput as a fraction of the
server's raw limit — the fastest way found to move the same bytes with plain HTTP GETs
(one streamed series GET, and concurrent per-instance GETs, bytes discarded).

Data: ``--instances`` CT slices, 512×512, 12-bit unsigned stored with Rescale Intercept
−1024 (so the Modality LUT matters), Explicit VR Little Endian, one series; a deterministic
numpy phantom (body, lungs, spine, seeded noise). Uploaded once through Orthanc's REST API
into ``.cache/bench-pull`` (kept between runs), served by Orthanc 1.10 + DICOMweb 1.7 with
``HttpCompressionEnabled: false``, on loopback; server and client share the two cores.

Each of ``--runs`` rounds measures, in alternating order:

* dicomweb-client 0.61: ``retrieve_series`` then ``np.stack`` of ``pixel_array`` (no
  Modality LUT, no geometric ordering: less work than imagingkit does);
* imagingkit cold: an empty cache, ``DicomWebClient.series_volume`` (one streamed WADO-RS
  request, decoded as it arrives into the cache file, Hounsfield units, ordered by
  geometry); timed until the call returns, and again until the cache entry is on disk;
* imagingkit without a cache (``cache=False``);
* imagingkit warm: the same call again (verified, memory-mapped cache entry);
* the raw limits.

Figures are medians. Pixel throughput is ``instances × 512 × 512 × 2`` bytes per second.

Run: ``.venv/bin/python bench/pull_series_vs_dicomweb_client.py [--instances 2000] [--runs 3]``
"""

from __future__ import annotations

import argparse
import http.client
import io
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from servers import IDENTITY, start_orthanc  # noqa: E402

from imagingkit.cache import Cache  # noqa: E402
from imagingkit.config import Settings  # noqa: E402
from imagingkit.dicomweb.client import DicomWebClient  # noqa: E402

ROWS = 512
INSTANCE_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


# --------------------------------------------------------------------------- data


def phantom_slice(index: int, count: int) -> np.ndarray:
    """Stored values (uint16, 12 bits) of slice *index*: HU + 1024."""
    yy, xx = np.mgrid[0:ROWS, 0:ROWS].astype(np.float32)
    c = ROWS / 2
    body = ((xx - c) / (0.42 * ROWS)) ** 2 + ((yy - c) / (0.3 * ROWS)) ** 2 <= 1
    radius = 0.12 * ROWS * (0.5 + np.sin(np.pi * index / max(count - 1, 1)))
    lungs = ((xx - c + 0.2 * ROWS) ** 2 + (yy - c) ** 2 <= radius**2) | (
        (xx - c - 0.2 * ROWS) ** 2 + (yy - c) ** 2 <= radius**2
    )
    spine = (xx - c) ** 2 + (yy - c - 0.2 * ROWS) ** 2 <= (0.05 * ROWS) ** 2
    hu = np.full((ROWS, ROWS), -1000, np.int32)
    hu[body], hu[lungs], hu[spine] = 40, -850, 700
    hu += np.random.default_rng(index).integers(-20, 21, hu.shape, dtype=np.int32)
    return np.clip(hu + 1024, 0, 4095).astype(np.uint16)


def ct_instance(index: int, count: int, study: str, series: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["pull-bench", str(index)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.Modality = "Pull^Bench", "PULL-1", "CT"
    ds.StudyDate, ds.StudyID, ds.SeriesNumber = "20240102", "1", 1
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [-250.0, -250.0, -index * 0.625]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 0.625
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = ROWS
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = phantom_slice(index, count).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def ensure_series(base: str, url: str, count: int) -> tuple[str, str]:
    """Upload the series unless Orthanc already holds all *count* instances."""
    study = generate_uid(entropy_srcs=["pull-bench", "study", str(count)])
    series = generate_uid(entropy_srcs=["pull-bench", "series", str(count)])
    found = requests.get(
        f"{base}/studies/{study}/series",
        params={"SeriesInstanceUID": series, "includefield": "NumberOfSeriesRelatedInstances"},
        headers={"Accept": "application/dicom+json", **IDENTITY},
        timeout=60,
    )
    have = 0
    if found.status_code == 200 and found.content.strip():
        values = (found.json() or [{}])[0].get("00201209", {}).get("Value") or [0]
        have = int(values[0])
    if have == count:
        return study, series
    print(f"uploading {count} instances to Orthanc (once) ...", flush=True)
    session = requests.Session()

    def upload(index: int) -> None:
        body = ct_instance(index, count, study, series)
        for _attempt in range(5):
            try:
                response = session.post(
                    f"{url}/instances",
                    data=body,
                    headers={**IDENTITY, "Content-Type": "application/dicom"},
                    timeout=120,
                )
                response.raise_for_status()
                return
            except requests.ConnectionError:  # Orthanc drops idle keep-alive connections
                time.sleep(0.2)
        raise RuntimeError(f"could not upload instance {index}")

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(upload, range(count)))
    return study, series


# --------------------------------------------------------------------------- measures


def dicomweb_client_pull(base: str, study: str, series: str) -> np.ndarray:
    from dicomweb_client import DICOMwebClient

    client = DICOMwebClient(base)
    datasets = client.retrieve_series(study, series)
    return np.stack([ds.pixel_array for ds in datasets])


def raw_series_get(base: str, study: str, series: str) -> int:
    """One streamed WADO-RS series GET, body discarded: bytes received."""
    host, port = base.split("//", 1)[1].split("/", 1)[0].split(":")
    path = "/" + base.split("//", 1)[1].split("/", 1)[1] + f"/studies/{study}/series/{series}"
    conn = http.client.HTTPConnection(host, int(port), timeout=300)
    conn.request("GET", path, headers={"Accept": INSTANCE_ACCEPT, **IDENTITY})
    response = conn.getresponse()
    size = 0
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while n := response.readinto(view):
        size += n
    conn.close()
    return size


def raw_instance_gets(base: str, study: str, series: str, sops: list[str], threads: int) -> int:
    """Every instance with its own GET on *threads* keep-alive connections: bytes."""
    host, port = base.split("//", 1)[1].split("/", 1)[0].split(":")
    prefix = "/" + base.split("//", 1)[1].split("/", 1)[1] + f"/studies/{study}/series/{series}"

    def worker(chunk: list[str]) -> int:
        conn = http.client.HTTPConnection(host, int(port), timeout=300)
        total = 0
        for sop in chunk:
            conn.request(
                "GET", f"{prefix}/instances/{sop}", headers={"Accept": INSTANCE_ACCEPT, **IDENTITY}
            )
            total += len(conn.getresponse().read())
        conn.close()
        return total

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(worker, [sops[i::threads] for i in range(threads)]))


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4, help="for the per-instance raw GETs")
    parser.add_argument("--workdir", type=Path, default=REPO / ".cache" / "bench-pull")
    args = parser.parse_args()

    orthanc = start_orthanc(args.workdir / "orthanc", timeout=180)
    scratch = Path(tempfile.mkdtemp(prefix="imagingkit-bench-pull-"))
    try:
        base = orthanc.dicomweb
        study, series = ensure_series(base, orthanc.url, args.instances)
        settings = Settings(timeout=600, data_dir=scratch)
        cache = Cache(scratch / "cache", max_bytes=8 * 1024**3)
        cached = DicomWebClient(base, cache=cache, settings=settings)
        uncached = DicomWebClient(base, cache=False, settings=settings)
        sops = [
            str(item["00080018"]["Value"][0])
            for item in uncached.search_instances(study_uid=study, series_uid=series)
        ]
        assert len(sops) == args.instances, f"Orthanc holds {len(sops)} instances"
        pixels = args.instances * ROWS * ROWS * 2

        # correctness once: the same stored values, in HU, ordered by position
        volume = cached.series_volume(study, series)
        from dicomweb_client import DICOMwebClient

        datasets = DICOMwebClient(base).retrieve_series(study, series)
        datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))  # normal is +z
        for i in (0, len(datasets) // 2, len(datasets) - 1):
            hu = datasets[i].pixel_array.astype(np.int32) - 1024
            assert np.array_equal(np.asarray(volume.array[i], dtype=np.int32), hu), i
        del volume, datasets
        cache.flush()
        cache.clear()

        times: dict[str, list[float]] = {
            k: []
            for k in ("dwc", "cold", "cold+commit", "nocache", "warm", "raw-series", "raw-inst")
        }
        for run in range(args.runs):
            steps = ["dwc", "imagingkit"] if run % 2 == 0 else ["imagingkit", "dwc"]
            for step in steps:
                if step == "dwc":
                    elapsed, out = timed(lambda: dicomweb_client_pull(base, study, series))
                    times["dwc"].append(elapsed)
                    del out
                    continue
                cache.clear()
                start = time.perf_counter()
                vol = cached.series_volume(study, series)
                times["cold"].append(time.perf_counter() - start)
                cache.flush()
                times["cold+commit"].append(time.perf_counter() - start)
                del vol
                elapsed, vol = timed(lambda: cached.series_volume(study, series))
                times["warm"].append(elapsed)
                del vol
                elapsed, vol = timed(lambda: uncached.series_volume(study, series))
                times["nocache"].append(elapsed)
                del vol
            elapsed, _ = timed(lambda: raw_series_get(base, study, series))
            times["raw-series"].append(elapsed)
            elapsed, _ = timed(lambda: raw_instance_gets(base, study, series, sops, args.threads))
            times["raw-inst"].append(elapsed)
            print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))

        med = {k: statistics.median(v) for k, v in times.items()}
        raw = min(med["raw-series"], med["raw-inst"])

        def rate(key: str) -> str:
            return f"{pixels / med[key] / 1e6:8.0f}"

        print()
        print(
            f"{args.instances} instances × 512×512 int16 ({pixels / 1e6:.0f} MB of pixels), "
            f"Orthanc + DICOMweb plugin on loopback, median of {args.runs} interleaved runs"
        )
        print(f"{'method':58s} {'time s':>7s} {'MB/s':>8s} {'vs dwc':>7s}")
        rows = [
            ("dwc", "dicomweb-client retrieve_series + pixel_array (np.stack)"),
            ("cold", "imagingkit series_volume, cold cache (returned)"),
            ("cold+commit", "imagingkit series_volume, cold cache (entry on disk)"),
            ("nocache", "imagingkit series_volume, cache=False"),
            ("warm", "imagingkit series_volume, warm cache"),
            ("raw-series", "raw limit: one streamed series GET, bytes only"),
            ("raw-inst", f"raw limit: per-instance GETs on {args.threads} connections"),
        ]
        for key, label in rows:
            print(f"{label:58s} {med[key]:7.2f} {rate(key)} {med['dwc'] / med[key]:6.1f}×")
        print()
        print(f"cold vs dicomweb-client:            {med['dwc'] / med['cold']:.1f}× (target ≥ 3×)")
        print(
            f"warm vs cold:                       {med['cold'] / med['warm']:.1f}× (target ≥ 10×)"
        )
        print(f"cold throughput / raw server limit: {raw / med['cold']:.0%}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        orthanc.stop()


if __name__ == "__main__":
    main()
