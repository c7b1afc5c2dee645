"""WADO-RS of the embedded store over real HTTP on 127.0.0.1 (PS3.18 §10.4, Sup 203).

The store serves every file of pydicom's bundled test data plus a few generated series,
through the real :class:`DicomIndex`. Answers are checked with clients nobody here wrote
where possible — dicomweb-client for retrieval, pydicom to decode what comes back, Pillow
to read rendered images — against the source files' own pixel arrays.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
import requests
import tornado.httpserver
import tornado.netutil
from dicomweb_client import DICOMwebClient
from PIL import Image, ImageSequence
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels.utils import pack_bits, unpack_bits
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from servers import multipart_parts

from imagingkit.config import Settings
from imagingkit.dicomweb.mediatypes import (
    UNCOMPRESSED_SYNTAXES,
    choose_frame_representation,
    frame_media_type,
    parse_accept,
)
from imagingkit.errors import InvalidQueryError
from imagingkit.render import Window, apply_viewport, display_frame, encode_image
from imagingkit.render.encode import Viewport
from imagingkit.sandbox.dicom_index import DicomIndex, InstanceRecord
from imagingkit.sandbox.wado import wado_routes
from imagingkit.server.app import RouteList, make_app

pytestmark = pytest.mark.filterwarnings("ignore")

EVRLE = ExplicitVRLittleEndian
INSTANCE = 'multipart/related; type="application/dicom"'
FRAMES = 'multipart/related; type="application/octet-stream"'
IDENTITY = {"Accept-Encoding": "identity"}


# --------------------------------------------------------------------------- data


def _write(
    path: Path,
    pixels: np.ndarray,
    *,
    study: str,
    series: str,
    number: int,
    syntax: str = EVRLE,
    **attrs: object,
) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.Modality = "Test^Wado", "WADO-1", "CT"
    ds.SeriesNumber, ds.InstanceNumber = 1, number
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes() if syntax == EVRLE else encapsulate([pixels.tobytes()])
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


#: three 5×5 one-bit frames: 25 bits each, so frames 2 and 3 start inside a byte
BIT_FRAMES = (np.arange(75).reshape(3, 5, 5) % 3 == 0).astype(np.uint8)


@dataclass
class Store:
    base: str
    index: DicomIndex
    root: Path
    ct: list[InstanceRecord]  # 5-slice CT, int16 HU with intercept, file window 40/400
    twins: list[InstanceRecord]  # MONOCHROME2 then MONOCHROME1, same stored pixels
    multiframe: InstanceRecord  # 4 frames, uint16, Explicit VR Little Endian
    mixed: list[InstanceRecord]  # one plain instance, one in a syntax nobody decodes
    bits: InstanceRecord  # BIT_FRAMES, bit-packed
    big: list[InstanceRecord]  # 40 × 256×256 uint16: 5 MB, more than socket buffers hold

    def url(self, record: InstanceRecord, suffix: str = "") -> str:
        return (
            f"{self.base}/studies/{record.study_uid}/series/{record.series_uid}"
            f"/instances/{record.sop_uid}{suffix}"
        )

    def all_records(self) -> list[InstanceRecord]:
        studies = [row[0] for row in self.index.query("SELECT study_uid FROM studies")]
        return [r for s in studies for r in self.index.instances(s)]


def _generated(root: Path) -> dict[str, list[Path]]:
    rng = np.random.default_rng(3)
    study = generate_uid()
    ct_series = generate_uid()
    ct = [
        _write(
            root / "gen" / f"ct{i}.dcm",
            (rng.integers(-1000, 2000, (32, 48)) + 1024).astype(np.int16),
            study=study,
            series=ct_series,
            number=i + 1,
            RescaleIntercept="-1024",
            RescaleSlope="1",
            WindowCenter="40",
            WindowWidth="400",
        )
        for i in range(5)
    ]
    ramp = np.arange(24 * 40, dtype=np.uint16).reshape(24, 40)
    twin_series = generate_uid()
    twins = [
        _write(root / "gen" / "m2.dcm", ramp, study=study, series=twin_series, number=1),
        _write(
            root / "gen" / "m1.dcm",
            ramp,
            study=study,
            series=twin_series,
            number=2,
            PhotometricInterpretation="MONOCHROME1",
        ),
    ]
    frames = (np.arange(4 * 32 * 40, dtype=np.uint16) * 7).reshape(4, 32, 40)
    multi = _write(root / "gen" / "multi.dcm", frames, study=study, series=generate_uid(), number=1)
    mixed_series = generate_uid()
    mixed = [
        _write(root / "gen" / "plain.dcm", ramp, study=study, series=mixed_series, number=1),
        # MPEG2 Main Profile: no decoder installed anywhere, so no transcoding possible
        _write(
            root / "gen" / "video.dcm",
            ramp,
            study=study,
            series=mixed_series,
            number=2,
            syntax="1.2.840.10008.1.2.4.100",
        ),
    ]
    bits = _write(
        root / "gen" / "bits.dcm",
        np.zeros((3, 5, 5), np.uint8),  # replaced below: 1-bit frames of 25 bits each
        study=study,
        series=generate_uid(),
        number=1,
    )
    ds = pydicom.dcmread(bits)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    ds.PixelData = pack_bits(BIT_FRAMES.ravel())
    ds.save_as(bits, enforce_file_format=True)
    big_series = generate_uid()
    big = [
        _write(
            root / "gen" / f"big{i}.dcm",
            rng.integers(0, 4096, (256, 256)).astype(np.uint16),
            study=generate_uid(entropy_srcs=["big"]),
            series=big_series,
            number=i + 1,
        )
        for i in range(40)
    ]
    return {
        "ct": ct,
        "twins": twins,
        "multi": [multi],
        "mixed": mixed,
        "bits": [bits],
        "big": big,
    }


def _serve(routes: RouteList) -> tuple[str, threading.Thread, asyncio.AbstractEventLoop]:
    ready = threading.Event()
    state: dict[str, object] = {}

    class Component:
        mount = "dicom-web"

        def routes(self, prefix: str) -> RouteList:
            return [(p.replace("/dicom-web", prefix, 1), h, k) for p, h, k in routes]

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        server = tornado.httpserver.HTTPServer(make_app([Component()]))
        server.add_sockets(sockets)
        state["port"] = sockets[0].getsockname()[1]
        state["loop"] = loop
        ready.set()
        loop.run_forever()
        server.stop()
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10), "test server did not start"
    return f"http://127.0.0.1:{state['port']}/dicom-web", thread, state["loop"]  # type: ignore[return-value]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    root = tmp_path_factory.mktemp("wado") / "files"
    source = Path(pydicom.data.__file__).parent / "test_files"
    for path in source.rglob("*"):
        if path.is_file():
            target = root / "pydicom" / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    generated = _generated(root)
    index = DicomIndex(root.parent / "index.sqlite", root)
    index.scan()

    def records(paths: list[Path]) -> list[InstanceRecord]:
        found = []
        for path in paths:
            sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            record = index.instance(str(sop))
            assert record is not None, f"{path} was not indexed"
            found.append(record)
        return found

    settings = Settings(data_dir=root.parent, concurrency=2)
    base, thread, loop = _serve(wado_routes(index, "/dicom-web", settings))
    yield Store(
        base=base,
        index=index,
        root=root,
        ct=records(generated["ct"]),
        twins=records(generated["twins"]),
        multiframe=records(generated["multi"])[0],
        mixed=records(generated["mixed"]),
        bits=records(generated["bits"])[0],
        big=records(generated["big"]),
    )
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    index.close()


@pytest.fixture(scope="module")
def client(store: Store) -> DICOMwebClient:
    return DICOMwebClient(store.base, headers=IDENTITY)


def _reference(record: InstanceRecord) -> np.ndarray | None:
    """The source file's pixel array, or None if pydicom cannot decode it."""
    try:
        return pydicom.dcmread(record.path).pixel_array
    except Exception:
        return None


def _images(store: Store) -> list[tuple[InstanceRecord, np.ndarray]]:
    found = [(r, _reference(r)) for r in store.all_records() if r.number_of_frames > 0]
    return [(r, a) for r, a in found if a is not None]


def _get(url: str, media: str | None = None, **params: str) -> requests.Response:
    headers = dict(IDENTITY)
    if media is not None:
        headers["Accept"] = media
    return requests.get(url, headers=headers, params=params, timeout=60)


def _parts(response: requests.Response) -> list[tuple[dict[str, str], bytes]]:
    assert response.status_code in (200, 206), response.text[:300]
    return multipart_parts(response.headers["Content-Type"], response.content)


# --------------------------------------------------------------------------- instances


def test_every_decodable_instance_comes_back_as_explicit_vr_little_endian(
    store: Store, client: DICOMwebClient
) -> None:
    """dicomweb-client's retrieve_instance; pixels equal the source file's pixel_array."""
    problems = []
    images = _images(store)
    assert len(images) > 60
    explicit = ("application/dicom", EVRLE)  # the client's default is transfer-syntax=*
    for record, reference in images:
        got = client.retrieve_instance(
            record.study_uid, record.series_uid, record.sop_uid, media_types=(explicit,)
        )
        if got.file_meta.TransferSyntaxUID != EVRLE:
            problems.append(f"{record.path.name}: sent {got.file_meta.TransferSyntaxUID}")
        elif str(got.SOPInstanceUID) != record.sop_uid:
            problems.append(f"{record.path.name}: SOP Instance UID changed")
        elif not np.array_equal(got.pixel_array, reference):
            problems.append(f"{record.path.name} ({UID(record.transfer_syntax_uid).name})")
    assert problems == []


def test_parts_are_labelled_with_syntax_and_location(store: Store) -> None:
    for record in (store.ct[0], *store.twins):
        response = _get(store.url(record), INSTANCE)
        media = response.headers["Content-Type"]
        assert media.startswith('multipart/related; type="application/dicom"; boundary=')
        ((headers, body),) = _parts(response)
        assert headers["content-type"] == f"application/dicom; transfer-syntax={EVRLE}"
        assert headers["content-location"] == store.url(record)
        assert body == record.path.read_bytes()  # stored as asked: sent byte for byte


def test_as_stored_sends_the_file_and_labels_its_syntax(store: Store) -> None:
    """``transfer-syntax=*``: the stored bytes, except implicit VR and big endian, which
    web services must not send (PS3.18 §8.7.3.5.1) and become Explicit VR Little Endian."""
    checked = 0
    for record, reference in _images(store):
        response = _get(store.url(record), INSTANCE + "; transfer-syntax=*")
        ((headers, body),) = _parts(response)
        stored = record.transfer_syntax_uid
        expected = EVRLE if stored in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.2") else stored
        assert headers["content-type"] == f"application/dicom; transfer-syntax={expected}"
        got = pydicom.dcmread(io.BytesIO(body))
        assert got.file_meta.TransferSyntaxUID == expected
        if expected == stored and record.path.read_bytes()[128:132] == b"DICM":
            assert body == record.path.read_bytes()
        assert np.array_equal(got.pixel_array, reference), record.path.name
        checked += 1
    assert checked > 60


def test_compressed_instances_that_cannot_be_decoded_get_406_but_come_as_stored(
    store: Store,
) -> None:
    undecodable = [
        r
        for r in store.all_records()
        if r.number_of_frames > 0
        and r.transfer_syntax_uid not in UNCOMPRESSED_SYNTAXES
        and _reference(r) is None
    ]
    assert undecodable, "pydicom's test files include undecodable compressed images"
    for record in undecodable:
        refused = _get(store.url(record), INSTANCE)
        assert refused.status_code == 406
        assert refused.headers["Content-Type"] == "application/problem+json"
        assert record.sop_uid in refused.json()["detail"]
        ((_, body),) = _parts(_get(store.url(record), INSTANCE + "; transfer-syntax=*"))
        assert body == record.path.read_bytes()


def test_series_streams_every_instance_in_order(store: Store, client: DICOMwebClient) -> None:
    record = store.ct[0]
    url = f"{store.base}/studies/{record.study_uid}/series/{record.series_uid}"
    response = _get(url, INSTANCE)
    assert int(response.headers["Content-Length"]) == len(response.content)  # files as stored
    parts = _parts(response)
    assert [h["content-location"] for h, _ in parts] == [store.url(r) for r in store.ct]
    series = client.retrieve_series(record.study_uid, record.series_uid)
    assert [str(ds.SOPInstanceUID) for ds in series] == [r.sop_uid for r in store.ct]
    for ds, rec in zip(series, store.ct, strict=True):
        assert np.array_equal(ds.pixel_array, pydicom.dcmread(rec.path).pixel_array)


def test_study_retrieve_holds_all_its_series(store: Store, client: DICOMwebClient) -> None:
    study = store.ct[0].study_uid
    everything = store.index.instances(study)
    got = client.retrieve_study(study, media_types=(("application/dicom", "*"),))
    assert sorted(str(ds.SOPInstanceUID) for ds in got) == sorted(r.sop_uid for r in everything)


def test_partial_content_when_some_instances_cannot_be_transcoded(store: Store) -> None:
    plain, video = store.mixed
    url = f"{store.base}/studies/{plain.study_uid}/series/{plain.series_uid}"
    response = _get(url, INSTANCE)
    assert response.status_code == 206
    assert "1 instance(s) left out" in response.headers["Warning"]
    assert [h["content-location"] for h, _ in _parts(response)] == [store.url(plain)]
    everything = _get(url, INSTANCE + "; transfer-syntax=*")
    assert everything.status_code == 200
    labels = [h["content-type"] for h, _ in _parts(everything)]
    assert labels[1] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.100"
    only_video = _get(store.url(video), INSTANCE)
    assert only_video.status_code == 406


def test_accept_variants(store: Store) -> None:
    record = store.ct[1]
    url = store.url(record)
    for accept in (None, "*/*", "multipart/related", f"{INSTANCE}; transfer-syntax={EVRLE}"):
        ((headers, body),) = _parts(_get(url, accept))
        assert headers["content-type"].endswith(EVRLE) and body == record.path.read_bytes()
    # the accept query parameter replaces the header (PS3.18 §8.3.3.1)
    by_query = _get(url, "image/png", accept=INSTANCE)
    assert by_query.status_code == 200 and len(_parts(by_query)) == 1
    # single-part application/dicom for one instance (as some servers offer)
    single = _get(url, "application/dicom")
    assert single.headers["Content-Type"] == f"application/dicom; transfer-syntax={EVRLE}"
    assert single.content == record.path.read_bytes()
    series_url = f"{store.base}/studies/{record.study_uid}/series/{record.series_uid}"
    assert _get(series_url, "application/dicom").status_code == 406
    for accept in ("application/dicom+json", 'multipart/related; type="image/jpeg"'):
        refused = _get(url, accept)
        assert refused.status_code == 406 and accept in refused.json()["detail"]
    assert _get(url, INSTANCE + "; transfer-syntax=1.2.840.10008.1.2.4.50").status_code == 406
    assert _get(url, INSTANCE + "; transfer-syntax=not-a-uid").status_code == 400
    # a fallback range is used when the first cannot be met
    fallback = f"{INSTANCE}; transfer-syntax=1.2.840.10008.1.2.4.50, {INSTANCE}; q=0.5"
    assert _parts(_get(url, fallback))[0][0]["content-type"].endswith(EVRLE)


def test_transcoding_to_rle_and_jpeg2000_lossless(store: Store) -> None:
    for syntax in ("1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"):
        for record in (store.ct[2], store.multiframe):
            ((headers, body),) = _parts(
                _get(store.url(record), f"{INSTANCE}; transfer-syntax={syntax}")
            )
            assert headers["content-type"] == f"application/dicom; transfer-syntax={syntax}"
            got = pydicom.dcmread(io.BytesIO(body))
            assert got.file_meta.TransferSyntaxUID == syntax
            assert np.array_equal(got.pixel_array, pydicom.dcmread(record.path).pixel_array)


# --------------------------------------------------------------------------- metadata, bulk data


def test_series_metadata_with_bulkdata_uris_that_resolve(
    store: Store, client: DICOMwebClient
) -> None:
    """BulkDataURIs are absolute, built from the request's Host. (dicomweb-client sends
    ``Host`` without the port, so its own metadata calls would get port-less URIs.)"""
    record = store.ct[0]
    response = _get(f"{store.base}/studies/{record.study_uid}/series/{record.series_uid}/metadata")
    metadata = response.json()
    assert [m["00080018"]["Value"][0] for m in metadata] == [r.sop_uid for r in store.ct]
    by_client = client.retrieve_series_metadata(record.study_uid, record.series_uid)
    assert [pydicom.Dataset.from_json(m).SOPInstanceUID for m in by_client] == [
        r.sop_uid for r in store.ct
    ]
    for item, rec in zip(metadata, store.ct, strict=True):
        ds = pydicom.dcmread(rec.path)
        assert item["00280010"] == {"vr": "US", "Value": [int(ds.Rows)]}
        uri = item["7FE00010"]["BulkDataURI"]
        assert uri == store.url(rec, "/bulkdata/7FE00010")
        (pixels,) = client.retrieve_bulkdata(uri)
        assert pixels == ds.PixelData


def test_metadata_at_each_level_and_negotiation(store: Store, client: DICOMwebClient) -> None:
    record = store.multiframe
    study = client.retrieve_study_metadata(record.study_uid)
    assert len(study) == len(store.index.instances(record.study_uid))
    one = client.retrieve_instance_metadata(record.study_uid, record.series_uid, record.sop_uid)
    assert one["00280008"]["Value"] == [4]
    response = _get(store.url(record, "/metadata"))
    assert response.headers["Content-Type"] == "application/dicom+json"
    assert _get(store.url(record, "/metadata"), "application/json").status_code == 200
    xml = 'multipart/related; type="application/dicom+xml"'
    assert _get(store.url(record, "/metadata"), xml).status_code == 406


def test_non_pixel_bulk_data_is_served_little_endian(store: Store, client: DICOMwebClient) -> None:
    """Large binary values other than Pixel Data (e.g. Overlay Data, palettes) come back
    through their BulkDataURI with the bytes pydicom reads (swapped for big endian)."""
    checked = 0
    for record in store.all_records():
        ds = pydicom.dcmread(record.path, force=True)
        for metadata in _get(store.url(record, "/metadata")).json():
            for key, entry in metadata.items():
                if key == "7FE00010" or "BulkDataURI" not in entry:
                    continue
                element = ds[int(key, 16)]
                (value,) = client.retrieve_bulkdata(entry["BulkDataURI"])
                expected = bytes(element.value)
                if not ds.original_encoding[1] and element.VR == "OW":
                    expected = np.frombuffer(expected, ">u2").astype("<u2").tobytes()
                assert value == expected, f"{record.path.name} {key}"
                checked += 1
    assert checked >= 3


# --------------------------------------------------------------------------- frames


def _frame_array(content: bytes, ds: Dataset, native: bool) -> np.ndarray:
    """Frame bytes → an array shaped like one frame of pixel_array.

    Native frames keep the stored layout, so colour-by-plane (Planar Configuration 1)
    is transposed here; decoded frames are always colour-by-pixel."""
    bits = int(ds.BitsAllocated)
    kind = "i" if int(ds.PixelRepresentation) else "u"
    rows, columns, samples = int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1))
    array = np.frombuffer(content, dtype=f"<{kind}{bits // 8}")
    if samples == 1:
        return array.reshape(rows, columns)
    if native and int(ds.get("PlanarConfiguration", 0)) == 1:
        return array.reshape(samples, rows, columns).transpose(1, 2, 0)
    return array.reshape(rows, columns, samples)


def test_uncompressed_frames_of_every_decodable_image(store: Store, client: DICOMwebClient) -> None:
    problems = []
    checked = 0
    for record, reference in _images(store):
        ds = pydicom.dcmread(record.path)
        native = record.transfer_syntax_uid in UNCOMPRESSED_SYNTAXES
        if int(ds.BitsAllocated) == 1 or (native and "422" in str(ds.PhotometricInterpretation)):
            continue  # bit-packed / subsampled: stored layout differs from pixel_array
        count = record.number_of_frames
        numbers = sorted({1, count})
        frames = client.retrieve_instance_frames(
            record.study_uid, record.series_uid, record.sop_uid, numbers
        )
        for number, content in zip(numbers, frames, strict=True):
            expected = reference[number - 1] if count > 1 else reference
            if not np.array_equal(_frame_array(content, ds, native), expected):
                problems.append(f"{record.path.name} frame {number}")
            checked += 1
    assert problems == [] and checked > 60


def test_compressed_frames_as_stored(store: Store, client: DICOMwebClient) -> None:
    checked = 0
    for record in store.all_records():
        syntax = record.transfer_syntax_uid
        media = frame_media_type(syntax)
        if record.number_of_frames == 0 or not media.startswith("image/"):
            continue
        ds = pydicom.dcmread(record.path)
        count = record.number_of_frames
        expected = list(generate_frames(ds.PixelData, number_of_frames=count))
        got = client.retrieve_instance_frames(
            record.study_uid,
            record.series_uid,
            record.sop_uid,
            list(range(1, count + 1)),
            media_types=((media, syntax),),
        )
        assert got == expected, record.path.name
        response = _get(store.url(record, "/frames/1"), FRAMES + "; transfer-syntax=*")
        ((headers, body),) = _parts(response)
        assert headers["content-type"] == f"{media}; transfer-syntax={syntax}"
        assert body == expected[0]
        checked += 1
    assert checked > 15


def test_frame_lists_and_errors(store: Store) -> None:
    record = store.multiframe
    reference = pydicom.dcmread(record.path).pixel_array
    parts = _parts(_get(store.url(record, "/frames/4,1,2")))
    assert [h["content-type"] for h, _ in parts] == [
        f"application/octet-stream; transfer-syntax={EVRLE}"
    ] * 3
    assert [b for _, b in parts] == [reference[i].tobytes() for i in (3, 0, 1)]
    everything = _parts(_get(store.url(record, "/pixeldata")))
    assert b"".join(b for _, b in everything) == reference.tobytes()
    for frames, status in (("5", 404), ("1,9", 404), ("0", 400), ("1,a", 400), ("-1", 400)):
        response = _get(store.url(record, f"/frames/{frames}"), FRAMES)
        assert response.status_code == status, frames
        assert response.headers["Content-Type"] == "application/problem+json"
    assert (
        _get(store.url(record, "/frames/1"), 'multipart/related; type="image/jpeg"').status_code
        == 406
    )
    single = _get(store.url(record, "/frames/2"), "application/octet-stream")
    assert single.content == reference[1].tobytes()
    assert single.headers["Content-Length"] == str(len(single.content))  # not chunked


def test_one_bit_frames_are_repacked_from_their_bit_offset(store: Store) -> None:
    """PS3.5 §8.1.1: 1-bit frames are packed back to back, so frame 2 of 25-bit frames
    starts at bit 25; each answered frame is packed on its own."""
    parts = _parts(_get(store.url(store.bits, "/frames/1,2,3"), FRAMES))
    for (_, body), expected in zip(parts, BIT_FRAMES, strict=True):
        assert len(body) == 4  # 25 bits, padded to whole bytes
        assert np.array_equal(unpack_bits(body)[:25].reshape(5, 5), expected)
    record = store.bits
    got = pydicom.dcmread(io.BytesIO(_parts(_get(store.url(record), INSTANCE))[0][1]))
    assert np.array_equal(got.pixel_array, BIT_FRAMES)


# --------------------------------------------------------------------------- rendered, thumbnail


def _image(response: requests.Response, media: str = "image/png") -> np.ndarray:
    assert response.status_code == 200, response.text[:300]
    assert response.headers["Content-Type"] == media
    return np.asarray(Image.open(io.BytesIO(response.content)))


def test_rendered_png_uses_the_file_window_or_the_requested_one(store: Store) -> None:
    record = store.ct[0]
    ds = pydicom.dcmread(record.path)
    got = _image(_get(store.url(record, "/rendered"), "image/png"))
    assert np.array_equal(got, display_frame(ds))  # file window 40/400
    lung = _image(_get(store.url(record, "/rendered"), "image/png", window="lung"))
    assert np.array_equal(lung, display_frame(ds, window=Window(-600, 1500)))
    custom = _image(_get(store.url(record, "/rendered"), "image/png", window="100,50,linear-exact"))
    assert np.array_equal(custom, display_frame(ds, window=Window(100, 50, "linear-exact")))
    assert not np.array_equal(custom, got)


def test_rendered_monochrome1_is_inverted(store: Store) -> None:
    two, one = (_image(_get(store.url(r, "/rendered"), "image/png")) for r in store.twins)
    assert two.min() == 0 and two.max() == 255
    assert np.array_equal(one, 255 - two)


def test_rendered_viewport_quality_and_jpeg_default(store: Store, client: DICOMwebClient) -> None:
    record = store.ct[1]  # 48 wide, 32 high
    jpeg = client.retrieve_instance_rendered(record.study_uid, record.series_uid, record.sop_uid)
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
    sized = _image(_get(store.url(record, "/rendered"), "image/png", viewport="96,96"))
    assert sized.shape == (64, 96)
    region = _image(_get(store.url(record, "/rendered"), "image/png", viewport="10,10,8,4,-20,10"))
    ds = pydicom.dcmread(record.path)
    expected = apply_viewport(display_frame(ds), Viewport(10, 10, 8, 4, -20, 10))
    assert np.array_equal(region, expected)
    small = _get(store.url(record, "/rendered"), "image/jpeg", quality="5")
    large = _get(store.url(record, "/rendered"), "image/jpeg", quality="100")
    assert len(small.content) < len(large.content)
    for params in ({"quality": "0"}, {"window": "1,0"}, {"viewport": "10"}, {"window": "x"}):
        bad = _get(store.url(record, "/rendered"), "image/png", **params)
        assert bad.status_code == 400 and bad.headers["Content-Type"] == "application/problem+json"
        assert next(iter(params)) in bad.json()["detail"]
    assert _get(store.url(record, "/rendered"), "image/webp").status_code == 406


def test_rendered_every_photometric_interpretation(store: Store) -> None:
    seen = set()
    for record, _ in _images(store):
        ds = pydicom.dcmread(record.path)
        got = _image(_get(store.url(record, "/rendered"), "image/png"))
        assert np.array_equal(got, display_frame(ds)), record.path.name
        seen.add(str(ds.PhotometricInterpretation))
    assert {"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "PALETTE COLOR"} <= seen


def test_rendered_frames_study_and_series(store: Store, client: DICOMwebClient) -> None:
    record = store.multiframe
    ds = pydicom.dcmread(record.path)
    frame3 = _image(_get(store.url(record, "/frames/3/rendered"), "image/png"))
    assert np.array_equal(frame3, display_frame(ds, 2))
    both = _get(store.url(record, "/frames/1,3/rendered"), 'multipart/related; type="image/png"')
    assert [h["content-type"] for h, _ in _parts(both)] == ["image/png"] * 2
    assert _get(store.url(record, "/frames/1,3/rendered"), "image/png").status_code == 406
    ct = store.ct[0]
    series_url = f"{store.base}/studies/{ct.study_uid}/series/{ct.series_uid}"
    first = _image(_get(f"{series_url}/rendered", "image/png"))
    assert np.array_equal(first, display_frame(pydicom.dcmread(ct.path)))
    every = _get(f"{series_url}/rendered", 'multipart/related; type="image/png"')
    assert len(_parts(every)) == len(store.ct)
    jpeg = client.retrieve_series_rendered(ct.study_uid, ct.series_uid)
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
    assert _image(_get(f"{store.base}/studies/{ct.study_uid}/rendered", "image/png")).ndim == 2


def _gif_frames(response: requests.Response) -> tuple[list[np.ndarray], list[int]]:
    """An animated GIF answer's frames (as RGB or L arrays) and their durations (ms)."""
    assert response.status_code == 200, response.text[:300]
    assert response.headers["Content-Type"] == "image/gif"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "GIF"
    frames, durations = [], []
    for frame in ImageSequence.Iterator(image):
        durations.append(int(frame.info.get("duration", 0)))
        frames.append(np.asarray(frame.convert("RGB" if frame.mode not in ("L", "P") else "L")))
    return frames, durations


def test_rendered_multiframe_instance_all_frames_or_first(store: Store) -> None:
    """PS3.18 §10.4.1.1.3 / Table 8.7.4-1: a multi-frame instance renders as every frame
    (multipart, one part a frame) or as one animated image/gif; a single-frame media type
    gets frame 1; ``/frames/{n}/rendered`` renders frame n."""
    record = store.multiframe  # 4 frames, no Frame Time
    ds = pydicom.dcmread(record.path)
    expected = [display_frame(ds, i) for i in range(4)]
    every = _get(store.url(record, "/rendered"), 'multipart/related; type="image/png"')
    parts = _parts(every)
    assert [h["content-type"] for h, _ in parts] == ["image/png"] * 4
    for (_, body), frame in zip(parts, expected, strict=True):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(body))), frame)
    # the frames are one ramp scaled: with their own windows they look alike, and a GIF
    # merges identical neighbours into one longer frame; one window tells them apart
    window = {"window": "18000,36000"}
    apart = [display_frame(ds, i, window=Window(18000, 36000)) for i in range(4)]
    gif = _get(store.url(record, "/rendered"), "image/gif", **window)
    frames, durations = _gif_frames(gif)
    assert len(frames) == 4
    for got, frame in zip(frames, apart, strict=True):
        assert np.array_equal(got, frame)  # 256 grey levels fit a GIF palette exactly
    assert durations == [100] * 4  # no Cine Module: 10 frames/s
    same, same_durations = _gif_frames(_get(store.url(record, "/rendered"), "image/gif"))
    assert len(same) == 1 and same_durations == [400]  # merged, the cine's length kept
    assert np.array_equal(_image(_get(store.url(record, "/rendered"), "image/png")), expected[0])
    for number in (1, 2, 4):
        single = _image(_get(store.url(record, f"/frames/{number}/rendered"), "image/png"))
        assert np.array_equal(single, expected[number - 1])
    pair, _ = _gif_frames(_get(store.url(record, "/frames/4,2/rendered"), "image/gif", **window))
    assert len(pair) == 2
    assert np.array_equal(pair[0], apart[3]) and np.array_equal(pair[1], apart[1])
    missing = _get(store.url(record, "/frames/5/rendered"), "image/png")
    assert missing.status_code == 404 and "5" in missing.json()["detail"]
    series = _get(
        f"{store.base}/studies/{record.study_uid}/series/{record.series_uid}/rendered",
        'multipart/related; type="image/jpeg"',
    )
    assert len(_parts(series)) == 4  # the series' one instance, every frame


def test_rendered_every_multiframe_file_frame_by_frame(store: Store) -> None:
    """Every decodable multi-frame instance (pydicom's files: MR, RGB, RLE, JPEG…)."""
    checked = 0
    for record, _ in _images(store):
        if record.number_of_frames < 2:
            continue
        ds = pydicom.dcmread(record.path)
        parts = _parts(_get(store.url(record, "/rendered"), 'multipart/related; type="image/png"'))
        assert len(parts) == record.number_of_frames, record.path.name
        for index in sorted({0, record.number_of_frames - 1}):
            got = np.asarray(Image.open(io.BytesIO(parts[index][1])))
            assert np.array_equal(got, display_frame(ds, index)), (record.path.name, index)
        checked += 1
    assert checked >= 3


def test_rendered_cine_of_the_sandbox(sandbox_dir: Path, tmp_path: Path) -> None:
    """The sandbox's multi-frame series (US cine among them) as animations and frames."""
    from store_server import StoreServer

    cines = []
    for path in sorted(sandbox_dir.rglob("*.dcm")):
        if "realworld" in path.relative_to(sandbox_dir).parts:
            continue  # pydicom's own files: covered by the tests above
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if int(header.get("NumberOfFrames") or 1) > 1:
            target = tmp_path / "root" / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
            cines.append(header)
    modalities = {str(h.Modality) for h in cines}
    assert "US" in modalities, modalities
    with StoreServer(tmp_path / "root", tmp_path / "data") as server:
        for header in cines:
            url = (
                f"{server.url}/studies/{header.StudyInstanceUID}/series/"
                f"{header.SeriesInstanceUID}/instances/{header.SOPInstanceUID}"
            )
            ds = pydicom.dcmread(tmp_path / "root" / Path(header.filename).name)
            count = int(ds.NumberOfFrames)
            frames, durations = _gif_frames(_get(f"{url}/rendered", "image/gif"))
            assert len(frames) == count, header.filename
            if "FrameTime" in ds:
                assert set(durations) == {round(float(ds.FrameTime))}
            middle = count // 2
            expected = display_frame(ds, middle)
            single = _image(_get(f"{url}/frames/{middle + 1}/rendered", "image/png"))
            assert np.array_equal(single, expected)
            # a GIF holds 256 colours per frame: colour frames come back close, not equal
            got = frames[middle].astype(int)
            reference = np.asarray(
                Image.fromarray(expected).convert("RGB" if got.ndim == 3 else "L")
            ).astype(int)
            assert np.abs(got - reference).mean() < 6, header.filename


def test_thumbnails_at_every_level(store: Store) -> None:
    ct = store.ct[0]
    series_url = f"{store.base}/studies/{ct.study_uid}/series/{ct.series_uid}"
    middle = store.ct[len(store.ct) // 2]
    expected = encode_image(display_frame(pydicom.dcmread(middle.path)), "image/png")
    assert _get(f"{series_url}/thumbnail", "image/png").content == expected
    for url in (
        f"{store.base}/studies/{ct.study_uid}/thumbnail",
        store.url(store.multiframe, "/thumbnail"),
        store.url(store.multiframe, "/frames/2/thumbnail"),
    ):
        for media in ("image/jpeg", "image/png"):
            image = _image(_get(url, media), media)
            assert 0 < max(image.shape[:2]) <= 128
        assert _get(url, "application/dicom").status_code == 406
    big = next(r for r, _ in _images(store) if (r.rows or 0) >= 512)
    image = _image(_get(store.url(big, "/thumbnail"), "image/png"))
    assert max(image.shape[:2]) == 128
    sized = _image(_get(store.url(big, "/thumbnail"), "image/png", viewport="64,64"))
    assert max(sized.shape[:2]) == 64


# --------------------------------------------------------------------------- byte ranges


def _ranged(url: str, accept: str, value: str, **headers: str) -> requests.Response:
    return requests.get(
        url, headers={**IDENTITY, "Accept": accept, "Range": value, **headers}, timeout=60
    )


def test_byte_ranges_of_a_single_part_instance(store: Store) -> None:
    """RFC 9110 §14: 206 with Content-Range, suffix and open ranges, 416 past the end."""
    record = store.ct[0]  # stored as Explicit VR Little Endian: sent as the file
    url = store.url(record)
    whole = _get(url, "application/dicom")
    assert whole.status_code == 200 and whole.headers["Accept-Ranges"] == "bytes"
    size = len(whole.content)
    assert whole.content == record.path.read_bytes()
    for value, first, last in (
        ("bytes=128-131", 128, 131),
        ("bytes=100-", 100, size - 1),
        ("bytes=-10", size - 10, size - 1),
        ("bytes=0-999999999", 0, size - 1),
        ("bytes = 5 - 6", 5, 6),
    ):
        part = _ranged(url, "application/dicom", value)
        assert part.status_code == 206, (value, part.text[:200])
        assert part.headers["Content-Range"] == f"bytes {first}-{last}/{size}", value
        assert part.content == whole.content[first : last + 1], value
        assert part.headers["Content-Type"].startswith("application/dicom")
    assert _ranged(url, "application/dicom", "bytes=128-131").content == b"DICM"
    for value in (f"bytes={size}-", "bytes=5-2", "bytes=-0", "bytes=x-1"):
        refused = _ranged(url, "application/dicom", value)
        assert refused.status_code == 416, value
        assert refused.headers["Content-Range"] == f"bytes */{size}"
        assert refused.headers["Content-Type"] == "application/problem+json"
        assert value.split("=")[1] in refused.json()["detail"]
    for value, extra in (
        ("bytes=0-1,4-5", {}),  # several ranges: ignored (RFC 9110 §14.2)
        ("items=0-1", {}),  # another unit: ignored
        ("bytes=0-1", {"If-Range": '"abc"'}),  # no validators kept: the whole
    ):
        full = _ranged(url, "application/dicom", value, **extra)
        assert full.status_code == 200 and full.content == whole.content, value


def test_byte_ranges_of_transcoded_instances_frames_and_bulk_data(store: Store) -> None:
    implicit = next(r for r in store.all_records() if r.transfer_syntax_uid == "1.2.840.10008.1.2")
    url = store.url(implicit)
    whole = _get(url, "application/dicom").content
    part = _ranged(url, "application/dicom", "bytes=-64")
    assert part.status_code == 206 and part.content == whole[-64:]
    assert part.headers["Content-Range"] == f"bytes {len(whole) - 64}-{len(whole) - 1}/{len(whole)}"
    frame_url = store.url(store.multiframe, "/frames/2")
    frame = _get(frame_url, "application/octet-stream").content
    assert len(frame) == 32 * 40 * 2
    piece = _ranged(frame_url, "application/octet-stream", "bytes=80-159")
    assert piece.status_code == 206 and piece.content == frame[80:160]
    checked = 0
    for record in store.all_records():
        for metadata in _get(store.url(record, "/metadata")).json():
            for key, entry in metadata.items():
                if key == "7FE00010" or "BulkDataURI" not in entry:
                    continue
                value = _get(entry["BulkDataURI"], "application/octet-stream").content
                if len(value) < 8:
                    continue
                half = _ranged(entry["BulkDataURI"], "application/octet-stream", "bytes=4-")
                assert half.status_code == 206 and half.content == value[4:], key
                assert half.headers["Content-Range"] == f"bytes 4-{len(value) - 1}/{len(value)}"
                checked += 1
    assert checked >= 3


def test_byte_ranges_are_ignored_on_multipart_answers(store: Store) -> None:
    record = store.ct[0]
    plain = _get(store.url(record), INSTANCE)
    ranged = _ranged(store.url(record), INSTANCE, "bytes=0-9")
    assert ranged.status_code == 200
    assert [b for _, b in _parts(ranged)] == [b for _, b in _parts(plain)]
    frames = _ranged(store.url(store.multiframe, "/frames/1,2"), FRAMES, "bytes=0-9")
    assert frames.status_code == 200 and len(_parts(frames)) == 2


# --------------------------------------------------------------------------- errors, CORS


def test_bad_and_unknown_uids(store: Store) -> None:
    ct = store.ct[0]
    unknown = "1.2.3.4.5.6.7.8.9"
    for suffix in ("", "/metadata", "/rendered", "/thumbnail"):
        bad = _get(f"{store.base}/studies/1.2.abc{suffix}")
        assert bad.status_code == 400, suffix
        assert bad.headers["Content-Type"] == "application/problem+json"
        assert "1.2.abc" in bad.json()["detail"]
        missing = _get(f"{store.base}/studies/{unknown}{suffix}")
        assert missing.status_code == 404 and unknown in missing.json()["detail"]
    assert _get(f"{store.base}/studies/{ct.study_uid}/series/{unknown}").status_code == 404
    assert _get(store.url(ct).replace(ct.sop_uid, unknown)).status_code == 404
    assert _get(store.url(ct, "/bulkdata/7FE0")).status_code == 400
    assert _get(store.url(ct, "/bulkdata/00091001")).status_code == 404
    no_pixels = next(r for r in store.all_records() if r.number_of_frames == 0)
    assert _get(store.url(no_pixels, "/frames/1")).status_code == 404
    assert _get(store.url(no_pixels, "/rendered")).status_code == 404


def test_cors_and_preflight(store: Store) -> None:
    ct = store.ct[0]
    response = _get(store.url(ct, "/frames/1"))
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    preflight = requests.options(
        store.url(ct, "/frames/1"),
        headers={"Origin": "http://viewer.example", "Access-Control-Request-Headers": "accept"},
        timeout=30,
    )
    assert preflight.status_code == 204
    assert "accept" in preflight.headers["Access-Control-Allow-Headers"]


# --------------------------------------------------------------------------- negotiation units


def test_parse_accept_orders_by_q_and_keeps_quoted_commas() -> None:
    ranges = parse_accept(
        'image/png;q=0.2, multipart/related; type="a, b"; q=0.9, image/jpeg, text/x;q=0'
    )
    assert [(r.media, r.q) for r in ranges] == [
        ("image/jpeg", 1.0),
        ("multipart/related", 0.9),
        ("image/png", 0.2),
    ]
    assert ranges[1].params == {"type": "a, b"}
    assert [r.media for r in parse_accept(None)] == ["*/*"]
    for bad in ("image/png;q=2", "image/png;q=x", "png"):
        with pytest.raises(InvalidQueryError, match="Accept"):
            parse_accept(bad)


def test_frame_negotiation_table() -> None:
    jpeg = "1.2.840.10008.1.2.4.50"

    def choose(accept: str, stored: str, count: int = 1) -> tuple[bool, bool, str] | None:
        choice = choose_frame_representation(parse_accept(accept), stored, count)
        return None if choice is None else (choice.single_part, choice.as_stored, choice.media)

    octet = "application/octet-stream"
    assert choose("*/*", jpeg) == (False, False, octet)
    assert choose(FRAMES, jpeg) == (False, False, octet)
    assert choose(FRAMES + "; transfer-syntax=*", jpeg) == (False, True, octet)
    assert choose(FRAMES + "; transfer-syntax=*", EVRLE) == (False, False, octet)
    assert choose('multipart/related; type="image/jpeg"', jpeg) == (False, True, "image/jpeg")
    assert choose('multipart/related; type="image/*"', jpeg) == (False, True, "image/jpeg")
    assert choose('multipart/related; type="image/jp2"', jpeg) is None
    assert choose('multipart/related; type="image/jpeg"', EVRLE) is None
    assert choose("image/jpeg", jpeg) == (True, True, "image/jpeg")
    assert choose("image/jpeg", jpeg, count=2) is None  # one part cannot hold two frames
    rle = 'multipart/related; type="image/x-dicom-rle"'
    assert choose(rle, "1.2.840.10008.1.2.5") == (False, True, "image/dicom-rle")


def test_a_file_replaced_on_disk_is_served_fresh(store: Store) -> None:
    """Cached headers and metadata are keyed by file size and mtime, never stale."""
    ct = store.ct[0]
    path = store.root / "gen" / "fresh.dcm"
    sop = generate_uid()

    def write(value: int, center: str) -> None:
        _write(
            path,
            np.full((8, 8), value, np.uint16),
            study=ct.study_uid,
            series=generate_uid(entropy_srcs=["fresh"]),
            number=1,
            WindowCenter=center,
            WindowWidth="10",
        )
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.save_as(path, enforce_file_format=True)

    write(7, "5")
    record = store.index.add_file(path)
    before = _parts(_get(store.url(record, "/frames/1")))[0][1]
    assert np.frombuffer(before, "<u2").tolist() == [7] * 64
    assert _get(store.url(record, "/metadata")).json()[0]["00281050"]["Value"] == [5]
    write(9, "6")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = _parts(_get(store.url(record, "/frames/1")))[0][1]
    assert np.frombuffer(after, "<u2").tolist() == [9] * 64
    assert _get(store.url(record, "/metadata")).json()[0]["00281050"]["Value"] == [6]


def test_a_client_that_hangs_up_mid_stream_does_not_hurt_the_server(store: Store) -> None:
    big = store.big[0]
    target = f"/dicom-web/studies/{big.study_uid}"
    host, port = store.base.split("//")[1].split("/")[0].split(":")
    for accept in (INSTANCE, INSTANCE + "; transfer-syntax=1.2.840.10008.1.2.5"):
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.request("GET", target, headers={"Accept": accept})
        response = connection.getresponse()
        assert response.status == 200
        assert len(response.read(1000)) == 1000
        connection.close()  # gone with most of the study unread
    after = _get(f"{store.base}{target.removeprefix('/dicom-web')}", INSTANCE)
    assert len(_parts(after)) == len(store.big)
