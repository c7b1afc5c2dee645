"""What FHIR R4 search says a query must return, computed from the loaded resources.

Used where the reference engine (Medplum's in-memory repository) departs from R4 or lacks
a feature: the expected result is then computed here from the resources both servers got,
following the text of R4 search.html. This is written independently of the embedded
store's code (it imports nothing from it) and only covers what the differential tests ask.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

__all__ = [
    "Dataset",
    "date_matches",
    "date_range",
    "quantity_matches",
    "string_matches",
]

Resource = dict[str, Any]
_DATE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def date_range(text: str) -> tuple[dt.datetime, dt.datetime]:
    """The implicit range ``[low, high)`` of a date/dateTime/instant (R4 search.html#date).

    A value without a zone is read as UTC (the embedded store documents the same choice).
    """
    match = _DATE.match(text)
    if match is None:
        raise ValueError(f"not a FHIR date: {text!r}")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    tz = dt.timezone.utc
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        tz = dt.timezone(sign * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    if month is None:
        low = dt.datetime(int(year), 1, 1, tzinfo=tz)
        return low, low.replace(year=low.year + 1)
    if day is None:
        low = dt.datetime(int(year), int(month), 1, tzinfo=tz)
        high_month = low.month % 12 + 1
        return low, low.replace(year=low.year + (low.month == 12), month=high_month)
    if hour is None:
        low = dt.datetime(int(year), int(month), int(day), tzinfo=tz)
        return low, low + dt.timedelta(days=1)
    low = dt.datetime(int(year), int(month), int(day), int(hour), int(minute), tzinfo=tz)
    if second is None:
        return low, low + dt.timedelta(minutes=1)
    low = low.replace(second=int(second))
    if fraction:
        micro = int((fraction + "000000")[:6])
        step = dt.timedelta(microseconds=10 ** max(0, 6 - len(fraction)))
        return low.replace(microsecond=micro), low.replace(microsecond=micro) + step
    return low, low + dt.timedelta(seconds=1)


def _split_prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in {"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"}:
        return value[:2], value[2:]
    return "eq", value


def date_matches(search: str, target: tuple[dt.datetime, dt.datetime]) -> bool:
    """Whether a target range matches a prefixed date search value (R4 search.html#prefix).

    ``ap`` is not decided here (R4 leaves its width to the server).
    """
    prefix, value = _split_prefix(search)
    s_low, s_high = date_range(value)
    t_low, t_high = target
    contains = s_low <= t_low and t_high <= s_high
    return {
        "eq": contains,
        "ne": not contains,
        "gt": t_high > s_high,
        "lt": t_low < s_low,
        "ge": t_high > s_high or contains,
        "le": t_low < s_low or contains,
        "sa": t_low >= s_high,
        "eb": t_high <= s_low,
    }[prefix]


def quantity_matches(search: str, target: float) -> bool:
    """Whether a value matches a prefixed number (R4 search.html#number, #quantity).

    ``eq``/``ne`` use the implicit precision of the search value (``5.4`` covers
    ``[5.35, 5.45)``); ``ap`` is within 10 % of the search value.
    """
    prefix, text = _split_prefix(search)
    value = Decimal(text)
    exponent = value.as_tuple().exponent
    half = Decimal(5) * Decimal(10) ** (int(exponent) - 1)
    low, high = value - half, value + half
    point = Decimal(str(target))
    inside = low <= point < high
    return {
        "eq": inside,
        "ne": not inside,
        "gt": point > value,
        "lt": point < value,
        "ge": point >= value,
        "le": point <= value,
        "ap": abs(point - value) <= abs(value) / 10,
    }[prefix]


def _normalise(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def string_matches(search: str, value: str, modifier: str = "") -> bool:
    """R4 search.html#string: starts-with after case and accent folding by default,
    ``:contains`` anywhere, ``:exact`` exactly (case- and accent-sensitive)."""
    if modifier == "exact":
        return value == search
    if modifier == "contains":
        return _normalise(search) in _normalise(value)
    return _normalise(value).startswith(_normalise(search))


def _walk(node: Any, path: Sequence[str]) -> Iterator[Any]:
    if isinstance(node, list):
        for item in node:
            yield from _walk(item, path)
    elif not path:
        yield node
    elif isinstance(node, Mapping) and path[0] in node:
        yield from _walk(node[path[0]], path[1:])


class Dataset:
    """The resources loaded into both servers, with the lookups spec oracles need."""

    def __init__(self, resources: Iterable[Resource]) -> None:
        self.resources = list(resources)
        self.by_key = {f"{r['resourceType']}/{r['id']}": r for r in self.resources}

    def of_type(self, resource_type: str) -> list[Resource]:
        """Every resource of *resource_type*."""
        return [r for r in self.resources if r["resourceType"] == resource_type]

    @staticmethod
    def values(resource: Resource, path: str) -> list[Any]:
        """Values at a dotted path (lists are flattened), e.g. ``"name.family"``."""
        return list(_walk(resource, path.split(".")))

    def keys(self, resource_type: str, predicate: Callable[[Resource], bool]) -> set[str]:
        """``Type/id`` of every *resource_type* satisfying *predicate*."""
        return {f"{resource_type}/{r['id']}" for r in self.of_type(resource_type) if predicate(r)}

    def resolve(self, reference: str | None) -> Resource | None:
        """The resource a relative reference ``Type/id`` points at, if loaded."""
        return self.by_key.get(reference or "")

    def referenced(self, resource: Resource, path: str) -> list[Resource]:
        """The loaded resources that the references at *path* point at."""
        found = []
        for ref in self.values(resource, path):
            target = self.resolve(ref.get("reference") if isinstance(ref, Mapping) else None)
            if target is not None:
                found.append(target)
        return found

    def referring(self, resource_type: str, path: str, target: Resource) -> list[Resource]:
        """The *resource_type* resources whose references at *path* point at *target*."""
        key = f"{target['resourceType']}/{target['id']}"
        return [
            r
            for r in self.of_type(resource_type)
            if any(
                isinstance(ref, Mapping) and ref.get("reference") == key
                for ref in self.values(r, path)
            )
        ]
