"""JSON Patch documents (RFC 6902) with JSON Pointers (RFC 6901), for FHIR R4 ``patch``.

FHIR R4 http.html "patch": the server applies the operations to its own copy of the
resource, then processes the result as an ``update`` (versions, validation, ``If-Match``).
This module does the first half, on plain JSON values:

- a malformed document (not an array, an operation without a known ``op``, without
  ``path``/``value``/``from`` where RFC 6902 §4 requires them, a pointer that breaks
  RFC 6901 §3) is refused with :class:`~imagingkit.errors.InvalidInputError` (400);
- an operation that cannot be applied to this resource (RFC 6902 §4.1-4.6: a missing
  target, an array index out of range, ``move`` into its own child, a failed ``test``)
  raises a 422 :class:`~imagingkit.errors.FHIRError` — R4: "In the case of a failing
  JSON Patch test interaction, the server returns a 422 Unprocessable Entity";
- every message names the operation (its index, ``op`` and ``path``).

RFC 6902 §5: the operations apply in order to a copy, and nothing is kept if one fails.
``test`` compares JSON values (§4.6): numbers by value, objects regardless of member
order, and ``true`` is never equal to ``1``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re
from typing import Any

from imagingkit.errors import FHIRError, InvalidInputError
from imagingkit.sandbox.fhir.outcome import fhir_error

__all__ = [
    "JSON_PATCH",
    "apply_json_patch",
    "json_patch_from_binary",
    "operations_touching",
    "parse_pointer",
]

#: The media type of a JSON Patch document (RFC 6902 §6).
JSON_PATCH = "application/json-patch+json"

_OPS = ("add", "remove", "replace", "move", "copy", "test")
_INDEX = re.compile(r"^(0|[1-9][0-9]*)$")
_MAX_OPERATIONS = 10_000


def parse_pointer(text: Any, *, what: str = "path") -> list[str]:
    """Split an RFC 6901 JSON Pointer into its unescaped reference tokens.

    ``""`` is the whole document; otherwise every token follows a ``/``, with ``~1``
    standing for ``/`` and ``~0`` for ``~`` (§4: ``~1`` is decoded first).

    Raises
    ------
    InvalidInputError
        Not a string, not starting with ``/``, or a ``~`` not followed by ``0``/``1``.
    """
    if not isinstance(text, str):
        raise InvalidInputError(f"{what} must be a JSON Pointer string, not {text!r}")
    if text == "":
        return []
    if not text.startswith("/"):
        raise InvalidInputError(f"{what} {text!r} is not a JSON Pointer (it must start with '/')")
    tokens = text[1:].split("/")
    for token in tokens:
        if re.search(r"~(?![01])", token):
            raise InvalidInputError(
                f"{what} {text!r}: '~' must be followed by 0 or 1 (RFC 6901 §3)"
            )
    return [t.replace("~1", "/").replace("~0", "~") for t in tokens]


def _same(a: Any, b: Any) -> bool:
    """JSON equality (RFC 6902 §4.6)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


class _Failed(Exception):
    """An operation could not be applied (turned into a 422 naming it)."""


def _index(container: list[Any], token: str, *, adding: bool) -> int:
    if adding and token == "-":
        return len(container)
    if not _INDEX.match(token):
        raise _Failed(f"{token!r} is not an array index")
    index = int(token)
    limit = len(container) if adding else len(container) - 1
    if index > limit:
        raise _Failed(f"index {index} is out of range (the array has {len(container)} items)")
    return index


def _parent(document: Any, tokens: list[str]) -> Any:
    node = document
    for depth, token in enumerate(tokens[:-1]):
        where = "/" + "/".join(tokens[: depth + 1])
        if isinstance(node, dict):
            if token not in node:
                raise _Failed(f"{where} does not exist")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, adding=False)]
        else:
            raise _Failed(f"{where} is inside a value that is neither an object nor an array")
    if not isinstance(node, (dict, list)):
        raise _Failed("the target's parent is neither an object nor an array")
    return node


def _get(document: Any, tokens: list[str]) -> Any:
    if not tokens:
        return document
    parent, last = _parent(document, tokens), tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise _Failed("the target does not exist")
        return parent[last]
    return parent[_index(parent, last, adding=False)]


def _add(document: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent, last = _parent(document, tokens), tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    else:
        parent.insert(_index(parent, last, adding=True), value)
    return document


def _remove(document: Any, tokens: list[str]) -> Any:
    if not tokens:
        raise _Failed("the whole resource cannot be removed")
    parent, last = _parent(document, tokens), tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise _Failed("the target does not exist")
        del parent[last]
    else:
        del parent[_index(parent, last, adding=False)]
    return document


def _replace(document: Any, tokens: list[str], value: Any) -> Any:
    """RFC 6902 §4.3: the target must exist; an object member keeps its place."""
    if not tokens:
        return value
    parent, last = _parent(document, tokens), tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise _Failed("the target does not exist")
        parent[last] = value
    else:
        parent[_index(parent, last, adding=False)] = value
    return document


def _member(operation: dict[str, Any], name: str, where: str) -> Any:
    if name not in operation:
        raise InvalidInputError(f"{where} has no {name!r} member (RFC 6902 §4)")
    return operation[name]


def _apply_one(document: Any, operation: dict[str, Any], where: str) -> Any:
    op = operation["op"]
    tokens = parse_pointer(operation["path"], what=f"{where}.path")
    if op == "add":
        return _add(document, tokens, copy.deepcopy(_member(operation, "value", where)))
    if op == "remove":
        return _remove(document, tokens)
    if op == "replace":
        return _replace(document, tokens, copy.deepcopy(_member(operation, "value", where)))
    if op == "test":
        expected = _member(operation, "value", where)
        if not _same(_get(document, tokens), expected):
            raise _Failed(f"test failed: the value is not {json.dumps(expected)[:200]}")
        return document
    source = parse_pointer(_member(operation, "from", where), what=f"{where}.from")
    value = _get(document, source)
    if op == "copy":
        return _add(document, tokens, copy.deepcopy(value))
    if tokens[: len(source)] == source and len(tokens) > len(source):
        raise _Failed("a value cannot be moved into one of its own children (RFC 6902 §4.4)")
    if tokens == source:
        return document
    return _add(_remove(document, source), tokens, value)


def apply_json_patch(document: dict[str, Any], operations: Any) -> dict[str, Any]:
    """Apply a JSON Patch to a copy of *document* and return the copy (RFC 6902 §3-§5).

    Parameters
    ----------
    document : dict
        The resource as the client sees it; left unchanged.
    operations : Any
        The parsed patch document: a JSON array of operation objects.

    Returns
    -------
    dict
        The patched copy (it may be any JSON value if an operation replaced the root;
        the caller validates it as a resource).

    Raises
    ------
    InvalidInputError
        A malformed patch document (400).
    FHIRError
        422 if an operation cannot be applied or a ``test`` fails, naming it.
    """
    if not isinstance(operations, list):
        raise InvalidInputError("a JSON Patch document must be a JSON array of operations")
    if len(operations) > _MAX_OPERATIONS:
        raise InvalidInputError(f"a JSON Patch may hold at most {_MAX_OPERATIONS} operations")
    for index, operation in enumerate(operations):
        where = f"JSON Patch operation {index}"
        if not isinstance(operation, dict):
            raise InvalidInputError(f"{where} is not a JSON object")
        if operation.get("op") not in _OPS:
            raise InvalidInputError(
                f"{where}: op {operation.get('op')!r} is not one of {', '.join(_OPS)}"
            )
        _member(operation, "path", where)
    result: Any = copy.deepcopy(document)
    for index, operation in enumerate(operations):
        where = f"JSON Patch operation {index}"
        try:
            result = _apply_one(result, operation, where)
        except _Failed as exc:
            named = f"{where} ({operation['op']} {operation['path']})"
            raise _unprocessable(f"{named}: {exc}") from None
    return result


def operations_touching(operations: list[dict[str, Any]], member: str) -> str:
    """Name the operations whose ``path`` or ``from`` reaches the top-level *member*
    (or the whole document), e.g. ``"operation 2 (replace /id)"``, for error messages."""
    named = []
    for index, operation in enumerate(operations):
        for key in ("path", "from"):
            pointer = operation.get(key)
            if (
                pointer == ""
                or pointer == f"/{member}"
                or (isinstance(pointer, str) and pointer.startswith(f"/{member}/"))
            ):
                named.append(f"operation {index} ({operation['op']} {operation['path']})")
                break
    return ", ".join(named) or "the patch"


def _unprocessable(message: str) -> FHIRError:
    return fhir_error(422, message)


def json_patch_from_binary(binary: Any, *, where: str) -> Any:
    """The JSON Patch carried by a Binary resource of a Bundle entry (R4 http.html "patch").

    R4 carries a JSON Patch in a transaction or batch as a ``Binary`` whose
    ``contentType`` is ``application/json-patch+json`` and whose ``data`` is the
    base64-encoded document.

    Raises
    ------
    InvalidInputError
        Another content type, no ``data``, bad base64 or bad JSON.
    """
    content_type = str(binary.get("contentType") or JSON_PATCH).split(";")[0].strip().lower()
    if content_type != JSON_PATCH:
        raise InvalidInputError(
            f"{where}: the Binary's contentType is {content_type!r}; a PATCH entry needs "
            f"{JSON_PATCH}"
        )
    data = binary.get("data")
    if not isinstance(data, str) or not data:
        raise InvalidInputError(f"{where}: the Binary has no data (the base64 JSON Patch)")
    try:
        return json.loads(base64.b64decode(data, validate=True).decode("utf-8"))
    except (binascii.Error, ValueError) as exc:
        raise InvalidInputError(
            f"{where}: the Binary's data is not a base64 JSON document: {exc}"
        ) from None
