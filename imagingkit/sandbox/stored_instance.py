"""A stored Part-10 file as WADO-RS serves it: bytes, transcoding, frames, bulk data.

The store keeps files as they arrived, in whatever transfer syntax. This module turns
one of them into what a WADO-RS request asks for (PS3.18 §10.4):

* the whole instance in a requested transfer syntax — the file's own bytes when they
  already are (no parse at all), otherwise re-encoded with pydicom: implicit VR, big
  endian and deflated data to Explicit VR Little Endian, compressed data decompressed,
  or uncompressed data compressed with an installed lossless encoder;
* single frames, native little endian or as stored (the encapsulated frame);
* any bulk data value addressed by a tag path (see :mod:`imagingkit.dicomjson`).

Headers are parsed once per file version and kept in a small LRU cache (large values are
deferred, so pixel data is never read to parse a header); frames of little-endian native
files are read straight from their offset in the file.
"""

from __future__ import annotations

import collections
import functools
import io
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import get_frame
from pydicom.filewriter import dcmwrite
from pydicom.pixels import get_decoder, get_encoder
from pydicom.pixels.utils import pack_bits, unpack_bits
from pydicom.tag import BaseTag

from imagingkit.dicomjson import find_element
from imagingkit.dicomweb.mediatypes import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    FORBIDDEN_WEB_SYNTAXES,
    UNCOMPRESSED_SYNTAXES,
)
from imagingkit.errors import InvalidDICOMError

__all__ = [
    "LOSSLESS_TARGETS",
    "FileCache",
    "StoredInstance",
    "as_stored_syntax",
    "can_transcode",
    "header_cache",
    "instance_bytes",
]

#: Compressed syntaxes this store can encode to (lossless only, so never degrading data).
LOSSLESS_TARGETS = ("1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90")
_HEADER_CACHE_SIZE = 256
_DEFER = 1024  # values longer than this are not read when a header is parsed
_LITTLE_ENDIAN_NATIVE = frozenset({"1.2.840.10008.1.2", EXPLICIT_VR_LITTLE_ENDIAN})
_SWAP_UNITS = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


@dataclass(frozen=True)
class StoredInstance:
    """The parsed header of one stored file (cached; never mutated).

    Attributes
    ----------
    path : Path
    transfer_syntax : str
        From the file meta information (Explicit/Implicit VR Little Endian guessed by
        pydicom for a bare dataset).
    has_preamble : bool
        Whether the file is a true Part-10 file (PS3.10 §7.1), so it can be sent as is.
    header : pydicom.dataset.Dataset
        The dataset with values longer than 1 KiB deferred (read on access).
    pixel_offset : int or None
        File offset of the Pixel Data value, when it can be read from the file directly
        (not for deflated files).
    pixel_length : int or None
        Its length in bytes (``0xFFFFFFFF`` when encapsulated).
    """

    path: Path
    transfer_syntax: str
    has_preamble: bool
    header: Dataset
    pixel_offset: int | None
    pixel_length: int | None

    @property
    def has_pixels(self) -> bool:
        """Whether the instance holds (integer) Pixel Data."""
        return self.pixel_length is not None

    @property
    def number_of_frames(self) -> int:
        """Number of frames (1 when Number of Frames is absent or unusable)."""
        try:
            return max(1, int(self.header.get("NumberOfFrames") or 1))
        except (TypeError, ValueError):
            return 1

    @property
    def encapsulated(self) -> bool:
        """Whether the pixel data is compressed (encapsulated, PS3.5 A.4)."""
        return self.transfer_syntax not in UNCOMPRESSED_SYNTAXES

    @property
    def direct_frames(self) -> bool:
        """Whether native frames are read straight from the file (cheap, no parse)."""
        return (
            self.transfer_syntax in _LITTLE_ENDIAN_NATIVE
            and self.pixel_offset is not None
            and self.frame_length_bits() % 8 == 0
        )

    def frame_length_bits(self) -> int:
        """Length of one native frame in bits (PS3.5 §8.1.1; YBR_FULL_422 subsampled)."""
        ds = self.header
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel") or 1)
        bits = int(ds.BitsAllocated)
        if str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
            return rows * columns * 2 * bits
        return rows * columns * samples * bits

    # ------------------------------------------------------------------ frames

    def native_frame(self, index: int) -> bytes:
        """Return frame *index* (0-based) as native little-endian bytes.

        Uncompressed data keeps its stored layout (planar configuration, YBR_FULL_422
        subsampling); compressed data is decoded as pydicom decodes it by default (YCbCr
        as RGB, colour-by-pixel), which is what :func:`instance_bytes` writes when
        decompressing the whole instance.

        Raises
        ------
        InvalidDICOMError
            If the frame cannot be decoded.
        """
        self._check_frame(index)
        if self.encapsulated:
            return _decode_frame(self, index)
        bits = self.frame_length_bits()
        if bits % 8 == 0:
            size = bits // 8
            if self.direct_frames and self.pixel_offset is not None:
                with open(self.path, "rb") as f:  # straight from the file, no parse
                    f.seek(self.pixel_offset + index * size)
                    frame = f.read(size)
            else:
                frame = self._native_pixel_data()[index * size : (index + 1) * size]
            if len(frame) != size:
                raise InvalidDICOMError(f"frame {index + 1} of {self.path.name} is truncated")
            return frame
        data = self._native_pixel_data()
        # 1-bit frames that do not start on a byte boundary (PS3.5 §8.1.1)
        unpacked = np.asarray(unpack_bits(data))
        return pack_bits(unpacked[index * bits : (index + 1) * bits])

    def stored_frame(self, index: int) -> bytes:
        """Return frame *index* (0-based) as stored: the encapsulated bytes if
        compressed, else the native little-endian frame."""
        self._check_frame(index)
        if not self.encapsulated:
            return self.native_frame(index)
        try:
            if self.pixel_offset is None:
                return get_frame(
                    self._full().PixelData, index, number_of_frames=self.number_of_frames
                )
            with open(self.path, "rb") as f:
                f.seek(self.pixel_offset)
                return get_frame(f, index, number_of_frames=self.number_of_frames)
        except Exception as exc:  # malformed encapsulation
            raise InvalidDICOMError(
                f"cannot read frame {index + 1} of {self.path.name}: {exc}"
            ) from exc

    def _check_frame(self, index: int) -> None:
        if not self.has_pixels:
            raise InvalidDICOMError(f"{self.path.name} has no pixel data")
        if not 0 <= index < self.number_of_frames:
            raise InvalidDICOMError(
                f"frame {index + 1} does not exist ({self.number_of_frames} frames)"
            )

    def _full(self) -> Dataset:
        return pydicom.dcmread(self.path, force=True)

    def _native_pixel_data(self) -> bytes:
        """The whole native Pixel Data value, little endian."""
        ds = self._full()
        data = bytes(ds.PixelData)
        if not ds.original_encoding[1]:  # big endian
            data = _swap_pixel_data(data, ds)
        return data

    # ------------------------------------------------------------------ bulk data

    def bulk_value(self, tag_path: str) -> bytes | None:
        """Return the little-endian bytes of the binary value at *tag_path*, or None.

        Raises
        ------
        InvalidInputError
            If *tag_path* is malformed.
        """
        ds = self.header if self.transfer_syntax != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN else None
        if ds is None:
            ds = self._full()
        elem = find_element(ds, tag_path)
        if elem is None or not isinstance(elem.value, (bytes, bytearray)):
            return None
        data = bytes(elem.value)
        if self.transfer_syntax == EXPLICIT_VR_BIG_ENDIAN:
            unit = _SWAP_UNITS.get(str(elem.VR))
            if unit:
                data = _swap(data, unit)
        return data


def _swap(data: bytes, unit: int) -> bytes:
    whole = len(data) // unit * unit
    return (
        np.frombuffer(data[:whole], dtype=f">u{unit}").astype(f"<u{unit}").tobytes() + data[whole:]
    )


def _swap_pixel_data(data: bytes, ds: Dataset) -> bytes:
    """Big-endian native Pixel Data to little endian (PS3.5 §7.3, A.3)."""
    bits = int(ds.BitsAllocated)
    if bits > 8:
        return _swap(data, bits // 8)
    if str(ds["PixelData"].VR) == "OW":
        return _swap(data, 2)
    return data


def _decode_frame(instance: StoredInstance, index: int) -> bytes:
    ds = instance._full()
    options: dict[str, Any] = {"as_rgb": True}
    try:
        decoder = get_decoder(instance.transfer_syntax)
        pixels, _ = decoder.as_array(ds, index=index, **options)
    except Exception as exc:  # decoders raise many types
        raise InvalidDICOMError(
            f"cannot decode frame {index + 1} of {instance.path.name} "
            f"({instance.transfer_syntax}): {exc}"
        ) from exc
    return np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<"), copy=False).tobytes()


# --------------------------------------------------------------------------- loading


V = TypeVar("V")


class FileCache(Generic[V]):
    """A small LRU cache of values computed from files, keyed by path, size and
    modification time (so a replaced file is computed again).

    Parameters
    ----------
    size : int
        How many values to keep.
    compute : callable, optional
        ``compute(path) -> value``: how :meth:`load` fills the cache by default.
    """

    def __init__(self, size: int, compute: Callable[[Path], V] | None = None) -> None:
        self.compute = compute
        self.size = size
        self._items: collections.OrderedDict[tuple[str, int, int], V] = collections.OrderedDict()
        self._lock = threading.Lock()

    def _lookup(self, key: tuple[str, int, int]) -> V | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def peek(self, path: Path) -> V | None:
        """Return the cached value for *path* if it is current, computing nothing."""
        try:
            return self._lookup(_key(Path(path)))
        except InvalidDICOMError:
            return None

    def load(self, path: Path, compute: Callable[[Path], V] | None = None) -> V:
        """Return the value for *path*, computing it (with *compute* if given) on a miss.

        Raises
        ------
        InvalidDICOMError
            If the file cannot be read (or whatever *compute* raises).
        """
        key = _key(Path(path))
        found = self._lookup(key)
        if found is not None:
            return found
        compute = compute or self.compute
        if compute is None:
            raise TypeError("FileCache.load needs a compute function")
        value = compute(Path(path))
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


def header_cache(size: int = _HEADER_CACHE_SIZE) -> FileCache[StoredInstance]:
    """A :class:`FileCache` of parsed headers (:class:`StoredInstance`)."""
    return FileCache(size, _parse)


def _key(path: Path) -> tuple[str, int, int]:
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise InvalidDICOMError(f"cannot read {path.name}: {exc.strerror}") from exc
    return str(path), stat.st_mtime_ns, stat.st_size


def _parse(path: Path) -> StoredInstance:
    try:
        ds = pydicom.dcmread(path, defer_size=_DEFER, force=True)
    except Exception as exc:
        raise InvalidDICOMError(f"cannot parse {path.name}: {exc}") from exc
    meta = getattr(ds, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else ""
    if not syntax:
        implicit, little = ds.original_encoding
        syntax = (
            EXPLICIT_VR_BIG_ENDIAN
            if little is False
            else ("1.2.840.10008.1.2" if implicit else EXPLICIT_VR_LITTLE_ENDIAN)
        )
    offset = length = None
    raw = ds._dict.get(BaseTag(0x7FE00010))  # the raw element holds the file offset
    if raw is not None:
        length = int(getattr(raw, "length", 0) or 0)
        tell = getattr(raw, "value_tell", None)
        if syntax != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN and tell is not None:
            offset = int(tell)
    return StoredInstance(
        path=path,
        transfer_syntax=syntax,
        has_preamble=getattr(ds, "preamble", None) is not None,
        header=ds,
        pixel_offset=offset,
        pixel_length=length,
    )


# --------------------------------------------------------------------------- transcoding


def as_stored_syntax(stored: str) -> str:
    """The syntax ``transfer-syntax=*`` gives for a file stored in *stored*.

    The stored syntax itself, except implicit VR and big endian, which web services must
    not send (PS3.18 §8.7.3.5.1): those become Explicit VR Little Endian.
    """
    return EXPLICIT_VR_LITTLE_ENDIAN if stored in FORBIDDEN_WEB_SYNTAXES else stored


def can_transcode(stored: str, target: str) -> bool:
    """Tell whether an instance stored in *stored* can be sent in *target* at all.

    This checks that the needed decoder and encoder are installed; a particular file
    may still fail to decode (see :func:`instance_bytes`).
    """
    if target == stored and target not in FORBIDDEN_WEB_SYNTAXES:
        return True
    decodable = stored in UNCOMPRESSED_SYNTAXES or _plugin_available("decode", stored)
    if target == EXPLICIT_VR_LITTLE_ENDIAN:
        return decodable
    return target in LOSSLESS_TARGETS and decodable and _plugin_available("encode", target)


@functools.lru_cache(maxsize=128)
def _plugin_available(direction: str, syntax: str) -> bool:
    """Whether pydicom has an installed decoder ("decode") or encoder for *syntax*."""
    factory = get_decoder if direction == "decode" else get_encoder
    try:
        return bool(factory(syntax).is_available)
    except (NotImplementedError, ValueError, KeyError):
        return False


def instance_bytes(path: Path, stored: str, target: str) -> bytes:
    """Return the Part-10 bytes of the file at *path* in transfer syntax *target*.

    Parameters
    ----------
    path : Path
        The stored file.
    stored : str
        Its transfer syntax (as indexed).
    target : str
        The syntax to send; see :func:`can_transcode`.

    Returns
    -------
    bytes
        The file itself when it is a Part-10 file already in *target*; otherwise the
        re-encoded instance (same SOP Instance UID, PS3.18 §8.7.3.5).

    Raises
    ------
    InvalidDICOMError
        If the data cannot be decoded or encoded.
    """
    data = Path(path).read_bytes()
    if target == stored and data[128:132] == b"DICM":
        return data
    return transcode(data, target, name=Path(path).name)


def transcode(data: bytes, target: str, *, name: str = "instance") -> bytes:
    """Re-encode Part-10 (or bare dataset) *data* in transfer syntax *target*.

    Raises
    ------
    InvalidDICOMError
        If the data cannot be decoded or encoded.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise InvalidDICOMError(f"cannot parse {name}: {exc}") from exc
    meta = getattr(ds, "file_meta", None)
    stored = str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else ""
    try:
        if "PixelData" in ds and stored and stored not in UNCOMPRESSED_SYNTAXES:
            ds.decompress(generate_instance_uid=False)  # → Explicit VR Little Endian
        elif ds.original_encoding[1] is False:
            _to_little_endian(ds)
        if target != EXPLICIT_VR_LITTLE_ENDIAN:
            ds.compress(target, generate_instance_uid=False)
    except Exception as exc:  # decoders/encoders raise many types
        raise InvalidDICOMError(
            f"cannot transcode {name} from {stored or '?'} to {target}: {exc}"
        ) from exc
    _complete_file_meta(ds, target)
    for _ in ds.iterall():  # convert raw elements now: some files lie about their VRs
        pass
    out = io.BytesIO()
    try:
        dcmwrite(out, ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
    except Exception as exc:
        raise InvalidDICOMError(f"cannot write {name} as {target}: {exc}") from exc
    return out.getvalue()


def _complete_file_meta(ds: Dataset, target: str) -> None:
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = FileMetaDataset()
        ds.file_meta = meta
    meta.TransferSyntaxUID = target
    if "SOPClassUID" in ds:
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
    if "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def _to_little_endian(ds: Dataset) -> None:
    """Swap the binary (OW/OF/OL/OD/OV) values of a big-endian dataset in place.

    pydicom re-encodes numbers and text itself; the bytes of binary values are kept as
    read, so they are swapped here (Pixel Data by Bits Allocated, PS3.5 §7.3). UN
    values are left alone: their structure is unknown.
    """

    def walk(dataset: Dataset, top: bool) -> None:
        for elem in dataset:
            if elem.VR == "SQ":
                for item in elem.value or []:
                    walk(item, False)
            elif isinstance(elem.value, (bytes, bytearray)):
                if top and elem.tag == 0x7FE00010:
                    elem.value = _swap_pixel_data(bytes(elem.value), dataset)
                elif str(elem.VR) in _SWAP_UNITS:
                    elem.value = _swap(bytes(elem.value), _SWAP_UNITS[str(elem.VR)])

    walk(ds, True)
