"""The render layer: LUT math against hand-computed values, viewports, encoding, and every
decodable image among pydicom's bundled test files."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from imagingkit.errors import InvalidDICOMError, InvalidInputError, InvalidQueryError
from imagingkit.render import (
    PRESETS,
    Viewport,
    Window,
    apply_viewport,
    apply_window,
    dataset_window,
    display_frame,
    display_pixels,
    encode_image,
    fit_size,
    modality_lut,
    parse_quality,
    thumbnail,
    window_preset,
)

# --------------------------------------------------------------------------- windows


def test_linear_window_matches_ps33_formula_by_hand() -> None:
    # c=40, w=400: below c - 0.5 - (w-1)/2 = -160 → 0, above c - 0.5 + (w-1)/2 = 239 → 255,
    # else ((x - 39.5) / 399 + 0.5) * 255
    x = np.array([-1000, -160, -159, 40, 100, 239, 240, 3000])
    got = apply_window(x, Window(40, 400))
    # -159: (-198.5/399 + .5)*255 = 0.639 → 1;  40: (0.5/399+.5)*255 = 127.82 → 128
    # 100: (60.5/399+.5)*255 = 166.17 → 166;  239: (199.5/399+.5)*255 = 255
    assert got.tolist() == [0, 0, 1, 128, 166, 255, 255, 255]
    assert got.dtype == np.uint8


def test_linear_exact_and_sigmoid_windows_by_hand() -> None:
    x = np.array([-60, -50, 0, 25, 50, 60])
    exact = apply_window(x, Window(0, 100, "linear-exact"))
    # (x/100 + .5)*255: -50 → 0 (≤ c - w/2), 0 → 127.5 → 128 (round half even), 25 → 191.25
    assert exact.tolist() == [0, 0, 128, 191, 255, 255]
    sigmoid = apply_window(x, Window(0, 100, "sigmoid"))
    # 255 / (1 + exp(-4x/100)): 0 → 127.5 → 128, 25 → 186.4, -50 → 30.5 → 30, 60 → 233.8
    assert sigmoid.tolist() == [21, 30, 128, 186, 225, 234]


def test_linear_window_of_width_one_is_a_step() -> None:
    assert apply_window(np.array([9, 9.5, 10, 11]), Window(10, 1)).tolist() == [0, 0, 255, 255]


def test_sixteen_bit_output() -> None:
    out = apply_window(np.array([-160, 40, 239]), Window(40, 400), bits=16)
    # 40: (0.5/399 + 0.5) * 65535 = 32849.6
    assert out.dtype == np.uint16 and out.tolist() == [0, 32850, 65535]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("40,400", Window(40, 400, "linear")),
        (" -600 , 1500 , LINEAR-EXACT", Window(-600, 1500, "linear-exact")),
        ("0,1,sigmoid", Window(0, 1, "sigmoid")),
        ("lung", PRESETS["lung"]),
        ("Bone", PRESETS["bone"]),
    ],
)
def test_window_parse(text: str, expected: Window) -> None:
    assert Window.parse(text) == expected


@pytest.mark.parametrize("text", ["40", "40,0", "a,400", "40,400,gamma", "1,2,3,4", "40,0.5"])
def test_window_parse_rejects_naming_the_value(text: str) -> None:
    with pytest.raises(InvalidQueryError, match="window="):
        Window.parse(text)


def test_window_rejects_non_finite_and_presets_are_named() -> None:
    with pytest.raises(InvalidInputError):
        Window(float("nan"), 10)
    with pytest.raises(InvalidInputError, match="abdomen"):
        window_preset("liver")
    assert window_preset("MEDIASTINUM") == Window(50, 350)
    assert set(PRESETS) == {"lung", "mediastinum", "bone", "brain", "abdomen"}


# --------------------------------------------------------------------------- LUTs


def _grey(pixels: np.ndarray, photometric: str = "MONOCHROME2", **attrs: object) -> Dataset:
    ds = Dataset()
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1 if pixels.ndim == 2 else 3
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def test_modality_lut_rescale_and_sequence() -> None:
    pixels = np.array([[0, 1000]], dtype=np.uint16)
    ds = _grey(pixels, RescaleSlope="2", RescaleIntercept="-1024")
    assert modality_lut(pixels, ds).tolist() == [[-1024.0, 976.0]]
    item = Dataset()
    item.LUTDescriptor = [4, 0, 16]
    item.ModalityLUTType = "HU"
    item.LUTData = [10, 20, 30, 40]
    lut = _grey(np.zeros((1, 5), np.uint16), ModalityLUTSequence=Sequence([item]))
    values = modality_lut(np.array([[0, 1, 2, 3, 5]], dtype=np.uint16), lut)
    assert values.tolist() == [[10, 20, 30, 40, 40]]  # beyond the table: its last entry


def test_dataset_window_reads_multi_values_and_function() -> None:
    ds = _grey(np.zeros((2, 2), np.int16))
    assert dataset_window(ds) is None
    ds.WindowCenter, ds.WindowWidth = ["40", "-600"], ["400", "1500"]
    assert dataset_window(ds) == Window(40, 400)
    assert dataset_window(ds, 1) == Window(-600, 1500)
    ds.VOILUTFunction = "SIGMOID"
    assert dataset_window(ds) == Window(40, 400, "sigmoid")
    ds.WindowWidth = "0"
    assert dataset_window(ds) is None  # unusable: fall back to min/max


def test_display_uses_request_window_then_file_window_then_min_max() -> None:
    pixels = np.array([[0, 50, 100]], dtype=np.int16)
    ds = _grey(pixels, RescaleIntercept="-50")  # values -50, 0, 50
    assert display_pixels(pixels, ds).tolist() == [[0, 128, 255]]  # min/max
    ds.WindowCenter, ds.WindowWidth = "0", "11"
    # linear c=0 w=11: x ≤ -5.5 → 0, x > 4.5 → 255
    assert display_pixels(pixels, ds).tolist() == [[0, 140, 255]]
    assert display_pixels(pixels, ds, window=Window(50, 2)).tolist() == [[0, 0, 255]]


def test_monochrome1_is_inverted() -> None:
    pixels = np.array([[0, 25, 100]], dtype=np.uint16)
    two = display_pixels(pixels, _grey(pixels))
    one = display_pixels(pixels, _grey(pixels, "MONOCHROME1"))
    assert two.tolist() == [[0, 64, 255]]
    assert one.tolist() == [[255, 191, 0]]


def test_voi_lut_sequence_is_applied_and_scaled_to_8_bits() -> None:
    item = Dataset()
    item.LUTDescriptor = [3, 0, 12]  # 3 entries, first maps value 0, 12-bit output
    item.LUTData = [0, 2048, 4095]
    pixels = np.array([[0, 1, 2, 7]], dtype=np.uint16)
    ds = _grey(pixels, VOILUTSequence=Sequence([item]))
    assert display_pixels(pixels, ds).tolist() == [[0, 128, 255, 255]]


def test_palette_colour_lookup_by_hand() -> None:
    ds = _grey(np.zeros((1, 4), np.uint8), "PALETTE COLOR", BitsAllocated=8, BitsStored=8)
    ds.HighBit = 7
    for colour, data in (
        ("Red", [0, 65535, 0, 0]),
        ("Green", [0, 0, 65535, 0]),
        ("Blue", [0, 0, 0, 65535]),
    ):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [4, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", np.array(data, "<u2").tobytes())
    out = display_pixels(np.array([[0, 1, 2, 3]], dtype=np.uint8), ds)
    assert out.tolist() == [[[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]]]


def test_ybr_full_is_converted_and_16_bit_rgb_scaled() -> None:
    ybr = np.array([[[76, 85, 255], [255, 128, 128]]], dtype=np.uint8)  # red, white
    ds = _grey(ybr, "YBR_FULL", BitsAllocated=8, BitsStored=8)
    out = display_pixels(ybr, ds).astype(int)
    assert np.abs(out - [[[255, 0, 0], [255, 255, 255]]]).max() <= 2
    rgb16 = np.array([[[65535, 0, 32768]]], dtype=np.uint16)
    assert display_pixels(rgb16, _grey(rgb16, "RGB")).tolist() == [[[255, 0, 128]]]
    with pytest.raises(InvalidDICOMError, match="HSV"):
        display_pixels(rgb16, _grey(rgb16, "HSV"))


# --------------------------------------------------------------------------- viewport, encoding


def test_viewport_parse() -> None:
    assert Viewport.parse("256,128") == Viewport(256, 128)
    assert Viewport.parse("64,64,10,20,-30,") == Viewport(64, 64, 10, 20, -30, None)
    for bad in ("256", "a,b", "0,10", "10,10,1,2,3", "10,10,-1,0,5,5", "10,10,0,0,0,5", ",5"):
        with pytest.raises(InvalidQueryError, match="viewport="):
            Viewport.parse(bad)


def test_apply_viewport_fits_keeping_aspect_and_crops_and_flips() -> None:
    image = np.zeros((50, 100), np.uint8)  # 100 wide, 50 high
    assert apply_viewport(image, Viewport(64, 64)).shape == (32, 64)
    assert apply_viewport(image, Viewport(300, 20)).shape == (20, 40)
    cropped = apply_viewport(image, Viewport(64, 64, 10, 0, 20, 10))
    assert cropped.shape == (32, 64)  # the 20×10 region, scaled up to fit
    ramp = np.arange(16, dtype=np.uint8).reshape(4, 4)
    flipped = apply_viewport(ramp, Viewport(4, 4, 0, 0, -4, -4))
    assert np.array_equal(flipped, ramp[::-1, ::-1])
    region = apply_viewport(ramp, Viewport(2, 2, 1, 1, 2, 2))
    assert np.array_equal(region, ramp[1:3, 1:3])
    with pytest.raises(InvalidQueryError, match="outside"):
        apply_viewport(ramp, Viewport(4, 4, 4, 0))


def test_fit_size_and_thumbnail() -> None:
    assert fit_size(512, 256, 128, 128) == (128, 64)
    assert fit_size(3, 1000, 128, 128) == (1, 128)
    assert thumbnail(np.zeros((256, 512), np.uint8)).shape == (64, 128)
    small = np.zeros((10, 20, 3), np.uint8)
    assert thumbnail(small) is small


def test_encode_png_is_lossless_and_jpeg_quality_matters() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    png = encode_image(image, "image/png")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), image)
    low = encode_image(image, "image/jpeg", quality=5)
    high = encode_image(image, "image/jpeg", quality=95)
    assert low[:2] == high[:2] == b"\xff\xd8" and len(low) < len(high)
    assert Image.open(io.BytesIO(encode_image(image[..., 0], "image/gif"))).size == (60, 40)
    with pytest.raises(InvalidInputError, match="image/webp"):
        encode_image(image, "image/webp")
    assert parse_quality(" 75 ") == 75
    for bad in ("0", "101", "high", "7.5"):
        with pytest.raises(InvalidQueryError, match="quality="):
            parse_quality(bad)


# --------------------------------------------------------------------------- real files


def _pydicom_images() -> list[Path]:
    root = Path(pydicom.data.__file__).parent / "test_files"
    found = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            try:
                ds = pydicom.dcmread(path)
                if "PixelData" in ds:
                    ds.pixel_array  # noqa: B018 - only files pydicom itself decodes
                    found.append(path)
            except Exception:
                continue
    return found


PYDICOM_IMAGES = _pydicom_images()


@pytest.mark.filterwarnings("ignore")
def test_the_bundled_files_cover_every_photometric_interpretation() -> None:
    kinds = {str(pydicom.dcmread(p).PhotometricInterpretation) for p in PYDICOM_IMAGES}
    expected = {"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422"}
    assert expected | {"PALETTE COLOR", "YBR_RCT"} <= kinds


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("path", PYDICOM_IMAGES, ids=lambda p: p.name)
def test_every_decodable_pydicom_file_renders(path: Path) -> None:
    ds = pydicom.dcmread(path)
    frames = int(ds.get("NumberOfFrames") or 1)
    image = display_frame(ds, frames - 1)
    reference = ds.pixel_array[frames - 1] if frames > 1 else ds.pixel_array
    assert image.dtype == np.uint8
    colour = str(ds.PhotometricInterpretation) not in ("MONOCHROME1", "MONOCHROME2")
    assert image.shape == (int(ds.Rows), int(ds.Columns), 3) if colour else reference.shape
    if not colour and np.ptp(reference) > 0 and "VOILUTSequence" not in ds:
        # monotone: brighter stored value never gives a darker pixel (inverted for MONO1)
        order = np.argsort(reference, axis=None, kind="stable")
        shown = image.ravel()[order].astype(int)
        steps = np.diff(shown)
        sign = -1 if ds.PhotometricInterpretation == "MONOCHROME1" else 1
        slope = float(ds.get("RescaleSlope", 1) or 1)
        assert (sign * np.sign(slope) * steps >= 0).all()
    png = encode_image(apply_viewport(image, Viewport(32, 32)), "image/png")
    assert max(Image.open(io.BytesIO(png)).size) == 32


def test_display_frame_errors_name_the_problem() -> None:
    ds = _grey(np.zeros((2, 2), np.uint16))
    with pytest.raises(InvalidDICOMError, match="no Pixel Data"):
        display_frame(ds)
    ct = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    with pytest.raises(InvalidDICOMError, match="frame 2 does not exist"):
        display_frame(ct, 1)
