"""Browse a cohort's studies, look at one, and open it in the notebook context.

:class:`StudyBrowser` lists the studies of a ``cohort.studies()`` frame one page at a time
(a single ``Select`` whose options are the page's rows, so a cohort of 10,000 studies
costs the browser one page of text, never 10,000 DOM rows), filters them by modality,
body part, date range and free text, shows the highlighted study's details, viewer links
and series thumbnails, and its *Select* button calls
:meth:`imagingkit.context.NotebookContext.select_study`, which publishes ``Patient-open``
and ``ImagingStudy-open`` when the context is bound to a FHIRcast hub (FHIRcast 3.0.0
``3-3-1``, ``3-5-1``). When another application opens a study of the frame, the browser
highlights it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets
import numpy as np
import pandas as pd
from traitlets import Int, Unicode

from imagingkit.context import NotebookContext, current
from imagingkit.errors import ConfigError, ImagingKitError, InvalidInputError
from imagingkit.widgets.frames import UID, StudyIndex, study_rows, text
from imagingkit.widgets.markup import MISSING, message, table
from imagingkit.widgets.thumbnails import ThumbnailStrip
from imagingkit.widgets.tree import close_models, close_tree
from imagingkit.widgets.viewer_buttons import ViewerButtons

if TYPE_CHECKING:
    from imagingkit.bridge import Bridge
    from imagingkit.iid import ViewerRegistry

__all__ = ["StudyBrowser"]

_ALL = ""
#: shown before the study the notebook context holds
CONTEXT_MARK = "● "
_DETAILS = (
    ("Patient", "PatientID"),
    ("Study date", "StudyDate"),
    ("Description", "StudyDescription"),
    ("Accession", "AccessionNumber"),
    ("Study Instance UID", UID),
    ("Modalities", "ModalitiesInStudy"),
    ("Series", "NumberOfStudyRelatedSeries"),
    ("Instances", "NumberOfStudyRelatedInstances"),
    ("ImagingStudy", "imaging_study_id"),
)


class StudyBrowser(ipywidgets.VBox):
    """A filterable, paged list of a cohort's studies with thumbnails and a Select action.

    Parameters
    ----------
    frame : pandas.DataFrame
        From ``cohort.studies(level="study" | "series")`` (DESIGN.md D6); series rows
        are grouped by study.
    context : NotebookContext, optional
        Default :func:`imagingkit.context.current`.
    page_size : int
        Studies per page.
    thumbnails : bool
        Fetch the highlighted study's thumbnails (lazily, on a worker thread, cached).
    thumbnail_size, max_thumbnails : int
        Thumbnail size in pixels and series per study.
    viewers : sequence of str, optional
        Viewer links for the highlighted study (see :class:`ViewerButtons`).
    registry : ViewerRegistry, optional
        Where viewer names are looked up.
    bridge : Bridge, optional
        Finds the series of a study-level frame for thumbnails; default the bridge that
        made the frame.

    Attributes
    ----------
    page : int
        The page shown (from 0).
    highlighted : str
        Study Instance UID of the highlighted study (``""`` for none).
    modality, body_part, date_from, date_to, search : ipywidgets
        The filters; set their ``value`` from code as a user would.
    studies : ipywidgets.Select
        The page's studies (``options`` are ``(label, StudyInstanceUID)``).
    previous, next, select_button : ipywidgets.Button
        ``.click()`` them from code.
    pager, status, details : ipywidgets.HTML
        The page position, the last message, the highlighted study.
    viewer_buttons : ViewerButtons
    thumbnails : ThumbnailStrip
    """

    page = Int(0)
    highlighted = Unicode("")
    _closed = True  # until the browser observes the context

    def __init__(
        self,
        frame: pd.DataFrame,
        *,
        context: NotebookContext | None = None,
        page_size: int = 20,
        thumbnails: bool = True,
        thumbnail_size: int = 96,
        max_thumbnails: int = 6,
        viewers: Sequence[str] | None = None,
        registry: ViewerRegistry | None = None,
        bridge: Bridge | None = None,
    ) -> None:
        if page_size < 1:
            raise InvalidInputError(f"page_size must be at least 1, not {page_size}")
        self.frame = frame
        self.index = StudyIndex(frame)
        self.context = context if context is not None else current()
        self.page_size = int(page_size)
        self.bridge = bridge
        self._lock = threading.RLock()
        self._quiet = False  # True while the browser sets the list itself
        self._current = ""  # the highlighted study (the trait is set once it is shown)
        self._visible = self.index.studies.index

        layout = ipywidgets.Layout(width="auto")
        self.modality = ipywidgets.Dropdown(
            options=[("All modalities", _ALL), *((m, m) for m in self.index.modalities)],
            description="Modality",
            layout=layout,
        )
        self.body_part = ipywidgets.Dropdown(
            options=[("All body parts", _ALL), *((b, b) for b in self.index.body_parts)],
            description="Body part",
            disabled=not self.index.body_parts,
            layout=layout,
        )
        self.date_from = ipywidgets.DatePicker(description="From", layout=layout)
        self.date_to = ipywidgets.DatePicker(description="To", layout=layout)
        self.search = ipywidgets.Text(
            placeholder="description, patient, accession, UID",
            description="Search",
            continuous_update=False,
            layout=layout,
        )
        # width "auto" stretches the list across the box; "100%" plus the widget's
        # margin overflowed it, cutting off the list's right edge in JupyterLab
        self.studies = ipywidgets.Select(
            options=[], rows=min(self.page_size, 20), layout=ipywidgets.Layout(width="auto")
        )
        self.previous = ipywidgets.Button(description="◀ Previous", layout=layout)
        self.next = ipywidgets.Button(description="Next ▶", layout=layout)
        self.pager = ipywidgets.HTML()
        self.select_button = ipywidgets.Button(
            description="Select",
            button_style="primary",
            tooltip="Make the highlighted study the notebook's context "
            "(published over FHIRcast when bound)",
            disabled=True,
        )
        self.status = ipywidgets.HTML()
        self.details = ipywidgets.HTML()
        self.viewer_buttons = ViewerButtons(None, viewers, registry=registry, context=self.context)
        self.thumbnails = ThumbnailStrip(size=thumbnail_size, max_series=max_thumbnails)
        self._show_thumbnails = bool(thumbnails)

        for control in (self.modality, self.body_part, self.date_from, self.date_to, self.search):
            control.observe(self._on_filter, names=["value"])
        self.studies.observe(self._on_pick, names=["value"])
        self.previous.on_click(lambda _button: self.go(self.page - 1))
        self.next.on_click(lambda _button: self.go(self.page + 1))
        self.select_button.on_click(lambda _button: self.select())
        self.context.observe(self._on_context, names=["study_uid"])
        self._closed = False

        super().__init__(
            children=[
                ipywidgets.HBox([self.modality, self.body_part, self.search]),
                ipywidgets.HBox([self.date_from, self.date_to]),
                self.studies,
                ipywidgets.HBox([self.previous, self.pager, self.next]),
                ipywidgets.HBox([self.select_button, self.status]),
                self.details,
                self.viewer_buttons,
                self.thumbnails,
            ]
        )
        if self.index.skipped:
            self._say(f"{self.index.skipped} row(s) without a StudyInstanceUID are not listed")
        self._apply_filters()
        if self.context.study_uid in self.index.studies.index:
            self._on_context({"new": self.context.study_uid})

    # -- what is shown --------------------------------------------------------------------

    @property
    def filtered(self) -> pd.DataFrame:
        """The studies passing the filters (rows of :attr:`StudyIndex.studies`)."""
        return self.index.studies.loc[self._visible]

    @property
    def page_count(self) -> int:
        """Pages of filtered studies (at least 1)."""
        return max(1, -(-len(self._visible) // self.page_size))

    def go(self, page: int) -> None:
        """Show *page* (clamped to the pages there are)."""
        with self._lock:
            self.page = min(max(0, int(page)), self.page_count - 1)
            self._render_page()

    def highlight(self, uid: str) -> None:
        """Highlight the study *uid*: show its details, viewer links and thumbnails; go to
        its page when the filters let it through.

        Raises
        ------
        InvalidInputError
            When the frame has no such study.
        """
        if uid not in self.index.studies.index:
            raise InvalidInputError(f"study {uid} is not in this browser's frame")
        with self._lock:
            position = self._position(uid)
            if position >= 0 and position // self.page_size != self.page:
                self.page = int(position // self.page_size)
            self._current = uid
            self._render_study(uid)
            self._render_page()
            self.highlighted = uid  # last: observers see everything rendered

    def select(self) -> None:
        """Make the highlighted study the context's (``context.select_study``); when the
        context is bound, the other applications of the FHIRcast session follow."""
        uid = self.highlighted
        if not uid:
            self._say("Highlight a study first", "warning")
            return
        try:
            self.context.select_study(study_rows(self.frame, uid))
        except ImagingKitError as error:
            self._say(f"Could not select study {uid}: {error}", "error")
            return
        where = (
            f"published to topic {self.context.topic}"
            if self.context.bound
            else "not bound to a FHIRcast hub, so only this notebook knows"
        )
        self._say(f"Selected study {uid} ({where})", "ok")

    def close(self) -> None:
        """Stop observing the context and close every part of the browser."""
        if self._closed:
            return
        self._closed = True
        self.context.unobserve(self._on_context, names=["study_uid"])
        for child in self.children:
            close_tree(child)  # the viewer links and thumbnails stop their own work
        super().close()
        close_models(self)

    # -- reacting ---------------------------------------------------------------------------

    def _on_filter(self, _change: dict[str, Any]) -> None:
        with self._lock:
            self.page = 0
            self._apply_filters()

    def _on_pick(self, change: dict[str, Any]) -> None:
        if self._quiet or not change["new"]:
            return
        self.highlight(change["new"])

    def _on_context(self, change: dict[str, Any]) -> None:
        uid = change["new"]
        with self._lock:
            if uid and uid in self.index.studies.index:
                if self._position(uid) < 0:
                    self._say(
                        f"Study {uid}, open in the context, is hidden by the filters", "warning"
                    )
                if uid != self._current:
                    self.highlight(uid)
                    return
            elif uid:
                self._say(f"Study {uid}, open in the context, is not in this frame")
            self._render_page()  # the context mark moved

    def _position(self, uid: str) -> int:
        """Where *uid* is among the filtered studies, or -1."""
        found = np.flatnonzero(self._visible.to_numpy() == uid)
        return int(found[0]) if len(found) else -1

    def _apply_filters(self) -> None:
        mask = self.index.mask(
            modality=self.modality.value or None,
            body_part=self.body_part.value or None,
            date_from=self.date_from.value,
            date_to=self.date_to.value,
            search=self.search.value,
        )
        self._visible = self.index.studies.index[mask.to_numpy()]
        self.page = min(self.page, self.page_count - 1)
        self._render_page()

    def _render_page(self) -> None:
        start = self.page * self.page_size
        shown = self.index.studies.loc[self._visible[start : start + self.page_size]]
        marked = self.context.study_uid
        options = [
            (_label(row, uid == marked), uid)
            for uid, row in zip(shown.index, shown.itertuples(index=False), strict=True)
        ]
        self._quiet = True
        try:
            self.studies.options = options
            self.studies.value = self._current if self._current in shown.index else None
        finally:
            self._quiet = False
        total, everything = len(self._visible), len(self.index)
        if total:
            span = f"Studies {start + 1:,}–{start + len(shown):,} of {total:,}"
        else:
            span = "No study passes the filters"
        if total != everything:
            span += f" (filtered from {everything:,})"
        self.pager.value = message(f"{span} · page {self.page + 1} of {self.page_count}")
        self.previous.disabled = self.page == 0
        self.next.disabled = self.page >= self.page_count - 1

    def _render_study(self, uid: str) -> None:
        rows = study_rows(self.frame, uid)
        first = rows.iloc[0]
        facts = [(label, first.get(column)) for label, column in _DETAILS if column in rows]
        if "ModalitiesInStudy" not in rows and "Modality" in rows:
            facts.append(
                ("Modalities", "/".join(sorted({str(m) for m in rows["Modality"].dropna()})))
            )
        if "SeriesInstanceUID" in rows:
            facts.append(("Series in this frame", rows["SeriesInstanceUID"].nunique()))
        self.details.value = table(("", ""), facts, caption="Highlighted study")
        self.select_button.disabled = False
        self.viewer_buttons.show(rows)
        if self._show_thumbnails:
            self.thumbnails.show(uid, self._series_finder(uid, rows))

    def _series_finder(self, uid: str, rows: pd.DataFrame) -> Callable[[], pd.DataFrame]:
        if "SeriesInstanceUID" in rows.columns:
            return lambda: rows

        def find() -> pd.DataFrame:  # a study-level frame: ask FHIR for the series
            from imagingkit.bridge import live_bridge

            bridge = self.bridge or live_bridge(self.frame.attrs.get("imagingkit") or {})
            if bridge is None:
                raise ConfigError(
                    "a study-level frame needs a bridge to find its series: "
                    "StudyBrowser(frame, bridge=imagingkit.connect(...))"
                )
            cohort = bridge.cohort().imaging(study_uid=uid)
            return cohort.studies(level="series", progress=False)

        return find

    def _say(self, text: str, kind: str = "info") -> None:
        self.status.value = message(text, kind)


def _label(row: Any, in_context: bool) -> str:
    """One list line (plain text: the front end sets it as text, not HTML)."""
    modalities = "/".join(t for t in str(row.modalities).split("\\") if t) or MISSING
    parts = [
        text(row.date) or MISSING,
        modalities,
        text(row.description) or MISSING,
        text(row.patient) or MISSING,
    ]
    return (CONTEXT_MARK if in_context else "  ") + " · ".join(parts)
