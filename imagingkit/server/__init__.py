"""The tornado application behind every imagingkit endpoint (DESIGN.md D3)."""

from imagingkit.server.app import Component, make_app

__all__ = ["Component", "make_app"]
