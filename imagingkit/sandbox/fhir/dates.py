"""FHIR date, dateTime and instant values as time ranges (R4 §2.1.0, search §3.1.1.4.5).

Every date-like value covers an *implicit range* given by its precision: ``2020`` is the
whole year, ``2020-03-01`` the whole day, ``2020-03-01T10:00:00Z`` one second. Searching
compares ranges, never points (R4 search §3.1.1.4.5), so both the indexed values and the
search values are turned into half-open ``[low, high)`` intervals of integer milliseconds
since the Unix epoch, UTC.

Values without a time zone are read as UTC (R4 leaves the zone of a date without time to
the server; a fixed, documented choice keeps results reproducible).
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

from imagingkit.errors import InvalidDateError

__all__ = [
    "MAX_MS",
    "MIN_MS",
    "date_range",
    "format_instant",
    "now_instant",
]

#: Sentinels standing for an open end of a Period (no ``start`` or no ``end``).
MIN_MS = -(2**62)
MAX_MS = 2**62

_DATE_RE = re.compile(
    r"^(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _ms(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _add_months(year: int, month: int, months: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + months
    return index // 12, index % 12 + 1


def date_range(text: str, *, what: str = "date") -> tuple[int, int]:
    """Return the half-open millisecond range ``[low, high)`` that *text* covers.

    Parameters
    ----------
    text : str
        A FHIR ``date``, ``dateTime`` or ``instant`` (R4 §2.1.0), or a search value of a
        date parameter (which may stop at minutes, R4 search §3.1.1.4.5).
    what : str
        Names the value in the error message (e.g. ``"birthdate"``).

    Returns
    -------
    tuple of int
        ``(low, high)`` in milliseconds since 1970-01-01T00:00:00Z; ``high`` is exclusive.

    Raises
    ------
    InvalidDateError
        If *text* is not a valid FHIR date-like value.
    """
    match = _DATE_RE.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise InvalidDateError(f"{what} value {text!r} is not a FHIR date, dateTime or instant")
    parts = match.groupdict()
    try:
        year = int(parts["year"])
        month = int(parts["month"] or 1)
        day = int(parts["day"] or 1)
        if parts["hour"] is not None:
            hour, minute = int(parts["hour"]), int(parts["minute"])
            second = int(parts["second"] or 0)
            fraction = parts["fraction"] or ""
            micro = int((fraction + "000000")[:6]) if fraction else 0
            if hour == 24 and minute == 0 and second == 0 and micro == 0:
                hour, extra = 0, timedelta(days=1)
            else:
                extra = timedelta(0)
            tz = timezone.utc
            if parts["tz"] and parts["tz"] != "Z":
                sign = 1 if parts["tz"][0] == "+" else -1
                hh, mm = int(parts["tz"][1:3]), int(parts["tz"][4:6])
                if hh > 23 or mm > 59:
                    raise ValueError("time zone offset out of range")
                tz = timezone(sign * timedelta(hours=hh, minutes=mm))
            start = datetime(year, month, day, hour, minute, second, micro, tzinfo=tz) + extra
            if parts["second"] is None:
                width = timedelta(minutes=1)
            elif not fraction:
                width = timedelta(seconds=1)
            else:
                width = timedelta(microseconds=10 ** max(0, 6 - len(fraction)))
                if len(fraction) > 6:
                    width = timedelta(microseconds=1)
            low = _ms(start.astimezone(timezone.utc))
            high = _ms((start + width).astimezone(timezone.utc))
            return low, max(high, low + 1)
        first = date(year, month, day)
        if parts["day"] is not None:
            last = first + timedelta(days=1)
        elif parts["month"] is not None:
            y, m = _add_months(year, month, 1)
            last = date(y, m, 1)
        else:
            last = date(year + 1, 1, 1)
    except (ValueError, OverflowError) as exc:
        raise InvalidDateError(f"{what} value {text!r} is not a valid date: {exc}") from exc

    def midnight(d: date) -> int:
        return _ms(datetime(d.year, d.month, d.day, tzinfo=timezone.utc))

    return midnight(first), midnight(last)


def format_instant(ms: int) -> str:
    """Format epoch milliseconds as a FHIR ``instant`` with millisecond precision, UTC."""
    moment = _EPOCH + timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def now_instant() -> tuple[int, str]:
    """Return the current time as ``(epoch milliseconds, FHIR instant)``."""
    ms = _ms(datetime.now(timezone.utc))
    return ms, format_instant(ms)
