"""Display values to image files: viewport, thumbnails and JPEG/PNG/GIF encoding.

Implements the rendering parameters of PS3.18 §8.3.5.1 on 8-bit display arrays (from
:func:`imagingkit.render.lut.display_pixels`): ``viewport`` (§8.3.5.1.3), ``quality``
(§8.3.5.1.2) and the rendered media types (§8.7.4), using Pillow.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from imagingkit.errors import InvalidInputError, InvalidQueryError

__all__ = [
    "DEFAULT_FRAME_MS",
    "DEFAULT_QUALITY",
    "MAX_ANIMATION_BYTES",
    "RENDERED_MEDIA_TYPES",
    "THUMBNAIL_SIZE",
    "Viewport",
    "apply_viewport",
    "encode_animation",
    "encode_image",
    "fit_size",
    "frame_duration_ms",
    "parse_quality",
    "thumbnail",
]

#: Media types a rendered resource can be encoded as, and Pillow's format names.
RENDERED_MEDIA_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}
#: JPEG quality when the request gives none (the value Orthanc uses too).
DEFAULT_QUALITY = 90
#: Longest side of a thumbnail when the request gives no viewport (Sup 203 leaves it to us).
THUMBNAIL_SIZE = 128
_MAX_VIEWPORT = 8192
#: display time of one animation frame when the instance says nothing (10 frames/s)
DEFAULT_FRAME_MS = 100
#: an animation holds all its display frames in memory: more than this is refused
MAX_ANIMATION_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class Viewport:
    """The ``viewport`` rendering parameter (PS3.18 §8.3.5.1.3).

    Parameters
    ----------
    width, height : int
        Viewport size in pixels (``vw``, ``vh``); the rendered region is scaled to fit
        inside it, keeping its aspect ratio.
    sx, sy : int
        Top-left corner of the source region (default 0, 0).
    sw, sh : int, optional
        Size of the source region (default: up to the image's edge); negative values
        flip the region horizontally / vertically.
    """

    width: int
    height: int
    sx: int = 0
    sy: int = 0
    sw: int | None = None
    sh: int | None = None

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if not 0 < value <= _MAX_VIEWPORT:
                raise InvalidInputError(
                    f"viewport {name} {value} is out of range 1…{_MAX_VIEWPORT}"
                )
        if self.sx < 0 or self.sy < 0:
            raise InvalidInputError(f"viewport offset ({self.sx}, {self.sy}) is negative")
        if self.sw == 0 or self.sh == 0:
            raise InvalidInputError("viewport source region has zero width or height")

    @classmethod
    def parse(cls, text: str) -> Viewport:
        """Parse ``vw,vh`` or ``vw,vh,sx,sy,sw,sh`` (empty fields take defaults).

        Raises
        ------
        InvalidQueryError
            Naming the bad value.
        """
        fields = [f.strip() for f in text.split(",")]
        if len(fields) not in (2, 6):
            raise InvalidQueryError(
                f"viewport={text!r}: expected 'vw,vh' or 'vw,vh,sx,sy,sw,sh' (PS3.18 §8.3.5.1.3)"
            )
        try:
            numbers = [int(f) if f else None for f in fields]
        except ValueError:
            raise InvalidQueryError(f"viewport={text!r}: values must be integers") from None
        vw, vh = numbers[0], numbers[1]
        if vw is None or vh is None:
            raise InvalidQueryError(f"viewport={text!r}: vw and vh are required")
        rest = numbers[2:] + [None] * (6 - len(numbers))
        try:
            return cls(vw, vh, rest[0] or 0, rest[1] or 0, rest[2], rest[3])
        except InvalidInputError as exc:
            raise InvalidQueryError(f"viewport={text!r}: {exc.message}") from None


def parse_quality(text: str) -> int:
    """Parse the ``quality`` parameter: an integer 1…100 (PS3.18 §8.3.5.1.2).

    Raises
    ------
    InvalidQueryError
        Naming the bad value.
    """
    try:
        value = int(text.strip())
    except ValueError:
        value = -1
    if not 1 <= value <= 100:
        raise InvalidQueryError(f"quality={text!r}: expected an integer from 1 to 100")
    return value


def fit_size(width: int, height: int, box_width: int, box_height: int) -> tuple[int, int]:
    """Return the largest size with *width*:*height*'s aspect that fits in the box."""
    scale = min(box_width / width, box_height / height)
    return max(1, min(box_width, round(width * scale))), max(
        1, min(box_height, round(height * scale))
    )


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (image.shape[1], image.shape[0]) == size:
        return image
    pil = Image.fromarray(np.ascontiguousarray(image))
    return np.asarray(pil.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))


def apply_viewport(image: np.ndarray, viewport: Viewport) -> np.ndarray:
    """Crop, flip and scale a display array as the ``viewport`` parameter asks.

    Parameters
    ----------
    image : numpy.ndarray
        uint8 ``(rows, columns)`` or ``(rows, columns, 3)``.
    viewport : Viewport

    Returns
    -------
    numpy.ndarray
        The region scaled to fit ``viewport.width`` × ``viewport.height`` with its
        aspect ratio kept (so one side equals the viewport's, the other is at most it).

    Raises
    ------
    InvalidQueryError
        If the source region lies outside the image.
    """
    rows, columns = image.shape[:2]
    if viewport.sx >= columns or viewport.sy >= rows:
        raise InvalidQueryError(
            f"viewport source offset ({viewport.sx}, {viewport.sy}) lies outside the "
            f"{columns}×{rows} image"
        )
    sw = viewport.sw if viewport.sw is not None else columns - viewport.sx
    sh = viewport.sh if viewport.sh is not None else rows - viewport.sy
    region = image[viewport.sy : viewport.sy + abs(sh), viewport.sx : viewport.sx + abs(sw)]
    if sw < 0:
        region = region[:, ::-1]
    if sh < 0:
        region = region[::-1]
    size = fit_size(region.shape[1], region.shape[0], viewport.width, viewport.height)
    return _resize(region, size)


def thumbnail(image: np.ndarray, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """Return *image* scaled so that its longest side is *size* (never enlarged)."""
    rows, columns = image.shape[:2]
    if max(rows, columns) <= size:
        return image
    return _resize(image, fit_size(columns, rows, size, size))


def encode_image(
    image: np.ndarray, media_type: str = "image/jpeg", *, quality: int | None = None
) -> bytes:
    """Encode a display array as JPEG, PNG or GIF.

    Parameters
    ----------
    image : numpy.ndarray
        uint8 ``(rows, columns)`` or ``(rows, columns, 3)``.
    media_type : str
        One of :data:`RENDERED_MEDIA_TYPES`.
    quality : int, optional
        JPEG quality 1…100 (default :data:`DEFAULT_QUALITY`); ignored by lossless types.

    Returns
    -------
    bytes
    """
    try:
        fmt = RENDERED_MEDIA_TYPES[media_type]
    except KeyError:
        raise InvalidInputError(
            f"cannot encode rendered images as {media_type!r}; "
            f"choose one of {sorted(RENDERED_MEDIA_TYPES)}"
        ) from None
    if image.dtype != np.uint8:
        raise InvalidInputError(f"display array must be uint8, got {image.dtype}")
    pil = Image.fromarray(np.ascontiguousarray(image))
    out = io.BytesIO()
    if fmt == "JPEG":
        pil.save(out, fmt, quality=quality or DEFAULT_QUALITY)
    elif fmt == "PNG":
        pil.save(out, fmt, compress_level=3)
    else:
        pil.save(out, fmt)
    return out.getvalue()


def frame_duration_ms(ds: Any) -> int:
    """How long each frame of a multi-frame image is shown, in milliseconds.

    From Frame Time (0018,1063), else Cine Rate (0018,0040) or Recommended Display Frame
    Rate (0008,2144) in frames per second (PS3.3 C.7.6.5 Cine Module); else
    :data:`DEFAULT_FRAME_MS`. At least 10 ms, the resolution of GIF delays.
    """
    for keyword, per_second in (
        ("FrameTime", False),
        ("CineRate", True),
        ("RecommendedDisplayFrameRate", True),
    ):
        try:
            value = float(ds.get(keyword) or 0)
        except (TypeError, ValueError):
            continue
        if value > 0:
            return max(10, round(1000 / value if per_second else value))
    return DEFAULT_FRAME_MS


def encode_animation(frames: Sequence[np.ndarray], duration_ms: int = DEFAULT_FRAME_MS) -> bytes:
    """Encode display arrays as one animated GIF that loops (PS3.18 Table 8.7.4-1:
    ``image/gif`` is the rendered media type of the Multi-frame Image category).

    Parameters
    ----------
    frames : sequence of numpy.ndarray
        uint8 ``(rows, columns)`` or ``(rows, columns, 3)``, all the same shape.
    duration_ms : int
        Display time of each frame.

    Returns
    -------
    bytes
        A GIF89a file. Greyscale frames keep their 256 grey levels exactly; colour frames
        are reduced to one 256-colour palette per frame (GIF holds no more). Identical
        consecutive frames become one frame shown for their summed time (Pillow's GIF
        writer does this), so the animation's length is kept, not its frame count.

    Raises
    ------
    InvalidInputError
        If there are no frames, they differ in shape or type, or they would need more
        than :data:`MAX_ANIMATION_BYTES` of memory.
    """
    if not frames:
        raise InvalidInputError("an animation needs at least one frame")
    shape = frames[0].shape
    if any(f.shape != shape or f.dtype != np.uint8 for f in frames):
        raise InvalidInputError("animation frames must all be uint8 arrays of one shape")
    if len(frames) * frames[0].nbytes > MAX_ANIMATION_BYTES:
        raise InvalidInputError(
            f"{len(frames)} frames of {shape} are too large to animate "
            f"(over {MAX_ANIMATION_BYTES // 2**20} MiB); ask for multipart/related frames"
        )
    images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    out = io.BytesIO()
    images[0].save(
        out,
        "GIF",
        save_all=True,
        append_images=images[1:],
        duration=max(10, int(duration_ms)),
        loop=0,
        optimize=False,
    )
    return out.getvalue()
