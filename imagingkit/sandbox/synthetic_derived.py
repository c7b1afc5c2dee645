"""Derived objects of a CT study: Segmentation (PS3.3 A.51) and Comprehensive SR (A.35.3).

* :func:`generate_seg` writes a binary Segmentation of the right and left lungs of a CT
  series: one bit-packed frame per (segment, slice) where the segment is present, with the
  Multi-frame Functional Groups (C.7.6.16) and Dimension (C.7.6.17) modules naming the
  segment and plane position of each frame, the source CT slice of each frame, and the CT's
  Frame of Reference — the masks lie exactly on the CT voxels because both come from the
  same phantom.
* :func:`generate_sr` writes the radiology report of the CT as a Comprehensive SR following
  TID 2000 (Basic Diagnostic Imaging Report): history, a coded finding, the nodule diameter
  as a NUM item inferred from the CT slice that shows it, impression and recommendation.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import pack_bits
from pydicom.sequence import Sequence as DicomSequence

from imagingkit.sandbox.cohort import SeriesPlan, SOPClass, StudyPlan, uid_for
from imagingkit.sandbox.phantoms import Tissue
from imagingkit.sandbox.synthetic_images import (
    geometry_of,
    instance_path,
    phantom_for,
    sample_labels,
)
from imagingkit.sandbox.synthetic_modules import (
    code_item,
    da,
    decimal_string,
    equipment,
    general_series,
    patient_and_study,
    referenced,
    sop_common,
    tm,
    write_part10,
)

__all__ = ["generate_seg", "generate_sr"]

_LUNG = [Tissue.LUNG, Tissue.LUNG_VESSEL, Tissue.NODULE, Tissue.CONSOLIDATION]


def _when(study: StudyPlan, minutes: int) -> dt.datetime:
    return dt.datetime.combine(study.date, study.time) + dt.timedelta(minutes=minutes)


def generate_seg(study: StudyPlan, series: SeriesPlan, root: Path) -> int:
    """Write the lung Segmentation of the CT series named by ``params["source"]``."""
    source: SeriesPlan = series.params["source"]
    g = geometry_of(source)
    labels = sample_labels(phantom_for(study, source), g)
    lung = np.isin(labels, [int(t) for t in _LUNG])
    xs = g.origin[0] + np.arange(g.cols) * g.spacing[1]
    segments = [
        (1, "Right lung", "24028007", "Right", lung & (xs < 0)[None, None, :], (50, 136, 189)),
        (2, "Left lung", "7771000", "Left", lung & (xs >= 0)[None, None, :], (244, 109, 67)),
    ]
    ds = Dataset()
    patient_and_study(ds, study)
    general_series(ds, study, series, position=False)
    ds.FrameOfReferenceUID = source.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    equipment(ds, "imagingkit phantom segmenter")
    when = _when(study, 20)
    ds.InstanceNumber = 1
    ds.ContentDate = da(when.date())
    ds.ContentTime = tm(when)
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.ContentLabel = "LUNGS"
    ds.ContentDescription = "Right and left lung"
    ds.ContentCreatorName = "imagingkit^sandbox"
    ds.SegmentationType = "BINARY"
    ds.LossyImageCompression = "00"
    segment_items = []
    for number, label, lat_code, lat_name, _, rgb in segments:
        item = Dataset()
        item.SegmentNumber = number
        item.SegmentLabel = label
        item.SegmentedPropertyCategoryCodeSequence = DicomSequence(
            [code_item("91723000", "SCT", "Anatomical Structure")]
        )
        prop = code_item("39607008", "SCT", "Lung")
        prop.SegmentedPropertyTypeModifierCodeSequence = DicomSequence(
            [code_item(lat_code, "SCT", lat_name)]
        )
        item.SegmentedPropertyTypeCodeSequence = DicomSequence([prop])
        item.SegmentAlgorithmType = "AUTOMATIC"
        item.SegmentAlgorithmName = "imagingkit phantom labels"
        algorithm = Dataset()
        algorithm.AlgorithmFamilyCodeSequence = DicomSequence(
            [code_item("123109", "DCM", "Manual Processing")]
        )
        algorithm.AlgorithmName = "imagingkit phantom labels"
        algorithm.AlgorithmVersion = "1"
        item.SegmentationAlgorithmIdentificationSequence = DicomSequence([algorithm])
        item.RecommendedDisplayCIELabValue = list(_cielab(rgb))
        segment_items.append(item)
    ds.SegmentSequence = DicomSequence(segment_items)

    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [decimal_string(g.spacing[0]), decimal_string(g.spacing[1])]
    measures.SliceThickness = decimal_string(g.thickness)
    measures.SpacingBetweenSlices = decimal_string(g.step)
    shared.PixelMeasuresSequence = DicomSequence([measures])
    orientation = Dataset()
    orientation.ImageOrientationPatient = [decimal_string(v) for v in g.orientation]
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])

    frames = []
    per_frame = []
    for number, _, _, _, mask, _ in segments:
        for k in range(g.n):
            if not mask[k].any():
                continue
            frames.append(mask[k])
            item = Dataset()
            content = Dataset()
            content.DimensionIndexValues = [number, k + 1]
            item.FrameContentSequence = DicomSequence([content])
            position = Dataset()
            position.ImagePositionPatient = [decimal_string(v) for v in g.position(k)]
            item.PlanePositionSequence = DicomSequence([position])
            seg_id = Dataset()
            seg_id.ReferencedSegmentNumber = number
            item.SegmentIdentificationSequence = DicomSequence([seg_id])
            derivation = Dataset()
            derivation.DerivationCodeSequence = DicomSequence(
                [code_item("113076", "DCM", "Segmentation")]
            )
            src = referenced(SOPClass.CT, source.instance_uid(k))
            src.PurposeOfReferenceCodeSequence = DicomSequence(
                [code_item("121322", "DCM", "Source image for image processing operation")]
            )
            derivation.SourceImageSequence = DicomSequence([src])
            item.DerivationImageSequence = DicomSequence([derivation])
            per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.NumberOfFrames = len(frames)

    organisation = uid_for(series.uid, "dimension-organization")
    org = Dataset()
    org.DimensionOrganizationUID = organisation
    ds.DimensionOrganizationSequence = DicomSequence([org])
    ds.DimensionOrganizationType = "3D"
    index_items = []
    for pointer, group, label in (
        (0x0062000B, 0x0062000A, "ReferencedSegmentNumber"),
        (0x00200032, 0x00209113, "ImagePositionPatient"),
    ):
        idx = Dataset()
        idx.DimensionOrganizationUID = organisation
        idx.DimensionIndexPointer = pointer
        idx.FunctionalGroupPointer = group
        idx.DimensionDescriptionLabel = label
        index_items.append(idx)
    ds.DimensionIndexSequence = DicomSequence(index_items)

    ref_series = Dataset()
    ref_series.SeriesInstanceUID = source.uid
    ref_series.ReferencedInstanceSequence = DicomSequence(
        [referenced(SOPClass.CT, source.instance_uid(k)) for k in range(g.n)]
    )
    ds.ReferencedSeriesSequence = DicomSequence([ref_series])

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = g.rows, g.cols
    ds.BitsAllocated = 1
    ds.BitsStored = 1
    ds.HighBit = 0
    ds.PixelRepresentation = 0
    stack = np.stack(frames) if frames else np.zeros((1, g.rows, g.cols), dtype=bool)
    ds.PixelData = pack_bits(stack.astype(np.uint8).ravel())
    sop_common(ds, study, SOPClass.SEG, series.instance_uid(0))
    return write_part10(ds, instance_path(root, study, series, 0), series.transfer_syntax)


def _cielab(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """sRGB to the DICOM-scaled CIELab triplet (PS3.3 C.10.7.1.1)."""
    c = np.array(rgb, dtype=float) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = m @ c / np.array([0.9505, 1.0, 1.089])
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    lab = (116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2]))
    return (
        round(lab[0] * 65535 / 100),
        round((lab[1] + 128) * 65535 / 255),
        round((lab[2] + 128) * 65535 / 255),
    )


# ------------------------------------------------------------------------------------ SR


def _item(relationship: str, value_type: str, concept: Dataset) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = DicomSequence([concept])
    return item


def _text(relationship: str, concept: Dataset, text: str) -> Dataset:
    item = _item(relationship, "TEXT", concept)
    item.TextValue = text
    return item


def _container(
    concept: Dataset, children: list[Dataset], relationship: str = "CONTAINS"
) -> Dataset:
    item = _item(relationship, "CONTAINER", concept)
    item.ContinuityOfContent = "SEPARATE"
    item.ContentSequence = DicomSequence(children)
    return item


def generate_sr(study: StudyPlan, series: SeriesPlan, root: Path) -> int:
    """Write the CT report of ``params["source"]`` as a Comprehensive SR (TID 2000)."""
    source: SeriesPlan = series.params["source"]
    g = geometry_of(source)
    centre, radius = study.findings.get("nodule", ((0.0, 0.0, -100.0), 0.0))
    k = int(np.argmin([abs(g.position(i)[2] - centre[2]) for i in range(g.n)]))
    diameter = round(2 * float(radius), 1)
    side = "right" if centre[0] < 0 else "left"
    lobe = "upper" if centre[2] > -70 else "lower"
    follow_up = "FOLLOW-UP" in study.description
    ds = Dataset()
    patient_and_study(ds, study)
    general_series(ds, study, series, position=False, image=False)
    ds.ReferencedPerformedProcedureStepSequence = DicomSequence([])
    equipment(ds, "imagingkit report writer")
    when = _when(study, 45)
    ds.InstanceNumber = 1
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "VERIFIED"
    ds.ContentDate = da(when.date())
    ds.ContentTime = tm(when)
    observer = Dataset()
    observer.VerifyingObserverName = "Sandbox^Radiologist^^Dr"
    observer.VerifyingObserverIdentificationCodeSequence = DicomSequence([])
    observer.VerifyingOrganization = "imagingkit Sandbox Hospital"
    observer.VerificationDateTime = when.strftime("%Y%m%d%H%M%S")
    ds.VerifyingObserverSequence = DicomSequence([observer])
    ds.PerformedProcedureCodeSequence = DicomSequence([])
    evidence_series = Dataset()
    evidence_series.SeriesInstanceUID = source.uid
    evidence_series.ReferencedSOPSequence = DicomSequence(
        [referenced(SOPClass.CT, source.instance_uid(i)) for i in range(g.n)]
    )
    evidence = Dataset()
    evidence.StudyInstanceUID = study.uid
    evidence.ReferencedSeriesSequence = DicomSequence([evidence_series])
    ds.CurrentRequestedProcedureEvidenceSequence = DicomSequence([evidence])

    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = DicomSequence(
        [code_item("18748-4", "LN", "Diagnostic imaging report")]
    )
    ds.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "2000"
    ds.ContentTemplateSequence = DicomSequence([template])

    language = _item(
        "HAS CONCEPT MOD",
        "CODE",
        code_item("121049", "DCM", "Language of Content Item and Descendants"),
    )
    language.ConceptCodeSequence = DicomSequence(
        [code_item("en-US", "RFC5646", "English (United States)")]
    )
    observer_name = _item(
        "HAS OBS CONTEXT", "PNAME", code_item("121008", "DCM", "Person Observer Name")
    )
    observer_name.PersonName = "Sandbox^Radiologist^^Dr"
    finding_code = _item("CONTAINS", "CODE", code_item("121071", "DCM", "Finding"))
    finding_code.ConceptCodeSequence = DicomSequence(
        [code_item(study.reason.code, "SCT", study.reason.display)]
    )
    measurement = _item("CONTAINS", "NUM", code_item("81827009", "SCT", "Diameter"))
    value = Dataset()
    value.NumericValue = f"{diameter:g}"
    value.MeasurementUnitsCodeSequence = DicomSequence([code_item("mm", "UCUM", "millimeter")])
    measurement.MeasuredValueSequence = DicomSequence([value])
    image = _item("INFERRED FROM", "IMAGE", code_item("121112", "DCM", "Source of Measurement"))
    image.ReferencedSOPSequence = DicomSequence([referenced(SOPClass.CT, source.instance_uid(k))])
    measurement.ContentSequence = DicomSequence([image])
    finding_text = (
        f"Solid nodule in the {side} {lobe} lobe measuring {diameter:g} mm (image {k + 1})."
        + (" Compared with the prior CT." if follow_up else "")
        + " No consolidation or pleural effusion. Heart size normal."
    )
    recommendation = (
        "Follow-up CT in 6-12 months (Fleischner Society 2017)."
        if diameter < 8
        else "Follow-up CT in 3 months or PET-CT (Fleischner Society 2017)."
    )
    ds.ContentSequence = DicomSequence(
        [
            language,
            observer_name,
            _container(
                code_item("121060", "DCM", "History"),
                [_text("CONTAINS", code_item("121060", "DCM", "History"), study.reason.display)],
            ),
            _container(
                code_item("121070", "DCM", "Findings"),
                [
                    _text("CONTAINS", code_item("121071", "DCM", "Finding"), finding_text),
                    finding_code,
                    measurement,
                ],
            ),
            _container(
                code_item("121072", "DCM", "Impressions"),
                [
                    _text(
                        "CONTAINS",
                        code_item("121073", "DCM", "Impression"),
                        f"{study.reason.display}, {diameter:g} mm, {side} {lobe} lobe.",
                    )
                ],
            ),
            _container(
                code_item("121074", "DCM", "Recommendations"),
                [_text("CONTAINS", code_item("121075", "DCM", "Recommendation"), recommendation)],
            ),
        ]
    )
    sop_common(ds, study, SOPClass.COMPREHENSIVE_SR, series.instance_uid(0))
    return write_part10(ds, instance_path(root, study, series, 0), series.transfer_syntax)
