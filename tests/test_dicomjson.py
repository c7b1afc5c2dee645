"""The DICOM JSON encoding (PS3.18 Annex F): pydicom datasets and the fast header reader agree."""

from __future__ import annotations

import json
import random
import shutil
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from imagingkit.dicomjson import (
    dataset_to_dicom_json,
    find_element,
    parse_tag_path,
    read_dicom_json,
)
from imagingkit.errors import InvalidDICOMError, InvalidInputError

TEST_FILES = Path(get_testdata_file("CT_small.dcm")).parent
ALL_FILES = sorted(p for p in TEST_FILES.rglob("*") if p.is_file())
#: pydicom's test files that are not datasets of an instance, and why they are refused
REFUSED = {
    "DICOMDIR": "DICOMDIR",
    "no_meta.dcm": "not DICOM",  # starts with a stray byte: pydicom reads garbage too
    "rtplan_truncated.dcm": "truncated",
}
NOT_DICOM = {".txt", ".json", ".dump", ".icc", ".gz"}


def _refusal(path: Path) -> str | None:
    if path.name.startswith("DICOMDIR"):
        return REFUSED["DICOMDIR"]
    if path.name in REFUSED:
        return REFUSED[path.name]
    if path.suffix in NOT_DICOM or path.name.startswith("README"):
        return "not DICOM"
    return None


READABLE = [p for p in ALL_FILES if _refusal(p) is None]
UNREADABLE = [p for p in ALL_FILES if _refusal(p) is not None]


def _pydicom_json(path: Path) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        return dataset_to_dicom_json(ds)


def _roundtrip(value: dict) -> dict:
    return json.loads(json.dumps(value))


@pytest.mark.parametrize("path", READABLE, ids=lambda p: p.name)
def test_fast_reader_agrees_with_pydicom(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        header = read_dicom_json(path)
    assert _roundtrip(header.dataset) == _roundtrip(_pydicom_json(path))


@pytest.mark.parametrize("path", UNREADABLE, ids=lambda p: str(p.relative_to(TEST_FILES)))
def test_files_that_are_not_instances_are_refused_with_the_reason(path: Path) -> None:
    reason = _refusal(path)
    assert reason is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InvalidDICOMError, match=reason):
            read_dicom_json(path)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_implicit.dcm", "rtplan.dcm"])
def test_only_decodes_the_requested_top_level_attributes(name: str) -> None:
    path = Path(get_testdata_file(name))
    full = read_dicom_json(path).dataset
    wanted = [int(k, 16) for k in list(full)[::3]]
    subset = read_dicom_json(path, only=wanted).dataset
    for tag in wanted:
        assert subset[f"{tag:08X}"] == full[f"{tag:08X}"]
    assert set(subset) <= set(full)


def test_value_encoding_rules() -> None:
    ds = Dataset()
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["ORIGINAL", "", "AXIAL"]
    ds.PixelSpacing = ["0.5", "0.5"]
    ds.InstanceNumber = "7"
    ds.SliceLocation = "NaN"
    ds.ImagePositionPatient = ["1.5", "inf", "-2"]
    ds.StudyDescription = "  leading kept, trailing dropped   "
    ds.Rows = 512
    ds.add_new(0x00091010, "OB", b"\x01\x02")
    ds.add_new(0x00091011, "OB", b"\x00" * 2000)
    out = dataset_to_dicom_json(ds, bulkdata_uri=lambda path: f"bulk/{path}")
    assert out["00100010"]["Value"] == [
        {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    ]
    assert out["00080008"]["Value"] == ["ORIGINAL", None, "AXIAL"]
    assert out["00280030"]["Value"] == [0.5, 0.5]
    assert out["00200013"]["Value"] == [7]
    assert out["00201041"] == {"vr": "DS"}
    assert out["00200032"]["Value"] == [1.5, None, -2]
    assert out["00081030"]["Value"] == ["  leading kept, trailing dropped"]
    assert out["00280010"] == {"vr": "US", "Value": [512]}
    assert out["00091010"] == {"vr": "OB", "InlineBinary": "AQI="}
    assert out["00091011"] == {"vr": "OB", "BulkDataURI": "bulk/00091011"}
    assert "00091011" not in dataset_to_dicom_json(ds)  # no URI factory: bulk data left out


def test_a_number_that_is_not_one_has_no_json_value() -> None:
    path = Path(get_testdata_file("badVR.dcm"))  # NumberOfFrames "1A"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert read_dicom_json(path).dataset["00280008"] == {"vr": "IS"}
        assert _pydicom_json(path)["00280008"] == {"vr": "IS"}


def test_pixel_data_is_a_bulk_data_uri_in_both_readers() -> None:
    path = Path(get_testdata_file("MR_small.dcm"))
    fast = read_dicom_json(path, bulkdata_uri=lambda p: f"/bulk/{p}").dataset
    ds = pydicom.dcmread(path)
    slow = dataset_to_dicom_json(ds, bulkdata_uri=lambda p: f"/bulk/{p}")
    assert fast["7FE00010"] == slow["7FE00010"] == {"vr": "OW", "BulkDataURI": "/bulk/7FE00010"}


def test_nested_bulk_data_gets_a_tag_path_that_finds_it_again() -> None:
    inner = Dataset()
    inner.add_new(0x00091001, "OB", b"\x07" * 3000)
    ds = Dataset()
    ds.ReferencedImageSequence = [Dataset(), inner]
    paths: list[str] = []
    dataset_to_dicom_json(ds, bulkdata_uri=lambda p: paths.append(p) or p)
    assert paths == ["00081140/1/00091001"]
    assert parse_tag_path(paths[0]) == (0x00081140, 1, 0x00091001)
    element = find_element(ds, paths[0])
    assert element is not None and element.value == b"\x07" * 3000
    assert find_element(ds, "00081140/5/00091001") is None
    with pytest.raises(InvalidInputError, match="tag path"):
        parse_tag_path("../etc/passwd")


def test_junk_is_refused_with_a_reason(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not DICOM\n" * 10)
    with pytest.raises(InvalidDICOMError, match="DICOM"):
        read_dicom_json(text)
    truncated = tmp_path / "truncated.dcm"
    data = Path(get_testdata_file("rtplan.dcm")).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidDICOMError, match="truncated"):
        read_dicom_json(truncated)
    dicomdir = tmp_path / "DICOMDIR"
    shutil.copy(get_testdata_file("DICOMDIR"), dicomdir)
    with pytest.raises(InvalidDICOMError, match="DICOMDIR"):
        read_dicom_json(dicomdir)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_implicit.dcm", "rtstruct.dcm"])
def test_damaged_files_never_escape_as_anything_but_invalid_dicom(name: str) -> None:
    """Random truncations and byte flips of real files: a clear error or a result, no crash."""
    rng = random.Random(20240611)
    data = Path(get_testdata_file(name)).read_bytes()
    outcomes = {"read": 0, "refused": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(300):
            damaged = bytearray(data[: rng.randrange(1, len(data))])
            for _ in range(rng.randrange(0, 6)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            try:
                read_dicom_json(bytes(damaged))
            except InvalidDICOMError:
                outcomes["refused"] += 1
            else:
                outcomes["read"] += 1
    assert outcomes["read"] > 0 and outcomes["refused"] > 0
