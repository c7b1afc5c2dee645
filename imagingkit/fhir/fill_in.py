"""QIDO-RS fill-in: series and instances an ImagingStudy does not list (PS3.18 §10.6).

``ImagingStudy.series`` (and ``series.instance``) are optional in R4, and producers that
index only studies leave them out. A series-level frame then has one row per such study
with empty series columns; this module replaces that row by one row per series found by
QIDO-RS at the study's DICOMweb location (and, at instance level, one row per instance),
so the frame is the same as if the ImagingStudy had listed them.

The studies are queried concurrently (DESIGN.md D2): on ``executor=`` when given (any
:class:`concurrent.futures.Executor`, or a ``dask.distributed.Client``), else on a thread
pool of ``Settings.concurrency`` workers, through the bulk runner of
:mod:`imagingkit.dicomweb.bulk`. Each study is one task that returns plain records; the
rows are put back in the frame's order whatever order the tasks finish in, so the frame
is the one a sequential fill-in gives. A study whose server fails keeps its row as it was
(DESIGN.md D9: nothing is lost) and is named in a logged warning.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import pandas as pd

from imagingkit.fhir.bodyparts import SNOMED_BY_BODY_PART
from imagingkit.fhir.flatten import categorical

if TYPE_CHECKING:
    from imagingkit.dicomweb.client import DicomWebClient

__all__ = ["fill_in", "split_study_url"]

log = logging.getLogger("imagingkit.fhir")

#: DICOM JSON tag (PS3.18 §F.2) → frame column
_SERIES_TAGS = {
    "0020000E": "SeriesInstanceUID",
    "00200011": "SeriesNumber",
    "00080060": "Modality",
    "0008103E": "SeriesDescription",
    "00180015": "BodyPartExamined",
    "00080021": "SeriesDate",
    "00201209": "NumberOfSeriesRelatedInstances",
}
_INSTANCE_TAGS = {
    "00080018": "SOPInstanceUID",
    "00080016": "SOPClassUID",
    "00200013": "InstanceNumber",
}


def split_study_url(url: str) -> tuple[str, str] | None:
    """``{base}/studies/{uid}[/…]`` → (base, study UID)."""
    head, sep, tail = url.partition("/studies/")
    if not sep:
        return None
    return head, tail.split("/", 1)[0]


def _value(item: dict[str, Any], tag: str) -> Any:
    values = (item.get(tag) or {}).get("Value") or [None]
    value = values[0]
    if tag == "00080021" and isinstance(value, str) and len(value) == 8:
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


class _Study(NamedTuple):
    """One row to expand: where its study is, and the series it names (if any)."""

    client: DicomWebClient
    base: str
    study: str
    series: str | None


def fill_in(
    frame: pd.DataFrame,
    level: str,
    client_for: Callable[..., Any],
    *,
    executor: Any = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Replace rows lacking series (or instances) by the rows QIDO-RS gives.

    Parameters
    ----------
    frame : DataFrame
        A series- or instance-level frame from :func:`imagingkit.fhir.flatten.studies_frame`.
    level : {"series", "instance"}
    client_for : callable
        ``client_for(base, requires_access_token=...)`` → a DICOMweb client.
    executor : concurrent.futures.Executor or dask.distributed.Client, optional
        Runs the QIDO-RS searches, one task per study (default: a thread pool of the
        clients' ``Settings.concurrency``).
    progress : bool
        Show a progress bar of the studies queried.

    Returns
    -------
    DataFrame
        The rows in the frame's order, each study's series (and instances) in the order
        its server lists them: the same frame whatever the executor. Rows whose DICOMweb
        location is unknown, or whose server fails, are kept as they are (the failures
        are logged as a warning naming each study URL).
    """
    column = "SOPInstanceUID" if level == "instance" else "SeriesInstanceUID"
    if column not in frame.columns:
        return frame
    todo = frame.index[frame[column].isna() & frame["dicomweb_url"].notna()]
    if len(todo) == 0:
        return frame
    positions = [int(p) for p in frame.index.get_indexer(todo)]
    studies: dict[int, _Study] = {}
    for position in positions:
        located = _locate(frame.iloc[position], client_for)
        if located is not None:
            studies[position] = located
    found = _query_all(studies, level, executor, progress)
    return _assemble(frame, found)


def _assemble(frame: pd.DataFrame, found: dict[int, list[dict[str, Any]]]) -> pd.DataFrame:
    """*frame* with row *p* replaced by one row per record of ``found[p]``, in one take
    (a concat per study cost more than the QIDO-RS requests themselves), dtypes kept."""
    take: list[int] = []
    changes: dict[str, dict[int, Any]] = {}
    for position in range(len(frame)):
        for record in found.get(position) or [{}]:
            for name, value in record.items():
                changes.setdefault(name, {})[len(take)] = value
            take.append(position)
    out = frame.iloc[take].reset_index(drop=True)
    for name, changed in changes.items():
        column = out[name].astype(object).to_numpy(copy=True)
        for row, value in changed.items():
            column[row] = value
        if name == "SeriesDate":
            out[name] = pd.to_datetime(pd.Series(column, dtype=object), errors="coerce")
        else:
            out[name] = pd.Series(column, dtype=object)
    for label, dtype in frame.dtypes.items():
        if isinstance(dtype, pd.CategoricalDtype):
            values = out[label].astype(object)
            out[label] = categorical(list(values.where(values.notna(), None)))
        elif out[label].dtype != dtype:
            out[label] = out[label].astype(dtype)
    return out


def _locate(row: pd.Series, client_for: Callable[..., Any]) -> _Study | None:
    """The client and UIDs of a row's study (None: its URL names no study)."""
    located = split_study_url(str(row["dicomweb_url"]))
    if located is None:
        return None
    base, study = located
    flag = row["dicomweb_requires_token"]
    client = client_for(base, requires_access_token=None if pd.isna(flag) else bool(flag))
    series = row["SeriesInstanceUID"]
    return _Study(client, base, study, None if pd.isna(series) else str(series))


def _query_all(
    studies: dict[int, _Study], level: str, executor: Any, progress: bool
) -> dict[int, list[dict[str, Any]]]:
    """Each study's records, by row position; failed studies are logged and left out."""
    if not studies:
        return {}
    from imagingkit.dicomweb.bulk import run_bulk

    keys = [str(p) for p in studies]
    items = list(studies.values())
    result = run_bulk(
        functools.partial(_query, level),
        items,
        keys=keys,
        urls=[f"{s.base}/studies/{s.study}" for s in items],
        executor=executor,
        progress=progress,
        desc="QIDO-RS fill-in",
        workers=max(s.client.settings.concurrency for s in items),
    )
    if not result.ok:
        log.warning(
            "QIDO-RS fill-in failed for %d of %d studies; their rows are kept without %s: %s",
            len(result.failures),
            len(items),
            "instances" if level == "instance" else "series",
            "; ".join(f"{row.url}: {row.error}" for row in result.failures.itertuples()),
        )
    return {int(key): records for key, records in result.results.items()}


def _query(level: str, study: _Study) -> list[dict[str, Any]]:
    """The series (and, at instance level, instance) records QIDO-RS gives for a study.

    Runs on a worker: plain data in, plain data out.
    """
    client, base = study.client, study.base
    if study.series is None:
        found = client.search_series(study_uid=study.study, fields=list(_SERIES_TAGS))
        series_rows = [{c: _value(item, t) for t, c in _SERIES_TAGS.items()} for item in found]
    else:
        series_rows = [{}]
    records: list[dict[str, Any]] = []
    for values in series_rows:
        series_uid = values.get("SeriesInstanceUID") or study.series
        values = {**values, "dicomweb_url": f"{base}/studies/{study.study}/series/{series_uid}"}
        if values.get("BodyPartExamined"):
            codes = SNOMED_BY_BODY_PART.get(str(values["BodyPartExamined"]).upper())
            values["body_site_code"] = codes[0] if codes else None
        if level != "instance":
            records.append(values)
            continue
        instances = client.search_instances(
            study_uid=study.study, series_uid=series_uid, fields=list(_INSTANCE_TAGS)
        )
        for item in instances or [{}]:
            extra = {c: _value(item, t) for t, c in _INSTANCE_TAGS.items()} if item else {}
            if extra.get("SOPInstanceUID"):
                series_url = values["dicomweb_url"]
                extra["dicomweb_url"] = f"{series_url}/instances/{extra['SOPInstanceUID']}"
            records.append({**values, **extra})
    return records
