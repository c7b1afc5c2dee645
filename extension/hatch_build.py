"""Hatch build hook: put the built JupyterLab extension into the wheel, when it exists.

``make`` builds the extension (``npm ci`` + ``npm run build`` in ``extension/``) when
Node.js is present; its output, ``extension/labextension/``, is installed as
``share/jupyter/labextensions/imagingkit-lab/``, where JupyterLab finds prebuilt
(federated) extensions. Without Node.js the package builds and installs without it:
the Python side, the Jupyter server extension included, does not need it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

NAME = "imagingkit-lab"


class LabExtensionHook(BuildHookInterface):
    """Add ``extension/labextension`` to the wheel's shared data if it was built."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Map the built extension to ``share/jupyter/labextensions/imagingkit-lab``."""
        if self.target_name != "wheel":
            return
        built = Path(self.root) / "extension" / "labextension"
        manifest = built / "package.json"
        try:
            load = json.loads(manifest.read_text())["jupyterlab"]["_build"]["load"]
        except (OSError, ValueError, KeyError, TypeError):
            self.app.display_warning(
                f"{NAME}: no built JupyterLab extension in {built}; the wheel will not "
                "contain it (build it with `make`, or `npm ci && npm run build` in "
                "extension/, which needs Node.js >= 20)"
            )
            return
        if not (built / load).is_file():
            self.app.display_warning(f"{NAME}: {built / load} is missing; not included")
            return
        build_data["shared_data"][str(built)] = f"share/jupyter/labextensions/{NAME}"
