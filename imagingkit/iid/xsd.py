"""XML Schema date and dateTime values as IID uses them (XML Schema 1.1 Part 2 §3.3.7-9).

IID's ``lowerDateTime``/``upperDateTime`` are ``xs:dateTime`` (``2010-01-01T12:00:00Z``)
and ``patientBirthDate`` is ``xs:date`` (``1970-01-31``). Lenient mode also accepts the
DICOM forms seen in the wild (``YYYYMMDD`` DA, PS3.5 §6.2) and a bare date for a
dateTime.

A ``+`` in a time-zone offset must be sent as ``%2B``; form decoding turns a bare ``+``
into a space, so ``…T12:00:00 01:00`` is read as ``…T12:00:00+01:00`` (the only
reading that makes it a dateTime).
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone

from imagingkit.errors import InvalidDateError

__all__ = ["format_xs_date", "format_xs_datetime", "parse_xs_date", "parse_xs_datetime"]

_TZ = r"(?P<tz>Z|[+\- ]\d{2}:\d{2})?"
_DATETIME = re.compile(
    r"^(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})"
    r"T(?P<H>\d{2}):(?P<M>\d{2}):(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?" + _TZ + "$"
)
_DATE = re.compile(r"^(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})" + _TZ + "$")
_DICOM_DA = re.compile(r"^(?P<y>\d{4})(?P<m>\d{2})(?P<d>\d{2})$")


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "…")


def _tzinfo(text: str | None, what: str, value: str) -> timezone | None:
    if not text:
        return None
    if text == "Z":
        return timezone.utc
    sign = -1 if text[0] == "-" else 1
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 14 or minutes > 59 or (hours == 14 and minutes):
        raise InvalidDateError(f"{what} {_shown(value)} has an impossible time-zone offset")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _date(m: re.Match[str], what: str, value: str, form: str) -> date:
    try:
        return date(int(m["y"]), int(m["m"]), int(m["d"]))
    except ValueError as exc:
        raise InvalidDateError(f"{what} {_shown(value)} is not a real date ({form})") from exc


def parse_xs_datetime(value: str, *, what: str, lenient: bool = False) -> datetime:
    """Parse an ``xs:dateTime``; naive if it has no time zone.

    Parameters
    ----------
    value : str
        e.g. ``2010-01-01T12:00:00Z`` or ``2010-01-01T12:00:00.5+02:00``.
    what : str
        Parameter name for the error message.
    lenient : bool
        Also accept ``YYYY-MM-DD`` and ``YYYYMMDD`` (read as midnight).

    Raises
    ------
    InvalidDateError
        Naming the parameter and the value.
    """
    m = _DATETIME.match(value)
    if m:
        day = _date(m, what, value, "xs:dateTime")
        hour, minute, second = int(m["H"]), int(m["M"]), int(m["S"])
        if hour == 24 and minute == 0 and second == 0 and not m["f"]:
            # XML Schema allows 24:00:00 as the end of the day: the next midnight.
            return datetime.combine(day, time(), _tzinfo(m["tz"], what, value)) + timedelta(1)
        if hour > 23 or minute > 59 or second > 59:
            raise InvalidDateError(f"{what} {_shown(value)} has an impossible time of day")
        micro = int((m["f"] or "0").ljust(6, "0")[:6])
        return datetime(
            day.year, day.month, day.day, hour, minute, second, micro,
            tzinfo=_tzinfo(m["tz"], what, value),
        )  # fmt: skip
    if lenient:
        m = _DATE.match(value) or _DICOM_DA.match(value)
        if m:
            tz = m.groupdict().get("tz")
            return datetime.combine(_date(m, what, value, "date"), time(), _tzinfo(tz, what, value))
    raise InvalidDateError(
        f"{what} {_shown(value)} is not an XML Schema dateTime "
        "(expected e.g. 2010-01-01T12:00:00Z; send '+' in an offset as %2B)"
    )


def parse_xs_date(value: str, *, what: str, lenient: bool = False) -> date:
    """Parse an ``xs:date`` (a time-zone suffix is accepted and dropped).

    Lenient mode also accepts DICOM DA ``YYYYMMDD`` and a full ``xs:dateTime``.

    Raises
    ------
    InvalidDateError
        Naming the parameter and the value.
    """
    m = _DATE.match(value)
    if m:
        return _date(m, what, value, "xs:date")
    if lenient:
        m = _DICOM_DA.match(value)
        if m:
            return _date(m, what, value, "DICOM DA")
        if _DATETIME.match(value):
            return parse_xs_datetime(value, what=what).date()
    raise InvalidDateError(
        f"{what} {_shown(value)} is not an XML Schema date (expected e.g. 1970-01-31)"
    )


def format_xs_datetime(value: datetime) -> str:
    """Format *value* as ``xs:dateTime``: UTC as ``Z``, naive without an offset."""
    text = value.isoformat(timespec="microseconds" if value.microsecond else "seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def format_xs_date(value: date) -> str:
    """Format *value* as ``xs:date`` (``YYYY-MM-DD``)."""
    return value.isoformat()
