"""The subset of FHIRPath that R4 search parameter expressions use (SearchParameter.expression).

The search parameter table (:mod:`.searchparams`) keeps each parameter's R4 ``expression``
verbatim; this module compiles it and evaluates it against resource JSON. Supported:

- paths ``Type.a.b`` (a step over a list visits every item);
- unions ``A | B``;
- choice types: ``Observation.value`` visits ``valueQuantity``, ``valueString`` …, and
  ``.as(Quantity)`` or ``(Observation.value as Quantity)`` keeps one of them;
- ``.where(resolve() is Patient)`` on references (decided from the reference's type);
- ``.where(system='email')`` on elements with a ``system`` (ContactPoint);
- relative expressions for composite parameter components (``code``, ``value.as(Quantity)``).

Anything else is refused when the table is loaded, so an unsupported definition cannot
silently index nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = ["Expression", "Node", "compile_expression", "reference_type"]

_STEP_RE = re.compile(
    r"(?P<as>as\((?P<as_type>[A-Za-z]+)\))"
    r"|(?P<resolve>where\(resolve\(\) is (?P<resolve_type>[A-Za-z]+)\))"
    r"|(?P<where>where\((?P<where_key>[a-z][A-Za-z]*)='(?P<where_value>[^']*)'\))"
    r"|(?P<name>[a-z][A-Za-z0-9]*)"
)
_AS_TERM_RE = re.compile(r"^\((?P<path>[^()]+?) as (?P<type>[A-Za-z]+)\)(?P<rest>(\.[A-Za-z]+)*)$")


class Node(NamedTuple):
    """One value reached by an expression (a tuple: cheap to make, indexing is hot).

    Attributes
    ----------
    value : Any
        The JSON value (dict, str, number, bool).
    type : str or None
        The FHIR type when the JSON says it (a choice suffix such as ``valueQuantity``).
    field : str
        The element name the value was found under (``identifier``, ``telecom`` …).
    """

    value: Any
    type: str | None
    field: str


@dataclass(frozen=True)
class _Step:
    kind: str  # "name" | "as" | "resolve" | "where"
    arg: str
    arg2: str = ""


@dataclass(frozen=True)
class _Path:
    steps: tuple[_Step, ...]


@dataclass(frozen=True)
class Expression:
    """A compiled expression: a union of paths, each a sequence of steps."""

    text: str
    paths: tuple[_Path, ...]

    def evaluate(self, root: Any, root_type: str | None = None) -> list[Node]:
        """Return every node the expression selects from *root* (a resource or element)."""
        out: list[Node] = []
        start = Node(root, root_type, "")
        for path in self.paths:
            nodes = [start]
            for step in path.steps:
                nodes = list(_apply(step, nodes))
                if not nodes:
                    break
            out.extend(nodes)
        return out


def _primitive_type(suffix: str) -> str:
    """``DateTime`` → ``dateTime`` for primitive choice suffixes; complex types keep case."""
    primitives = {
        "Boolean",
        "Integer",
        "Decimal",
        "String",
        "Uri",
        "Url",
        "Canonical",
        "Code",
        "Id",
        "Oid",
        "Uuid",
        "Date",
        "DateTime",
        "Instant",
        "Time",
        "Base64Binary",
        "Markdown",
        "PositiveInt",
        "UnsignedInt",
    }
    return suffix[0].lower() + suffix[1:] if suffix in primitives else suffix


def _children(node: Node, name: str) -> Iterator[Node]:
    value = node.value
    if not isinstance(value, dict):
        return
    items = value.get(name)
    if items is not None:
        if isinstance(items, list):
            for item in items:
                if item is not None:
                    yield Node(item, None, name)
        else:
            yield Node(items, None, name)
        return
    size = len(name)
    for key, items in value.items():
        if key.startswith(name) and len(key) > size and key[size].isupper() and items is not None:
            choice = _primitive_type(key[size:])
            for item in items if isinstance(items, list) else [items]:
                yield Node(item, choice, name)


def reference_type(value: Any) -> str | None:
    """Return the resource type a Reference points to, from ``reference`` or ``type``."""
    if not isinstance(value, dict):
        return None
    ref = value.get("reference")
    if isinstance(ref, str) and not ref.startswith(("#", "urn:")):
        parts = ref.split("?", 1)[0].split("/")
        if "_history" in parts:
            parts = parts[: parts.index("_history")]
        if len(parts) >= 2 and parts[-2][:1].isupper():
            return parts[-2]
    kind = value.get("type")
    return kind if isinstance(kind, str) else None


def _apply(step: _Step, nodes: list[Node]) -> Iterator[Node]:
    for node in nodes:
        if step.kind == "name":
            yield from _children(node, step.arg)
        elif step.kind == "as":
            if node.type is not None and node.type.lower() == step.arg.lower():
                yield node
        elif step.kind == "resolve":
            if reference_type(node.value) == step.arg:
                yield node
        elif (
            step.kind == "where"
            and isinstance(node.value, dict)
            and node.value.get(step.arg) == step.arg2
        ):
            yield node


def _compile_path(text: str, base: str | None) -> _Path:
    text = text.strip()
    steps: list[_Step] = []
    term = _AS_TERM_RE.match(text)
    if term:
        inner = _compile_path(term.group("path"), base)
        steps.extend(inner.steps)
        steps.append(_Step("as", term.group("type")))
        text = term.group("rest").lstrip(".")
        if not text:
            return _Path(tuple(steps))
    elif base is not None:
        head, _, text = text.partition(".")
        if head != base:
            raise ValueError(f"expression {text!r} does not start at {base}")
    for piece in _split_top(text, "."):
        match = _STEP_RE.fullmatch(piece)
        if match is None:
            raise ValueError(f"unsupported FHIRPath step {piece!r}")
        if match.group("as"):
            steps.append(_Step("as", match.group("as_type")))
        elif match.group("resolve"):
            steps.append(_Step("resolve", match.group("resolve_type")))
        elif match.group("where"):
            steps.append(_Step("where", match.group("where_key"), match.group("where_value")))
        else:
            steps.append(_Step("name", match.group("name")))
    return _Path(tuple(steps))


def _split_top(text: str, separator: str) -> list[str]:
    """Split *text* on *separator* outside parentheses; blank pieces are dropped."""
    pieces, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == separator and depth == 0:
            pieces.append(current)
            current = ""
        else:
            current += char
    pieces.append(current)
    return [p.strip() for p in pieces if p.strip()]


def compile_expression(text: str, base: str | None) -> Expression:
    """Compile an R4 search expression.

    Parameters
    ----------
    text : str
        The expression, e.g. ``"ImagingStudy.series.modality"`` or
        ``"(Observation.value as Quantity) | (Observation.value as SampledData)"``.
    base : str or None
        The resource type every path must start at; ``None`` for a relative expression
        (a composite component such as ``"value.as(Quantity)"``).

    Returns
    -------
    Expression

    Raises
    ------
    ValueError
        If the expression uses FHIRPath beyond the supported subset.
    """
    paths = tuple(_compile_path(part, base) for part in _split_top(text, "|"))
    return Expression(text, paths)
