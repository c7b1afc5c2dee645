"""Information-object modules shared by every generated SOP instance (PS3.3 Annex C).

Each function fills one module (or a closely related group) of a :class:`pydicom.Dataset`
from the cohort plan, so that all IODs written by the sandbox agree on patient, study,
series and equipment identity. :func:`write_part10` adds the File Meta Information
(PS3.10 §7.1) and writes the file deterministically: no clock, no random UIDs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID

from imagingkit.sandbox.cohort import SeriesPlan, StudyPlan, uid_for

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "SeriesWriter",
    "code_item",
    "da",
    "decimal_string",
    "equipment",
    "frame_of_reference",
    "general_image",
    "general_series",
    "image_plane",
    "patient_and_study",
    "sop_common",
    "tm",
    "write_part10",
]

IMPLEMENTATION_CLASS_UID = uid_for("imagingkit", "implementation-class")
IMPLEMENTATION_VERSION_NAME = "IMAGINGKIT_01"
MANUFACTURER = "imagingkit"
INSTITUTION = "imagingkit Sandbox Hospital"
REFERRING = ["Rivera^Ana^^Dr", "Okoye^Daniel^^Dr", "Lindgren^Karin^^Dr", "Bauer^Felix^^Dr"]


def da(value: dt.date) -> str:
    """DICOM DA value (PS3.5 §6.2)."""
    return value.strftime("%Y%m%d")


def tm(value: dt.time | dt.datetime) -> str:
    """DICOM TM value with whole seconds (PS3.5 §6.2)."""
    return value.strftime("%H%M%S")


def code_item(value: str, scheme: str, meaning: str, version: str | None = None) -> Dataset:
    """A Code Sequence Macro item (PS3.3 Table 8.8-1)."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    if version:
        item.CodingSchemeVersion = version
    item.CodeMeaning = meaning
    return item


def _age(birth: dt.date, on: dt.date) -> str:
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return f"{years:03d}Y"


def patient_and_study(ds: Dataset, study: StudyPlan) -> None:
    """Patient (C.7.1.1), General Study (C.7.2.1) and Patient Study (C.7.2.2) modules.

    The study's clinical reason goes into Reason For Performed Procedure Code Sequence
    (0040,1012) and Admitting Diagnoses Description, so an indexer can recover it.
    """
    patient = study.patient
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = "IMAGINGKIT-SANDBOX"
    ds.TypeOfPatientID = "TEXT"
    ds.PatientBirthDate = da(patient.birth_date)
    ds.PatientSex = patient.sex
    ds.StudyInstanceUID = study.uid
    ds.StudyDate = da(study.date)
    ds.StudyTime = tm(study.time)
    ds.ReferringPhysicianName = REFERRING[int(study.uid[-3:]) % len(REFERRING)]
    ds.StudyID = study.study_id
    ds.AccessionNumber = study.accession
    ds.StudyDescription = study.description
    reason = study.reason
    ds.ReasonForPerformedProcedureCodeSequence = DicomSequence(
        [code_item(reason.code, "SCT", reason.display)]
    )
    ds.PatientAge = _age(patient.birth_date, study.date)
    ds.PatientSize = f"{patient.height_m:.2f}"
    ds.PatientWeight = f"{patient.weight_kg:.1f}"
    ds.AdmittingDiagnosesDescription = reason.display


def general_series(
    ds: Dataset,
    study: StudyPlan,
    series: SeriesPlan,
    *,
    position: bool,
    image: bool = True,
    laterality: bool = True,
) -> None:
    """General Series module (C.7.3.1), or the SR Document Series subset (C.17.1).

    *position* adds Patient Position (HFS); *image* False keeps only what a document series
    has; *laterality* False leaves Laterality to the image (Image Laterality in DX).
    """
    ds.Modality = series.modality
    ds.SeriesInstanceUID = series.uid
    ds.SeriesNumber = series.number
    ds.SeriesDescription = series.description
    ds.SeriesDate = da(study.date)
    ds.SeriesTime = tm(_later(study, 60 * series.number))
    if not image:
        return
    ds.BodyPartExamined = series.body_part
    ds.ProtocolName = study.description
    if series.laterality and laterality:
        ds.Laterality = series.laterality
    if position:
        ds.PatientPosition = "HFS"
    ds.OperatorsName = "Tech^Sandbox"


def _later(study: StudyPlan, seconds: int) -> dt.datetime:
    return dt.datetime.combine(study.date, study.time) + dt.timedelta(seconds=seconds)


def equipment(ds: Dataset, model: str, *, station: str = "SANDBOX01") -> None:
    """General Equipment module (C.7.5.1) plus the Enhanced General Equipment attributes."""
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = INSTITUTION
    ds.StationName = station
    ds.ManufacturerModelName = model
    ds.DeviceSerialNumber = "IK-0001"
    ds.SoftwareVersions = "imagingkit sandbox 1"


def frame_of_reference(ds: Dataset, series: SeriesPlan) -> None:
    """Frame of Reference module (C.7.4.1)."""
    assert series.frame_of_reference_uid is not None
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""


def general_image(
    ds: Dataset,
    study: StudyPlan,
    series: SeriesPlan,
    index: int,
    image_type: Sequence[str],
    *,
    lossy: bool = False,
) -> None:
    """General Image (C.7.6.1) and acquisition date/time attributes."""
    ds.InstanceNumber = index + 1
    ds.ImageType = list(image_type)
    when = _later(study, 60 * series.number + 2 * index)
    ds.ContentDate = da(when.date())
    ds.ContentTime = tm(when)
    ds.AcquisitionDate = da(study.date)
    ds.AcquisitionTime = tm(_later(study, 60 * series.number))
    ds.AcquisitionNumber = 1
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "01" if lossy else "00"


def image_plane(
    ds: Dataset,
    position: Sequence[float],
    orientation: Sequence[float],
    spacing: tuple[float, float],
    thickness: float,
) -> None:
    """Image Plane module (C.7.6.2): position of the first pixel, direction cosines, spacing.

    *spacing* is (between rows, between columns) in mm.
    """
    ds.ImagePositionPatient = [decimal_string(v) for v in position]
    ds.ImageOrientationPatient = [decimal_string(v) for v in orientation]
    ds.PixelSpacing = [decimal_string(spacing[0]), decimal_string(spacing[1])]
    ds.SliceThickness = decimal_string(thickness)
    normal = (
        orientation[1] * orientation[5] - orientation[2] * orientation[4],
        orientation[2] * orientation[3] - orientation[0] * orientation[5],
        orientation[0] * orientation[4] - orientation[1] * orientation[3],
    )
    ds.SliceLocation = decimal_string(sum(p * n for p, n in zip(position, normal, strict=True)))


def decimal_string(value: float) -> str:
    """A decimal string of at most 16 characters (PS3.5 §6.2 DS)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    if text in {"-0", ""}:
        text = "0"
    return text[:16]


def sop_common(ds: Dataset, study: StudyPlan, sop_class: str, sop_instance: str) -> None:
    """SOP Common module (C.12.1); UTF-8 character set for the names with diacritics."""
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.InstanceCreationDate = da(study.date)
    ds.InstanceCreationTime = tm(study.time)
    ds.InstanceCreatorUID = IMPLEMENTATION_CLASS_UID
    ds.TimezoneOffsetFromUTC = "+0000"


def _file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    meta.SourceApplicationEntityTitle = "IMAGINGKIT"
    return meta


def write_part10(ds: Dataset, path: Path, transfer_syntax: str) -> int:
    """Write *ds* as a DICOM Part-10 file (PS3.10 §7) and return its size in bytes."""
    ds.file_meta = _file_meta(ds.SOPClassUID, ds.SOPInstanceUID, transfer_syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path.stat().st_size


class SeriesWriter:
    """Writes the instances of a series that share most attributes, quickly.

    The *template*'s elements are encoded once (Explicit VR Little Endian, the data set
    encoding of every transfer syntax the sandbox writes); each instance then only encodes
    the elements it adds or overrides, and the file is assembled in tag order with its own
    File Meta Information (PS3.10 §7.1). The result is the same Part-10 file pydicom
    would write, ten times faster for a long series.
    """

    def __init__(self, template: Dataset, transfer_syntax: str) -> None:
        self.transfer_syntax = transfer_syntax
        self.sop_class = str(template.SOPClassUID)
        self.encodings = convert_encodings(template.get("SpecificCharacterSet", "ISO_IR 6"))
        self.chunks = {int(elem.tag): self._encode(elem) for elem in template}

    def _encode(self, elem: Any) -> bytes:
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = False
        write_data_element(fp, elem, self.encodings)
        return fp.getvalue()

    def write(self, instance: Dataset, path: Path) -> int:
        """Write the template plus *instance*'s elements to *path*; return the size."""
        chunks = dict(self.chunks)
        for elem in instance:
            chunks[int(elem.tag)] = self._encode(elem)
        meta = DicomBytesIO()
        meta.is_little_endian = True
        meta.is_implicit_VR = False
        write_file_meta_info(
            meta, _file_meta(self.sop_class, instance.SOPInstanceUID, self.transfer_syntax)
        )
        data = b"".join(
            [b"\0" * 128, b"DICM", meta.getvalue(), *(chunks[t] for t in sorted(chunks))]
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return len(data)


def referenced(sop_class: str, sop_instance: str, **extra: Any) -> Dataset:
    """A Referenced SOP item (SOP Instance Reference Macro, PS3.3 Table 10-11)."""
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    for key, value in extra.items():
        setattr(item, key, value)
    return item
