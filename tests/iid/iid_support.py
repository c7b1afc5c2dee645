"""Shared pieces of the IID tests: an in-process app server, a small imaging corpus
(Part-10 files and the matching FHIR resources), a same-origin DICOMweb proxy, and the
built OHIF app."""

from __future__ import annotations

import asyncio
import fcntl
import io
import os
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import tornado.httpclient
import tornado.httpserver
import tornado.netutil
import tornado.web
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from imagingkit.server.app import Component, make_app

# --------------------------------------------------------------------------- app server


class AppServer:
    """Serve imagingkit components on 127.0.0.1 in a background thread (bounded stop)."""

    def __init__(self, components: Sequence[Component], base_url: str = "/") -> None:
        self.components = components
        self.base_url = base_url
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """The origin, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            app = make_app(self.components, base_url=self.base_url)
            sockets = tornado.netutil.bind_sockets(0, address="127.0.0.1")
            server = tornado.httpserver.HTTPServer(app)
            server.add_sockets(sockets)
            self.port = sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()
            server.stop()
            await asyncio.wait_for(server.close_all_connections(), timeout=5)

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    def start(self) -> AppServer:
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"app server did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)


# --------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class Study:
    """One study of the IID test corpus."""

    uid: str
    patient_id: str
    issuer: str
    name: str
    birth: str
    accession: str
    date: str
    time: str
    modality: str

    @property
    def series_uid(self) -> str:
        return f"{self.uid}.1"

    def instance_uid(self, n: int) -> str:
        return f"{self.uid}.1.{n}"

    @property
    def started(self) -> str:
        d, t = self.date, self.time
        return f"{d[:4]}-{d[4:6]}-{d[6:]}T{t[:2]}:{t[2:4]}:{t[4:6]}Z"


A = dict(patient_id="IK-A001", issuer="IKTEST", name="Alpha^Ann", birth="19700131")
#: Patient A (three studies), patient B (one), and another authority's IK-A001 (one).
STUDIES = (
    Study("2.25.71001", **A, accession="ACC1", date="20200105", time="101500", modality="CT"),
    Study("2.25.71002", **A, accession="ACC2", date="20210310", time="090000", modality="MR"),
    Study("2.25.71003", **A, accession="ACC3", date="20220720", time="143000", modality="CT"),
    Study(
        "2.25.71004",
        patient_id="IK-B002",
        issuer="",
        name="Beta^Bob",
        birth="19800202",
        accession="ACC4",
        date="20230101",
        time="080000",
        modality="MR",
    ),
    Study(
        "2.25.71005",
        patient_id="IK-A001",
        issuer="OTHER",
        name="Other^Olga",
        birth="19600606",
        accession="ACC5",
        date="20240101",
        time="080000",
        modality="CT",
    ),
)
CORPUS = {s.accession: s for s in STUDIES}
#: FHIR identifier systems of the two IK-A001 patients
SYSTEM_A, SYSTEM_OTHER = "urn:oid:1.2.3.4.5", "urn:oid:9.9.9"


def write_instance(folder: Path, study: Study, n: int, frames: int = 1) -> Path:
    """Write a small CT/MR Part-10 file of *study* with a visible gradient."""
    sop_class = CTImageStorage if study.modality == "CT" else MRImageStorage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = study.instance_uid(n)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = study.instance_uid(n)
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = study.series_uid
    ds.PatientID = study.patient_id
    if study.issuer:
        ds.IssuerOfPatientID = study.issuer
    ds.PatientName = study.name
    ds.PatientBirthDate = study.birth
    ds.AccessionNumber = study.accession
    ds.StudyDate = study.date
    ds.StudyTime = study.time
    ds.Modality = study.modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = n
    ds.StudyDescription = f"IID test {study.modality}"
    ds.SeriesDescription = f"series of {study.accession}"
    rows = cols = 64
    ramp = np.add.outer(np.arange(rows), np.arange(cols)).astype(np.uint16) * (16 + n)
    pixels = np.stack([ramp + 40 * f for f in range(frames)]) if frames > 1 else ramp
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.WindowCenter, ds.WindowWidth = 1000, 4000
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    path = folder / f"{study.accession}-{n}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def fhir_resources() -> list[dict[str, Any]]:
    """Patients and ImagingStudy resources describing the corpus (FHIR R4)."""
    patients = {
        ("IK-A001", "IKTEST"): ("pat-a", SYSTEM_A),
        ("IK-A001", "OTHER"): ("pat-other", SYSTEM_OTHER),
    }
    resources: list[dict[str, Any]] = []
    for (value, _issuer), (pid, system) in patients.items():
        resources.append(
            {
                "resourceType": "Patient",
                "id": pid,
                "identifier": [{"system": system, "value": value}],
                "name": [{"family": "Alpha" if pid == "pat-a" else "Other", "given": ["Ann"]}],
                "birthDate": "1970-01-31" if pid == "pat-a" else "1960-06-06",
            }
        )
    for study in STUDIES:
        key = (study.patient_id, study.issuer)
        if key not in patients:
            continue  # patient B is in DICOM only: the QIDO fallback finds it
        coding = {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": study.modality}
        resources.append(
            {
                "resourceType": "ImagingStudy",
                "id": f"is-{study.accession.lower()}",
                "status": "available",
                "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study.uid}"}],
                "subject": {"reference": f"Patient/{patients[key][0]}"},
                "started": study.started,
                "modality": [coding],
                "series": [{"uid": study.series_uid, "modality": coding}],
            }
        )
    return resources


# --------------------------------------------------------------------------- DICOMweb proxy


class DicomwebProxy:
    """``/dicom-web/*`` forwarded to another DICOMweb server (Orthanc here).

    Browsers need the viewer and its DICOMweb on one origin (Orthanc sends no CORS
    headers); ``Forwarded`` makes Orthanc write BulkDataURIs that point back here. With
    *token*, calls without ``Authorization: Bearer <token>`` get 401.
    """

    mount = "dicom-web"

    def __init__(self, upstream: str, *, token: str | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        #: the request headers of every call, for tests to inspect
        self.seen: list[dict[str, str]] = []
        self.token = token

    def routes(self, prefix: str) -> list[tuple[str, type[Any], dict[str, Any]]]:
        options = {"upstream": self.upstream, "seen": self.seen, "token": self.token}
        return [(rf"{prefix}(/.*)?", _ProxyHandler, options)]


class _ProxyHandler(tornado.web.RequestHandler):
    def initialize(self, upstream: str, seen: list[dict[str, str]], token: str | None) -> None:
        self.upstream = upstream
        self.seen = seen
        self.token = token

    async def get(self, path: str | None) -> None:
        self.seen.append(dict(self.request.headers))
        if self.token and self.request.headers.get("Authorization") != f"Bearer {self.token}":
            self.set_status(401)
            self.finish()
            return
        url = self.upstream + (path or "")
        if self.request.query:
            url += "?" + self.request.query
        headers = {
            "Accept": self.request.headers.get("Accept", "*/*"),
            "Accept-Encoding": "identity",
            "Forwarded": f"host={self.request.host};proto={self.request.protocol}",
        }
        response = await tornado.httpclient.AsyncHTTPClient().fetch(
            url, headers=headers, raise_error=False, request_timeout=120
        )
        self.set_status(response.code if response.code != 599 else 502)
        for name in ("Content-Type", "Content-Location"):
            if name in response.headers:
                self.set_header(name, response.headers[name])
        self.finish(response.body or b"")


# --------------------------------------------------------------------------- OHIF


#: the OHIF release the browser tests use (``notes/reference-servers.md``)
OHIF_VERSION = "3.13.2"
OHIF_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "ohif"


def ohif_dist(timeout: float = 600) -> Path | str:
    """Return the built OHIF app's ``dist/`` folder, or why it is not available.

    ``$IMAGINGKIT_OHIF_DIST`` wins; else ``.cache/ohif/app-<version>/package/dist``,
    fetched once with ``npm pack @ohif/app@<version>`` (the npm registry is the only
    network the tests use; a file lock serialises concurrent sessions).
    """
    env = os.environ.get("IMAGINGKIT_OHIF_DIST")
    if env:
        return Path(env) if (Path(env) / "index.html").is_file() else f"{env} has no index.html"
    target = OHIF_CACHE / f"app-{OHIF_VERSION}"
    dist = target / "package" / "dist"
    if (dist / "index.html").is_file():
        return dist
    npm = shutil.which("npm")
    if npm is None:
        return "npm not found (apt-get install npm) to fetch @ohif/app"
    target.mkdir(parents=True, exist_ok=True)
    with (OHIF_CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (dist / "index.html").is_file():
                return dist
            done = subprocess.run(
                [npm, "pack", f"@ohif/app@{OHIF_VERSION}", "--pack-destination", str(target)],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            tarballs = sorted(target.glob("ohif-app-*.tgz"))
            if done.returncode != 0 or not tarballs:
                return f"npm pack @ohif/app@{OHIF_VERSION} failed: {done.stderr[-500:]}"
            with tarfile.open(tarballs[-1]) as archive:
                archive.extractall(target, filter="data")
            tarballs[-1].unlink()
        except (OSError, subprocess.SubprocessError, tarfile.TarError) as exc:
            return f"could not fetch @ohif/app@{OHIF_VERSION}: {exc}"
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return dist if (dist / "index.html").is_file() else f"{dist} has no index.html"


# --------------------------------------------------------------------------- Chromium

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]


def canvas_spread(page: Any) -> float:
    """Standard deviation of the built-in viewer's canvas luminance (0-255)."""
    return float(
        page.evaluate(
            """() => {
              const c = document.getElementById('canvas');
              const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
              let n = 0, s = 0, s2 = 0;
              for (let i = 0; i < d.length; i += 4) { n++; s += d[i]; s2 += d[i] * d[i]; }
              const m = s / n; return Math.sqrt(Math.max(0, s2 / n - m * m));
            }"""
        )
    )


def screenshot_spread(element: Any) -> float:
    image = Image.open(io.BytesIO(element.screenshot())).convert("L")
    return float(np.asarray(image, dtype=np.float64).std())


def wait_until_drawn(element: Any, timeout: float = 90) -> list[float]:
    """Poll *element*'s screenshot until two looks 1.5 s apart both show an image.

    Returns the last two spreads (grey-level standard deviations); the caller asserts.
    """
    spreads: list[float] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        spreads = [*spreads[-1:], screenshot_spread(element)]
        if len(spreads) == 2 and min(spreads) > 5:
            break
        time.sleep(1.5)
    return spreads
