"""Escaped HTML for the widgets: every value goes through :func:`html.escape`.

The widgets put server text (study descriptions, patient names, error messages) into
``ipywidgets.HTML`` values, which front ends insert as markup; nothing reaches a value
except through the helpers here, so a ``<script>`` in a description is shown, not run.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["MISSING", "cell", "message", "spinner", "table"]

#: shown for a missing value
MISSING = "—"

_COLOURS = {"info": "#555", "ok": "#1a7f37", "warning": "#9a6700", "error": "#cf222e"}


def cell(value: Any) -> str:
    """The escaped text of *value* (``—`` for ``None``, NaN, NaT, ``<NA>`` or ``""``)."""
    from imagingkit.widgets.frames import text

    shown = text(value)
    return html.escape(MISSING if shown is None else shown)


def message(text: str, kind: str = "info") -> str:
    """One escaped line of status text; *kind* is ``info``, ``ok``, ``warning`` or ``error``."""
    colour = _COLOURS.get(kind, _COLOURS["info"])
    role = ' role="alert"' if kind == "error" else ""
    return f'<div style="color:{colour}"{role}>{html.escape(text)}</div>'


def spinner(text: str) -> str:
    """A spinning icon (the Font Awesome bundled with ipywidgets) and escaped *text*."""
    return (
        f'<div><i class="fa fa-spinner fa-spin" aria-hidden="true"></i> {html.escape(text)}</div>'
    )


def table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    marks: Sequence[str] | None = None,
    caption: str | None = None,
) -> str:
    """An HTML table of *rows*; every header, cell, mark and the caption escaped.

    Parameters
    ----------
    columns : sequence of str
        Header texts.
    rows : iterable of sequences
        Cell values, formatted by :func:`cell`.
    marks : sequence of str, optional
        A leading column of short labels, one per row (``"new"``, ``"●"`` …).
    caption : str, optional
        The table's caption.
    """
    head = "".join(f"<th style='text-align:left'>{html.escape(str(c))}</th>" for c in columns)
    if marks is not None:
        head = "<th></th>" + head
    body = []
    for i, row in enumerate(rows):
        cells = "".join(f"<td style='text-align:left'>{cell(v)}</td>" for v in row)
        if marks is not None:
            mark = marks[i] if i < len(marks) else ""
            cells = f"<td>{html.escape(mark)}</td>{cells}"
        body.append(f"<tr>{cells}</tr>")
    title = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{title}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
