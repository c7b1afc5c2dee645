"""Run the app on a loopback port in a background thread, for tests and notebooks.

>>> with serving([store]) as origin:          # doctest: +SKIP
...     requests.get(f"{origin}/fhir/metadata")
>>> with serving_store(tmp_path) as (base, store):   # doctest: +SKIP
...     requests.get(f"{base}/Patient")
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

from imagingkit.config import Settings
from imagingkit.sandbox.fhir.store import FhirStore
from imagingkit.server.app import Component, make_app

__all__ = ["serving", "serving_app", "serving_store"]


@contextmanager
def serving_app(
    app: tornado.web.Application | Callable[[], tornado.web.Application],
    *,
    timeout: float = 10.0,
    max_body_size: int | None = None,
) -> Iterator[str]:
    """Serve a tornado application on ``127.0.0.1`` (a free port) on a thread until the block ends.

    Parameters
    ----------
    app : tornado.web.Application or callable
        The application, or a factory called on the server's own event loop (for
        components that start periodic work when the app is made).
    timeout : float
        Seconds to wait for the server to start and to stop.
    max_body_size : int, optional
        The largest request body accepted (tornado's default when omitted).

    Yields
    ------
    str
        The origin, e.g. ``"http://127.0.0.1:41234"`` (no trailing slash).
    """
    ready = threading.Event()
    state: dict[str, Any] = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)

        async def start() -> None:
            application = app if isinstance(app, tornado.web.Application) else app()
            sockets = tornado.netutil.bind_sockets(0, address="127.0.0.1")
            server = tornado.httpserver.HTTPServer(application, max_body_size=max_body_size)
            server.add_sockets(sockets)
            state["port"] = sockets[0].getsockname()[1]
            state["stop"] = asyncio.Event()
            ready.set()
            await state["stop"].wait()
            server.stop()
            await asyncio.wait_for(server.close_all_connections(), timeout=timeout)

        state["loop"] = loop
        try:
            loop.run_until_complete(start())
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="imagingkit-test-server", daemon=True)
    thread.start()
    if not ready.wait(timeout):
        raise RuntimeError("the test server did not start in time")
    try:
        yield f"http://127.0.0.1:{state['port']}"
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(timeout)


@contextmanager
def serving(
    components: Sequence[Component], *, base_url: str = "/", timeout: float = 10.0
) -> Iterator[str]:
    """Serve *components* on ``127.0.0.1`` (a free port) until the block ends.

    Parameters
    ----------
    components : sequence of Component
    base_url : str
        The app's path prefix (e.g. ``"/user/x/imagingkit/"`` as under Jupyter).
    timeout : float
        Seconds to wait for the server to start and to stop.

    Yields
    ------
    str
        The origin, e.g. ``"http://127.0.0.1:41234"`` (no trailing slash).
    """
    with serving_app(
        lambda: make_app(components, base_url=base_url), timeout=timeout, max_body_size=2**31
    ) as origin:
        yield origin


@contextmanager
def serving_store(
    folder: Path, *, base_url: str = "/", name: str = "test"
) -> Iterator[tuple[str, FhirStore]]:
    """Open a :class:`FhirStore` in *folder* and serve it on loopback until the block ends.

    Yields
    ------
    tuple
        ``(FHIR base URL without trailing slash, the store)``.
    """
    store = FhirStore.for_data_dir(folder, name, settings=Settings(data_dir=folder))
    prefix = "/" + base_url.strip("/") + "/" if base_url.strip("/") else "/"
    try:
        with serving([store], base_url=base_url) as origin:
            yield f"{origin}{prefix}{store.mount}", store
    finally:
        store.close()
