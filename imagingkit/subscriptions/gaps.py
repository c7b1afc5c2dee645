"""Missed-event detection for one Subscription, sans I/O (Backport IG ``errors.md``).

The server numbers each Subscription's events from 1, assigns a number when the change
commits (even when delivery fails) and never reuses one. The client therefore knows it
missed something when

* an ``eventNumber`` jumps past the next expected one, or
* a handshake, heartbeat or ``$status`` reports an ``eventsSinceSubscriptionStart``
  higher than the last number received;

it waits a short *grace* period for stragglers (notifications may arrive out of order),
then recovers the range with ``$events?eventsSinceNumber=&eventsUntilNumber=`` — or, if
the server cannot, re-queries. Numbers already received are dropped (duplicates). Nothing
arriving for longer than the heartbeat period is an error too: the client asks
``$status`` and reconnects (:meth:`EventTracker.silent`).

Time is passed in (``now``, seconds on any monotonic clock), so the rules are tested
without sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass

from imagingkit.subscriptions.notification import Notification, NotificationEvent

__all__ = ["EventTracker", "Gap"]


@dataclass(frozen=True)
class Gap:
    """Missing event numbers ``first``…``last`` (inclusive) of one Subscription."""

    first: int
    last: int
    since: float  # when it was noticed

    def numbers(self) -> range:
        """The missing numbers."""
        return range(self.first, self.last + 1)


class EventTracker:
    """Dedupe, gap detection and heartbeat silence for one Subscription.

    Parameters
    ----------
    grace : float
        Seconds a gap may stay open before it is recovered (stragglers).
    heartbeat_period : float, optional
        The Subscription's heartbeat period; silence beyond ``heartbeat_period × slack``
        is an error. None: the server sends no heartbeats, silence is normal.
    slack : float
        Tolerance factor on the heartbeat period (network and scheduling delays).
    """

    def __init__(
        self, grace: float = 1.0, heartbeat_period: float | None = None, slack: float = 1.5
    ) -> None:
        self.grace = grace
        self.heartbeat_period = heartbeat_period
        self.slack = slack
        #: every number ≤ this one was received or given up on
        self.contiguous: int | None = None
        self._received: set[int] = set()  # numbers > contiguous received
        self._expected = 0  # highest number known to exist
        self._gaps: dict[int, float] = {}  # missing number → when noticed
        self._recovering: set[int] = set()
        self.last_message: float | None = None
        self.duplicates = 0
        self.gaps_detected = 0

    # -- state --------------------------------------------------------------------------

    @property
    def highest(self) -> int:
        """The highest event number known to exist."""
        return max(self._expected, self.contiguous or 0)

    def missing(self) -> list[int]:
        """Numbers known to exist and not received, ascending."""
        return sorted(self._gaps)

    def _advance(self) -> None:
        assert self.contiguous is not None
        while self.contiguous + 1 in self._received:
            self.contiguous += 1
            self._received.discard(self.contiguous)

    def _expect(self, upto: int, now: float) -> None:
        """Numbers up to *upto* exist: those neither received nor known missing are gaps."""
        if self.contiguous is None:
            return
        if upto > self._expected:
            start = max(self._expected, self.contiguous) + 1
            new = [n for n in range(start, upto + 1) if n not in self._received]
            if new:
                self.gaps_detected += 1
            for number in new:
                self._gaps.setdefault(number, now)
            self._expected = upto

    # -- input --------------------------------------------------------------------------

    def baseline(self, events_since_start: int | None) -> None:
        """Start counting after *events_since_start* (first handshake of a new listener).

        Later calls do nothing: a count reported after a reconnect is checked by
        :meth:`observe` instead, so events missed while away are recovered.
        """
        if self.contiguous is None:
            self.contiguous = events_since_start or 0
            self._expected = self.contiguous

    def observe(self, note: Notification, now: float) -> list[NotificationEvent]:
        """Take one notification; return its events that were not received before.

        Unnumbered events (servers that do not number) are always returned.
        """
        self.last_message = now
        if self.contiguous is None:
            if note.type == "event-notification" and note.numbered:
                first = min((e.number for e in note.events if e.number), default=None)
                self.baseline((first - 1) if first else note.events_since_start)
            else:
                self.baseline(note.events_since_start)
        fresh: list[NotificationEvent] = []
        for event in note.events:
            if event.number is None:
                fresh.append(event)
                continue
            if self._seen(event.number):
                self.duplicates += 1
                continue
            self._take(event.number)
            fresh.append(event)
        numbers = [e.number for e in note.events if e.number]
        top = max([note.events_since_start or 0, *numbers])
        self._expect(top, now)
        return fresh

    def _seen(self, number: int) -> bool:
        assert self.contiguous is not None
        return number <= self.contiguous or number in self._received

    def _take(self, number: int) -> None:
        self._received.add(number)
        self._gaps.pop(number, None)
        self._recovering.discard(number)
        self._advance()

    # -- recovery -----------------------------------------------------------------------

    def due(self, now: float) -> list[Gap]:
        """Gaps open for longer than the grace period and not being recovered yet.

        They are marked as being recovered; report the result with :meth:`recovered`.
        """
        ready = sorted(n for n, t in self._gaps.items() if now - t >= self.grace)
        ready = [n for n in ready if n not in self._recovering]
        gaps: list[Gap] = []
        for number in ready:
            if gaps and gaps[-1].last == number - 1:
                last = gaps[-1]
                gaps[-1] = Gap(last.first, number, min(last.since, self._gaps[number]))
            else:
                gaps.append(Gap(number, number, self._gaps[number]))
        for gap in gaps:
            self._recovering.update(gap.numbers())
        return gaps

    def next_deadline(self) -> float | None:
        """When the oldest unrecovered gap becomes due (None: no gap waits)."""
        waiting = [t for n, t in self._gaps.items() if n not in self._recovering]
        return min(waiting) + self.grace if waiting else None

    def recovered(self, gap: Gap, events: list[NotificationEvent]) -> list[NotificationEvent]:
        """Take the events ``$events`` (or any replay) returned for *gap*.

        Returns the ones not received before. Numbers of the gap that the replay did not
        bring are given up on (the caller re-queries to cover them), so they are not
        asked for again.
        """
        fresh = []
        for event in events:
            if event.number is None or self._seen(event.number):
                if event.number is not None:
                    self.duplicates += 1
                continue
            self._take(event.number)
            fresh.append(event)
        for number in gap.numbers():
            if not self._seen(number):
                self._take(number)
        return fresh

    def abandon(self, gap: Gap) -> None:
        """Give up on *gap* (it was covered by a re-query)."""
        self.recovered(gap, [])

    # -- heartbeat ----------------------------------------------------------------------

    def silence_budget(self) -> float | None:
        """Seconds of silence tolerated (None: no heartbeat expected)."""
        if not self.heartbeat_period:
            return None
        return self.heartbeat_period * self.slack

    def silent(self, now: float) -> bool:
        """Whether nothing arrived for longer than the heartbeat period allows."""
        budget = self.silence_budget()
        if budget is None or self.last_message is None:
            return False
        return now - self.last_message > budget
