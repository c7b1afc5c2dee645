"""The SQLite index of a folder of Part-10 files: scanning, re-scanning, junk, crash safety."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from store_server import UID_ROOT, make_instance, part10_bytes, write_instances

from imagingkit.config import Settings
from imagingkit.errors import InvalidDICOMError
from imagingkit.sandbox.dicom_index import DicomIndex, normalize_date, normalize_time
from imagingkit.sandbox.dicomweb_store import index_path_for

TEST_FILES = Path(get_testdata_file("CT_small.dcm")).parent
REPO = Path(__file__).resolve().parent.parent


def _uid() -> str:
    return generate_uid(prefix=UID_ROOT)


def _study(folder: Path, n: int = 3, **kwargs: object) -> tuple[str, str, list[Path]]:
    study, series = _uid(), _uid()
    datasets = [
        make_instance(study=study, series=series, instance_number=i + 1, **kwargs)  # type: ignore[arg-type]
        for i in range(n)
    ]
    return study, series, write_instances(folder, datasets)


@pytest.fixture
def index(tmp_path: Path) -> DicomIndex:
    root = tmp_path / "root"
    root.mkdir()
    idx = DicomIndex(tmp_path / "index.sqlite", root)
    yield idx
    idx.close()


def test_pydicom_test_files_index_without_a_crash(tmp_path: Path) -> None:
    root = tmp_path / "files"
    shutil.copytree(TEST_FILES, root)
    with DicomIndex(tmp_path / "index.sqlite", root) as idx:
        report = idx.scan()
        counts = idx.counts()
        assert idx.verify() == []
    reasons = {path.name: reason for path, reason in report.skipped_files}
    assert "DICOMDIR" in reasons["DICOMDIR"]
    assert reasons["README.txt"].startswith("not DICOM")
    # cut short after the attributes the index reads: indexed (the damage shows on retrieval)
    assert "rtplan_truncated.dcm" not in reasons
    assert "no StudyInstanceUID" in reasons["JPEGLSNearLossless_08.dcm"]
    # the files nested below dicomdirtests/ (no .dcm suffix) are instances too
    assert any("IM0000" in p.name for p in root.rglob("IM*")), "fixture changed"
    assert counts["instances"] >= 100
    assert report.added == counts["instances"]
    assert counts["duplicates"] == report.duplicates > 0  # pydicom ships copies of one instance
    assert report.added + report.duplicates + report.skipped == report.files_read


def test_files_with_and_without_suffix_in_nested_folders(index: DicomIndex) -> None:
    study, series, paths = _study(index.root / "a" / "b" / "c", 2)
    bare = paths[0].with_suffix("")
    paths[0].rename(bare)
    (index.root / ".hidden").mkdir()
    shutil.copy(paths[1], index.root / ".hidden" / "copy.dcm")
    report = index.scan()
    assert report.added == 2 and report.skipped == 0
    records = index.instances(study)
    assert {r.path for r in records} == {bare, paths[1]}
    assert [r.instance_number for r in records] == [1, 2]
    first = records[0]
    assert (first.study_uid, first.series_uid) == (study, series)
    assert first.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert first.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert (first.rows, first.columns, first.number_of_frames) == (4, 4, 1)
    assert index.instances(study, series, first.sop_uid) == [first]
    assert index.instances("1.2.3.4") == []
    assert index.instances(study, "1.2.3") == []


def test_restart_reads_only_new_or_changed_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    study, _, paths = _study(root, 4)
    db = tmp_path / "index.sqlite"
    with DicomIndex(db, root) as idx:
        assert idx.scan().added == 4
    # a restart: nothing changed, nothing read
    with DicomIndex(db, root) as idx:
        report = idx.scan()
        assert (report.unchanged, report.files_read) == (4, 0)
    # one changed (new content and mtime), one removed, one added
    changed = make_instance(study=study, series=_uid(), sop=paths[0].stem, instance_number=9)
    paths[0].write_bytes(part10_bytes(changed))
    os.utime(paths[0], ns=(time.time_ns(), time.time_ns() + 10**9))
    paths[1].unlink()
    _, _, added = _study(root / "more", 1)
    with DicomIndex(db, root) as idx:
        report = idx.scan()
        assert (report.updated, report.removed, report.added, report.unchanged) == (1, 1, 1, 2)
        assert report.files_read == 2
        records = idx.instances(study)
        assert len(records) == 3
        assert {r.instance_number for r in records} == {3, 4, 9}
        assert idx.counts()["studies"] == 2
        assert idx.verify() == []
    assert added[0].exists()


def test_junk_files_are_skipped_with_a_logged_reason_and_not_reread(
    index: DicomIndex, caplog: pytest.LogCaptureFixture
) -> None:
    _study(index.root, 1)
    (index.root / "notes.txt").write_text("not DICOM at all\n")
    (index.root / "empty.dcm").write_bytes(b"")
    (index.root / "random.dcm").write_bytes(os.urandom(4096))
    good = part10_bytes(make_instance(study=_uid(), series=_uid()))
    (index.root / "cut.dcm").write_bytes(good[:200])
    no_uids = make_instance(study=_uid(), series=_uid())
    del no_uids.SOPInstanceUID
    no_uids.file_meta.MediaStorageSOPInstanceUID = _uid()
    (index.root / "no-sop.dcm").write_bytes(part10_bytes(no_uids))
    bad_uid = make_instance(study="not-a-uid", series=_uid())
    (index.root / "bad-uid.dcm").write_bytes(part10_bytes(bad_uid))
    with caplog.at_level("WARNING", logger="imagingkit.sandbox.index"):
        report = index.scan()
    assert (report.added, report.skipped) == (1, 6)
    reasons = {p.name: r for p, r in report.skipped_files}
    assert reasons["notes.txt"].startswith("not DICOM")
    assert reasons["empty.dcm"].startswith("not DICOM")
    assert reasons["random.dcm"].startswith("not DICOM")
    assert "truncated" in reasons["cut.dcm"]
    assert "no SOPInstanceUID" in reasons["no-sop.dcm"]
    assert "'not-a-uid' is not a UID" in reasons["bad-uid.dcm"]
    for name in reasons:
        assert any(name in record.getMessage() for record in caplog.records), name
    again = index.scan()
    assert (again.files_read, again.skipped, again.unchanged) == (0, 0, 7)


def test_a_dataset_without_preamble_is_indexed_if_it_names_its_instance(index: DicomIndex) -> None:
    ds = make_instance(study=_uid(), series=_uid(), implicit=True)
    path = index.root / "bare"
    ds.save_as(path, enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert path.read_bytes()[128:132] != b"DICM"
    record = index.add_file(path)
    assert record.sop_uid == ds.SOPInstanceUID
    assert index.header(record.sop_uid)["00100010"]["Value"] == [{"Alphabetic": "Doe^John"}]


def test_add_file_refuses_junk_and_remembers_it(index: DicomIndex) -> None:
    junk = index.root / "junk.dcm"
    junk.write_text("nope")
    with pytest.raises(InvalidDICOMError, match=r"junk\.dcm"):
        index.add_file(junk)
    assert index.counts()["skipped"] == 1
    assert index.scan().files_read == 0


def test_header_holds_every_attribute_but_bulk_data(index: DicomIndex) -> None:
    ds = make_instance(study=_uid(), series=_uid(), Manufacturer="ACME", ProtocolName="Chest")
    ds.add_new(0x00091010, "LO", "private creator")
    path = write_instances(index.root, [ds])[0]
    record = index.add_file(path)
    header = index.header(record.sop_uid)
    assert header is not None
    assert header["00080070"]["Value"] == ["ACME"]
    assert header["00181030"]["Value"] == ["Chest"]
    assert "7FE00010" not in header
    assert index.header("1.2.3") is None


def test_duplicate_instances_newest_file_wins_and_the_other_takes_over(index: DicomIndex) -> None:
    ds = make_instance(study=_uid(), series=_uid(), StudyDescription="old")
    old = write_instances(index.root / "old", [ds])[0]
    ds.StudyDescription = "new"
    new = write_instances(index.root / "new", [ds])[0]
    os.utime(old, ns=(1_000_000_000, 1_000_000_000))
    report = index.scan()
    assert (report.added, report.duplicates) == (1, 1)
    assert index.instance(ds.SOPInstanceUID).path == new
    assert index.counts()["duplicates"] == 1
    new.unlink()
    report = index.scan()
    assert index.instance(ds.SOPInstanceUID).path == old
    assert index.counts() == {
        "studies": 1,
        "series": 1,
        "instances": 1,
        "skipped": 0,
        "duplicates": 0,
    }
    assert index.verify() == []


def test_a_duplicate_takes_over_in_the_scan_that_orphans_it(index: DicomIndex) -> None:
    study, series = _uid(), _uid()
    ds = make_instance(study=study, series=series)
    (winner,) = write_instances(index.root / "a", [ds])
    (loser,) = write_instances(index.root / "b", [ds])
    os.utime(loser, ns=(1_000_000_000, 1_000_000_000))
    index.scan()
    assert index.instance(ds.SOPInstanceUID).path == winner
    other = make_instance(study=study, series=series, instance_number=2)
    winner.write_bytes(part10_bytes(other))  # the winning file now holds another instance
    os.utime(winner, ns=(time.time_ns() + 10**9,) * 2)
    index.scan()
    assert index.instance(ds.SOPInstanceUID).path == loser
    assert index.instance(other.SOPInstanceUID).path == winner
    assert index.counts()["duplicates"] == 0
    assert index.verify() == []


def test_a_damaged_index_is_set_aside_and_rebuilt(tmp_path: Path) -> None:
    root, db = tmp_path / "root", tmp_path / "index.sqlite"
    _study(root, 2)
    with DicomIndex(db, root) as idx:
        idx.scan()
    db.write_bytes(b"this is no longer an SQLite database" * 100)
    with DicomIndex(db, root) as idx:
        assert idx.scan().added == 2
        assert idx.verify() == []
    assert len(list(tmp_path.glob("index.sqlite.damaged-*"))) == 1


def test_date_and_time_normalization() -> None:
    assert normalize_date("20200131") == "20200131"
    assert normalize_date("2020.01.31") == "20200131"
    assert normalize_date("20201301") is None
    assert normalize_date("2020") is None
    assert normalize_time("14") == "140000.000000"
    assert normalize_time("14", upper=True) == "145959.999999"
    assert normalize_time("1430", upper=True) == "143059.999999"
    assert normalize_time("143015.5") == "143015.500000"
    assert normalize_time("14:30:15") == "143015.000000"
    assert normalize_time("25") is None
    assert normalize_time("1430.5") is None


def test_index_location_is_per_folder(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    a, b = index_path_for(tmp_path / "a", settings), index_path_for(tmp_path / "b", settings)
    assert a != b and a.parent == b.parent == tmp_path / "data" / "indexes"
    assert a == index_path_for(tmp_path / "a" / ".." / "a", settings)


# --------------------------------------------------------------------------- kill -9


def _write_many(folder: Path, count: int) -> None:
    """Write *count* small instances quickly by patching a template's fixed-length UIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series = _uid(), _uid()
    placeholder = f"{UID_ROOT}9{0:019d}"
    template = part10_bytes(make_instance(study=study, series=series, sop=placeholder))
    for i in range(count):
        sop = f"{UID_ROOT}9{i + 1:019d}"
        data = template.replace(placeholder.encode(), sop.encode())
        (folder / f"{i:05d}.dcm").write_bytes(data)


def _indexed_files(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return int(con.execute("SELECT COUNT(*) FROM files").fetchone()[0])
    except sqlite3.Error:
        return 0


def _wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


_SCANNER = """
import sys
from pathlib import Path
import imagingkit.sandbox.dicom_index as di
di._BATCH = 50  # commit often, so the kill lands between and inside transactions
di._PARALLEL_THRESHOLD = 10**9
index = di.DicomIndex(Path(sys.argv[1]), Path(sys.argv[2]))
index.scan()
print("done", flush=True)
"""


@pytest.mark.slow
def test_kill_9_during_indexing_leaves_a_consistent_index(tmp_path: Path) -> None:
    root, db = tmp_path / "root", tmp_path / "index.sqlite"
    _write_many(root, 3000)
    proc = subprocess.Popen(
        [sys.executable, "-c", _SCANNER, str(db), str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    try:
        _wait_until(lambda: _indexed_files(db) >= 100 or proc.poll() is not None, 60, "indexing")
        assert proc.poll() is None, "the scan finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    partial = _indexed_files(db)
    assert 0 < partial < 3000
    with DicomIndex(db, root) as idx:
        assert idx.verify() == []  # what was committed is consistent
        report = idx.scan()
        assert report.unchanged == partial
        assert report.added == 3000 - partial
        assert idx.counts()["instances"] == 3000
        assert idx.verify() == []
