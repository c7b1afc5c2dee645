"""``imagingkit serve`` as a user runs it: ports, printed URLs, signals, bad folders.

Each test starts the real command line in a subprocess (tests/servers.py) and talks HTTP
to it on loopback.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Generator
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file
from servers import (
    ImagingkitServer,
    imagingkit_command,
    listening_addresses,
    start_imagingkit,
    subprocess_env,
)

#: pydicom's bundled files, none needing a download
VALID_FILES = ("CT_small.dcm", "MR_small.dcm")


def _testdata(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom's bundled test file {name} is missing"
    return Path(str(path))


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two valid files (one in a subfolder with no extension) among junk files."""
    root = tmp_path_factory.mktemp("mixed")
    shutil.copy(_testdata(VALID_FILES[0]), root / "ct.dcm")
    (root / "nested" / "deeper").mkdir(parents=True)
    shutil.copy(_testdata(VALID_FILES[1]), root / "nested" / "deeper" / "IM0001")
    (root / "README.txt").write_text("not a DICOM file\n")
    (root / "empty.dcm").write_bytes(b"")
    (root / "random.dcm").write_bytes(os.urandom(4096))
    (root / "truncated.dcm").write_bytes(_testdata(VALID_FILES[0]).read_bytes()[:1000])
    return root


def _serve_folder(folder: Path, tmp: Path) -> ImagingkitServer:
    data_dir = tmp / "data"
    return start_imagingkit(
        ["--dicom-dir", str(folder), "--port", "0", "--data-dir", str(data_dir)],
        log=tmp / "serve.log",
        data_dir=data_dir,
    )


@pytest.fixture(scope="module")
def folder_server(
    mixed_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Generator[ImagingkitServer, None, None]:
    server = _serve_folder(mixed_folder, tmp_path_factory.mktemp("folder-server"))
    yield server
    assert server.stop(signal.SIGTERM) == 0, server.output


def test_port_zero_picks_a_free_port_and_prints_every_base_url(
    folder_server: ImagingkitServer,
) -> None:
    origin = folder_server.url.rstrip("/")
    assert origin.startswith("http://127.0.0.1:")
    assert folder_server.port > 0
    assert "dicom-web" in folder_server.mounts
    # the root document lists the same endpoints as the ready message
    index = requests.get(folder_server.url, timeout=30)
    assert index.status_code == 200
    assert index.json()["endpoints"] == folder_server.mounts
    for mount, url in folder_server.mounts.items():
        assert url == f"{origin}/{mount}/"
    studies = requests.get(f"{folder_server.dicomweb}/studies", timeout=30)
    assert studies.status_code == 200


def test_binds_loopback_only_by_default(folder_server: ImagingkitServer) -> None:
    # read the kernel's socket table rather than sending traffic to another interface
    assert listening_addresses(folder_server.port) == {"127.0.0.1"}


def test_folder_with_junk_serves_the_valid_files_only(
    folder_server: ImagingkitServer, mixed_folder: Path
) -> None:
    expected = {str(pydicom.dcmread(_testdata(name)).SOPInstanceUID) for name in VALID_FILES}
    response = requests.get(f"{folder_server.dicomweb}/instances", timeout=30)
    assert response.status_code == 200
    served = {item["00080018"]["Value"][0] for item in response.json()}
    assert served == expected
    # the junk was skipped, with a reason a user can read
    for junk in ("random.dcm", "truncated.dcm"):
        assert junk in folder_server.output, f"no logged reason for skipping {junk}"
    assert folder_server.process.poll() is None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly(sig: signal.Signals, mixed_folder: Path, tmp_path: Path) -> None:
    server = _serve_folder(mixed_folder, tmp_path)
    assert requests.get(f"{server.dicomweb}/studies", timeout=30).status_code == 200
    code = server.stop(sig, timeout=30)
    assert code == 0, server.output
    assert "stopping" in server.output
    assert listening_addresses(server.port) == set()


def _run_cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        imagingkit_command(*args),
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(data_dir),
        stdin=subprocess.DEVNULL,
    )


def test_missing_dicom_dir_exits_2_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    result = _run_cli("serve", "--dicom-dir", str(missing), "--port", "0", data_dir=tmp_path)
    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr
    assert "ready" not in result.stdout


def test_dicom_dir_that_is_a_file_exits_2(tmp_path: Path) -> None:
    a_file = tmp_path / "scan.dcm"
    shutil.copy(_testdata(VALID_FILES[0]), a_file)
    result = _run_cli("serve", "--dicom-dir", str(a_file), "--port", "0", data_dir=tmp_path)
    assert result.returncode == 2
    assert str(a_file) in result.stderr
    assert "Traceback" not in result.stderr


def test_sandbox_serves_its_generated_studies(sandbox_server: ImagingkitServer) -> None:
    response = requests.get(f"{sandbox_server.dicomweb}/studies", timeout=30)
    assert response.status_code == 200
    assert len(response.json()) > 0
    assert listening_addresses(sandbox_server.port) == {"127.0.0.1"}
