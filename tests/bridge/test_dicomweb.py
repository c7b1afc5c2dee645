"""The bridge's DICOMweb side: Endpoint URLs, QIDO fill-in and ``df.imaging``, against the
served sandbox (``imagingkit serve --sandbox``) and Orthanc.

The ImagingStudies of the sandbox are copied, without their series, into a private FHIR
store whose Endpoint points at a DICOMweb server: the bridge must fill the series and
instances in by QIDO-RS and give the frame the full ImagingStudies give.
"""

from __future__ import annotations

import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
import pytest
import requests
from servers import ImagingkitServer, OrthancServer

import imagingkit
from imagingkit.config import Settings
from imagingkit.sandbox.fhir import FhirStore
from imagingkit.sandbox.fhir.testing import serving

SERIES_KEYS = ["StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber", "Modality"]


def _fhir(server: ImagingkitServer) -> str:
    return server.mounts["fhir"].rstrip("/")


def _ct_series(frame: pd.DataFrame) -> pd.DataFrame:
    """Sandbox CT series of several slices, made by the generator (one volume each)."""
    ct = frame[(frame["Modality"] == "CT") & (frame["NumberOfSeriesRelatedInstances"] > 2)]
    return ct[ct["StudyInstanceUID"].str.startswith("2.25.")]


@pytest.fixture(scope="module")
def full(sandbox_server: ImagingkitServer) -> pd.DataFrame:
    return imagingkit.connect(_fhir(sandbox_server)).cohort().imaging(modality="CT").studies()


def test_dicomweb_urls_point_at_the_sandbox(
    full: pd.DataFrame, sandbox_server: ImagingkitServer
) -> None:
    assert len(full) > 0
    assert full["dicomweb_url"].str.startswith(sandbox_server.dicomweb + "/studies/").all()
    assert (full["endpoint_convention"] == "fhir-core").all()
    row = full.iloc[0]
    assert row["dicomweb_url"].endswith(
        f"/studies/{row['StudyInstanceUID']}/series/{row['SeriesInstanceUID']}"
    )


def test_accessor_metadata_volume_and_viewer(
    full: pd.DataFrame, sandbox_server: ImagingkitServer
) -> None:
    one = _ct_series(full).head(1)
    meta = one.imaging.metadata(progress=False)
    assert len(meta) == int(one["NumberOfSeriesRelatedInstances"].iloc[0])
    assert set(meta["SOPInstanceUID"]) and (meta["Modality"] == "CT").all()
    volume = one.imaging.volume(progress=False)
    assert volume.shape[0] == len(meta)
    assert volume.series_uid == one["SeriesInstanceUID"].iloc[0]
    # slices ordered by geometry: positions advance along the slice normal
    steps = np.diff(volume.positions @ volume.orientation[0])
    assert (steps > 0).all()
    thumbs = one.imaging.thumbnails(progress=False)
    assert thumbs.ok and next(iter(thumbs.results.values()))[:2] == b"\xff\xd8"  # JPEG
    urls = one.imaging.viewer_urls(viewer="builtin")
    assert (
        urls.iloc[0].startswith(sandbox_server.url)
        and one["StudyInstanceUID"].iloc[0] in urls.iloc[0]
    )


#: the RetrieveLocationUID of the MADO-style placeholder Endpoint (PS3.3 C.12.1.1.5)
LOCATION_UID = "1.2.826.0.1.3680043.10.543.1"
WADO_RS = {
    "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
    "code": "dicom-wado-rs",
}


def _endpoint(ident: str, address: str, **more: Any) -> dict[str, Any]:
    return {
        "resourceType": "Endpoint",
        "id": ident,
        "status": "active",
        "connectionType": WADO_RS,
        "payloadType": [{"text": "DICOM"}],
        "address": address,
        **more,
    }


def _without_series(study: dict[str, Any], endpoint: str) -> dict[str, Any]:
    bare = {
        k: v
        for k, v in study.items()
        if k not in ("series", "meta", "encounter", "reasonReference", "basedOn")
    }
    bare["endpoint"] = [{"reference": f"Endpoint/{endpoint}"}]
    bare["subject"] = {"reference": "Patient/anon"}
    return bare


@pytest.fixture(scope="module")
def bare_store(
    full: pd.DataFrame, sandbox_server: ImagingkitServer
) -> Generator[tuple[str, list[str]], None, None]:
    """A private FHIR store with three sandbox CT studies, their series left out, each
    with an Endpoint of another convention: FHIR core (the DICOMweb base), IHE IDR (the
    study URL) and IHE MADO (a placeholder standing for a RetrieveLocationUID)."""
    studies = list(dict.fromkeys(_ct_series(full)["imaging_study_id"]))[:3]
    assert len(studies) == 3, "the sandbox should hold three CT studies"
    dicomweb = sandbox_server.dicomweb
    resources: list[dict[str, Any]] = [
        {"resourceType": "Patient", "id": "anon", "gender": "unknown"},
        _endpoint("core", dicomweb),
        _endpoint(
            "mado",
            f"urn:oid:{LOCATION_UID}",
            extension=[
                {
                    "url": "https://profiles.ihe.net/RAD/MADO/StructureDefinition/RetrieveLocationUID",
                    "valueOid": f"urn:oid:{LOCATION_UID}",
                }
            ],
        ),
    ]
    for ident, kind in zip(studies, ("core", "idr", "mado"), strict=True):
        study = requests.get(f"{_fhir(sandbox_server)}/ImagingStudy/{ident}", timeout=60).json()
        if kind == "idr":
            uid = study["identifier"][0]["value"].removeprefix("urn:oid:")
            resources.append(_endpoint("idr", f"{dicomweb}/studies/{uid}"))
        resources.append(_without_series(study, kind))
    folder = Path(tempfile.mkdtemp(prefix="ik-bare-"))
    store = FhirStore(folder / "fhir.sqlite", settings=Settings(data_dir=folder))
    try:
        for resource in resources:
            store.upsert(resource)
        with serving([store]) as origin:
            yield f"{origin}/fhir", studies
    finally:
        store.close()


@pytest.mark.parametrize("level", ["series", "instance"])
def test_qido_fill_in_gives_the_listed_series(
    level: str,
    full: pd.DataFrame,
    bare_store: tuple[str, list[str]],
    sandbox_server: ImagingkitServer,
) -> None:
    base, studies = bare_store
    mado = {LOCATION_UID: sandbox_server.dicomweb}
    filled = imagingkit.connect(base, dicomweb=mado).cohort().studies(level=level)
    assert set(filled["endpoint_convention"].astype(str)) == {"fhir-core", "ihe-idr", "mado"}
    listed = (
        imagingkit.connect(_fhir(sandbox_server))
        .cohort()
        .imaging(study_uid=list(filled["StudyInstanceUID"].unique()))
        .studies(level=level)
    )
    keys = SERIES_KEYS + (["SOPInstanceUID", "InstanceNumber"] if level == "instance" else [])
    ours = filled[keys].astype(str).sort_values(keys).reset_index(drop=True)
    theirs = listed[keys].astype(str).sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, theirs)
    assert filled.dtypes.astype(str).tolist() == listed.dtypes.astype(str).tolist()
    assert filled["dicomweb_url"].str.contains("/series/").all()
    # without fill-in, one row per study is kept with empty series columns
    bare = imagingkit.connect(base, dicomweb=mado, fill_in=False).cohort().studies(level=level)
    assert len(bare) == len(studies) and bare["SeriesInstanceUID"].isna().all()
    # an unresolved placeholder keeps its row, with no DICOMweb URL, rather than guessing
    unresolved = imagingkit.connect(base).cohort().studies(level=level)
    assert unresolved["dicomweb_url"].isna().sum() == 1


@pytest.mark.orthanc
def test_orthanc_serves_the_same_pixels(
    full: pd.DataFrame,
    bare_store: tuple[str, list[str]],
    orthanc: OrthancServer,
    sandbox_dir: Path,
    sandbox_server: ImagingkitServer,
) -> None:
    """``dicomweb=`` points the same FHIR cohort at Orthanc: QIDO fill-in and volumes agree."""
    base, _studies = bare_store
    mado = {LOCATION_UID: sandbox_server.dicomweb}
    wanted = set(
        imagingkit.connect(base, dicomweb=mado).cohort().studies(level="study")["StudyInstanceUID"]
    )
    files = [
        path
        for path in sandbox_dir.rglob("*.dcm")
        if getattr(pydicom.dcmread(path, stop_before_pixels=True), "StudyInstanceUID", None)
        in wanted
    ]
    report = orthanc.upload(files)
    assert not report.refused, report.refused
    from_sandbox = imagingkit.connect(base, dicomweb=mado).cohort().studies()
    from_orthanc = imagingkit.connect(base, dicomweb=orthanc.dicomweb).cohort().studies()
    assert from_orthanc["dicomweb_url"].str.startswith(orthanc.dicomweb).all()
    ours = from_sandbox[SERIES_KEYS].astype(str).sort_values(SERIES_KEYS).reset_index(drop=True)
    theirs = from_orthanc[SERIES_KEYS].astype(str).sort_values(SERIES_KEYS).reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, theirs)
    uid = _ct_series(full[full["StudyInstanceUID"].isin(wanted)])["SeriesInstanceUID"].iloc[0]
    a = from_sandbox[from_sandbox["SeriesInstanceUID"] == uid].imaging.volume(progress=False)
    b = from_orthanc[from_orthanc["SeriesInstanceUID"] == uid].imaging.volume(progress=False)
    assert a.shape == b.shape and np.array_equal(a.array, b.array)
    assert np.allclose(a.spacing, b.spacing)


def test_accessor_on_a_dask_cluster_download_and_frames(
    full: pd.DataFrame, sandbox_server: ImagingkitServer, tmp_path: Path
) -> None:
    distributed = pytest.importorskip("distributed", reason="pip install imagingkit[dask]")
    two = _ct_series(full).drop_duplicates("StudyInstanceUID").head(2)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as dask_client,
    ):
        on_dask = two.imaging.volume(executor=dask_client, progress=False)
    local = two.imaging.volume(progress=False)
    assert isinstance(on_dask, dict) and isinstance(local, dict) and set(on_dask) == set(local)
    for uid, volume in local.items():
        assert np.array_equal(volume.array, on_dask[uid].array)
    one = two.head(1)
    saved = one.imaging.download(tmp_path, progress=False)
    files = sorted(tmp_path.rglob("*.dcm"))
    assert saved.ok and len(files) == int(one["NumberOfSeriesRelatedInstances"].iloc[0])
    again = one.imaging.download(tmp_path, progress=False)  # resumable: nothing missing
    assert again.ok and sorted(tmp_path.rglob("*.dcm")) == files
    instances = (
        imagingkit.connect(_fhir(sandbox_server))
        .cohort()
        .imaging(study_uid=one["StudyInstanceUID"].iloc[0])
        .studies(level="instance")
    )
    first = instances[instances["SeriesInstanceUID"] == one["SeriesInstanceUID"].iloc[0]].head(1)
    frames = first.imaging.frames((1,), decode=False)
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    (part,) = frames[first["SOPInstanceUID"].iloc[0]]
    assert len(part.payload) == ds.Rows * ds.Columns * ds.BitsAllocated // 8
