"""Notebook 03 (launch viewers) runs top to bottom against the served sandbox (issue 5 point 6).

It is pointed at the session's ``imagingkit serve --sandbox`` through
``IMAGINGKIT_SERVER_URL``; a cell that raises fails the test with the cell's traceback.
The assertions check what a reader of the notebook is told: deep links per row, a 302 from
the IID facade to the built-in viewer, and a hostile request refused without a redirect.
"""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from servers import REPO, ImagingkitServer

NOTEBOOK = REPO / "notebooks" / "03-launch-viewers.ipynb"


def test_launch_viewers_notebook_against_the_served_sandbox(
    sandbox_server: ImagingkitServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGINGKIT_SERVER_URL", sandbox_server.url)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    try:
        client.execute()
    except CellExecutionError as error:
        pytest.fail(f"{NOTEBOOK.name} failed:\n{error}")
    texts = []
    html = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(str(output.get("text", "")))
            data = output.get("data", {})
            texts.append(str(data.get("text/plain", "")))
            html.append(str(data.get("text/html", "")))
    text = "\n".join(texts)
    origin = sandbox_server.url.rstrip("/")
    assert f"{origin}/viewer/?study=" in text  # built-in viewer deep links per row
    assert "weasis://" in text
    assert "302 → /viewer/?study=" in text  # the IID facade redirects to the built-in viewer
    assert "InvalidUIDError" in text and "1.2.abc" in text
    assert "400 False" in text  # hostile request: 400 and no Location header
    assert any("<a " in h and "/iid/IHEInvokeImageDisplay?requestType=STUDY" in h for h in html)
