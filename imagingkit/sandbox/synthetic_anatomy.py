"""Anatomy of the sandbox patients, built from :mod:`imagingkit.sandbox.phantoms` primitives.

Four body regions are modelled, each in DICOM patient coordinates (LPS, mm; PS3.3
C.7.6.2.1.1) so that images of them carry truthful geometry:

* :func:`trunk` — neck to pelvis: body wall, lungs with a vessel tree, airways, heart, great
  vessels, liver, spleen, kidneys, bowel, bladder, spine, ribs, sternum, clavicles, scapulae,
  pelvis; optional lung nodule, pneumonic consolidation and liver lesion. ``z = 0`` is the
  top of the sternum.
* :func:`head` — scalp, skull, grey and white matter with gyri, ventricles, orbits, sinuses,
  cerebellum and brain stem; optional middle-cerebral-artery infarct. ``z = 0`` is the
  level of the basal ganglia.
* :func:`knee` — femur, tibia, fibula, patella with cartilage, menisci, cruciate ligaments,
  tendons, fat pad, joint fluid; optional meniscal tear. ``z = 0`` is the joint line.
* :func:`hand` — forearm, carpals, metacarpals and phalanges; optional distal radius
  fracture. ``z`` runs along the arm towards the fingers, ``y`` through the palm.

The shapes are generous approximations, meant to look like anatomy under the usual windows
rather than to be exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from imagingkit.sandbox.phantoms import (
    Box,
    Capsule,
    Cylinder,
    Ellipsoid,
    Phantom,
    Primitive,
    Tissue,
    Tube,
    Vec3,
)

__all__ = ["BodyHabitus", "Lesion", "hand", "head", "knee", "trunk"]

T = Tissue


@dataclass(frozen=True)
class BodyHabitus:
    """Size of a patient: scale factors for width, depth and height, fat thickness (mm)."""

    width: float = 1.0
    depth: float = 1.0
    height: float = 1.0
    fat: float = 18.0
    female: bool = False


@dataclass(frozen=True)
class Lesion:
    """A focal finding: centre (mm, phantom coordinates) and radius (mm)."""

    center: Vec3
    radius: float


def _bone(
    prims: list[Primitive], outer: Primitive, inner: Primitive | None, *, host: Tissue = T.MUSCLE
) -> None:
    """Append a bone: cortical *outer* shape, then cancellous *inner* shape."""
    prims.append(_with(outer, T.CORTICAL_BONE, host))
    if inner is not None:
        prims.append(_with(inner, T.CANCELLOUS_BONE, T.CORTICAL_BONE, within=(T.CORTICAL_BONE,)))


def _with(
    prim: Primitive, tissue: Tissue, host: Tissue, within: tuple[Tissue, ...] = ()
) -> Primitive:
    """Copy *prim* as a fine structure of *tissue* that displaces *host* in projections."""
    from dataclasses import replace

    return replace(prim, tissue=tissue, within=within, fine=True, displaces=host)


def _capsule(p0: Vec3, p1: Vec3, r: float, *, caps: bool = True) -> Capsule:
    return Capsule(T.CORTICAL_BONE, p0=p0, p1=p1, radius=r, caps=caps)


# ------------------------------------------------------------------------------- trunk


def trunk(
    habitus: BodyHabitus,
    rng: np.random.Generator,
    *,
    nodule: Lesion | None = None,
    node: Lesion | None = None,
    consolidation: Lesion | None = None,
    liver_lesion: Lesion | None = None,
    table: bool = True,
) -> Phantom:
    """Neck, chest, abdomen and pelvis of one patient.

    Parameters
    ----------
    habitus : BodyHabitus
        Scale of the body.
    rng : numpy.random.Generator
        Seeded by the patient so that every scan of a patient shows the same vessel tree
        and bowel loops.
    nodule, node, consolidation, liver_lesion : Lesion, optional
        Findings to include (coordinates already in patient space): a lung nodule or mass,
        an enlarged mediastinal lymph node, pneumonic consolidation, a liver lesion.
    table : bool
        Include the CT table under the patient (left out for radiographs).
    """
    sw, sd, sh = habitus.width, habitus.depth, habitus.height

    def p(x: float, y: float, z: float) -> Vec3:
        return (x * sw, y * sd, z * sh)

    def s(a: float, b: float, c: float) -> Vec3:
        return (a * sw, b * sd, c * sh)

    def zr(z0: float, z1: float) -> tuple[float, float]:
        return (z0 * sh, z1 * sh)

    prims: list[Primitive] = []
    f = habitus.fat
    a_out, b_out = 170.0 * sw, 118.0 * sd
    # Body wall: subcutaneous fat around muscle.
    prims += [
        Cylinder(T.FAT, center=(0.0, 20 * sd), semi=(55 * sw, 55 * sd), z=zr(55, 260)),
        Cylinder(T.MUSCLE, center=(0.0, 20 * sd), semi=(48 * sw, 48 * sd), z=zr(55, 260)),
        Ellipsoid(T.FAT, center=p(0, 8, 15), semi=s(185, 95, 62)),
        Ellipsoid(T.MUSCLE, center=p(0, 8, 15), semi=(185 * sw - f, 95 * sd - f, 62 * sh - 6)),
        Cylinder(T.FAT, center=(0.0, 5 * sd), semi=(a_out, b_out), z=zr(-330, 15)),
        Cylinder(T.MUSCLE, center=(0.0, 5 * sd), semi=(a_out - f, b_out - f), z=zr(-330, 15)),
        Cylinder(T.FAT, center=(0.0, 12 * sd), semi=(158 * sw, 118 * sd), z=zr(-600, -330)),
        Cylinder(
            T.MUSCLE, center=(0.0, 12 * sd), semi=(158 * sw - f, 118 * sd - f), z=zr(-600, -330)
        ),
    ]
    if habitus.female:
        for side in (-1, 1):
            c = p(side * 78, -100, -125)
            prims.append(Ellipsoid(T.FAT, center=c, semi=s(70, 32, 60), within=(T.AIR,)))
            prims.append(
                Ellipsoid(
                    T.GLAND, center=(c[0], c[1] - 8, c[2]), semi=s(40, 22, 36), within=(T.FAT,)
                )
            )
    # Lungs, then the mediastinum and diaphragm domes that shape them.
    for side in (-1, 1):
        prims.append(
            Ellipsoid(T.LUNG, center=p(side * 75, 5, -80), semi=s(60, 78, 125), within=(T.MUSCLE,))
        )
    prims += [
        Cylinder(
            T.MUSCLE,
            center=(0.0, -5 * sd),
            semi=(30 * sw, 75 * sd),
            z=zr(-175, 60),
            within=(T.LUNG,),
        ),
        Ellipsoid(T.FAT, center=p(0, -45, -20), semi=s(18, 22, 45), within=(T.MUSCLE,)),
        Ellipsoid(
            T.MUSCLE, center=p(-55, 15, -265), semi=s(104, 100, 104), within=(T.LUNG, T.MUSCLE)
        ),
        Ellipsoid(
            T.MUSCLE, center=p(55, 20, -282), semi=s(100, 95, 100), within=(T.LUNG, T.MUSCLE)
        ),
    ]
    # Heart and great vessels.
    prims += [
        Ellipsoid(
            T.MUSCLE, center=p(24, -25, -128), semi=s(62, 55, 56), within=(T.LUNG, T.MUSCLE, T.FAT)
        ),
        Ellipsoid(T.BLOOD, center=p(24, -25, -128), semi=s(49, 43, 44), within=(T.MUSCLE,)),
        Capsule(
            T.BLOOD,
            p0=p(12, -20, -95),
            p1=p(8, -12, -25),
            radius=15 * sw,
            within=(T.MUSCLE, T.LUNG, T.FAT),
        ),
        Capsule(
            T.BLOOD,
            p0=p(8, -12, -25),
            p1=p(22, 32, -32),
            radius=13 * sw,
            within=(T.MUSCLE, T.LUNG, T.FAT),
        ),
        Capsule(
            T.BLOOD,
            p0=p(22, 32, -32),
            p1=p(8, 22, -470),
            radius=11.5 * sw,
            within=(T.MUSCLE, T.LUNG, T.FAT),
        ),
        Capsule(
            T.BLOOD,
            p0=p(-26, -14, -105),
            p1=p(-24, -10, 45),
            radius=10 * sw,
            within=(T.MUSCLE, T.LUNG, T.FAT),
        ),
        Capsule(
            T.BLOOD, p0=p(4, -12, -88), p1=p(-52, 2, -92), radius=10 * sw, within=(T.MUSCLE, T.LUNG)
        ),
        Capsule(
            T.BLOOD, p0=p(4, -12, -88), p1=p(52, 2, -86), radius=10 * sw, within=(T.MUSCLE, T.LUNG)
        ),
        Capsule(
            T.BLOOD,
            p0=p(-22, 28, -560),
            p1=p(-22, 22, -150),
            radius=11 * sw,
            within=(T.MUSCLE, T.FAT),
        ),
    ]
    # Airways (fine: sharp on radiographs).
    airway_hosts = (T.MUSCLE, T.FAT, T.LUNG, T.BLOOD)
    for a, b, r in (
        (p(0, -12, 110), p(0, -4, -45), 9.0),
        (p(0, -4, -45), p(-40, 0, -75), 7.0),
        (p(0, -4, -45), p(42, 3, -85), 6.5),
        (p(-40, 0, -75), p(-78, 8, -125), 3.5),
        (p(-40, 0, -75), p(-70, -10, -40), 3.0),
        (p(42, 3, -85), p(80, 12, -135), 3.5),
        (p(42, 3, -85), p(70, -5, -45), 3.0),
    ):
        prims.append(
            Capsule(
                T.AIRWAY,
                p0=a,
                p1=b,
                radius=r * sw,
                within=airway_hosts,
                fine=True,
                displaces=T.MUSCLE,
            )
        )
    prims += _lung_vessels(rng, p, sw)
    if consolidation is not None:
        c, r = consolidation.center, consolidation.radius
        for _ in range(5):
            off = rng.uniform(-0.5, 0.5, 3) * r
            semi = tuple(float(v) for v in rng.uniform(0.45, 0.8, 3) * r)
            prims.append(
                Ellipsoid(
                    T.CONSOLIDATION,
                    center=(c[0] + off[0], c[1] + off[1], c[2] + off[2]),
                    semi=(semi[0], semi[1], semi[2]),
                    within=(T.LUNG, T.LUNG_VESSEL),
                )
            )
    if nodule is not None:
        prims.append(
            Ellipsoid(
                T.NODULE,
                center=nodule.center,
                semi=(nodule.radius, nodule.radius, nodule.radius * 0.9),
                within=(T.LUNG, T.LUNG_VESSEL),
                fine=True,
            )
        )
    if node is not None:
        r = node.radius
        prims.append(
            Ellipsoid(T.NODULE, center=node.center, semi=(r, r * 0.8, r), within=(T.MUSCLE, T.FAT))
        )
    # Abdomen.
    soft = (T.MUSCLE,)
    prims += [
        Ellipsoid(T.LIVER, center=p(-55, 15, -265), semi=s(100, 96, 100), within=soft),
        Capsule(
            T.BLOOD,
            p0=p(-22, 28, -250),
            p1=p(-22, 22, -165),
            radius=11 * sw,
            within=(T.LIVER, T.MUSCLE),
        ),
        Capsule(
            T.BLOOD, p0=p(-40, 20, -290), p1=p(-15, 30, -255), radius=7 * sw, within=(T.LIVER,)
        ),
        Capsule(
            T.BLOOD, p0=p(-40, 20, -290), p1=p(-95, 10, -260), radius=5 * sw, within=(T.LIVER,)
        ),
    ]
    for angle in (-150.0, -115.0, -70.0):
        rad = math.radians(angle)
        end = p(-22 + 80 * math.cos(rad) * -1, 22 + 60 * math.sin(rad), -200)
        prims.append(
            Capsule(T.BLOOD, p0=p(-22, 24, -185), p1=end, radius=4 * sw, within=(T.LIVER,))
        )
    if liver_lesion is not None:
        prims.append(
            Ellipsoid(
                T.LIVER_LESION,
                center=liver_lesion.center,
                semi=(liver_lesion.radius,) * 3,
                within=(T.LIVER, T.BLOOD),
            )
        )
    prims += [
        Ellipsoid(
            T.FLUID, center=p(-45, -40, -305), semi=s(15, 15, 34), within=(T.LIVER, T.MUSCLE)
        ),
        Ellipsoid(T.SPLEEN, center=p(88, 55, -255), semi=s(34, 52, 55), within=soft),
        Ellipsoid(T.BOWEL, center=p(48, -8, -250), semi=s(48, 40, 52), within=soft),
        Ellipsoid(T.BOWEL_GAS, center=p(52, -28, -220), semi=s(28, 16, 16), within=(T.BOWEL,)),
    ]
    for side, zc in ((-1, -335.0), (1, -318.0)):
        prims.append(
            Ellipsoid(T.KIDNEY, center=p(side * 72, 62, zc), semi=s(27, 24, 55), within=soft)
        )
        prims.append(
            Ellipsoid(T.FAT, center=p(side * 62, 56, zc), semi=s(9, 9, 24), within=(T.KIDNEY,))
        )
    for _ in range(10):
        cx, cy, cz = rng.uniform(-100, 100), rng.uniform(-70, 20), rng.uniform(-480, -360)
        semi = s(*(float(v) for v in rng.uniform(16, 30, 3)))
        prims.append(Ellipsoid(T.BOWEL, center=p(cx, cy, cz), semi=semi, within=soft))
        if rng.random() < 0.6:
            prims.append(
                Ellipsoid(
                    T.BOWEL_GAS,
                    center=p(cx, cy - 0.4 * semi[1], cz),
                    semi=(semi[0] * 0.6, semi[1] * 0.45, semi[2] * 0.6),
                    within=(T.BOWEL,),
                )
            )
    prims.append(Ellipsoid(T.URINE, center=p(0, -20, -560), semi=s(45, 35, 32), within=soft))
    prims += _skeleton_trunk(p, s, sw, sd, a_out - f, b_out - f)
    if table:
        y0 = 5 * sd + b_out + 3
        prims.append(Box(T.TABLE, lo=(-230.0, y0, -2000.0), hi=(230.0, y0 + 12, 2000.0)))
    return Phantom(tuple(prims))


def _lung_vessels(
    rng: np.random.Generator,
    p: object,
    sw: float,
) -> list[Primitive]:
    """Pulmonary vessels: a three-level tree fanning out from each hilum to the periphery."""
    assert callable(p)
    prims: list[Primitive] = []
    for side in (-1, 1):
        hilum = np.array(p(side * 50, 2, -92))
        centre = np.array(p(side * 75, 5, -80))
        semi = np.array([60 * sw, 78.0, 125.0])
        for _ in range(10):
            target = _on_surface(rng, centre, semi)
            start = hilum + 0.12 * (target - hilum)
            main_end = hilum + 0.42 * (target - hilum)
            prims.append(_vessel(start, main_end, 4.5))
            for _ in range(3):
                t2 = _on_surface(rng, centre, semi, near=target, spread=0.5)
                end = main_end + 0.55 * (t2 - main_end)
                prims.append(_vessel(main_end, end, 2.4))
                for _ in range(4):
                    t3 = _on_surface(rng, centre, semi, near=t2, spread=0.35)
                    tip = end + 0.8 * (t3 - end)
                    prims.append(_vessel(end, tip, 1.3))
    return prims


def _on_surface(
    rng: np.random.Generator,
    centre: np.ndarray,
    semi: np.ndarray,
    *,
    near: np.ndarray | None = None,
    spread: float = 1.0,
) -> np.ndarray:
    """A random point 92 % of the way to the surface of an ellipsoid (optionally near *near*)."""
    d = rng.normal(size=3)
    if near is not None:
        d = (near - centre) / semi / _ell_norm(near - centre, semi) + spread * d / np.linalg.norm(d)
    d = d / np.linalg.norm(d)
    return np.asarray(centre + 0.92 * d * semi)


def _ell_norm(v: np.ndarray, semi: np.ndarray) -> float:
    return float(np.sqrt(((v / semi) ** 2).sum())) or 1e-9


def _vessel(a: np.ndarray, b: np.ndarray, r: float) -> Capsule:
    return Capsule(
        T.LUNG_VESSEL,
        p0=(float(a[0]), float(a[1]), float(a[2])),
        p1=(float(b[0]), float(b[1]), float(b[2])),
        radius=r,
        within=(T.LUNG,),
        fine=True,
    )


def _skeleton_trunk(
    p: object, s: object, sw: float, sd: float, a_in: float, b_in: float
) -> list[Primitive]:
    """Spine, ribs, sternum, clavicles, scapulae and pelvis."""
    assert callable(p) and callable(s)
    prims: list[Primitive] = []
    # Vertebrae from C5 (top) to S1, body height growing caudally.
    z = 130.0
    level = 0
    while z > -600:
        cervical = level < 3
        lumbar = z < -300
        height = 13.0 if cervical else (24.0 if lumbar else 19.0)
        cy = 30.0 if cervical else 55.0
        ra, rb = (12.0, 10.0) if cervical else ((23.0, 17.0) if lumbar else (17.0, 15.0))
        z0, z1 = z - height, z
        zc = (z0 + z1) / 2
        body = Cylinder(T.CORTICAL_BONE, center=(0.0, cy * sd), semi=(ra * sw, rb * sd), z=(z0, z1))
        inner = Cylinder(
            T.CORTICAL_BONE,
            center=(0.0, cy * sd),
            semi=(ra * sw - 2.5, rb * sd - 2.5),
            z=(z0 + 1.5, z1 - 1.5),
        )
        _bone(prims, body, inner)
        # the neural arch overlaps the disc below it (laminae and facet joints)
        disc_h = 4.0 if cervical else 6.0
        arch = Cylinder(
            T.CORTICAL_BONE,
            center=(0.0, (cy + rb + 9) * sd),
            semi=(13.0, 11.0),
            z=(z0 - disc_h + 1, z1 - 2),
        )
        _bone(prims, arch, None)
        _bone(prims, _capsule(p(0, cy + rb + 18, zc), p(0, cy + rb + 28, zc - 10), 4.5), None)
        for side in (-1, 1):
            _bone(
                prims,
                _capsule(
                    p(side * 6, cy + rb + 6, zc), p(side * (ra + 16), cy + rb + 12, zc + 2), 4.5
                ),
                None,
            )
        prims.append(
            Cylinder(
                T.DISC,
                center=(0.0, cy * sd),
                semi=(ra * sw - 1, rb * sd - 1),
                z=(z0 - disc_h, z0),
                within=(T.MUSCLE, T.FAT, T.LUNG, T.BLOOD),
                fine=True,
                displaces=T.MUSCLE,
            )
        )
        # spinal canal
        prims.append(
            Cylinder(
                T.CSF,
                center=(0.0, (cy + rb + 9) * sd),
                semi=(7.5, 6.5),
                z=(z0 - disc_h, z1),
                fine=True,
                displaces=T.MUSCLE,
            )
        )
        z = z0 - disc_h
        level += 1
    # Ribs 1–12: posterior end beside the thoracic vertebra, sweeping round and down.
    widths = [0.5, 0.68, 0.8, 0.88, 0.94, 0.97, 0.98, 0.98, 0.97, 0.95, 0.93, 0.9]
    for k in range(12):
        z_post = (30.0 - 21.0 * k) * 1.0
        phi0 = math.radians(72)
        phi1 = math.radians(-50 if k < 7 else (-30 if k < 10 else 15))
        drop = min(40.0 + 6.0 * k, 90.0) if k < 10 else 25.0
        a_r, b_r = (a_in - 12) * widths[k], (b_in - 10) * (0.75 + 0.25 * widths[k])
        for side in (-1, 1):
            pts = []
            n = 10
            for i in range(n + 1):
                t = i / n
                phi = phi0 + (phi1 - phi0) * t
                pts.append(
                    (side * a_r * math.cos(phi), 5 * sd + b_r * math.sin(phi), z_post - drop * t)
                )
            rib = tuple(pts)
            _bone(
                prims,
                Tube(T.CORTICAL_BONE, points=rib, radius=5.0),
                Tube(T.CORTICAL_BONE, points=rib, radius=2.8),
            )
    # Sternum, clavicles, scapulae.
    yst = 5 * sd - b_in + 4
    _bone(
        prims,
        Cylinder(T.CORTICAL_BONE, center=(0.0, yst), semi=(20 * sw, 7.0), z=(-185.0, 5.0)),
        Cylinder(T.CORTICAL_BONE, center=(0.0, yst), semi=(17 * sw, 4.5), z=(-183.0, 3.0)),
    )
    for side in (-1, 1):
        a, b = p(side * 20, -b_in / sd + 18, 18), p(side * 150, -35, 45)
        _bone(prims, _capsule(a, b, 8.0), _capsule(a, b, 5.0))
        scap = Ellipsoid(T.CORTICAL_BONE, center=p(side * 95, 80, -35), semi=s(38, 4, 72))
        _bone(
            prims,
            scap,
            Ellipsoid(T.CORTICAL_BONE, center=p(side * 95, 80, -35), semi=s(35, 2.5, 69)),
        )
        # Iliac wing: an oblique plate from the sacro-iliac joint to the iliac spine.
        for zi in np.arange(-596.0, -440.0, 6.0):
            reach = 1.0 - ((zi + 470.0) / 130.0) ** 2
            a = p(side * 45, 68, zi)
            b = p(side * (70 + 60 * reach), 62 - 55 * reach, zi)
            _bone(prims, _capsule(a, b, 6.0), _capsule(a, b, 3.5))
    sacrum = Cylinder(
        T.CORTICAL_BONE, center=(0.0, 70 * sd), semi=(42 * sw, 16 * sd), z=(-600.0, -480.0)
    )
    _bone(
        prims,
        sacrum,
        Cylinder(
            T.CORTICAL_BONE, center=(0.0, 70 * sd), semi=(39 * sw, 13 * sd), z=(-598.0, -482.0)
        ),
    )
    return prims


# -------------------------------------------------------------------------------- head


def head(rng: np.random.Generator, *, infarct_side: int = 0, scale: float = 1.0) -> Phantom:
    """Head and brain; *infarct_side* -1 (right), +1 (left) adds an MCA-territory infarct."""

    def p(x: float, y: float, z: float) -> Vec3:
        return (x * scale, y * scale, z * scale)

    def s(a: float, b: float, c: float) -> Vec3:
        return (a * scale, b * scale, c * scale)

    prims: list[Primitive] = [
        Cylinder(T.FAT, center=(0.0, 15.0), semi=(58.0, 58.0), z=(-260.0, -60.0)),
        Cylinder(T.MUSCLE, center=(0.0, 15.0), semi=(52.0, 52.0), z=(-260.0, -60.0)),
        Ellipsoid(T.FAT, center=p(0, 0, 0), semi=s(80, 101, 103)),
        Ellipsoid(T.SKIN, center=p(0, 0, 0), semi=s(78, 99, 101), within=(T.FAT,)),
        Ellipsoid(T.FAT, center=p(0, 0, 0), semi=s(77, 98, 100), within=(T.SKIN,)),
    ]
    _bone(
        prims,
        Ellipsoid(T.CORTICAL_BONE, center=p(0, 0, 0), semi=s(74, 95, 96)),
        Ellipsoid(T.CORTICAL_BONE, center=p(0, 0, 0), semi=s(71.5, 92.5, 93.5)),
        host=T.FAT,
    )
    inner = Ellipsoid(T.CORTICAL_BONE, center=p(0, 0, 0), semi=s(69.5, 90.5, 91.5))
    prims.append(_with(inner, T.CORTICAL_BONE, T.FAT, within=(T.CANCELLOUS_BONE,)))
    prims += [
        Ellipsoid(T.CSF, center=p(0, 0, 0), semi=s(67.5, 88.5, 89.5)),
        Ellipsoid(T.GREY_MATTER, center=p(0, 2, 4), semi=s(65, 85, 82), within=(T.CSF,)),
        Ellipsoid(T.WHITE_MATTER, center=p(0, 4, 10), semi=s(53, 71, 66), within=(T.GREY_MATTER,)),
    ]
    # Gyri and sulci: grey matter bulging into white matter, CSF clefts into the cortex.
    for _ in range(70):
        d = rng.normal(size=3) * np.array([1.0, 1.2, 0.9])
        d /= np.linalg.norm(d)
        if d[2] < -0.55:
            continue
        pos = np.array(p(0, 4, 10)) + d * np.array(s(53, 71, 66))
        r = rng.uniform(5, 9) * scale
        prims.append(
            Ellipsoid(
                T.GREY_MATTER,
                center=(float(pos[0]), float(pos[1]), float(pos[2])),
                semi=(r, r, r),
                within=(T.WHITE_MATTER,),
            )
        )
        cleft = np.array(p(0, 2, 4)) + d * np.array(s(63, 83, 80))
        rr = rng.uniform(1.2, 2.0) * scale
        prims.append(
            Ellipsoid(
                T.CSF,
                center=(float(cleft[0]), float(cleft[1]), float(cleft[2])),
                semi=(rr * 3, rr * 3, rr * 3),
                within=(T.GREY_MATTER,),
            )
        )
    for side in (-1, 1):
        prims += [
            Ellipsoid(
                T.GREY_MATTER,
                center=p(side * 20, -4, 2),
                semi=s(9, 17, 12),
                within=(T.WHITE_MATTER,),
            ),
            Ellipsoid(
                T.GREY_MATTER,
                center=p(side * 11, 14, 2),
                semi=s(9, 12, 10),
                within=(T.WHITE_MATTER,),
            ),
            Ellipsoid(
                T.CSF,
                center=p(side * 10, 4, 20),
                semi=s(5.5, 33, 11),
                within=(T.WHITE_MATTER, T.GREY_MATTER),
            ),
            Ellipsoid(
                T.CSF,
                center=p(side * 56, -8, 2),
                semi=s(10, 22, 3),
                within=(T.GREY_MATTER, T.WHITE_MATTER),
            ),
        ]
    prims.append(
        Ellipsoid(
            T.CSF, center=p(0, 8, 2), semi=s(2.5, 12, 8), within=(T.WHITE_MATTER, T.GREY_MATTER)
        )
    )
    if infarct_side:
        prims += [
            Ellipsoid(
                T.INFARCT,
                center=p(infarct_side * 40, -6, 12),
                semi=s(22, 30, 24),
                within=(T.GREY_MATTER, T.WHITE_MATTER),
            ),
        ]
    # Face and skull base below the front of the brain; orbits, sinuses, cerebellum.
    prims += [Ellipsoid(T.MUSCLE, center=p(0, -40, -80), semi=s(64, 68, 58))]
    # the skull base: a plate under the front of the brain, thicker where the petrous
    # bones are
    _bone(
        prims,
        Ellipsoid(T.CORTICAL_BONE, center=p(0, -25, -40), semi=s(60, 62, 6)),
        Ellipsoid(T.CORTICAL_BONE, center=p(0, -25, -40), semi=s(57, 59, 3.5)),
    )
    for side in (-1, 1):
        _bone(
            prims,
            Ellipsoid(T.CORTICAL_BONE, center=p(side * 35, 20, -45), semi=s(22, 9, 9)),
            None,
        )
    for side in (-1, 1):
        prims += [
            Ellipsoid(T.FAT, center=p(side * 32, -68, -18), semi=s(19, 22, 17)),
            Ellipsoid(T.FLUID, center=p(side * 32, -78, -18), semi=s(12, 12, 12), within=(T.FAT,)),
            Ellipsoid(
                T.AIRWAY, center=p(side * 27, -58, -58), semi=s(15, 18, 17), within=(T.MUSCLE,)
            ),
        ]
    prims += [
        Ellipsoid(T.AIRWAY, center=p(0, -72, -62), semi=s(8, 24, 20), within=(T.MUSCLE,)),
        Ellipsoid(
            T.GREY_MATTER,
            center=p(0, 55, -48),
            semi=s(50, 30, 27),
            within=(T.MUSCLE, T.GREY_MATTER, T.WHITE_MATTER, T.CSF),
        ),
        Ellipsoid(
            T.WHITE_MATTER, center=p(0, 50, -45), semi=s(28, 15, 14), within=(T.GREY_MATTER,)
        ),
        Capsule(T.WHITE_MATTER, p0=p(0, 18, -10), p1=p(0, 28, -110), radius=12 * scale),
    ]
    _bone(prims, Ellipsoid(T.CORTICAL_BONE, center=p(0, 62, -78), semi=s(60, 30, 6)), None)
    _bone(prims, Capsule(T.CORTICAL_BONE, p0=p(0, 22, -125), p1=p(0, 20, -260), radius=12), None)
    return Phantom(tuple(prims))


# -------------------------------------------------------------------------------- knee


def knee(*, side: int = -1, tear: bool = False, effusion: float = 1.0) -> Phantom:
    """A knee (*side* -1 right, +1 left) with an optional horizontal meniscal tear."""
    med = -side  # medial is toward the midline

    def p(x: float, y: float, z: float) -> Vec3:
        return (x * med, y, z)

    prims: list[Primitive] = [
        Cylinder(T.FAT, center=(0.0, 0.0), semi=(62.0, 58.0), z=(-200.0, 200.0)),
        Cylinder(T.MUSCLE, center=(0.0, 8.0), semi=(50.0, 44.0), z=(-200.0, 200.0)),
        Ellipsoid(T.FAT, center=p(0, -22, 0), semi=(22.0, 14.0, 16.0), within=(T.MUSCLE,)),
        Ellipsoid(
            T.FLUID,
            center=p(0, -22, 52),
            semi=(28.0, 5.0 * effusion, 26.0),
            within=(T.MUSCLE, T.FAT),
        ),
        Cylinder(
            T.FLUID, center=(0.0, 8.0), semi=(42.0, 31.0), z=(-3.5, 1.0), within=(T.MUSCLE, T.FAT)
        ),
    ]
    for sgn in (-1, 1):
        for horn in (-1, 1):
            prims.append(
                Ellipsoid(
                    T.FIBROUS, center=p(sgn * 22, 8 + horn * 20, -1.5), semi=(13.0, 10.0, 3.6)
                )
            )
    if tear:
        x_lo, x_hi = sorted((12.0 * med, 36.0 * med))
        prims.append(
            Box(T.FLUID, lo=(x_lo, 20.0, -1.9), hi=(x_hi, 40.0, -1.1), within=(T.FIBROUS,))
        )
    # Femur: cartilage first, bone painted over it leaves a cartilage shell.
    for sgn in (-1, 1):
        prims.append(Ellipsoid(T.CARTILAGE, center=p(sgn * 21, 12, 24), semi=(22.5, 32.5, 24.5)))
    _bone(
        prims,
        Cylinder(T.CORTICAL_BONE, center=(0.0, 4.0), semi=(15.0, 15.0), z=(40.0, 200.0)),
        Cylinder(T.CORTICAL_BONE, center=(0.0, 4.0), semi=(11.5, 11.5), z=(40.0, 200.0)),
    )
    _bone(
        prims,
        Ellipsoid(T.CORTICAL_BONE, center=p(0, 8, 45), semi=(38.0, 28.0, 30.0)),
        Ellipsoid(T.CORTICAL_BONE, center=p(0, 8, 45), semi=(35.5, 25.5, 28.0)),
    )
    for sgn in (-1, 1):
        _bone(
            prims,
            Ellipsoid(T.CORTICAL_BONE, center=p(sgn * 21, 12, 24), semi=(20.0, 30.0, 22.0)),
            Ellipsoid(T.CORTICAL_BONE, center=p(sgn * 21, 12, 24), semi=(18.0, 28.0, 20.0)),
        )
    prims.append(
        Box(
            T.FAT,
            lo=(-7.0, 12.0, -1.0),
            hi=(7.0, 46.0, 22.0),
            within=(T.CORTICAL_BONE, T.CANCELLOUS_BONE, T.CARTILAGE),
        )
    )
    prims += [
        Capsule(T.FIBROUS, p0=p(-6, 30, 16), p1=p(3, 2, -8), radius=4.0, fine=True),
        Capsule(T.FIBROUS, p0=p(5, 14, 18), p1=p(0, 36, -18), radius=5.0, fine=True),
    ]
    # Tibia and fibula.
    prims.append(
        Ellipsoid(
            T.CARTILAGE,
            center=p(0, 8, -23),
            semi=(39.0, 29.0, 20.5),
            within=(T.MUSCLE, T.FAT, T.FLUID),
        )
    )
    _bone(
        prims,
        Ellipsoid(T.CORTICAL_BONE, center=p(0, 8, -23), semi=(39.0, 29.0, 18.5)),
        Ellipsoid(T.CORTICAL_BONE, center=p(0, 8, -23), semi=(36.5, 26.5, 16.5)),
    )
    _bone(
        prims,
        Cylinder(T.CORTICAL_BONE, center=(0.0, 12.0), semi=(17.0, 16.0), z=(-200.0, -30.0)),
        Cylinder(T.CORTICAL_BONE, center=(0.0, 12.0), semi=(13.0, 12.0), z=(-200.0, -30.0)),
    )
    _bone(
        prims,
        Cylinder(T.CORTICAL_BONE, center=p(-31, 28, 0)[:2], semi=(7.0, 7.0), z=(-200.0, -40.0)),
        Cylinder(T.CORTICAL_BONE, center=p(-31, 28, 0)[:2], semi=(4.5, 4.5), z=(-200.0, -40.0)),
    )
    _bone(
        prims,
        Ellipsoid(T.CORTICAL_BONE, center=p(-31, 28, -40), semi=(11.0, 11.0, 10.0)),
        Ellipsoid(T.CORTICAL_BONE, center=p(-31, 28, -40), semi=(9.0, 9.0, 8.0)),
    )
    # Patella with its cartilage, tendons, popliteal vessels.
    prims.append(Ellipsoid(T.CARTILAGE, center=p(0, -38, 36), semi=(21.0, 10.5, 19.0)))
    _bone(
        prims,
        Ellipsoid(T.CORTICAL_BONE, center=p(0, -42, 36), semi=(22.0, 9.5, 20.0)),
        Ellipsoid(T.CORTICAL_BONE, center=p(0, -42, 36), semi=(19.5, 7.5, 17.5)),
    )
    prims += [
        Capsule(T.FIBROUS, p0=p(0, -42, 58), p1=p(0, -26, 140), radius=6.0, fine=True),
        Capsule(T.FIBROUS, p0=p(0, -46, 16), p1=p(0, -30, -42), radius=4.5, fine=True),
        Capsule(T.BLOOD, p0=p(0, 46, 200), p1=p(2, 40, -200), radius=4.0),
        Capsule(T.BLOOD, p0=p(6, 50, 200), p1=p(8, 45, -200), radius=5.0),
    ]
    return Phantom(tuple(prims))


# -------------------------------------------------------------------------------- hand


def hand(*, side: int = -1, fracture: bool = False, healing: float = 0.0) -> Phantom:
    """Forearm, wrist and hand (*side* -1 right, +1 left), optionally with a distal radius
    fracture (*healing* 0–1 narrows the gap and adds callus)."""
    mirror = 1.0 if side < 0 else -1.0  # the thumb (radial side) is lateral

    def p(x: float, y: float, z: float) -> Vec3:
        return (x * mirror, y, z)

    prims: list[Primitive] = [
        Cylinder(T.FAT, center=(0.0, 0.0), semi=(36.0, 25.0), z=(-260.0, -5.0)),
        Cylinder(T.MUSCLE, center=(0.0, 0.0), semi=(31.0, 20.0), z=(-260.0, -5.0)),
        Ellipsoid(T.FAT, center=p(0, 0, 5), semi=(36.0, 23.0, 28.0)),
        Ellipsoid(T.MUSCLE, center=p(0, 0, 5), semi=(32.0, 19.0, 25.0)),
        Ellipsoid(T.FAT, center=p(-2, 0, 55), semi=(45.0, 16.0, 58.0)),
        Ellipsoid(T.MUSCLE, center=p(-2, 0, 55), semi=(41.0, 13.0, 55.0)),
    ]
    # Fingers: (MCP x, direction angle deg, proximal, middle, distal lengths, radius)
    fingers = [
        (-15.0, -4.0, 40.0, 24.0, 18.0, 4.6),
        (2.0, 1.0, 45.0, 28.0, 20.0, 4.8),
        (17.0, 6.0, 42.0, 26.0, 19.0, 4.4),
        (30.0, 11.0, 32.0, 20.0, 17.0, 4.0),
    ]
    mcp_z = [93.0, 96.0, 91.0, 85.0]
    for (x, ang, lp, lm, ld, _r), z0 in zip(fingers, mcp_z, strict=True):
        d = (math.sin(math.radians(ang)), math.cos(math.radians(ang)))
        length = lp + lm + ld + 10
        prims.append(
            Capsule(
                T.FAT,
                p0=p(x, 0, z0 - 5),
                p1=p(x + d[0] * length, 0, z0 + d[1] * length),
                radius=10.0,
            )
        )
        prims.append(
            Capsule(
                T.MUSCLE,
                p0=p(x, 0, z0 - 5),
                p1=p(x + d[0] * (length - 2), 0, z0 + d[1] * (length - 2)),
                radius=8.0,
            )
        )
    thumb_base, thumb_dir = (
        (-30.0, 45.0),
        (math.sin(math.radians(-35)), math.cos(math.radians(-35))),
    )
    prims.append(
        Capsule(
            T.FAT,
            p0=p(thumb_base[0], -4, thumb_base[1]),
            p1=p(thumb_base[0] + thumb_dir[0] * 95, -8, thumb_base[1] + thumb_dir[1] * 95),
            radius=11.0,
        )
    )
    prims.append(
        Capsule(
            T.MUSCLE,
            p0=p(thumb_base[0], -4, thumb_base[1]),
            p1=p(thumb_base[0] + thumb_dir[0] * 93, -8, thumb_base[1] + thumb_dir[1] * 93),
            radius=9.0,
        )
    )
    # Radius and ulna.
    if fracture:
        gap = 1.6 * (1.0 - healing)
        a, b = p(-14, 0, -260), p(-15, 0, -30)
        _bone(prims, _capsule(a, b, 11.0, caps=False), _capsule(a, b, 8.5, caps=False))
        shift = 3.0 * (1.0 - 0.3 * healing)
        a, b = p(-15, shift, -30 + gap), p(-16, shift + 2.0, -6)
        _bone(prims, _capsule(a, b, 11.0, caps=False), _capsule(a, b, 8.5, caps=False))
        _bone(
            prims,
            Ellipsoid(T.CORTICAL_BONE, center=p(-15, shift + 2, -8), semi=(17.0, 11.0, 9.0)),
            Ellipsoid(T.CORTICAL_BONE, center=p(-15, shift + 2, -8), semi=(14.5, 8.5, 7.0)),
        )
        if healing > 0:
            prims.append(
                _with(
                    Ellipsoid(T.CANCELLOUS_BONE, center=p(-15, 1, -30), semi=(14.0, 13.0, 6.0)),
                    T.CANCELLOUS_BONE,
                    T.MUSCLE,
                    within=(T.MUSCLE, T.FAT),
                )
            )
    else:
        a, b = p(-14, 0, -260), p(-16, 0, -6)
        _bone(prims, _capsule(a, b, 11.0, caps=False), _capsule(a, b, 8.5, caps=False))
        _bone(
            prims,
            Ellipsoid(T.CORTICAL_BONE, center=p(-15, 0, -8), semi=(17.0, 11.0, 9.0)),
            Ellipsoid(T.CORTICAL_BONE, center=p(-15, 0, -8), semi=(14.5, 8.5, 7.0)),
        )
    _bone(
        prims,
        _capsule(p(14, 0, -260), p(14, 0, -12), 8.0),
        _capsule(p(14, 0, -260), p(14, 0, -12), 5.5),
    )
    _bone(prims, Ellipsoid(T.CORTICAL_BONE, center=p(16, 0, -10), semi=(7.0, 7.0, 7.0)), None)
    # Carpals.
    for (cx, cz), (ax, az) in (
        ((-17, 9), (9, 11)),
        ((-3, 8), (8, 8)),
        ((10, 7), (7, 7)),
        ((-22, 27), (8, 8)),
        ((-10, 28), (6, 7)),
        ((1, 27), (8, 10)),
        ((13, 25), (8, 9)),
    ):
        _bone(
            prims,
            Ellipsoid(T.CORTICAL_BONE, center=p(cx, 0, cz), semi=(ax, 7.0, az)),
            Ellipsoid(T.CORTICAL_BONE, center=p(cx, 0, cz), semi=(ax - 1.5, 5.5, az - 1.5)),
        )
    _bone(prims, Ellipsoid(T.CORTICAL_BONE, center=p(14, -9, 12), semi=(5.0, 5.0, 5.0)), None)
    # Metacarpals and phalanges.
    bases = [(-12.0, 38.0), (0.0, 38.0), (11.0, 36.0), (19.0, 33.0)]
    for (x, ang, lp, lm, ld, r), (bx, bz), z0 in zip(fingers, bases, mcp_z, strict=True):
        a, b = p(bx, 0, bz), p(x, 0, z0 - 3)
        _bone(prims, _capsule(a, b, r + 0.6), _capsule(a, b, r - 1.4))
        d = (math.sin(math.radians(ang)), math.cos(math.radians(ang)))
        start = z0 + 2.0
        pos = (x, start)
        for length, rr in ((lp, r), (lm, r - 0.6), (ld, r - 1.1)):
            e = (pos[0] + d[0] * length, pos[1] + d[1] * length)
            _bone(
                prims,
                _capsule(p(pos[0], 0, pos[1]), p(e[0], 0, e[1]), rr),
                _capsule(p(pos[0], 0, pos[1]), p(e[0], 0, e[1]), rr - 1.4),
            )
            pos = (e[0] + d[0] * 3.0, e[1] + d[1] * 3.0)
    tb = (thumb_base[0] + 4, thumb_base[1] - 8)
    pos = tb
    for length, rr in ((42.0, 5.5), (30.0, 5.0), (22.0, 4.4)):
        e = (pos[0] + thumb_dir[0] * length, pos[1] + thumb_dir[1] * length)
        _bone(
            prims,
            _capsule(p(pos[0], -5, pos[1]), p(e[0], -6, e[1]), rr),
            _capsule(p(pos[0], -5, pos[1]), p(e[0], -6, e[1]), rr - 1.4),
        )
        pos = (e[0] + thumb_dir[0] * 3, e[1] + thumb_dir[1] * 3)
    return Phantom(tuple(prims))
