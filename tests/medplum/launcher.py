"""Start and stop the reference FHIR R4 engine: Medplum's FhirRouter over MemoryRepository.

``server.mjs`` beside this file serves it on loopback (see its header). This module
installs its npm packages when they are missing (``npm ci``, bounded in time), starts it on
a free port chosen by the OS, waits for it (bounded), loads resources into it with PUT in
transaction Bundles (so ids stay the ones we chose), and stops it by its own PID.
Used by ``tests/test_fhir_differential_medplum.py`` and ``bench/fhir_store_vs_medplum.py``.
"""

from __future__ import annotations

import fcntl
import hashlib
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from imagingkit.sandbox.clinical import transaction_bundle

__all__ = [
    "MEDPLUM_DIR",
    "MedplumServer",
    "MedplumStartError",
    "medplum_missing_reason",
    "put_bundles",
    "start_medplum",
]

MEDPLUM_DIR = Path(__file__).resolve().parent
#: Medplum 4.5 declares Node ``^20.19.0 || >=22.12.0``
_MIN_NODE = (20, 19)
_READY = re.compile(r"^medplum ready on (?P<url>http://\S+/)\s*$")
#: Medplum refuses a transaction with more than 50 update operations
MAX_TRANSACTION_ENTRIES = 50


class MedplumStartError(RuntimeError):
    """The Medplum script did not become ready; the message carries its output."""


def _node_version(node: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=20, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"v(\d+)\.(\d+)", out.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


def _installed() -> bool:
    return all(
        (MEDPLUM_DIR / "node_modules" / "@medplum" / name / "package.json").exists()
        for name in ("core", "definitions", "fhir-router")
    )


def _install(npm: str, timeout: float) -> str | None:
    """Run ``npm ci`` once (a file lock serialises concurrent sessions); return an error."""
    # the lock lives outside the work tree (npm ci empties node_modules)
    digest = hashlib.sha256(str(MEDPLUM_DIR).encode()).hexdigest()[:12]
    with (Path(tempfile.gettempdir()) / f"imagingkit-npm-{digest}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _installed():
                return None
            try:
                done = subprocess.run(
                    [npm, "ci", "--no-audit", "--no-fund", "--prefix", str(MEDPLUM_DIR)],
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"npm ci in {MEDPLUM_DIR} failed: {exc}"
            if done.returncode != 0 or not _installed():
                return f"npm ci in {MEDPLUM_DIR} failed: {done.stderr.strip()[-500:]}"
            return None
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def medplum_missing_reason(*, install: bool = True, timeout: float = 600) -> str | None:
    """Return why the Medplum engine cannot run here, or ``None`` if it can.

    Installs the npm packages (``npm ci --prefix tests/medplum``) when *install* and they
    are missing.
    """
    node = shutil.which("node")
    if node is None:
        return "node not found: apt-get install nodejs npm (Node >= 20.19)"
    version = _node_version(node)
    if version is None or version < _MIN_NODE:
        return f"Node >= 20.19 needed for @medplum 4.5, found {version}"
    if _installed():
        return None
    npm = shutil.which("npm")
    if not install or npm is None:
        return f"Medplum npm packages missing: npm ci --prefix {MEDPLUM_DIR}"
    return _install(npm, timeout)


@dataclass
class MedplumServer:
    """A running ``server.mjs``: the FHIR base is :attr:`url` (with a trailing slash)."""

    url: str
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)
    session: requests.Session = field(default_factory=requests.Session)

    def get(self, path_and_query: str, timeout: float = 120) -> requests.Response:
        """GET a path relative to the FHIR base (e.g. ``"Patient?gender=female"``)."""
        return self.session.get(self.url + path_and_query.lstrip("/"), timeout=timeout)

    def post(self, path: str, body: Any, timeout: float = 300) -> requests.Response:
        """POST a JSON body to a path relative to the FHIR base (``""`` for a Bundle)."""
        return self.session.post(
            self.url + path.lstrip("/"),
            json=body,
            headers={"Content-Type": "application/fhir+json"},
            timeout=timeout,
        )

    def stop(self, timeout: float = 20) -> int | None:
        """Stop the script (SIGTERM to its own PID, SIGKILL after *timeout*)."""
        self.session.close()
        if self.process.poll() is not None:
            return self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            return None


def _pump(stream: Iterable[str], sink: list[str], ready: threading.Event) -> None:
    for line in stream:
        sink.append(line.rstrip("\n"))
        if _READY.match(line):
            ready.set()


def start_medplum(*, timeout: float = 90, max_old_space_mb: int = 6144) -> MedplumServer:
    """Start ``server.mjs`` on 127.0.0.1 with a free port; return once it answers searches.

    Parameters
    ----------
    timeout : float
        Seconds to wait for the ready line and a first successful search.
    max_old_space_mb : int
        Node heap limit (the benchmark holds tens of thousands of resources).

    Raises
    ------
    MedplumStartError
        If it exits or does not answer in time.
    """
    node = shutil.which("node") or "node"
    process = subprocess.Popen(
        [
            node,
            "--experimental-websocket",
            "--no-warnings",
            f"--max-old-space-size={max_old_space_mb}",
            str(MEDPLUM_DIR / "server.mjs"),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ],
        cwd=MEDPLUM_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    ready = threading.Event()
    assert process.stdout is not None
    threading.Thread(target=_pump, args=(process.stdout, output, ready), daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.2):
        if process.poll() is not None or time.monotonic() > deadline:
            _abandon(process)
            raise MedplumStartError("Medplum did not start:\n" + "\n".join(output[-40:]))
    match = next(m for m in map(_READY.match, output) if m)
    server = MedplumServer(url=match.group("url"), process=process, output=output)
    while time.monotonic() < deadline:
        try:
            if server.get("Patient?_count=0", timeout=5).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.2)
    server.stop()
    raise MedplumStartError("Medplum did not answer a search:\n" + "\n".join(output[-40:]))


def _abandon(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


def put_bundles(server: MedplumServer, resources: Sequence[dict[str, Any]]) -> None:
    """Load *resources* into Medplum with transaction Bundles of PUTs (ids kept).

    Raises
    ------
    AssertionError
        Naming the first entry Medplum refused.
    """
    for start in range(0, len(resources), MAX_TRANSACTION_ENTRIES):
        bundle = transaction_bundle(resources[start : start + MAX_TRANSACTION_ENTRIES])
        response = server.post("", bundle)
        if response.status_code != 200:
            raise AssertionError(f"Medplum refused a transaction: {response.text[:1000]}")
        for entry, sent in zip(response.json().get("entry", []), bundle["entry"], strict=False):
            status = entry.get("response", {}).get("status", "")
            if not status.startswith(("200", "201")):
                raise AssertionError(f"Medplum refused {sent['request']['url']}: {entry}")
