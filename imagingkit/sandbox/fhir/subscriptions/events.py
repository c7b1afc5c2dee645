"""The durable event log of every Subscription (Subscriptions Backport IG, errors page).

Event numbers are per Subscription, start at 1 and are assigned when the change that
triggers them commits — in the store's own SQLite database, so ``$events`` can replay
them and a restart continues the numbering. They count up whether or not delivery works
("servers SHALL increment eventsSinceSubscriptionStart even when delivery fails").
Each event keeps the focus ``Type/id`` and the version that triggered it, so a replay
returns the resource as it was then. The newest :data:`.EVENTS_RETAINED` events of each
Subscription are kept.

Tables (created by this module, beside the store's own):

- ``subscription_counter (sub_id, last_number)``;
- ``subscription_event (sub_id, number, ts_ms, focus_type, focus_id, focus_version)``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from imagingkit.sandbox.fhir.dates import format_instant, now_instant
from imagingkit.sandbox.fhir.storage import Storage, Stored
from imagingkit.sandbox.fhir.subscriptions.definitions import EVENTS_RETAINED

__all__ = ["Event", "EventLog"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS subscription_counter "
    "(sub_id TEXT PRIMARY KEY, last_number INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS subscription_event (sub_id TEXT NOT NULL, "
    "number INTEGER NOT NULL, ts_ms INTEGER NOT NULL, focus_type TEXT NOT NULL, "
    "focus_id TEXT NOT NULL, focus_version INTEGER NOT NULL, PRIMARY KEY (sub_id, number))",
)


@dataclass(frozen=True)
class Event:
    """One numbered event of one Subscription.

    Attributes
    ----------
    subscription : str
        The Subscription id.
    number : int
        ``eventNumber`` (1, 2, …).
    ts_ms : int
        When the change committed (epoch ms).
    focus_type, focus_id : str
        The resource that changed.
    focus_version : int
        Its version written by that change.
    """

    subscription: str
    number: int
    ts_ms: int
    focus_type: str
    focus_id: str
    focus_version: int

    @property
    def timestamp(self) -> str:
        """``notification-event.timestamp`` (a FHIR instant)."""
        return format_instant(self.ts_ms)

    @property
    def focus(self) -> str:
        """``Type/id`` of the focus."""
        return f"{self.focus_type}/{self.focus_id}"


class EventLog:
    """Numbers, stores and replays events in the store's database.

    Parameters
    ----------
    storage : Storage
        The FHIR store's storage; the log's tables are created in it.
    """

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        with storage.transaction():
            for statement in _SCHEMA:
                storage.conn.execute(statement)

    def count(self, sub_id: str) -> int:
        """``eventsSinceSubscriptionStart``: the last number assigned (0 before any)."""
        with self._lock:
            cached = self._counts.get(sub_id)
        if cached is not None:
            return cached
        rows = self.storage.query(
            "SELECT last_number FROM subscription_counter WHERE sub_id = ?", (sub_id,)
        )
        value = int(rows[0][0]) if rows else 0
        with self._lock:
            self._counts.setdefault(sub_id, value)
            return self._counts[sub_id]

    def assign(self, matches: Sequence[tuple[str, Stored]]) -> list[Event]:
        """Number one event per ``(subscription id, written version)``, durably, in order.

        Runs its own write transaction (call it after the triggering commit).
        """
        if not matches:
            return []
        ts_ms, _ = now_instant()
        events: list[Event] = []
        numbers: dict[str, int] = {}
        conn = self.storage.conn
        with self.storage.transaction():
            for sub_id, stored in matches:
                number = numbers.get(sub_id, self.count(sub_id)) + 1
                numbers[sub_id] = number
                conn.execute(
                    "INSERT INTO subscription_counter (sub_id, last_number) VALUES (?, ?) "
                    "ON CONFLICT (sub_id) DO UPDATE SET last_number = excluded.last_number",
                    (sub_id, number),
                )
                conn.execute(
                    "INSERT INTO subscription_event VALUES (?, ?, ?, ?, ?, ?)",
                    (sub_id, number, ts_ms, stored.type, stored.id, stored.version),
                )
                if number % 1000 == 0:
                    conn.execute(
                        "DELETE FROM subscription_event WHERE sub_id = ? AND number <= ?",
                        (sub_id, number - EVENTS_RETAINED),
                    )
                events.append(Event(sub_id, number, ts_ms, stored.type, stored.id, stored.version))
        with self._lock:  # only once committed
            self._counts.update(numbers)
        return events

    def between(self, sub_id: str, first: int, last: int, limit: int) -> list[Event]:
        """The kept events numbered *first* … *last* (inclusive), at most *limit*."""
        rows = self.storage.query(
            "SELECT number, ts_ms, focus_type, focus_id, focus_version FROM subscription_event "
            "WHERE sub_id = ? AND number BETWEEN ? AND ? ORDER BY number LIMIT ?",
            (sub_id, first, last, limit),
        )
        return [Event(sub_id, int(r[0]), int(r[1]), r[2], r[3], int(r[4])) for r in rows]

    def forget(self, sub_id: str) -> None:
        """Drop the numbering and events of a deleted Subscription."""
        with self.storage.transaction():
            self.storage.conn.execute("DELETE FROM subscription_event WHERE sub_id = ?", (sub_id,))
            self.storage.conn.execute(
                "DELETE FROM subscription_counter WHERE sub_id = ?", (sub_id,)
            )
        with self._lock:
            self._counts.pop(sub_id, None)
