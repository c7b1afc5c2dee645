"""End to end in headless Chromium: an IID link opens a study in the built-in viewer and in
OHIF (npm ``@ohif/app``), and each draws the study's pixels.

The app under test serves the IID facade, the built-in viewer and OHIF at the origin root
(:class:`~imagingkit.viewer.ohif.OHIFApp`); its ``/dicom-web`` forwards to Orthanc, which
holds the test corpus. Needs Debian ``chromium`` and PyPI ``playwright`` (driven with
``executable_path``; never ``playwright install``).
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from iid_support import CORPUS, AppServer, DicomwebProxy, canvas_spread, wait_until_drawn
from servers import OrthancServer

from imagingkit.iid.facade import IidFacade
from imagingkit.iid.viewers import ViewerRegistry
from imagingkit.viewer import BuiltinViewer
from imagingkit.viewer.ohif import OHIFApp

pytestmark = [pytest.mark.orthanc, pytest.mark.browser]

S1, S2, S3 = (CORPUS[a].uid for a in ("ACC1", "ACC2", "ACC3"))


@pytest.fixture(scope="module")
def stack(iid_orthanc: OrthancServer, dist: Path) -> Generator[AppServer, None, None]:
    """Facade (OHIF by default), built-in viewer, OHIF, and /dicom-web → Orthanc."""
    registry = ViewerRegistry.standard(ohif=True)
    server = AppServer(
        [
            DicomwebProxy(iid_orthanc.dicomweb),
            IidFacade(registry, timeout=30),
            BuiltinViewer(),
            OHIFApp(dist),
        ]
    ).start()
    yield server
    server.stop()


def iid_url(server: AppServer, query: str) -> str:
    return f"{server.url}/iid/IHEInvokeImageDisplay?{query}"


# -- the built-in viewer -------------------------------------------------------------------


def test_an_iid_link_opens_the_builtin_viewer_and_draws_the_study(
    stack: AppServer, page: Any
) -> None:
    page.goto(iid_url(stack, f"requestType=STUDY&studyUID={S3}&viewerType=builtin"))
    assert page.url == f"{stack.url}/viewer/?study={S3}"
    page.wait_for_selector('body[data-state="ready"]')
    assert canvas_spread(page) > 10
    buttons = page.locator("#series-list button")
    assert buttons.count() == 1
    assert "CT" in buttons.first.inner_text()
    assert page.locator("#study-info").inner_text() == "Alpha, Ann · IK-A001"
    assert page.locator("#series-list li.study").inner_text() == "2022-07-20 · IID test CT"
    assert any(
        f"/dicom-web/studies/{S3}/series/" in url and "rendered" in url for url in page.requested
    )


def test_the_builtin_viewer_scrolls_and_applies_window_presets(stack: AppServer, page: Any) -> None:
    page.goto(f"{stack.url}/viewer/?study={S3}")
    page.wait_for_selector('body[data-state="ready"]')
    canvas = page.locator("#canvas")
    first = canvas.get_attribute("data-instance")
    page.keyboard.press("End")
    page.wait_for_function(
        f"document.getElementById('canvas').dataset.instance !== {first!r}", timeout=30_000
    )
    assert page.locator("#position").inner_text() == "2 / 2"
    page.mouse.move(640, 450)
    page.mouse.wheel(0, -120)
    page.wait_for_function(
        f"document.getElementById('canvas').dataset.instance === {first!r}", timeout=30_000
    )
    before = canvas_spread(page)
    page.select_option("#preset", "lung")
    page.wait_for_function(
        "() => performance.getEntriesByType('resource')"
        ".some(e => e.name.includes('window=-600,1500,linear'))",
        timeout=30_000,
    )
    page.wait_for_selector('body[data-state="ready"]')
    assert any("window=-600,1500,linear" in url for url in page.requested)
    assert canvas_spread(page) != pytest.approx(before)


def test_a_patient_link_lists_every_matching_study_in_the_builtin_viewer(
    stack: AppServer, page: Any
) -> None:
    cx = quote("IK-A001^^^IKTEST", safe="")
    page.goto(iid_url(stack, f"requestType=PATIENT&patientID={cx}&viewerType=builtin"))
    assert page.url == f"{stack.url}/viewer/?study={S3},{S2},{S1}"
    page.wait_for_selector('body[data-state="ready"]')
    assert page.locator("#series-list button").count() == 3
    assert canvas_spread(page) > 10


def test_a_bad_link_shows_a_readable_error_not_a_viewer(stack: AppServer, page: Any) -> None:
    response = page.goto(iid_url(stack, "requestType=STUDY&studyUID=<b>1.2</b>"))
    assert response.status == 400
    assert "is not a valid DICOM UID" in page.locator(".detail").inner_text()
    assert page.locator("b").count() == 0


# -- OHIF ---------------------------------------------------------------------------------


def test_ohif_is_served_at_the_root_with_this_servers_dicomweb(stack: AppServer) -> None:
    config = requests.get(f"{stack.url}/app-config.js", timeout=30)
    assert config.headers["Content-Type"].startswith("text/javascript")
    assert 'window.location.origin + "/dicom-web"' in config.text
    page = requests.get(f"{stack.url}/ohif/viewer?StudyInstanceUIDs={S3}", timeout=30)
    assert page.status_code == 200 and "<html" in page.text
    assert 'config.routerBasename = "/ohif"' in config.text
    assert requests.get(f"{stack.url}/no-such-bundle.js", timeout=30).status_code == 404
    wasm = next(Path(stack_dist(stack)).glob("*.wasm")).name
    assert requests.get(f"{stack.url}/{wasm}", timeout=30).headers["Content-Type"] == (
        "application/wasm"
    )
    studies = requests.get(
        f"{stack.url}/dicom-web/studies", headers={"Accept": "application/dicom+json"}, timeout=30
    )
    assert studies.status_code == 200 and len(studies.json()) == 5
    # imagingkit's own viewer and index keep their paths
    assert (
        "<title>imagingkit viewer</title>" in requests.get(f"{stack.url}/viewer/", timeout=30).text
    )
    assert "ohif" in requests.get(f"{stack.url}/", timeout=30).json()["endpoints"]
    bare = requests.get(f"{stack.url}/ohif", allow_redirects=False, timeout=30)
    assert bare.headers["Location"] == "/ohif/"


def stack_dist(stack: AppServer) -> Path:
    return next(c.dist for c in stack.components if isinstance(c, OHIFApp))


def test_an_iid_link_opens_ohif_on_that_study_and_it_draws_pixels(
    stack: AppServer, page: Any, tmp_path: Path
) -> None:
    page.goto(iid_url(stack, f"requestType=STUDY&studyUID={S3}"))
    assert page.url == f"{stack.url}/ohif/viewer?StudyInstanceUIDs={S3}"
    canvas = page.locator("canvas.cornerstone-canvas").first
    canvas.wait_for(state="visible", timeout=90_000)
    spreads = wait_until_drawn(canvas)
    assert len(spreads) == 2 and min(spreads) > 5, f"OHIF drew no image: spreads {spreads}"
    asked = [url for url in page.requested if "/dicom-web/studies/" in url]
    assert any(f"/dicom-web/studies/{S3}/series" in url for url in asked)
    assert not [url for url in asked if S1 in url or S2 in url]
    page.screenshot(path=str(tmp_path / "ohif.png"))  # what a person would have seen


def test_the_builtin_viewer_refuses_a_malformed_uid_in_its_own_url(
    stack: AppServer, page: Any
) -> None:
    page.goto(f"{stack.url}/viewer/?study=%3Cimg%20src%3Dx%3E")
    page.wait_for_selector('body[data-state="error"]')
    assert page.locator("#status").inner_text() == "not a DICOM UID: <img src=x>"
    assert page.locator("img").count() == 0
    assert not [url for url in page.requested if "/dicom-web/" in url]


def test_without_a_study_the_builtin_viewer_lists_the_servers_studies(
    stack: AppServer, page: Any
) -> None:
    page.goto(f"{stack.url}/viewer/")
    page.wait_for_selector('body[data-state="study-list"]')
    assert page.locator("#series-list button").count() == 5
    page.locator("#series-list button", has_text="Beta, Bob").click()
    page.wait_for_selector('body[data-state="ready"]')
    assert page.url == f"{stack.url}/viewer/?study={CORPUS['ACC4'].uid}"
