"""Projection radiographs: CR Image (PS3.3 A.2) and Digital X-Ray For Presentation (A.26) IODs.

The pixels are line integrals of attenuation through the patient's phantom
(:meth:`~imagingkit.sandbox.phantoms.Phantom.projection`), then processed as a detector
workstation would: logarithmic contrast, unsharp masking (edge enhancement), quantum noise,
12-bit storage. Every fourth chest radiograph is stored ``MONOCHROME1`` (bright = low
signal), as many CR plates are, so viewers must honour the photometric interpretation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from imagingkit.sandbox.cohort import SeriesPlan, StudyPlan
from imagingkit.sandbox.phantoms import blur, resize_bilinear
from imagingkit.sandbox.synthetic_anatomy import hand, knee
from imagingkit.sandbox.synthetic_images import instance_path, phantom_for, series_rng
from imagingkit.sandbox.synthetic_modules import (
    code_item,
    equipment,
    general_image,
    general_series,
    patient_and_study,
    sop_common,
    write_part10,
)
from imagingkit.sandbox.synthetic_pixels import set_pixels, to_uint

__all__ = ["generate_cr", "generate_dx", "radiograph"]


def radiograph(
    line_integral: npt.NDArray[np.floating[Any]], rng: np.random.Generator, *, detail_px: float
) -> npt.NDArray[np.uint16]:
    """Turn attenuation line integrals into a processed 12-bit radiograph (bone bright).

    *detail_px* is the unsharp-mask radius in pixels.
    """
    sample = line_integral[::4, ::4]
    body = sample > 1.0
    lo, hi = np.percentile(sample[body], [1.0, 99.7]) if body.any() else (0.0, 1.0)
    v = np.clip((line_integral - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32) ** 0.85
    # unsharp masking; the wide low-pass is computed at a quarter of the resolution
    low = resize_bilinear(blur(v[::4, ::4], detail_px / 4), v.shape)
    v = 0.06 + 0.9 * np.clip(v + 0.9 * (v - low), 0.0, 1.0)
    noise = blur(rng.standard_normal(v.shape, dtype=np.float32), 0.6)
    v += (0.004 + 0.012 * np.sqrt(1.0 - v)) * noise
    return to_uint(v * 4095.0, 12)


# ------------------------------------------------------------------------------------ CR


def generate_cr(study: StudyPlan, series: SeriesPlan, root: Path) -> int:
    """Write a chest CR image (PA or left lateral); returns bytes written."""
    p = series.params
    n, pixel = int(p["matrix"]), float(p["pixel"])
    lateral = p["view"] == "LL"
    phantom = phantom_for(study, series)
    # Project at up to 512 x 512 and interpolate: the detector's own blur is about that.
    m = min(n, 512)
    step = pixel * (n - 1) / (m - 1)
    us = (np.arange(m) - (m - 1) / 2) * step + (20.0 if lateral else 0.0)
    zs = 120.0 - (m - 1) * step + np.arange(m) * step  # ascending; the top row is the neck
    depth = (-220.0, 220.0) if lateral else (-170.0, 170.0)
    integral = phantom.projection(us, zs, axis=0 if lateral else 1, depth=depth, coarse_step=2.5)
    integral = resize_bilinear(integral[::-1], (n, n))
    image = radiograph(integral, series_rng(series), detail_px=n / 60)
    monochrome1 = int(series.uid[-2:]) % 4 == 0
    if monochrome1:
        image = (4095 - image).astype(np.uint16)
    ds = Dataset()
    patient_and_study(ds, study)
    general_series(ds, study, series, position=False)
    ds.ViewPosition = "LL" if lateral else "PA"
    equipment(ds, "Sandbox CR Reader")
    general_image(ds, study, series, 0, ["ORIGINAL", "PRIMARY"])
    # columns toward the patient's left (PA) or posterior (lateral); rows toward the feet
    ds.PatientOrientation = ["P", "F"] if lateral else ["L", "F"]
    ds.KVP = "125" if lateral else "110"
    ds.PlateID = f"PL{int(series.uid[-6:]) % 9000 + 1000}"
    ds.DistanceSourceToDetector = "1800"
    ds.ExposureTime = "12" if lateral else "6"
    ds.XRayTubeCurrent = 320
    ds.Exposure = 4 if lateral else 2
    ds.ImagerPixelSpacing = [f"{pixel:.4f}", f"{pixel:.4f}"]
    ds.PixelSpacing = [f"{pixel:.4f}", f"{pixel:.4f}"]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "Imager pixel spacing at the detector"
    ds.WindowCenter = "2048"
    ds.WindowWidth = "4096"
    ds.PresentationLUTShape = "INVERSE" if monochrome1 else "IDENTITY"
    sop_common(ds, study, "1.2.840.10008.5.1.4.1.1.1", series.instance_uid(0))
    set_pixels(
        ds,
        image,
        series.transfer_syntax,
        bits_stored=12,
        photometric="MONOCHROME1" if monochrome1 else "MONOCHROME2",
    )
    return write_part10(ds, instance_path(root, study, series, 0), series.transfer_syntax)


# ------------------------------------------------------------------------------------ DX


def generate_dx(study: StudyPlan, series: SeriesPlan, root: Path) -> int:
    """Write a wrist or knee radiograph (DX For Presentation); returns bytes written."""
    p = series.params
    f = study.findings
    pixel = float(p["pixel"])
    lateral = p["view"] == "LAT"
    side = -1 if series.laterality == "R" else 1
    wrist = series.kind == "dx_wrist"
    if wrist:
        phantom = hand(side=side, fracture=bool(f.get("fracture")),
                       healing=float(f.get("healing", 0.0)))  # fmt: skip
        u0, u1 = (-90.0, 90.0) if lateral else ((-105.0, 75.0) if side < 0 else (-75.0, 105.0))
        z0, z1 = -115.0, 140.0
        depth = (-90.0, 90.0) if lateral else (-40.0, 40.0)
        region = code_item("74670003", "SCT", "Wrist joint")
        # columns run to the patient's left (or anterior); rows towards the elbow
        orientation = ["A", "H"] if lateral else ["L", "H"]
        kvp = "55"
    else:
        phantom = knee(side=side, tear=bool(f.get("tear")), effusion=float(f.get("effusion", 1.0)))
        u0, u1 = -85.0, 85.0
        z0, z1 = -135.0, 135.0
        depth = (-80.0, 80.0)
        region = code_item("72696002", "SCT", "Knee")
        orientation = ["P", "F"] if lateral else ["L", "F"]
        kvp = "65"
    cols = round((u1 - u0) / pixel)
    rows = round((z1 - z0) / pixel)
    us = u0 + (np.arange(cols) + 0.5) * pixel
    zs = z0 + (np.arange(rows) + 0.5) * pixel
    integral = phantom.projection(us, zs, axis=0 if lateral else 1, depth=depth, coarse_step=1.0)
    image = radiograph(integral[::-1], series_rng(series), detail_px=4.0 / pixel)
    ds = Dataset()
    patient_and_study(ds, study)
    general_series(ds, study, series, position=False, laterality=False)
    ds.PresentationIntentType = "FOR PRESENTATION"
    equipment(ds, "Sandbox DR Detector")
    general_image(ds, study, series, 0, ["ORIGINAL", "PRIMARY"])
    ds.PatientOrientation = orientation
    ds.ImageLaterality = series.laterality or "U"
    ds.AnatomicRegionSequence = DicomSequence([region])
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.CalibrationImage = "NO"
    ds.WindowCenter = "2048"
    ds.WindowWidth = "4096"
    if lateral:
        ds.ViewPosition = "RL" if wrist else "LL"
        view = code_item("399067008", "SCT", "lateral")
    elif wrist:
        ds.ViewPosition = "PA"
        view = code_item("272479007", "SCT", "postero-anterior")
    else:
        ds.ViewPosition = "AP"
        view = code_item("399348003", "SCT", "antero-posterior")
    ds.ViewCodeSequence = DicomSequence([view])
    ds.PositionerType = "NONE"
    ds.DetectorType = "SCINTILLATOR"
    ds.DetectorConfiguration = "AREA"
    ds.DetectorID = "IKDR1"
    ds.ImagerPixelSpacing = [f"{pixel:.4f}", f"{pixel:.4f}"]
    ds.PixelSpacing = [f"{pixel:.4f}", f"{pixel:.4f}"]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "Imager pixel spacing at the detector"
    ds.DistanceSourceToDetector = "1100"
    ds.KVP = kvp
    ds.ExposureTime = "20"
    ds.XRayTubeCurrent = 100
    ds.Exposure = 2
    ds.AcquisitionContextSequence = DicomSequence([])
    sop_common(ds, study, "1.2.840.10008.5.1.4.1.1.1.1", series.instance_uid(0))
    set_pixels(ds, image, series.transfer_syntax, bits_stored=12)
    return write_part10(ds, instance_path(root, study, series, 0), series.transfer_syntax)
