"""Prepare the Binder image's sandbox once, at build time (binder/postBuild runs this).

Generates the sandbox of SIZE (default "small") into imagingkit's default data dir, indexes
its DICOM files and loads its FHIR record, exactly as the Jupyter server extension and
``imagingkit.sandbox.running.start`` would on their first run, so that neither has anything
left to do when a user opens the Binder.
"""

from __future__ import annotations

import sys
import time

from imagingkit.config import get_settings
from imagingkit.server.serve import build_components


def main(size: str = "small") -> None:
    """Build the sandbox components once, then close them."""
    started = time.monotonic()
    settings = get_settings()
    for component in build_components(settings, sandbox=True, size=size, seed=42):
        close = getattr(component, "close", None)
        if close is not None:
            close()
    print(
        f"imagingkit sandbox ({size}) prepared in {settings.data_dir} "
        f"in {time.monotonic() - started:.1f} s"
    )


if __name__ == "__main__":  # generation uses worker processes: keep the guard
    main(*sys.argv[1:2])
