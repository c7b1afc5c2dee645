"""Pixels to pictures: LUTs, windows, photometric handling, viewports, encoding.

The pipeline of PS3.3 C.11 (:mod:`imagingkit.render.lut`) turns decoded DICOM pixels into
8-bit display values; :mod:`imagingkit.render.encode` crops, scales and encodes them as
the rendered resources of PS3.18 §8.3.5.1 expect. The embedded DICOMweb store serves its
``/rendered`` and ``/thumbnail`` resources with these functions, and notebooks can call
them directly::

    from imagingkit.render import display_frame, encode_image, window_preset
    png = encode_image(display_frame(ds, window=window_preset("lung")), "image/png")
"""

from imagingkit.render.encode import (
    RENDERED_MEDIA_TYPES,
    Viewport,
    apply_viewport,
    encode_animation,
    encode_image,
    fit_size,
    frame_duration_ms,
    parse_quality,
    thumbnail,
)
from imagingkit.render.lut import (
    PRESETS,
    Window,
    apply_window,
    dataset_window,
    decode_frame,
    display_frame,
    display_pixels,
    minmax_window,
    modality_lut,
    window_preset,
)

__all__ = [
    "PRESETS",
    "RENDERED_MEDIA_TYPES",
    "Viewport",
    "Window",
    "apply_viewport",
    "apply_window",
    "dataset_window",
    "decode_frame",
    "display_frame",
    "display_pixels",
    "encode_animation",
    "encode_image",
    "fit_size",
    "frame_duration_ms",
    "minmax_window",
    "modality_lut",
    "parse_quality",
    "thumbnail",
    "window_preset",
]
