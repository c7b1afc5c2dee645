"""Helpers of the test fixtures: Orthanc, ``imagingkit serve``, Jupyter, the cached sandbox.

Every server listens on loopback, every wait has a timeout, and each helper stops only
the process it started, by its PID. Import from here (``from servers import …``), not from
``conftest``: several ``conftest.py`` files share that module name.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

__all__ = [
    "IDENTITY",
    "ORTHANC_BINARY",
    "ORTHANC_DICOMWEB_PLUGIN",
    "SANDBOX_SEED",
    "SANDBOX_SIZE",
    "ImagingkitServer",
    "JupyterProcess",
    "OrthancServer",
    "RawResponse",
    "ServerStartError",
    "UploadReport",
    "cached_sandbox_data_dir",
    "chromium_browser",
    "free_port",
    "imagingkit_command",
    "jupyter_env",
    "listening_addresses",
    "multipart_parts",
    "orthanc_missing_reason",
    "raw_get",
    "start_imagingkit",
    "start_jupyter",
    "start_orthanc",
    "subprocess_env",
]

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

#: ``Accept-Encoding: identity``: Orthanc gzips every answer a client allows it to
#: (≈ 46 ms of CPU per instance), which is never what a test or a benchmark wants.
IDENTITY = {"Accept-Encoding": "identity"}

_READY = re.compile(r"^imagingkit ready on (?P<url>http://\S+/)\s*$")
_MOUNT = re.compile(r"^\s+(?P<mount>\S+)\s+(?P<url>http://\S+)\s*$")


class ServerStartError(RuntimeError):
    """A server did not become ready; the message carries the tail of its log."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """In the child before exec: have Linux SIGTERM it when its parent dies.

    ``prctl(PR_SET_PDEATHSIG)``: a test run killed hard (timeout, Ctrl-C twice) then leaves
    no server behind. The parent is the *thread* that started the child, so start servers
    from a thread that outlives them (fixtures run on the main thread).
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no log>"
    return "\n".join(text.splitlines()[-lines:])


def _stop_process(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> int | None:
    """Send *sig* to *proc*; return its exit code, or None if it had to be killed."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return None


def listening_addresses(port: int) -> set[str]:
    """Return the local addresses of the TCP sockets listening on *port*.

    Reads ``/proc/net/tcp`` and ``/proc/net/tcp6`` (Linux), so it sends no traffic.
    IPv4 addresses come back dotted (``"127.0.0.1"``, ``"0.0.0.0"``), IPv6 ones in
    ``socket.inet_ntop`` form (``"::1"``, ``"::"``).
    """
    found: set[str] = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            local, state = cols[1], cols[3]
            address_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A = TCP_LISTEN
                continue
            raw = bytes.fromhex(address_hex)
            # the kernel prints each 32-bit word in host (little-endian) order
            words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]
            found.add(socket.inet_ntop(family, b"".join(words)))
    return found


REPO = Path(__file__).resolve().parent.parent
#: generated sandboxes cached between sessions (gitignored), keyed by generator source
TEST_DATA_CACHE = REPO / ".cache" / "test-data"
SANDBOX_SIZE = "small"
SANDBOX_SEED = 42
#: modules of imagingkit.sandbox that serve data rather than generate it; changing them
#: does not invalidate the cached sandbox
_SERVING_MODULES = {"dicom_index.py", "qido.py", "stow.py", "dicomweb_store.py", "wado.py"}


# --------------------------------------------------------------------------- sandbox data cache


def _generator_fingerprint() -> str:
    digest = hashlib.sha256()
    for path in sorted((REPO / "imagingkit" / "sandbox").glob("*.py")):
        if path.name not in _SERVING_MODULES:
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _prune_stale(current: Path, unused_for: float = 3600) -> None:
    """Delete cached sandboxes of older generator versions unused for *unused_for* s."""
    prefix = current.name.rsplit("-", 1)[0] + "-"
    for entry in current.parent.glob(f"{prefix}*"):
        if entry == current or not entry.is_dir():
            continue
        if time.time() - entry.stat().st_mtime > unused_for:
            shutil.rmtree(entry, ignore_errors=True)
            entry.with_name(f"{entry.name}.lock").unlink(missing_ok=True)


def cached_sandbox_data_dir(size: str = SANDBOX_SIZE, seed: int = SANDBOX_SEED) -> Path:
    """Return a data dir holding the generated sandbox of *size*, generating it once.

    The data dir lives in ``.cache/test-data`` keyed by the generator's source, so a
    change to the generator regenerates it, and concurrent test sessions wait for one
    another (a file lock) instead of generating twice.
    """
    from imagingkit.sandbox.generate import ensure_sandbox

    data_dir = TEST_DATA_CACHE / f"{size}-seed{seed}-{_generator_fingerprint()}"
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.touch()  # in use: keep it from being pruned
    _prune_stale(data_dir)
    with (TEST_DATA_CACHE / f"{data_dir.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            ensure_sandbox(data_dir, size=size, seed=seed)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return data_dir


# --------------------------------------------------------------------------- Orthanc


def orthanc_missing_reason() -> str | None:
    """Return why Orthanc cannot run here, or None if it can."""
    if not ORTHANC_BINARY.exists() or not ORTHANC_DICOMWEB_PLUGIN.exists():
        return "Orthanc not installed: apt-get install orthanc orthanc-dicomweb"
    return None


@dataclass
class UploadReport:
    """What Orthanc said about each uploaded file."""

    #: files Orthanc stored for the first time
    stored: list[Path] = field(default_factory=list)
    #: files whose SOP Instance UID Orthanc already had (it keeps the first one)
    duplicates: list[Path] = field(default_factory=list)
    #: files Orthanc refused, with its message
    refused: dict[Path, str] = field(default_factory=dict)


@dataclass
class OrthancServer:
    """A running Orthanc with its DICOMweb plugin, on loopback."""

    url: str
    process: subprocess.Popen[bytes]
    workdir: Path
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def dicomweb(self) -> str:
        """The DICOMweb base URL, without a trailing slash."""
        return f"{self.url}/dicom-web"

    @property
    def log(self) -> Path:
        return self.workdir / "orthanc.log"

    def upload(self, paths: Iterable[Path]) -> UploadReport:
        """Store Part-10 files through the REST API (``POST /instances``)."""
        report = UploadReport()
        for path in paths:
            response = self.session.post(
                f"{self.url}/instances",
                data=Path(path).read_bytes(),
                headers={**IDENTITY, "Content-Type": "application/dicom"},
                timeout=60,
            )
            if response.status_code != 200:
                report.refused[Path(path)] = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            status = response.json().get("Status")
            if status == "AlreadyStored":
                report.duplicates.append(Path(path))
            else:
                report.stored.append(Path(path))
        return report

    def stop(self, timeout: float = 30) -> int | None:
        """Stop Orthanc (SIGTERM, then SIGKILL after *timeout*); return its exit code."""
        self.session.close()
        return _stop_process(self.process, signal.SIGTERM, timeout)


def _orthanc_config(workdir: Path, http_port: int) -> dict[str, object]:
    storage = workdir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    return {
        "Name": "imagingkit-test",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        # Orthanc 1.10 has no bind-address option: it listens on every interface but
        # answers loopback clients only.
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        # No DIMSE listener: the tests speak DICOMweb only, so no second open port.
        "DicomServerEnabled": False,
        "DicomPort": free_port(),
        "HttpCompressionEnabled": False,
        "StorageCompression": False,
        "ConcurrentJobs": 2,
        "Plugins": [str(ORTHANC_DICOMWEB_PLUGIN)],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": False,
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        },
    }


def start_orthanc(workdir: Path, timeout: float = 60, attempts: int = 3) -> OrthancServer:
    """Start ``/usr/sbin/Orthanc`` with a temporary configuration in *workdir*.

    Returns once ``GET /system`` answers. Retries on a fresh port if the first one was
    taken in the meantime.

    Raises
    ------
    ServerStartError
        If Orthanc exits or does not answer within *timeout* seconds.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for attempt in range(attempts):
        port = free_port()
        config = workdir / "orthanc.json"
        config.write_text(json.dumps(_orthanc_config(workdir, port), indent=2))
        log = workdir / "orthanc.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                [str(ORTHANC_BINARY), str(config)],
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=workdir,
                preexec_fn=_die_with_parent,
            )
        server = OrthancServer(url=f"http://127.0.0.1:{port}", process=proc, workdir=workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if server.session.get(f"{server.url}/system", timeout=2).status_code == 200:
                    return server
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        server.stop()
        last_error = f"attempt {attempt + 1} on port {port}:\n{_tail(log)}"
    raise ServerStartError(f"Orthanc did not become ready within {timeout} s; {last_error}")


# --------------------------------------------------------------------------- imagingkit


@dataclass
class ImagingkitServer:
    """A running ``imagingkit serve`` subprocess."""

    #: the origin with a trailing slash, as printed in the ready line
    url: str
    #: mount name → base URL (with a trailing slash), as printed
    mounts: dict[str, str]
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def port(self) -> int:
        return int(self.url.rstrip("/").rsplit(":", 1)[1])

    @property
    def dicomweb(self) -> str:
        """The DICOMweb base URL, without a trailing slash."""
        return self.mounts["dicom-web"].rstrip("/")

    @property
    def output(self) -> str:
        """Everything the server printed so far (stdout and stderr)."""
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        """Send *sig*; return the exit code, or None if it had to be killed."""
        return _stop_process(self.process, sig, timeout)


def imagingkit_command(*args: str) -> list[str]:
    """Return the command line running the imagingkit CLI of this interpreter."""
    return [sys.executable, "-m", "imagingkit", *args]


def subprocess_env(data_dir: Path) -> dict[str, str]:
    """Return an environment for an imagingkit subprocess keeping its data in *data_dir*."""
    env = dict(os.environ)
    env["IMAGINGKIT_DATA_DIR"] = str(data_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_imagingkit(
    args: Sequence[str], log: Path, data_dir: Path, timeout: float = 120
) -> ImagingkitServer:
    """Run ``imagingkit serve ARGS`` and wait for its ready line and mount lines.

    Raises
    ------
    ServerStartError
        If the process exits or prints no ready line within *timeout* seconds.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            imagingkit_command("serve", *args),
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=subprocess_env(data_dir),
            preexec_fn=_die_with_parent,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log.read_text(errors="replace").splitlines()
        for i, line in enumerate(lines):
            ready = _READY.match(line)
            if not ready:
                continue
            mounts = {}
            for later in lines[i + 1 :]:
                found = _MOUNT.match(later)
                if not found:
                    break
                mounts[found["mount"]] = found["url"]
            # the mount lines are flushed together with the ready line
            if mounts:
                return ImagingkitServer(ready["url"], mounts, proc, log)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    exited = proc.poll()
    _stop_process(proc, signal.SIGTERM, 10)
    what = f"exited with {exited}" if exited is not None else f"was not ready within {timeout} s"
    raise ServerStartError(f"imagingkit serve {' '.join(args)} {what}:\n{_tail(log)}")


# --------------------------------------------------------------------------- raw HTTP


@dataclass
class RawResponse:
    """An HTTP answer read whole."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body) if self.body else None


def raw_get(base: str, target: str, accept: str | None = None, timeout: float = 60) -> RawResponse:
    """GET ``base + target`` sending *target* byte for byte (no percent-encoding).

    ``requests`` and ``urllib3`` re-quote characters such as ``^``, and Orthanc does not
    percent-decode query values, so comparisons of the two servers send raw targets.
    Header names in the answer are lower-cased.
    """
    origin, _, prefix = base.partition("://")[2].partition("/")
    host, _, port = origin.partition(":")
    path = "/" + prefix.strip("/") + target if prefix.strip("/") else target
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        headers = dict(IDENTITY)
        if accept:
            headers["Accept"] = accept
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return RawResponse(
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
        )
    finally:
        conn.close()


def multipart_parts(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Split a ``multipart/related`` body (RFC 2387) into (headers, content) pairs."""
    params = dict(
        (key.strip().lower(), value.strip().strip('"'))
        for key, _, value in (item.partition("=") for item in content_type.split(";")[1:])
    )
    boundary = params.get("boundary")
    if not boundary:
        raise ValueError(f"no boundary in Content-Type {content_type!r}")
    parts = []
    for chunk in (b"\r\n" + body).split(b"\r\n--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("multipart part without a blank line after its headers")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        parts.append((headers, content))
    return parts


# --------------------------------------------------------------------------- Jupyter


JUPYTER_START_TIMEOUT = 240  # a cold index of the small sandbox on a loaded 2-core machine


@dataclass
class JupyterProcess:
    """A running ``jupyter server`` with the imagingkit extension."""

    process: subprocess.Popen[bytes]
    origin: str
    token: str
    log: Path
    runtime_dir: Path
    #: ``/`` or e.g. ``/user/ada/`` (leading and trailing slash)
    base_url: str = "/"

    @property
    def imagingkit(self) -> str:
        """``{origin}{base_url}imagingkit`` without a trailing slash."""
        return f"{self.origin}{self.base_url}imagingkit"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def get(self, path: str, **kwargs: object) -> requests.Response:
        """GET ``{imagingkit}{path}`` with the token (unless *headers* are given)."""
        kwargs.setdefault("headers", self.headers)
        kwargs.setdefault("timeout", 60)
        return requests.get(f"{self.imagingkit}{path}", **kwargs)  # type: ignore[arg-type]

    def wait_ready(self, timeout: float = JUPYTER_START_TIMEOUT) -> dict[str, object]:
        """Wait until the extension's status is ``ready``; return the status document."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(f"jupyter server exited:\n{_tail(self.log)}")
            try:
                answer = self.get("/", timeout=10)
                last = (answer.status_code, answer.text[:300])
                if answer.status_code == 200 and answer.json()["status"] == "ready":
                    return dict(answer.json())
                if answer.status_code not in (200, 404):  # 404 before the extension loads
                    raise ServerStartError(f"unexpected answer {last!r}:\n{_tail(self.log)}")
            except requests.ConnectionError as exc:
                last = exc
            time.sleep(0.5)
        raise ServerStartError(f"not ready within {timeout} s ({last!r}):\n{_tail(self.log)}")


def jupyter_env(tmp: Path) -> dict[str, str]:
    """The environment of a Binder user: imagingkit's default data dir under ``tmp/cache``,
    no ``IMAGINGKIT_*`` or ``JUPYTER*`` variable, no user or machine Jupyter config (only
    ``sys.prefix``'s, which ``pip install`` wrote), runtime files in ``tmp/runtime``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGINGKIT_", "JUPYTER"))}
    env.update(
        {
            "XDG_CACHE_HOME": str(tmp / "cache"),  # the default data dir: …/cache/imagingkit
            "JUPYTER_CONFIG_DIR": str(tmp / "config"),
            "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def start_jupyter(
    tmp: Path,
    env: dict[str, str],
    *,
    root_dir: Path,
    base_url: str = "/",
    app: str = "jupyter_server",
    binder: bool = True,
    options: Sequence[str] = (),
) -> JupyterProcess:
    """Run ``binder/start python -m jupyter_server`` on loopback with a fresh token.

    ``binder/start`` turns the extension's sandbox on (``binder=False`` runs the app
    directly); *app* may be ``"jupyterlab"``; *options* are more command-line options.
    The server's log is ``tmp/jupyter.log`` and its runtime files (``jpserver-<pid>.json``,
    kernel connection files) are in ``env["JUPYTER_RUNTIME_DIR"]``. Returns once the
    process runs (see :meth:`JupyterProcess.wait_ready`).
    """
    port = free_port()
    token = secrets.token_hex(16)
    command = [
        *([str(REPO / "binder" / "start")] if binder else []),
        sys.executable,
        "-m",
        app,
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.base_url={base_url}",
        f"--ServerApp.root_dir={root_dir}",
        f"--IdentityProvider.token={token}",
        *options,
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log = tmp / "jupyter.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=tmp,
            preexec_fn=_die_with_parent,
        )
    origin = f"http://127.0.0.1:{port}"
    return JupyterProcess(process, origin, token, log, Path(env["JUPYTER_RUNTIME_DIR"]), base_url)


# --------------------------------------------------------------------------- Chromium

CHROMIUM = Path("/usr/bin/chromium")


@contextlib.contextmanager
def chromium_browser() -> Iterator[Any]:
    """Debian's headless Chromium driven by Playwright (never ``playwright install``).

    Skips when either is missing (which fails under ``CI=true``, see ``conftest.py``).
    """
    import pytest

    if not CHROMIUM.exists():
        pytest.skip("Chromium missing: apt-get install -y chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright missing: pip install playwright (never 'playwright install')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            yield browser
        finally:
            browser.close()
