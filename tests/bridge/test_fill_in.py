"""QIDO-RS fill-in on the bulk executor: the frame is the sequential one, whatever the executor.

Uses the private FHIR store of ``test_dicomweb.py`` (sandbox ImagingStudies without their
series, Endpoints of the three conventions) against the served sandbox and Orthanc.
"""

from __future__ import annotations

import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pydicom
import pytest
import requests
from servers import ImagingkitServer, OrthancServer
from test_dicomweb import (  # the same bare store  # noqa: F401
    LOCATION_UID,
    _endpoint,
    _fhir,
    _without_series,
    bare_store,
    full,
)

import imagingkit
from imagingkit.config import Settings
from imagingkit.sandbox.fhir import FhirStore
from imagingkit.sandbox.fhir.testing import serving

LEVELS = ["series", "instance"]


def _studies(base: str, level: str, dicomweb: object, **options: object) -> pd.DataFrame:
    return imagingkit.connect(base, dicomweb=dicomweb).cohort().studies(level=level, **options)  # type: ignore[arg-type]


def _assert_same_as_sequential(base: str, level: str, dicomweb: object) -> pd.DataFrame:
    with ThreadPoolExecutor(max_workers=1) as one:
        sequential = _studies(base, level, dicomweb, executor=one)
    assert sequential["SeriesInstanceUID"].notna().all()  # every study was filled in
    concurrent = _studies(base, level, dicomweb)  # the default pool
    with ThreadPoolExecutor(max_workers=16) as many:
        wide = _studies(base, level, dicomweb, executor=many)
    for frame in (concurrent, wide):
        pd.testing.assert_frame_equal(frame, sequential, check_exact=True)
    return sequential


@pytest.mark.parametrize("level", LEVELS)
def test_concurrent_fill_in_equals_sequential(
    level: str,
    bare_store: tuple[str, list[str]],  # noqa: F811
    sandbox_server: ImagingkitServer,
) -> None:
    base, _studies_ids = bare_store
    _assert_same_as_sequential(base, level, {LOCATION_UID: sandbox_server.dicomweb})


@pytest.mark.orthanc
@pytest.mark.parametrize("level", LEVELS)
def test_concurrent_fill_in_equals_sequential_on_orthanc(
    level: str,
    bare_store: tuple[str, list[str]],  # noqa: F811
    orthanc: OrthancServer,
    sandbox_dir: Path,
    sandbox_server: ImagingkitServer,
) -> None:
    base, _studies_ids = bare_store
    mado = {LOCATION_UID: sandbox_server.dicomweb}
    wanted = set(_studies(base, "study", mado)["StudyInstanceUID"])
    files = [
        path
        for path in sandbox_dir.rglob("*.dcm")
        if getattr(pydicom.dcmread(path, stop_before_pixels=True), "StudyInstanceUID", None)
        in wanted
    ]
    report = orthanc.upload(files)
    assert not report.refused, report.refused
    frame = _assert_same_as_sequential(base, level, orthanc.dicomweb)
    assert frame["dicomweb_url"].str.startswith(orthanc.dicomweb).all()
    assert set(frame["StudyInstanceUID"]) == wanted


def test_a_failing_server_keeps_its_rows_and_is_named(
    full: pd.DataFrame,  # noqa: F811
    sandbox_server: ImagingkitServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """D9: the studies of a server that fails keep their row (no series) and are named in a
    warning; the others are filled in, in the frame's order."""
    dead = "http://127.0.0.1:9/dicom-web"  # nothing listens on the discard port
    ids = list(dict.fromkeys(full["imaging_study_id"]))[:3]
    resources = [
        {"resourceType": "Patient", "id": "anon", "gender": "unknown"},
        _endpoint("core", sandbox_server.dicomweb),
        _endpoint("dead", dead),
    ]
    for ident, endpoint in zip(ids, ("core", "dead", "core"), strict=True):
        study = requests.get(f"{_fhir(sandbox_server)}/ImagingStudy/{ident}", timeout=60).json()
        resources.append(_without_series(study, endpoint))
    folder = Path(tempfile.mkdtemp(prefix="ik-fill-in-"))
    store = FhirStore(folder / "fhir.sqlite", settings=Settings(data_dir=folder))
    try:
        for resource in resources:
            store.upsert(resource)
        with serving([store]) as origin:
            with caplog.at_level(logging.WARNING, logger="imagingkit.fhir"):
                frame = _studies(f"{origin}/fhir", "series", None)
            with ThreadPoolExecutor(max_workers=1) as one:
                sequential = _studies(f"{origin}/fhir", "series", None, executor=one)
    finally:
        store.close()
    pd.testing.assert_frame_equal(frame, sequential, check_exact=True)
    failed = frame[frame["dicomweb_url"].str.startswith(dead)]
    assert len(failed) == 1 and failed["SeriesInstanceUID"].isna().all()
    filled = frame[~frame["dicomweb_url"].str.startswith(dead)]
    assert filled["SeriesInstanceUID"].notna().all()
    assert set(filled["imaging_study_id"]) == {ids[0], ids[2]}
    assert "fill-in failed for 1 of 3 studies" in caplog.text and dead in caplog.text
