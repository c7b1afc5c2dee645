"""Links that open a study in the configured IHE IID viewers, in a new tab.

Each link is built by :func:`imagingkit.iid.viewer_url` (the adapters for the built-in
viewer, OHIF, Orthanc/Stone, Weasis, Slim, URL templates; ``$IMAGINGKIT_VIEWERS``) from
the row's own DICOMweb location, exactly as ``df.imaging.viewer_urls`` builds it, and
rendered by :func:`imagingkit.iid.launch_link` (escaped, ``target=_blank``,
``rel="noopener noreferrer"``, only http(s)/weasis targets). A viewer that cannot be
placed for the study shows its error instead of a link.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import ipywidgets
import pandas as pd
from traitlets import Dict, Unicode

from imagingkit.context import NotebookContext, current
from imagingkit.errors import ImagingKitError, InvalidInputError
from imagingkit.iid import ViewerRegistry, launch_link, load_viewers, viewer_url
from imagingkit.iid.viewers import VIEWERS_ENV
from imagingkit.widgets.frames import UID, dicomweb_base, study_rows, text
from imagingkit.widgets.markup import message
from imagingkit.widgets.tree import close_models

__all__ = ["ViewerButtons", "default_viewers", "study_links"]

_STYLE = (
    "display:inline-block;margin:2px 6px 2px 0;padding:2px 10px;border:1px solid #bbb;"
    "border-radius:3px;text-decoration:none"
)


def default_viewers(registry: ViewerRegistry | None = None) -> tuple[str, ...]:
    """The configured viewer names (*registry*, else ``$IMAGINGKIT_VIEWERS``), else
    ``("builtin",)``."""
    if registry is None and os.environ.get(VIEWERS_ENV):
        registry = load_viewers()
    return tuple(registry.names()) if registry is not None else ("builtin",)


def study_links(
    row: pd.Series, viewers: Sequence[str], registry: ViewerRegistry | None = None
) -> dict[str, str | ImagingKitError]:
    """Per viewer, the deep link opening the study of *row*, or the error that prevented it.

    The same call as ``df.imaging.viewer_urls(viewer)`` for that row (IHE RAD-106 viewer
    adapters, :func:`imagingkit.iid.viewer_url`).
    """
    base = dicomweb_base(row.get("dicomweb_url"))
    links: dict[str, str | ImagingKitError] = {}
    for name in viewers:
        if base is None:
            links[name] = InvalidInputError("the study has no DICOMweb location (dicomweb_url)")
            continue
        try:
            links[name] = viewer_url(
                name,
                study_uid=str(row[UID]),
                series_uid=text(row.get("SeriesInstanceUID")),
                dicomweb_base=base,
                accession_number=text(row.get("AccessionNumber")),
                registry=registry,
                lenient=True,
            )
        except ImagingKitError as error:
            links[name] = error
    return links


class ViewerButtons(ipywidgets.HTML):
    """Open a study in each configured viewer (one link per viewer, new tab).

    Parameters
    ----------
    study : pandas.Series or pandas.DataFrame, optional
        A row of ``cohort.studies()`` or a one-study frame: its links are fixed. A frame
        of several studies: the links follow the study the notebook context holds
        (FHIRcast ``ImagingStudy-open`` from another application, or
        ``context.select_study``), when it is in the frame.
    viewers : sequence of str, optional
        Viewer names or types (``"builtin"``, ``"ohif"``, ``"weasis"`` …); default: the
        configured viewers (``$IMAGINGKIT_VIEWERS``), else the built-in viewer.
    registry : ViewerRegistry, optional
        Where names are looked up first (see :func:`imagingkit.iid.load_viewers`).
    context : NotebookContext, optional
        Default :func:`imagingkit.context.current`.

    Attributes
    ----------
    study_uid : str
        The study the links open (``""`` for none).
    links : dict
        ``{viewer: url}`` for the viewers that could be placed.
    errors : dict
        ``{viewer: message}`` for those that could not.
    """

    study_uid = Unicode("")
    links = Dict()
    errors = Dict()
    _following = False

    def __init__(
        self,
        study: pd.Series | pd.DataFrame | None = None,
        viewers: Sequence[str] | None = None,
        *,
        registry: ViewerRegistry | None = None,
        context: NotebookContext | None = None,
    ) -> None:
        super().__init__(value="")
        if isinstance(viewers, str):
            viewers = (viewers,)
        self.registry = registry
        self.viewers = tuple(viewers) if viewers else default_viewers(registry)
        self.context = context if context is not None else current()
        self._frame: pd.DataFrame | None = None
        self._following = False
        if isinstance(study, pd.DataFrame) and study[UID].nunique() > 1:
            self._frame = study
            self._following = True
            self.context.observe(self._on_context, names=["study_uid"])
            self._follow(self.context.study_uid)
        else:
            self.show(study)

    def show(self, study: pd.Series | pd.DataFrame | None) -> None:
        """Show the links of *study* (a row or a one-study frame); ``None`` clears."""
        if study is None:
            self._render(None, message("No study", "info"))
            return
        if isinstance(study, pd.DataFrame):
            if study.empty or UID not in study.columns:
                raise InvalidInputError("ViewerButtons needs rows of cohort.studies()")
            if study[UID].nunique() > 1:
                raise InvalidInputError(
                    "show() takes one study; pass a frame of several to the constructor "
                    "to follow the context"
                )
            study = study.iloc[0]
        if not isinstance(study, pd.Series) or text(study.get(UID)) is None:
            raise InvalidInputError("ViewerButtons needs a row with a StudyInstanceUID")
        self._render(study, "")

    def close(self) -> None:
        """Stop following the context and close the widget."""
        if self._following:
            self.context.unobserve(self._on_context, names=["study_uid"])
            self._following = False
        super().close()
        close_models(self)

    def _on_context(self, change: dict[str, Any]) -> None:
        self._follow(change["new"])

    def _follow(self, uid: str) -> None:
        assert self._frame is not None
        if not uid:
            self._render(None, message("No study open in the notebook context", "info"))
            return
        rows = study_rows(self._frame, uid)
        if rows.empty:
            self._render(
                None, message(f"The context's study {uid} is not in this frame", "warning")
            )
            return
        self._render(rows.iloc[0], "")

    def _render(self, row: pd.Series | None, note: str) -> None:
        links: dict[str, str] = {}
        errors: dict[str, str] = {}
        parts: list[str] = []
        if row is not None:
            for name, found in study_links(row, self.viewers, self.registry).items():
                if isinstance(found, str):
                    try:
                        link = launch_link(found, f"Open in {name}")
                    except ImagingKitError as refused:
                        errors[name] = str(refused)
                        continue
                    links[name] = found
                    parts.append(f'<span style="{_STYLE}">{link.to_html()}</span>')
                else:
                    errors[name] = str(found)
            for name, error in errors.items():
                parts.append(message(f"{name}: {error}", "error"))
        with self.hold_trait_notifications():
            self.study_uid = "" if row is None else str(row[UID])
            self.links = links
            self.errors = errors
            self.value = note + "".join(parts)
