"""Closing a widget together with every widget inside it."""

from __future__ import annotations

import ipywidgets

__all__ = ["close_models", "close_tree"]


def close_models(widget: ipywidgets.Widget) -> None:
    """Close the ``layout`` and ``style`` models of *widget* (``close()`` leaves them)."""
    for part in ("layout", "style"):
        model = getattr(widget, part, None)
        if isinstance(model, ipywidgets.Widget):
            model.close()


def close_tree(widget: ipywidgets.Widget) -> None:
    """Close *widget*, its descendants (``children``) and all their layout and style
    models, so nothing is left registered in the kernel or the front end."""
    for child in getattr(widget, "children", ()):
        close_tree(child)
    widget.close()
    close_models(widget)
