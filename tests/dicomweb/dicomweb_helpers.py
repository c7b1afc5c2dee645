"""Helpers for the DICOMweb client tests: generated CT series and scripted test doubles.

The client is tested against servers that really run: the embedded DICOMweb store
(in-process, on loopback) and Orthanc. Faults that neither server shows on demand — a
server ignoring ``offset``, 429 with ``Retry-After``, errors mid-pull, silence — come from
small tornado test doubles (:class:`Double`); they stand in for a misbehaving server, not
for the code under test.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tornado.web
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid

from imagingkit.cache import Cache
from imagingkit.config import Settings
from imagingkit.dicomweb.client import DicomWebClient
from imagingkit.dicomweb.multipart import MultipartWriter

ROWS, COLUMNS, SLICES = 24, 20, 12
#: an oblique orientation, so that sorting by z alone would be wrong
ROW_DIR = np.array([1.0, 0.0, 0.0])
COL_DIR = np.array([0.0, np.cos(0.3), -np.sin(0.3)])
NORMAL = np.cross(ROW_DIR, COL_DIR)
SPACING = 2.5
ORIGIN = np.array([-100.0, -80.0, 40.0])


@dataclass
class CTSeries:
    """A generated CT series: the files and what a correct volume of it looks like."""

    study: str
    series: str
    files: list[Path]
    payloads: list[bytes]
    #: the expected volume, in Hounsfield units, slices in geometric order
    hu: np.ndarray
    #: SOP Instance UIDs in geometric order
    sop_uids: list[str]
    positions: np.ndarray


def hu_slice(k: int) -> np.ndarray:
    """Hounsfield units of geometric slice *k* (distinct for every slice and pixel)."""
    i, j = np.mgrid[0:ROWS, 0:COLUMNS]
    return (-24 + 100 * k + i + 2 * j).astype(np.int16)


def ct_instance(
    study: str,
    series: str,
    k: int,
    number: int,
    *,
    syntax: str = ExplicitVRLittleEndian,
    seed: str = "ct",
) -> tuple[bytes, str, np.ndarray]:
    """One Part-10 CT slice at geometric index *k*, with Instance Number *number*."""
    sop = generate_uid(entropy_srcs=[seed, study, series, str(k)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.Modality = "Client^Test", "CLIENT-1", "CT"
    ds.StudyDate, ds.StudyID, ds.SeriesNumber, ds.AccessionNumber = "20240102", "1", 3, "ACC1"
    ds.InstanceNumber = number
    position = ORIGIN + k * SPACING * NORMAL
    ds.ImagePositionPatient = [round(float(v), 6) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in (*ROW_DIR, *COL_DIR)]
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[seed, study, "for"])
    ds.PixelSpacing = [0.8, 0.6]
    ds.SliceThickness = SPACING
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    hu = hu_slice(k)
    ds.PixelData = (hu.astype(np.int32) + 1024).astype(np.uint16).tobytes()
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax, generate_instance_uid=False)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), sop, position


def make_ct_series(
    folder: Path, *, seed: str = "ct", slices: int = SLICES, mixed_syntax: bool = False
) -> CTSeries:
    """Write a CT series whose Instance Numbers do not follow the geometry.

    Files are written in a shuffled order; with *mixed_syntax* every third slice is RLE
    Lossless (the rest Explicit VR Little Endian).
    """
    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid(entropy_srcs=[seed, "study"])
    series = generate_uid(entropy_srcs=[seed, "series"])
    rng = np.random.default_rng(len(seed))
    numbers = rng.permutation(slices) + 1  # Instance Number unrelated to position
    order = rng.permutation(slices)  # file (upload) order
    payloads: dict[int, bytes] = {}
    sops: dict[int, str] = {}
    positions: dict[int, np.ndarray] = {}
    for k in range(slices):
        syntax = RLELossless if mixed_syntax and k % 3 == 0 else ExplicitVRLittleEndian
        payloads[k], sops[k], positions[k] = ct_instance(
            study, series, k, int(numbers[k]), syntax=syntax, seed=seed
        )
    files = []
    for k in order:
        path = folder / f"{int(k):03d}-{sops[int(k)]}.dcm"
        path.write_bytes(payloads[int(k)])
        files.append(path)
    return CTSeries(
        study=study,
        series=series,
        files=files,
        payloads=[payloads[int(k)] for k in order],
        hu=np.stack([hu_slice(k) for k in range(slices)]),
        sop_uids=[sops[k] for k in range(slices)],
        positions=np.stack([positions[k] for k in range(slices)]),
    )


def client_for(base: str, cache: Cache | bool = False, **kwargs: Any) -> DicomWebClient:
    settings = kwargs.pop("settings", None) or Settings(timeout=30, concurrency=4)
    return DicomWebClient(base, cache=cache, settings=settings, **kwargs)


# --------------------------------------------------------------------------- test doubles


@dataclass
class Seen:
    """What a test double received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


@dataclass
class Double:
    """A scripted HTTP server: ``respond(handler, seen) -> None`` writes each answer.

    Mounted at ``/dw``; records every request in :attr:`requests`.
    """

    respond: Callable[[tornado.web.RequestHandler, Seen], Any]
    requests: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    mount: str = "dw"

    def routes(self, prefix: str) -> list[tuple[str, type, dict[str, Any]]]:
        return [(prefix + r"(/.*)?", _DoubleHandler, {"double": self})]

    def seen(self, contains: str = "") -> list[Seen]:
        with self.lock:
            return [r for r in self.requests if contains in r.path]


class _DoubleHandler(tornado.web.RequestHandler):
    def initialize(self, double: Double) -> None:
        self.double = double

    async def get(self, path: str | None = None) -> None:
        seen = Seen(
            "GET",
            path or "/",
            {k: [v.decode() for v in vs] for k, vs in self.request.query_arguments.items()},
            {k.lower(): v for k, v in self.request.headers.items()},
        )
        with self.double.lock:
            self.double.requests.append(seen)
        result = self.double.respond(self, seen)
        if hasattr(result, "__await__"):
            await result
        if not self._finished:
            self.finish()


def multipart_body(parts: list[tuple[dict[str, str], bytes]], part_type: str) -> tuple[bytes, str]:
    """Encode parts as a multipart/related body; return (body, Content-Type)."""
    writer = MultipartWriter(part_type)
    body = b"".join(writer.part(payload, headers) for headers, payload in parts) + writer.close()
    return body, writer.content_type
