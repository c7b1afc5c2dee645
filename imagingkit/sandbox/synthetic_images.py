"""Cross-sectional series: CT Image (PS3.3 A.3), MR Image (A.4) and PET Image (A.21) IODs.

Each series is a stack of single-frame instances sampled from the patient's phantom on the
exact grid its Image Plane module declares (C.7.6.2): axis-aligned axial, sagittal or
coronal planes, first-pixel positions, direction cosines, pixel spacing, slice thickness
and a shared Frame of Reference. CT stores Hounsfield units through Rescale Slope/Intercept,
MR stores 12-bit magnitude signal, PET stores Bq/ml with a per-slice Rescale Slope.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from imagingkit.sandbox.cohort import PatientPlan, SeriesPlan, StudyPlan
from imagingkit.sandbox.phantoms import (
    MRSequence,
    Phantom,
    Vec3,
    ct_hounsfield,
    mr_signal,
    pet_activity,
)
from imagingkit.sandbox.synthetic_anatomy import BodyHabitus, Lesion, head, knee, trunk
from imagingkit.sandbox.synthetic_modules import (
    SeriesWriter,
    code_item,
    equipment,
    frame_of_reference,
    general_image,
    general_series,
    image_plane,
    patient_and_study,
    sop_common,
    tm,
)
from imagingkit.sandbox.synthetic_pixels import set_pixels, to_uint

__all__ = [
    "Geometry",
    "generate_ct",
    "generate_mr",
    "generate_pt",
    "geometry_of",
    "habitus_of",
    "instance_path",
    "phantom_for",
    "sample_labels",
    "series_rng",
]


def series_rng(series: SeriesPlan, salt: str = "") -> np.random.Generator:
    """A random generator seeded by the series UID (stable across processes and runs)."""
    digest = hashlib.sha256(f"{series.uid}/{salt}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def instance_path(root: Path, study: StudyPlan, series: SeriesPlan, index: int) -> Path:
    """Where an instance is written: ``<root>/<PatientID>/<Study>/<Series>/<SOP>.dcm``."""
    return (
        root
        / study.patient.patient_id
        / study.uid
        / series.uid
        / f"{series.instance_uid(index)}.dcm"
    )


def habitus_of(patient: PatientPlan) -> BodyHabitus:
    """Body size from height and weight (BMI widens the trunk and thickens the fat)."""
    bmi = patient.weight_kg / (patient.height_m**2)
    female = patient.sex == "F"
    width = (0.92 if female else 1.0) * math.sqrt(bmi / 24.0) ** 0.6
    return BodyHabitus(
        width=width,
        depth=(0.95 if female else 1.0) * math.sqrt(bmi / 24.0) ** 0.8,
        height=patient.height_m / 1.72,
        fat=max(6.0, 6.0 + (bmi - 18.0) * 1.6),
        female=female,
    )


_PHANTOMS: dict[tuple[object, ...], Phantom] = {}


def phantom_for(study: StudyPlan, series: SeriesPlan) -> Phantom:
    """The phantom a series images: the patient's anatomy plus the study's findings.

    Phantoms are immutable; the few most recent are kept, since a study's series (and the
    segmentation of its CT) image the same one.
    """
    group = {"ct_head": "head", "mr_brain": "head", "mr_knee": "knee"}.get(series.kind, "trunk")
    key = (group, series.kind == "cr_chest", study.patient, repr(sorted(study.findings.items())))
    if key not in _PHANTOMS:
        if len(_PHANTOMS) >= 8:
            _PHANTOMS.clear()
        _PHANTOMS[key] = _build_phantom(study, series)
    return _PHANTOMS[key]


def _build_phantom(study: StudyPlan, series: SeriesPlan) -> Phantom:
    patient = study.patient
    rng = np.random.default_rng(patient.anatomy_seed)
    f = study.findings
    kind = series.kind
    if kind in {"ct_head", "mr_brain"}:
        return head(rng, infarct_side=int(f.get("infarct_side", 0)))
    if kind == "mr_knee":
        return knee(
            side=-1 if f.get("side", "R") == "R" else 1,
            tear=bool(f.get("tear")),
            effusion=float(f.get("effusion", 1.0)),
        )
    nodule = Lesion(*f["nodule"]) if "nodule" in f else None
    node = None
    if f.get("hot") and nodule is not None:
        node = Lesion((-18.0 if nodule.center[0] < 0 else 18.0, -15.0, -70.0), 9.0)
    return trunk(
        habitus_of(patient),
        rng,
        nodule=nodule,
        node=node,
        consolidation=Lesion(*f["consolidation"]) if "consolidation" in f else None,
        liver_lesion=Lesion(*f["liver_lesion"]) if "liver_lesion" in f else None,
        table=kind != "cr_chest",
    )


@dataclass(frozen=True)
class Geometry:
    """Where the pixels of a stack of parallel slices are (PS3.3 C.7.6.2.1.1).

    Attributes
    ----------
    row_dir, col_dir : Vec3
        Image Orientation (Patient): direction of increasing column index, then of
        increasing row index.
    normal : Vec3
        Direction of increasing slice index.
    origin : Vec3
        Image Position (Patient) of slice 0.
    rows, cols, n : int
        Matrix and number of slices.
    spacing : (float, float)
        Pixel Spacing: between rows, between columns (mm).
    thickness, step : float
        Slice Thickness and distance between slice centres (mm).
    """

    row_dir: Vec3
    col_dir: Vec3
    normal: Vec3
    origin: Vec3
    rows: int
    cols: int
    n: int
    spacing: tuple[float, float]
    thickness: float
    step: float

    def position(self, k: int) -> Vec3:
        """Image Position (Patient) of slice *k*."""
        o, nrm = self.origin, self.normal
        return (
            o[0] + k * self.step * nrm[0],
            o[1] + k * self.step * nrm[1],
            o[2] + k * self.step * nrm[2],
        )

    @property
    def orientation(self) -> list[float]:
        """Image Orientation (Patient)."""
        return [*self.row_dir, *self.col_dir]


_PLANES: dict[str, tuple[Vec3, Vec3]] = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
}


def geometry_of(series: SeriesPlan) -> Geometry:
    """Slice geometry of a CT, MR or PT series from its plan parameters."""
    p = series.params
    matrix, pixel = int(p["matrix"]), float(p["pixel"])
    if series.kind.startswith("mr_"):
        row_dir, col_dir = _PLANES[p["plane"]]
        normal = _cross(row_dir, col_dir)
        n, step = int(p["slices"]), float(p["thickness"]) + float(p["gap"])
        c = p["center"]
        half = (matrix - 1) / 2 * pixel
        off = -(n - 1) / 2 * step
        origin = tuple(
            c[i] + off * normal[i] - half * row_dir[i] - half * col_dir[i] for i in range(3)
        )
        return Geometry(
            row_dir,
            col_dir,
            normal,
            (origin[0], origin[1], origin[2]),
            matrix,
            matrix,
            n,
            (pixel, pixel),
            float(p["thickness"]),
            step,
        )
    z0, z1 = p["z"]
    cx, cy = p["center"]
    step = float(p["thickness"])
    n = series.n_instances
    half = (matrix - 1) / 2 * pixel
    origin = (cx - half, cy - half, z1 - (z1 - z0 - (n - 1) * step) / 2)
    return Geometry(
        (1.0, 0.0, 0.0),
        (0.0, 1.0, 0.0),
        (0.0, 0.0, -1.0),
        origin,
        matrix,
        matrix,
        n,
        (pixel, pixel),
        step,
        step,
    )


def _cross(a: Vec3, b: Vec3) -> Vec3:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def sample_labels(phantom: Phantom, g: Geometry) -> npt.NDArray[np.uint8]:
    """Tissue labels ``(slices, rows, cols)`` exactly on the geometry's pixel centres."""
    coords: list[npt.NDArray[np.floating[Any]] | None] = [None, None, None]
    dims: dict[str, int] = {}
    for name, vec, count, step in (
        ("row", g.col_dir, g.rows, g.spacing[0]),
        ("col", g.row_dir, g.cols, g.spacing[1]),
        ("slice", g.normal, g.n, g.step),
    ):
        axis = int(np.argmax(np.abs(vec)))
        coords[axis] = g.origin[axis] + math.copysign(1.0, vec[axis]) * np.arange(count) * step
        dims[name] = 2 - axis  # labels() returns (z, y, x)
    xs, ys, zs = coords
    assert xs is not None and ys is not None and zs is not None
    vol = phantom.labels(xs, ys, zs)
    return np.ascontiguousarray(vol.transpose(dims["slice"], dims["row"], dims["col"]))


def _base(ds: Dataset, study: StudyPlan, series: SeriesPlan, model: str) -> None:
    patient_and_study(ds, study)
    # PET states the patient's position with codes instead (C.8.9.4); CT and MR need it.
    general_series(ds, study, series, position=series.modality != "PT")
    frame_of_reference(ds, series)
    equipment(ds, model)


# ------------------------------------------------------------------------------------ CT

_CT_WINDOWS = {
    "ct_chest": ([-600, 40], [1500, 400], ["LUNG", "MEDIASTINUM"]),
    "ct_abdomen": ([50, 60], [400, 180], ["ABDOMEN", "LIVER"]),
    "ct_wholebody": ([40, -600], [400, 1500], ["SOFT TISSUE", "LUNG"]),
    "ct_head": ([40, 600], [80, 2800], ["BRAIN", "BONE"]),
}


def generate_ct(study: StudyPlan, series: SeriesPlan, root: Path) -> int:
    """Write a CT Image series (PS3.3 A.3); returns bytes written."""
    g = geometry_of(series)
    labels = sample_labels(phantom_for(study, series), g)
    contrast = bool(series.params.get("contrast"))
    noise = 18.0 if series.kind == "ct_wholebody" else (6.0 if series.kind == "ct_head" else 12.0)
    hu = ct_hounsfield(labels, series_rng(series), contrast=contrast, noise_hu=noise)
    stored = to_uint(hu + 1024.0, 12)
    centers, widths, names = _CT_WINDOWS[series.kind]
    ds = Dataset()
    _base(ds, study, series, "Sandbox CT 64")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500"
    ds.ReconstructionDiameter = f"{g.cols * g.spacing[1]:.1f}"
    ds.DistanceSourceToDetector = "1040"
    ds.DistanceSourceToPatient = "570"
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "160"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "500"
    ds.XRayTubeCurrent = 80 if series.kind == "ct_wholebody" else 200
    ds.Exposure = 40 if series.kind == "ct_wholebody" else 100
    ds.FilterType = "FLAT"
    ds.GeneratorPower = "24"
    ds.FocalSpots = "1.2"
    ds.ConvolutionKernel = series.params.get("kernel", "B30f")
    ds.CTDIvol = (
        4.0 if series.kind == "ct_wholebody" else (45.0 if series.kind == "ct_head" else 9.5)
    )
    phantom_type = (
        code_item("113690", "DCM", "IEC Head Dosimetry Phantom")
        if series.kind == "ct_head"
        else code_item("113691", "DCM", "IEC Body Dosimetry Phantom")
    )
    ds.CTDIPhantomTypeCodeSequence = DicomSequence([phantom_type])
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = [str(c) for c in centers]
    ds.WindowWidth = [str(w) for w in widths]
    ds.WindowCenterWidthExplanation = names
    if contrast:
        ds.ContrastBolusAgent = "Iohexol 350 mg/ml"
        ds.ContrastBolusRoute = "IV"
        ds.ContrastBolusVolume = "90"
    sop_common(ds, study, "1.2.840.10008.5.1.4.1.1.2", series.instance_uid(0))
    return _write_stack(ds, root, study, series, g, stored, bits_stored=12)


def _write_stack(
    template: Dataset,
    root: Path,
    study: StudyPlan,
    series: SeriesPlan,
    g: Geometry,
    stored: npt.NDArray[np.uint16],
    *,
    bits_stored: int,
    per_slice: Callable[[Dataset, int], None] | None = None,
) -> int:
    """Write one single-frame instance per slice; returns bytes written."""
    writer = SeriesWriter(template, series.transfer_syntax)
    image_type = list(template.ImageType)
    total = 0
    for k in range(g.n):
        ds = Dataset()
        general_image(ds, study, series, k, image_type)
        image_plane(ds, g.position(k), g.orientation, g.spacing, g.thickness)
        ds.SOPInstanceUID = series.instance_uid(k)
        if per_slice is not None:
            per_slice(ds, k)
        set_pixels(ds, stored[k], series.transfer_syntax, bits_stored=bits_stored)
        total += writer.write(ds, instance_path(root, study, series, k))
    return total


# ------------------------------------------------------------------------------------ MR

_MR_SEQUENCES: dict[str, tuple[MRSequence, str, str, str]] = {
    # sequence, ScanningSequence, SequenceVariant, SequenceName
    "T1": (MRSequence("T1 SE", tr=550, te=12), "SE", "SP", "*se2d1"),
    "T2": (MRSequence("T2 TSE", tr=4200, te=98), "SE", "SK\\SP", "*tse2d1_15"),
    "FLAIR": (MRSequence("FLAIR", tr=9000, te=120, ti=2500), "SE\\IR", "SK\\SP\\MP", "*tir2d1_16"),
    "DWI": (MRSequence("DWI", tr=5200, te=90, b_value=1000), "EP", "SK\\SP", "*ep_b1000t"),
    "PDFS": (MRSequence("PD FS", tr=3200, te=32, fat_sat=True), "SE", "SK\\SP", "*tse2d1_7"),
}


def generate_mr(study: StudyPlan, series: SeriesPlan, root: Path) -> int:
    """Write an MR Image series (PS3.3 A.4); returns bytes written."""
    g = geometry_of(series)
    seq, scanning, variant, name = _MR_SEQUENCES[series.params["sequence"]]
    labels = sample_labels(phantom_for(study, series), g)
    signal = mr_signal(labels, seq, series_rng(series))
    scale = 3000.0 / max(float(np.percentile(signal, 99.7)), 1e-6)
    stored = to_uint(signal * scale, 12)
    lo, hi = np.percentile(stored, [1, 99.5])
    ds = Dataset()
    _base(ds, study, series, "Sandbox MR 1.5T")
    ds.ImageType = (
        ["DERIVED", "PRIMARY", "OTHER", "TRACEW"]
        if seq.b_value
        else ["ORIGINAL", "PRIMARY", "OTHER"]
    )
    ds.ScanningSequence = scanning.split("\\")
    ds.SequenceVariant = variant.split("\\")
    ds.ScanOptions = ["FS"] if seq.fat_sat else ""
    ds.MRAcquisitionType = "2D"
    ds.SequenceName = name
    ds.AngioFlag = "N"
    ds.RepetitionTime = f"{seq.tr:g}"
    ds.EchoTime = f"{seq.te:g}"
    if seq.ti:
        ds.InversionTime = f"{seq.ti:g}"
    ds.EchoTrainLength = 1 if scanning == "EP" else (15 if "tse" in name or "tir" in name else 1)
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = "63.68"
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.MagneticFieldStrength = "1.5"
    ds.SpacingBetweenSlices = f"{g.step:g}"
    ds.NumberOfPhaseEncodingSteps = g.rows
    ds.PercentSampling = "100"
    ds.PercentPhaseFieldOfView = "100"
    ds.PixelBandwidth = "200"
    ds.ReceiveCoilName = "Head 20" if series.kind == "mr_brain" else "Knee 15"
    ds.TransmitCoilName = "Body"
    ds.AcquisitionMatrix = [0, g.cols, g.rows, 0]
    ds.InPlanePhaseEncodingDirection = "ROW"
    ds.FlipAngle = "90"
    ds.SAR = "0.8"
    ds.dBdt = "0"
    ds.WindowCenter = f"{(lo + hi) / 2:.0f}"
    ds.WindowWidth = f"{max(hi - lo, 1):.0f}"
    sop_common(ds, study, "1.2.840.10008.5.1.4.1.1.4", series.instance_uid(0))
    return _write_stack(ds, root, study, series, g, stored, bits_stored=12)


# ------------------------------------------------------------------------------------ PT

F18_HALF_LIFE = 6586.2  # seconds


def generate_pt(study: StudyPlan, series: SeriesPlan, root: Path) -> int:
    """Write a PET Image series (PS3.3 A.21), FDG uptake in Bq/ml; returns bytes written."""
    g = geometry_of(series)
    labels = sample_labels(phantom_for(study, series), g)
    pixel_mm = g.spacing[0]
    suv = pet_activity(labels, series_rng(series), fwhm_pixels=6.5 / pixel_mm)
    dose = 3.2e8  # Bq injected
    weight_g = study.patient.weight_kg * 1000.0
    uptake_s = 3600.0
    decayed = dose * 0.5 ** (uptake_s / F18_HALF_LIFE)
    activity = suv * decayed / weight_g  # Bq/ml at scan start
    start = _at(study, 600)
    injection = _at(study, 600 - int(uptake_s))
    frame_ms = 120000
    ds = Dataset()
    _base(ds, study, series, "Sandbox PET/CT")
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = tm(start)
    ds.Units = "BQML"
    ds.CountsSource = "EMISSION"
    ds.SeriesType = ["WHOLE BODY", "IMAGE"]
    ds.NumberOfSlices = g.n
    ds.CorrectedImage = ["DECY", "ATTN", "SCAT", "DTIM", "RAN", "NORM"]
    ds.RandomsCorrectionMethod = "DLYD"
    ds.AttenuationCorrectionMethod = "CT"
    ds.ScatterCorrectionMethod = "Model-based"
    ds.DecayCorrection = "START"
    ds.ReconstructionMethod = "OSEM 3i21s"
    ds.DecayFactor = "1"
    ds.DeadTimeFactor = "1"
    ds.CollimatorType = "NONE"
    ds.AxialAcceptance = "54"
    ds.ActualFrameDuration = frame_ms
    ds.PatientGantryRelationshipCodeSequence = DicomSequence(
        [code_item("102540008", "SCT", "headfirst")]
    )
    ds.PatientOrientationCodeSequence = DicomSequence([_orientation()])
    rp = Dataset()
    rp.Radiopharmaceutical = "Fluorodeoxyglucose"
    rp.RadiopharmaceuticalStartTime = tm(injection)
    rp.RadionuclideTotalDose = f"{dose:.0f}"
    rp.RadionuclideHalfLife = f"{F18_HALF_LIFE}"
    rp.RadionuclidePositronFraction = "0.9673"
    rp.RadionuclideCodeSequence = DicomSequence([code_item("77004003", "SCT", "^18^Fluorine")])
    rp.RadiopharmaceuticalCodeSequence = DicomSequence(
        [code_item("35321007", "SCT", "Fluorodeoxyglucose F^18^")]
    )
    ds.RadiopharmaceuticalInformationSequence = DicomSequence([rp])
    ds.RescaleIntercept = "0"
    ds.WindowCenter = f"{decayed / weight_g * 2.5:.0f}"
    ds.WindowWidth = f"{decayed / weight_g * 5.0:.0f}"
    sop_common(ds, study, "1.2.840.10008.5.1.4.1.1.128", series.instance_uid(0))
    peaks = activity.reshape(g.n, -1).max(axis=1)
    # the slope is rounded to what the DS value holds, so stored × slope is exact
    slopes = np.array([float(f"{v:.6g}") for v in np.where(peaks > 0, peaks, 1.0) / 32767.0])
    stored = to_uint(activity / slopes[:, None, None], 15)

    def per_slice(inst: Dataset, k: int) -> None:
        inst.AcquisitionTime = tm(start)
        inst.ImageIndex = k + 1
        inst.FrameReferenceTime = str((k // 20) * frame_ms)
        inst.RescaleSlope = f"{slopes[k]:.6g}"

    return _write_stack(ds, root, study, series, g, stored, bits_stored=16, per_slice=per_slice)


def _orientation() -> Dataset:
    item = code_item("102538003", "SCT", "recumbent")
    item.PatientOrientationModifierCodeSequence = DicomSequence(
        [code_item("40199007", "SCT", "supine")]
    )
    return item


def _at(study: StudyPlan, seconds: int) -> dt.datetime:
    return dt.datetime.combine(study.date, study.time) + dt.timedelta(seconds=seconds)
