"""Bulk retrieval: executors (threads, dask), failures tables, re-runs, resumable downloads."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pydicom
import pytest
from dicomweb_helpers import client_for, multipart_body
from PIL import Image

from imagingkit.dicomweb.bulk import BulkResult, SeriesRef, as_series_refs
from imagingkit.errors import ImagingKitError, InvalidInputError


def _refs(*pairs) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "StudyInstanceUID": [p.study for p in pairs],
            "SeriesInstanceUID": [p.series for p in pairs],
        }
    )


def test_references_in_every_accepted_shape() -> None:
    expected = [SeriesRef("1.2", "1.2.1"), SeriesRef("1.2", "1.2.2")]
    frame = pd.DataFrame(
        {"StudyInstanceUID": ["1.2", "1.2"], "SeriesInstanceUID": ["1.2.1", "1.2.2"]}
    )
    assert as_series_refs(frame) == expected
    assert as_series_refs([("1.2", "1.2.1"), ("1.2", "1.2.2"), ("1.2", "1.2.1")]) == expected
    assert as_series_refs(("1.2", "1.2.1")) == expected[:1]
    assert as_series_refs([{"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.2"}]) == [
        expected[1]
    ]
    with pytest.raises(InvalidInputError, match="SeriesInstanceUID"):
        as_series_refs(pd.DataFrame({"StudyInstanceUID": ["1.2"]}))
    with pytest.raises(InvalidInputError):
        as_series_refs([("1.2",)])


def test_fetch_series_from_a_dataframe_on_a_thread_pool(server_base: str, ct_data, cache) -> None:
    _, plain, mixed = ct_data
    client = client_for(server_base, cache=cache)
    with ThreadPoolExecutor(2) as pool:
        result = client.fetch_series(_refs(plain, mixed), executor=pool, progress=False)
    assert result.ok and list(result) == [plain.series, mixed.series]
    np.testing.assert_array_equal(result[plain.series].array, plain.hu)
    np.testing.assert_array_equal(result[mixed.series].array, mixed.hu)
    datasets = client.fetch_series(_refs(plain), output="datasets", progress=False)
    assert sorted(ds.SOPInstanceUID for ds in datasets[plain.series]) == sorted(plain.sop_uids)


def test_fetch_on_a_dask_cluster(sandbox_base: str, ct_data, cache) -> None:
    distributed = pytest.importorskip("distributed", reason="pip install imagingkit[dask]")
    _, plain, mixed = ct_data
    client = client_for(sandbox_base, cache=cache)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as dask_client,
    ):
        result = client.fetch_series(_refs(plain, mixed), executor=dask_client, progress=False)
        thumbs = client.fetch_series(
            _refs(plain), output="parts", executor=dask_client, progress=False
        )
    assert result.ok, result.failures
    np.testing.assert_array_equal(result[mixed.series].array, mixed.hu)
    assert len(thumbs[plain.series]) == len(plain.files)


def test_metadata_and_thumbnails_in_bulk(server_base: str, ct_data, cache) -> None:
    from imagingkit.dicomweb.bulk import fetch_metadata, fetch_thumbnails

    _, plain, mixed = ct_data
    client = client_for(server_base, cache=cache)
    metadata = fetch_metadata(client, _refs(plain, mixed), progress=False)
    assert len(metadata[mixed.series]) == len(mixed.files)
    thumbs = fetch_thumbnails(client, _refs(plain), size=32, progress=False)
    assert max(Image.open(io.BytesIO(thumbs[plain.series])).size) <= 32


def test_errors_mid_pull_give_a_failures_table_and_a_rerun_fetches_only_those(
    double_server, ct_data, cache
) -> None:
    """D9: what succeeded plus a failures table; the re-run asks only for the failed ones."""
    _, plain, _ = ct_data
    body, content_type = multipart_body(
        [({"Content-Type": "application/dicom"}, p) for p in plain.payloads], "application/dicom"
    )
    broken = {"1.2.3.1": "500", "1.2.3.2": "cut"}  # fail on the first attempt only

    def respond(handler, seen):
        if seen.path.endswith("/series"):
            handler.set_status(204)  # QIDO count: none known
            return
        series = seen.path.rsplit("/", 1)[-1]
        fault = broken.pop(series, None)
        if fault == "500":
            handler.set_status(500)
            handler.write({"detail": "storage area unavailable"})
            return
        handler.set_header("Content-Type", content_type)
        handler.write(body[: len(body) // 2] if fault == "cut" else body)

    base, double = double_server(respond)
    client = client_for(base, cache=cache)
    refs = [SeriesRef("1.2.3", f"1.2.3.{n}") for n in range(4)]
    first = client.fetch_series(refs, progress=False)
    assert isinstance(first, BulkResult) and not first.ok
    assert sorted(first.results) == ["1.2.3.0", "1.2.3.3"]
    failures = first.failures.set_index("key")
    assert sorted(failures.index) == ["1.2.3.1", "1.2.3.2"]
    assert failures.loc["1.2.3.1", "status"] == 500
    assert "storage area unavailable" in failures.loc["1.2.3.1", "error"]
    assert failures.loc["1.2.3.1", "url"].endswith("/studies/1.2.3/series/1.2.3.1")
    assert "truncated" in failures.loc["1.2.3.2", "error"]
    assert pd.isna(failures.loc["1.2.3.2", "status"])
    with pytest.raises(ImagingKitError, match="2 of 4 items failed"):
        first.raise_for_failures()
    cache.flush()

    retrieved_before = len([r for r in double.seen("/series/") if not r.path.endswith("/series")])
    second = client.fetch_series(refs, progress=False)
    assert second.ok and sorted(second.results) == [r.series for r in refs]
    retried = [r.path for r in double.seen("/series/") if not r.path.endswith("/series")]
    assert sorted(p.rsplit("/", 1)[-1] for p in retried[retrieved_before:]) == [
        "1.2.3.1",
        "1.2.3.2",
    ]
    for ref in refs:
        np.testing.assert_array_equal(second[ref.series].array, plain.hu)


def test_download_is_resumable(server_base: str, ct_data, tmp_path) -> None:
    _, plain, _ = ct_data
    client = client_for(server_base)
    result = client.download(_refs(plain), tmp_path, progress=False)
    assert result.ok
    paths = result[plain.series]
    assert sorted(p.stem for p in paths) == sorted(plain.sop_uids)
    kept = {p: p.stat().st_mtime_ns for p in paths[2:]}
    for p in paths[:2]:
        p.unlink()
    again = client.download(_refs(plain), tmp_path, progress=False)
    assert again.ok and len(again[plain.series]) == len(plain.files)
    assert {p: p.stat().st_mtime_ns for p in paths[2:]} == kept  # untouched
    for p in paths:
        assert pydicom.dcmread(p).SOPInstanceUID == p.stem
    assert not list(tmp_path.rglob("*.part"))


def test_a_bad_executor_is_refused(sandbox_base: str, ct_data) -> None:
    _, plain, _ = ct_data
    with pytest.raises(InvalidInputError, match="executor"):
        client_for(sandbox_base).fetch_series(_refs(plain), executor=object(), progress=False)
