"""The tutorial notebooks run top to bottom against the sandbox (issue 4 point 8).

Notebook 01 is run without ``IMAGINGKIT_FHIR_URL``, so it starts the sandbox in its own
kernel (on a private copy of the cached test data); notebook 02 is pointed at the
``imagingkit serve --sandbox`` of the session. A cell that raises fails the test with the
cell's traceback. ``make demo``'s set-up is run too: notebooks executed in a kernel that a
real ``jupyter server`` with the extension's sandbox started, so that their first cell
finds that sandbox and everything after goes through Jupyter's token.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
import requests
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from servers import (
    REPO,
    ImagingkitServer,
    JupyterProcess,
    _stop_process,
    cached_sandbox_data_dir,
    jupyter_env,
    start_jupyter,
)

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


@pytest.fixture(scope="module")
def demo_jupyter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterProcess]:
    """``make demo``'s server: Jupyter on ``notebooks/`` serving the small sandbox inside
    (``IMAGINGKIT_SANDBOX=1``), on a copy of the cached data in its default data dir."""
    tmp = tmp_path_factory.mktemp("demo-jupyter")
    shutil.copytree(cached_sandbox_data_dir(), tmp / "cache" / "imagingkit")
    env = jupyter_env(tmp)  # no IMAGINGKIT_SERVER_URL: the kernels must find the server
    env.update({"IMAGINGKIT_SANDBOX_SIZE": "small", "MPLBACKEND": "Agg"})
    server = start_jupyter(tmp, env, root_dir=NOTEBOOKS)
    try:
        server.wait_ready()
        yield server
    finally:
        _stop_process(server.process, signal.SIGTERM, 30)


async def _run_cells(notebook: nbformat.NotebookNode, connection_file: Path) -> None:
    from jupyter_client.asynchronous import AsyncKernelClient

    kernel = AsyncKernelClient(connection_file=str(connection_file))
    kernel.load_connection_file()
    # no heartbeat channel: on a loaded machine a late beat reads as a dead kernel;
    # readiness is the kernel_info reply, within the timeout
    kernel.start_channels(hb=False)
    try:
        await kernel.wait_for_ready(timeout=120)
        client = NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3")
        client.kc = kernel  # the server's kernel: nbclient neither starts nor stops it
        client.reset_execution_trackers()
        for index, cell in enumerate(notebook.cells):
            await client.async_execute_cell(cell, index)
    finally:
        kernel.stop_channels()


def _execute_in_jupyter(server: JupyterProcess, name: str) -> nbformat.NotebookNode:
    """Run *name* in a kernel started by *server* (``POST /api/kernels``), as JupyterLab does."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    kernels = f"{server.origin}{server.base_url}api/kernels"
    started = requests.post(
        kernels, json={"name": "python3", "path": name}, headers=server.headers, timeout=120
    )
    assert started.status_code == 201, started.text
    kernel_id = started.json()["id"]
    try:
        asyncio.run(_run_cells(notebook, server.runtime_dir / f"kernel-{kernel_id}.json"))
    except CellExecutionError as error:
        pytest.fail(f"{name} failed in Jupyter's kernel:\n{error}")
    finally:
        requests.delete(f"{kernels}/{kernel_id}", headers=server.headers, timeout=60)
    return notebook


def test_build_a_cohort_in_jupyter_uses_its_sandbox(demo_jupyter: JupyterProcess) -> None:
    notebook = _execute_in_jupyter(demo_jupyter, "01-build-a-cohort.ipynb")
    text = _outputs(notebook)
    # the first cell found the Jupyter server's sandbox, behind Jupyter's token
    assert f"Bridge(fhir='{demo_jupyter.imagingkit}/fhir'" in text
    assert "CapabilityStatement" in text
    assert "_has:Condition:subject:code=" in text
    assert "InvalidUIDError" in text and "1.2.abc" in text


def test_context_sync_in_jupyter_shares_its_hub(demo_jupyter: JupyterProcess) -> None:
    notebook = _execute_in_jupyter(demo_jupyter, "04-context-sync.ipynb")
    text = _outputs(notebook)
    # the PACS read its worklist and joined the hub inside Jupyter, with the token
    assert f"PACS: worklist of 3 studies from {demo_jupyter.imagingkit}/fhir" in text
    assert "PACS: received the notebook's selection: MRI BRAIN" in text
    assert "follow callback runs (unchanged): 3" in text
    assert "PACS exit status: 0" in text
    assert "current study: None" in text, text[-2000:]


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
