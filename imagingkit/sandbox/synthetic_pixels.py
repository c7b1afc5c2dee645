"""Image Pixel module and pixel-data encoding for generated instances (PS3.3 C.7.6.3, PS3.5 §8).

:func:`set_pixels` fills the Image Pixel attributes from a numpy array and stores it in the
requested transfer syntax:

* Explicit VR Little Endian — native pixel data;
* RLE Lossless (PS3.5 Annex G) — pydicom's encoder with the pylibjpeg-rle plugin;
* JPEG 2000 Lossless (PS3.5 §A.4.4) — pydicom's encoder with pylibjpeg-openjpeg;
* JPEG Baseline 8-bit (PS3.5 §A.4.1) — frames encoded with Pillow (4:2:2 ``YBR_FULL_422``
  for colour, as ultrasound systems do) and encapsulated with :func:`pydicom.encaps.encapsulate`.

Every encoder used is deterministic, so the same array always yields the same bytes.
"""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels.encoders import JPEG2000LosslessEncoder, RLELosslessEncoder

from imagingkit.sandbox.cohort import TransferSyntax

__all__ = ["set_pixels", "to_uint"]


def to_uint(values: npt.NDArray[np.floating], bits: int) -> npt.NDArray[np.uint16]:
    """Round and clip to the unsigned range of *bits* bits, as ``uint16``."""
    return np.clip(np.rint(values), 0, (1 << bits) - 1).astype(np.uint16)


def set_pixels(
    ds: Dataset,
    arr: npt.NDArray[np.integer],
    transfer_syntax: str,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    multiframe: bool = False,
) -> None:
    """Set the Image Pixel module of *ds* from *arr* and encode it as *transfer_syntax*.

    Parameters
    ----------
    ds : pydicom.Dataset
        The instance being built.
    arr : numpy.ndarray
        ``(rows, cols)``, ``(frames, rows, cols)`` or with a trailing axis of 3 for RGB;
        ``uint8`` or ``uint16``.
    transfer_syntax : str
        One of :class:`~imagingkit.sandbox.cohort.TransferSyntax`.
    photometric : str
        ``MONOCHROME1``, ``MONOCHROME2`` or ``RGB`` (JPEG baseline colour is stored as
        ``YBR_FULL_422``).
    bits_stored : int, optional
        Defaults to the dtype's width.
    multiframe : bool
        Write Number of Frames even for a single frame.
    """
    colour = photometric == "RGB"
    frames = arr.shape[0] if (arr.ndim == 4 or (arr.ndim == 3 and not colour)) else 1
    bits_allocated = arr.dtype.itemsize * 8
    ds.Rows, ds.Columns = int(arr.shape[-3 if colour else -2]), int(arr.shape[-2 if colour else -1])
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored or bits_allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if colour:
        ds.PlanarConfiguration = 0
    if multiframe or frames > 1:
        ds.NumberOfFrames = frames
    if transfer_syntax == TransferSyntax.EXPLICIT_LE:
        ds.PixelData = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
        ds["PixelData"].VR = "OB" if bits_allocated == 8 else "OW"
        return
    if transfer_syntax == TransferSyntax.JPEG_BASELINE:
        _jpeg_baseline(ds, arr, colour=colour, frames=frames)
    else:
        encoder = _ENCODERS[transfer_syntax]
        stack = arr.reshape((frames, *(arr.shape[-3:] if colour else arr.shape[-2:])))
        options = {
            "rows": ds.Rows,
            "columns": ds.Columns,
            "samples_per_pixel": ds.SamplesPerPixel,
            "bits_allocated": bits_allocated,
            "bits_stored": ds.BitsStored,
            "pixel_representation": 0,
            "photometric_interpretation": photometric,
            "number_of_frames": 1,
            "planar_configuration": 0,
        }
        plugin = "pylibjpeg" if transfer_syntax == TransferSyntax.RLE else ""
        encoded = [encoder.encode(frame, encoding_plugin=plugin, **options) for frame in stack]
        ds.PixelData = encapsulate(encoded)
        if colour and transfer_syntax == TransferSyntax.RLE:
            ds.PlanarConfiguration = 1  # RLE stores one segment per colour plane
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


_ENCODERS = {
    TransferSyntax.RLE: RLELosslessEncoder,
    TransferSyntax.JPEG2000_LOSSLESS: JPEG2000LosslessEncoder,
}


def _jpeg_baseline(ds: Dataset, arr: npt.NDArray[np.integer], *, colour: bool, frames: int) -> None:
    if arr.dtype != np.uint8:
        raise ValueError("JPEG baseline needs 8-bit samples")
    stack = arr.reshape((frames, *(arr.shape[-3:] if colour else arr.shape[-2:])))
    encoded = []
    for frame in stack:
        buf = io.BytesIO()
        image = Image.fromarray(frame, "RGB" if colour else "L")
        # subsampling=1 is 4:2:2, which is what YBR_FULL_422 declares (PS3.3 C.7.6.3.1.2).
        image.save(buf, format="JPEG", quality=85, subsampling=1, optimize=False)
        encoded.append(buf.getvalue())
    ds.PixelData = encapsulate(encoded)
    if colour:
        ds.PhotometricInterpretation = "YBR_FULL_422"
    native = sum(f.nbytes for f in stack)
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = f"{native / max(1, sum(len(e) for e in encoded)):.2f}"[:16]
    ds.LossyImageCompressionMethod = "ISO_10918_1"
