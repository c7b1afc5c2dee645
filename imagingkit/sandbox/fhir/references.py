"""Resource ids and literal references (FHIR R4 §2.1.0 ``id``, §2.3.0 References).

A literal reference is relative (``Patient/123``), absolute
(``https://example.org/fhir/Patient/123``), versioned (``…/_history/2``), a URN placeholder
used inside Bundles (``urn:uuid:…``), a contained reference (``#x``) or, in transactions
only, a conditional reference (``Patient?identifier=…``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from imagingkit.errors import InvalidInputError

__all__ = ["ID_RE", "TYPE_RE", "Ref", "check_id", "iter_references", "parse_reference"]

#: R4 ``id``: 1–64 of ``A-Z a-z 0-9 - .``
ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
#: A resource type name.
TYPE_RE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")

_REF_RE = re.compile(
    r"^(?:(?P<base>(?:https?)://.+?)/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})"
    r"(?:/_history/(?P<version>[A-Za-z0-9\-.]{1,64}))?$"
)


@dataclass(frozen=True)
class Ref:
    """A parsed literal reference.

    Attributes
    ----------
    type, id : str or None
        The target's type and id, when the reference names them.
    version : str or None
        The version of a versioned reference.
    base : str or None
        The service base of an absolute reference (``None`` when relative).
    text : str
        The reference as written.
    """

    type: str | None
    id: str | None
    version: str | None
    base: str | None
    text: str

    @property
    def is_local(self) -> bool:
        """True for a relative ``Type/id`` reference to this server."""
        return self.base is None and self.id is not None


def parse_reference(text: str) -> Ref:
    """Parse a literal reference; unknown shapes keep only :attr:`Ref.text`."""
    match = _REF_RE.match(text)
    if match is None:
        return Ref(None, None, None, None, text)
    return Ref(match["type"], match["id"], match["version"], match["base"], text)


def check_id(value: object, *, what: str = "id") -> str:
    """Return *value* if it is a valid R4 id, else raise :class:`InvalidInputError`."""
    if not isinstance(value, str) or not ID_RE.match(value):
        raise InvalidInputError(
            f"{what} {value!r} is not a valid FHIR id (1-64 of A-Z a-z 0-9 - .)"
        )
    return value


def iter_references(value: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(element path, Reference dict)`` for every literal reference in *value*.

    Contained resources are skipped (their ``#id`` references are local to the resource).
    """
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("reference"), str):
                yield where, item
            for key, child in item.items():
                if key != "contained" and isinstance(child, (dict, list)):
                    stack.append((child, f"{where}.{key}"))
        else:
            stack.extend((child, where) for child in item if isinstance(child, (dict, list)))
