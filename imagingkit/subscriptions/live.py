"""A DataFrame of a cohort kept current by a FHIR Subscription (``Bridge.watch``).

:class:`LiveFrame` subscribes to every ImagingStudy change on the server (the
"ImagingStudy created or updated" topic where the server declares it, else a legacy
``criteria=ImagingStudy`` Subscription), loads the cohort (``cohort.studies()``), then for
each batch of changed studies runs the cohort's own plan again restricted to those ids
(:meth:`~imagingkit.fhir.cohort.Cohort.recheck`, ``_id=…``) and replaces, adds or removes
their rows. The rows therefore have exactly the
columns and dtypes of ``cohort.studies()`` (DESIGN.md D6), and a study is in the frame
exactly when the cohort would return it now.

What is watchable: any :class:`~imagingkit.fhir.cohort.Cohort`. Imaging criteria
(modality, body site, dates, description, UIDs) are checked on each changed study;
patient and clinical criteria (gender, age, conditions, observations) are evaluated again
on every re-check, but only an ImagingStudy change triggers one — a new Condition that
brings an existing study into the cohort shows after :meth:`LiveFrame.refresh`. The
Subscription is deliberately *not* filtered by the cohort's criteria: a study updated so
that it leaves the cohort must still be notified to be removed. Deleted ImagingStudies
are not notified by the topic ("created or updated"); :meth:`LiveFrame.refresh` drops them.
"""

from __future__ import annotations

import asyncio
import html
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from imagingkit.errors import FHIRError, ImagingKitError, InvalidInputError
from imagingkit.fhir.flatten import COLUMNS, categorical, check_level
from imagingkit.subscriptions.listener import Change, SubscriptionListener, callback_dispatcher

if TYPE_CHECKING:
    from imagingkit.fhir.cohort import Cohort

__all__ = ["FrameDiff", "LiveFrame"]

log = logging.getLogger("imagingkit.subscriptions")
_ID = "imaging_study_id"
_ORDER = ["patient_ref", "study_started", _ID]
_HTML_ROWS = 20
_MAX_RETRIES = 5  # consecutive failed re-checks of the same studies before giving up


@dataclass(frozen=True)
class FrameDiff:
    """What one update changed, by ImagingStudy id.

    Attributes
    ----------
    added, updated, removed : tuple of str
        Study ids that entered the frame, changed rows, or left it.
    version : int
        Count of updates applied so far (this one included).
    """

    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    version: int = 0

    def __bool__(self) -> bool:
        return bool(self.added or self.updated or self.removed)


def _fix_categories(frame: pd.DataFrame, level: str) -> pd.DataFrame:
    """Rebuild the code columns: concatenation turns differing categoricals into object."""
    for name, kind in COLUMNS[level]:
        if (
            kind == "cat"
            and name in frame
            and not isinstance(frame[name].dtype, pd.CategoricalDtype)
        ):
            values = [None if pd.isna(v) else v for v in frame[name].tolist()]
            frame[name] = categorical(values)
    return frame


def _same_rows(old: pd.DataFrame, new: pd.DataFrame) -> bool:
    if len(old) != len(new):
        return False
    left = old.reset_index(drop=True).astype(object).where(old.notna().values, None)
    right = new.reset_index(drop=True).astype(object).where(new.notna().values, None)
    return bool(left.equals(right))


class LiveFrame:
    """A cohort's DataFrame kept current by a FHIR Subscription.

    Build it with :meth:`imagingkit.bridge.Bridge.watch`.

    Parameters
    ----------
    cohort : Cohort
        The query to keep current.
    level : {"study", "series", "instance"}
        As :meth:`Cohort.studies`.
    matching_series_only : bool
        As :meth:`Cohort.studies`.
    loop : asyncio.AbstractEventLoop or "thread" or None
        Where :meth:`on_change` callbacks run: default the caller's running loop (the
        kernel's, so widgets may be updated), else a dispatcher thread.
    progress : bool
        Progress bar for the initial load.
    debounce : float
        Seconds to collect changes before a re-check (one search for a burst).
    **listener_options
        Passed to :class:`~imagingkit.subscriptions.listener.SubscriptionListener`
        (``heartbeat_period``, ``grace``, ``backoff``, ``timeout``, ``topic`` …).

    Examples
    --------
    >>> live = bridge.watch(bridge.cohort().imaging(modality="CT"))   # doctest: +SKIP
    >>> live.on_change(lambda diff: print(diff.added))                 # doctest: +SKIP
    >>> live.wait_for(lambda df: len(df) > 5, timeout=60)              # doctest: +SKIP
    >>> live.close()                                                   # doctest: +SKIP
    """

    def __init__(
        self,
        cohort: Cohort,
        *,
        level: str = "series",
        matching_series_only: bool = True,
        loop: asyncio.AbstractEventLoop | str | None = None,
        progress: bool = False,
        debounce: float = 0.2,
        **listener_options: Any,
    ) -> None:
        self.cohort = cohort
        self.level = check_level(level)
        self.matching_series_only = matching_series_only
        self.debounce = debounce
        self.version = 0
        self.error: ImagingKitError | None = None
        self.rechecks = 0
        self._cond = threading.Condition()
        self._pending: set[str] = set()
        self._callbacks: list[Callable[[FrameDiff], Any]] = []
        self._closed = False
        self._dispatcher = callback_dispatcher(loop)
        listener_options.setdefault("content", "id-only")
        # subscribe first, then load: nothing that changes during the load is missed
        self.listener = SubscriptionListener(
            cohort.bridge.fhir, "ImagingStudy", loop="thread", fetch=False, **listener_options
        )
        try:
            self.listener.add_tap(self._enqueue)
            self._df = cohort.studies(
                level=self.level, matching_series_only=matching_series_only, progress=progress
            )
        except BaseException:
            self.listener.close()
            self._dispatcher.stop()
            raise
        self._attrs = dict(self._df.attrs)
        self._worker = threading.Thread(target=self._work, name="imagingkit-liveframe", daemon=True)
        self._worker.start()

    # -- state --------------------------------------------------------------------------

    @property
    def df(self) -> pd.DataFrame:
        """The current DataFrame (a copy-on-write snapshot: replacing rows never mutates
        a frame already handed out)."""
        with self._cond:
            return self._df

    @property
    def study_ids(self) -> set[str]:
        """The ImagingStudy ids now in the frame."""
        return set(self.df[_ID].dropna())

    @property
    def stats(self) -> Any:
        """The listener's counters (events, gaps detected, recoveries, reconnects …)."""
        return self.listener.stats

    @property
    def status(self) -> str:
        """The listener's status (``connected``, ``reconnecting``, ``failed``, ``closed``)."""
        return "closed" if self._closed else self.listener.status

    # -- callbacks and waiting ----------------------------------------------------------

    def on_change(self, callback: Callable[[FrameDiff], Any]) -> Callable[[FrameDiff], Any]:
        """Call ``callback(diff)`` after each update that changed rows; a decorator too."""
        with self._cond:
            self._callbacks.append(callback)
        return callback

    def off_change(self, callback: Callable[[FrameDiff], Any]) -> None:
        """Stop calling *callback* (registered with :meth:`on_change`); unknown ones are ignored."""
        with self._cond:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

    def wait_for(
        self,
        condition: Callable[[pd.DataFrame], bool] | int,
        timeout: float = 30.0,
    ) -> pd.DataFrame:
        """Block until *condition* holds on the frame; return the frame.

        Parameters
        ----------
        condition : callable or int
            ``predicate(df) -> bool``, or a number of distinct studies to reach.
        timeout : float
            Seconds.

        Raises
        ------
        FHIRError
            Not met within *timeout*, or the listener failed for good.
        """
        predicate: Callable[[pd.DataFrame], bool]
        if isinstance(condition, int) and not isinstance(condition, bool):
            wanted = condition

            def at_least(df: pd.DataFrame) -> bool:
                return bool(df[_ID].nunique() >= wanted)

            predicate = at_least
        elif callable(condition):
            predicate = condition
        else:
            raise InvalidInputError(f"wait_for takes a predicate or a count, not {condition!r}")
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self._df):
                if self.listener.status == "failed":
                    raise FHIRError("the subscription listener failed; the frame is stale")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FHIRError(f"the live frame did not meet {condition!r} in {timeout} s")
                self._cond.wait(min(left, 0.5))
            return self._df

    # -- updating -----------------------------------------------------------------------

    def _enqueue(self, change: Change) -> None:
        """Listener tap (network thread): note the changed study, wake the worker."""
        if change.focus and change.focus.startswith("ImagingStudy/"):
            with self._cond:
                self._pending.add(change.focus.split("/", 1)[1])
                self._cond.notify_all()

    def _work(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait(1.0)
                if self._closed:
                    return
            time.sleep(self.debounce)  # a burst of changes → one search
            with self._cond:
                ids, self._pending = sorted(self._pending), set()
            try:
                self.apply(ids)
                failures = 0
            except Exception as exc:  # the worker must survive anything a server does
                failures += 1
                self.error = (
                    exc if isinstance(exc, ImagingKitError) else FHIRError(f"re-check: {exc!r}")
                )
                if failures > _MAX_RETRIES:
                    log.error("live frame gave up re-checking %s: %s", ids, exc)
                    failures = 0
                    continue
                log.warning("live frame re-check failed (%s); retrying", exc)
                with self._cond:
                    self._pending.update(ids)  # e.g. the server restarts: try again
                    self._cond.wait(min(5.0, 0.5 * 2**failures))

    def apply(self, ids: Iterable[str]) -> FrameDiff:
        """Re-check the studies *ids* against the cohort and update their rows now."""
        wanted = sorted(set(ids))
        if not wanted:
            return FrameDiff(version=self.version)
        fresh = self.cohort.recheck(
            wanted, self.level, matching_series_only=self.matching_series_only
        )
        self.rechecks += 1
        with self._cond:
            old = self._df
            touched = old[_ID].isin(wanted)
            before = set(old.loc[touched, _ID].dropna())
            after = set(fresh[_ID].dropna())
            updated = tuple(
                sorted(
                    i
                    for i in before & after
                    if not _same_rows(old[old[_ID] == i], fresh[fresh[_ID] == i])
                )
            )
            added = tuple(sorted(after - before))
            removed = tuple(sorted(before - after))
            if not (added or updated or removed):
                return FrameDiff(version=self.version)
            frame = pd.concat([old[~touched], fresh], ignore_index=True)
            frame = _fix_categories(frame, self.level)
            frame = frame.sort_values(_ORDER, kind="stable", na_position="first")
            frame = frame.reset_index(drop=True)
            frame.attrs = dict(self._attrs)
            self.version += 1
            diff = FrameDiff(added, updated, removed, self.version)
            self._df = frame
            callbacks = list(self._callbacks)
            self._cond.notify_all()
        for callback in callbacks:
            self._dispatcher(callback, diff)
        return diff

    def refresh(self) -> FrameDiff:
        """Load the whole cohort again (picks up deletions and patient-side changes)."""
        frame = self.cohort.studies(
            level=self.level, matching_series_only=self.matching_series_only, progress=False
        )
        ids = set(frame[_ID].dropna()) | self.study_ids
        return self.apply(ids)

    # -- closing and display ------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Stop listening and remove the Subscription (see the listener's ``on_close``)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self.listener.close(timeout)
        if self._worker is not threading.current_thread():
            self._worker.join(timeout)
        self._dispatcher.stop(timeout)

    def __enter__(self) -> LiveFrame:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        df = self.df
        return (
            f"<LiveFrame {df[_ID].nunique()} studies, {len(df)} rows, {self.status}, "
            f"Subscription/{self.listener.subscription_id}>"
        )

    def _repr_html_(self) -> str:
        df = self.df
        stats = self.listener.stats
        head = (
            f"<p><b>LiveFrame</b> — {html.escape(str(df[_ID].nunique()))} studies, "
            f"{len(df)} rows · {html.escape(self.status)} · "
            f"Subscription/{html.escape(str(self.listener.subscription_id))} · "
            f"{stats.events} events, {stats.gaps_detected} gaps, "
            f"{stats.reconnects} reconnects</p>"
        )
        if self.error is not None:
            head += f"<p>last error: {html.escape(str(self.error))}</p>"
        return head + df.head(_HTML_ROWS).to_html(escape=True)
