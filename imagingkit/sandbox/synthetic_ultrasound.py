"""Ultrasound: US Multi-frame Image (PS3.3 A.7) cine loops and US Image (A.6) stills.

B-mode frames are simulated from a phantom plane: per-tissue backscatter times Rayleigh
speckle, specular echoes at tissue interfaces, depth attenuation with time-gain
compensation (so fluid shows posterior enhancement and bone or gas casts a shadow), log
compression to 8 bits and a sector mask for the curved abdominal probe. Breathing or probe
motion moves the anatomy between frames and the speckle partly decorrelates. The liver
loops are colour-Doppler RGB (flow in red and blue inside a colour box, pulsing with the
heart rate); the breast loops are grey-scale from a linear probe.

The US Region Calibration module (C.8.5.5) records the physical size of a pixel.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from imagingkit.sandbox.cohort import SeriesPlan, StudyPlan, TransferSyntax
from imagingkit.sandbox.phantoms import (
    Box,
    Capsule,
    Ellipsoid,
    Phantom,
    Primitive,
    Tissue,
    blur,
    echogenicity,
)
from imagingkit.sandbox.synthetic_images import habitus_of, instance_path, phantom_for, series_rng
from imagingkit.sandbox.synthetic_modules import (
    equipment,
    general_image,
    general_series,
    patient_and_study,
    sop_common,
    write_part10,
)
from imagingkit.sandbox.synthetic_pixels import set_pixels

__all__ = ["generate_us_cine", "generate_us_still", "ultrasound_frames"]

T = Tissue

# Amplitude attenuation per mm for each tissue (the rest use soft tissue's).
_ATTENUATION = {
    T.FAT: 0.013,
    T.FLUID: 0.0008,
    T.URINE: 0.0008,
    T.CSF: 0.0008,
    T.BLOOD: 0.002,
    T.CORTICAL_BONE: 0.9,
    T.CANCELLOUS_BONE: 0.3,
    T.AIR: 2.0,
    T.LUNG: 2.0,
    T.AIRWAY: 2.0,
    T.BOWEL_GAS: 2.0,
    T.LIVER_LESION: 0.006,
}
_SOFT = 0.010
_STRONG = {T.CORTICAL_BONE, T.LUNG, T.BOWEL_GAS, T.AIR}


def _breast_phantom(rng: np.random.Generator, radius: float) -> Phantom:
    """Breast under a linear probe: x lateral, y depth from the skin (mm), z out of plane."""
    big = 200.0
    prims: list[Primitive] = [
        Box(T.SKIN, lo=(-big, 0.0, -big), hi=(big, 1.8, big)),
        Box(T.FAT, lo=(-big, 1.8, -big), hi=(big, 9.0, big)),
        Box(T.GLAND, lo=(-big, 9.0, -big), hi=(big, 27.0, big)),
        Box(T.FAT, lo=(-big, 27.0, -big), hi=(big, 32.0, big)),
        Box(T.MUSCLE, lo=(-big, 32.0, -big), hi=(big, 41.0, big)),
        Box(T.LUNG, lo=(-big, 46.0, -big), hi=(big, big, big)),
    ]
    for _ in range(14):
        cx, cy = rng.uniform(-45, 45), rng.uniform(8, 28)
        semi = (rng.uniform(3, 8), rng.uniform(1.5, 4), 6.0)
        prims.append(Ellipsoid(T.FAT if cy > 18 else T.GLAND, center=(cx, cy, 0.0), semi=semi))
    for _ in range(6):
        x0 = rng.uniform(-45, 45)
        prims.append(
            Capsule(
                T.FIBROUS,
                p0=(x0, 2.5, 0.0),
                p1=(x0 + rng.uniform(-12, 12), 10.0, 0.0),
                radius=0.35,
                within=(T.FAT,),
            )
        )
    for x in (-22.0, 14.0):
        prims.append(Ellipsoid(T.CORTICAL_BONE, center=(x, 43.5, 0.0), semi=(9.0, 3.5, 9.0)))
    cx = rng.uniform(-12, 12)
    prims.append(
        Ellipsoid(
            T.NODULE,
            center=(cx, 18.0, 0.0),
            semi=(radius * 1.3, radius * 0.8, radius),
            within=(T.GLAND, T.FAT, T.FIBROUS),
        )
    )
    return Phantom(tuple(prims))


def ultrasound_frames(
    study: StudyPlan, series: SeriesPlan, frames: int, *, view: int = 0
) -> npt.NDArray[np.uint8]:
    """B-mode frames ``(frames, rows, cols)`` or, for colour Doppler, ``(frames, rows, cols, 3)``.

    *view* shifts the probe for successive still images.
    """
    rows, cols = series.params["shape"]
    scene = series.params["scene"]
    colour = bool(series.params.get("color"))
    rng = series_rng(series, f"view{view}")
    pad = 12
    if scene == "breast":
        depth = 45.0
        px = depth / rows
        f = study.findings
        phantom = _breast_phantom(
            np.random.default_rng(study.patient.anatomy_seed), float(f.get("lesion_radius", 8.0))
        )
        x0, y0, z0 = -cols / 2 * px + view * 4.0, 0.0, 0.0
        sector = np.ones((rows, cols), dtype=bool)
    else:
        depth = 160.0
        px = depth / rows
        phantom = phantom_for(study, series)
        lesion = study.findings.get("liver_lesion")
        z0 = float(lesion[0][2]) if lesion else -265.0
        xp = float(lesion[0][0]) if lesion else -60.0
        xp += view * 12.0
        h = habitus_of(study.patient)
        a_out, b_out = 170.0 * h.width, 118.0 * h.depth
        # the probe presses the curved skin flat: start a centimetre under the surface
        y0 = 5 * h.depth - b_out * math.sqrt(max(0.0, 1 - (xp / a_out) ** 2)) + 10.0
        x0 = xp - cols / 2 * px
        sector = _sector_mask(rows, cols, px, depth)
    xs = x0 + (np.arange(cols + 2 * pad) - pad) * px
    ys = y0 + (np.arange(rows + 2 * pad) - pad) * px
    labels = phantom.labels(xs, ys, np.array([z0]))[0]
    echo = echogenicity(labels).astype(np.float32)
    alpha = np.full(labels.shape, _SOFT, dtype=np.float32)
    for tissue, value in _ATTENUATION.items():
        alpha[labels == int(tissue)] = value
    change = np.zeros(labels.shape, dtype=np.float32)
    change[1:] = labels[1:] != labels[:-1]
    strong = np.isin(labels, [int(t) for t in _STRONG])
    change[1:] *= np.where(strong[1:] | strong[:-1], 1.6, 0.45)
    if scene != "breast":
        # coupling gel, not air, between the curved probe face and the skin
        outside = labels == int(T.AIR)
        alpha[outside] = 0.0
        change[outside] = 0.0
    speckle_base = _speckle(rng, labels.shape)
    # speckle decorrelates from frame to frame: blend in one of a few fresh fields
    fresh = [_speckle(rng, (rows, cols)) for _ in range(min(frames, 4))]
    blood = labels == int(T.BLOOD)
    out = np.zeros((frames, rows, cols, 3) if colour else (frames, rows, cols), dtype=np.uint8)
    for i in range(frames):
        phase = 2 * math.pi * i / max(frames, 1)
        dy = round((5 if scene == "liver" else 1) * math.sin(phase))
        dx = round(2 * math.sin(phase * 0.5))
        win = (slice(pad + dy, pad + dy + rows), slice(pad + dx, pad + dx + cols))
        speckle = 0.8 * speckle_base[win] + 0.2 * fresh[i % len(fresh)]
        # beams run down the columns inside the field of view; the gain curve (TGC)
        # makes up for the attenuation of average soft tissue, not of fluid or bone
        att = np.exp(-np.cumsum(np.where(sector, alpha[win] - _SOFT, 0.0), axis=0) * px)
        signal = (echo[win] * speckle + blur(change[win], 0.7)) * att
        bmode = np.clip(np.log1p(10.0 * signal) / math.log1p(10.0 * 2.5), 0.0, 1.0)
        grey = np.where(sector, np.rint(bmode * 255.0), 0).astype(np.uint8)
        if not colour:
            out[i] = grey
            continue
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
        box = np.zeros((rows, cols), dtype=bool)
        box[rows // 4 : rows * 3 // 4, cols * 3 // 10 : cols * 7 // 10] = True
        flow = blood[win] & box & sector
        velocity = 0.55 + 0.45 * math.sin(2 * math.pi * i * 1.2 * 0.05) ** 2
        toward = (np.arange(cols)[None, :] < cols // 2) & flow
        away = flow & ~toward
        rgb[toward] = (np.array([230, 40, 30]) * velocity).astype(np.uint8)
        rgb[away] = (np.array([30, 70, 230]) * velocity).astype(np.uint8)
        out[i] = rgb
    return out


def _speckle(rng: np.random.Generator, shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    """Rayleigh speckle with the lateral blur of a focused beam, mean about 1."""
    re = blur(rng.standard_normal(shape, dtype=np.float32), (0.6, 1.5))
    im = blur(rng.standard_normal(shape, dtype=np.float32), (0.6, 1.5))
    amp = np.hypot(re, im)
    return np.asarray(amp / max(float(amp.mean()), 1e-6), dtype=np.float32)


def _sector_mask(rows: int, cols: int, px: float, depth: float) -> npt.NDArray[np.bool_]:
    """Field of view of a curved-array probe (radius 40 mm, ±35°)."""
    r0 = 40.0
    lx = (np.arange(cols) - cols / 2)[None, :] * px
    d = np.arange(rows)[:, None] * px + r0
    rho = np.hypot(lx, d)
    theta = np.abs(np.arctan2(lx, d))
    return np.asarray((theta <= math.radians(35)) & (rho >= r0) & (rho <= r0 + depth - 1))


def _us_header(ds: Dataset, study: StudyPlan, series: SeriesPlan, index: int) -> None:
    p = series.params
    rows, cols = p["shape"]
    depth = 45.0 if p["scene"] == "breast" else 160.0
    px_cm = depth / rows / 10.0
    patient_and_study(ds, study)
    general_series(ds, study, series, position=False)
    equipment(ds, "Sandbox US", station="SANDBOXUS")
    general_image(
        ds,
        study,
        series,
        index,
        ["ORIGINAL", "PRIMARY", "ABDOMINAL" if p["scene"] == "liver" else "SMALL PARTS"],
        lossy=series.transfer_syntax == TransferSyntax.JPEG_BASELINE,
    )
    ds.PatientOrientation = ""
    region = Dataset()
    region.RegionSpatialFormat = 1
    region.RegionDataType = 1
    region.RegionFlags = 0
    region.RegionLocationMinX0 = 0
    region.RegionLocationMinY0 = 0
    region.RegionLocationMaxX1 = cols - 1
    region.RegionLocationMaxY1 = rows - 1
    region.PhysicalUnitsXDirection = 3
    region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX = px_cm
    region.PhysicalDeltaY = px_cm
    region.ReferencePixelX0 = cols // 2
    region.ReferencePixelY0 = 0
    region.TransducerFrequency = 3500 if p["scene"] == "liver" else 12000
    ds.SequenceOfUltrasoundRegions = DicomSequence([region])
    ds.TransducerType = "CURVED LINEAR" if p["scene"] == "liver" else "LINEAR"
    ds.TransducerData = ["C5-1" if p["scene"] == "liver" else "L12-5"]
    ds.ProcessingFunction = "B-MODE"
    ds.MechanicalIndex = "0.9"
    ds.BoneThermalIndex = "0.4"
    ds.SoftTissueThermalIndex = "0.5"
    ds.DepthOfScanField = int(depth)


def generate_us_cine(study: StudyPlan, series: SeriesPlan, root: Path) -> int:
    """Write one US Multi-frame Image (a cine loop); returns bytes written."""
    frames = int(series.params["frames"])
    pixels = ultrasound_frames(study, series, frames)
    colour = pixels.ndim == 4
    ds = Dataset()
    _us_header(ds, study, series, 0)
    frame_time = 50.0
    ds.FrameTime = f"{frame_time:g}"
    ds.FrameIncrementPointer = (0x0018, 0x1063)
    ds.CineRate = int(1000 / frame_time)
    ds.RecommendedDisplayFrameRate = int(1000 / frame_time)
    ds.StartTrim = 1
    ds.StopTrim = frames
    ds.ActualFrameDuration = int(frame_time)
    ds.HeartRate = 72
    ds.PreferredPlaybackSequencing = 0
    if colour:
        ds.ImageType = [*ds.ImageType, "0011"]
    else:
        ds.ImageType = [*ds.ImageType, "0001"]
    sop_common(ds, study, "1.2.840.10008.5.1.4.1.1.3.1", series.instance_uid(0))
    set_pixels(
        ds,
        pixels,
        series.transfer_syntax,
        photometric="RGB" if colour else "MONOCHROME2",
        multiframe=True,
    )
    return write_part10(ds, instance_path(root, study, series, 0), series.transfer_syntax)


def generate_us_still(study: StudyPlan, series: SeriesPlan, root: Path) -> int:
    """Write single-frame US Images from a few probe positions; returns bytes written."""
    total = 0
    for k in range(series.n_instances):
        pixels = ultrasound_frames(study, series, 1, view=k - series.n_instances // 2)[0]
        ds = Dataset()
        _us_header(ds, study, series, k)
        ds.ImageType = [*ds.ImageType, "0001"]
        sop_common(ds, study, "1.2.840.10008.5.1.4.1.1.6.1", series.instance_uid(k))
        set_pixels(ds, pixels, series.transfer_syntax)
        total += write_part10(ds, instance_path(root, study, series, k), series.transfer_syntax)
    return total
