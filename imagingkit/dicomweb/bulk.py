"""Bulk retrieval: many series at once, on any executor, with a table of failures.

Every bulk call takes ``executor=`` (DESIGN.md D2): ``None`` runs on an internal thread
pool bounded by ``Settings.concurrency``; any :class:`concurrent.futures.Executor` works;
so does a ``dask.distributed.Client`` (its :meth:`get_executor` is used), which runs the
same retrieval across a cluster. Tasks return plain data, so errors cross process
boundaries intact.

A bulk call never fails as a whole because some items failed (DESIGN.md D9): it returns a
:class:`BulkResult` with what succeeded and a ``failures`` DataFrame (``key``, ``url``,
``status``, ``error``). What succeeded is in the cache, so calling again with the same
references retrieves only what is missing.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import io
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

import pandas as pd

from imagingkit.cache import write_durably
from imagingkit.dicomjson import read_dicom_json
from imagingkit.errors import ImagingKitError, InvalidInputError

if TYPE_CHECKING:
    from imagingkit.dicomweb.client import DicomWebClient

__all__ = [
    "BulkResult",
    "SeriesRef",
    "as_series_refs",
    "download",
    "fetch_metadata",
    "fetch_series",
    "fetch_thumbnails",
    "run_bulk",
]

T = TypeVar("T")
R = TypeVar("R")

FAILURE_COLUMNS = ("key", "url", "status", "error")
OUTPUTS = ("volume", "datasets", "parts")


class SeriesRef(NamedTuple):
    """A series to retrieve: its study's and its own UID."""

    study: str
    series: str


def as_series_refs(refs: Any) -> list[SeriesRef]:
    """Normalise series references.

    Accepts a :class:`SeriesRef`, a ``(study, series)`` pair, a mapping or a pandas row
    with ``StudyInstanceUID`` and ``SeriesInstanceUID``, a DataFrame with those columns
    (DESIGN.md D6), or an iterable of any of these. Duplicates are dropped, order kept.

    Raises
    ------
    InvalidInputError
        If a reference has no study or series UID.
    """
    if isinstance(refs, pd.DataFrame):
        missing = {"StudyInstanceUID", "SeriesInstanceUID"} - set(refs.columns)
        if missing:
            raise InvalidInputError(
                f"the DataFrame lacks the column(s) {sorted(missing)} needed to find series"
            )
        items: Iterable[Any] = zip(refs["StudyInstanceUID"], refs["SeriesInstanceUID"], strict=True)
    elif isinstance(refs, (SeriesRef, Mapping, pd.Series)) or (
        isinstance(refs, tuple) and len(refs) == 2 and all(isinstance(r, str) for r in refs)
    ):
        items = [refs]
    else:
        items = refs
    out: dict[SeriesRef, None] = {}
    for item in items:
        if isinstance(item, (Mapping, pd.Series)):
            study, series = item.get("StudyInstanceUID"), item.get("SeriesInstanceUID")
        else:
            try:
                study, series = item
            except (TypeError, ValueError):
                raise InvalidInputError(
                    f"{item!r} is not a series reference (study UID, series UID)"
                ) from None
        if not isinstance(study, str) or not isinstance(series, str) or not study or not series:
            raise InvalidInputError(f"series reference {item!r} lacks a study or series UID")
        out[SeriesRef(study, series)] = None
    return list(out)


@dataclass
class BulkResult(Generic[R]):
    """What a bulk call retrieved, and what it could not.

    Attributes
    ----------
    results : dict
        ``{key: value}`` for each item that succeeded (the key is the series UID for
        series calls).
    failures : pandas.DataFrame
        One row per failed item: ``key``, ``url`` (credentials stripped), ``status``
        (HTTP status, ``<NA>`` if there was no answer) and ``error``.
    """

    results: dict[str, R] = field(default_factory=dict)
    failures: pd.DataFrame = field(default_factory=lambda: _failures([]))

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return self.failures.empty

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, key: str) -> R:
        return self.results[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.results)

    def __repr__(self) -> str:
        return f"BulkResult({len(self.results)} succeeded, {len(self.failures)} failed)"

    def raise_for_failures(self) -> None:
        """Raise an :class:`ImagingKitError` summarising the failures, if any."""
        if self.ok:
            return
        first = self.failures.iloc[0]
        raise ImagingKitError(
            f"{len(self.failures)} of {len(self.failures) + len(self.results)} items failed; "
            f"first: {first['key']}: {first['error']}",
            url=first["url"] or None,
        )


def _failures(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(FAILURE_COLUMNS))
    frame["status"] = frame["status"].astype("Int64")
    frame["key"] = frame["key"].astype("string")
    return frame


def _call(task: Callable[[T], R], item: T) -> tuple[bool, Any]:
    """Run *task*; return ``(True, value)`` or ``(False, error record)`` (picklable)."""
    try:
        return True, task(item)
    except ImagingKitError as exc:
        return False, {"error": str(exc), "url": exc.url, "status": exc.status}
    except Exception as exc:  # one item's failure must not abort the whole call
        return False, {"error": f"{type(exc).__name__}: {exc}", "url": None, "status": None}


def _executor(executor: Any, workers: int) -> tuple[cf.Executor, bool]:
    """Return ``(executor, owned)``; a dask Client gives its concurrent.futures facade."""
    if executor is None:
        return cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imagingkit"), True
    if hasattr(executor, "get_executor") and hasattr(executor, "gather"):
        return executor.get_executor(pure=False), False
    if isinstance(executor, cf.Executor):
        return executor, False
    raise InvalidInputError(
        f"executor {executor!r} is neither a concurrent.futures.Executor nor a "
        "dask.distributed.Client"
    )


def run_bulk(
    task: Callable[[T], R],
    items: Sequence[T],
    *,
    keys: Sequence[str],
    urls: Sequence[str],
    executor: Any = None,
    progress: bool = True,
    desc: str = "retrieving",
    workers: int = 8,
) -> BulkResult[R]:
    """Run *task* on each item concurrently and collect a :class:`BulkResult`.

    Parameters
    ----------
    task : callable
        Called once per item; must be picklable for process-based executors.
    items : sequence
    keys, urls : sequence of str
        Each item's result key and the URL reported if it fails.
    executor : Executor or dask.distributed.Client, optional
    progress : bool
        Show a progress bar (``tqdm.auto``: a widget in notebooks).
    desc : str
        The progress bar's label.
    workers : int
        Threads of the internal pool when *executor* is None.
    """
    from tqdm.auto import tqdm

    pool, owned = _executor(executor, max(1, min(workers, len(items) or 1)))
    results: dict[str, R] = {}
    failed: list[dict[str, Any]] = []
    bar = tqdm(total=len(items), desc=desc, unit="series", disable=not progress, leave=False)
    futures: dict[cf.Future[tuple[bool, Any]], int] = {}
    try:
        for index, item in enumerate(items):
            futures[pool.submit(_call, task, item)] = index
        for future in cf.as_completed(futures):
            index = futures[future]
            try:
                success, value = future.result()
            except Exception as exc:  # the executor itself failed (worker lost, ...)
                success, value = False, {"error": f"{type(exc).__name__}: {exc}", "status": None}
            if success:
                results[keys[index]] = value
            else:
                failed.append(
                    {
                        "key": keys[index],
                        "url": value.get("url") or urls[index],
                        "status": value.get("status"),
                        "error": value["error"],
                    }
                )
            bar.update(1)
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    finally:
        bar.close()
        if owned:
            pool.shutdown(wait=True, cancel_futures=True)
    ordered = {keys[i]: results[keys[i]] for i in range(len(items)) if keys[i] in results}
    failed.sort(key=lambda row: keys.index(row["key"]))
    return BulkResult(ordered, _failures(failed))


# --------------------------------------------------------------------------- series tasks


def _series_url(client: DicomWebClient, ref: SeriesRef) -> str:
    return f"{client.base_url}/studies/{ref.study}/series/{ref.series}"


def _fetch_one(client: DicomWebClient, output: str, ref: SeriesRef) -> Any:
    if output == "volume":
        return client.series_volume(ref.study, ref.series)
    parts = list(client.iter_series(ref.study, ref.series))
    if output == "parts":
        return parts
    import pydicom

    return [pydicom.dcmread(io.BytesIO(part.payload), force=True) for part in parts]


def _bulk(
    client: DicomWebClient,
    refs: Any,
    task: Callable[[SeriesRef], Any],
    executor: Any,
    progress: bool,
    desc: str,
) -> BulkResult:
    series = as_series_refs(refs)
    return run_bulk(
        task,
        series,
        keys=[r.series for r in series],
        urls=[_series_url(client, r) for r in series],
        executor=executor,
        progress=progress,
        desc=desc,
        workers=client.settings.concurrency,
    )


def fetch_series(
    client: DicomWebClient,
    refs: Any,
    *,
    output: str = "volume",
    executor: Any = None,
    progress: bool = True,
) -> BulkResult:
    """Retrieve many series concurrently, one WADO-RS stream each (PS3.18 §10.4.1.1.1).

    Parameters
    ----------
    client : DicomWebClient
    refs
        Series references (see :func:`as_series_refs`): a DataFrame with
        ``StudyInstanceUID`` and ``SeriesInstanceUID`` columns, pairs, ...
    output : {"volume", "datasets", "parts"}
        :class:`~imagingkit.dicomweb.volume.Volume` per series (cached: a second call
        makes no request), a list of pydicom Datasets, or the raw :class:`Part`\\ s.
    executor : concurrent.futures.Executor or dask.distributed.Client, optional
    progress : bool

    Returns
    -------
    BulkResult
        Keyed by SeriesInstanceUID.
    """
    if output not in OUTPUTS:
        raise InvalidInputError(f"output {output!r} is not one of {OUTPUTS}")
    task = functools.partial(_fetch_one, client, output)
    return _bulk(client, refs, task, executor, progress, f"series ({output})")


def _metadata_one(client: DicomWebClient, ref: SeriesRef) -> list[dict[str, Any]]:
    return client.retrieve_metadata(ref.study, ref.series)


def fetch_metadata(
    client: DicomWebClient, refs: Any, *, executor: Any = None, progress: bool = True
) -> BulkResult:
    """Retrieve the instance metadata of many series (PS3.18 §10.4.1.1.2), cached."""
    task = functools.partial(_metadata_one, client)
    return _bulk(client, refs, task, executor, progress, "metadata")


def _thumbnail_one(client: DicomWebClient, size: int, ref: SeriesRef) -> bytes:
    return client.thumbnail(ref.study, ref.series, size=size)


def fetch_thumbnails(
    client: DicomWebClient,
    refs: Any,
    *,
    size: int = 128,
    executor: Any = None,
    progress: bool = True,
) -> BulkResult:
    """Retrieve one thumbnail per series (Sup 203, or ``/rendered``), cached."""
    task = functools.partial(_thumbnail_one, client, int(size))
    return _bulk(client, refs, task, executor, progress, "thumbnails")


# --------------------------------------------------------------------------- download


def _write_atomic(path: Path, payload: bytes) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    write_durably(temp, payload)
    try:
        os.replace(temp, path)
    except OSError:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def _sop_uid(payload: bytes) -> str:
    header = read_dicom_json(payload, only={0x00080018})
    values = (header.dataset.get("00080018") or {}).get("Value") or []
    if not values:
        raise InvalidInputError("an instance without a SOP Instance UID cannot be saved")
    uid = str(values[0])
    if not uid.replace(".", "").isdigit():
        raise InvalidInputError(f"SOP Instance UID {uid!r} cannot name a file")
    return uid


def _download_one(client: DicomWebClient, root: Path, ref: SeriesRef) -> list[Path]:
    folder = root / ref.study / ref.series
    folder.mkdir(parents=True, exist_ok=True)
    listed = client.search_instances(study_uid=ref.study, series_uid=ref.series)
    wanted = []
    for item in listed:
        values = (item.get("00080018") or {}).get("Value") or []
        if values:
            wanted.append(str(values[0]))
    present = {p.stem for p in folder.glob("*.dcm")}
    missing = [uid for uid in wanted if uid not in present]
    if missing and (not wanted or len(missing) > len(wanted) // 2):
        for part in client.iter_series(ref.study, ref.series):
            uid = _sop_uid(part.payload)
            if uid not in present:
                _write_atomic(folder / f"{uid}.dcm", part.payload)
                present.add(uid)
    else:
        for uid in missing:
            payload = client.retrieve_instance(ref.study, ref.series, uid)
            _write_atomic(folder / f"{uid}.dcm", payload)
            present.add(uid)
    keep = set(wanted) if wanted else present
    return sorted(folder / f"{uid}.dcm" for uid in keep if uid in present)


def download(
    client: DicomWebClient,
    refs: Any,
    directory: str | Path,
    *,
    executor: Any = None,
    progress: bool = True,
) -> BulkResult:
    """Save series as Part-10 files under ``directory/<study>/<series>/<sop>.dcm``.

    Resumable: each file is written whole (temporary file, fsync, rename), so a file
    that exists is complete; a later call lists each series (QIDO-RS) and retrieves only
    the instances whose files are missing — the whole series in one stream when more than
    half are missing, else instance by instance.

    Returns
    -------
    BulkResult
        ``{series UID: [paths]}`` and the failures.
    """
    root = Path(directory).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"cannot create the folder {str(root)!r}: {exc}") from None
    task = functools.partial(_download_one, client, root)
    return _bulk(client, refs, task, executor, progress, "download")
