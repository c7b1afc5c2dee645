"""A strip of series thumbnails for one study, fetched in the background and cached.

The pixels come through ``df.imaging.thumbnails`` (DICOMweb Sup 203 ``/thumbnail`` or
``/rendered``, PS3.18 §10.4.1.1.4; cached on disk by the DICOMweb client). Fetching runs on
one worker thread so the kernel stays responsive; the result is applied on the kernel's
event loop (where widget updates belong), or on a dispatcher thread outside a kernel.
"""

from __future__ import annotations

import base64
import concurrent.futures
import html
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

import ipywidgets
from traitlets import Unicode

from imagingkit.errors import ConfigError, ImagingKitError
from imagingkit.notify import callback_dispatcher
from imagingkit.widgets.frames import text
from imagingkit.widgets.markup import message, spinner
from imagingkit.widgets.tree import close_models

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ThumbnailStrip"]

log = logging.getLogger("imagingkit.widgets")


class ThumbnailStrip(ipywidgets.HTML):
    """Thumbnails of one study's series, as one HTML value (JPEGs as ``data:`` URIs).

    Parameters
    ----------
    size : int
        Thumbnail size in pixels (the longer side).
    max_series : int
        At most this many series (the first in the frame's order).
    cache_size : int
        Studies whose thumbnails are kept in memory (least recently shown dropped).

    Attributes
    ----------
    state : str
        ``"empty"``, ``"loading"``, ``"ready"`` or ``"error"`` (partial failures are
        ``"ready"`` with the failures named below the images).
    study_uid : str
        The study shown, or being fetched.
    """

    state = Unicode("empty")
    study_uid = Unicode("")
    _executor: concurrent.futures.ThreadPoolExecutor | None = None

    def __init__(self, *, size: int = 96, max_series: int = 6, cache_size: int = 32) -> None:
        super().__init__(value="")
        self.size = int(size)
        self.max_series = int(max_series)
        self._cache: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._cache_size = max(1, int(cache_size))
        self._lock = threading.Lock()
        self._pending: concurrent.futures.Future[tuple[str, str]] | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="imagingkit-thumbnails"
        )
        self._deliver = callback_dispatcher(
            None, name="imagingkit-thumbnail-results", logger=log, label="thumbnail"
        )
        self.fetches = 0  # network fetches started (cache misses)

    def show(self, study_uid: str, rows: Callable[[], pd.DataFrame]) -> None:
        """Show the thumbnails of *study_uid*; ``rows()`` gives its series rows (called on
        the worker thread, so it may query FHIR) when they are not cached yet."""
        with self._lock:
            if self._pending is not None and self.study_uid == study_uid:
                return  # already on its way
            self.study_uid = study_uid
            cached = self._cache.get(study_uid)
            if cached is not None:
                self._cache.move_to_end(study_uid)
                self._pending = None
                self._set(*cached)
                return
            if self._executor is None:
                raise ConfigError("this thumbnail strip is closed")
            self.fetches += 1
            self._set("loading", spinner("Loading thumbnails…"))
            future = self._executor.submit(self._fetch, rows)
            self._pending = future
        future.add_done_callback(lambda done: self._deliver(self._arrived, (study_uid, done)))

    def clear(self) -> None:
        """Show nothing."""
        with self._lock:
            self.study_uid = ""
            self._pending = None
            self._set("empty", "")

    def wait(self, timeout: float = 60.0) -> str:
        """Block until the thumbnails being fetched are shown (bounded); return :attr:`state`.

        Safe in a notebook cell: the result is applied here if the kernel's loop has not
        applied it yet.
        """
        with self._lock:
            pending, uid = self._pending, self.study_uid
        if pending is not None:
            concurrent.futures.wait([pending], timeout=timeout)
            if pending.done():
                self._arrived((uid, pending))
        return self.state

    def close(self) -> None:
        """Stop the worker and close the widget."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
            self._deliver.stop()
        super().close()
        close_models(self)

    # -- worker thread --------------------------------------------------------------------

    def _fetch(self, rows: Callable[[], pd.DataFrame]) -> tuple[str, str]:
        """(state, html) for the study: runs on the worker, never raises."""
        try:
            frame = rows()
            if "SeriesInstanceUID" not in frame.columns or frame.empty:
                return "error", message("No series of this study to show", "error")
            series = frame.drop_duplicates("SeriesInstanceUID").head(self.max_series)
            result = series.imaging.thumbnails(size=self.size, progress=False)
        except ImagingKitError as error:
            return "error", message(f"Cannot fetch thumbnails: {error}", "error")
        except Exception as error:  # the strip must show any failure, not die with it
            return "error", message(f"Cannot fetch thumbnails: {error!r}", "error")
        figures = []
        for row in series.itertuples(index=False):
            uid = getattr(row, "SeriesInstanceUID", None)
            jpeg = result.results.get(uid) if isinstance(uid, str) else None
            if jpeg is None:
                continue
            words = (getattr(row, "Modality", None), getattr(row, "SeriesDescription", None))
            caption = " · ".join(t for t in map(text, words) if t)
            figures.append(_figure(jpeg, caption, self.size))
        failed = len(result.failures)
        note = ""
        if failed:
            first = result.failures.iloc[0]
            note = message(
                f"{failed} of {failed + len(result.results)} series could not be fetched; "
                f"first: {first['error']}",
                "error" if not figures else "warning",
            )
        if not figures:
            return "error", note or message("The server returned no thumbnails", "error")
        return "ready", f"<div>{''.join(figures)}</div>{note}"

    # -- kernel thread --------------------------------------------------------------------

    def _arrived(self, item: tuple[str, concurrent.futures.Future[tuple[str, str]]]) -> None:
        uid, future = item
        if future.cancelled():
            return
        state, value = future.result()
        with self._lock:
            if state == "ready":
                self._cache[uid] = (state, value)
                self._cache.move_to_end(uid)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            if self._pending is not future:  # already applied, or another study since
                return
            self._pending = None
            self._set(state, value)

    def _set(self, state: str, value: str) -> None:
        with self.hold_trait_notifications():
            self.value = value
            self.state = state


def _figure(jpeg: bytes, caption: str, size: int) -> str:
    """One thumbnail with its (escaped) caption; the JPEG inline as a ``data:`` URI."""
    data = base64.b64encode(jpeg).decode("ascii")
    label = html.escape(caption, quote=True)
    return (
        "<figure style='display:inline-block;margin:0 6px 6px 0;text-align:center'>"
        f"<img src='data:image/jpeg;base64,{data}' alt='{label}' "
        f"style='max-width:{size}px;max-height:{size}px'/>"
        f"<figcaption style='font-size:smaller'>{label}</figcaption></figure>"
    )
