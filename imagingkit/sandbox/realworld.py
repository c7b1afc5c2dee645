"""The "real-world" collection: image files written by other software, odd encodings kept.

pydicom ships test files produced by many toolkits and scanners — big endian, implicit VR,
deflated, JPEG-LS, JPEG 2000, RLE, palette colour, YBR, files without a preamble or without
File Meta Information, truncated files. Every one of them that holds pixel data is copied,
byte for byte, so the DICOMweb store and the indexer meet real-world variety in the sandbox.

Only files already installed with pydicom are used: the bundled ``test_files`` folder is
listed directly (``pydicom.data.get_testdata_files`` would also try to download the larger
optional files, and nothing may be downloaded at run time).
"""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

from pydicom import dcmread
from pydicom.data import data_manager

__all__ = ["bundled_image_files", "copy_realworld"]

log = logging.getLogger("imagingkit.sandbox")

#: Pixel Data, Float Pixel Data, Double Float Pixel Data (PS3.6), little and big endian.
_PIXEL_TAG_BYTES = (
    b"\xe0\x7f\x10\x00",
    b"\x7f\xe0\x00\x10",
    b"\xe0\x7f\x08\x00",
    b"\xe0\x7f\x09\x00",
)
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


def _test_files_root() -> Path:
    return Path(data_manager.DATA_ROOT) / "test_files"


def _has_pixel_data(path: Path) -> bool:
    """Whether *path* is a DICOM data set with (Float/Double Float) Pixel Data."""
    try:
        with warnings.catch_warnings():  # odd encodings are expected here, not news
            warnings.simplefilter("ignore")
            ds = dcmread(path, force=True, specific_tags=list(_PIXEL_TAGS))
        if any(tag in ds for tag in _PIXEL_TAGS):
            return True
    except Exception:  # odd files are the point: fall back to a byte scan
        pass
    # Truncated or exotic files pydicom refuses: look for the tag itself after the header.
    data = path.read_bytes()
    if not (data[128:132] == b"DICM" or data[:2] in {b"\x08\x00", b"\x00\x08", b"\x02\x00"}):
        return False
    return any(tag in data[132:] for tag in _PIXEL_TAG_BYTES)


def bundled_image_files() -> list[Path]:
    """pydicom's locally installed test files that contain pixel data, sorted by name."""
    root = _test_files_root()
    if not root.is_dir():
        return []
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix.lower() in {".py", ".txt", ".json", ".dump", ".gz", ".icc", ".pyc"}:
            continue
        if path.name.upper().startswith("DICOMDIR"):
            continue
        if _has_pixel_data(path):
            out.append(path)
    return out


def copy_realworld(dest: Path) -> list[str]:
    """Copy the bundled image files into *dest*; return their names relative to *dest*.

    Files in sub-folders are flattened (``dicomdirtests/77654033/CR1/6154`` becomes
    ``dicomdirtests_77654033_CR1_6154.dcm``) and every name ends in ``.dcm``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    root = _test_files_root()
    names = []
    for path in bundled_image_files():
        name = "_".join(path.relative_to(root).parts)
        if not name.lower().endswith(".dcm"):
            name += ".dcm"
        shutil.copyfile(path, dest / name)
        names.append(name)
    log.info("copied %d real-world image files from pydicom's test data", len(names))
    return names
