"""``imagingkit serve --sandbox --auth`` as a subprocess that can be restarted on its port.

Shared by the FHIRcast and token-refresh tests: the small sandbox (a private copy of the
cached data directory), the generated client registry and keys in
``DATA_DIR/auth/sandbox-<size>-<seed>/``.
"""

from __future__ import annotations

import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from servers import (
    SANDBOX_SEED,
    SANDBOX_SIZE,
    ImagingkitServer,
    cached_sandbox_data_dir,
    start_imagingkit,
)

from imagingkit import smart

__all__ = ["AuthSandboxProcess"]


@dataclass
class AuthSandboxProcess:
    """``imagingkit serve --sandbox --auth`` in *folder* (its data copy and its logs)."""

    folder: Path
    server: ImagingkitServer | None = None
    starts: int = 0

    @classmethod
    def started(cls, folder: Path) -> AuthSandboxProcess:
        """Copy the cached sandbox into *folder*/data and serve it on a free port."""
        shutil.copytree(cached_sandbox_data_dir(), folder / "data")
        process = cls(folder)
        process.start()
        return process

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def clients(self) -> Path:
        """Where the generated registry (``clients.json``) and private keys are."""
        return self.data_dir / "auth" / f"sandbox-{SANDBOX_SIZE}-{SANDBOX_SEED}"

    @property
    def token_url(self) -> str:
        return self.mount("auth") + "/token"

    def start(self, port: int = 0) -> None:
        self.starts += 1
        self.server = start_imagingkit(
            [
                "--sandbox",
                f"--size={SANDBOX_SIZE}",
                f"--seed={SANDBOX_SEED}",
                f"--port={port}",
                "--auth",
                f"--data-dir={self.data_dir}",
            ],
            log=self.folder / f"serve-{self.starts}.log",
            data_dir=self.data_dir,
        )

    def restart(self) -> None:
        """Stop and start on the same port: every issued token is forgotten."""
        assert self.server is not None
        port = self.server.port
        self.stop()
        self.start(port)
        assert self.server.port == port

    def stop(self) -> None:
        if self.server is not None:
            assert self.server.stop(signal.SIGTERM) == 0
            self.server = None

    def mount(self, name: str) -> str:
        """The base URL of a mount (``fhir``, ``dicom-web``, ``fhircast`` …), no trailing slash."""
        assert self.server is not None
        return self.server.mounts[name].rstrip("/")

    def pem(self, client_id: str) -> bytes:
        return (self.clients / f"{client_id}.pem").read_bytes()

    def credential(
        self, client_id: str = "imagingkit-system", scope: str = "system/*.rs"
    ) -> smart.SmartBackendServices:
        """A SMART Backend Services credential of a generated client."""
        return smart.SmartBackendServices(self.token_url, client_id, self.pem(client_id), scope)
