"""Series → 3-D volume: order, spacing, orientation, Modality LUT (PS3.3 C.7.6.2, C.11.1)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from dicomweb_helpers import (
    COL_DIR,
    NORMAL,
    ROW_DIR,
    SPACING,
    client_for,
    ct_instance,
    hu_slice,
)
from pydicom.uid import generate_uid

from imagingkit.cache import Cache, CacheKey
from imagingkit.dicomweb.pixels import decode_instance, instance_pixels
from imagingkit.dicomweb.volume import assemble_volume
from imagingkit.errors import ImagingKitError, InvalidDICOMError, InvalidInputError
from imagingkit.render.lut import modality_lut


@pytest.mark.parametrize("which", ["plain", "mixed"])
def test_series_volume_is_ordered_by_position_in_hounsfield_units(
    server_base: str, ct_data, cache, which: str
) -> None:
    """Instance Numbers are shuffled and the plane is oblique: only geometry orders it."""
    _, plain, mixed = ct_data
    series = plain if which == "plain" else mixed
    volume = client_for(server_base, cache=cache).series_volume(series.study, series.series)
    assert volume.array.dtype == np.int16  # 12-bit stored + integer intercept fits
    np.testing.assert_array_equal(volume.array, series.hu)
    assert list(volume.sop_uids) == series.sop_uids
    np.testing.assert_allclose(volume.positions, series.positions, atol=1e-4)
    assert volume.spacing == pytest.approx((SPACING, 0.8, 0.6), abs=1e-4)
    np.testing.assert_allclose(volume.orientation, [NORMAL, COL_DIR, ROW_DIR], atol=1e-6)
    # the affine maps voxel indices to patient coordinates
    k, i, j = 5, 3, 7
    expected = series.positions[k] + i * 0.8 * COL_DIR + j * 0.6 * ROW_DIR
    np.testing.assert_allclose(volume.affine @ [k, i, j, 1], [*expected, 1], atol=1e-4)
    assert volume.modality == "CT"


def test_a_warm_volume_comes_from_the_cache_without_requests(
    sandbox_base: str, ct_data, cache, double_server
) -> None:
    _, plain, _ = ct_data
    client = client_for(sandbox_base, cache=cache)
    cold = client.series_volume(plain.study, plain.series)
    cache.flush()
    # the same principal and origin, but every request would now fail
    offline = client_for(sandbox_base, cache=cache)
    offline.transport.get = None  # type: ignore[assignment,method-assign]
    warm = offline.series_volume(plain.study, plain.series)
    np.testing.assert_array_equal(warm.array, cold.array)
    assert warm.sop_uids == cold.sop_uids
    warm.array[0, 0, 0] += 1  # copy-on-write: the cache entry is untouched
    again = offline.series_volume(plain.study, plain.series)
    assert again.array[0, 0, 0] == cold.array[0, 0, 0]


def test_fast_path_and_pydicom_agree(ct_data) -> None:
    """The lean Pixel Data path gives what pydicom's pixel_array gives."""
    _, plain, mixed = ct_data
    for payload in plain.payloads[:3] + mixed.payloads[:3]:
        decoded = decode_instance(payload)
        ds = pydicom.dcmread(io.BytesIO(payload))
        np.testing.assert_array_equal(decoded.pixels, ds.pixel_array)
    assert decode_instance(plain.payloads[0]).dataset is None  # native: no pydicom


def test_instance_pixels_applies_the_modality_lut_of_render_lut() -> None:
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    expected = modality_lut(ds.pixel_array, ds)
    np.testing.assert_array_equal(instance_pixels(ds), expected)
    with open(pydicom.data.get_testdata_file("CT_small.dcm"), "rb") as f:
        np.testing.assert_array_equal(instance_pixels(f.read()), expected)


def test_a_fractional_rescale_gives_float32() -> None:
    study, series = generate_uid(), generate_uid()
    payload, _, _ = ct_instance(study, series, 0, 1)
    ds = pydicom.dcmread(io.BytesIO(payload))
    ds.RescaleSlope, ds.RescaleIntercept = 0.5, -10.25
    out = io.BytesIO()
    ds.save_as(out)
    volume = assemble_volume([out.getvalue()])
    assert volume.array.dtype == np.float32
    np.testing.assert_allclose(volume.array[0], ds.pixel_array * 0.5 - 10.25)


def test_instances_of_different_sizes_are_not_one_volume() -> None:
    study, series = generate_uid(), generate_uid()
    first, _, _ = ct_instance(study, series, 0, 1)
    ds = pydicom.dcmread(io.BytesIO(ct_instance(study, series, 1, 2)[0]))
    ds.Rows, ds.PixelData = 12, ds.PixelData[: 12 * ds.Columns * 2]
    out = io.BytesIO()
    ds.save_as(out)
    with pytest.raises(InvalidDICOMError, match="mixes image sizes"):
        assemble_volume([first, out.getvalue()], series_uid=series)


def test_bytes_that_are_not_dicom_are_refused() -> None:
    with pytest.raises(InvalidDICOMError):
        assemble_volume([b"not a dicom file at all" * 10])


def test_instance_pixels_of_one_instance_and_its_frames(server_base: str, ct_data, cache) -> None:
    _, plain, _ = ct_data
    client = client_for(server_base, cache=cache)
    sop = plain.sop_uids[3]
    np.testing.assert_array_equal(
        client.instance_pixels(plain.study, plain.series, sop), plain.hu[3]
    )
    np.testing.assert_array_equal(
        client.instance_pixels(plain.study, plain.series, sop, frames=[1]), plain.hu[3]
    )
    with pytest.raises(InvalidInputError, match="frames"):
        client.instance_pixels(plain.study, plain.series, sop, frames=[2])


_PYDICOM_FILES = sorted(
    (Path(pydicom.data.__file__).parent / "test_files").glob("*.dcm"), key=lambda p: p.name
)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("path", _PYDICOM_FILES, ids=lambda p: p.name)
def test_every_pydicom_test_file_gives_a_volume_or_a_clear_error(path: Path) -> None:
    """Bad input gets an ImagingKitError, never a crash (D9); images give a volume."""
    try:
        volume = assemble_volume([path.read_bytes()])
    except ImagingKitError as exc:
        assert str(exc)
        return
    ds = pydicom.dcmread(path)
    frames = (
        int(ds.get("NumberOfFrames") or 1) if str(ds.get("NumberOfFrames", "1")).isdigit() else 1
    )
    assert volume.array.shape[0] == frames
    assert volume.array.shape[1:3] == (ds.Rows, ds.Columns)


def test_a_volume_grows_past_its_first_allocation_in_the_cache(tmp_path: Path) -> None:
    """No count known in advance: the cache file grows and keeps what was written."""
    cache = Cache(tmp_path, max_bytes=10**8)
    study, series = generate_uid(), generate_uid()
    key = CacheKey("anonymous", "http://127.0.0.1:1", (study, series), "test")
    payloads = [ct_instance(study, series, k, 100 - k)[0] for k in range(70)]

    def storage(shape, dtype):
        return cache.array_writer(key, shape, dtype)

    volume = assemble_volume(payloads[::-1], series_uid=series, storage=storage)
    cache.flush()
    assert volume.array.shape[0] == 70
    np.testing.assert_array_equal(volume.array[69], hu_slice(69))
    cached, _ = cache.get_array(key)  # type: ignore[misc]
    np.testing.assert_array_equal(cached, volume.array)
