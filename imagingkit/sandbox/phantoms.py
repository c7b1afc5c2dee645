"""Analytic anatomical phantoms and the pixel generators that image them.

A :class:`Phantom` is an ordered list of solid primitives (ellipsoids, elliptic cylinders,
capsules, boxes) placed in the DICOM patient coordinate system (LPS, millimetres: +x toward
the patient's left, +y posterior, +z head; PS3.3 C.7.6.2.1.1). Each primitive fills space
with one :class:`Tissue`, optionally only where an earlier primitive put one of the tissues
it may replace. The same phantom is

* sampled on a voxel grid (:meth:`Phantom.labels`) to make CT, MR and PET slices whose
  geometry is exactly what the DICOM Image Plane attributes say, and
* projected (:meth:`Phantom.projection`) to make radiographs: large organs by summing a
  coarse label volume, small or thin structures (bones, vessels, airways) by analytic chord
  lengths at full detector resolution.

Tissue properties (Hounsfield units, proton density, T1, T2, ADC, FDG uptake, echogenicity)
are textbook approximations; the renderers turn labels into CT numbers, MR signal (spin-echo
and inversion-recovery equations), PET activity and ultrasound B-mode speckle. Everything is
vectorised numpy and deterministic for a given :class:`numpy.random.Generator`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "TISSUES",
    "Box",
    "Capsule",
    "Cylinder",
    "Ellipsoid",
    "MRSequence",
    "Phantom",
    "Primitive",
    "Tissue",
    "TissueProperties",
    "Tube",
    "blur",
    "ct_hounsfield",
    "echogenicity",
    "mr_signal",
    "pet_activity",
    "resize_bilinear",
]

FloatArray = npt.NDArray[np.floating[Any]]
Vec3 = tuple[float, float, float]


class Tissue(IntEnum):
    """Tissue classes a phantom is made of; the value is the label stored in volumes."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    LUNG = 3
    LUNG_VESSEL = 4
    AIRWAY = 5
    BLOOD = 6
    CORTICAL_BONE = 7
    CANCELLOUS_BONE = 8
    CSF = 9
    LIVER = 10
    SPLEEN = 11
    KIDNEY = 12
    BOWEL_GAS = 13
    BOWEL = 14
    NODULE = 15
    LIVER_LESION = 16
    GREY_MATTER = 17
    WHITE_MATTER = 18
    INFARCT = 19
    CARTILAGE = 20
    FIBROUS = 21
    FLUID = 22
    URINE = 23
    DISC = 24
    CONSOLIDATION = 25
    TABLE = 26
    SKIN = 27
    GLAND = 28


@dataclass(frozen=True)
class TissueProperties:
    """Physical properties of a tissue, as used by the renderers.

    Attributes
    ----------
    hu : float
        CT number without contrast (Hounsfield units).
    hu_contrast : float
        CT number in the portal-venous phase after iodinated contrast.
    pd, t1, t2 : float
        Relative proton density and relaxation times in ms (about 1.5 T).
    adc : float
        Apparent diffusion coefficient, 10⁻³ mm²/s.
    suv : float
        Typical FDG standardised uptake value.
    echo : float
        Ultrasound backscatter, 0 (anechoic) to 1 (bright).
    """

    hu: float
    hu_contrast: float
    pd: float
    t1: float
    t2: float
    adc: float
    suv: float
    echo: float


def _tp(
    hu: float,
    pd: float,
    t1: float,
    t2: float,
    adc: float,
    suv: float,
    echo: float,
    hu_contrast: float | None = None,
) -> TissueProperties:
    return TissueProperties(
        hu, hu if hu_contrast is None else hu_contrast, pd, t1, t2, adc, suv, echo
    )


#: Property table indexed by :class:`Tissue` value.
TISSUES: dict[Tissue, TissueProperties] = {
    Tissue.AIR: _tp(-1000, 0.0, 1, 1, 0.0, 0.0, 0.0),
    Tissue.FAT: _tp(-100, 0.9, 330, 110, 0.05, 0.35, 0.65),
    Tissue.MUSCLE: _tp(45, 0.75, 1100, 45, 1.5, 0.8, 0.4, 60),
    Tissue.LUNG: _tp(-860, 0.08, 1200, 30, 0.0, 0.35, 0.0),
    Tissue.LUNG_VESSEL: _tp(40, 0.8, 1500, 150, 1.0, 1.8, 0.1, 170),
    Tissue.AIRWAY: _tp(-990, 0.0, 1, 1, 0.0, 0.0, 0.0),
    Tissue.BLOOD: _tp(42, 0.85, 1500, 180, 1.0, 1.8, 0.08, 170),
    Tissue.CORTICAL_BONE: _tp(1100, 0.03, 1000, 2, 0.0, 0.5, 1.0),
    Tissue.CANCELLOUS_BONE: _tp(260, 0.8, 500, 60, 0.3, 1.2, 0.9),
    Tissue.CSF: _tp(6, 1.0, 4000, 2000, 3.0, 0.1, 0.02),
    Tissue.LIVER: _tp(58, 0.75, 700, 40, 1.2, 2.3, 0.5, 115),
    Tissue.SPLEEN: _tp(48, 0.8, 1200, 60, 0.9, 2.0, 0.45, 120),
    Tissue.KIDNEY: _tp(32, 0.85, 1100, 80, 2.0, 2.8, 0.4, 170),
    Tissue.BOWEL_GAS: _tp(-950, 0.0, 1, 1, 0.0, 0.0, 1.0),
    Tissue.BOWEL: _tp(22, 0.9, 1800, 150, 2.0, 1.6, 0.35, 40),
    Tissue.NODULE: _tp(35, 0.8, 1200, 90, 0.9, 7.0, 0.12, 70),
    Tissue.LIVER_LESION: _tp(25, 0.9, 1400, 110, 1.6, 5.0, 0.15, 45),
    Tissue.GREY_MATTER: _tp(40, 0.82, 1300, 100, 0.8, 9.0, 0.4),
    Tissue.WHITE_MATTER: _tp(27, 0.7, 800, 75, 0.7, 4.0, 0.4),
    Tissue.INFARCT: _tp(16, 0.88, 1700, 200, 0.35, 1.0, 0.4),
    Tissue.CARTILAGE: _tp(100, 0.85, 1100, 38, 1.3, 0.5, 0.1),
    Tissue.FIBROUS: _tp(90, 0.12, 900, 8, 0.8, 0.4, 0.8),
    Tissue.FLUID: _tp(5, 1.0, 3500, 1500, 3.0, 0.1, 0.0),
    Tissue.URINE: _tp(8, 1.0, 3500, 1500, 3.0, 25.0, 0.0),
    Tissue.DISC: _tp(85, 0.8, 1100, 110, 1.5, 0.6, 0.5),
    Tissue.CONSOLIDATION: _tp(25, 0.85, 1300, 100, 1.2, 3.0, 0.5, 60),
    Tissue.TABLE: _tp(-250, 0.0, 1, 1, 0.0, 0.0, 0.0),
    Tissue.SKIN: _tp(50, 0.8, 900, 50, 1.0, 0.8, 0.75),
    Tissue.GLAND: _tp(35, 0.85, 1000, 60, 1.6, 1.2, 0.55),
}

_N_TISSUES = max(int(t) for t in Tissue) + 1


def _table(field: str) -> FloatArray:
    """Return one property of every tissue as a lookup array indexed by label."""
    out = np.zeros(_N_TISSUES, dtype=np.float64)
    for tissue, props in TISSUES.items():
        out[int(tissue)] = getattr(props, field)
    return out


# ---------------------------------------------------------------------------- primitives


@dataclass(frozen=True)
class Primitive:
    """Base of the solid shapes.

    Attributes
    ----------
    tissue : Tissue
        What the shape is made of.
    within : tuple of Tissue
        If not empty, the shape only replaces these tissues (e.g. a vessel only inside lung).
    fine : bool
        Small or thin structure: radiographs project it analytically at full resolution.
    displaces : Tissue, optional
        What the shape replaces in a projection; defaults to ``within[0]`` or air.
    """

    tissue: Tissue
    within: tuple[Tissue, ...] = ()
    fine: bool = False
    displaces: Tissue | None = None

    def bbox(self) -> tuple[Vec3, Vec3]:
        """Axis-aligned bounding box ``(lo, hi)`` in mm."""
        raise NotImplementedError

    def inside(self, x: FloatArray, y: FloatArray, z: FloatArray) -> npt.NDArray[np.bool_]:
        """Membership of broadcastable coordinate arrays."""
        raise NotImplementedError

    def chord(self, u: FloatArray, v: FloatArray, axis: int) -> FloatArray:
        """Length (mm) of the ray along *axis* (0 = x, 1 = y) through the shape.

        *u* is the other in-plane coordinate (y when axis is 0, x when axis is 1) and *v*
        is z; both broadcastable.
        """
        raise NotImplementedError

    def parts(self) -> tuple[Primitive, ...]:
        """Pieces painted one by one (a tube's segments); the shape itself by default."""
        return (self,)

    @property
    def base(self) -> Tissue:
        """The tissue this shape is assumed to displace in a projection."""
        if self.displaces is not None:
            return self.displaces
        return self.within[0] if self.within else Tissue.AIR


@dataclass(frozen=True)
class Ellipsoid(Primitive):
    """Axis-aligned ellipsoid with *center* and semi-axes *semi* (mm)."""

    center: Vec3 = (0.0, 0.0, 0.0)
    semi: Vec3 = (1.0, 1.0, 1.0)

    def bbox(self) -> tuple[Vec3, Vec3]:
        c, s = self.center, self.semi
        return (c[0] - s[0], c[1] - s[1], c[2] - s[2]), (c[0] + s[0], c[1] + s[1], c[2] + s[2])

    def inside(self, x: FloatArray, y: FloatArray, z: FloatArray) -> npt.NDArray[np.bool_]:
        c, s = self.center, self.semi
        q = ((x - c[0]) / s[0]) ** 2 + ((y - c[1]) / s[1]) ** 2 + ((z - c[2]) / s[2]) ** 2
        return np.asarray(q <= 1.0)

    def chord(self, u: FloatArray, v: FloatArray, axis: int) -> FloatArray:
        c, s = self.center, self.semi
        other = 1 - axis
        q = ((u - c[other]) / s[other]) ** 2 + ((v - c[2]) / s[2]) ** 2
        return np.asarray(2.0 * s[axis] * np.sqrt(np.clip(1.0 - q, 0.0, None)))


@dataclass(frozen=True)
class Cylinder(Primitive):
    """Elliptic cylinder along z: centre (cx, cy), semi-axes (a, b), from z0 to z1."""

    center: tuple[float, float] = (0.0, 0.0)
    semi: tuple[float, float] = (1.0, 1.0)
    z: tuple[float, float] = (0.0, 1.0)

    def bbox(self) -> tuple[Vec3, Vec3]:
        (cx, cy), (a, b), (z0, z1) = self.center, self.semi, self.z
        return (cx - a, cy - b, z0), (cx + a, cy + b, z1)

    def inside(self, x: FloatArray, y: FloatArray, z: FloatArray) -> npt.NDArray[np.bool_]:
        (cx, cy), (a, b), (z0, z1) = self.center, self.semi, self.z
        q = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2
        return np.asarray((q <= 1.0) & (z >= z0) & (z <= z1))

    def chord(self, u: FloatArray, v: FloatArray, axis: int) -> FloatArray:
        (cx, cy), (a, b), (z0, z1) = self.center, self.semi, self.z
        if axis == 1:
            length = 2.0 * b * np.sqrt(np.clip(1.0 - ((u - cx) / a) ** 2, 0.0, None))
        else:
            length = 2.0 * a * np.sqrt(np.clip(1.0 - ((u - cy) / b) ** 2, 0.0, None))
        return np.asarray(np.where((v >= z0) & (v <= z1), length, 0.0))


def _segment_dist2(
    coords: Sequence[FloatArray], p0: Sequence[float], p1: Sequence[float], caps: bool
) -> FloatArray:
    """Squared distance from points (any number of axes) to the segment p0–p1.

    Without *caps*, points whose foot falls beyond either end are infinitely far (a rod
    with flat ends).
    """
    d = [b - a for a, b in zip(p0, p1, strict=True)]
    dd = sum(v * v for v in d) or 1e-9
    t = sum((c - a) * v for c, a, v in zip(coords, p0, d, strict=True)) / dd
    tc = np.clip(t, 0.0, 1.0)
    dist2 = sum((c - a - tc * v) ** 2 for c, a, v in zip(coords, p0, d, strict=True))
    if not caps:
        dist2 = np.where((t < 0.0) | (t > 1.0), np.inf, dist2)
    return np.asarray(dist2)


def _segment_chord(
    u: FloatArray, v: FloatArray, axis: int, p0: Vec3, p1: Vec3, radius: float, caps: bool
) -> FloatArray:
    """Approximate chord along *axis* through a rod/capsule: tilt-corrected disc width."""
    other = 1 - axis
    a, b = (p0[other], p0[2]), (p1[other], p1[2])
    full = math.dist(p0, p1)
    flat = math.dist(a, b)
    # A segment tilted out of the detector plane crosses each ray on a longer path.
    stretch = 1.0 / max(flat / full, 0.35) if full > 0 else 1.0
    dist2 = _segment_dist2((u, v), a, b, caps)
    return np.asarray(2.0 * np.sqrt(np.clip(radius**2 - dist2, 0.0, None)) * stretch)


@dataclass(frozen=True)
class Capsule(Primitive):
    """Segment from *p0* to *p1* swept by a sphere of *radius* mm (bones, vessels).

    With ``caps=False`` the ends are flat (a rod), so that bone fragments can abut.
    """

    p0: Vec3 = (0.0, 0.0, 0.0)
    p1: Vec3 = (0.0, 0.0, 1.0)
    radius: float = 1.0
    caps: bool = True

    def bbox(self) -> tuple[Vec3, Vec3]:
        r = self.radius
        lo = tuple(min(a, b) - r for a, b in zip(self.p0, self.p1, strict=True))
        hi = tuple(max(a, b) + r for a, b in zip(self.p0, self.p1, strict=True))
        return (lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2])

    def inside(self, x: FloatArray, y: FloatArray, z: FloatArray) -> npt.NDArray[np.bool_]:
        return np.asarray(_segment_dist2((x, y, z), self.p0, self.p1, self.caps) <= self.radius**2)

    def chord(self, u: FloatArray, v: FloatArray, axis: int) -> FloatArray:
        return _segment_chord(u, v, axis, self.p0, self.p1, self.radius, self.caps)


@dataclass(frozen=True)
class Tube(Primitive):
    """A polyline through *points* swept by a sphere of *radius* (ribs): one smooth solid."""

    points: tuple[Vec3, ...] = ((0.0, 0.0, 0.0), (0.0, 0.0, 1.0))
    radius: float = 1.0

    def parts(self) -> tuple[Primitive, ...]:
        return tuple(
            Capsule(
                self.tissue, self.within, self.fine, self.displaces, p0=a, p1=b, radius=self.radius
            )
            for a, b in zip(self.points[:-1], self.points[1:], strict=True)
        )

    def bbox(self) -> tuple[Vec3, Vec3]:
        pts = np.asarray(self.points)
        lo, hi = pts.min(axis=0) - self.radius, pts.max(axis=0) + self.radius
        return (lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2])

    def inside(self, x: FloatArray, y: FloatArray, z: FloatArray) -> npt.NDArray[np.bool_]:
        best: FloatArray | None = None
        for a, b in zip(self.points[:-1], self.points[1:], strict=True):
            d2 = _segment_dist2((x, y, z), a, b, True)
            best = d2 if best is None else np.minimum(best, d2)
        assert best is not None
        return np.asarray(best <= self.radius**2)

    def chord(self, u: FloatArray, v: FloatArray, axis: int) -> FloatArray:
        best: FloatArray | None = None
        for a, b in zip(self.points[:-1], self.points[1:], strict=True):
            c = _segment_chord(u, v, axis, a, b, self.radius, True)
            best = c if best is None else np.maximum(best, c)
        assert best is not None
        return best


@dataclass(frozen=True)
class Box(Primitive):
    """Axis-aligned box from *lo* to *hi* (mm)."""

    lo: Vec3 = (0.0, 0.0, 0.0)
    hi: Vec3 = (1.0, 1.0, 1.0)

    def bbox(self) -> tuple[Vec3, Vec3]:
        return self.lo, self.hi

    def inside(self, x: FloatArray, y: FloatArray, z: FloatArray) -> npt.NDArray[np.bool_]:
        lo, hi = self.lo, self.hi
        return np.asarray(
            (x >= lo[0]) & (x <= hi[0]) & (y >= lo[1]) & (y <= hi[1]) & (z >= lo[2]) & (z <= hi[2])
        )

    def chord(self, u: FloatArray, v: FloatArray, axis: int) -> FloatArray:
        other = 1 - axis
        lo, hi = self.lo, self.hi
        hit = (u >= lo[other]) & (u <= hi[other]) & (v >= lo[2]) & (v <= hi[2])
        return np.asarray(np.where(hit, hi[axis] - lo[axis], 0.0))


@lru_cache(maxsize=64)
def _allowed(tissues: tuple[Tissue, ...]) -> npt.NDArray[np.bool_]:
    """Lookup array: which labels a shape confined to *tissues* may replace."""
    allowed = np.zeros(_N_TISSUES, dtype=bool)
    allowed[[int(t) for t in tissues]] = True
    return allowed


def _index_range(coords: FloatArray, lo: float, hi: float) -> slice:
    """Indices of the ascending *coords* that fall within [lo, hi]."""
    return slice(
        int(np.searchsorted(coords, lo, "left")), int(np.searchsorted(coords, hi, "right"))
    )


@dataclass(frozen=True)
class Phantom:
    """An ordered list of primitives; later ones paint over earlier ones."""

    primitives: tuple[Primitive, ...]

    def labels(self, xs: FloatArray, ys: FloatArray, zs: FloatArray) -> npt.NDArray[np.uint8]:
        """Sample tissue labels on the grid ``zs × ys × xs`` (coordinates in mm, any order).

        Returns
        -------
        numpy.ndarray
            ``uint8`` array of shape ``(len(zs), len(ys), len(xs))``.
        """
        orders = [np.argsort(a, kind="stable") for a in (zs, ys, xs)]
        vol = self._paint(xs[orders[2]], ys[orders[1]], zs[orders[0]], fine=True)
        inverse = [np.argsort(o, kind="stable") for o in orders]
        return np.ascontiguousarray(vol[np.ix_(*inverse)])

    @cached_property
    def _parts(self) -> tuple[list[Primitive], FloatArray, FloatArray, npt.NDArray[np.bool_]]:
        """Every painted piece in order, with bounding boxes as arrays and the fine flags."""
        parts = [part for whole in self.primitives for part in whole.parts()]
        boxes = np.array([part.bbox() for part in parts], dtype=np.float64).reshape(-1, 2, 3)
        fine = np.array([part.fine for part in parts], dtype=bool)
        return parts, boxes[:, 0, :], boxes[:, 1, :], fine

    def _paint(
        self, xs: FloatArray, ys: FloatArray, zs: FloatArray, *, fine: bool
    ) -> npt.NDArray[np.uint8]:
        vol = np.zeros((len(zs), len(ys), len(xs)), dtype=np.uint8)
        parts, lo, hi, is_fine = self._parts
        ranges = [
            (np.searchsorted(c, lo[:, a], "left"), np.searchsorted(c, hi[:, a], "right"))
            for a, c in enumerate((xs, ys, zs))
        ]
        hit = np.logical_and.reduce([start < stop for start, stop in ranges])
        if not fine:
            hit &= ~is_fine
        (x0, x1), (y0, y1), (z0, z1) = ranges
        for i in np.flatnonzero(hit):
            prim = parts[i]
            sx, sy, sz = slice(x0[i], x1[i]), slice(y0[i], y1[i]), slice(z0[i], z1[i])
            sub = vol[sz, sy, sx]
            mask = prim.inside(xs[None, None, sx], ys[None, sy, None], zs[sz, None, None])
            if prim.within:
                mask &= _allowed(prim.within)[sub]
            sub[mask] = int(prim.tissue)
        return vol

    def projection(
        self,
        us: FloatArray,
        zs: FloatArray,
        *,
        axis: int,
        depth: tuple[float, float],
        coarse_step: float,
    ) -> FloatArray:
        """Line integrals of linear attenuation (water = 1 per mm) along *axis*.

        Parameters
        ----------
        us, zs : numpy.ndarray
            Ascending detector coordinates: the in-plane coordinate (x for a frontal,
            y for a lateral projection) and z, in mm.
        axis : int
            Ray direction: 1 (antero-posterior) or 0 (lateral).
        depth : (float, float)
            Extent of the body along the rays, mm.
        coarse_step : float
            Voxel size (mm) of the label volume used for the large organs.

        Returns
        -------
        numpy.ndarray
            Array of shape ``(len(zs), len(us))``: the attenuation integral in
            water-equivalent millimetres.
        """
        mu = 1.0 + _table("hu") / 1000.0
        mu[int(Tissue.TABLE)] = 0.0
        cu = np.arange(us[0], us[-1] + coarse_step, coarse_step)
        cz = np.arange(zs[0], zs[-1] + coarse_step, coarse_step)
        cd = np.arange(depth[0], depth[1] + coarse_step, coarse_step)
        if axis == 1:
            vol = self._paint(cu, cd, cz, fine=False)
            coarse = mu[vol].sum(axis=1) * coarse_step
        else:
            vol = self._paint(cd, cu, cz, fine=False)
            coarse = mu[vol].sum(axis=2) * coarse_step
        total = resize_bilinear(coarse, (len(zs), len(us)))
        other = 1 - axis
        for whole in self.primitives:
            if not whole.fine:
                continue
            lo, hi = whole.bbox()
            su = _index_range(us, lo[other], hi[other])
            sz = _index_range(zs, lo[2], hi[2])
            if su.start >= su.stop or sz.start >= sz.stop:
                continue
            weight = mu[int(whole.tissue)] - mu[int(whole.base)]
            parts = whole.parts()
            if len(parts) == 1:
                total[sz, su] += weight * whole.chord(us[None, su], zs[sz, None], axis)
                continue
            # A tube's segments overlap at the joints: take the longest chord, not the sum.
            sub_us, sub_zs = us[su], zs[sz]
            chords = np.zeros((len(sub_zs), len(sub_us)))
            for prim in parts:
                plo, phi = prim.bbox()
                pu = _index_range(sub_us, plo[other], phi[other])
                pz = _index_range(sub_zs, plo[2], phi[2])
                if pu.start >= pu.stop or pz.start >= pz.stop:
                    continue
                region = chords[pz, pu]
                np.maximum(region, prim.chord(sub_us[None, pu], sub_zs[pz, None], axis), out=region)
            total[sz, su] += weight * chords
        return total


# ------------------------------------------------------------------------- image helpers


def _interpolation_matrix(n_out: int, n_in: int) -> npt.NDArray[np.float32]:
    """Weights mapping *n_in* samples to *n_out* (corner-aligned linear interpolation)."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.clip(np.floor(pos).astype(int), 0, max(n_in - 2, 0))
    frac = (pos - lo).astype(np.float32)
    weights = np.zeros((n_out, n_in), dtype=np.float32)
    rows = np.arange(n_out)
    weights[rows, lo] = 1 - frac
    weights[rows, np.minimum(lo + 1, n_in - 1)] += frac
    return weights


def resize_bilinear(img: FloatArray, shape: tuple[int, int]) -> FloatArray:
    """Resample a 2-D array to *shape* with bilinear interpolation (corner-aligned)."""
    wy = _interpolation_matrix(shape[0], img.shape[0])
    wx = _interpolation_matrix(shape[1], img.shape[1])
    return np.asarray(wy @ np.asarray(img, dtype=np.float32) @ wx.T)


def blur(
    arr: FloatArray, sigma: float | Sequence[float], axes: Iterable[int] | None = None
) -> FloatArray:
    """Separable Gaussian blur (sigma in pixels) with edge replication; pure numpy, float32."""
    axes = tuple(range(arr.ndim)) if axes is None else tuple(axes)
    sigmas = [float(sigma)] * len(axes) if isinstance(sigma, (int, float)) else list(sigma)
    out = np.asarray(arr, dtype=np.float32)
    for ax, s in zip(axes, sigmas, strict=True):
        if s <= 0:
            continue
        if s > 2.5:
            out = _box_blur(out, s, ax)
            continue
        radius = max(1, math.ceil(3 * s))
        taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / s) ** 2)
        taps /= taps.sum()
        pad = [(0, 0)] * out.ndim
        pad[ax] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        acc = np.zeros_like(out)
        n = out.shape[ax]
        index: list[slice] = [slice(None)] * out.ndim
        for i, w in enumerate(taps):
            index[ax] = slice(i, i + n)
            acc += np.float32(w) * padded[tuple(index)]
        out = acc
    return out


def _box_blur(arr: FloatArray, sigma: float, axis: int) -> FloatArray:
    """Three passes of a running mean: a Gaussian of *sigma* at constant cost per pixel."""
    half = max(1, round(math.sqrt(sigma * sigma + 0.25) - 0.5))
    width = 2 * half + 1
    out = np.asarray(arr, dtype=np.float32)
    n = out.shape[axis]
    hi: list[slice] = [slice(None)] * out.ndim
    lo: list[slice] = [slice(None)] * out.ndim
    hi[axis] = slice(width, width + n)
    lo[axis] = slice(0, n)
    for _ in range(3):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (half + 1, half)
        csum = np.cumsum(np.pad(out, pad, mode="edge"), axis=axis, dtype=np.float64)
        out = ((csum[tuple(hi)] - csum[tuple(lo)]) / width).astype(np.float32)
    return out


def ct_hounsfield(
    labels: npt.NDArray[np.uint8],
    rng: np.random.Generator,
    *,
    contrast: bool = False,
    noise_hu: float = 12.0,
) -> FloatArray:
    """CT numbers (HU) of a label volume ``(slices, rows, cols)``.

    Partial-volume softening (a light in-plane blur), quantum noise and a trabecular
    texture in cancellous bone and a faint parenchymal texture in lung are added.
    """
    hu = _table("hu_contrast" if contrast else "hu").astype(np.float32)[labels]
    texture = blur(rng.standard_normal(labels.shape, dtype=np.float32), 1.0, axes=(1, 2))
    gain = np.zeros(_N_TISSUES, dtype=np.float32)
    gain[int(Tissue.LUNG)] = 35.0
    gain[int(Tissue.CANCELLOUS_BONE)] = 120.0
    hu += gain[labels] * texture
    hu = blur(hu, 0.6, axes=(1, 2))
    hu += np.float32(noise_hu) * rng.standard_normal(labels.shape, dtype=np.float32)
    return hu


@dataclass(frozen=True)
class MRSequence:
    """Timing of a 2-D MR acquisition (ms), enough to compute contrast.

    Attributes
    ----------
    name : str
        Human label (``T1 SE``, ``T2 TSE``, ``FLAIR``, ``DWI``, ``PD FS`` …).
    tr, te : float
        Repetition and echo times.
    ti : float
        Inversion time (0 for no inversion).
    b_value : float
        Diffusion weighting in s/mm² (0 for none).
    fat_sat : bool
        Fat suppression.
    """

    name: str
    tr: float
    te: float
    ti: float = 0.0
    b_value: float = 0.0
    fat_sat: bool = False


def mr_signal(
    labels: npt.NDArray[np.uint8],
    seq: MRSequence,
    rng: np.random.Generator,
    *,
    noise: float = 0.012,
) -> FloatArray:
    """Magnitude MR signal (0–1-ish) of a label volume for sequence *seq*.

    Uses ``S = PD (1 - 2 e^{-TI/T1} + e^{-TR/T1}) e^{-TE/T2}`` (inversion recovery, TI = 0
    reduces to spin echo), diffusion weighting ``e^{-b ADC}``, a smooth receive-coil bias
    field and Rician noise.
    """
    pd, t1, t2, adc = _table("pd"), _table("t1"), _table("t2"), _table("adc")
    if seq.fat_sat:
        # fat and fatty marrow lose their signal
        pd = pd.copy()
        pd[int(Tissue.FAT)] *= 0.08
        pd[int(Tissue.CANCELLOUS_BONE)] *= 0.25
    recovery = 1.0 - np.exp(-seq.tr / t1)
    if seq.ti:
        recovery = np.abs(1.0 - 2.0 * np.exp(-seq.ti / t1) + np.exp(-seq.tr / t1))
    per_tissue = pd * recovery * np.exp(-seq.te / t2) * np.exp(-seq.b_value * adc * 1e-3)
    sig = blur(per_tissue.astype(np.float32)[labels], 0.5, axes=(1, 2))
    ns, nr, nc = labels.shape
    yy = np.linspace(-1, 1, nr, dtype=np.float32)[None, :, None]
    xx = np.linspace(-1, 1, nc, dtype=np.float32)[None, None, :]
    zz = np.linspace(-1, 1, ns, dtype=np.float32)[:, None, None]
    tilt = rng.uniform(-0.15, 0.15, size=3).astype(np.float32)
    sig *= 1.0 + tilt[0] * xx + tilt[1] * yy + tilt[2] * zz - np.float32(0.12) * (xx**2 + yy**2)
    sig += np.float32(noise) * rng.standard_normal(labels.shape, dtype=np.float32)
    imaginary = np.float32(noise) * rng.standard_normal(labels.shape, dtype=np.float32)
    return np.asarray(np.hypot(sig, imaginary))


def pet_activity(
    labels: npt.NDArray[np.uint8],
    rng: np.random.Generator,
    *,
    fwhm_pixels: float = 1.6,
    counts_noise: float = 0.12,
) -> FloatArray:
    """FDG uptake (SUV) of a label volume, blurred to scanner resolution, with noise."""
    suv = _table("suv")[labels]
    suv = blur(suv, fwhm_pixels / 2.355)
    noisy = suv * (1.0 + counts_noise * blur(rng.standard_normal(labels.shape), 0.7))
    return np.asarray(np.clip(noisy, 0.0, None))


def echogenicity(labels: npt.NDArray[np.uint8]) -> FloatArray:
    """Ultrasound backscatter of each label (0–1)."""
    return np.asarray(_table("echo")[labels])
