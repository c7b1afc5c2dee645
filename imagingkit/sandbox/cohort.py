"""The sandbox cohort plan: who the patients are, why they were imaged, what was acquired.

:func:`plan_cohort` turns ``(size, seed)`` into a fully deterministic :class:`CohortPlan`
— patients with stable demographics, clinical stories (lung nodule follow-up, pneumonia,
stroke, fracture, breast lump, liver lesion, lung-cancer staging, knee pain, headache), each
story a list of studies motivated by a SNOMED CT coded reason, each study a list of series
with their SOP class, transfer syntax, geometry and instance count. Pixel generation
(:mod:`imagingkit.sandbox.generate`) only executes the plan, so the manifest
(``cohort.json``) can be written from the plan alone.

UIDs are ``2.25.<n>`` where *n* is a name-based (SHA-1, version 5) UUID of the seed, size
and the object's role (PS3.5 §B.2, ISO/IEC 9834-8): the same plan always gives the same UIDs
and different seeds or sizes never collide.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from imagingkit.errors import InvalidInputError

__all__ = [
    "REASONS",
    "SIZES",
    "SNOMED",
    "CohortPlan",
    "Detail",
    "PatientPlan",
    "Reason",
    "SOPClass",
    "SeriesPlan",
    "SizeSpec",
    "StudyPlan",
    "TransferSyntax",
    "plan_cohort",
    "uid_for",
]

SNOMED = "http://snomed.info/sct"
ISSUER = "IMAGINGKIT-SANDBOX"
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:imagingkit:sandbox")


def uid_for(*parts: object) -> str:
    """Deterministic UID ``2.25.<uuid-as-integer>`` for the name *parts* (PS3.5 §B.2)."""
    name = "/".join(str(p) for p in parts)
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


class TransferSyntax:
    """Transfer syntax UIDs the sandbox writes (PS3.5 §10, PS3.6 Annex A)."""

    EXPLICIT_LE = "1.2.840.10008.1.2.1"
    RLE = "1.2.840.10008.1.2.5"
    JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
    JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
    JPEG2000 = "1.2.840.10008.1.2.4.91"


class SOPClass:
    """Storage SOP class UIDs the sandbox writes (PS3.4 Annex B.5)."""

    CT = "1.2.840.10008.5.1.4.1.1.2"
    MR = "1.2.840.10008.5.1.4.1.1.4"
    CR = "1.2.840.10008.5.1.4.1.1.1"
    DX = "1.2.840.10008.5.1.4.1.1.1.1"
    US = "1.2.840.10008.5.1.4.1.1.6.1"
    US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
    PT = "1.2.840.10008.5.1.4.1.1.128"
    SEG = "1.2.840.10008.5.1.4.1.1.66.4"
    COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


@dataclass(frozen=True)
class Reason:
    """Why a study was done: a SNOMED CT concept (FHIR ``Condition.code``)."""

    code: str
    display: str

    def as_json(self) -> dict[str, str]:
        """The coding as FHIR-style JSON."""
        return {"system": SNOMED, "code": self.code, "display": self.display}


REASONS: dict[str, Reason] = {
    "lung_nodule": Reason("427359005", "Solitary nodule of lung"),
    "pneumonia": Reason("233604007", "Pneumonia"),
    "stroke": Reason("230690007", "Cerebrovascular accident"),
    "headache": Reason("25064002", "Headache"),
    "fracture": Reason("125605004", "Fracture of bone"),
    "breast_lump": Reason("89164003", "Breast lump"),
    "liver_lesion": Reason("300331000", "Lesion of liver"),
    "lung_cancer": Reason("93880001", "Primary malignant neoplasm of lung"),
    "knee_pain": Reason("30989003", "Knee pain"),
}


@dataclass(frozen=True)
class Detail:
    """Image matrix sizes for one size class (smaller for tests and for scale runs)."""

    ct_matrix: int
    ct_slice: float
    mr_matrix: int
    mr_slices: int
    cr_matrix: int
    dx_pixel: float
    us_shape: tuple[int, int]
    us_frames: int
    pt_matrix: int


COMPACT = Detail(128, 10.0, 128, 12, 512, 0.4, (192, 256), 8, 64)
STANDARD = Detail(256, 5.0, 256, 16, 1024, 0.3, (384, 512), 16, 128)


@dataclass(frozen=True)
class SizeSpec:
    """A size class: at least this many patients and studies, at this detail."""

    patients: int
    studies: int
    detail: Detail


SIZES: dict[str, SizeSpec] = {
    "small": SizeSpec(9, 10, COMPACT),
    "default": SizeSpec(40, 80, STANDARD),
    "medium": SizeSpec(150, 300, STANDARD),
    "large": SizeSpec(700, 1500, COMPACT),
}


@dataclass(frozen=True)
class PatientPlan:
    """Demographics (PS3.3 C.7.1.1) and body habitus of one patient."""

    patient_id: str
    name: str
    birth_date: dt.date
    sex: str
    weight_kg: float
    height_m: float
    anatomy_seed: int

    def as_json(self) -> dict[str, str]:
        """The manifest entry."""
        return {
            "PatientID": self.patient_id,
            "IssuerOfPatientID": ISSUER,
            "PatientName": self.name,
            "PatientBirthDate": self.birth_date.strftime("%Y%m%d"),
            "PatientSex": self.sex,
        }


@dataclass(frozen=True)
class SeriesPlan:
    """One series to generate.

    Attributes
    ----------
    kind : str
        Generator key (``ct_chest``, ``mr_brain``, ``cr_chest``, ``us_cine`` …).
    params : dict
        Kind-specific parameters (view, sequence, geometry, source series …).
    """

    uid: str
    number: int
    modality: str
    description: str
    body_part: str
    kind: str
    sop_class_uid: str
    transfer_syntax: str
    n_instances: int
    frame_of_reference_uid: str | None = None
    laterality: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def instance_uid(self, index: int) -> str:
        """SOP Instance UID of the *index*-th (0-based) instance."""
        return uid_for(self.uid, "instance", index)

    def as_json(self) -> dict[str, Any]:
        """The manifest entry."""
        return {
            "SeriesInstanceUID": self.uid,
            "Modality": self.modality,
            "SeriesNumber": self.number,
            "SeriesDescription": self.description,
            "BodyPartExamined": self.body_part,
            "NumberOfInstances": self.n_instances,
            "SOPClassUID": self.sop_class_uid,
        }


@dataclass(frozen=True)
class StudyPlan:
    """One study (PS3.3 C.7.2.1) with its reason and series."""

    uid: str
    accession: str
    study_id: str
    date: dt.date
    time: dt.time
    patient: PatientPlan
    description: str
    body_part: str
    reason: Reason
    series: tuple[SeriesPlan, ...]
    findings: dict[str, Any] = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        """Modalities in study, in series order without repeats."""
        return list(dict.fromkeys(s.modality for s in self.series))

    def as_json(self) -> dict[str, Any]:
        """The manifest entry."""
        return {
            "StudyInstanceUID": self.uid,
            "AccessionNumber": self.accession,
            "StudyDate": self.date.strftime("%Y%m%d"),
            "StudyTime": self.time.strftime("%H%M%S"),
            "PatientID": self.patient.patient_id,
            "StudyDescription": self.description,
            "ModalitiesInStudy": self.modalities,
            "BodyPartExamined": self.body_part,
            "reason": self.reason.as_json(),
            "series": [s.as_json() for s in self.series],
        }


@dataclass(frozen=True)
class CohortPlan:
    """Everything the generator will write."""

    seed: int
    size: str
    patients: tuple[PatientPlan, ...]
    studies: tuple[StudyPlan, ...]

    @property
    def detail(self) -> Detail:
        """Matrix sizes for this size class."""
        return SIZES[self.size].detail


# ------------------------------------------------------------------------------- names

_FAMILY = [
    "Smith",
    "García",
    "Müller",
    "Rossi",
    "Nguyen",
    "Kowalski",
    "Okafor",
    "Jensen",
    "Dubois",
    "Silva",
    "Johansson",
    "Yılmaz",
    "Novák",
    "Papadopoulos",
    "O'Brien",
    "Tanaka",
    "Kim",
    "Fernández",
    "Schmidt",
    "Bianchi",
    "Martin",
    "Horvath",
    "Andersen",
    "Brown",
    "Wilson",
    "Ahmed",
    "Costa",
    "Virtanen",
    "Murphy",
    "Lefèvre",
    "Dąbrowski",
    "Ivanova",
    "Hughes",
    "Moreau",
    "Peeters",
    "Santos",
    "Walker",
    "Lindqvist",
    "Kaya",
    "Mendes",
]
_GIVEN_F = [
    "Anna",
    "Maria",
    "Sofia",
    "Emma",
    "Olivia",
    "Chloé",
    "Ingrid",
    "Aisha",
    "Mei",
    "Lucía",
    "Hannah",
    "Zoë",
    "Fatima",
    "Eva",
    "Grace",
    "Noor",
    "Agnieszka",
    "Yuki",
    "Amara",
    "Leila",
]
_GIVEN_M = [
    "James",
    "José",
    "Jürgen",
    "Marco",
    "Minh",
    "Piotr",
    "Chinedu",
    "Lars",
    "Pierre",
    "João",
    "Erik",
    "Emre",
    "Tomáš",
    "Nikos",
    "Liam",
    "Hiroshi",
    "Joon",
    "Ahmed",
    "Mikko",
    "Seán",
]


# ----------------------------------------------------------------------------- planning


class _Planner:
    """Builds the plan; holds the counters that make numbering and syntaxes deterministic."""

    def __init__(self, size: str, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.spec = SIZES[size]
        self.detail = self.spec.detail
        self.rng = random.Random(int(uid_for("rng", seed, size)[5:]) % (2**63))
        self.counters: dict[str, int] = {}
        self.accession = 1000
        self.used_names: set[str] = set()

    # -- helpers
    def uid(self, *parts: object) -> str:
        return uid_for(self.seed, self.size, *parts)

    def next(self, key: str) -> int:
        value = self.counters.get(key, 0)
        self.counters[key] = value + 1
        return value

    def syntax(self, kind: str, cycle: dict[int, str], period: int) -> str:
        """Pick a transfer syntax by rotating through *cycle* (index → syntax) per *kind*."""
        i = self.next(f"ts-{kind}")
        return cycle.get(i % period, TransferSyntax.EXPLICIT_LE)

    def patient(self, index: int, sex: str) -> PatientPlan:
        rng = self.rng
        for _ in range(1000):
            given = rng.choice(_GIVEN_F if sex == "F" else _GIVEN_M)
            family = rng.choice(_FAMILY)
            name = f"{family}^{given}"
            if name not in self.used_names:
                break
        self.used_names.add(name)
        birth = dt.date(1938, 1, 1) + dt.timedelta(days=rng.randrange(0, 365 * 62))
        height = round(rng.gauss(1.64 if sex == "F" else 1.77, 0.07), 2)
        bmi = rng.uniform(19.0, 33.0)
        return PatientPlan(
            patient_id=f"IKS{index + 1:05d}",
            name=name,
            birth_date=birth,
            sex=sex,
            weight_kg=round(bmi * height * height, 1),
            height_m=height,
            anatomy_seed=rng.randrange(2**31),
        )

    def study(
        self,
        patient: PatientPlan,
        date: dt.date,
        story: str,
        description: str,
        body_part: str,
        series: list[tuple[str, str, str, str, dict[str, Any]]],
        findings: dict[str, Any] | None = None,
    ) -> StudyPlan:
        """Make a study; *series* items are (kind, modality, description, body part, params)."""
        n = self.next("study")
        uid = self.uid("study", n)
        hour = self.rng.randrange(7, 19)
        time = dt.time(hour, self.rng.randrange(60), self.rng.randrange(60))
        self.accession += self.rng.randrange(1, 40)
        plans: list[SeriesPlan] = []
        for_uids: dict[str, str] = {}
        for number, (kind, modality, desc, part, params) in enumerate(series, start=1):
            params = dict(params)
            group = params.pop("frame_of_reference", f"for-{number}")
            for_uid = for_uids.setdefault(group, self.uid("study", n, "frame", group))
            plans.append(
                self.series(uid, number, kind, modality, desc, part, params, for_uid, plans)
            )
        return StudyPlan(
            uid=uid,
            accession=f"IKA{self.accession:07d}",
            study_id=f"S{n + 1:05d}",
            date=date,
            time=time,
            patient=patient,
            description=description,
            body_part=body_part,
            reason=REASONS[story],
            series=tuple(plans),
            findings=findings or {},
        )

    def series(
        self,
        study_uid: str,
        number: int,
        kind: str,
        modality: str,
        description: str,
        body_part: str,
        params: dict[str, Any],
        for_uid: str,
        earlier: list[SeriesPlan],
    ) -> SeriesPlan:
        d = self.detail
        laterality = params.pop("laterality", None)
        series_number = params.pop("series_number", number)
        ts = TransferSyntax.EXPLICIT_LE
        count = 1
        sop = ""
        has_for = True
        if kind.startswith("ct_"):
            sop = SOPClass.CT
            geom = _CT_GEOMETRY[kind]
            # the attenuation-correction CT of a PET/CT is a low-dose, coarser scan
            matrix = d.ct_matrix * 3 // 4 if kind == "ct_wholebody" else d.ct_matrix
            thickness = d.ct_slice
            count = round((geom["z"][1] - geom["z"][0]) / thickness) + 1
            params.update(
                matrix=matrix,
                pixel=geom["fov"] / matrix,
                thickness=thickness,
                z=geom["z"],
                center=geom["center"],
            )
            # about half the CT series RLE-compressed, and every low-dose PET-CT attenuation CT
            ts = (
                TransferSyntax.RLE
                if kind == "ct_wholebody"
                else self.syntax("ct", {1: TransferSyntax.RLE}, 2)
            )
        elif kind.startswith("mr_"):
            sop = SOPClass.MR
            geom = _MR_GEOMETRY[kind]
            params.update(
                matrix=d.mr_matrix,
                pixel=geom["fov"] / d.mr_matrix,
                slices=d.mr_slices,
                thickness=geom["thickness"],
                gap=geom["gap"],
                plane=params.get("plane", geom["plane"]),
                center=geom["center"],
            )
            count = d.mr_slices
            ts = self.syntax("mr", _HALF_COMPRESSED, 4)
        elif kind == "cr_chest":
            sop, has_for = SOPClass.CR, False
            params.update(matrix=d.cr_matrix, pixel=430.0 / d.cr_matrix)
            ts = self.syntax("cr", _HALF_COMPRESSED, 4)
        elif kind in {"dx_wrist", "dx_knee"}:
            sop, has_for = SOPClass.DX, False
            params.update(pixel=d.dx_pixel)
            ts = self.syntax("dx", _HALF_COMPRESSED, 4)
        elif kind == "us_cine":
            sop, has_for = SOPClass.US_MULTIFRAME, False
            params.update(shape=d.us_shape, frames=d.us_frames)
            # ultrasound systems store cine loops JPEG-compressed
            ts = TransferSyntax.JPEG_BASELINE
        elif kind == "us_still":
            sop, has_for = SOPClass.US, False
            params.update(shape=d.us_shape, frames=1)
            count = params.get("count", 2)
            ts = self.syntax("us", {1: TransferSyntax.RLE}, 2)
        elif kind == "pt_wholebody":
            sop = SOPClass.PT
            geom = _CT_GEOMETRY["ct_wholebody"]
            thickness = 4.0 if d is STANDARD else 10.0
            count = round((geom["z"][1] - geom["z"][0]) / thickness) + 1
            params.update(
                matrix=d.pt_matrix,
                pixel=600.0 / d.pt_matrix,
                thickness=thickness,
                z=geom["z"],
                center=geom["center"],
            )
        elif kind == "seg_lungs":
            sop = SOPClass.SEG
            source = earlier[params.pop("source") - 1]
            params.update(source=source)
            for_uid = source.frame_of_reference_uid or for_uid  # the masks lie on the CT grid
        elif kind == "sr_report":
            sop, has_for = SOPClass.COMPREHENSIVE_SR, False
            source = earlier[params.pop("source") - 1]
            params.update(source=source)
        else:  # pragma: no cover - programming error
            raise ValueError(kind)
        return SeriesPlan(
            uid=uid_for(study_uid, "series", number),
            number=series_number,
            modality=modality,
            description=description,
            body_part=body_part,
            kind=kind,
            sop_class_uid=sop,
            transfer_syntax=ts,
            n_instances=count,
            frame_of_reference_uid=for_uid if has_for else None,
            laterality=laterality,
            params=params,
        )


#: one in four JPEG 2000 lossless, one in four RLE, the rest native (for 2-D images)
_HALF_COMPRESSED = {1: TransferSyntax.JPEG2000_LOSSLESS, 3: TransferSyntax.RLE}

# Acquisition geometry in patient coordinates (mm): field of view, z range, in-plane centre.
_CT_GEOMETRY: dict[str, dict[str, Any]] = {
    "ct_chest": {"fov": 380.0, "z": (-235.0, 35.0), "center": (0.0, 15.0)},
    "ct_abdomen": {"fov": 400.0, "z": (-430.0, -170.0), "center": (0.0, 20.0)},
    "ct_wholebody": {"fov": 500.0, "z": (-580.0, 80.0), "center": (0.0, 20.0)},
    "ct_head": {"fov": 240.0, "z": (-60.0, 100.0), "center": (0.0, 0.0)},
}
_MR_GEOMETRY: dict[str, dict[str, Any]] = {
    "mr_brain": {
        "fov": 230.0,
        "thickness": 5.0,
        "gap": 2.5,
        "plane": "axial",
        "center": (0.0, 0.0, 10.0),
    },
    "mr_knee": {
        "fov": 160.0,
        "thickness": 3.0,
        "gap": 0.5,
        "plane": "sagittal",
        "center": (0.0, 8.0, 10.0),
    },
}


def _day(rng: random.Random, start: dt.date, end: dt.date) -> dt.date:
    return start + dt.timedelta(days=rng.randrange((end - start).days + 1))


_FIRST = dt.date(2016, 1, 4)
_LAST = dt.date(2024, 6, 28)


SeriesSpec = tuple[str, str, str, str, dict[str, Any]]


def _s(kind: str, modality: str, description: str, body_part: str, **params: Any) -> SeriesSpec:
    """A series to plan: generator kind, modality, description, body part, parameters."""
    return (kind, modality, description, body_part, params)


def _chest_xr(lateral: bool) -> list[SeriesSpec]:
    series = [_s("cr_chest", "CR", "Chest PA", "CHEST", view="PA")]
    if lateral:
        series.append(_s("cr_chest", "CR", "Chest lateral", "CHEST", view="LL"))
    return series


def _ct_chest(seg: bool) -> list[SeriesSpec]:
    series = [_s("ct_chest", "CT", "Thorax B70f lung", "CHEST", kernel="B70f", series_number=2)]
    if seg:
        series.append(
            _s("seg_lungs", "SEG", "Lung segmentation", "CHEST", source=1, series_number=300)
        )
    series.append(_s("sr_report", "SR", "CT chest report", "CHEST", source=1, series_number=900))
    return series


def _story_lung_nodule(pl: _Planner, p: PatientPlan) -> list[StudyPlan]:
    """A nodule seen on a chest radiograph, characterised by CT, followed up by CT."""
    rng = pl.rng
    side = rng.choice((-1, 1))
    centre = (side * rng.uniform(55, 95), rng.uniform(-40, 40), rng.uniform(-170, 0))
    radius = round(rng.uniform(3.5, 7.0), 1)
    first = _day(rng, _FIRST, dt.date(2023, 6, 1))
    found = {"nodule": (centre, radius)}
    studies = [pl.study(p, first, "lung_nodule", "XR CHEST PA", "CHEST", _chest_xr(False), found)]
    baseline = first + dt.timedelta(days=rng.randrange(5, 20))
    for visit, months in enumerate((0, rng.choice((3, 6, 12)))):
        finding = {"nodule": (centre, round(radius * (1.0 + 0.15 * visit * rng.random()), 1))}
        description = "CT CHEST WITHOUT CONTRAST" if visit == 0 else "CT CHEST NODULE FOLLOW-UP"
        date = baseline + dt.timedelta(days=30 * months + rng.randrange(5))
        series = _ct_chest(seg=visit == 0)
        studies.append(pl.study(p, date, "lung_nodule", description, "CHEST", series, finding))
    return studies


def _story_pneumonia(pl: _Planner, p: PatientPlan) -> list[StudyPlan]:
    """Consolidation on chest radiographs, resolving at follow-up."""
    rng = pl.rng
    side = rng.choice((-1, 1))
    centre = (side * rng.uniform(60, 85), rng.uniform(-20, 30), rng.uniform(-170, -110))
    day = _day(rng, _FIRST, _LAST)
    out = []
    for visit, (delay, size) in enumerate(((0, 40.0), (rng.randrange(35, 60), 12.0))):
        description = "XR CHEST PA AND LATERAL" if visit == 0 else "XR CHEST PA"
        out.append(
            pl.study(p, day + dt.timedelta(days=delay), "pneumonia", description, "CHEST",
                     _chest_xr(visit == 0), {"consolidation": (centre, size)})
        )  # fmt: skip
    return out


def _brain_series(with_dwi: bool) -> list[SeriesSpec]:
    series = [
        _s("mr_brain", "MR", "t1_se_sag", "HEAD", sequence="T1", plane="sagittal"),
        _s("mr_brain", "MR", "t2_tse_tra", "HEAD", sequence="T2"),
        _s("mr_brain", "MR", "t2_flair_tra", "HEAD", sequence="FLAIR"),
    ]
    if with_dwi:
        series.append(_s("mr_brain", "MR", "ep2d_diff_b1000_tra", "HEAD", sequence="DWI"))
    return series


def _story_stroke(pl: _Planner, p: PatientPlan) -> list[StudyPlan]:
    """Non-contrast head CT, then a stroke-protocol MR the next day."""
    rng = pl.rng
    finding = {"infarct_side": rng.choice((-1, 1))}
    day = _day(rng, _FIRST, _LAST)
    head_ct = [_s("ct_head", "CT", "Head H30s", "HEAD", kernel="H30s", series_number=2)]
    return [
        pl.study(p, day, "stroke", "CT HEAD WITHOUT CONTRAST", "HEAD", head_ct, finding),
        pl.study(p, day + dt.timedelta(days=1), "stroke", "MRI BRAIN STROKE PROTOCOL", "HEAD",
                 _brain_series(True), finding),
    ]  # fmt: skip


def _story_headache(pl: _Planner, p: PatientPlan) -> list[StudyPlan]:
    """A normal brain MR."""
    day = _day(pl.rng, _FIRST, _LAST)
    return [pl.study(p, day, "headache", "MRI BRAIN WITHOUT CONTRAST", "HEAD",
                     _brain_series(False), {"infarct_side": 0})]  # fmt: skip


def _story_fracture(pl: _Planner, p: PatientPlan) -> list[StudyPlan]:
    """Distal radius fracture on wrist radiographs, healing six weeks later."""
    rng = pl.rng
    side = rng.choice(("R", "L"))
    day = _day(rng, _FIRST, _LAST)
    out = []
    for visit, healing in enumerate((0.0, 0.7)):
        series = [
            _s("dx_wrist", "DX", f"Wrist PA {side}", "WRIST", view="PA", laterality=side),
            _s("dx_wrist", "DX", f"Wrist lateral {side}", "WRIST", view="LAT", laterality=side),
        ]
        date = day + dt.timedelta(days=42 * visit + rng.randrange(3))
        finding = {"fracture": True, "healing": healing, "side": side}
        out.append(pl.study(p, date, "fracture", "XR WRIST 2 VIEWS", "WRIST", series, finding))
    return out


def _story_breast_lump(pl: _Planner, p: PatientPlan) -> list[StudyPlan]:
    """A palpable lump examined by ultrasound, re-examined six months later."""
    rng = pl.rng
    side = rng.choice(("R", "L"))
    finding = {"lesion_radius": round(rng.uniform(6, 12), 1), "side": side}
    day = _day(rng, _FIRST, dt.date(2023, 12, 1))
    cine = _s("us_cine", "US", f"Breast {side} cine", "BREAST", scene="breast", laterality=side)
    stills = _s("us_still", "US", f"Breast {side} images", "BREAST", scene="breast",
                laterality=side, count=2)  # fmt: skip
    return [
        pl.study(p, day, "breast_lump", "US BREAST LIMITED", "BREAST", [cine, stills], finding),
        pl.study(p, day + dt.timedelta(days=180 + rng.randrange(10)), "breast_lump",
                 "US BREAST FOLLOW-UP", "BREAST", [cine], finding),
    ]  # fmt: skip


def _story_liver_lesion(pl: _Planner, p: PatientPlan) -> list[StudyPlan]:
    """A liver lesion found by ultrasound, characterised by CT, re-checked by ultrasound."""
    rng = pl.rng
    centre = (rng.uniform(-95, -40), rng.uniform(-10, 40), rng.uniform(-300, -240))
    finding = {"liver_lesion": (centre, round(rng.uniform(10, 18), 1))}
    day = _day(rng, _FIRST, dt.date(2023, 12, 1))
    us = [
        _s("us_cine", "US", "Liver cine", "ABDOMEN", scene="liver", color=True),
        _s("us_still", "US", "Liver images", "ABDOMEN", scene="liver", count=3),
    ]
    ct = [_s("ct_abdomen", "CT", "Abdomen PV B30f", "ABDOMEN", kernel="B30f", contrast=True,
             series_number=3)]  # fmt: skip
    return [
        pl.study(p, day, "liver_lesion", "US ABDOMEN COMPLETE", "ABDOMEN", us, finding),
        pl.study(p, day + dt.timedelta(days=rng.randrange(3, 15)), "liver_lesion",
                 "CT ABDOMEN WITH CONTRAST", "ABDOMEN", ct, finding),
        pl.study(p, day + dt.timedelta(days=90 + rng.randrange(20)), "liver_lesion",
                 "US LIVER FOLLOW-UP", "ABDOMEN", us[:1], finding),
    ]  # fmt: skip


def _story_lung_cancer(pl: _Planner, p: PatientPlan) -> list[StudyPlan]:
    """A lung mass: chest radiographs, chest CT with report, then FDG PET-CT staging."""
    rng = pl.rng
    side = rng.choice((-1, 1))
    centre = (side * rng.uniform(55, 85), rng.uniform(-30, 30), rng.uniform(-150, -30))
    finding = {"nodule": (centre, round(rng.uniform(12, 18), 1)), "hot": True}
    day = _day(rng, _FIRST, _LAST)
    petct = [
        _s("ct_wholebody", "CT", "CT AC B30f", "WHOLEBODY", kernel="B30f",
           frame_of_reference="petct", series_number=2),
        _s("pt_wholebody", "PT", "PET AC WB", "WHOLEBODY", frame_of_reference="petct",
           series_number=4),
    ]  # fmt: skip
    return [
        pl.study(p, day, "lung_cancer", "XR CHEST PA AND LATERAL", "CHEST", _chest_xr(True),
                 finding),
        pl.study(p, day + dt.timedelta(days=rng.randrange(3, 10)), "lung_cancer",
                 "CT CHEST WITHOUT CONTRAST", "CHEST", _ct_chest(seg=False), finding),
        pl.study(p, day + dt.timedelta(days=rng.randrange(14, 28)), "lung_cancer",
                 "PET-CT FDG SKULL BASE TO MID-THIGH", "WHOLEBODY", petct, finding),
    ]  # fmt: skip


def _story_knee_pain(pl: _Planner, p: PatientPlan) -> list[StudyPlan]:
    """Knee radiographs, then an MR showing effusion and, often, a meniscal tear."""
    rng = pl.rng
    side = rng.choice(("R", "L"))
    finding = {
        "tear": rng.random() < 0.7,
        "side": side,
        "effusion": round(rng.uniform(1.0, 2.2), 1),
    }
    day = _day(rng, _FIRST, _LAST)
    xr = [
        _s("dx_knee", "DX", f"Knee AP {side}", "KNEE", view="AP", laterality=side),
        _s("dx_knee", "DX", f"Knee lateral {side}", "KNEE", view="LAT", laterality=side),
    ]
    mr = [
        _s("mr_knee", "MR", "pd_tse_fs_sag", "KNEE", sequence="PDFS", laterality=side),
        _s("mr_knee", "MR", "t1_tse_sag", "KNEE", sequence="T1", laterality=side),
        _s("mr_knee", "MR", "pd_tse_fs_cor", "KNEE", sequence="PDFS", plane="coronal",
           laterality=side),
    ]  # fmt: skip
    return [
        pl.study(p, day, "knee_pain", "XR KNEE 2 VIEWS", "KNEE", xr, finding),
        pl.study(p, day + dt.timedelta(days=rng.randrange(7, 40)), "knee_pain",
                 f"MRI KNEE {side} WITHOUT CONTRAST", "KNEE", mr, finding),
    ]  # fmt: skip


# (story, builder, weight, sex or None for either)
_STORIES: list[
    tuple[str, Callable[[_Planner, PatientPlan], list[StudyPlan]], float, str | None]
] = [
    ("lung_nodule", _story_lung_nodule, 3, None),
    ("pneumonia", _story_pneumonia, 8, None),
    ("stroke", _story_stroke, 4, None),
    ("fracture", _story_fracture, 8, None),
    ("breast_lump", _story_breast_lump, 5, "F"),
    ("liver_lesion", _story_liver_lesion, 4, None),
    ("lung_cancer", _story_lung_cancer, 2, None),
    ("knee_pain", _story_knee_pain, 5, None),
    ("headache", _story_headache, 3, None),
]


def _quotas(patients: int, weights: list[float]) -> list[int]:
    """Patients per story, proportional to *weights* (largest remainder), each at least 1."""
    total = sum(weights)
    exact = [patients * w / total for w in weights]
    counts = [max(1, int(e)) for e in exact]
    order = sorted(range(len(weights)), key=lambda i: exact[i] - int(exact[i]), reverse=True)
    for i in order:
        if sum(counts) >= patients:
            break
        counts[i] += 1
    return counts


def plan_cohort(size: str = "default", seed: int = 42) -> CohortPlan:
    """Plan the cohort for *size* and *seed*.

    Patients are shared among the clinical stories in fixed proportions (every story at
    least once), in an order shuffled by the seed; more patients are added while the study
    count is below the size's minimum.

    Parameters
    ----------
    size : str
        ``small``, ``default``, ``medium`` or ``large``.
    seed : int
        Any integer; the same seed always gives the same plan.

    Returns
    -------
    CohortPlan

    Raises
    ------
    InvalidInputError
        If *size* is unknown or *seed* is not an integer.
    """
    if size not in SIZES:
        raise InvalidInputError(f"unknown sandbox size {size!r}; choose one of {', '.join(SIZES)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidInputError(f"sandbox seed {seed!r} is not an integer")
    pl = _Planner(size, seed)
    quotas = _quotas(pl.spec.patients, [w for _, _, w, _ in _STORIES])
    order = [i for i, n in enumerate(quotas) for _ in range(n)]
    pl.rng.shuffle(order)
    patients: list[PatientPlan] = []
    studies: list[StudyPlan] = []
    while order or len(studies) < pl.spec.studies:
        story = order.pop(0) if order else len(patients) % len(_STORIES)
        _name, build, _weight, sex = _STORIES[story]
        patient = pl.patient(len(patients), sex or pl.rng.choice("FM"))
        patients.append(patient)
        studies.extend(build(pl, patient))
    studies.sort(key=lambda s: (s.date, s.time, s.uid))
    return CohortPlan(seed=seed, size=size, patients=tuple(patients), studies=tuple(studies))
