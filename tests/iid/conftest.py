"""Fixtures for the IID tests (helpers live in ``iid_support.py``)."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import pytest
from iid_support import CHROMIUM, CHROMIUM_FLAGS, STUDIES, AppServer, ohif_dist, write_instance
from servers import OrthancServer, orthanc_missing_reason, start_orthanc

from imagingkit.server.app import Component


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: needs headless Chromium (Debian chromium) and PyPI playwright"
    )


@pytest.fixture
def serve_app() -> Generator[Callable[..., AppServer], None, None]:
    """Start app servers for one test; all are stopped at its end."""
    started: list[AppServer] = []

    def start(components: Sequence[Component], base_url: str = "/") -> AppServer:
        server = AppServer(components, base_url).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def corpus_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Part-10 files of :data:`STUDIES`, two instances each."""
    folder = tmp_path_factory.mktemp("iid-corpus")
    return [write_instance(folder, study, n) for study in STUDIES for n in (1, 2)]


@pytest.fixture(scope="session")
def iid_orthanc(
    tmp_path_factory: pytest.TempPathFactory, corpus_files: list[Path]
) -> Generator[OrthancServer, None, None]:
    """A private Orthanc holding only the IID corpus (QIDO-RS for the resolver)."""
    reason = orthanc_missing_reason()
    if reason:
        pytest.skip(reason)
    server = start_orthanc(tmp_path_factory.mktemp("iid-orthanc"))
    try:
        report = server.upload(corpus_files)
        assert not report.refused, report.refused
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser() -> Generator[Any, None, None]:
    if not CHROMIUM.exists():
        pytest.skip("Chromium missing: apt-get install -y chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright missing: pip install playwright (never 'playwright install')")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture(scope="module")
def dist() -> Path:
    found = ohif_dist()
    if isinstance(found, str):
        pytest.skip(found)
    return found


@pytest.fixture
def page(browser: Any) -> Generator[Any, None, None]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(
        "try { localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])); }"
        " catch (e) {}"
    )
    tab = context.new_page()
    tab.set_default_timeout(60_000)
    tab.requested = []  # type: ignore[attr-defined]
    tab.on("request", lambda request: tab.requested.append(request.url))
    yield tab
    context.close()
