"""Test helpers for the embedded DICOMweb store: small datasets and an in-thread server.

:class:`StoreServer` serves a :class:`~imagingkit.sandbox.dicomweb_store.DicomWebStore` with
the real app factory on 127.0.0.1 (a free port) from a background thread, so tests talk
to it over real HTTP with ``requests`` or dicomweb-client.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import tornado.httpserver
import tornado.netutil
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from imagingkit.config import Settings
from imagingkit.sandbox.dicomweb_store import DicomWebStore
from imagingkit.server.app import make_app

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
UID_ROOT = "1.2.826.0.1.3680043.8.498."


def make_instance(
    *,
    study: str,
    series: str,
    sop: str | None = None,
    patient_name: str = "Doe^John",
    patient_id: str = "P1",
    study_date: str = "20200115",
    study_time: str = "101500",
    modality: str = "CT",
    series_number: int = 1,
    instance_number: int = 1,
    accession: str = "ACC1",
    study_description: str = "CT CHEST",
    series_description: str = "Axial",
    rows: int = 4,
    columns: int = 4,
    implicit: bool = False,
    **extra: Any,
) -> Dataset:
    """Build a small, valid CT/MR Part-10 dataset with genuine (tiny) pixel data."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = MR_IMAGE_STORAGE if modality == "MR" else CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop or generate_uid(prefix=UID_ROOT)
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.SeriesDate = study_date
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.StudyDescription = study_description
    ds.SeriesDescription = series_description
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    ds.PixelData = (np.arange(rows * columns, dtype=np.uint16) * instance_number).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def part10_bytes(ds: Dataset) -> bytes:
    """Encode a dataset as a Part-10 file."""
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def write_instances(folder: Path, datasets: Iterable[Dataset], suffix: str = ".dcm") -> list[Path]:
    """Write each dataset to ``folder/<SOPInstanceUID><suffix>``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}{suffix}"
        path.write_bytes(part10_bytes(ds))
        paths.append(path)
    return paths


def read_back(data: bytes) -> Dataset:
    return pydicom.dcmread(BytesIO(data))


class StoreServer:
    """A DicomWebStore served by the app factory on 127.0.0.1:<free port> in a thread.

    Parameters
    ----------
    root : Path
        The folder of DICOM files.
    data_dir : Path
        Where the index goes.
    **settings : Any
        Overrides for :class:`~imagingkit.config.Settings`.
    """

    def __init__(self, root: Path, data_dir: Path, **settings: Any) -> None:
        self.settings = Settings(data_dir=data_dir, **settings)
        self.store = DicomWebStore.for_folder(root, settings=self.settings)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, name="store-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise RuntimeError("the store server did not start within 30 s")
        if self._error is not None:
            raise RuntimeError("the store server failed to start") from self._error

    def _run(self) -> None:
        async def main() -> None:
            try:
                app = make_app([self.store])
                sockets = tornado.netutil.bind_sockets(0, address="127.0.0.1")
                server = tornado.httpserver.HTTPServer(app, max_body_size=2**40)
                server.add_sockets(sockets)
                self.port = sockets[0].getsockname()[1]
                self._loop = asyncio.get_running_loop()
                self._stop = asyncio.Event()
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                raise
            self._ready.set()
            await self._stop.wait()
            server.stop()
            await asyncio.wait_for(server.close_all_connections(), timeout=10)

        asyncio.run(main())

    @property
    def url(self) -> str:
        """The DICOMweb base URL, ``http://127.0.0.1:<port>/dicom-web``."""
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def close(self) -> None:
        """Stop serving (bounded wait) and close the index."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)
        self.store.close()

    def __enter__(self) -> StoreServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
