"""``find_or_start()`` in a kernel of a real Jupyter server: ``make demo``'s first run.

The server's extension serves the sandbox (``IMAGINGKIT_SANDBOX=1``) and answers 503 while
it prepares the data; a notebook's first cell must wait for it, say so, and then use that
sandbox with Jupyter's token — never start a second sandbox of its own. The "first run" is
made deterministic by holding the generator's lock (as a concurrent generator would) until
the kernel has said that it waits.
"""

from __future__ import annotations

import fcntl
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from kernels import read_output
from servers import (
    JupyterProcess,
    _stop_process,
    cached_sandbox_data_dir,
    jupyter_env,
    start_jupyter,
)

from imagingkit.sandbox.generate import sandbox_path

FIRST_CELL = """
from imagingkit.sandbox.running import find_or_start

sandbox = find_or_start(size="small", wait=240)
print("where:", sandbox.where, "| fhir:", sandbox.fhir_url, "| hub:", sandbox.hub_url)
print("token is Jupyter's:", sandbox.token == {token!r})
print("header for its origin:", sorted(sandbox.headers_for(sandbox.fhir_url)))
print("header for another origin:", sandbox.headers_for("http://127.0.0.1:1/fhir"))
print("studies:", len(sandbox.connect().cohort().studies(level="study")))
"""


@contextmanager
def _server(tmp: Path, **variables: str) -> Iterator[JupyterProcess]:
    env = jupyter_env(tmp)
    env.update(variables)
    server = start_jupyter(tmp, env, root_dir=tmp)
    try:
        yield server
    finally:
        _stop_process(server.process, signal.SIGTERM, 30)


@contextmanager
def _kernel(server: JupyterProcess, timeout: float = 120) -> Iterator[Any]:
    """A kernel started by *server* (``POST /api/kernels``); yield a blocking client."""
    from jupyter_client import BlockingKernelClient

    kernels = f"{server.origin}{server.base_url}api/kernels"
    deadline = time.monotonic() + timeout
    while True:  # the REST API answers as soon as the server listens
        try:
            started = requests.post(
                kernels, json={"name": "python3"}, headers=server.headers, timeout=60
            )
            break
        except requests.ConnectionError:
            if time.monotonic() > deadline or server.process.poll() is not None:
                raise
            time.sleep(0.2)
    assert started.status_code == 201, started.text
    kernel_id = started.json()["id"]
    client = BlockingKernelClient(
        connection_file=str(server.runtime_dir / f"kernel-{kernel_id}.json")
    )
    client.load_connection_file()
    # no heartbeat channel: on a loaded machine a late beat reads as a dead kernel;
    # readiness is the kernel_info reply, within the timeout
    client.start_channels(hb=False)
    try:
        client.wait_for_ready(timeout=timeout)
        yield client
    finally:
        client.stop_channels()
        requests.delete(f"{kernels}/{kernel_id}", headers=server.headers, timeout=60)


def test_first_run_the_notebook_waits_for_jupyters_sandbox_and_uses_it(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "cache" / "imagingkit"  # the server's default data dir
    final = sandbox_path(data_dir, "small", 42)
    final.parent.mkdir(parents=True)
    with (final.parent / f".{final.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the extension's generator waits for this lock
        with _server(tmp_path, IMAGINGKIT_SANDBOX_SIZE="small") as server, _kernel(server) as kc:
            msg_id = kc.execute(FIRST_CELL.format(token=server.token))
            waiting = read_output(kc, msg_id, "Waiting (at most 240 s)", timeout=120)
            assert "sandbox of this Jupyter server" in waiting
            assert server.get("/dicom-web/studies").status_code == 503  # still preparing
            # "another process" finishes the data, as a concurrent generator would
            shutil.copytree(cached_sandbox_data_dir() / "sandbox" / final.name, final)
            fcntl.flock(lock, fcntl.LOCK_UN)
            text = waiting + read_output(kc, msg_id, timeout=240)
            count = server.get("/fhir/ImagingStudy", params={"_summary": "count"}).json()
    assert "The sandbox is ready" in text
    urls = f"fhir: {server.imagingkit}/fhir | hub: {server.imagingkit}/fhircast"
    assert f"where: jupyter | {urls}" in text
    assert "token is Jupyter's: True" in text
    assert "header for its origin: ['Authorization']" in text
    assert "header for another origin: {}" in text  # DESIGN.md D7
    assert f"studies: {count['total']}" in text and count["total"] > 0


def test_a_failed_sandbox_is_named_not_replaced(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"  # the data dir cannot be created: a file is there
    blocker.write_text("")
    with _server(tmp_path, IMAGINGKIT_DATA_DIR=str(blocker)) as server, _kernel(server) as kc:
        code = (
            "from imagingkit.errors import SandboxError\n"
            "from imagingkit.sandbox.running import find_or_start\n"
            "try:\n"
            "    find_or_start(wait=120)\n"
            "except SandboxError as error:\n"
            "    print('SandboxError:', error)\n"
        )
        text = read_output(kc, kc.execute(code), timeout=180)
    assert "SandboxError: the imagingkit extension failed to start" in text
    assert "not-a-folder" in text
