"""What the widgets read from imagingkit DataFrames (DESIGN.md D6 columns).

:class:`StudyIndex` turns a study- or series-level frame of ``cohort.studies()`` into one
row per study with the values the browser filters on, computed once (one pass over the
rows); filtering is then vectorised pandas, so a large cohort is never looped over again.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd

from imagingkit.errors import InvalidInputError

__all__ = ["StudyIndex", "dicomweb_base", "study_rows", "text"]

UID = "StudyInstanceUID"
_SEP = "\\"  # DICOM's value separator, as in ModalitiesInStudy "CT\SR"


def text(value: Any) -> str | None:
    """*value* as display text, or None when missing (``None``, NaN, NaT, ``<NA>``, ``""``).

    Timestamps at midnight are shown as dates (``StudyDate`` is a date, DICOM PS3.5 DA).
    """
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):  # list-like values
        pass
    if isinstance(value, pd.Timestamp):
        if value.tz is None and value == value.normalize():
            return value.date().isoformat()
        return value.isoformat(timespec="minutes")
    shown = str(value)
    return shown or None


def dicomweb_base(url: Any) -> str | None:
    """The DICOMweb base of a ``dicomweb_url`` (``…/dicom-web/studies/…`` → ``…/dicom-web``)."""
    if not isinstance(url, str):
        return None
    head, sep, _tail = url.partition("/studies/")
    return head if sep else None


def study_rows(frame: pd.DataFrame, uid: str) -> pd.DataFrame:
    """The rows of *frame* that belong to the study *uid* (its ``attrs`` kept)."""
    rows = frame[frame[UID] == uid]
    rows.attrs = dict(frame.attrs)
    return rows


def _token_column(frame: pd.DataFrame, columns: list[str], index: pd.Index) -> pd.Series:
    """Per study, the distinct values of *columns* as ``\\A\\B\\`` (``""`` for none).

    Values are split on DICOM's backslash (``ModalitiesInStudy`` is ``CT\\SR``), so a
    filter can match a whole token with one vectorised ``str.contains``.
    """
    found: dict[str, set[str]] = {}
    for column in columns:
        if column not in frame.columns:
            continue
        pairs = frame[[UID, column]].dropna()
        for uid, value in zip(pairs[UID].astype(str), pairs[column].astype(str), strict=True):
            found.setdefault(uid, set()).update(t for t in value.split(_SEP) if t)
    joined = {uid: _SEP + _SEP.join(sorted(tokens)) + _SEP for uid, tokens in found.items()}
    return pd.Series([joined.get(uid, "") for uid in index], index=index, dtype="string")


class StudyIndex:
    """One row per study of a ``cohort.studies()`` frame, ready to filter.

    Parameters
    ----------
    frame : pandas.DataFrame
        A study-, series- or instance-level frame (DESIGN.md D6); rows without a
        ``StudyInstanceUID`` cannot be selected and are left out (:attr:`skipped`).

    Attributes
    ----------
    studies : pandas.DataFrame
        Index ``StudyInstanceUID``, in the frame's order; columns ``date``
        (datetime64), ``modalities`` and ``body_parts`` (``\\CT\\SR\\`` token strings),
        ``description``, ``patient``, ``accession`` and ``search`` (lower-case text).
    modalities, body_parts : list of str
        The distinct values, sorted (the filter choices).
    skipped : int
        Rows without a Study Instance UID.
    """

    def __init__(self, frame: pd.DataFrame) -> None:
        if not isinstance(frame, pd.DataFrame):
            raise InvalidInputError(
                f"expected a DataFrame from cohort.studies(), not {type(frame).__name__}"
            )
        if UID not in frame.columns:
            raise InvalidInputError(
                "the frame has no StudyInstanceUID column (DESIGN.md D6): use cohort.studies()"
            )
        usable = frame[frame[UID].notna() & (frame[UID].astype(str) != "")]
        self.skipped = len(frame) - len(usable)
        first = usable.drop_duplicates(UID).set_index(UID)
        index = first.index.astype(str)
        studies = pd.DataFrame(index=index)
        studies["date"] = _dates(first)
        studies["modalities"] = _token_column(usable, ["Modality", "ModalitiesInStudy"], index)
        studies["body_parts"] = _token_column(usable, ["BodyPartExamined"], index)
        for name, column in (
            ("description", "StudyDescription"),
            ("patient", "PatientID"),
            ("accession", "AccessionNumber"),
        ):
            values = first[column] if column in first.columns else pd.Series(pd.NA, index=index)
            studies[name] = pd.array(values.to_numpy(dtype=object), dtype="string")
        search = pd.Series(index.to_numpy(dtype=object), index=index, dtype="string")
        for name in ("description", "patient", "accession"):
            search = search + " " + studies[name].fillna("")
        studies["search"] = search.str.lower()
        self.studies = studies
        self.modalities = _tokens(studies["modalities"])
        self.body_parts = _tokens(studies["body_parts"])

    def __len__(self) -> int:
        return len(self.studies)

    def mask(
        self,
        *,
        modality: str | None = None,
        body_part: str | None = None,
        date_from: dt.date | None = None,
        date_to: dt.date | None = None,
        search: str = "",
    ) -> pd.Series:
        """Which studies pass every given filter (a boolean Series on :attr:`studies`).

        *modality* and *body_part* match any series of the study; the dates are
        inclusive; *search* is a case-insensitive substring of the Study Instance UID,
        description, patient ID or accession number. A study without a date passes only
        when no date bound is given.
        """
        studies = self.studies
        keep = pd.Series(True, index=studies.index)
        if modality:
            keep &= studies["modalities"].str.contains(f"{_SEP}{modality}{_SEP}", regex=False)
        if body_part:
            keep &= studies["body_parts"].str.contains(f"{_SEP}{body_part}{_SEP}", regex=False)
        if date_from is not None:
            keep &= studies["date"] >= pd.Timestamp(date_from)
        if date_to is not None:
            keep &= studies["date"] < pd.Timestamp(date_to) + pd.Timedelta(days=1)
        needle = search.strip().lower()
        if needle:
            keep &= studies["search"].str.contains(needle, regex=False)
        return keep.fillna(False).astype(bool)


def _dates(first: pd.DataFrame) -> pd.Series:
    if "StudyDate" in first.columns:
        dates = pd.to_datetime(first["StudyDate"], errors="coerce")
    else:
        dates = pd.Series(pd.NaT, index=first.index, dtype="datetime64[us]")
    if "study_started" in first.columns:  # a study without StudyDate: the day it started
        started = pd.to_datetime(first["study_started"], errors="coerce", utc=True)
        dates = dates.fillna(started.dt.tz_localize(None).dt.normalize())
    return pd.Series(dates.to_numpy(), index=first.index.astype(str))


def _tokens(column: pd.Series) -> list[str]:
    found: set[str] = set()
    for value in column.dropna().unique():
        found.update(t for t in str(value).split(_SEP) if t)
    return sorted(found)
