"""FHIR R4 search: parse parameters, compile them to parameterised SQL (R4 search §3.1.1).

Semantics, by parameter type (R4 search §3.1.1.4):

- **string**: case- and accent-insensitive starts-with by default; ``:exact`` (whole
  string, case and accents significant); ``:contains`` (anywhere, insensitive).
- **token**: codes are case-sensitive; ``code``, ``system|code``, ``|code`` (no system),
  ``system|`` (any code of the system); ``:not`` (resources with no matching code,
  including those without a value); ``:text`` (starts-with on Coding.display,
  CodeableConcept.text, Identifier.type.text).
- **date**: prefixes ``eq ne gt lt ge le sa eb ap`` compare the *range* of the search value
  with the range of the target value (§3.1.1.4.5): ``eq`` the search range contains the
  target; ``gt``/``lt`` the range above/below the search value overlaps the target;
  ``ge``/``le`` as ``gt``/``lt`` or ``eq``; ``sa``/``eb`` the target starts after / ends
  before the search range; ``ap`` the target overlaps the search range widened by 10% of
  its distance from now.
- **number**, **quantity**: ``eq``/``ne``/``ap`` use the precision of the written value
  (``100`` is ``[99.5, 100.5)``; ``ap`` ±10%), the others compare with the exact value;
  quantity ``value|system|code`` and ``value||code`` (code or unit). No unit conversion.
- **reference**: ``id``, ``Type/id``, an absolute URL (this server's own base URL is read
  as relative), ``:Type`` modifier, ``:identifier`` modifier; chaining
  (``patient.gender=female``, ``subject:Patient.birthdate=lt1960``, several levels) and
  reverse chaining ``_has:Type:param:…``.
- **uri**: exact; ``:below`` / ``:above`` prefix matches.
- **composite** (Observation ``code-value-quantity`` …): ``a$b``, both parts matching the
  same element.
- ``:missing=true|false`` on every type; ``_id``; ``_lastUpdated`` (date).

System search (R4 search §3.1.1.3, ``GET [base]?_type=A,B&…``): "If the _type parameter
is included, all other search parameters SHALL be common to all provided types. If _type
is not included, all parameters SHALL be common to all resource types." Here a parameter
is common when every searched type defines it with the same code and parameter type (the
Resource-level ``_id``, ``_lastUpdated``, ``_tag``, ``_profile``, ``_security``,
``_source``, or e.g. ``patient`` across Condition and ImagingStudy); each type applies its
own definition. A parameter that some searched types define and others do not is a 400
naming it and the types lacking it (never silently dropped); one that no type defines is
treated as unknown. Without ``_type`` every served type is searched. :func:`parse_system_search`.

A comma separates alternatives (OR); a repeated parameter adds a condition (AND);
``\\,`` ``\\|`` ``\\$`` ``\\\\`` escape (§3.1.1.5.7). An empty value is ignored.

Unknown parameters are ignored (and reported, so they can be left out of the ``self``
link) unless ``Prefer: handling=strict`` asked for a 400. A malformed value is always a
400 naming the parameter and the value (:class:`~imagingkit.errors.InvalidQueryError`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from imagingkit.errors import InvalidDateError, InvalidQueryError
from imagingkit.sandbox.fhir.dates import date_range
from imagingkit.sandbox.fhir.indexing import normalise
from imagingkit.sandbox.fhir.references import ID_RE, parse_reference
from imagingkit.sandbox.fhir.searchparams import (
    RESOURCE_TYPES,
    SEARCH_PARAMETERS,
    SearchParam,
    search_param,
)

__all__ = [
    "MAX_COUNT",
    "MODIFIERS",
    "Criterion",
    "Include",
    "SearchRequest",
    "SortKey",
    "compile_search",
    "parse_search",
    "parse_system_search",
]

#: Largest page size; a larger ``_count`` is capped with a warning in the Bundle.
MAX_COUNT = 1000
#: Page size when no ``_count`` is given.
DEFAULT_COUNT = 20

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_RESULT_PARAMS = {
    "_count",
    "_offset",
    "_sort",
    "_total",
    "_summary",
    "_elements",
    "_include",
    "_revinclude",
    "_format",
    "_pretty",
    "_snapshot",
    "_contained",
    "_containedType",
}
#: Parameters that never appear in paging links (they do not change the result).
_NOT_IN_LINKS = {"_format", "_pretty", "_snapshot", "_offset"}
MODIFIERS = {
    "string": {"exact", "contains", "missing"},
    "token": {"not", "text", "missing"},
    "date": {"missing"},
    "number": {"missing"},
    "quantity": {"missing"},
    "reference": {"missing", "identifier"},
    "uri": {"missing", "below", "above"},
    "composite": {"missing"},
}
_TOP = "\U0010ffff"


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in ",|$\\":
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _split_on(text: str, separator: str) -> list[str]:
    """Split an escaped value on unescaped *separator*; the parts stay escaped."""
    parts, current, i = [], [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if text[i] == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(text[i])
        i += 1
    parts.append("".join(current))
    return parts


@dataclass
class Criterion:
    """One AND-ed condition of a search.

    Attributes
    ----------
    name : str
        The parameter as written (``subject:Patient.birthdate``), for messages.
    resource_type : str
        The type the condition applies to.
    param : SearchParam or None
        The parameter (None for ``_has``).
    modifier : str or None
        ``exact``, ``not``, ``missing``, a type name for ``:Type`` …
    values : list of str
        The OR alternatives, still escaped for ``|`` and ``$``.
    chain : dict of str to Criterion, optional
        For a chained reference: the condition on the referenced resource, per type the
        reference may lead to.
    has : tuple or None
        For ``_has``: ``(source type, reference parameter, inner Criterion)``.
    """

    name: str
    resource_type: str
    param: SearchParam | None
    modifier: str | None = None
    values: list[str] = field(default_factory=list)
    chain: dict[str, Criterion] | None = None
    has: tuple[str, SearchParam, Criterion] | None = None


@dataclass(frozen=True)
class SortKey:
    """One ``_sort`` key."""

    param: SearchParam
    descending: bool


@dataclass(frozen=True)
class Include:
    """One ``_include`` / ``_revinclude`` (R4 search §3.1.1.5.4)."""

    source: str
    param: SearchParam | None  # None means ``*`` (every reference parameter)
    target: str | None
    iterate: bool
    reverse: bool


@dataclass
class SearchRequest:
    """A parsed search: conditions plus result parameters."""

    resource_type: str
    criteria: list[Criterion] = field(default_factory=list)
    #: the types of a system search (R4 search §3.1.1.3); empty for a type-level search
    types: tuple[str, ...] = ()
    sort: list[SortKey] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    count_capped_from: int | None = None
    offset: int = 0
    total: str = "accurate"
    summary: str | None = None
    elements: list[str] | None = None
    includes: list[Include] = field(default_factory=list)
    snapshot: str | None = None
    #: the parameters that shaped the result, in request order (for links)
    used: list[tuple[str, str]] = field(default_factory=list)
    #: unknown or unsupported parameters that were ignored
    ignored: list[str] = field(default_factory=list)


def _bad(name: str, value: str, why: str) -> InvalidQueryError:
    return InvalidQueryError(f"search parameter {name}={value!r}: {why}")


def _parse_int(name: str, value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise _bad(name, value, "not an integer") from None
    if number < minimum:
        raise _bad(name, value, f"must be at least {minimum}")
    return number


class _Unknown(Exception):
    """A parameter this server does not know (ignored unless strict)."""


def _parse_criterion(resource_type: str, name: str, values: list[str], depth: int = 0) -> Criterion:
    if depth > 4:
        raise InvalidQueryError(f"search parameter {name!r}: chain is longer than 4 levels")
    if name.startswith("_has:"):
        parts = name.split(":", 3)
        if len(parts) != 4 or not all(parts[1:]):
            raise InvalidQueryError(
                f"search parameter {name!r}: _has needs _has:Type:reference:parameter"
            )
        _, source, ref_name, rest = parts
        if source not in RESOURCE_TYPES:
            raise _Unknown(name)
        ref_param = SEARCH_PARAMETERS[source].get(ref_name)
        if ref_param is None or ref_param.type != "reference":
            raise _Unknown(name)
        if not ref_param.refers_to(resource_type):
            raise InvalidQueryError(
                f"search parameter {name!r}: {source}.{ref_name} cannot refer to {resource_type}"
            )
        inner = _parse_criterion(source, rest, values, depth + 1)
        return Criterion(name, resource_type, None, values=values, has=(source, ref_param, inner))
    head, dot, rest = name.partition(".")
    code, _, modifier = head.partition(":")
    param = search_param(resource_type, code)
    if param is None:
        raise _Unknown(name)
    if dot:
        if param.type != "reference":
            raise InvalidQueryError(
                f"search parameter {name!r}: only reference parameters can be chained"
            )
        if modifier and not param.refers_to(modifier):
            raise InvalidQueryError(
                f"search parameter {name!r}: {resource_type}.{code} cannot refer to {modifier!r}"
            )
        if modifier and modifier not in RESOURCE_TYPES:
            raise _Unknown(name)  # a valid target type that this server does not store
        candidates = (modifier,) if modifier else param.served_targets()
        next_code = rest.partition(".")[0].partition(":")[0]
        usable = tuple(t for t in candidates if search_param(t, next_code) is not None)
        if not usable:
            raise _Unknown(name)
        chains = {t: _parse_criterion(t, rest, values, depth + 1) for t in usable}
        return Criterion(name, resource_type, param, values=values, chain=chains)
    if modifier:
        allowed = MODIFIERS[param.type]
        type_modifier = (
            param.type == "reference" and modifier[:1].isupper() and param.refers_to(modifier)
        )
        if modifier not in allowed and not type_modifier:
            raise InvalidQueryError(
                f"search parameter {name!r}: modifier :{modifier} is not supported for "
                f"{param.type} parameters"
            )
    return Criterion(name, resource_type, param, modifier=modifier or None, values=values)


def _parse_include(sources: tuple[str, ...], name: str, value: str) -> Include:
    reverse = name.startswith("_revinclude")
    _, _, qualifier = name.partition(":")
    if qualifier not in ("", "iterate", "recurse"):
        raise _bad(name, value, f"unknown modifier :{qualifier}")
    iterate = qualifier in ("iterate", "recurse")
    parts = value.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise _bad(name, value, "expected SourceType:parameter[:TargetType]")
    source, code = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if source not in RESOURCE_TYPES:
        raise _Unknown(f"{name}={value}")
    if code == "*":
        return Include(source, None, target, iterate, reverse)
    param = SEARCH_PARAMETERS[source].get(code)
    if param is None or param.type != "reference":
        raise _Unknown(f"{name}={value}")
    if target is not None and not param.refers_to(target):
        raise _bad(name, value, f"{source}.{code} cannot refer to {target}")
    if not reverse and not iterate and source not in sources:
        raise _bad(name, value, f"_include source must be {' or '.join(sources)} (or use :iterate)")
    return Include(source, param, target, iterate, reverse)


def _searched(request: SearchRequest) -> tuple[str, ...]:
    return request.types or (request.resource_type,)


def _shared_param(types: tuple[str, ...], code: str) -> SearchParam | None:
    """The parameter *code* if every type in *types* defines it with one parameter type."""
    found = [search_param(t, code) for t in types]
    first = found[0]
    if first is None or any(p is None or p.type != first.type for p in found):
        return None
    return first


def _parse_sort(value: str, strict: bool, request: SearchRequest) -> str:
    """Add the ``_sort`` keys to *request*; return the accepted keys (for links)."""
    accepted = []
    types = _searched(request)
    for key in value.split(","):
        key = key.strip()
        if not key:
            continue
        descending = key.startswith("-")
        code = key[1:] if descending else key
        param = _shared_param(types, code)
        if param is None or param.type == "composite":
            if strict:
                raise _bad("_sort", value, f"cannot sort {', '.join(types)} by {code!r}")
            request.ignored.append(f"_sort={code}")
            continue
        request.sort.append(SortKey(param, descending))
        accepted.append(key)
    return ",".join(accepted)


def parse_search(
    resource_type: str, params: list[tuple[str, str]], *, strict: bool = False
) -> SearchRequest:
    """Parse search parameters (query string or ``_search`` form body).

    Parameters
    ----------
    resource_type : str
        The type searched.
    params : list of (str, str)
        Decoded parameter names and values, in request order.
    strict : bool
        ``Prefer: handling=strict``: refuse unknown parameters instead of ignoring them.

    Returns
    -------
    SearchRequest

    Raises
    ------
    InvalidQueryError
        A malformed value, an unsupported modifier, or (strict) an unknown parameter.
    """
    request = SearchRequest(resource_type)
    for name, value in params:
        if name in _RESULT_PARAMS or name.startswith(("_include", "_revinclude")):
            _parse_result_param(request, name, value, strict)
            continue
        if value == "":
            request.ignored.append(name)
            continue
        try:
            criterion = _parse_criterion(resource_type, name, _split_on(value, ","))
        except _Unknown:
            if strict:
                raise InvalidQueryError(
                    f"search parameter {name!r} is not supported for {resource_type} "
                    "(Prefer: handling=strict)"
                ) from None
            request.ignored.append(name)
            continue
        _validate_values(criterion, value)
        request.criteria.append(criterion)
        request.used.append((name, value))
    return request


def parse_system_search(params: list[tuple[str, str]], *, strict: bool = False) -> SearchRequest:
    """Parse a system search ``GET [base]?…`` (R4 search §3.1.1.3), ``_type`` included.

    Parameters
    ----------
    params : list of (str, str)
        Decoded parameters in request order; ``_type`` lists the types to search (all
        served types without it; repeated ``_type`` parameters intersect).
    strict : bool
        ``Prefer: handling=strict``: refuse parameters that no searched type defines.

    Returns
    -------
    SearchRequest
        With ``resource_type == ""`` and :attr:`SearchRequest.types` set; its criteria
        hold one :class:`Criterion` per searched type for each parameter.

    Raises
    ------
    InvalidQueryError
        A ``_type`` naming a type not served here, a parameter that only some of the
        searched types define, or anything :func:`parse_search` refuses.
    """
    listed: list[str] | None = None
    for name, value in params:
        if name != "_type":
            continue
        named = [t.strip() for t in value.split(",") if t.strip()]
        unknown = [t for t in named if t not in RESOURCE_TYPES]
        if unknown or not named:
            raise _bad(
                name,
                value,
                f"{', '.join(unknown) or 'no type'} is not a resource type served here "
                f"(served: {', '.join(RESOURCE_TYPES)})",
            )
        listed = named if listed is None else [t for t in listed if t in named]
    types = tuple(dict.fromkeys(listed)) if listed is not None else RESOURCE_TYPES
    # repeated _type parameters intersect (AND); disjoint lists search a type named "",
    # which holds nothing
    request = SearchRequest("", types=types or ("",))
    types = request.types
    if listed is not None:
        request.used.append(("_type", ",".join(types)))
    for name, value in params:
        if name == "_type":
            continue
        if name in _RESULT_PARAMS or name.startswith(("_include", "_revinclude")):
            _parse_result_param(request, name, value, strict)
            continue
        if value == "":
            request.ignored.append(name)
            continue
        criteria, lacking = [], []
        for type_ in types:
            try:
                criteria.append(_parse_criterion(type_, name, _split_on(value, ",")))
            except _Unknown:
                lacking.append(type_)
        if not criteria:
            if strict:
                raise InvalidQueryError(
                    f"search parameter {name!r} is not supported for any of "
                    f"{', '.join(types)} (Prefer: handling=strict)"
                )
            request.ignored.append(name)
            continue
        if lacking:
            raise InvalidQueryError(
                f"search parameter {name!r} is not common to the searched types: "
                f"{', '.join(lacking)} do not define it (R4 search §3.1.1.3: parameters of a "
                "system search SHALL be common to all searched types)"
            )
        for criterion in criteria:
            _validate_values(criterion, value)
        request.criteria.extend(criteria)
        request.used.append((name, value))
    return request


def _parse_result_param(request: SearchRequest, name: str, value: str, strict: bool) -> None:
    keep = True
    if name == "_count":
        count = _parse_int(name, value, 0)
        if count > MAX_COUNT:
            request.count_capped_from = count
            count = MAX_COUNT
            value = str(MAX_COUNT)
        request.count = count
    elif name == "_offset":
        request.offset = _parse_int(name, value, 0)
    elif name == "_snapshot":
        request.snapshot = value or None
    elif name == "_total":
        if value not in ("none", "estimate", "accurate"):
            raise _bad(name, value, "expected none, estimate or accurate")
        request.total = value
    elif name == "_summary":
        if value not in ("true", "text", "data", "count", "false"):
            raise _bad(name, value, "expected true, text, data, count or false")
        request.summary = value
    elif name == "_elements":
        request.elements = [e.strip() for e in value.split(",") if e.strip()]
    elif name == "_sort":
        value = _parse_sort(value, strict, request)
        keep = bool(value)
    elif name.startswith(("_include", "_revinclude")):
        accepted = []
        for part in value.split(","):
            try:
                request.includes.append(_parse_include(_searched(request), name, part))
                accepted.append(part)
            except _Unknown:
                if strict:
                    raise _bad(name, part, "unknown source type or reference parameter") from None
                request.ignored.append(f"{name}={part}")
        value = ",".join(accepted)
        keep = bool(accepted)
    elif name in ("_contained", "_containedType"):
        if strict:
            raise _bad(name, value, "not supported by this server")
        request.ignored.append(name)
        keep = False
    if keep and name not in _NOT_IN_LINKS:
        request.used.append((name, value))


# -- value checks (so that a malformed value is a 400 before any SQL runs) ---------------


def _prefixed(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in PREFIXES and (value[2].isdigit() or value[2] in "-+."):
        return value[:2], value[2:]
    return "eq", value


def _decimal(name: str, raw: str, text: str) -> Decimal:
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise _bad(name, raw, f"{text!r} is not a number") from None
    if not number.is_finite():
        raise _bad(name, raw, f"{text!r} is not a finite number")
    return number


def _validate_values(criterion: Criterion, raw: str) -> None:
    if criterion.has is not None:
        _validate_values(criterion.has[2], raw)
        return
    if criterion.chain is not None:
        for chained in criterion.chain.values():
            _validate_values(chained, raw)
        return
    param = criterion.param
    assert param is not None
    if criterion.modifier == "missing":
        for value in criterion.values:
            if value not in ("true", "false"):
                raise _bad(criterion.name, raw, "the :missing modifier takes true or false")
        return
    if param.type == "composite":
        _composite_sql(criterion, "m", _Sql())  # raises on a malformed part
        return
    for value in criterion.values:
        _value_condition(param.type, criterion.name, raw, value, criterion.modifier, None, "x")


# -- SQL compilation ---------------------------------------------------------------------


class _Sql:
    """Collects named SQL arguments (``:p1``, ``:p2`` …) and fresh table aliases.

    Named placeholders make the text independent of the order in which its pieces are
    built; values are always bound, never spliced into the SQL.
    """

    def __init__(self) -> None:
        self.args: dict[str, Any] = {}
        self._n = 0

    def alias(self, stem: str) -> str:
        self._n += 1
        return f"{stem}{self._n}"

    def arg(self, value: Any) -> str:
        name = f"p{len(self.args) + 1}"
        self.args[name] = value
        return f":{name}"


def _number_condition(prefix: str, number: Decimal, sql: _Sql | None, x: str) -> str:
    exponent = number.as_tuple().exponent
    half = Decimal(5).scaleb((exponent if isinstance(exponent, int) else 0) - 1)
    # decimal arithmetic, so that the bounds are exact before they become floats
    value, lo, hi = float(number), float(number - half), float(number + half)
    margin = abs(number) / 10

    def a(v: Any) -> str:
        return sql.arg(v) if sql else "?"

    if prefix == "eq":
        return f"({x}.low >= {a(lo)} AND {x}.high < {a(hi)})"
    if prefix == "ne":
        return f"NOT ({x}.low >= {a(lo)} AND {x}.high < {a(hi)})"
    if prefix == "ap":
        # R4: "the recommended value for the approximation is 10% of the stated value"
        upper, lower = float(number + margin), float(number - margin)
        return f"({x}.low <= {a(upper)} AND {x}.high >= {a(lower)})"
    op = {"gt": ">", "ge": ">=", "sa": ">", "lt": "<", "le": "<=", "eb": "<"}[prefix]
    column = "low" if prefix in ("lt", "le", "sa") else "high"
    return f"{x}.{column} {op} {a(value)}"


def _date_condition(prefix: str, low: int, high: int, sql: _Sql | None, x: str) -> str:
    def a(v: Any) -> str:
        return sql.arg(v) if sql else "?"

    if prefix in ("eq", "ne"):
        contained = f"({x}.low >= {a(low)} AND {x}.high <= {a(high)})"
        return contained if prefix == "eq" else f"NOT {contained}"
    if prefix == "gt":
        return f"{x}.high > {a(high)}"
    if prefix == "lt":
        return f"{x}.low < {a(low)}"
    if prefix == "ge":
        return f"({x}.high > {a(high)} OR ({x}.low >= {a(low)} AND {x}.high <= {a(high)}))"
    if prefix == "le":
        return f"({x}.low < {a(low)} OR ({x}.low >= {a(low)} AND {x}.high <= {a(high)}))"
    if prefix == "sa":
        return f"{x}.low >= {a(high)}"
    if prefix == "eb":
        return f"{x}.high <= {a(low)}"
    # ap: overlap with the range widened by 10% of its distance from now (§3.1.1.4.5)
    now = int(time.time() * 1000)
    margin = int(abs(now - low) * 0.1)
    return f"({x}.low < {a(high + margin)} AND {x}.high > {a(low - margin)})"


def _value_condition(
    type_: str,
    name: str,
    raw: str,
    value: str,
    modifier: str | None,
    sql: _Sql | None,
    x: str,
    fhir_base: str | None = None,
) -> str:
    """SQL condition on index alias *x* for one OR alternative (``sql=None``: validate only)."""

    def a(v: Any) -> str:
        return sql.arg(v) if sql else "?"

    if type_ == "string":
        text = _unescape(value)
        if modifier == "exact":
            return f"{x}.exact = {a(text)}"
        folded = normalise(text)
        if modifier == "contains":
            return f"instr({x}.norm, {a(folded)}) > 0"
        return f"({x}.norm >= {a(folded)} AND {x}.norm < {a(folded + _TOP)})"
    if type_ == "token":
        if modifier == "text":
            folded = normalise(_unescape(value))
            return f"({x}.text >= {a(folded)} AND {x}.text < {a(folded + _TOP)})"
        parts = _split_on(value, "|")
        if len(parts) > 2:
            raise _bad(name, raw, f"{value!r} has more than one '|'")
        if len(parts) == 1:
            return f"{x}.code = {a(_unescape(parts[0]))}"
        system, code = _unescape(parts[0]), _unescape(parts[1])
        if not system and not code:
            raise _bad(name, raw, "'|' alone names neither a system nor a code")
        if not system:
            return f"({x}.system IS NULL AND {x}.code = {a(code)})"
        if not code:
            return f"{x}.system = {a(system)}"
        return f"({x}.system = {a(system)} AND {x}.code = {a(code)})"
    if type_ == "date":
        # a "+" of a time zone sent unencoded arrives as a space
        prefix, text = _prefixed(value.replace(" ", "+"))
        try:
            low, high = date_range(text, what=name)
        except InvalidDateError:
            raise _bad(name, raw, f"{text!r} is not a FHIR date or dateTime") from None
        return _date_condition(prefix, low, high, sql, x)
    if type_ == "number":
        prefix, text = _prefixed(value)
        return _number_condition(prefix, _decimal(name, raw, text), sql, x)
    if type_ == "quantity":
        parts = _split_on(value, "|")
        if len(parts) not in (1, 3):
            raise _bad(name, raw, "expected [prefix]number or [prefix]number|system|code")
        prefix, text = _prefixed(_unescape(parts[0]))
        condition = _number_condition(prefix, _decimal(name, raw, text), sql, x)
        if len(parts) == 3:
            system, code = _unescape(parts[1]), _unescape(parts[2])
            if system:
                condition += f" AND {x}.system = {a(system)}"
            if code and system:
                condition += f" AND {x}.code = {a(code)}"
            elif code:
                condition += f" AND ({x}.code = {a(code)} OR {x}.unit = {a(code)})"
        return f"({condition})"
    if type_ == "reference":
        return _reference_condition(name, raw, _unescape(value), modifier, a, x, fhir_base)
    if type_ == "uri":
        text = _unescape(value)
        if modifier == "below":
            return f"({x}.uri >= {a(text)} AND {x}.uri < {a(text + _TOP)})"
        if modifier == "above":
            return f"substr({a(text)}, 1, length({x}.uri)) = {x}.uri"
        return f"{x}.uri = {a(text)}"
    raise _bad(name, raw, f"parameters of type {type_} cannot be searched here")


def _reference_condition(
    name: str,
    raw: str,
    text: str,
    modifier: str | None,
    a: Any,
    x: str,
    fhir_base: str | None,
) -> str:
    if fhir_base and text.startswith(fhir_base.rstrip("/") + "/"):
        text = text[len(fhir_base.rstrip("/")) + 1 :]
    type_modifier = modifier if modifier and modifier[:1].isupper() else None
    if ID_RE.match(text):
        condition = f"({x}.local = 1 AND {x}.target_id = {a(text)}"
        if type_modifier:
            condition += f" AND {x}.target_type = {a(type_modifier)}"
        return condition + ")"
    ref = parse_reference(text)
    if ref.type and ref.id and ref.base is None:
        if type_modifier and type_modifier != ref.type:
            raise _bad(name, raw, f"{text!r} is not a {type_modifier}")
        return (
            f"({x}.local = 1 AND {x}.target_type = {a(ref.type)} AND {x}.target_id = {a(ref.id)})"
        )
    if ref.base is not None or ":" in text:
        url = text.split("/_history/")[0] if ref.base else text
        return f"{x}.url = {a(url)}"
    raise _bad(name, raw, f"{text!r} is not an id, Type/id or absolute URL")


def _criterion_sql(criterion: Criterion, alias: str, sql: _Sql, fhir_base: str | None) -> str:
    rtype = criterion.resource_type
    if criterion.has is not None:
        source, ref_param, inner = criterion.has
        s, r = sql.alias("s"), sql.alias("r")
        head = (
            f"{alias}.id IN (SELECT {r}.target_id FROM idx_reference {r} "
            f"JOIN resource {s} ON {s}.rid = {r}.rid "
            f"WHERE {r}.type = {sql.arg(source)} AND {r}.param = {sql.arg(ref_param.name)} "
            f"AND {r}.local = 1 AND {r}.target_type = {sql.arg(rtype)} AND {s}.deleted = 0"
        )
        return f"{head} AND {_criterion_sql(inner, s, sql, fhir_base)})"
    param = criterion.param
    assert param is not None
    if criterion.chain is not None:
        r = sql.alias("r")
        branches = []
        for target, chained in criterion.chain.items():
            c = sql.alias("c")
            branches.append(
                f"({r}.target_type = {sql.arg(target)} AND {r}.target_id IN "
                f"(SELECT {c}.id FROM resource {c} WHERE {c}.type = {sql.arg(target)} "
                f"AND {c}.deleted = 0 AND {_criterion_sql(chained, c, sql, fhir_base)}))"
            )
        return (
            f"{alias}.rid IN (SELECT {r}.rid FROM idx_reference {r} WHERE "
            f"{r}.type = {sql.arg(rtype)} AND {r}.param = {sql.arg(param.name)} "
            f"AND {r}.local = 1 AND ({' OR '.join(branches)}))"
        )
    if param.name == "_id":
        ids = [_unescape(v) for v in criterion.values]
        marks = ", ".join(sql.arg(i) for i in ids)
        if criterion.modifier == "not":
            return f"{alias}.id NOT IN ({marks})"
        if criterion.modifier == "missing":
            return "1 = 1" if criterion.values == ["false"] else "1 = 0"
        return f"{alias}.id IN ({marks})"
    modifier = criterion.modifier
    if param.type == "composite" and modifier != "missing":
        return _composite_sql(criterion, alias, sql)
    table, stored_name = param.type, param.name
    if param.type == "composite":  # present when its first part is indexed
        table, stored_name = param.components[0].type, f"{param.name}#0"
    if modifier == "identifier":
        table, stored_name, modifier = "token", f"{param.name}:identifier", None
    x = sql.alias("x")
    head = (
        f"SELECT {x}.rid FROM idx_{table} {x} WHERE {x}.type = {sql.arg(rtype)} "
        f"AND {x}.param = {sql.arg(stored_name)}"
    )
    if modifier == "missing":
        negate = criterion.values == ["true"] or (
            "true" in criterion.values and "false" not in criterion.values
        )
        if set(criterion.values) == {"true", "false"}:
            return "1 = 1"
        return f"{alias}.rid {'NOT IN' if negate else 'IN'} ({head})"
    value_modifier = None if modifier == "not" else modifier
    alternatives = [
        _value_condition(table, criterion.name, v, v, value_modifier, sql, x, fhir_base)
        for v in criterion.values
    ]
    body = f"{head} AND ({' OR '.join(alternatives)})"
    return f"{alias}.rid {'NOT IN' if modifier == 'not' else 'IN'} ({body})"


def _composite_sql(criterion: Criterion, alias: str, sql: _Sql) -> str:
    param = criterion.param
    assert param is not None
    alternatives = []
    for value in criterion.values:
        parts = _split_on(value, "$")
        if len(parts) != len(param.components):
            raise _bad(
                criterion.name,
                value,
                f"expected {len(param.components)} parts separated by '$'",
            )
        aliases = [sql.alias("k") for _ in parts]
        joins, conditions = [], []
        triples = zip(parts, param.components, aliases, strict=True)
        for i, (part, component, k) in enumerate(triples):
            if i == 0:
                joins.append(f"idx_{component.type} {k}")
            else:
                joins.append(
                    f"JOIN idx_{component.type} {k} ON {k}.rid = {aliases[0]}.rid "
                    f"AND {k}.grp = {aliases[0]}.grp"
                )
            conditions.append(
                f"{k}.type = {sql.arg(criterion.resource_type)} "
                f"AND {k}.param = {sql.arg(f'{param.name}#{i}')} AND "
                + _value_condition(component.type, criterion.name, value, part, None, sql, k)
            )
        alternatives.append(
            f"SELECT {aliases[0]}.rid FROM {' '.join(joins)} WHERE {' AND '.join(conditions)}"
        )
    return f"{alias}.rid IN ({' UNION '.join(alternatives)})"


def _sort_sql(key: SortKey, alias: str, sql: _Sql) -> str:
    """R4 search §3.1.1.5.3: the lowest value sorts ascending, the highest descending;
    resources without a value come last either way."""
    param = key.param
    direction = "DESC" if key.descending else "ASC"
    if param.name == "_id":
        return f"{alias}.id {direction}"
    if param.name == "_lastUpdated":
        return f"{alias}.updated_ms {direction}"
    x = sql.alias("o")
    edge = "high" if key.descending else "low"
    column = {
        "string": f"{x}.norm",
        "token": f"{x}.code",
        "date": f"{x}.{edge}",
        "number": f"{x}.{edge}",
        "quantity": f"{x}.{edge}",
        "reference": f"COALESCE({x}.target_type || '/' || {x}.target_id, {x}.url)",
        "uri": f"{x}.uri",
    }[param.type]
    agg = "MAX" if key.descending else "MIN"
    return (
        f"(SELECT {agg}({column}) FROM idx_{param.type} {x} WHERE {x}.rid = {alias}.rid "
        f"AND {x}.param = {sql.arg(param.name)}) {direction} NULLS LAST"
    )


def _system_sql(request: SearchRequest, alias: str, sql: _Sql, fhir_base: str | None) -> str:
    """One branch per searched type, each with that type's own criteria (OR-ed)."""
    branches = []
    for type_ in request.types:
        parts = [f"{alias}.type = {sql.arg(type_)}"]
        parts += [
            _criterion_sql(c, alias, sql, fhir_base)
            for c in request.criteria
            if c.resource_type == type_
        ]
        branches.append(f"({' AND '.join(parts)})")
    return f"({' OR '.join(branches)})"


def compile_search(
    request: SearchRequest, *, fhir_base: str | None = None
) -> tuple[str, dict[str, Any]]:
    """Return ``(sql, args)`` selecting the ordered rids of the matches of *request*.

    Parameters
    ----------
    request : SearchRequest
    fhir_base : str, optional
        This server's FHIR base URL; an absolute reference value under it is read as a
        relative one (R4 search §3.1.1.4.9).
    """
    sql = _Sql()
    alias = "m"
    if request.types:
        where = [f"{alias}.deleted = 0", _system_sql(request, alias, sql, fhir_base)]
    else:
        where = [f"{alias}.type = {sql.arg(request.resource_type)}", f"{alias}.deleted = 0"]
        for criterion in request.criteria:
            where.append(_criterion_sql(criterion, alias, sql, fhir_base))
    order = [_sort_sql(key, alias, sql) for key in request.sort]
    order.append(f"{alias}.rid ASC")
    text = (
        f"SELECT {alias}.rid FROM resource {alias} WHERE {' AND '.join(where)} "
        f"ORDER BY {', '.join(order)}"
    )
    return text, sql.args
