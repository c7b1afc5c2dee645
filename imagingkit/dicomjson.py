"""The DICOM JSON model (PS3.18 Annex F.2): datasets and Part-10 files as JSON.

Two ways in, one encoding out:

* :func:`dataset_to_dicom_json` converts a :class:`pydicom.Dataset` (any file pydicom reads).
* :func:`read_dicom_json` reads a Part-10 file's header straight from its bytes. It is the
  fast path used to index folders (pydicom needs ~10 ms to convert a 250-element header,
  this reader well under one); whatever it does not handle (big-endian, deflated, unusual
  character sets, ambiguous implicit VRs, malformed encodings) is handed to pydicom and
  :func:`dataset_to_dicom_json`, so both give the same JSON for the same file.

Encoding rules (PS3.18 §F.2.2–F.2.7), applied identically by both paths:

* keys are the tag as eight upper-case hex digits; group-length elements ``(gggg,0000)``
  and the file meta group ``0002`` are left out;
* ``"Value"`` is absent when the element is empty; an empty component of a multi-valued
  string is ``null``;
* string components lose trailing spaces and NULs (leading spaces too for AE, AS, CS, DA, DS,
  DT, IS, TM and UI); LT, ST, UT and UR are never split on backslash;
* PN values are ``{"Alphabetic": …, "Ideographic": …, "Phonetic": …}`` objects, empty
  groups omitted (§F.2.2);
* IS and DS are JSON numbers, binary numbers likewise; a value that is not a finite
  number (``"1A"``, NaN, infinities) cannot be carried by JSON and becomes ``null``;
* AT values are ``"GGGGEEEE"`` strings;
* OB, OD, OF, OL, OV, OW and UN values are ``"InlineBinary"`` (base64) when at most
  *bulk_threshold* bytes long; longer ones become a ``"BulkDataURI"`` given by the
  *bulkdata_uri* callable, or are left out when there is none (§F.2.7).

Bulk data locations are identified by a *tag path*: the element's tag as eight hex digits,
preceded for nested elements by ``"<sequence tag>/<item index>/"``, e.g. ``"7FE00010"`` or
``"00540016/0/00181072"`` (item indices count from 0). :func:`parse_tag_path` and
:func:`find_element` turn such a path back into the element.
"""

from __future__ import annotations

import base64
import math
import mmap
import re
import struct
from collections.abc import Callable, Collection
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pydicom.datadict
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag

from imagingkit.errors import InvalidDICOMError, InvalidInputError

__all__ = [
    "DEFAULT_BULK_THRESHOLD",
    "BulkDataURIFactory",
    "DicomJsonHeader",
    "dataset_to_dicom_json",
    "find_element",
    "parse_tag_path",
    "read_dicom_json",
]

#: Values of binary VRs longer than this many bytes are bulk data (PS3.18 §F.2.7).
DEFAULT_BULK_THRESHOLD = 1024

#: Called with a tag path (see the module docstring); returns the element's BulkDataURI.
BulkDataURIFactory = Callable[[str], str]

DicomJson = dict[str, Any]

_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
_NUMBER_FORMATS.update({"SV": "q", "UV": "Q"})
_UNSPLIT_VRS = frozenset({"LT", "ST", "UT", "UR"})
#: string VRs whose JSON value is the cleaned text itself (not PN, IS, DS)
_SIMPLE_STRING_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DT", "LO", "SH", "TM", "UC", "UI", "UR", "LT", "ST", "UT"}
)
_STRIP_LEADING_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"})
_CHARSET_VRS = frozenset({"SH", "LO", "UC", "ST", "LT", "UT", "PN"})
_LONG_LENGTH_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})
_LONG_LENGTH_VRS |= {"SV", "UV"}
_KNOWN_VRS = frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF"}
    | {"OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN"}
    | {"UR", "US", "UT", "UV"}
)
#: explicit-VR bytes -> (VR, has a 4-byte length) (PS3.5 §7.1.2)
_VR_CODES = {vr.encode("ascii"): (vr, vr in _LONG_LENGTH_VRS) for vr in _KNOWN_VRS}
_TAG_KEYS: dict[int, str] = {}
_EXPLICIT_HEADER = struct.Struct("<HH2sH").unpack_from
_IMPLICIT_HEADER = struct.Struct("<HHI").unpack_from
_U32 = struct.Struct("<I").unpack_from
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
_PIXEL_REPRESENTATION = 0x00280103
#: Implicit-VR elements whose "US or SS" VR follows PixelRepresentation (PS3.5 §6.2, PS3.3 C.7.6.3).
_PIXEL_REP_TAGS = frozenset(
    {0x00280104, 0x00280105, 0x00280106, 0x00280107, 0x00280108, 0x00280109, 0x00280110}
    | {0x00280111, 0x00280120, 0x00281101, 0x00281102, 0x00281103}
    | {0x00283002, 0x00409211, 0x00409216}
)
#: Character sets the fast reader decodes itself; others go through pydicom (PS3.3 C.12.1.1.2).
_FAST_CHARSETS = {"": "latin_1", "ISO_IR 6": "latin_1", "ISO_IR 100": "latin_1"}
_FAST_CHARSETS["ISO_IR 192"] = "utf_8"
_DEFAULT_TEXT_ENCODING = "latin_1"
_TAG_PATH = re.compile(r"^[0-9A-Fa-f]{8}(/[0-9]{1,9}/[0-9A-Fa-f]{8})*$")


# --------------------------------------------------------------------------- values


def _clean(text: str, vr: str) -> str:
    text = text.rstrip(" \x00")
    return text.lstrip(" ") if vr in _STRIP_LEADING_VRS else text


def _number(text: str, vr: str) -> int | float | None:
    """Return an IS/DS component as a JSON number, or None if it is not a finite number."""
    try:
        if vr == "IS":
            return int(text)
        number = float(text)
    except ValueError:
        try:  # an IS written as "12.0" is still a number
            number = float(text)
        except ValueError:
            return None
    if not math.isfinite(number):
        return None
    if vr == "IS" or ("." not in text and "e" not in text and "E" not in text):
        return int(number) if number == int(number) else number
    return number


def _pn_object(text: str) -> dict[str, str] | None:
    groups = text.split("=")
    value = {
        name: group.rstrip(" ") for name, group in zip(_PN_GROUPS, groups, strict=False) if group
    }
    return value or None


def _string_value(text: str, vr: str) -> list[Any]:
    """Return the JSON "Value" array for a decoded string element (empty list if empty)."""
    parts = [text] if vr in _UNSPLIT_VRS else text.split("\\")
    values: list[Any] = []
    for part in parts:
        item = _clean(part, vr)
        if not item:
            values.append(None)
        elif vr == "PN":
            values.append(_pn_object(item))
        elif vr in ("IS", "DS"):
            values.append(_number(item, vr))
        else:
            values.append(item)
    if all(v is None for v in values):
        return []
    return values


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _bytes_entry(
    vr: str,
    data: bytes | bytearray | None,
    length: int,
    path: str,
    bulkdata_uri: BulkDataURIFactory | None,
    bulk_threshold: int | None,
) -> DicomJson | None:
    """Return the JSON for a binary element, or ``None`` if it is bulk data to leave out."""
    if bulk_threshold is not None and length > bulk_threshold:
        if bulkdata_uri is None:
            return None
        return {"vr": vr, "BulkDataURI": bulkdata_uri(path)}
    if not data:
        return {"vr": vr}
    return {"vr": vr, "InlineBinary": base64.b64encode(bytes(data)).decode("ascii")}


def _resolve_ambiguous_vr(vr: str, tag: int, pixel_representation: int | None) -> str | None:
    """Pick a concrete VR for an ambiguous dictionary VR, or ``None`` if it cannot be known."""
    if vr == "OB or OW":
        return "OW"
    if vr == "US or SS" and tag in _PIXEL_REP_TAGS and tag not in (0x00281101, 0x00281102):
        if pixel_representation is None:
            return None
        return "SS" if pixel_representation == 1 else "US"
    return None


def _dictionary_vr(tag: int) -> str:
    try:
        return str(pydicom.datadict.dictionary_VR(tag))
    except KeyError:
        return "UN"


def _with_path(prefix: str, tag: int) -> str:
    return f"{prefix}{tag:08X}"


def _tag_key(tag: int) -> str:
    key = _TAG_KEYS.get(tag)
    if key is None:
        key = f"{tag:08X}"
        if len(_TAG_KEYS) < 100_000:
            _TAG_KEYS[tag] = key
    return key


# --------------------------------------------------------------------------- pydicom path


def dataset_to_dicom_json(
    ds: Dataset,
    bulkdata_uri: BulkDataURIFactory | None = None,
    bulk_threshold: int | None = DEFAULT_BULK_THRESHOLD,
) -> DicomJson:
    """Convert a pydicom dataset to the DICOM JSON model (PS3.18 §F.2).

    Parameters
    ----------
    ds : pydicom.Dataset
        The dataset; its file meta information (group 0002) is not included.
    bulkdata_uri : callable, optional
        Called with the tag path of each binary value longer than *bulk_threshold*
        (see the module docstring); its result becomes the element's ``"BulkDataURI"``.
        Without it such values are left out.
    bulk_threshold : int or None
        Longest binary value (in bytes) written inline as base64; ``None`` inlines all.

    Returns
    -------
    dict
        ``{"GGGGEEEE": {"vr": …, "Value": [...]}, …}`` in tag order.
    """
    return _DatasetConverter(bulkdata_uri, bulk_threshold).convert(ds, "")


class _DatasetConverter:
    def __init__(self, bulkdata_uri: BulkDataURIFactory | None, bulk_threshold: int | None):
        self.bulkdata_uri = bulkdata_uri
        self.bulk_threshold = bulk_threshold

    def convert(self, ds: Dataset, prefix: str) -> DicomJson:
        out: DicomJson = {}
        pixel_representation = ds.get("PixelRepresentation")
        pixel_rep = pixel_representation if isinstance(pixel_representation, int) else None
        for tag in sorted(ds.keys()):
            if tag & 0xFFFF == 0 or tag >> 16 == 0x0002:
                continue
            try:
                elem = ds[tag]
            except Exception:  # undecodable value: fall back to its raw bytes
                entry = self._raw_entry(ds.get_item(tag), prefix, pixel_rep)
            else:
                entry = self._element(elem, prefix, pixel_rep)
            if entry is not None:
                out[f"{tag:08X}"] = entry
        return out

    def _vr(self, vr: str, tag: int, pixel_rep: int | None) -> str:
        if " or " in vr:
            return _resolve_ambiguous_vr(vr, tag, pixel_rep) or vr.split(" or ")[0]
        return vr

    def _element(self, elem: DataElement, prefix: str, pixel_rep: int | None) -> DicomJson | None:
        tag = int(elem.tag)
        vr = self._vr(str(elem.VR), tag, pixel_rep)
        value = elem.value
        path = _with_path(prefix, tag)
        if vr == "SQ":
            items = [self.convert(item, f"{path}/{i}/") for i, item in enumerate(value or [])]
            return {"vr": vr, "Value": items} if items else {"vr": vr}
        if tag in _PIXEL_TAGS and prefix == "":
            # Pixel data is always bulk data, however small (as in the fast reader).
            if self.bulkdata_uri is None:
                return None
            return {"vr": vr, "BulkDataURI": self.bulkdata_uri(path)}
        if vr in _BINARY_VRS:
            data = value if isinstance(value, (bytes, bytearray)) else None
            length = len(data) if data is not None else 0
            return _bytes_entry(vr, data, length, path, self.bulkdata_uri, self.bulk_threshold)
        if value is None or value == "" or (isinstance(value, (list, MultiValue)) and not value):
            return {"vr": vr}
        values = list(value) if isinstance(value, (list, MultiValue)) else [value]
        if vr in _NUMBER_FORMATS:
            if isinstance(value, (bytes, bytearray)):
                return self._raw_entry(elem, prefix, pixel_rep)
            numbers = [_finite(float(v)) if vr in ("FL", "FD") else int(v) for v in values]
            if all(n is None for n in numbers):
                return {"vr": vr}
            return {"vr": vr, "Value": numbers}
        if vr == "AT":
            return {"vr": vr, "Value": [f"{int(v):08X}" for v in values]}
        if vr == "PN":
            text = "\\".join(
                "=".join(v.components) if hasattr(v, "components") else str(v) for v in values
            )
        elif vr in ("DS", "IS"):
            text = "\\".join(getattr(v, "original_string", None) or str(v) for v in values)
        else:
            text = "\\".join(str(v) for v in values)
        json_values = _string_value(text, vr)
        return {"vr": vr, "Value": json_values} if json_values else {"vr": vr}

    def _raw_entry(
        self, elem: DataElement | RawDataElement, prefix: str, pixel_rep: int | None
    ) -> DicomJson | None:
        """Encode an element pydicom could not convert from its raw bytes."""
        tag = int(elem.tag)
        raw_vr = str(elem.VR) if elem.VR else _dictionary_vr(tag)
        vr = self._vr(raw_vr, tag, pixel_rep)
        data = elem.value if isinstance(elem.value, (bytes, bytearray)) else b""
        if vr in _BINARY_VRS or vr in _NUMBER_FORMATS or vr in ("SQ", "AT"):
            vr = "UN" if vr in ("SQ", "AT") or vr in _NUMBER_FORMATS else vr
            path = _with_path(prefix, tag)
            return _bytes_entry(vr, data, len(data), path, self.bulkdata_uri, self.bulk_threshold)
        values = _string_value(bytes(data).decode(_DEFAULT_TEXT_ENCODING), vr)
        return {"vr": vr, "Value": values} if values else {"vr": vr}


# --------------------------------------------------------------------------- fast path


@dataclass(frozen=True)
class DicomJsonHeader:
    """A Part-10 file's header as DICOM JSON.

    Attributes
    ----------
    transfer_syntax_uid : str
        From the file meta information, or the encoding detected for a file without it.
    has_preamble : bool
        Whether the file starts with the 128-byte preamble and ``DICM`` (PS3.10 §7.1).
    dataset : dict
        The dataset (without group 0002) as DICOM JSON, stopped before the pixel data
        (which is present as a ``BulkDataURI`` only when *bulkdata_uri* was given).
    header_length : int or None
        Number of bytes before the pixel data (the whole file if it has none) when the
        fast reader read the whole header; ``None`` when pydicom read it, or when reading
        stopped after the last of the *only* attributes.
    fast : bool
        Whether the fast reader (rather than pydicom) read it.
    """

    transfer_syntax_uid: str
    has_preamble: bool
    dataset: DicomJson
    header_length: int | None = None
    fast: bool = False


class _NeedPydicom(Exception):
    """The fast reader meets something it leaves to pydicom."""


class _Truncated(Exception):
    """The header runs past the end of the file."""


_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
#: first group of a dataset without preamble, read little-endian (0x0200, 0x0800: big-endian)
_BARE_GROUPS = frozenset({0x0002, 0x0008, 0x0200, 0x0800})
#: decoded even when not asked for, because decoding other elements depends on them
_ALWAYS_DECODED = frozenset({0x00080005, _PIXEL_REPRESENTATION})


def read_dicom_json(
    source: Path | str | bytes,
    *,
    bulkdata_uri: BulkDataURIFactory | None = None,
    bulk_threshold: int | None = DEFAULT_BULK_THRESHOLD,
    only: Collection[int] | None = None,
) -> DicomJsonHeader:
    """Read a DICOM file's header (everything before the pixel data) as DICOM JSON.

    Reads Part-10 files (PS3.10 §7.1) and, as pydicom's ``force=True`` does, bare datasets
    without preamble whose first element belongs to group 0002 or 0008.

    Parameters
    ----------
    source : path or bytes
        The file, or its bytes.
    bulkdata_uri, bulk_threshold
        As for :func:`dataset_to_dicom_json`; with *bulkdata_uri* the pixel data element is
        included as a ``BulkDataURI`` (tag path ``"7FE00010"``).
    only : collection of int, optional
        Decode only these top-level tags (and what their decoding needs); the fast reader
        skips the values of all others and stops after the last of them (top-level
        elements come in tag order, PS3.5 §7.1), which makes indexing several times
        faster. The pydicom fallback decodes everything and then keeps these.

    Returns
    -------
    DicomJsonHeader

    Raises
    ------
    InvalidDICOMError
        If the bytes are not a DICOM dataset, or its header is truncated or malformed;
        the message says why.
    OSError
        If the file cannot be read.
    """
    wanted = None if only is None else frozenset(only) | _ALWAYS_DECODED
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _read_buffer(bytes(source), source, bulkdata_uri, bulk_threshold, wanted)
    path = Path(source)
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        if size <= 256 * 1024:
            return _read_buffer(f.read(), path, bulkdata_uri, bulk_threshold, wanted)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return _read_buffer(mapped, path, bulkdata_uri, bulk_threshold, wanted)


def _read_buffer(
    buf: bytes | mmap.mmap,
    source: Path | bytes | bytearray | memoryview,
    bulkdata_uri: BulkDataURIFactory | None,
    bulk_threshold: int | None,
    only: frozenset[int] | None,
) -> DicomJsonHeader:
    try:
        return _FastReader(buf, bulkdata_uri, bulk_threshold, only).read()
    except _NeedPydicom:
        pass
    except _Truncated as exc:
        raise InvalidDICOMError(f"DICOM header is truncated: {exc}") from None
    header = _read_with_pydicom(source, bulkdata_uri, bulk_threshold)
    if only is None:
        return header
    keys = {f"{tag:08X}" for tag in only}
    kept = {k: v for k, v in header.dataset.items() if k in keys}
    return DicomJsonHeader(header.transfer_syntax_uid, header.has_preamble, kept)


def _read_with_pydicom(
    source: Path | bytes | bytearray | memoryview,
    bulkdata_uri: BulkDataURIFactory | None,
    bulk_threshold: int | None,
) -> DicomJsonHeader:
    target: Any = BytesIO(bytes(source)) if not isinstance(source, Path) else str(source)
    try:
        # With a bulkdata_uri the pixel data element is wanted (as a URI), so read it all.
        ds = pydicom.dcmread(target, stop_before_pixels=bulkdata_uri is None, force=True)
        dataset = dataset_to_dicom_json(ds, bulkdata_uri, bulk_threshold)
    except Exception as exc:
        raise InvalidDICOMError(f"not a readable DICOM dataset: {exc}") from None
    if not dataset and not getattr(ds, "file_meta", None):
        raise InvalidDICOMError("not DICOM: no data elements could be read")
    meta = getattr(ds, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else ""
    if not syntax:
        if ds.is_little_endian is False:
            syntax = _EXPLICIT_BE
        else:
            syntax = _IMPLICIT_LE if ds.is_implicit_VR else _EXPLICIT_LE
    has_preamble = getattr(ds, "preamble", None) is not None
    return DicomJsonHeader(syntax, has_preamble, dataset)


class _FastReader:
    """Little-endian Part-10 header reader producing DICOM JSON (PS3.5 §7, PS3.10 §7)."""

    def __init__(
        self,
        buf: bytes | mmap.mmap,
        bulkdata_uri: BulkDataURIFactory | None,
        bulk_threshold: int | None,
        only: frozenset[int] | None = None,
    ) -> None:
        self.buf = buf
        self.size = len(buf)
        self.only = only
        self.last_wanted = max(only) if only else -1
        self.stopped_early = False
        self.bulkdata_uri = bulkdata_uri
        self.bulk_threshold = bulk_threshold
        self.encoding = _DEFAULT_TEXT_ENCODING
        self.implicit = False

    def read(self) -> DicomJsonHeader:
        buf = self.buf
        has_preamble = self.size >= 132 and buf[128:132] == b"DICM"
        pos = 132 if has_preamble else 0
        syntax = ""
        meta_class = ""
        if not has_preamble:
            # A bare dataset starts with group 0002 or 0008, either byte order
            # (PS3.10 §7.1 without preamble); pydicom then sniffs its encoding.
            if self.size < 8 or struct.unpack_from("<H", buf, 0)[0] not in _BARE_GROUPS:
                raise InvalidDICOMError(
                    "not DICOM: no 'DICM' prefix at byte 128 and no group 0002 or 0008 "
                    "element at the start"
                )
            raise _NeedPydicom
        if pos + 8 <= self.size and struct.unpack_from("<H", buf, pos)[0] == 0x0002:
            meta, pos = self._read_meta(pos)
            syntax, meta_class = meta
        elif not has_preamble:
            raise _NeedPydicom  # bare dataset: let pydicom sniff its encoding
        if meta_class == _DICOMDIR_CLASS:
            raise InvalidDICOMError("a DICOMDIR (media storage directory), not an instance")
        if syntax == _IMPLICIT_LE:
            self.implicit = True
        elif syntax in (_EXPLICIT_BE, *_DEFLATED) or not re.match(r"^[0-9.]+$", syntax):
            raise _NeedPydicom  # big-endian, deflated or unknown: pydicom reads those
        dataset, end = self._dataset(pos, self.size, "", top=True)
        length = None if self.stopped_early else end
        return DicomJsonHeader(syntax, has_preamble, dataset, length, fast=True)

    def _read_meta(self, pos: int) -> tuple[tuple[str, str], int]:
        buf = self.buf
        syntax = klass = ""
        while pos + 8 <= self.size:
            group, elem = struct.unpack_from("<HH", buf, pos)
            if group != 0x0002:
                break
            code = _VR_CODES.get(bytes(buf[pos + 4 : pos + 6]))
            if code is None:
                raise _NeedPydicom  # implicit-VR meta group: non-conformant, pydicom copes
            if code[1]:
                length = struct.unpack_from("<I", buf, pos + 8)[0]
                pos += 12
            else:
                length = struct.unpack_from("<H", buf, pos + 6)[0]
                pos += 8
            if length == 0xFFFFFFFF or pos + length > self.size:
                raise _Truncated("file meta information runs past the end of the file")
            if elem == 0x0010:
                syntax = bytes(buf[pos : pos + length]).decode("latin_1").rstrip(" \x00")
            elif elem == 0x0002:
                klass = bytes(buf[pos : pos + length]).decode("latin_1").rstrip(" \x00")
            pos += length
        return (syntax, klass), pos

    def _dataset(self, pos: int, end: int, prefix: str, top: bool) -> tuple[DicomJson, int]:
        """Parse elements from *pos* to *end* (or an item delimiter); return (json, new pos)."""
        buf = self.buf
        out: DicomJson = {}
        creators: dict[int, str] = {}
        pixel_rep: int | None = None
        implicit = self.implicit
        size = self.size
        vr_codes = _VR_CODES
        skip = self.only if top else None
        explicit_header, implicit_header, long_length = _EXPLICIT_HEADER, _IMPLICIT_HEADER, _U32
        while pos < end:
            if pos + 8 > size:
                raise _Truncated(f"element header at byte {pos}")
            if implicit:
                group, elem, length = implicit_header(buf, pos)
                vr_bytes = b""
            else:
                group, elem, vr_bytes, length = explicit_header(buf, pos)
            tag = (group << 16) | elem
            if group >= 0x7FE0:
                if tag == 0xFFFEE00D:  # item delimitation: end of an undefined-length item
                    return out, pos + 8
                if top and tag in _PIXEL_TAGS:
                    self._pixel_entry(out, pos, tag)
                    return out, pos
            if implicit:
                pos += 8
                vr = ""
            else:
                code = vr_codes.get(vr_bytes)
                if code is None:
                    raise _NeedPydicom
                vr = code[0]
                if code[1]:
                    length = long_length(buf, pos + 8)[0]
                    pos += 12
                else:
                    pos += 8
            if skip is not None and tag not in skip:  # not wanted: step over the value
                if tag > self.last_wanted:  # nothing wanted follows
                    self.stopped_early = True
                    return out, pos
                if length == 0xFFFFFFFF:
                    if not implicit and vr != "SQ":
                        raise _NeedPydicom
                    pos = self._skip_sequence(pos)
                else:
                    pos += length
                    if pos > size:
                        raise _Truncated(f"value of ({group:04X},{elem:04X}) runs past the end")
                continue
            if implicit:
                vr = self._implicit_vr(tag, creators, pixel_rep)
            elif vr == "UN" and length != 0xFFFFFFFF:
                # pydicom decodes UN as the known VR (config.replace_un_with_known_vr)
                vr = self._implicit_vr(tag, creators, pixel_rep)
                if vr == "SQ":
                    raise _NeedPydicom  # an implicit-VR sequence inside UN
            if length == 0xFFFFFFFF:
                if vr not in ("SQ",):
                    raise _NeedPydicom  # undefined-length UN/OB outside pixel data
                items, pos = self._sequence(pos, None, _with_path(prefix, tag))
                out[_tag_key(tag)] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
                continue
            value_end = pos + length
            if value_end > size:
                raise _Truncated(f"value of ({group:04X},{elem:04X}) runs past the end of the file")
            if elem == 0 or group == 0x0002:
                pos = value_end
                continue
            if vr == "SQ":
                items, pos = self._sequence(pos, value_end, _with_path(prefix, tag))
                out[_tag_key(tag)] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
                continue
            entry = self._value(tag, vr, pos, length, prefix)
            pos = value_end
            if entry is None:
                continue
            out[_tag_key(tag)] = entry
            if tag == 0x00080005:
                self._set_charset(entry, top)
            elif tag == _PIXEL_REPRESENTATION and entry.get("Value"):
                pixel_rep = entry["Value"][0]
            elif group & 1 and 0x10 <= elem <= 0xFF and entry.get("Value"):
                creators[(group << 8) | elem] = str(entry["Value"][0])
        return out, pos

    def _sequence(self, pos: int, end: int | None, path: str) -> tuple[list[DicomJson], int]:
        buf = self.buf
        items: list[DicomJson] = []
        limit = self.size if end is None else end
        while pos < limit:
            if pos + 8 > self.size:
                raise _Truncated(f"sequence item at byte {pos}")
            group, elem, length = struct.unpack_from("<HHI", buf, pos)
            tag = (group << 16) | elem
            pos += 8
            if tag == 0xFFFEE0DD:  # sequence delimitation
                return items, pos
            if tag != 0xFFFEE000:
                raise _NeedPydicom  # malformed item: pydicom is more forgiving
            item_prefix = f"{path}/{len(items)}/"
            if length == 0xFFFFFFFF:
                item, pos = self._dataset(pos, self.size, item_prefix, top=False)
            else:
                if pos + length > self.size:
                    raise _Truncated(f"sequence item at byte {pos} runs past the end")
                item, _ = self._dataset(pos, pos + length, item_prefix, top=False)
                pos += length
            items.append(item)
        if end is None:
            raise _Truncated("undefined-length sequence without its delimiter")
        return items, pos

    def _skip_sequence(self, pos: int) -> int:
        """Return the position after an undefined-length sequence starting at *pos*."""
        buf, size = self.buf, self.size
        while pos + 8 <= size:
            group, elem, length = struct.unpack_from("<HHI", buf, pos)
            pos += 8
            if group != 0xFFFE:
                raise _NeedPydicom
            if elem == 0xE0DD:
                return pos
            if elem != 0xE000:
                raise _NeedPydicom
            pos = self._skip_item(pos) if length == 0xFFFFFFFF else pos + length
        raise _Truncated("undefined-length sequence without its delimiter")

    def _skip_item(self, pos: int) -> int:
        """Return the position after an undefined-length item's delimiter."""
        buf, size = self.buf, self.size
        while pos + 8 <= size:
            group, elem = struct.unpack_from("<HH", buf, pos)
            if group == 0xFFFE and elem == 0xE00D:
                return pos + 8
            if self.implicit:
                length = struct.unpack_from("<I", buf, pos + 4)[0]
                pos += 8
                undefined_is_sequence = True
            else:
                code = _VR_CODES.get(bytes(buf[pos + 4 : pos + 6]))
                if code is None:
                    raise _NeedPydicom
                if code[1]:
                    length = struct.unpack_from("<I", buf, pos + 8)[0]
                    pos += 12
                else:
                    length = struct.unpack_from("<H", buf, pos + 6)[0]
                    pos += 8
                undefined_is_sequence = code[0] == "SQ"
            if length == 0xFFFFFFFF:
                if not undefined_is_sequence:
                    raise _NeedPydicom
                pos = self._skip_sequence(pos)
            else:
                pos += length
        raise _Truncated("undefined-length item without its delimiter")

    def _implicit_vr(self, tag: int, creators: dict[int, str], pixel_rep: int | None) -> str:
        entry = pydicom.datadict.DicomDictionary.get(tag)
        if entry is not None:
            vr = entry[0]
        elif tag >> 16 & 1:  # private
            if tag & 0xFFFF <= 0xFF and tag & 0xFFFF >= 0x10:
                return "LO"  # private creator
            creator = creators.get(((tag >> 16) << 8) | ((tag >> 8) & 0xFF))
            if creator is None:
                return "UN"
            try:
                vr = pydicom.datadict.private_dictionary_VR(tag, creator)
            except KeyError:
                return "UN"
        else:
            try:
                vr = pydicom.datadict.dictionary_VR(tag)  # repeating groups (50xx, 60xx)
            except KeyError:
                return "UN"
        if " or " in vr:
            resolved = _resolve_ambiguous_vr(vr, tag, pixel_rep)
            if resolved is None:
                raise _NeedPydicom
            return resolved
        if vr in ("NONE", "na", ""):
            return "UN"
        return vr

    def _set_charset(self, entry: DicomJson, top: bool) -> None:
        values = entry.get("Value") or [""]
        if not top or len(values) != 1:
            raise _NeedPydicom
        encoding = _FAST_CHARSETS.get(values[0] or "")
        if encoding is None:
            raise _NeedPydicom
        self.encoding = encoding

    def _value(self, tag: int, vr: str, pos: int, length: int, prefix: str) -> DicomJson | None:
        buf = self.buf
        if vr in _SIMPLE_STRING_VRS:
            if length == 0:
                return {"vr": vr}
            encoding = self.encoding if vr in _CHARSET_VRS else _DEFAULT_TEXT_ENCODING
            text = bytes(buf[pos : pos + length]).decode(encoding, errors="replace")
            if "\\" not in text:
                item = _clean(text, vr)
                return {"vr": vr, "Value": [item]} if item else {"vr": vr}
            values = _string_value(text, vr)
            return {"vr": vr, "Value": values} if values else {"vr": vr}
        if vr in _BINARY_VRS:
            data = (
                bytes(buf[pos : pos + length])
                if (self.bulk_threshold is None or length <= self.bulk_threshold)
                else None
            )
            path = _with_path(prefix, tag)
            return _bytes_entry(vr, data, length, path, self.bulkdata_uri, self.bulk_threshold)
        if length == 0:
            return {"vr": vr}
        fmt = _NUMBER_FORMATS.get(vr)
        if fmt is not None:
            size = struct.calcsize(fmt)
            if length % size:
                raise _NeedPydicom
            numbers = list(struct.unpack_from(f"<{length // size}{fmt}", buf, pos))
            if vr in ("FL", "FD"):
                numbers = [_finite(v) for v in numbers]
                if all(n is None for n in numbers):
                    return {"vr": vr}
            return {"vr": vr, "Value": numbers}
        if vr == "AT":
            if length % 4:
                raise _NeedPydicom
            pairs = struct.unpack_from(f"<{length // 2}H", buf, pos)
            tags = [f"{pairs[i]:04X}{pairs[i + 1]:04X}" for i in range(0, len(pairs), 2)]
            return {"vr": vr, "Value": tags}
        encoding = self.encoding if vr in _CHARSET_VRS else _DEFAULT_TEXT_ENCODING
        text = bytes(buf[pos : pos + length]).decode(encoding, errors="replace")
        values = _string_value(text, vr)
        return {"vr": vr, "Value": values} if values else {"vr": vr}

    def _pixel_entry(self, out: DicomJson, pos: int, tag: int) -> None:
        if self.bulkdata_uri is None:
            return
        if self.implicit:
            vr = "OW" if tag == 0x7FE00010 else ("OF" if tag == 0x7FE00008 else "OD")
        else:
            vr = bytes(self.buf[pos + 4 : pos + 6]).decode("latin_1")
        out[f"{tag:08X}"] = {"vr": vr, "BulkDataURI": self.bulkdata_uri(f"{tag:08X}")}


# --------------------------------------------------------------------------- tag paths


def parse_tag_path(path: str) -> tuple[int, ...]:
    """Split a tag path (``"00540016/0/00181072"``) into ``(tag, index, tag, …)``.

    Raises
    ------
    InvalidInputError
        If *path* is not a tag path.
    """
    if not isinstance(path, str) or not _TAG_PATH.match(path):
        raise InvalidInputError(
            f"bulk data path {str(path)[:80]!r} is not a tag path like '7FE00010' or "
            "'00540016/0/00181072'"
        )
    parts = path.split("/")
    return tuple(int(p, 16) if i % 2 == 0 else int(p) for i, p in enumerate(parts))


def find_element(ds: Dataset, path: str) -> DataElement | None:
    """Return the element a tag path points at, or ``None`` if the dataset lacks it.

    Raises
    ------
    InvalidInputError
        If *path* is not a tag path.
    """
    steps = parse_tag_path(path)
    current: Dataset = ds
    for i in range(0, len(steps) - 1, 2):
        tag, index = steps[i], steps[i + 1]
        if BaseTag(tag) not in current:
            return None
        seq = current[tag].value
        if not isinstance(seq, (DicomSequence, list)) or index >= len(seq):
            return None
        current = seq[index]
    last = BaseTag(steps[-1])
    return current.get(last)
