"""``df.imaging.frames()``: decoded frames equal pydicom's ``pixel_array`` (Modality LUT
applied, as ``pixels()``/``volume()`` do) of the same file, on the served sandbox and Orthanc;
``decode=False`` gives the raw frames with their media types.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from servers import ImagingkitServer, OrthancServer

import imagingkit

#: real-world files of pydicom's test set taken along (odd encodings: big endian, RLE,
#: JPEG, palette colour, YBR); the generated CT, MR and US cine are always taken
MAX_REAL_WORLD = 40


def _reference(path: Path, numbers: list[int]) -> np.ndarray:
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    count = int(getattr(ds, "NumberOfFrames", 1) or 1)
    stack = pixels if count > 1 else pixels[np.newaxis]
    chosen = stack[[n - 1 for n in numbers]]
    if ds.PhotometricInterpretation in ("MONOCHROME1", "MONOCHROME2"):
        chosen = apply_modality_lut(chosen, ds)
    return chosen


@pytest.fixture(scope="module")
def files(sandbox_dir: Path) -> dict[str, tuple[Path, int]]:
    """SOPInstanceUID → (file, Number of Frames) of the instances with pixel data."""
    out: dict[str, tuple[Path, int]] = {}
    for path in sorted(sandbox_dir.rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        try:
            count = int(getattr(ds, "NumberOfFrames", 1) or 1)
        except ValueError:  # a deliberately broken real-world file
            continue
        if "Rows" in ds and "SOPInstanceUID" in ds:
            out[str(ds.SOPInstanceUID)] = (path, count)
    return out


@pytest.fixture(scope="module")
def chosen(sandbox_server: ImagingkitServer, files: dict[str, tuple[Path, int]]) -> pd.DataFrame:
    """Instance rows: one per generated modality, every multi-frame one, and real-world
    files pydicom itself can decode."""
    fhir = sandbox_server.mounts["fhir"].rstrip("/")
    rows = imagingkit.connect(fhir).cohort().studies(level="instance", progress=False)
    rows = rows[rows["SOPInstanceUID"].isin(files)]
    generated = rows["StudyInstanceUID"].str.startswith("2.25.")
    multi = rows["SOPInstanceUID"].map(lambda s: files[s][1] > 1)
    one_each = rows[generated & ~multi].drop_duplicates("Modality")
    real = []
    for index, sop in rows.loc[~generated & ~multi, "SOPInstanceUID"].items():
        try:
            pydicom.dcmread(files[sop][0]).pixel_array  # noqa: B018
        except Exception:  # pydicom cannot decode it: not a case for this test
            continue
        real.append(index)
    picked = pd.concat([one_each, rows[multi], rows.loc[real[:MAX_REAL_WORLD]]])
    assert multi.sum() >= 2 and (picked["Modality"] == "US").any(), "US cine expected"
    return picked


def _same(ours: np.ndarray, reference: np.ndarray) -> bool:
    """Equal values; a non-integer rescale (PET) is float32 here, float64 in pydicom, so
    there they agree to float32 precision."""
    if ours.shape != reference.shape:
        return False
    if ours.dtype.kind == "f":
        return bool(np.allclose(ours, reference, rtol=1e-6, atol=1e-6))
    return bool(np.array_equal(ours, reference))


def _check_decoded(frame: pd.DataFrame, files: dict[str, tuple[Path, int]]) -> None:
    first = frame.imaging.frames(progress=False)
    assert first.ok, first.failures.to_dict("records")
    every = frame.imaging.frames(None, progress=False)
    assert every.ok, every.failures.to_dict("records")
    for sop in frame["SOPInstanceUID"]:
        path, count = files[sop]
        ours = first[sop]
        assert ours.shape[0] == 1 and _same(ours, _reference(path, [1])), path.name
        assert _same(every[sop], _reference(path, list(range(1, count + 1)))), path.name
    multi = frame[frame["SOPInstanceUID"].map(lambda s: files[s][1] > 2)]
    backwards = multi.imaging.frames((3, 1), progress=False)
    for sop in multi["SOPInstanceUID"]:
        assert _same(backwards[sop], _reference(files[sop][0], [3, 1]))


def test_frames_are_decoded_like_pixel_array(
    chosen: pd.DataFrame, files: dict[str, tuple[Path, int]]
) -> None:
    _check_decoded(chosen, files)
    cine = chosen[
        (chosen["Modality"] == "US") & chosen["SOPInstanceUID"].map(lambda s: files[s][1] > 1)
    ]
    ours = cine.head(1).imaging.frames(None, progress=False)
    (array,) = ours.results.values()
    assert array.ndim in (3, 4) and array.shape[0] > 1  # (frames, rows, columns[, samples])


def test_raw_frames_keep_bytes_and_media_types(
    chosen: pd.DataFrame, files: dict[str, tuple[Path, int]]
) -> None:
    ct = chosen[(chosen["Modality"] == "CT") & chosen["StudyInstanceUID"].str.startswith("2.25.")]
    raw = ct.head(1).imaging.frames((1,), decode=False, progress=False)
    ((sop, parts),) = raw.results.items()
    ds = pydicom.dcmread(files[sop][0])
    (part,) = parts
    assert part.content_type == "application/octet-stream"
    size = ds.Rows * ds.Columns * ds.BitsAllocated // 8
    assert len(part.payload) == size and part.payload == ds.PixelData[:size]


def test_bad_frame_numbers_and_levels(chosen: pd.DataFrame) -> None:
    with pytest.raises(imagingkit.errors.InvalidInputError, match="1-based"):
        chosen.imaging.frames((0,))
    with pytest.raises(imagingkit.errors.InvalidInputError, match="instance rows"):
        chosen.drop(columns=["SOPInstanceUID"]).imaging.frames()


@pytest.mark.orthanc
def test_frames_from_orthanc_are_decoded_like_pixel_array(
    chosen: pd.DataFrame,
    files: dict[str, tuple[Path, int]],
    orthanc: OrthancServer,
    sandbox_server: ImagingkitServer,
) -> None:
    report = orthanc.upload(files[sop][0] for sop in chosen["SOPInstanceUID"])
    assert not report.refused, report.refused
    fhir = sandbox_server.mounts["fhir"].rstrip("/")
    uids = list(chosen["StudyInstanceUID"].unique())
    rows = (
        imagingkit.connect(fhir, dicomweb=orthanc.dicomweb)
        .cohort()
        .imaging(study_uid=uids)
        .studies(level="instance", progress=False)
    )
    rows = rows[rows["SOPInstanceUID"].isin(set(chosen["SOPInstanceUID"]))]
    assert len(rows) == len(chosen) and rows["dicomweb_url"].str.startswith(orthanc.dicomweb).all()
    _check_decoded(rows, files)
