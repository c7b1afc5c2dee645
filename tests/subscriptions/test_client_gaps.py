"""The event-number rules of the Backport IG errors.md, on a fake clock."""

from __future__ import annotations

from imagingkit.subscriptions import EventTracker, Notification, NotificationEvent


def note(kind: str, count: int, *numbers: int) -> Notification:
    events = tuple(NotificationEvent(n, focus=f"ImagingStudy/s{n}") for n in numbers)
    return Notification(type=kind, events_since_start=count, events=events)


def test_in_order_events_are_delivered_once() -> None:
    tracker = EventTracker(grace=1.0)
    assert tracker.observe(note("handshake", 0), 0.0) == []
    assert [e.number for e in tracker.observe(note("event-notification", 1, 1), 0.1)] == [1]
    assert tracker.observe(note("event-notification", 1, 1), 0.2) == []  # duplicate
    assert tracker.duplicates == 1 and tracker.contiguous == 1 and tracker.missing() == []


def test_gap_waits_for_a_straggler_before_recovery() -> None:
    tracker = EventTracker(grace=1.0)
    tracker.observe(note("handshake", 0), 0.0)
    tracker.observe(note("event-notification", 1, 1), 0.0)
    tracker.observe(note("event-notification", 3, 3), 0.0)
    assert tracker.missing() == [2] and tracker.gaps_detected == 1
    assert tracker.due(0.5) == []  # still within the grace period
    assert [e.number for e in tracker.observe(note("event-notification", 2, 2), 0.6)] == [2]
    assert tracker.missing() == [] and tracker.contiguous == 3 and tracker.due(5.0) == []


def test_gap_is_recovered_from_a_replay() -> None:
    tracker = EventTracker(grace=1.0)
    tracker.observe(note("handshake", 0), 0.0)
    tracker.observe(note("event-notification", 4, 4), 0.0)
    assert tracker.next_deadline() == 1.0
    (gap,) = tracker.due(1.0)
    assert (gap.first, gap.last) == (1, 3)
    assert tracker.due(2.0) == []  # being recovered: not handed out twice
    replay = [NotificationEvent(n) for n in (1, 2, 3, 4)]
    assert [e.number for e in tracker.recovered(gap, replay)] == [1, 2, 3]
    assert tracker.contiguous == 4 and tracker.missing() == []


def test_count_in_heartbeat_or_handshake_reveals_missed_events() -> None:
    tracker = EventTracker(grace=0.0)
    tracker.observe(note("handshake", 5), 0.0)  # a fresh listener starts after 5
    assert tracker.contiguous == 5 and tracker.missing() == []
    tracker.observe(note("heartbeat", 7), 1.0)
    assert tracker.missing() == [6, 7]
    (gap,) = tracker.due(1.0)
    tracker.abandon(gap)  # covered by a re-query instead
    assert tracker.contiguous == 7 and tracker.due(9.0) == []
    tracker.observe(note("handshake", 9), 2.0)  # after a reconnect: not a new baseline
    assert tracker.missing() == [8, 9]


def test_unnumbered_events_are_always_delivered() -> None:
    tracker = EventTracker()
    unnumbered = Notification(
        type="event-notification", events=(NotificationEvent(None, focus="ImagingStudy/a"),)
    )
    assert len(tracker.observe(unnumbered, 0.0)) == 1
    assert len(tracker.observe(unnumbered, 0.1)) == 1
    assert tracker.missing() == []


def test_silence_beyond_the_heartbeat_period() -> None:
    tracker = EventTracker(heartbeat_period=2.0, slack=1.5)
    assert not tracker.silent(100.0)  # nothing received yet
    tracker.observe(note("handshake", 0), 0.0)
    assert not tracker.silent(2.9)
    assert tracker.silent(3.1)
    assert EventTracker(heartbeat_period=None).silence_budget() is None
