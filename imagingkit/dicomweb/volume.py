"""A series as a 3-D volume: slices ordered by geometry, Modality LUT applied.

:func:`series_volume` retrieves a series with one WADO-RS request (PS3.18 §10.4.1.1.1),
decodes each instance as it arrives (:mod:`imagingkit.dicomweb.pixels`), writes it straight
into one preallocated output array with the Modality LUT applied (PS3.3 C.11.1, e.g.
Hounsfield units for CT), and finally orders the slices along the slice normal — the
cross product of the row and column direction cosines of Image Orientation (Patient) —
by the projection of each Image Position (Patient) on it (PS3.3 C.7.6.2.1.1), never by
Instance Number, which need not follow anatomy.

With a cache, the output array *is* the future cache entry (a memory-mapped temporary file,
:class:`imagingkit.cache.ArrayWriter`), so a cold pull writes each voxel once, and a
warm pull maps the verified entry without copying it.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import mmap
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from imagingkit.dicomweb.direct import read_series_into
from imagingkit.dicomweb.pixels import (
    DecodedInstance,
    ModalityMapping,
    NativeLayout,
    decode_instance,
    instance_pixels,
    modality_mapping,
)
from imagingkit.errors import InvalidDICOMError

if TYPE_CHECKING:
    from imagingkit.dicomweb.client import DicomWebClient

__all__ = ["VOLUME_REPRESENTATION", "Volume", "assemble_volume", "instance_pixels", "series_volume"]

log = logging.getLogger("imagingkit.dicomweb.volume")

#: Cache representation of decoded volumes (bump when the decoding changes).
VOLUME_REPRESENTATION = "volume; modality-lut; geometry-order; v1"
_INITIAL_CAPACITY = 64


@dataclass
class Volume:
    """A stack of image slices with its geometry in the patient coordinate system.

    Attributes
    ----------
    array : numpy.ndarray
        ``(slices, rows, columns)`` (a trailing samples axis for colour), Modality LUT
        applied: Hounsfield units for CT, int16/int32 when exact, else float32.
    spacing : tuple of float
        Millimetres between neighbouring voxels along each array axis: between slices
        (from the positions), between rows and between columns (Pixel Spacing,
        PS3.3 C.7.6.2.1.1).
    origin : tuple of float
        Image Position (Patient) of ``array[0, 0, 0]`` (patient LPS, mm).
    orientation : numpy.ndarray
        3×3; ``orientation[a]`` is the unit vector in patient coordinates along array
        axis ``a`` (slice direction, column direction, row direction).
    positions : numpy.ndarray
        ``(slices, 3)``: Image Position (Patient) of each slice.
    sop_uids : tuple of str
        SOP Instance UID of each slice (repeated for frames of one instance).
    study_uid, series_uid : str
    modality : str
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    orientation: np.ndarray
    positions: np.ndarray
    sop_uids: tuple[str, ...]
    study_uid: str = ""
    series_uid: str = ""
    modality: str = ""
    frame_of_reference_uid: str = ""
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def affine(self) -> np.ndarray:
        """4×4 matrix mapping ``(slice, row, column, 1)`` indices to patient mm (LPS)."""
        out = np.eye(4)
        out[:3, :3] = (self.orientation * np.asarray(self.spacing)[:, None]).T
        out[:3, 3] = self.origin
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self.array, dtype=dtype)

    def __repr__(self) -> str:
        return (
            f"Volume(shape={self.shape}, dtype={self.array.dtype}, "
            f"spacing={tuple(round(s, 4) for s in self.spacing)}, series={self.series_uid!r})"
        )

    def meta(self) -> dict[str, Any]:
        """Everything but the array, JSON-serialisable (stored with cached volumes)."""
        return {
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "orientation": np.asarray(self.orientation).tolist(),
            "positions": np.asarray(self.positions).tolist(),
            "sop_uids": list(self.sop_uids),
            "study_uid": self.study_uid,
            "series_uid": self.series_uid,
            "modality": self.modality,
            "frame_of_reference_uid": self.frame_of_reference_uid,
        }

    @classmethod
    def from_meta(cls, array: np.ndarray, meta: dict[str, Any]) -> Volume:
        return cls(
            array=array,
            spacing=tuple(meta["spacing"]),
            origin=tuple(meta["origin"]),
            orientation=np.asarray(meta["orientation"], dtype=np.float64),
            positions=np.asarray(meta["positions"], dtype=np.float64).reshape(-1, 3),
            sop_uids=tuple(meta["sop_uids"]),
            study_uid=meta.get("study_uid", ""),
            series_uid=meta.get("series_uid", ""),
            modality=meta.get("modality", ""),
            frame_of_reference_uid=meta.get("frame_of_reference_uid", ""),
        )


# --------------------------------------------------------------------------- storage


class _Storage(Protocol):
    array: np.ndarray

    def resize(self, first: int) -> np.ndarray: ...

    def commit(self, meta: dict[str, Any]) -> np.ndarray: ...

    def abort(self) -> None: ...


class _MemoryStorage:
    """Output array in ordinary memory (no cache)."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        self.array = np.empty(shape, dtype)

    def resize(self, first: int) -> np.ndarray:
        if first <= len(self.array):
            self.array = self.array[:first]
        else:
            grown = np.empty((first, *self.array.shape[1:]), self.array.dtype)
            grown[: len(self.array)] = self.array
            self.array = grown
        return self.array

    def commit(self, meta: dict[str, Any]) -> np.ndarray:
        if self.array.base is not None and self.array.base.shape[0] > self.array.shape[0]:
            return self.array.copy()  # do not keep unused capacity alive
        return self.array

    def abort(self) -> None:
        del self.array


StorageFactory = Callable[[tuple[int, ...], np.dtype[Any]], _Storage]


def _memory(shape: tuple[int, ...], dtype: np.dtype[Any]) -> _Storage:
    return _MemoryStorage(shape, dtype)


class _Prefaulter:
    """Populate an output array's pages on a background thread, ahead of the writer.

    A fresh page costs its first writer a fault; on virtual machines that back guest
    memory lazily (this project's CI among them: 150–400 MB/s measured) that is the
    largest cost of a pull. ``madvise(MADV_POPULATE_WRITE)`` (Linux ≥ 5.14) does the same work
    in a system call that releases the GIL, so it overlaps with parsing and with the
    server's streaming. Populating a page the writer already wrote is a no-op; on any
    error (older kernel, other OS) the thread just stops.
    """

    _MADV_POPULATE_WRITE = 23
    _STEP = 8 << 20

    def __init__(self, array: np.ndarray) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        madvise = _libc_madvise()
        if madvise is None or array.nbytes < 4 * self._STEP:
            return
        page = mmap.PAGESIZE
        start = array.ctypes.data // page * page
        end = array.ctypes.data + array.nbytes
        self._thread = threading.Thread(
            target=self._run, args=(madvise, start, end), name="imagingkit-prefault", daemon=True
        )
        self._thread.start()

    def _run(self, madvise: Any, start: int, end: int) -> None:
        position = start
        while position < end and not self._stop.is_set():
            length = min(self._STEP, end - position)
            if madvise(position, length, self._MADV_POPULATE_WRITE) != 0:
                return
            position += length

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


@functools.lru_cache(maxsize=1)
def _libc_madvise() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


# --------------------------------------------------------------------------- assembly


@dataclass
class _Slice:
    sop_uid: str
    number: int | None
    frame: int
    position: tuple[float, ...] | None


def _frame_positions(decoded: DecodedInstance, frames: int) -> list[tuple[float, ...] | None]:
    """Positions of each frame of a multi-frame instance (PS3.3 C.7.6.16.2.3)."""
    ds = decoded.dataset
    out: list[tuple[float, ...] | None] = [None] * frames
    groups = ds.get("PerFrameFunctionalGroupsSequence") if ds is not None else None
    if groups is None:
        return out
    for i, item in enumerate(list(groups)[:frames]):
        plane = item.get("PlanePositionSequence")
        if plane and "ImagePositionPatient" in plane[0]:
            out[i] = tuple(float(v) for v in plane[0].ImagePositionPatient)
    return out


def _shared_orientation(decoded: DecodedInstance) -> tuple[float, ...] | None:
    ds = decoded.dataset
    if ds is None:
        return None
    shared = ds.get("SharedFunctionalGroupsSequence")
    if not shared:
        return None
    measures = shared[0].get("PixelMeasuresSequence")
    if measures and "PixelSpacing" in measures[0]:  # PS3.3 C.7.6.16.2.1
        decoded.header.setdefault(
            "00280030", {"vr": "DS", "Value": [float(v) for v in measures[0].PixelSpacing]}
        )
    plane = shared[0].get("PlaneOrientationSequence")  # PS3.3 C.7.6.16.2.4
    if plane and "ImageOrientationPatient" in plane[0]:
        return tuple(float(v) for v in plane[0].ImageOrientationPatient)
    return None


class _VolumeBuilder:
    """Collect decoded instances into one output array; order them at the end."""

    def __init__(self, storage: StorageFactory, expected: int | None, label: str) -> None:
        self.factory = storage
        self.expected = expected
        self.label = label
        self.store: _Storage | None = None
        self.count = 0
        self.slices: list[_Slice] = []
        self.frame_shape: tuple[int, ...] | None = None
        self.orientation: tuple[float, ...] | None = None
        self.first: DecodedInstance | None = None
        self._scratch: np.ndarray | None = None
        self._prefault: _Prefaulter | None = None

    def add(self, payload: bytes) -> None:
        self.add_decoded(decode_instance(payload))

    def _check(self, decoded: DecodedInstance, frame_shape: tuple[int, ...]) -> None:
        """Refuse an instance that does not belong to the same volume."""
        if self.frame_shape is None:
            self.frame_shape = frame_shape
            self.first = decoded
        elif frame_shape != self.frame_shape:
            raise InvalidDICOMError(
                f"series {self.label} mixes image sizes {self.frame_shape} and {frame_shape} "
                f"(instance {decoded.sop_instance_uid}); it is not one volume"
            )
        orientation = decoded.orientation or _shared_orientation(decoded)
        if orientation is not None:
            if self.orientation is None:
                self.orientation = orientation
            elif orientation != self.orientation and not np.allclose(
                orientation, self.orientation, atol=1e-4
            ):
                raise InvalidDICOMError(
                    f"series {self.label} mixes image orientations {self.orientation} and "
                    f"{orientation} (instance {decoded.sop_instance_uid}); it is not one volume"
                )

    def _record(self, decoded: DecodedInstance, positions: list[Any]) -> None:
        for i, position in enumerate(positions):
            self.slices.append(
                _Slice(decoded.sop_instance_uid, decoded.instance_number, i, position)
            )
        self.count += len(positions)

    def add_decoded(self, decoded: DecodedInstance) -> None:
        pixels = decoded.pixels
        grey = decoded.grey
        # pydicom gives (frames, rows, columns[, samples]) only for several frames
        multi = pixels.ndim == (3 if grey else 4)
        frames = pixels.shape[0] if multi else 1
        if not multi:
            pixels = pixels[np.newaxis]
        self._check(decoded, tuple(pixels.shape[1:]))
        mapping = modality_mapping(decoded) if grey else ModalityMapping()
        dtype = mapping.output_dtype(pixels.dtype, decoded.bits_stored) if grey else pixels.dtype
        self._ensure(self.count + frames, dtype)
        assert self.store is not None
        target = self.store.array[self.count : self.count + frames]
        if grey:
            mapping.apply(pixels, target)
        else:
            np.copyto(target, pixels, casting="unsafe")
        self._record(
            decoded, [decoded.position] if frames == 1 else _frame_positions(decoded, frames)
        )

    def add_native(self, layout: NativeLayout, read_into: Callable[[memoryview], None]) -> None:
        """Add one native grey-scale frame whose bytes *read_into* writes where asked.

        When the stored and output types have the same size and the Modality LUT is an
        integer shift, the bytes land in the output slice itself and the shift is applied
        in place; otherwise they go through a reused scratch slice.
        """
        decoded = DecodedInstance(
            np.empty((0, 0), layout.dtype), layout.header, layout.transfer_syntax
        )
        if not decoded.grey:
            raise InvalidDICOMError(f"{decoded.photometric} is not a grey-scale image")
        self._check(decoded, layout.shape)
        mapping = modality_mapping(decoded)
        self._ensure(self.count + 1, mapping.output_dtype(layout.dtype, decoded.bits_stored))
        assert self.store is not None
        target = self.store.array[self.count]
        out, stored = target.dtype, layout.dtype
        bits = decoded.bits_stored or stored.itemsize * 8
        same_values = out == stored or (
            out.kind == "i" and stored.kind == "u" and bits < 8 * stored.itemsize
        )
        if mapping.integral and out.itemsize == stored.itemsize and same_values:
            read_into(target.data.cast("B"))
            if mapping.intercept:
                target += out.type(mapping.intercept)
        else:
            scratch = self._scratch
            if scratch is None or scratch.shape != layout.shape or scratch.dtype != stored:
                scratch = self._scratch = np.empty(layout.shape, stored)
            read_into(scratch.data.cast("B"))
            mapping.apply(scratch, target)
        self._record(decoded, [decoded.position])

    def _ensure(self, needed: int, dtype: np.dtype[Any]) -> None:
        assert self.frame_shape is not None
        if self.store is None:
            capacity = max(needed, self.expected or _INITIAL_CAPACITY)
            self.store = self.factory((capacity, *self.frame_shape), np.dtype(dtype))
            self._prefault = _Prefaulter(self.store.array)
            return
        current = self.store.array.dtype
        wanted = np.result_type(current, dtype)
        if wanted != current:  # e.g. a later slice has a fractional rescale slope
            self._stop_prefault()
            grown = self.factory(
                (max(needed, len(self.store.array)), *self.frame_shape), np.dtype(wanted)
            )
            grown.array[: self.count] = self.store.array[: self.count]
            self.store.abort()
            self.store = grown
            self._prefault = _Prefaulter(self.store.array)
        if needed > len(self.store.array):
            self._stop_prefault()
            self.store.resize(max(needed, 2 * len(self.store.array)))
            self._prefault = _Prefaulter(self.store.array)

    def _stop_prefault(self) -> None:
        if self._prefault is not None:
            self._prefault.stop()
            self._prefault = None

    def abort(self) -> None:
        self._stop_prefault()
        if self.store is not None:
            self.store.abort()
            self.store = None

    def finish(self, study: str, series: str) -> Volume:
        if self.store is None or self.first is None or self.count == 0:
            raise InvalidDICOMError(f"series {series} has no image instances")
        self._stop_prefault()
        n = self.count
        order, positions, spacing_k, normal = self._order()
        array = self.store.resize(n)
        _permute(array, order)
        slices = [self.slices[i] for i in order]
        first = self.first
        pixel_spacing = first.pixel_spacing or (1.0, 1.0)
        if first.pixel_spacing is None:
            log.warning("series %s has no Pixel Spacing; 1 mm assumed", series)
        if self.orientation is not None:
            row_dir = np.asarray(self.orientation[:3], dtype=np.float64)
            col_dir = np.asarray(self.orientation[3:6], dtype=np.float64)
        else:
            row_dir, col_dir = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
        slice_dir = normal
        if n > 1 and positions is not None:
            step = positions[-1] - positions[0]
            length = float(np.linalg.norm(step))
            if length > 0:
                slice_dir = step / length
        volume = Volume(
            array=array,
            spacing=(float(spacing_k), float(pixel_spacing[0]), float(pixel_spacing[1])),
            origin=tuple(float(v) for v in (positions[0] if positions is not None else (0, 0, 0))),  # type: ignore[arg-type]
            orientation=np.vstack([slice_dir, col_dir, row_dir]),
            positions=positions if positions is not None else np.zeros((n, 3)),
            sop_uids=tuple(s.sop_uid for s in slices),
            study_uid=study,
            series_uid=series,
            modality=str((first.header.get("00080060") or {}).get("Value", [""])[0]),
            frame_of_reference_uid=str((first.header.get("00200052") or {}).get("Value", [""])[0]),
        )
        volume.array = self.store.commit(volume.meta())
        self.store = None
        return volume

    def _order(self) -> tuple[list[int], np.ndarray | None, float, np.ndarray]:
        """Slice order along the normal, the sorted positions, the slice spacing, the normal."""
        if self.orientation is not None:
            row = np.asarray(self.orientation[:3], dtype=np.float64)
            col = np.asarray(self.orientation[3:6], dtype=np.float64)
            normal = np.cross(row, col)
        else:
            normal = np.array([0.0, 0.0, 1.0])
        if all(s.position is not None for s in self.slices):
            points = np.asarray([s.position for s in self.slices], dtype=np.float64)
            along = points @ normal
            keys = [(along[i], s.number or 0, s.frame) for i, s in enumerate(self.slices)]
            order = sorted(range(len(keys)), key=keys.__getitem__)
            positions = points[order]
            gaps = np.diff(along[order])
            spacing = float(np.median(gaps)) if len(gaps) else self._nominal_spacing()
            if len(gaps) and (
                np.any(gaps <= 1e-6) or np.any(np.abs(gaps - spacing) > 0.01 * abs(spacing) + 1e-3)
            ):
                warnings.warn(
                    f"series {self.label}: slices are not evenly spaced along the normal "
                    f"(gaps {float(gaps.min()):.4g}–{float(gaps.max()):.4g} mm); "
                    "Volume.positions holds each slice's position",
                    stacklevel=4,
                )
            return order, positions, spacing if spacing > 0 else self._nominal_spacing(), normal
        warnings.warn(
            f"series {self.label}: slices lack Image Position (Patient); ordered by "
            "Instance Number",
            stacklevel=4,
        )
        order = sorted(
            range(len(self.slices)),
            key=lambda i: (self.slices[i].number or 0, self.slices[i].frame),
        )
        return order, None, self._nominal_spacing(), normal

    def _nominal_spacing(self) -> float:
        header = self.first.header if self.first is not None else {}
        for key in ("00180088", "00180050"):  # SpacingBetweenSlices, SliceThickness
            values = (header.get(key) or {}).get("Value")
            if values:
                try:
                    return abs(float(values[0])) or 1.0
                except (TypeError, ValueError):
                    continue
        return 1.0


def _permute(array: np.ndarray, order: Sequence[int]) -> None:
    """Reorder ``array`` in place so that ``array[i]`` becomes the old ``array[order[i]]``.

    Follows the permutation's cycles with one slice of scratch memory, so a large volume
    is never duplicated.
    """
    n = len(order)
    done = np.zeros(n, dtype=bool)
    for start in range(n):
        if done[start] or order[start] == start:
            done[start] = True
            continue
        scratch = array[start].copy()
        i = start
        while True:
            done[i] = True
            source = order[i]
            if source == start:
                array[i] = scratch
                break
            array[i] = array[source]
            i = source


def assemble_volume(
    payloads: Iterable[bytes],
    *,
    study_uid: str = "",
    series_uid: str = "",
    expected: int | None = None,
    storage: StorageFactory | None = None,
) -> Volume:
    """Build a :class:`Volume` from Part-10 instances (any order).

    Parameters
    ----------
    payloads : iterable of bytes
        The instances' bytes, e.g. the payloads of :meth:`DicomWebClient.iter_series`.
    study_uid, series_uid : str
        Recorded in the volume.
    expected : int, optional
        How many slices to preallocate for.
    storage : callable, optional
        Allocator of the output array (default: ordinary memory).

    Raises
    ------
    InvalidDICOMError
        If an instance cannot be decoded, or the instances do not form one volume
        (different sizes or orientations, no image at all).
    """
    builder = _VolumeBuilder(storage or _memory, expected, series_uid or "?")
    try:
        for payload in payloads:
            builder.add(payload)
        return builder.finish(study_uid, series_uid)
    except BaseException:
        builder.abort()
        raise


def series_volume(
    client: DicomWebClient, study: str, series: str, *, refresh: bool = False
) -> Volume:
    """Retrieve a series as a :class:`Volume` (WADO-RS, PS3.18 §10.4.1.1.1), cached.

    Parameters
    ----------
    client : DicomWebClient
    study, series : str
        UIDs.
    refresh : bool
        Retrieve again even if the cache holds the volume.

    Returns
    -------
    Volume
        From the cache (memory-mapped copy-on-write, no request at all) or from one
        streamed series retrieve.

    Raises
    ------
    DICOMwebError
        If the server refuses or the stream breaks; nothing is cached then.
    InvalidDICOMError
        If the series is not one volume (see :func:`assemble_volume`).
    """
    uids = client._uids(study, series)
    key = client.cache_key(uids, VOLUME_REPRESENTATION)
    cache = client.cache
    if cache is not None and not refresh:
        hit = cache.get_array(key)
        if hit is not None:
            array, meta = hit
            return Volume.from_meta(array, meta)
    expected = client.instance_count(*uids)

    storage: StorageFactory = _memory
    if cache is not None:

        def storage(shape: tuple[int, ...], dtype: np.dtype[Any]) -> _Storage:
            writer = cache.array_writer(key, shape, dtype)
            return writer if writer is not None else _MemoryStorage(shape, dtype)

    builder = _VolumeBuilder(storage, expected, uids[1])
    try:
        response = client.open_series(*uids)
        try:
            read_series_into(builder, response)
        finally:
            response.close()
        return builder.finish(uids[0], uids[1])
    except BaseException:
        builder.abort()
        raise
