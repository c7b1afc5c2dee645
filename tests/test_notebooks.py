"""The tutorial notebooks run top to bottom against the sandbox (issue 4 point 8).

Notebook 01 is run without ``IMAGINGKIT_FHIR_URL``, so it starts the sandbox in its own
kernel (on a private copy of the cached test data); notebook 02 is pointed at the
``imagingkit serve --sandbox`` of the session. A cell that raises fails the test with the
cell's traceback.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from servers import REPO, ImagingkitServer, cached_sandbox_data_dir

NOTEBOOKS = REPO / "notebooks"
CELL_TIMEOUT = 600


def _execute(name: str) -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    try:
        client.execute()
    except CellExecutionError as error:
        pytest.fail(f"{name} failed:\n{error}")
    return notebook


def _outputs(notebook: nbformat.NotebookNode) -> str:
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(str(output.get("text", "")))
            texts.append(str(output.get("data", {}).get("text/plain", "")))
    return "\n".join(texts)


def test_build_a_cohort_starts_its_own_sandbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(cached_sandbox_data_dir(), data_dir)
    monkeypatch.delenv("IMAGINGKIT_FHIR_URL", raising=False)
    monkeypatch.setenv("IMAGINGKIT_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = _execute("01-build-a-cohort.ipynb")
    text = _outputs(notebook)
    assert "CapabilityStatement" in text
    assert "_has:Condition:subject:code=" in text  # the sandbox store reverse-chains
    assert "InvalidUIDError" in text and "1.2.abc" in text


def test_images_into_pandas_against_the_served_sandbox(
    sandbox_server: ImagingkitServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGINGKIT_FHIR_URL", sandbox_server.mounts["fhir"].rstrip("/"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = _execute("02-images-into-pandas.ipynb")
    text = _outputs(notebook)
    assert "spacing (mm)" in text
    assert "succeeded, 0 failed" in text
    images = [
        o
        for cell in notebook.cells
        for o in cell.get("outputs", [])
        if "image/png" in o.get("data", {}) or "image/jpeg" in o.get("data", {})
    ]
    assert images, "the montage and thumbnails should be displayed"


def test_context_sync_follows_a_pacs_and_drives_it(
    sandbox_server: ImagingkitServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGINGKIT_SERVER_URL", sandbox_server.url)
    notebook = _execute("04-context-sync.ipynb")
    text = _outputs(notebook)
    assert "| errors: 0" in text
    assert "PACS: received the notebook's selection: MRI BRAIN" in text
    # one run per study the PACS opened, none for the notebook's own selection
    assert "follow callback runs (unchanged): 3" in text
    assert "PACS exit status: 0" in text
    assert "current study: None" in text  # the PACS closed it
    assert "InvalidUIDError" in text
    thumbnails = [
        o
        for cell in notebook.cells
        for o in cell.get("outputs", [])
        if "image/jpeg" in o.get("data", {})
    ]
    assert len(thumbnails) >= 3


def test_widgets_browse_select_follow_and_watch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # its own sandbox, as notebook 01: the notebook writes (and deletes) a study
    data_dir = tmp_path / "data"
    shutil.copytree(cached_sandbox_data_dir(), data_dir)
    monkeypatch.delenv("IMAGINGKIT_SERVER_URL", raising=False)
    monkeypatch.setenv("IMAGINGKIT_DATA_DIR", str(data_dir))
    notebook = _execute("05-widgets.ipynb")
    text = _outputs(notebook)
    assert "FHIRcast: connected | in sync: True" in text
    assert "thumbnails: ready" in text
    assert "same study: True" in text  # the PACS followed the notebook's Select
    assert "highlighted: True" in text and "context study: True" in text
    assert "links for the context's study: True" in text
    assert "last change: FrameDiff(added=(" in text
    widgets = [
        o
        for cell in notebook.cells
        for o in cell.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert len(widgets) >= 6  # bar, browser, thumbnails, buttons, table (twice)
