"""A :class:`~imagingkit.subscriptions.live.LiveFrame` on screen, updating as studies arrive.

``bridge.watch(cohort)`` keeps a DataFrame current through a FHIR Subscription (R4
Subscriptions Backport IG, topic "ImagingStudy created or updated"); :class:`LiveTable`
shows how many studies and rows it holds, the listener's status, the last change (which
studies were added, updated, removed) and the first rows, with the changed rows on top.
It re-renders from the frame's ``on_change`` callbacks, which run on the kernel's event
loop when the frame was made in a notebook.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets
import pandas as pd
from traitlets import Int

from imagingkit.context import NotebookContext, current
from imagingkit.widgets.frames import UID
from imagingkit.widgets.markup import message, table
from imagingkit.widgets.tree import close_models, close_tree

if TYPE_CHECKING:
    from imagingkit.subscriptions.live import FrameDiff, LiveFrame

__all__ = ["LiveTable"]

_ID = "imaging_study_id"
_COLUMNS = (
    "PatientID",
    "StudyDate",
    "ModalitiesInStudy",
    "Modality",
    "StudyDescription",
    "SeriesDescription",
    "AccessionNumber",
    _ID,
)


class LiveTable(ipywidgets.VBox):
    """A live view of ``bridge.watch(...)``.

    Parameters
    ----------
    live : LiveFrame
        From :meth:`imagingkit.bridge.Bridge.watch`.
    max_rows : int
        Rows shown (changed rows first); the count covers them all.
    columns : sequence of str, optional
        Columns shown; default the D6 columns a person reads first that the frame has.
    context : NotebookContext, optional
        The row of the study open in it is marked ``●``; default
        :func:`imagingkit.context.current`.

    Attributes
    ----------
    studies, rows, version : int
        Distinct ImagingStudies and rows in the frame, and updates applied so far.
    last_change : FrameDiff or None
        The most recent update that changed rows.
    header, change, body : ipywidgets.HTML
        The counts and status, the last change, the table.
    """

    studies = Int(0)
    rows = Int(0)
    version = Int(0)
    _closed = True  # until the table observes the context

    def __init__(
        self,
        live: LiveFrame,
        *,
        max_rows: int = 20,
        columns: Sequence[str] | None = None,
        context: NotebookContext | None = None,
    ) -> None:
        self.live = live
        self.max_rows = max(1, int(max_rows))
        frame = live.df
        self.columns = list(columns) if columns else [c for c in _COLUMNS if c in frame.columns]
        self.context = context if context is not None else current()
        self.last_change: FrameDiff | None = None
        self.changed_at: dt.datetime | None = None
        self._lock = threading.Lock()
        self.header = ipywidgets.HTML()
        self.change = ipywidgets.HTML(message("No change since the frame was loaded"))
        self.body = ipywidgets.HTML()
        super().__init__(children=[self.header, self.change, self.body])
        self.context.observe(self.refresh, names=["study_uid"])
        self._closed = False
        live.on_change(self._on_change)
        self.refresh()

    def refresh(self, _change: Any = None) -> None:
        """Render the frame as it is now (the callbacks do this on every change)."""
        with self._lock:
            if self._closed:
                return
            frame = self.live.df
            diff = self.last_change
            studies = int(frame[_ID].nunique()) if _ID in frame else len(frame)
            version = self.live.version
            header = message(
                f"{studies:,} studies · {len(frame):,} rows · listener {self.live.status}"
                f" · {version} update(s)"
            )
            if self.live.error is not None:
                header += message(f"Last error: {self.live.error}", "error")
            self.header.value = header
            self.body.value = self._table(frame, diff)
            with self.hold_trait_notifications():  # last: observers see it all rendered
                self.studies = studies
                self.rows = len(frame)
                self.version = version

    def close(self) -> None:
        """Stop rendering (the LiveFrame keeps running; close it yourself)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.context.unobserve(self.refresh, names=["study_uid"])
        self.live.off_change(self._on_change)
        for child in self.children:
            close_tree(child)
        super().close()
        close_models(self)

    def _on_change(self, diff: FrameDiff) -> None:
        if self._closed:
            return
        self.last_change = diff
        self.changed_at = dt.datetime.now().astimezone()
        parts = [
            f"{label} {', '.join(ids)}"
            for label, ids in (
                ("added", diff.added),
                ("updated", diff.updated),
                ("removed", diff.removed),
            )
            if ids
        ]
        self.change.value = message(
            f"Last change (update {diff.version}, {self.changed_at:%H:%M:%S}): " + "; ".join(parts),
            "ok",
        )
        self.refresh()

    def _table(self, frame: pd.DataFrame, diff: FrameDiff | None) -> str:
        if frame.empty:
            return message("The frame is empty")
        ids = frame[_ID] if _ID in frame else pd.Series("", index=frame.index)
        added = set(diff.added) if diff else set()
        updated = set(diff.updated) if diff else set()
        changed = ids.isin(added | updated)
        shown = pd.concat([frame[changed], frame[~changed]]).head(self.max_rows)
        uid = self.context.study_uid
        marks = []
        for study_id, study_uid in zip(
            shown[_ID] if _ID in shown else [""] * len(shown),
            shown[UID] if UID in shown else [""] * len(shown),
            strict=True,
        ):
            mark = "new" if study_id in added else "updated" if study_id in updated else ""
            if uid and study_uid == uid:
                mark = f"● {mark}".strip()
            marks.append(mark)
        values = shown[self.columns].itertuples(index=False)
        more = len(frame) - len(shown)
        caption = f"first {len(shown)} of {len(frame):,} rows, changed rows first" if more else None
        return table(self.columns, values, marks=marks, caption=caption)
