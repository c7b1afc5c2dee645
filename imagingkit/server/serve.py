"""Run the imagingkit app standalone: ``imagingkit serve`` (DESIGN.md D3, D4).

Binds loopback by default, prints its base URLs once the socket is listening (so a
script can wait for the ``ready`` line), and stops cleanly on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import tornado.httpserver
import tornado.netutil

from imagingkit.config import Settings
from imagingkit.errors import SandboxError
from imagingkit.server.app import Component, make_app, mounted_urls

__all__ = ["build_components", "serve"]

log = logging.getLogger("imagingkit.serve")


def build_components(
    settings: Settings,
    *,
    sandbox: bool = False,
    dicom_dir: Path | None = None,
    size: str = "default",
    seed: int = 42,
    ohif: Path | None = None,
    auth: bool | Path = False,
) -> list[Component]:
    """Create the served components for the chosen data source.

    Parameters
    ----------
    settings : Settings
        Where data and indexes live (``settings.data_dir``).
    sandbox : bool
        Serve the generated sandbox cohort (generated on first use, then cached).
    dicom_dir : Path, optional
        Serve the user's own folder of Part-10 files instead.
    size : {"small", "default", "medium", "large"}
        Sandbox size.
    seed : int
        Sandbox seed; the same seed always gives the same data.
    ohif : Path, optional
        A built OHIF app (``dist/`` of npm ``@ohif/app``) to serve at ``/ohif/`` as the
        IID facade's default viewer.
    auth : bool or Path
        ``True`` or a client registry file: serve a SMART Backend Services token endpoint
        at ``/auth/`` and make the FHIR and DICOMweb stores answer only to its tokens,
        each limited to its patients (:mod:`imagingkit.sandbox.token_endpoint`); the
        FHIRcast hub then checks the same tokens' ``fhircast/{Event}.read|write`` scopes
        (FHIRcast 3.0.0 ``2-2``) and caps leases at their expiry. With ``True`` the
        clients and their keys are generated in ``DATA_DIR/auth/<store>/``.

    Returns
    -------
    list of Component
    """
    from imagingkit.fhircast.hub import FhircastHub
    from imagingkit.iid.facade import IidFacade
    from imagingkit.sandbox.clinical import populate_fhir_store, sync_imaging_from_index
    from imagingkit.sandbox.dicomweb_store import DicomWebStore
    from imagingkit.sandbox.fhir import FhirStore
    from imagingkit.sandbox.generate import ensure_sandbox
    from imagingkit.sandbox.token_endpoint import AuthServer, ClientRegistry
    from imagingkit.viewer import BuiltinViewer
    from imagingkit.viewer.ohif import OHIFApp

    if sandbox == (dicom_dir is not None):
        raise SandboxError("choose exactly one of --sandbox and --dicom-dir")
    ohif_app = None if ohif is None else OHIFApp(ohif)  # checks DIR before the slow work
    clients = None if isinstance(auth, bool) else ClientRegistry.from_file(Path(auth))  # same
    if dicom_dir is not None:
        root = Path(dicom_dir).expanduser().resolve()
        if not root.is_dir():
            raise SandboxError(f"--dicom-dir {str(root)!r} is not a folder")
        store = DicomWebStore.for_folder(root, settings=settings)
        fhir_name = "folder-" + hashlib.sha256(str(root).encode()).hexdigest()[:16]
    else:
        root = ensure_sandbox(settings.data_dir, size=size, seed=seed)
        store = DicomWebStore.for_folder(root, settings=settings)
        fhir_name = f"sandbox-{size}-{seed}"
    fhir = FhirStore.for_data_dir(settings.data_dir, fhir_name, settings=settings)
    populate_fhir_store(fhir, store.index)  # the clinical record / DICOMcast-like sync
    # and as files arrive through STOW-RS (DICOMcast-like, without waiting for a restart)
    store.on_stored.append(lambda uids: sync_imaging_from_index(fhir, store.index, study_uids=uids))
    iid = IidFacade(timeout=settings.timeout, ohif=ohif_app is not None)
    components: list[Component] = [store, fhir, iid, BuiltinViewer(), FhircastHub()]
    if auth:  # guards the stores and gives the hub this server's tokens
        folder = Path(settings.data_dir) / "auth" / fhir_name
        components = AuthServer.for_sandbox(folder, fhir, registry=clients).protect(components)
    if ohif_app is not None:  # last: it answers file paths at the root
        ohif_app.reserved = tuple(c.mount for c in components)
        components.append(ohif_app)
    return components


def serve(
    components: Sequence[Component],
    *,
    host: str = "127.0.0.1",
    port: int = 8042,
    base_url: str = "/",
    out: TextIO = sys.stdout,
) -> None:
    """Serve *components* until SIGINT or SIGTERM.

    Parameters
    ----------
    components : sequence of Component
    host : str
        Interface to bind; loopback by default.
    port : int
        TCP port; ``0`` picks a free one (the chosen port is printed).
    base_url : str
        Path prefix of every route.
    out : TextIO
        Where the ready message goes.
    """

    async def main() -> None:
        app = make_app(components, base_url=base_url)
        sockets = tornado.netutil.bind_sockets(port, address=host)
        server = tornado.httpserver.HTTPServer(app, max_body_size=2**40, max_buffer_size=2**31)
        server.add_sockets(sockets)
        bound = sockets[0].getsockname()[1]
        shown_host = f"[{host}]" if ":" in host else host
        origin = f"http://{shown_host}:{bound}"
        print(f"imagingkit ready on {origin}/", file=out)
        for mount, url in mounted_urls(origin, components, base_url).items():
            print(f"  {mount:<10} {url}/", file=out)
        out.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("imagingkit stopping", file=out)
        out.flush()
        server.stop()
        await asyncio.wait_for(server.close_all_connections(), timeout=5)
        for component in components:
            close = getattr(component, "close", None)
            if close is not None:
                close()

    asyncio.run(main())
