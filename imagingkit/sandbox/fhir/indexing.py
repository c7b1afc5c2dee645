"""Search index rows extracted from a resource at write time (FHIR R4 search §3.1.1.4).

For every parameter of the resource's type, the parameter's expression selects elements
and each element becomes zero or more rows of the table for the parameter's type:

============  ==============================================================
table         row (after ``rid, type``)
============  ==============================================================
``string``    param, grp, normalised text, exact text
``token``     param, grp, system, code, normalised display/text
``date``      param, grp, low ms, high ms (half-open, see :mod:`.dates`)
``number``    param, grp, low, high (equal for a point)
``quantity``  param, grp, low, high, system, code, unit
``reference`` param, grp, target type, target id, url, local (1 = ``Type/id``)
``uri``       param, grp, uri
============  ==============================================================

``grp`` ties the parts of a composite parameter to the same element (the Observation, or
one ``component``); it is 0 for ordinary rows. Composite parts are stored under
``"<name>#<i>"``. A reference given only by ``identifier`` is indexed as a token under
``"<name>:identifier"`` (the R4 ``:identifier`` modifier).

Datatype rules follow R4 search §3.1.1.4.x: HumanName and Address match on any of their
parts; tokens on Coding (system|code), CodeableConcept (each coding; ``text`` for
``:text``), Identifier (system|value; ``type.text`` for ``:text``), ContactPoint (value),
and on code, boolean, id, uri and string primitives (code only).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable
from typing import Any

from imagingkit.errors import InvalidDateError
from imagingkit.sandbox.fhir.dates import MAX_MS, MIN_MS, date_range
from imagingkit.sandbox.fhir.paths import Node, reference_type
from imagingkit.sandbox.fhir.references import parse_reference
from imagingkit.sandbox.fhir.searchparams import COMMON_PARAMETERS, SEARCH_PARAMETERS

__all__ = ["INDEX_TABLES", "IndexRows", "extract_rows", "normalise"]

#: index table → value columns (each table also has ``rid, type, param, grp``).
INDEX_TABLES: dict[str, tuple[str, ...]] = {
    "string": ("norm", "exact"),
    "token": ("system", "code", "text"),
    "date": ("low", "high"),
    "number": ("low", "high"),
    "quantity": ("low", "high", "system", "code", "unit"),
    "reference": ("target_type", "target_id", "url", "local"),
    "uri": ("uri",),
}

IndexRows = dict[str, list[tuple[Any, ...]]]

_STRING_PARTS = {
    "HumanName": ("text", "family", "given", "prefix", "suffix"),
    "Address": ("text", "line", "city", "district", "state", "postalCode", "country"),
}


def normalise(text: str) -> str:
    """Fold case and accents for string matching (R4 search §3.1.1.4.7: "case- and
    accent-insensitive")."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(stripped.casefold().split())


def _strings(node: Node) -> Iterable[str]:
    value = node.value
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        keys = (
            _STRING_PARTS["Address"]
            if "line" in value or "city" in value or (node.field == "address")
            else _STRING_PARTS["HumanName"]
        )
        for key in keys:
            part = value.get(key)
            for item in part if isinstance(part, list) else [part]:
                if isinstance(item, str):
                    yield item


def _tokens(node: Node) -> Iterable[tuple[str | None, str | None, str | None]]:
    value = node.value
    if isinstance(value, bool):
        yield None, "true" if value else "false", None
    elif isinstance(value, (str, int, float)):
        yield None, str(value), None
    elif isinstance(value, dict):
        if node.field in ("identifier", "masterIdentifier") or node.type == "Identifier":
            type_text = (value.get("type") or {}).get("text")
            yield value.get("system"), value.get("value"), type_text
        elif node.field == "telecom" or node.type == "ContactPoint":
            yield None, value.get("value"), None
        elif "coding" in value or ("text" in value and "code" not in value):
            codings = value.get("coding") or []
            for coding in codings:
                if isinstance(coding, dict):
                    yield coding.get("system"), coding.get("code"), coding.get("display")
            if value.get("text"):
                yield None, None, value["text"]
        elif "code" in value or "system" in value:
            yield value.get("system"), value.get("code"), value.get("display")


def _date_ranges(node: Node) -> Iterable[tuple[int, int]]:
    value = node.value
    if isinstance(value, str):
        yield date_range(value)
    elif isinstance(value, dict):
        if "start" in value or "end" in value:
            low = date_range(value["start"])[0] if value.get("start") else MIN_MS
            high = date_range(value["end"])[1] if value.get("end") else MAX_MS
            yield low, high
        elif "event" in value or "repeat" in value:  # Timing
            for event in value.get("event") or []:
                yield date_range(event)
            bounds = (value.get("repeat") or {}).get("boundsPeriod")
            if isinstance(bounds, dict):
                yield from _date_ranges(Node(bounds, "Period", "boundsPeriod"))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _quantities(
    node: Node,
) -> Iterable[tuple[float, float, str | None, str | None, str | None]]:
    value = node.value
    if not isinstance(value, dict):
        return
    if "low" in value or "high" in value:  # Range
        low, high = value.get("low") or {}, value.get("high") or {}
        lo, hi = _number(low.get("value")), _number(high.get("value"))
        unit_from = low if lo is not None else high
        yield (
            lo if lo is not None else float("-inf"),
            hi if hi is not None else float("inf"),
            unit_from.get("system"),
            unit_from.get("code"),
            unit_from.get("unit"),
        )
        return
    number = _number(value.get("value"))
    if number is not None:
        yield number, number, value.get("system"), value.get("code"), value.get("unit")


def _numbers(node: Node) -> Iterable[tuple[float, float]]:
    number = _number(node.value)
    if number is not None:
        yield number, number
    elif isinstance(node.value, dict):
        for low, high, *_ in _quantities(node):
            yield low, high


def _references(node: Node) -> Iterable[tuple[str | None, str | None, str | None, int]]:
    value = node.value
    if not isinstance(value, dict):
        return
    text = value.get("reference")
    if not isinstance(text, str) or text.startswith("#"):
        return
    ref = parse_reference(text)
    target_type = ref.type or reference_type(value)
    if ref.is_local:
        yield target_type, ref.id, None, 1
    else:
        url = text.split("/_history/")[0] if ref.base else text
        yield target_type, ref.id, url, 0


def _deceased(resource: dict[str, Any]) -> str:
    """R4 Patient ``deceased``: ``Patient.deceased.exists() and Patient.deceased != false``."""
    if "deceasedDateTime" in resource:
        return "true"
    return "true" if resource.get("deceasedBoolean") is True else "false"


def _string_rows(node: Node) -> Iterable[tuple[str, str]]:
    for text in _strings(node):
        yield normalise(text), text


def _token_rows(node: Node) -> Iterable[tuple[str | None, str | None, str | None]]:
    for system, code, display in _tokens(node):
        if code is not None or display is not None:
            yield system, code, normalise(display) if display else None


def _uri_rows(node: Node) -> Iterable[tuple[str]]:
    if isinstance(node.value, str):
        yield (node.value,)


_ROW_MAKERS: dict[str, Callable[[Node], Iterable[tuple[Any, ...]]]] = {
    "string": _string_rows,
    "token": _token_rows,
    "date": _date_ranges,
    "number": _numbers,
    "quantity": _quantities,
    "reference": _references,
    "uri": _uri_rows,
}


def _rows_for(type_: str, nodes: list[Node], grp: int, name: str, rows: IndexRows) -> None:
    make = _ROW_MAKERS[type_]
    for node in nodes:
        rows[type_].extend((name, grp, *values) for values in make(node))
        if type_ == "reference" and isinstance(node.value, dict):
            identifier = node.value.get("identifier")
            if isinstance(identifier, dict):
                logical = Node(identifier, "Identifier", "identifier")
                rows["token"].extend(
                    (f"{name}:identifier", grp, *values)
                    for values in _token_rows(logical)
                    if values[1] is not None
                )


def extract_rows(resource: dict[str, Any]) -> IndexRows:
    """Return the index rows of *resource* for every supported parameter of its type.

    Parameters
    ----------
    resource : dict
        A resource whose ``resourceType`` is one of :data:`.searchparams.RESOURCE_TYPES`.

    Returns
    -------
    dict
        ``{table: [row, …]}`` for every table of :data:`INDEX_TABLES`.

    Raises
    ------
    InvalidDateError
        If a date-typed element holds a malformed date (the resource is then rejected).
    """
    rtype = resource["resourceType"]
    rows: IndexRows = {table: [] for table in INDEX_TABLES}
    params = [*SEARCH_PARAMETERS[rtype].values(), *COMMON_PARAMETERS.values()]
    for param in params:
        if param.name == "_id":
            continue
        if param.name == "deceased" and rtype == "Patient":
            rows["token"].append(("deceased", 0, None, _deceased(resource), None))
            continue
        try:
            nodes = param.compiled.evaluate(resource, rtype)
            if param.type != "composite":
                _rows_for(param.type, nodes, 0, param.name, rows)
                continue
            for grp, root in enumerate(nodes, start=1):
                for i, component in enumerate(param.components):
                    parts = component.expression.evaluate(root.value, root.type)
                    _rows_for(component.type, parts, grp, f"{param.name}#{i}", rows)
        except InvalidDateError as exc:
            raise InvalidDateError(
                f"{rtype}: element for search parameter {param.name!r} holds an invalid "
                f"date ({exc.message})"
            ) from exc
    return rows
