"""STOW-RS into the embedded store over real HTTP (PS3.18 §10.5, Annex I)."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Generator, Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from pydicom.uid import generate_uid
from servers import start_imagingkit
from store_server import UID_ROOT, StoreServer, make_instance, part10_bytes, write_instances

from imagingkit.config import Settings
from imagingkit.dicomweb.multipart import encode_multipart
from imagingkit.sandbox.dicom_index import DicomIndex
from imagingkit.sandbox.dicomweb_store import index_path_for
from imagingkit.sandbox.stow import remove_stale_uploads

TIMEOUT = 60
DICOM_PART = {"Content-Type": "application/dicom"}


def _uid() -> str:
    return generate_uid(prefix=UID_ROOT)


@pytest.fixture
def server(tmp_path: Path) -> Generator[StoreServer, None, None]:
    root = tmp_path / "root"
    root.mkdir()
    with StoreServer(root, tmp_path / "data", max_upload_bytes=256 * 1024) as srv:
        yield srv


def post(
    server: StoreServer, parts: list[tuple[dict[str, str], bytes]], path: str = "/studies"
) -> requests.Response:
    body, content_type = encode_multipart(parts, "application/dicom")
    return requests.post(
        f"{server.url}{path}", data=body, headers={"Content-Type": content_type}, timeout=TIMEOUT
    )


def referenced(response: requests.Response) -> list[str]:
    items = response.json().get("00081199", {}).get("Value", [])
    return [item["00081155"]["Value"][0] for item in items]


def failures(response: requests.Response) -> list[tuple[str | None, int]]:
    items = response.json().get("00081198", {}).get("Value", [])
    return [
        ((item["00081155"].get("Value") or [None])[0], item["00081197"]["Value"][0])
        for item in items
    ]


def qido_sops(server: StoreServer, study: str) -> list[str]:
    response = requests.get(f"{server.url}/studies/{study}/instances", timeout=TIMEOUT)
    if response.status_code == 404:
        return []
    return [item["00080018"]["Value"][0] for item in response.json()]


def test_stored_instances_are_on_disk_indexed_and_retrievable(server: StoreServer) -> None:
    study, series = _uid(), _uid()
    datasets = [make_instance(study=study, series=series, instance_number=n) for n in (1, 2)]
    client = DICOMwebClient(server.url)
    client.store_instances(datasets)
    sops = [ds.SOPInstanceUID for ds in datasets]
    assert qido_sops(server, study) == sops
    for ds in datasets:
        path = server.store.root / "stow" / study / series / f"{ds.SOPInstanceUID}.dcm"
        assert pydicom.dcmread(path).SOPInstanceUID == ds.SOPInstanceUID
        back = client.retrieve_instance(study, series, ds.SOPInstanceUID)
        assert back.PatientName == "Doe^John"
        assert (back.pixel_array == ds.pixel_array).all()
    assert server.store.index.verify() == []


def test_response_dataset_lists_each_instance_with_its_retrieve_url(server: StoreServer) -> None:
    study, series = _uid(), _uid()
    ds = make_instance(study=study, series=series)
    response = post(server, [(DICOM_PART, part10_bytes(ds))], f"/studies/{study}")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/dicom+json")
    body = response.json()
    assert body["00081190"]["Value"] == [f"{server.url}/studies/{study}"]
    (item,) = body["00081199"]["Value"]
    assert item["00081150"]["Value"] == [ds.SOPClassUID]
    assert item["00081155"]["Value"] == [ds.SOPInstanceUID]
    assert item["00081190"]["Value"] == [
        f"{server.url}/studies/{study}/series/{series}/instances/{ds.SOPInstanceUID}"
    ]
    assert "00081198" not in body


def test_some_failed_is_202_with_the_failure_reasons(server: StoreServer) -> None:
    study, series = _uid(), _uid()
    good = make_instance(study=study, series=series)
    no_series = make_instance(study=study, series=series)
    del no_series.SeriesInstanceUID
    truncated = part10_bytes(make_instance(study=study, series=series, rows=64, columns=64))
    response = post(
        server,
        [
            (DICOM_PART, part10_bytes(good)),
            (DICOM_PART, b"this is not DICOM"),
            (DICOM_PART, part10_bytes(no_series)),
            (DICOM_PART, truncated[:-100]),
            ({"Content-Type": "application/json"}, b"{}"),
        ],
    )
    assert response.status_code == 202
    assert referenced(response) == [good.SOPInstanceUID]
    reasons = failures(response)
    assert [reason for _, reason in reasons] == [0xC000, 0xA900, 0xC000, 0xC000]
    assert reasons[1][0] == no_series.SOPInstanceUID  # named when it could be read
    assert qido_sops(server, study) == [good.SOPInstanceUID]


def test_all_failed_is_409(server: StoreServer) -> None:
    response = post(server, [(DICOM_PART, b"junk"), (DICOM_PART, b"\x00" * 300)])
    assert response.status_code == 409
    assert [reason for _, reason in failures(response)] == [0xC000, 0xC000]
    assert "00081199" not in response.json()


def test_study_uid_mismatch_is_a_failed_entry(server: StoreServer) -> None:
    target, other = _uid(), _uid()
    ours = make_instance(study=target, series=_uid())
    theirs = make_instance(study=other, series=_uid())
    response = post(
        server,
        [(DICOM_PART, part10_bytes(ours)), (DICOM_PART, part10_bytes(theirs))],
        f"/studies/{target}",
    )
    assert response.status_code == 202
    assert failures(response) == [(theirs.SOPInstanceUID, 0xC409)]
    assert qido_sops(server, other) == []


def test_restoring_an_instance_replaces_it(server: StoreServer) -> None:
    study, series = _uid(), _uid()
    ds = make_instance(study=study, series=series, StudyDescription="first")
    assert post(server, [(DICOM_PART, part10_bytes(ds))]).status_code == 200
    ds.StudyDescription = "second"
    assert post(server, [(DICOM_PART, part10_bytes(ds))]).status_code == 200
    found = requests.get(
        f"{server.url}/studies", params={"StudyInstanceUID": study}, timeout=TIMEOUT
    )
    assert found.json()[0]["00081030"]["Value"] == ["second"]
    # the same instance under another series: the old copy goes away
    moved = _uid()
    ds.SeriesInstanceUID = moved
    assert post(server, [(DICOM_PART, part10_bytes(ds))]).status_code == 200
    files = [p for p in (server.store.root / "stow").rglob("*.dcm")]
    assert [p.parent.name for p in files] == [moved]
    assert server.store.index.counts()["instances"] == 1
    assert server.store.index.verify() == []


def test_restoring_an_instance_of_the_folder_serves_the_new_copy(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ds = make_instance(study=_uid(), series=_uid(), StudyDescription="original")
    (original,) = write_instances(root / "mine", [ds])
    before = original.read_bytes()
    with StoreServer(root, tmp_path / "data") as server:
        ds.StudyDescription = "corrected"
        assert post(server, [(DICOM_PART, part10_bytes(ds))]).status_code == 200
        record = server.store.index.instance(ds.SOPInstanceUID)
        assert record is not None and record.path.parent.parent.parent.name == "stow"
        assert server.store.index.verify() == []
    assert original.read_bytes() == before  # the user's file is left alone
    # a restart keeps serving the stored copy (newest file wins)
    with DicomIndex(index_path_for(root, Settings(data_dir=tmp_path / "data")), root) as idx:
        idx.scan()
        assert idx.header(ds.SOPInstanceUID)["00081030"]["Value"] == ["corrected"]


def test_a_bare_dataset_is_stored_as_part10(server: StoreServer) -> None:
    ds = make_instance(study=_uid(), series=_uid())
    out = BytesIO()
    ds.save_as(out, enforce_file_format=False, implicit_vr=False, little_endian=True)
    assert out.getvalue()[128:132] != b"DICM"
    assert post(server, [(DICOM_PART, out.getvalue())]).status_code == 200
    record = server.store.index.instance(ds.SOPInstanceUID)
    assert record is not None
    assert record.path.read_bytes()[128:132] == b"DICM"
    assert pydicom.dcmread(record.path).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"


# --------------------------------------------------------------------------- bad requests


def test_truncated_multipart_is_400_and_stores_nothing(server: StoreServer) -> None:
    study = _uid()
    parts = [
        (DICOM_PART, part10_bytes(make_instance(study=study, series=_uid()))) for _ in range(2)
    ]
    body, content_type = encode_multipart(parts, "application/dicom")
    response = requests.post(
        f"{server.url}/studies",
        data=body[: len(body) - 40],
        headers={"Content-Type": content_type},
        timeout=TIMEOUT,
    )
    assert response.status_code == 400
    assert "truncated" in response.json()["detail"]
    assert qido_sops(server, study) == []


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ('multipart/related; type="application/dicom"; boundary=xyz', b"no parts here", 400),
        ('multipart/related; type="application/dicom"; boundary=xyz', b"--xyz--\r\n", 400),
        ("application/dicom", b"DICM", 415),
        ('multipart/related; type="application/dicom+json"; boundary=x', b"--x--", 415),
        ("", b"", 415),
    ],
)
def test_malformed_requests(
    server: StoreServer, content_type: str, body: bytes, status: int
) -> None:
    response = requests.post(
        f"{server.url}/studies", data=body, headers={"Content-Type": content_type}, timeout=TIMEOUT
    )
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")


def test_invalid_study_uid_in_the_path_is_400(server: StoreServer) -> None:
    ds = make_instance(study=_uid(), series=_uid())
    assert post(server, [(DICOM_PART, part10_bytes(ds))], "/studies/abc").status_code == 400


def test_unacceptable_response_type_is_406(server: StoreServer) -> None:
    body, content_type = encode_multipart(
        [(DICOM_PART, part10_bytes(make_instance(study=_uid(), series=_uid())))],
        "application/dicom",
    )
    response = requests.post(
        f"{server.url}/studies",
        data=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+xml"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 406


def test_too_large_bodies_get_413(server: StoreServer) -> None:
    big = make_instance(study=_uid(), series=_uid(), rows=512, columns=512)  # 512 KiB of pixels
    body, content_type = encode_multipart([(DICOM_PART, part10_bytes(big))], "application/dicom")
    response = requests.post(
        f"{server.url}/studies", data=body, headers={"Content-Type": content_type}, timeout=TIMEOUT
    )
    assert response.status_code == 413
    assert "262144" in response.json()["detail"]

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted while it arrives
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    response = requests.post(
        f"{server.url}/studies",
        data=chunked(),
        headers={"Content-Type": content_type},
        timeout=TIMEOUT,
    )
    assert response.status_code == 413
    assert requests.get(f"{server.url}/studies", timeout=TIMEOUT).json() == []


def test_the_store_keeps_serving_after_bad_uploads(server: StoreServer) -> None:
    for _ in range(3):
        post(server, [(DICOM_PART, b"junk")])
        requests.post(
            f"{server.url}/studies",
            data=b"--x",
            timeout=TIMEOUT,
            headers={"Content-Type": "multipart/related; boundary=x"},
        )
    ds = make_instance(study=_uid(), series=_uid())
    assert post(server, [(DICOM_PART, part10_bytes(ds))]).status_code == 200
    assert requests.get(f"{server.url}/studies", timeout=TIMEOUT).status_code == 200


def test_stale_upload_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    incoming = tmp_path / "stow" / ".incoming"
    incoming.mkdir(parents=True)
    dead = incoming / "999999999-abc.part"  # no such process
    dead.write_bytes(b"partial")
    ours = incoming / f"{os.getpid()}-def.part"
    ours.write_bytes(b"in progress")
    assert remove_stale_uploads(tmp_path) == 1
    assert not dead.exists() and ours.exists()


# --------------------------------------------------------------------------- kill -9


@pytest.mark.slow
def test_kill_9_during_stow_leaves_index_and_files_consistent(tmp_path: Path) -> None:
    root, data = tmp_path / "root", tmp_path / "data"
    root.mkdir()
    server = start_imagingkit(
        ["--dicom-dir", str(root), "--port", "0", "--data-dir", str(data)],
        log=tmp_path / "serve.log",
        data_dir=data,
    )
    study = _uid()
    acknowledged: list[str] = []
    stop = threading.Event()

    def upload() -> None:
        session = requests.Session()
        for _ in range(500):
            if stop.is_set():
                return
            datasets = [
                make_instance(study=study, series=_uid(), rows=64, columns=64, instance_number=n)
                for n in range(10)
            ]
            body, content_type = encode_multipart(
                [(DICOM_PART, part10_bytes(ds)) for ds in datasets], "application/dicom"
            )
            try:
                response = session.post(
                    f"{server.dicomweb}/studies",
                    data=body,
                    headers={"Content-Type": content_type},
                    timeout=30,
                )
            except requests.RequestException:
                return  # the server died mid-request
            if response.status_code == 200:
                acknowledged.extend(ds.SOPInstanceUID for ds in datasets)

    worker = threading.Thread(target=upload, daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 120
        while len(acknowledged) < 50 and time.monotonic() < deadline and worker.is_alive():
            time.sleep(0.01)
        assert len(acknowledged) >= 50, f"uploads did not get going:\n{server.output}"
        os.kill(server.process.pid, signal.SIGKILL)
        assert server.process.wait(timeout=30) == -signal.SIGKILL
    finally:
        stop.set()
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(timeout=30)
        worker.join(timeout=60)
    assert not worker.is_alive()
    db = index_path_for(root, Settings(data_dir=data))
    remove_stale_uploads(root)
    assert not list((root / "stow" / ".incoming").glob("*.part"))
    with DicomIndex(db, root) as idx:
        assert idx.verify() == []
        idx.scan()
        assert idx.verify() == []
        on_disk = {p.stem for p in (root / "stow").rglob("*.dcm")}
        indexed = {r.sop_uid for r in idx.instances(study)}
        assert indexed == on_disk
        assert set(acknowledged) <= indexed  # nothing acknowledged was lost


def test_random_garbage_uploads_never_fail_on_the_server(server: StoreServer) -> None:
    rng = random.Random(11)
    good = part10_bytes(make_instance(study=_uid(), series=_uid()))
    for _ in range(60):
        parts = []
        for _ in range(rng.randrange(1, 4)):
            data = bytearray(good[: rng.randrange(0, len(good) + 1)])
            for _ in range(rng.randrange(0, 8)):
                if data:
                    data[rng.randrange(len(data))] = rng.randrange(256)
            parts.append((DICOM_PART, bytes(data)))
        body, content_type = encode_multipart(parts, "application/dicom")
        if rng.random() < 0.3:
            body = body[: rng.randrange(len(body))]
        response = requests.post(
            f"{server.url}/studies",
            data=body,
            headers={"Content-Type": content_type},
            timeout=TIMEOUT,
        )
        assert response.status_code in (200, 202, 400, 409), response.text
    assert server.store.index.verify() == []
