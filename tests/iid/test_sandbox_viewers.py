"""As a user runs it: ``imagingkit serve --sandbox --size small --ohif DIR``, an IID link
for a sandbox study opens OHIF (and the built-in viewer) in headless Chromium, which
loads that study from the embedded DICOMweb store and draws its pixels.

Studies are looked up by the facade on the same server: FHIR (the embedded store) for
patients, QIDO-RS for accession numbers.
"""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Generator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from iid_support import canvas_spread, wait_until_drawn
from servers import ImagingkitServer, start_imagingkit

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def cohort(sandbox_dir: Path) -> dict[str, Any]:
    """The sandbox's own description of its patients and studies."""
    return json.loads((sandbox_dir / "cohort.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def served(
    sandbox_dir: Path, dist: Path, tmp_path_factory: pytest.TempPathFactory
) -> Generator[ImagingkitServer, None, None]:
    """``imagingkit serve --sandbox --size small --port 0 --ohif DIST`` on a data copy."""
    data_dir = tmp_path_factory.mktemp("iid-sandbox-data")
    shutil.copytree(sandbox_dir.parents[1], data_dir, dirs_exist_ok=True)
    server = start_imagingkit(
        [
            "--sandbox",
            "--size=small",
            "--seed=42",
            "--port=0",
            f"--data-dir={data_dir}",
            f"--ohif={dist}",
        ],
        log=data_dir.parent / f"{data_dir.name}-serve.log",
        data_dir=data_dir,
        timeout=300,
    )
    yield server
    code = server.stop(signal.SIGTERM, timeout=30)
    assert code == 0, server.output


def ct_study(cohort: dict[str, Any]) -> dict[str, Any]:
    """A synthetic CT study with a stack of images."""
    return next(
        s
        for s in cohort["studies"]
        if s["ModalitiesInStudy"][:1] == ["CT"]
        and any(se["Modality"] == "CT" and se["NumberOfInstances"] > 5 for se in s["series"])
    )


def patient_of(cohort: dict[str, Any], study: dict[str, Any]) -> dict[str, Any]:
    return next(p for p in cohort["patients"] if p["PatientID"] == study["PatientID"])


def test_the_server_lists_ohif_and_the_facade(served: ImagingkitServer) -> None:
    assert {"dicom-web", "fhir", "iid", "viewer", "ohif"} <= set(served.mounts)
    assert served.mounts["ohif"] == f"{served.url}ohif/"


def test_an_iid_accession_link_opens_ohif_on_that_sandbox_study(
    served: ImagingkitServer, cohort: dict[str, Any], page: Any, tmp_path: Path
) -> None:
    study = ct_study(cohort)
    uid = study["StudyInstanceUID"]
    page.goto(
        f"{served.url}iid/IHEInvokeImageDisplay?requestType=STUDY"
        f"&accessionNumber={quote(study['AccessionNumber'])}"
    )
    assert page.url == f"{served.url}ohif/viewer?StudyInstanceUIDs={uid}"
    canvas = page.locator("canvas.cornerstone-canvas").first
    canvas.wait_for(state="visible", timeout=90_000)
    spreads = wait_until_drawn(canvas)
    page.screenshot(path=str(tmp_path / "ohif-sandbox.png"))
    assert len(spreads) == 2 and min(spreads) > 5, f"OHIF drew no image: {spreads}"
    asked = [url for url in page.requested if "/dicom-web/studies/" in url]
    assert any(f"/dicom-web/studies/{uid}/series" in url for url in asked)
    assert any("/frames/" in url for url in asked), "OHIF fetched no pixel data"


def test_an_iid_patient_link_opens_the_builtin_viewer_on_the_sandbox(
    served: ImagingkitServer, cohort: dict[str, Any], page: Any
) -> None:
    study = ct_study(cohort)
    patient = patient_of(cohort, study)
    cx = f"{patient['PatientID']}^^^{patient['IssuerOfPatientID']}"
    page.goto(
        f"{served.url}iid/IHEInvokeImageDisplay?requestType=PATIENT"
        f"&patientID={quote(cx, safe='')}&modalitiesInStudy=CT&viewerType=builtin"
    )
    expected = sorted(
        (s for s in cohort["studies"] if s["PatientID"] == patient["PatientID"]),
        key=lambda s: s["StudyDate"] + s["StudyTime"],
        reverse=True,
    )
    wanted = [s["StudyInstanceUID"] for s in expected if "CT" in s["ModalitiesInStudy"]]
    assert page.url == f"{served.url}viewer/?study={','.join(wanted)}"
    page.wait_for_selector('body[data-state="ready"]')
    assert canvas_spread(page) > 10
    assert page.locator("#series-list li.study").count() == len(wanted)
    position = page.locator("#position").inner_text()
    page.keyboard.press("ArrowDown")
    page.wait_for_function(
        f"document.getElementById('position').textContent !== {position!r}", timeout=30_000
    )


def test_the_sandbox_facade_answers_errors_without_a_viewer(served: ImagingkitServer) -> None:
    response = requests.get(
        f"{served.url}iid/IHEInvokeImageDisplay?requestType=PATIENT&patientID=NOBODY",
        allow_redirects=False,
        timeout=60,
    )
    assert response.status_code == 404
    assert "no imaging study was found for this patient" in response.text
