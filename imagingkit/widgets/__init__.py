"""ipywidgets for imagingkit: each one observes the notebook context (:mod:`imagingkit.context`).

=====================  ======================================================================
:class:`StudyBrowser`  a cohort's studies: filters, pages, thumbnails, viewer links, *Select*
:class:`ContextBar`    the context live (patient, study, report, FHIRcast status); bind/unbind
:class:`ViewerButtons` links opening a study in the configured IHE IID viewers
:class:`LiveTable`     a ``bridge.watch(...)`` frame updating as studies arrive
=====================  ======================================================================

Their state is plain traitlets, so code (and tests) drive them without a browser: set a
filter's ``value``, call ``button.click()``, read an HTML widget's ``value``. Every value put
into HTML is escaped.

Example::

    from imagingkit.widgets import ContextBar, StudyBrowser

    ContextBar(hub_url=f"{server}/fhircast", topic="reading-room-1")
    StudyBrowser(bridge.cohort().imaging(modality="CT").studies(level="series"))
"""

from imagingkit.widgets.context_bar import ContextBar
from imagingkit.widgets.live_table import LiveTable
from imagingkit.widgets.study_browser import StudyBrowser
from imagingkit.widgets.thumbnails import ThumbnailStrip
from imagingkit.widgets.viewer_buttons import ViewerButtons

__all__ = ["ContextBar", "LiveTable", "StudyBrowser", "ThumbnailStrip", "ViewerButtons"]
