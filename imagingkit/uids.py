"""DICOM unique identifiers: validation shared by every layer.

PS3.5 §9.1: a UID is at most 64 characters of digits and dots; each component is a
non-empty run of digits without a leading zero (unless it is the single digit ``0``).
Real archives hold UIDs that break these rules, so :func:`validate_uid` has a lenient
mode that only refuses what could be dangerous in a URL or a query.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from imagingkit.errors import InvalidUIDError

__all__ = ["is_valid_uid", "validate_uid", "validate_uid_list"]

_STRICT = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_LENIENT = re.compile(r"^[0-9][0-9.]*$")


def is_valid_uid(value: str, *, lenient: bool = False) -> bool:
    """Tell whether *value* is a well-formed UID.

    Parameters
    ----------
    value : str
        The candidate UID.
    lenient : bool
        Accept over-long UIDs and components with leading zeros (digits and dots only,
        at most 128 characters), as found in real-world archives.

    Returns
    -------
    bool
    """
    if not isinstance(value, str) or not value:
        return False
    if lenient:
        return len(value) <= 128 and bool(_LENIENT.match(value))
    return len(value) <= 64 and bool(_STRICT.match(value))


def validate_uid(value: str, *, lenient: bool = False, what: str = "UID") -> str:
    """Return *value* if it is a well-formed UID, else raise.

    Parameters
    ----------
    value : str
        The candidate UID.
    lenient : bool
        See :func:`is_valid_uid`.
    what : str
        A name for the value used in the error message (e.g. ``"StudyInstanceUID"``).

    Returns
    -------
    str
        *value*, unchanged.

    Raises
    ------
    InvalidUIDError
        If the value is not a UID (PS3.5 §9.1).
    """
    if not is_valid_uid(value, lenient=lenient):
        shown = value if isinstance(value, str) and len(value) <= 80 else f"{str(value)[:80]}…"
        raise InvalidUIDError(
            f"{what} {shown!r} is not a valid DICOM UID "
            "(PS3.5 §9.1: digits and dots, no leading zeros, at most 64 characters)"
        )
    return value


def validate_uid_list(
    values: Iterable[str], *, lenient: bool = False, what: str = "UID"
) -> list[str]:
    """Validate each UID of *values*; see :func:`validate_uid`."""
    return [validate_uid(v, lenient=lenient, what=what) for v in values]
