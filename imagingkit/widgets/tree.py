"""Closing a widget together with every widget inside it."""

from __future__ import annotations

import ipywidgets

__all__ = ["close_tree"]


def close_tree(widget: ipywidgets.Widget) -> None:
    """Close *widget* and its descendants (``children``), deepest first; each once."""
    for child in getattr(widget, "children", ()):
        close_tree(child)
    widget.close()
