"""Install and run sekmet-fhir, an independent FHIR R4 server with Backport Subscriptions.

sekmet-fhir (PyPI, Apache-2.0, FastAPI + SQLite) delivers Backport topic-based
notifications on the rest-hook channel only. Its dependencies (pydantic 2, fhir.resources
8) conflict with the project's test extra, so it gets a venv of its own under
``.cache/sekmet-venv-<hash>``, created here from the pinned ``sekmet-requirements.txt``
(packages by name) and reused while that file is unchanged. Its observed deviations
from the Backport IG are listed in shared/notes/reference-servers.md.

The server listens on 127.0.0.1 (a free port), keeps its SQLite database in the test's
folder and is stopped by PID.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests
from servers import ServerStartError, _die_with_parent, _stop_process, _tail, free_port

__all__ = [
    "SEKMET_TOPIC",
    "SekmetServer",
    "ensure_sekmet",
    "running_sekmet",
    "start_sekmet",
]

REQUIREMENTS = Path(__file__).with_name("sekmet-requirements.txt")
CACHE = Path(__file__).resolve().parents[2] / ".cache"
_INSTALL_TIMEOUT = 900.0

#: the ImagingStudy topic the tests define on sekmet (it has none built in)
SEKMET_TOPIC = "http://imagingkit.invalid/sekmet/SubscriptionTopic/imagingstudy"
_ST = "http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic"


def _venv_dir() -> Path:
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12]
    return CACHE / f"sekmet-venv-{digest}"


def ensure_sekmet() -> Path:
    """The ``sekmet`` executable, installing its venv first if needed (one process at a
    time: a file lock; a half-made venv is removed and made again).

    Raises
    ------
    ServerStartError
        pip failed or took longer than 15 minutes; the message has pip's last lines.
    """
    venv = _venv_dir()
    executable = venv / "bin" / "sekmet"
    stamp = venv / ".installed"
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "sekmet-venv.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and executable.exists():
            return executable
        shutil.rmtree(venv, ignore_errors=True)
        log = CACHE / "sekmet-install.log"
        with log.open("wb") as sink:
            steps = [
                [sys.executable, "-m", "venv", str(venv)],
                [str(venv / "bin" / "python"), "-m", "pip", "install", "-r", str(REQUIREMENTS)],
            ]
            for step in steps:
                try:
                    code = subprocess.run(
                        step,
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        timeout=_INSTALL_TIMEOUT,
                        check=False,
                    ).returncode
                except subprocess.TimeoutExpired:
                    code = -1
                if code != 0:
                    raise ServerStartError(
                        f"installing sekmet-fhir failed ({' '.join(step[-3:])}):\n{_tail(log)}"
                    )
        stamp.write_text(REQUIREMENTS.read_text())
        return executable


@dataclass
class SekmetServer:
    """A running ``sekmet serve`` on loopback."""

    base: str  # FHIR base URL, no trailing slash
    process: subprocess.Popen[bytes]
    workdir: Path
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def log(self) -> Path:
        return self.workdir / "sekmet.log"

    def put(self, resource: dict[str, object]) -> dict[str, object]:
        """PUT *resource* (create or update); return it as stored."""
        answer = self.session.put(
            f"{self.base}/{resource['resourceType']}/{resource['id']}",
            data=json.dumps(resource),
            headers={"Content-Type": "application/fhir+json"},
            timeout=60,
        )
        if answer.status_code not in (200, 201):
            raise AssertionError(f"sekmet refused the PUT: {answer.status_code} {answer.text}")
        stored: dict[str, object] = answer.json()
        return stored

    def define_imagingstudy_topic(self) -> None:
        """Add the topic "ImagingStudy created or updated", filterable by ``patient``
        (a ``Basic`` with the R5 cross-version SubscriptionTopic extensions)."""
        trigger = [
            {"url": "resource", "valueUri": "http://hl7.org/fhir/StructureDefinition/ImagingStudy"},
            {"url": "supportedInteraction", "valueCode": "create"},
            {"url": "supportedInteraction", "valueCode": "update"},
        ]
        can_filter = [
            {"url": "resource", "valueUri": "ImagingStudy"},
            {"url": "filterParameter", "valueString": "patient"},
        ]
        self.put(
            {
                "resourceType": "Basic",
                "id": "topic-imagingstudy",
                "modifierExtension": [{"url": f"{_ST}.status", "valueCode": "active"}],
                "extension": [
                    {"url": f"{_ST}.url", "valueUri": SEKMET_TOPIC},
                    {"url": f"{_ST}.title", "valueString": "ImagingStudy created or updated"},
                    {"url": f"{_ST}.resourceTrigger", "extension": trigger},
                    {"url": f"{_ST}.canFilterBy", "extension": can_filter},
                ],
                "code": {
                    "coding": [
                        {"system": "http://hl7.org/fhir/fhir-types", "code": "SubscriptionTopic"}
                    ]
                },
            }
        )

    def stop(self, timeout: float = 20) -> int | None:
        """Stop the server (SIGTERM, then SIGKILL after *timeout*); return its exit code."""
        self.session.close()
        return _stop_process(self.process, signal.SIGTERM, timeout)


def _settings(workdir: Path, port: int) -> str:
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    settings = {
        "base_url": f"http://127.0.0.1:{port}/fhir",
        "host": "127.0.0.1",
        "port": port,
        "data_dir": str(data),
        "simulator": {"enabled": False},
        "log_inbound": False,
    }
    return json.dumps(settings)  # JSON is YAML


def start_sekmet(workdir: Path, timeout: float = 90, attempts: int = 3) -> SekmetServer:
    """Start sekmet-fhir with a fresh database in *workdir*; return once
    ``GET /fhir/metadata`` answers (retrying on a fresh port if one was taken).

    Raises
    ------
    ServerStartError
        It could not be installed, exited, or did not answer within *timeout* seconds.
    """
    executable = ensure_sekmet()
    workdir.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for attempt in range(attempts):
        port = free_port()
        config = workdir / "settings.yaml"
        config.write_text(_settings(workdir, port))
        log = workdir / "sekmet.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                [str(executable), "serve", "-c", str(config)],
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=workdir,
                preexec_fn=_die_with_parent,
            )
        server = SekmetServer(f"http://127.0.0.1:{port}/fhir", proc, workdir)
        server.session.trust_env = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(requests.ConnectionError, requests.Timeout):
                if server.session.get(f"{server.base}/metadata", timeout=5).status_code == 200:
                    return server
            time.sleep(0.2)
        server.stop()
        last_error = f"attempt {attempt + 1} on port {port}:\n{_tail(log)}"
    raise ServerStartError(f"sekmet-fhir did not become ready within {timeout} s; {last_error}")


@contextlib.contextmanager
def running_sekmet(workdir: Path) -> Iterator[SekmetServer]:
    """:func:`start_sekmet` with the ImagingStudy topic defined, stopped at the end."""
    server = start_sekmet(workdir)
    try:
        server.define_imagingstudy_topic()
        yield server
    finally:
        server.stop()
