"""Shared fixtures: the cached sandbox data, Orthanc, and a running ``imagingkit serve``.

Under ``CI=true`` every skipped test is turned into a failure: CI installs every server
the tests need (``.ci/run``), so a skip there means a test did not really run (DESIGN.md D5).
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable, Generator
from pathlib import Path

import pytest
from servers import (
    SANDBOX_SEED,
    SANDBOX_SIZE,
    ImagingkitServer,
    OrthancServer,
    cached_sandbox_data_dir,
    orthanc_missing_reason,
    start_imagingkit,
    start_orthanc,
)


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


@pytest.fixture(scope="session")
def sandbox_cache() -> Callable[..., Path]:
    """``cached_sandbox_data_dir(size=..., seed=...)``: a data dir holding that sandbox.

    The same function is importable as ``from servers import cached_sandbox_data_dir``.
    """
    return cached_sandbox_data_dir


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
