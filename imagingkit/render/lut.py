"""Pixels to displayable values: the grey-scale and colour pipeline of PS3.3 C.11.

Grey-scale images (MONOCHROME1/2) go through the Modality LUT (rescale slope and
intercept, or a Modality LUT Sequence: PS3.3 C.11.1), then a VOI transformation — a
window given by the caller, else the VOI LUT Sequence, else the file's Window Center and
Width, else the data's own minimum and maximum (PS3.3 C.11.2) — and MONOCHROME1 is
inverted so that the result is always "larger is brighter" (PS3.3 C.7.6.3.1.2).
Colour images become 8-bit RGB: YCbCr is converted (PS3.3 C.7.6.3.1.2), PALETTE COLOR
is looked up in its palette (PS3.3 C.7.6.3.1.5, C.7.9), more than 8 bits are scaled.

Windows are expressed in the units after the Modality LUT (for CT: Hounsfield units),
as in DICOM and in the ``window`` parameter of PS3.18 §8.3.5.1.4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, convert_color_space

from imagingkit.errors import InvalidDICOMError, InvalidInputError, InvalidQueryError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "PRESETS",
    "WINDOW_FUNCTIONS",
    "Window",
    "apply_window",
    "dataset_window",
    "decode_frame",
    "display_frame",
    "display_pixels",
    "minmax_window",
    "modality_lut",
    "window_preset",
]

#: PS3.18 ``window`` function names and the VOI LUT Function (0028,1056) terms they mean.
WINDOW_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}
_FROM_DICOM = {v: k for k, v in WINDOW_FUNCTIONS.items()}

_GREY = ("MONOCHROME1", "MONOCHROME2")
_YBR = ("YBR_FULL", "YBR_FULL_422")
# After decoding, JPEG 2000's reversible/irreversible colour transforms are undone.
_RGB_LIKE = ("RGB", "YBR_ICT", "YBR_RCT")


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2).

    Parameters
    ----------
    center : float
        Window Center, in output units of the Modality LUT.
    width : float
        Window Width; at least 1 for ``"linear"``, above 0 otherwise.
    function : {"linear", "linear-exact", "sigmoid"}
        The VOI LUT Function (PS3.3 C.11.2.1.3), in PS3.18 spelling.

    Raises
    ------
    InvalidInputError
        If a value is not finite, the width is too small or the function unknown.
    """

    center: float
    width: float
    function: str = "linear"

    def __post_init__(self) -> None:
        if self.function not in WINDOW_FUNCTIONS:
            raise InvalidInputError(
                f"window function {self.function!r} is not one of {sorted(WINDOW_FUNCTIONS)}"
            )
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            raise InvalidInputError(f"window center {self.center!r} / width {self.width!r}")
        least = 1.0 if self.function == "linear" else 0.0
        if self.width < least or self.width == 0:
            raise InvalidInputError(
                f"window width {self.width:g} is too small for the {self.function} function "
                "(PS3.3 C.11.2.1.2: at least 1 for linear, above 0 otherwise)"
            )

    @classmethod
    def parse(cls, text: str) -> Window:
        """Parse PS3.18's ``center,width[,function]`` or a preset name (e.g. ``lung``).

        Raises
        ------
        InvalidQueryError
            Naming the bad value.
        """
        value = text.strip()
        if value.lower() in PRESETS:
            return PRESETS[value.lower()]
        fields = [f.strip() for f in value.split(",")]
        if len(fields) not in (2, 3):
            raise InvalidQueryError(
                f"window={text!r}: expected 'center,width[,function]' "
                f"or one of the presets {sorted(PRESETS)} (PS3.18 §8.3.5.1.4)"
            )
        try:
            center, width = float(fields[0]), float(fields[1])
        except ValueError:
            raise InvalidQueryError(f"window={text!r}: center and width must be numbers") from None
        function = fields[2].lower() if len(fields) == 3 and fields[2] else "linear"
        try:
            return cls(center, width, function)
        except InvalidInputError as exc:
            raise InvalidQueryError(f"window={text!r}: {exc.message}") from None


#: Common CT windows, in Hounsfield units (centre, width).
PRESETS: dict[str, Window] = {
    "lung": Window(-600.0, 1500.0),
    "mediastinum": Window(50.0, 350.0),
    "bone": Window(400.0, 1800.0),
    "brain": Window(40.0, 80.0),
    "abdomen": Window(40.0, 400.0),
}


def window_preset(name: str) -> Window:
    """Return the preset window called *name* (case-insensitive).

    Raises
    ------
    InvalidInputError
        If there is no such preset; the message lists the known ones.
    """
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise InvalidInputError(
            f"no window preset {name!r}; known presets: {', '.join(sorted(PRESETS))}"
        ) from None


def modality_lut(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """Apply the Modality LUT (PS3.3 C.11.1): stored values to meaningful units.

    Parameters
    ----------
    pixels : numpy.ndarray
        Stored values of one or more grey-scale frames.
    ds : pydicom.dataset.Dataset
        Supplies Rescale Slope/Intercept or a Modality LUT Sequence.

    Returns
    -------
    numpy.ndarray
        float64 values (e.g. Hounsfield units for CT).
    """
    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    slope = _number(ds.get("RescaleSlope"), 1.0)
    intercept = _number(ds.get("RescaleIntercept"), 0.0)
    values = pixels.astype(np.float64)
    if slope != 1.0:
        values *= slope
    if intercept != 0.0:
        values += intercept
    return values


def _number(value: Any, default: float) -> float:
    """First value of a DS/IS element as float, or *default* if absent or unusable."""
    if value is None or value == "":
        return default
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    try:
        out = float(value) if value is not None else default
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default


def apply_window(values: np.ndarray, window: Window, *, bits: int = 8) -> np.ndarray:
    """Map values through a VOI window to ``0 … 2**bits - 1``.

    Parameters
    ----------
    values : numpy.ndarray
        Output of the Modality LUT.
    window : Window
        Centre, width and function.
    bits : int
        Output depth; 8 gives uint8, more gives uint16.

    Returns
    -------
    numpy.ndarray
        Rounded, clipped integers.

    Notes
    -----
    With ``c`` centre, ``w`` width and ``y`` in ``[0, ymax]`` (PS3.3):

    - linear (C.11.2.1.2.1): ``ymin`` if ``x <= c - 0.5 - (w - 1)/2``, ``ymax`` if
      ``x > c - 0.5 + (w - 1)/2``, else ``((x - (c - 0.5)) / (w - 1) + 0.5) * ymax``;
    - linear-exact (C.11.2.1.3.2): ``ymin`` if ``x <= c - w/2``, ``ymax`` if
      ``x > c + w/2``, else ``((x - c) / w + 0.5) * ymax``;
    - sigmoid (C.11.2.1.3.1): ``ymax / (1 + exp(-4 (x - c) / w))``.
    """
    ymax = float(2**bits - 1)
    c, w = window.center, window.width
    x = np.asarray(values, dtype=np.float64)
    if window.function == "sigmoid":
        with np.errstate(over="ignore"):
            y = ymax / (1.0 + np.exp(-4.0 * (x - c) / w))
    elif window.function == "linear-exact":
        y = ((x - c) / w + 0.5) * ymax
        y = np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, ymax, y))
    elif w == 1:  # a step at c - 0.5 (the general formula divides by w - 1)
        y = np.where(x <= c - 0.5, 0.0, ymax)
    else:
        y = ((x - (c - 0.5)) / (w - 1) + 0.5) * ymax
        y = np.where(x <= c - 0.5 - (w - 1) / 2, 0.0, np.where(x > c - 0.5 + (w - 1) / 2, ymax, y))
    out = np.clip(np.rint(y), 0.0, ymax)
    return out.astype(np.uint8 if bits <= 8 else np.uint16)


def dataset_window(ds: Dataset, index: int = 0) -> Window | None:
    """Return the file's own window (Window Center/Width, VOI LUT Function), if usable.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
    index : int
        Which of several windows to use (Window Center is multi-valued).

    Returns
    -------
    Window or None
        None if the file has no window or an unusable one (e.g. width 0).
    """
    centers, widths = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centers is None or widths is None:
        return None
    try:
        c_values = list(centers) if not isinstance(centers, (str, int, float)) else [centers]
        w_values = list(widths) if not isinstance(widths, (str, int, float)) else [widths]
        center = float(c_values[min(index, len(c_values) - 1)])
        width = float(w_values[min(index, len(w_values) - 1)])
    except (TypeError, ValueError, IndexError):
        return None
    function = _FROM_DICOM.get(str(ds.get("VOILUTFunction", "LINEAR")).strip().upper(), "linear")
    try:
        return Window(center, width, function)
    except InvalidInputError:
        return None


def minmax_window(values: np.ndarray) -> Window:
    """Return the linear-exact window spanning the data's minimum to maximum."""
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size == 0:
        return Window(0.0, 1.0, "linear-exact")
    lo, hi = float(finite.min()), float(finite.max())
    return Window((lo + hi) / 2, max(hi - lo, 1e-6), "linear-exact")


def _voi_lut_sequence(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """Apply the first VOI LUT of the VOI LUT Sequence (PS3.3 C.11.2.1.1), to 8 bits."""
    item = ds.VOILUTSequence[0]
    descriptor = item.LUTDescriptor
    depth = int(descriptor[2]) if len(descriptor) > 2 and int(descriptor[2]) > 0 else 16
    # apply_voi indexes the LUT with the (integer) Modality LUT output
    out = np.asarray(apply_voi(np.rint(values).astype(np.int64), ds), dtype=np.float64)
    return np.clip(np.rint(out * 255.0 / (2**depth - 1)), 0, 255).astype(np.uint8)


def _to_8bit(pixels: np.ndarray, bits_stored: int) -> np.ndarray:
    if pixels.dtype == np.uint8 and bits_stored >= 8:
        return pixels
    scale = 255.0 / float(2 ** max(bits_stored, 1) - 1)
    return np.clip(np.rint(pixels.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def display_pixels(
    pixels: np.ndarray,
    ds: Dataset,
    *,
    photometric: str | None = None,
    window: Window | None = None,
) -> np.ndarray:
    """Turn one decoded frame into 8-bit display values.

    Parameters
    ----------
    pixels : numpy.ndarray
        One frame as decoded by pydicom: ``(rows, columns)`` or ``(rows, columns, 3)``.
    ds : pydicom.dataset.Dataset
        The instance (its Image Pixel, Modality LUT and VOI LUT modules are read).
    photometric : str, optional
        The photometric interpretation of *pixels*, when decoding changed it (pydicom
        returns YCbCr as RGB); defaults to the dataset's.
    window : Window, optional
        Overrides the file's VOI; ignored for colour images (PS3.18 §8.3.5.1.4).

    Returns
    -------
    numpy.ndarray
        uint8 ``(rows, columns)`` grey-scale or ``(rows, columns, 3)`` RGB.

    Raises
    ------
    InvalidDICOMError
        If the photometric interpretation is one this pipeline cannot show.
    """
    pi = str(photometric or ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bits_stored = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    if pi in _GREY:
        if pixels.ndim != 2:
            raise InvalidDICOMError(f"{pi} frame has shape {pixels.shape}, expected 2-D")
        values = modality_lut(pixels, ds)
        if window is not None:
            out = apply_window(values, window)
        elif "VOILUTSequence" in ds and len(ds.VOILUTSequence):
            out = _voi_lut_sequence(values, ds)
        else:
            out = apply_window(values, dataset_window(ds) or minmax_window(values))
        return 255 - out if pi == "MONOCHROME1" else out
    if pi == "PALETTE COLOR":
        rgb = np.asarray(apply_color_lut(pixels, ds))
        depth = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return _to_8bit(rgb, 16 if depth > 8 else 8)
    if pi in _YBR:
        pixels = convert_color_space(pixels, pi, "RGB")
        pi = "RGB"
    if pi in _RGB_LIKE:
        if pixels.ndim != 3 or pixels.shape[-1] != 3:
            raise InvalidDICOMError(f"{pi} frame has shape {pixels.shape}, expected (r, c, 3)")
        return _to_8bit(pixels, bits_stored)
    raise InvalidDICOMError(f"cannot render photometric interpretation {pi!r}")


def decode_frame(ds: Dataset, index: int = 0) -> tuple[np.ndarray, str]:
    """Decode frame *index* (0-based) of *ds* with pydicom's decoders.

    Returns
    -------
    tuple of (numpy.ndarray, str)
        The frame, YCbCr already converted to RGB, and its photometric interpretation
        after decoding.

    Raises
    ------
    InvalidDICOMError
        If the instance has no pixel data, the frame does not exist, or no installed
        decoder can decode it.
    """
    from pydicom.pixels import get_decoder

    if "PixelData" not in ds:
        raise InvalidDICOMError("the instance has no Pixel Data to render")
    frames = int(ds.get("NumberOfFrames") or 1)
    if not 0 <= index < frames:
        raise InvalidDICOMError(f"frame {index + 1} does not exist (the instance has {frames})")
    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if tsyntax is None:
        raise InvalidDICOMError("the instance has no Transfer Syntax UID")
    options: dict[str, Any] = {"as_rgb": True}  # (pydicom types **kwargs too narrowly)
    try:
        pixels, meta = get_decoder(tsyntax).as_array(ds, index=index, **options)
    except Exception as exc:  # pydicom/plugins raise many types; report them as one
        raise InvalidDICOMError(f"cannot decode frame {index + 1}: {exc}") from exc
    photometric = str(meta.get("photometric_interpretation") or ds.PhotometricInterpretation)
    return pixels, photometric


def display_frame(ds: Dataset, index: int = 0, *, window: Window | None = None) -> np.ndarray:
    """Decode frame *index* (0-based) and return it as 8-bit display values.

    See :func:`decode_frame` and :func:`display_pixels`.
    """
    pixels, photometric = decode_frame(ds, index)
    return display_pixels(pixels, ds, photometric=photometric, window=window)
