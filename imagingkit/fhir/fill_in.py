"""QIDO-RS fill-in: series and instances an ImagingStudy does not list (PS3.18 §10.6).

``ImagingStudy.series`` (and ``series.instance``) are optional in R4, and producers that
index only studies leave them out. A series-level frame then has one row per such study
with empty series columns; this module replaces that row by one row per series found by
QIDO-RS at the study's DICOMweb location (and, at instance level, one row per instance),
so the frame is the same as if the ImagingStudy had listed them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from imagingkit.fhir.bodyparts import SNOMED_BY_BODY_PART
from imagingkit.fhir.flatten import categorical

__all__ = ["fill_in", "split_study_url"]

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


def fill_in(frame: pd.DataFrame, level: str, client_for: Callable[..., Any]) -> pd.DataFrame:
    """Replace rows lacking series (or instances) by the rows QIDO-RS gives.

    Parameters
    ----------
    frame : DataFrame
        A series- or instance-level frame from :func:`imagingkit.fhir.flatten.studies_frame`.
    level : {"series", "instance"}
    client_for : callable
        ``client_for(base, requires_access_token=...)`` → a DICOMweb client.

    Rows whose DICOMweb location is unknown, or whose server fails, are kept as they are.
    """
    column = "SOPInstanceUID" if level == "instance" else "SeriesInstanceUID"
    if column not in frame.columns:
        return frame
    todo = frame.index[frame[column].isna() & frame["dicomweb_url"].notna()]
    if len(todo) == 0:
        return frame
    pieces: list[pd.DataFrame] = []
    start = 0
    positions = [int(p) for p in frame.index.get_indexer(todo)]
    for position in positions:
        pieces.append(frame.iloc[start:position])
        pieces.append(_expand(frame.iloc[position : position + 1], level, client_for))
        start = position + 1
    pieces.append(frame.iloc[start:])
    out = pd.concat(pieces, ignore_index=True)
    for name, dtype in frame.dtypes.items():
        if isinstance(dtype, pd.CategoricalDtype):
            values = out[name].astype(object)
            out[name] = categorical(list(values.where(values.notna(), None)))
        elif out[name].dtype != dtype:
            out[name] = out[name].astype(dtype)
    return out


def _expand(row: pd.DataFrame, level: str, client_for: Callable[..., Any]) -> pd.DataFrame:
    url = str(row["dicomweb_url"].iloc[0])
    located = split_study_url(url)
    if located is None:
        return row
    base, study = located
    flag = row["dicomweb_requires_token"].iloc[0]
    client = client_for(base, requires_access_token=None if pd.isna(flag) else bool(flag))
    try:
        if pd.isna(row["SeriesInstanceUID"].iloc[0]):
            found = client.search_series(study_uid=study, fields=list(_SERIES_TAGS))
            series_rows = [{c: _value(item, t) for t, c in _SERIES_TAGS.items()} for item in found]
        else:
            series_rows = [{}]
        records: list[dict[str, Any]] = []
        for values in series_rows:
            series_uid = values.get("SeriesInstanceUID") or row["SeriesInstanceUID"].iloc[0]
            values = {**values, "dicomweb_url": f"{base}/studies/{study}/series/{series_uid}"}
            if values.get("BodyPartExamined"):
                codes = SNOMED_BY_BODY_PART.get(str(values["BodyPartExamined"]).upper())
                values["body_site_code"] = codes[0] if codes else None
            if level != "instance":
                records.append(values)
                continue
            instances = client.search_instances(
                study_uid=study, series_uid=series_uid, fields=list(_INSTANCE_TAGS)
            )
            for item in instances or [{}]:
                extra = {c: _value(item, t) for t, c in _INSTANCE_TAGS.items()} if item else {}
                if extra.get("SOPInstanceUID"):
                    extra["dicomweb_url"] = (
                        f"{values['dicomweb_url']}/instances/{extra['SOPInstanceUID']}"
                    )
                records.append({**values, **extra})
    except Exception:
        return row
    if not records:
        return row
    expanded = pd.concat([row] * len(records), ignore_index=True)
    for name in {k for r in records for k in r}:
        values_list = [r.get(name, expanded[name].iloc[i]) for i, r in enumerate(records)]
        if name in ("SeriesDate",):
            expanded[name] = pd.to_datetime(pd.Series(values_list, dtype=object), errors="coerce")
        else:
            expanded[name] = pd.Series(values_list, dtype=object)
    return expanded
