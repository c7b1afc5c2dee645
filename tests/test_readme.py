"""The README's Python examples run as written, against the sandbox server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from servers import ImagingkitServer, subprocess_env

README = Path(__file__).resolve().parent.parent / "README.md"


def python_examples() -> list[str]:
    """Every ```python block of the README, in order."""
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.M | re.S)


def test_readme_has_examples() -> None:
    blocks = python_examples()
    assert len(blocks) >= 2
    assert any("find_or_start" in block for block in blocks)


def test_readme_examples_run_in_order(sandbox_server: ImagingkitServer, tmp_path: Path) -> None:
    """One process runs the blocks in turn (later ones use names the first defines)."""
    env = subprocess_env(tmp_path)  # its own cache: nothing leaks from other tests
    env["IMAGINGKIT_SERVER_URL"] = sandbox_server.url
    script = "\n\n".join(python_examples()) + '\n\nprint("README OK", volume.shape)\n'
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "CT studies so far" in done.stdout
    assert "README OK (" in done.stdout
