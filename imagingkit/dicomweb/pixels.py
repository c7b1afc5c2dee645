"""From Part-10 bytes to numpy: a lean path for native pixel data, pydicom for the rest.

A WADO-RS instance (PS3.18 §10.4.1.1.1) arrives as the bytes of a Part-10 file. For the
common case — little-endian native (uncompressed) pixel data, one sample per pixel, one
frame — :func:`decode_instance` reads only the few header attributes a volume needs with
imagingkit's fast header reader (:func:`imagingkit.dicomjson.read_dicom_json`) and returns
the stored values as a zero-copy :func:`numpy.frombuffer` view of the received bytes
(PS3.5 §8.1.1: native pixel data is a plain little-endian array). Everything else
(compressed transfer syntaxes, big-endian, multi-frame, colour, signed values narrower than
their container) is decoded by pydicom (:func:`pydicom.dcmread` + ``pixel_array``).

The Modality LUT (PS3.3 C.11.1) is :func:`imagingkit.render.lut.modality_lut`: this module
only asks it for the mapping once per distinct header (two probe values give the linear
rescale; a Modality LUT Sequence becomes a lookup table) and applies that mapping while
copying into the caller's output array, in the smallest exact dtype.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from imagingkit.dicomjson import dataset_to_dicom_json, read_dicom_json
from imagingkit.errors import InvalidDICOMError
from imagingkit.render.lut import modality_lut

__all__ = [
    "HEADER_TAGS",
    "DecodedInstance",
    "ModalityMapping",
    "NativeLayout",
    "decode_instance",
    "instance_pixels",
    "modality_mapping",
    "native_frames",
    "native_layout",
]

_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_IMPLICIT_LE = "1.2.840.10008.1.2"

#: Header attributes a volume needs (read by the fast path; PS3.3 C.7.6.2, C.7.6.3, C.11.1).
HEADER_TAGS = frozenset(
    {
        0x00080016,  # SOPClassUID
        0x00080018,  # SOPInstanceUID
        0x00080060,  # Modality
        0x00180050,  # SliceThickness
        0x00180088,  # SpacingBetweenSlices
        0x00200013,  # InstanceNumber
        0x00200032,  # ImagePositionPatient
        0x00200037,  # ImageOrientationPatient
        0x00200052,  # FrameOfReferenceUID
        0x00280002,  # SamplesPerPixel
        0x00280004,  # PhotometricInterpretation
        0x00280008,  # NumberOfFrames
        0x00280010,  # Rows
        0x00280011,  # Columns
        0x00280030,  # PixelSpacing
        0x00280100,  # BitsAllocated
        0x00280101,  # BitsStored
        0x00280103,  # PixelRepresentation
        0x00281052,  # RescaleIntercept
        0x00281053,  # RescaleSlope
        0x00281054,  # RescaleType
        0x00283000,  # ModalityLUTSequence
    }
)
#: What the fast reader is asked for: naming Pixel Data keeps it reading up to there, so
#: that it reports where the pixel data starts (``header_length``).
_FAST_TAGS = HEADER_TAGS | {0x7FE00010}
_TAG = struct.Struct("<HH")
_U32 = struct.Struct("<I")


def _first(header: dict[str, Any], key: str, default: Any = None) -> Any:
    entry = header.get(key)
    if not entry:
        return default
    values = entry.get("Value")
    return values[0] if values else default


def _floats(header: dict[str, Any], key: str) -> tuple[float, ...] | None:
    entry = header.get(key)
    values = entry.get("Value") if entry else None
    if not values:
        return None
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None


@dataclass
class DecodedInstance:
    """One instance's stored pixel values and the header a volume needs.

    Attributes
    ----------
    pixels : numpy.ndarray
        Stored values (before the Modality LUT): ``(rows, columns)`` for one grey-scale
        frame, ``(frames, rows, columns)`` for several, with a trailing samples axis for
        colour. A read-only view of the received bytes on the fast path.
    header : dict
        The attributes of :data:`HEADER_TAGS` present, as DICOM JSON (PS3.18 Annex F).
    transfer_syntax : str
    dataset : pydicom.dataset.Dataset or None
        The parsed dataset when pydicom decoded the instance (None on the fast path).
    """

    pixels: np.ndarray
    header: dict[str, Any]
    transfer_syntax: str
    dataset: Dataset | None = None

    @property
    def sop_instance_uid(self) -> str:
        return str(_first(self.header, "00080018", ""))

    @property
    def instance_number(self) -> int | None:
        value = _first(self.header, "00200013")
        try:
            return int(value) if value is not None else None
        except (TypeError, ValueError):
            return None

    @property
    def position(self) -> tuple[float, ...] | None:
        """Image Position (Patient), PS3.3 C.7.6.2.1.1."""
        return _floats(self.header, "00200032")

    @property
    def orientation(self) -> tuple[float, ...] | None:
        """Image Orientation (Patient): row then column direction cosines."""
        return _floats(self.header, "00200037")

    @property
    def pixel_spacing(self) -> tuple[float, ...] | None:
        """Pixel Spacing: between rows, then between columns (mm)."""
        return _floats(self.header, "00280030")

    @property
    def photometric(self) -> str:
        return str(_first(self.header, "00280004", "MONOCHROME2")).strip().upper()

    @property
    def bits_stored(self) -> int | None:
        value = _first(self.header, "00280101")
        return int(value) if value else None

    @property
    def grey(self) -> bool:
        return self.photometric in ("MONOCHROME1", "MONOCHROME2")


@dataclass(frozen=True)
class NativeLayout:
    """Where a single-frame native Pixel Data value lies in a Part-10 byte string.

    Attributes
    ----------
    header : dict
        The :data:`HEADER_TAGS` present, as DICOM JSON.
    transfer_syntax : str
    dtype : numpy.dtype
        Little-endian stored values (PS3.5 §8.1.1).
    shape : tuple of int
        ``(rows, columns)``.
    start : int
        Offset of the first pixel byte.
    length : int
        The Pixel Data element's value length (at least ``rows × columns × itemsize``).
    """

    header: dict[str, Any]
    transfer_syntax: str
    dtype: np.dtype[Any]
    shape: tuple[int, int]
    start: int
    length: int

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * self.dtype.itemsize


def native_layout(prefix: bytes) -> NativeLayout | None:
    """Locate native pixel data from the first bytes of a Part-10 instance.

    *prefix* must hold the whole header and the Pixel Data element's own header; the
    pixel values themselves need not be there. Returns None when the lean path does not
    apply (compressed, big-endian, multi-frame, colour, a Modality LUT Sequence, ...)
    or *prefix* is too short to tell.

    Raises
    ------
    InvalidDICOMError
        If the bytes are not DICOM.
    """
    try:
        head = read_dicom_json(prefix, only=_FAST_TAGS)
    except InvalidDICOMError as exc:
        if "truncated" in str(exc):
            return None
        raise
    syntax, header, offset = head.transfer_syntax_uid, head.dataset, head.header_length
    if offset is None or syntax not in (_EXPLICIT_LE, _IMPLICIT_LE):
        return None
    if (header.get("00283000") or {}).get("Value"):
        return None
    samples = int(_first(header, "00280002", 1) or 1)
    frames = int(_first(header, "00280008", 1) or 1)
    rows, columns = _first(header, "00280010"), _first(header, "00280011")
    bits = _first(header, "00280100")
    signed = _first(header, "00280103", 0) == 1
    # As pydicom (correct_unused_bits=False), bits above Bits Stored are kept as sent.
    if samples != 1 or frames != 1 or not rows or not columns or bits not in (8, 16, 32):
        return None
    if offset + 12 > len(prefix) or _TAG.unpack_from(prefix, offset) != (0x7FE0, 0x0010):
        return None
    if syntax == _IMPLICIT_LE:
        length, start = _U32.unpack_from(prefix, offset + 4)[0], offset + 8
    else:
        if prefix[offset + 4 : offset + 6] not in (b"OW", b"OB"):
            return None
        length, start = _U32.unpack_from(prefix, offset + 8)[0], offset + 12
    itemsize = int(bits) // 8
    if length == 0xFFFFFFFF or length < int(rows) * int(columns) * itemsize:
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{itemsize}")
    return NativeLayout(header, syntax, dtype, (int(rows), int(columns)), start, length)


def decode_instance(payload: bytes) -> DecodedInstance:
    """Decode the pixel data of one Part-10 instance (PS3.10 §7) to stored values.

    Parameters
    ----------
    payload : bytes
        The instance as received (one part of a WADO-RS answer, or a file's bytes).

    Returns
    -------
    DecodedInstance

    Raises
    ------
    InvalidDICOMError
        If the bytes are not DICOM, carry no pixel data, or cannot be decoded with the
        installed decoders; the message says which.
    """
    layout = native_layout(payload)
    if layout is not None and layout.start + layout.nbytes <= len(payload):
        view = np.frombuffer(
            payload, layout.dtype, layout.nbytes // layout.dtype.itemsize, layout.start
        )
        return DecodedInstance(view.reshape(layout.shape), layout.header, layout.transfer_syntax)
    return _decode_with_pydicom(payload)


def _header_json(ds: Dataset) -> dict[str, Any]:
    """The :data:`HEADER_TAGS` of *ds* as DICOM JSON."""
    small = Dataset()
    for tag in HEADER_TAGS:
        if tag in ds:
            small.add(ds[tag])
    return dataset_to_dicom_json(small)


def _decode_with_pydicom(payload: bytes) -> DecodedInstance:
    try:
        ds = pydicom.dcmread(io.BytesIO(payload), force=True)
    except Exception as exc:  # pydicom raises many types for malformed input
        raise InvalidDICOMError(f"not a readable DICOM instance: {exc}") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise InvalidDICOMError(
            f"instance {ds.get('SOPInstanceUID', '?')} has no pixel data (not an image)"
        )
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # decoder plugins raise many types
        syntax = ds.file_meta.get("TransferSyntaxUID", "?") if hasattr(ds, "file_meta") else "?"
        raise InvalidDICOMError(
            f"cannot decode the pixel data of {ds.get('SOPInstanceUID', '?')} "
            f"(transfer syntax {syntax}): {exc}"
        ) from None
    header = _header_json(ds)
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    return DecodedInstance(np.asarray(pixels), header, syntax, ds)


# --------------------------------------------------------------------------- modality LUT


@dataclass(frozen=True)
class ModalityMapping:
    """The Modality LUT of one header, as a linear rescale or a lookup table (PS3.3 C.11.1).

    Attributes
    ----------
    slope, intercept : float
        Output = stored × slope + intercept (identity when the header has neither).
    table : numpy.ndarray or None
        For a Modality LUT Sequence: output values for stored values ``first``,
        ``first + 1``, …
    first : int
        The stored value mapped by ``table[0]``.
    """

    slope: float = 1.0
    intercept: float = 0.0
    table: np.ndarray | None = field(default=None, compare=False)
    first: int = 0

    @property
    def integral(self) -> bool:
        """True when integer stored values map to integers (slope 1, whole intercept)."""
        return self.table is None and self.slope == 1.0 and float(self.intercept).is_integer()

    def output_dtype(self, stored: np.dtype[Any], bits_stored: int | None = None) -> np.dtype[Any]:
        """The smallest dtype holding every output value exactly (float32 otherwise).

        The range of stored values comes from *bits_stored* (PS3.3 C.7.6.3.1.1) when
        given, else from the stored dtype.
        """
        if self.table is not None or not self.integral or stored.kind not in "iu":
            return np.dtype(np.float32)
        info = np.iinfo(stored)
        lo, hi = float(info.min), float(info.max)
        if bits_stored and 0 < bits_stored < info.bits:
            lo = -(2.0 ** (bits_stored - 1)) if stored.kind == "i" else 0.0
            hi = 2.0 ** (bits_stored - (1 if stored.kind == "i" else 0)) - 1
        lo, hi = lo + self.intercept, hi + self.intercept
        for candidate in (np.int16, np.int32):
            limits = np.iinfo(candidate)
            if limits.min <= lo and hi <= limits.max:
                return np.dtype(candidate)
        return np.dtype(np.float64)

    def apply(self, stored: np.ndarray, out: np.ndarray) -> None:
        """Write the mapped values of *stored* into *out* (same shape)."""
        if self.table is not None:
            index = stored.astype(np.int64) - self.first
            np.clip(index, 0, len(self.table) - 1, out=index)
            np.take(self.table, index, out=out, mode="clip")
            return
        np.copyto(out, stored, casting="unsafe")
        if self.slope != 1.0:
            out *= self.slope
        if self.intercept != 0.0:
            out += out.dtype.type(self.intercept)


@lru_cache(maxsize=256)
def _linear(slope: str | None, intercept: str | None) -> ModalityMapping:
    ds = Dataset()
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    probe = modality_lut(np.array([0, 1]), ds)
    return ModalityMapping(float(probe[1] - probe[0]), float(probe[0]))


def modality_mapping(decoded: DecodedInstance) -> ModalityMapping:
    """Return the Modality LUT of *decoded*, computed by :func:`render.lut.modality_lut`.

    Colour images and images without a Modality LUT get the identity.
    """
    if not decoded.grey:
        return ModalityMapping()
    header = decoded.header
    if header.get("00283000", {}).get("Value"):
        ds = decoded.dataset
        if ds is None:
            raise InvalidDICOMError("a Modality LUT Sequence needs the full dataset")
        stored = decoded.pixels
        lo, hi = int(stored.min()), int(stored.max())
        table = modality_lut(np.arange(lo, hi + 1, dtype=np.int64), ds).astype(np.float32)
        return ModalityMapping(table=table, first=lo)
    slope = _first(header, "00281053")
    intercept = _first(header, "00281052")
    return _linear(
        None if slope is None else str(slope), None if intercept is None else str(intercept)
    )


def instance_pixels(ds: Dataset | bytes) -> np.ndarray:
    """Decode an instance to numpy with the Modality LUT applied (PS3.3 C.11.1).

    Parameters
    ----------
    ds : pydicom.dataset.Dataset or bytes
        A dataset with pixel data, or the bytes of a Part-10 instance.

    Returns
    -------
    numpy.ndarray
        Grey-scale: values in the modality's units (e.g. Hounsfield units for CT), int16 or
        int32 when the rescale is an integer shift, float32 otherwise; ``(rows, columns)``,
        or ``(frames, rows, columns)`` for multi-frame. Colour: the decoded values
        (RGB after pydicom's YCbCr conversion), unchanged.

    Raises
    ------
    InvalidDICOMError
        If there is no pixel data or it cannot be decoded.
    """
    if isinstance(ds, (bytes, bytearray, memoryview)):
        decoded = decode_instance(bytes(ds))
    else:
        if "PixelData" not in ds and "FloatPixelData" not in ds:
            raise InvalidDICOMError(
                f"instance {ds.get('SOPInstanceUID', '?')} has no pixel data (not an image)"
            )
        try:
            pixels = np.asarray(ds.pixel_array)
        except Exception as exc:  # decoder plugins raise many types
            raise InvalidDICOMError(f"cannot decode the pixel data: {exc}") from None
        decoded = DecodedInstance(pixels, _header_json(ds), "", ds)
    if not decoded.grey:
        return decoded.pixels
    mapping = modality_mapping(decoded)
    dtype = mapping.output_dtype(decoded.pixels.dtype, decoded.bits_stored)
    out = np.empty(decoded.pixels.shape, dtype)
    mapping.apply(decoded.pixels, out)
    return out


# --------------------------------------------------------------------------- frames

#: Photometric interpretations whose native frames are the values ``pixel_array`` gives
#: (no colour-space conversion; PS3.3 C.7.6.3.1.2). YBR frames go through pydicom.
_AS_SENT = frozenset({"MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR"})


def native_frames(payloads: list[bytes], header: dict[str, Any]) -> np.ndarray | None:
    """Native frames (PS3.18 §10.4.1.1.4 ``application/octet-stream``) → numpy.

    Each payload is one frame of uncompressed little-endian pixel data (PS3.5 §8.1.1,
    as WADO-RS sends frames in Explicit VR Little Endian, PS3.18 §8.7.3.5.2), laid out by
    *header* (the instance's DICOM JSON metadata). The Modality LUT is applied as
    :func:`instance_pixels` applies it, so the frames equal that function's output (and
    pydicom's ``pixel_array`` after the Modality LUT) for the same frames.

    Parameters
    ----------
    payloads : list of bytes
        The frames' pixel bytes, in order (a trailing pad byte is allowed).
    header : dict
        DICOM JSON of the instance (Rows, Columns, Bits Allocated/Stored, Pixel
        Representation, Samples per Pixel, Planar Configuration, Photometric
        Interpretation, Rescale Slope/Intercept).

    Returns
    -------
    numpy.ndarray or None
        ``(frames, rows, columns)``, with a trailing samples axis for colour; None when
        these bytes cannot be read from the header alone (YBR colour, a Modality LUT
        Sequence, signed values narrower than their container, bit-packed or
        compressed data, a size that does not fit): decode the instance instead.
    """
    rows, columns = _first(header, "00280010"), _first(header, "00280011")
    bits, stored = _first(header, "00280100"), _first(header, "00280101")
    samples = int(_first(header, "00280002", 1) or 1)
    signed = _first(header, "00280103", 0) == 1
    photometric = str(_first(header, "00280004", "MONOCHROME2")).strip().upper()
    if not rows or not columns or bits not in (8, 16, 32) or samples not in (1, 3):
        return None
    if photometric not in _AS_SENT or (header.get("00283000") or {}).get("Value"):
        return None
    if signed and stored and int(stored) < int(bits):
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{int(bits) // 8}")
    count = int(rows) * int(columns) * samples
    if not payloads or any(not 0 <= len(p) - count * dtype.itemsize <= 1 for p in payloads):
        return None
    planar = _first(header, "00280006", 0) == 1
    frames: list[np.ndarray] = []
    for payload in payloads:
        values = np.frombuffer(payload, dtype, count)
        if samples == 1:
            frames.append(values.reshape(int(rows), int(columns)))
        elif planar:
            frames.append(values.reshape(samples, int(rows), int(columns)).transpose(1, 2, 0))
        else:
            frames.append(values.reshape(int(rows), int(columns), samples))
    stack = np.stack(frames)
    decoded = DecodedInstance(stack, header, _EXPLICIT_LE)
    if not decoded.grey:
        return stack
    mapping = modality_mapping(decoded)
    out = np.empty(stack.shape, mapping.output_dtype(stack.dtype, decoded.bits_stored))
    mapping.apply(stack, out)
    return out
