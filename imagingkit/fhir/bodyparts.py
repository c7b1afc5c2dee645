"""Body Part Examined ⇄ SNOMED CT (DICOM PS3.16 Annex L, CID 4031).

FHIR ``ImagingStudy.series.bodySite`` is a SNOMED CT Coding; DICOM and idc-index use the
Body Part Examined (0018,0015) defined terms. The table holds the correspondences of
PS3.16 Annex L for the body parts imaging cohorts use most, including the older concept
ids some producers still write.
"""

from __future__ import annotations

__all__ = ["BODY_PART_BY_SNOMED", "SNOMED", "SNOMED_BY_BODY_PART", "body_part_of"]

SNOMED = "http://snomed.info/sct"

#: Body Part Examined defined term → SNOMED CT concept ids (the current one first).
SNOMED_BY_BODY_PART: dict[str, tuple[str, ...]] = {
    "ABDOMEN": ("818981001", "113345001"),
    "ABDOMENPELVIS": ("818982008",),
    "ANKLE": ("70258002",),
    "BRAIN": ("12738006",),
    "BREAST": ("76752008",),
    "CHEST": ("51185008", "43799004"),
    "CHESTABDOMEN": ("416550000",),
    "CHESTABDPELVIS": ("416775004",),
    "CSPINE": ("122494005",),
    "ELBOW": ("16953009", "127949000"),
    "EXTREMITY": ("66019005",),
    "FOOT": ("56459004",),
    "HAND": ("85562004",),
    "HEAD": ("69536005",),
    "HEADNECK": ("774007",),
    "HEART": ("80891009",),
    "HIP": ("24136001", "29836001"),
    "KIDNEY": ("64033007",),
    "KNEE": ("72696002",),
    "LIVER": ("10200004",),
    "LSPINE": ("122496007",),
    "LUNG": ("39607008",),
    "NECK": ("45048000",),
    "PELVIS": ("816092008", "12921003"),
    "PROSTATE": ("41216001",),
    "SHOULDER": ("16982005",),
    "SKULL": ("89546000",),
    "SPINE": ("421060004",),
    "THYROID": ("69748006",),
    "TSPINE": ("122495006",),
    "WHOLEBODY": ("38266002",),
    "WRIST": ("74670003", "8205005"),
}

#: SNOMED CT concept id → Body Part Examined defined term.
BODY_PART_BY_SNOMED: dict[str, str] = {
    code: term for term, codes in SNOMED_BY_BODY_PART.items() for code in codes
}


def body_part_of(code: str | None) -> str | None:
    """Return the Body Part Examined term of a SNOMED CT code (``None`` if unknown)."""
    return BODY_PART_BY_SNOMED.get(code) if code else None
