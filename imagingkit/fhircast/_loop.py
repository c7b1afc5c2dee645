"""An asyncio event loop on a daemon thread (DESIGN.md D2).

Notebook code calls plain functions while the kernel's own loop is running, so the
FHIRcast client never calls ``asyncio.run`` on the caller's thread: its network loop lives
here and the caller waits on ``concurrent.futures`` results with a timeout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from imagingkit.errors import FHIRcastError

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    """Run an event loop on a background daemon thread.

    Parameters
    ----------
    name : str
        Thread name (shows up in ``threading.enumerate()`` and profilers).
    """

    def __init__(self, name: str = "imagingkit-fhircast") -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        try:
            self.loop.run_forever()
        finally:
            tasks = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
            for task in tasks:
                task.cancel()
            if tasks:
                self.loop.run_until_complete(asyncio.wait(tasks, timeout=2))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    @property
    def alive(self) -> bool:
        """Whether the loop thread is still running."""
        return self._thread.is_alive() and not self.loop.is_closed()

    def in_loop_thread(self) -> bool:
        """Whether the caller runs on the loop's own thread."""
        return threading.current_thread() is self._thread

    def run(self, coro: Awaitable[T], timeout: float | None) -> T:
        """Run *coro* on the loop and wait at most *timeout* seconds for its result.

        Raises
        ------
        FHIRcastError
            On timeout (the coroutine is cancelled) or when called from the loop thread,
            which would deadlock.
        """
        if self.in_loop_thread():
            raise FHIRcastError("a blocking FHIRcast call was made on the client's own loop")
        if not self.alive:
            raise FHIRcastError("the FHIRcast client is closed")
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(
            coro,  # type: ignore[arg-type]
            self.loop,
        )
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise FHIRcastError(f"no answer within {timeout} s") from None

    def call(self, fn: Callable[..., T], *args: Any, timeout: float | None = 10) -> T:
        """Call the plain function *fn* on the loop thread and return its result."""

        async def wrapper() -> T:
            return fn(*args)

        return self.run(wrapper(), timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop (cancelling what still runs) and join the thread."""
        if self.loop.is_closed():
            return
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # already closed
            return
        if not self.in_loop_thread():
            self._thread.join(timeout)
