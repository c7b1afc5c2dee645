"""Shared fixtures: the cached sandbox data, Orthanc, and a running ``imagingkit serve``.

Under ``CI=true`` every skipped test is turned into a failure: CI installs every server
the tests need (``.ci/run``), so a skip there means a test did not really run (DESIGN.md D5).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import time
from collections.abc import Generator
from pathlib import Path

import pytest
from servers import (
    ImagingkitServer,
    OrthancServer,
    orthanc_missing_reason,
    start_imagingkit,
    start_orthanc,
)

REPO = Path(__file__).resolve().parent.parent
#: generated sandboxes cached between sessions (gitignored), keyed by generator source
TEST_DATA_CACHE = REPO / ".cache" / "test-data"
SANDBOX_SIZE = "small"
SANDBOX_SEED = 42
#: modules of imagingkit.sandbox that serve data rather than generate it; changing them
#: does not invalidate the cached sandbox
_SERVING_MODULES = {"dicom_index.py", "qido.py", "stow.py", "dicomweb_store.py", "wado.py"}


def _in_ci() -> bool:
    return os.environ.get("CI") == "true"


def _skip_reason(longrepr: object) -> str:
    # a skip's longrepr is (path, lineno, "Skipped: reason")
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Under ``CI=true``, report a skipped test as failed, with the skip's reason."""
    report = yield
    if _in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = (
            f"skipped under CI=true, where every test must run: {_skip_reason(report.longrepr)}"
        )
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """Under ``CI=true``, a module skipped at collection fails too."""
    report = yield
    if _in_ci() and report.skipped:
        report.outcome = "failed"
        report.longrepr = (
            f"module skipped under CI=true, where every test must run: "
            f"{_skip_reason(report.longrepr)}"
        )
    return report


# --------------------------------------------------------------------------- sandbox data


def _generator_fingerprint() -> str:
    digest = hashlib.sha256()
    for path in sorted((REPO / "imagingkit" / "sandbox").glob("*.py")):
        if path.name not in _SERVING_MODULES:
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _prune_stale(current: Path, unused_for: float = 3600) -> None:
    """Delete cached sandboxes of older generator versions unused for *unused_for* s."""
    prefix = current.name.rsplit("-", 1)[0] + "-"
    for entry in current.parent.glob(f"{prefix}*"):
        if entry == current or not entry.is_dir():
            continue
        if time.time() - entry.stat().st_mtime > unused_for:
            shutil.rmtree(entry, ignore_errors=True)
            entry.with_name(f"{entry.name}.lock").unlink(missing_ok=True)


def cached_sandbox_data_dir(size: str = SANDBOX_SIZE, seed: int = SANDBOX_SEED) -> Path:
    """Return a data dir holding the generated sandbox of *size*, generating it once.

    The data dir lives in ``.cache/test-data`` keyed by the generator's source, so a
    change to the generator regenerates it, and concurrent test sessions wait for one
    another (a file lock) instead of generating twice.
    """
    from imagingkit.sandbox.generate import ensure_sandbox

    data_dir = TEST_DATA_CACHE / f"{size}-seed{seed}-{_generator_fingerprint()}"
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.touch()  # in use: keep it from being pruned
    _prune_stale(data_dir)
    with (TEST_DATA_CACHE / f"{data_dir.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            ensure_sandbox(data_dir, size=size, seed=seed)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return data_dir


@pytest.fixture(scope="session")
def sandbox_dir() -> Path:
    """The generated "small" sandbox: a folder of Part-10 files (read-only, shared).

    Copy it before changing anything in it.
    """
    from imagingkit.sandbox.generate import ensure_sandbox

    # ensure_sandbox returns at once when the data is already there
    return ensure_sandbox(cached_sandbox_data_dir(), size=SANDBOX_SIZE, seed=SANDBOX_SEED)


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Generator[OrthancServer, None, None]:
    """A fresh Orthanc with its DICOMweb plugin on loopback, empty, for the session."""
    reason = orthanc_missing_reason()
    if reason:
        pytest.skip(reason)
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sandbox_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Generator[ImagingkitServer, None, None]:
    """``imagingkit serve --sandbox --size small --port 0`` on a private copy of the data.

    Stopped by SIGTERM at the end of the session, which must make it exit 0.
    """
    data_dir = tmp_path_factory.mktemp("sandbox-data")
    shutil.copytree(cached_sandbox_data_dir(), data_dir, dirs_exist_ok=True)
    server = start_imagingkit(
        [
            "--sandbox",
            f"--size={SANDBOX_SIZE}",
            f"--seed={SANDBOX_SEED}",
            "--port=0",
            f"--data-dir={data_dir}",
        ],
        log=data_dir.parent / f"{data_dir.name}-serve.log",
        data_dir=data_dir,
    )
    yield server
    code = server.stop(signal.SIGTERM, timeout=30)
    assert code == 0, f"imagingkit serve exited with {code} on SIGTERM:\n{server.output}"
