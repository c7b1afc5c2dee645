"""Receiving pushed notifications in a notebook: what every notification client shares.

Two clients receive events a server pushes over a websocket — the FHIRcast subscriber
(:mod:`imagingkit.fhircast.client`, FHIRcast 3.0.0 §2-5) and the FHIR Subscription
listener (:mod:`imagingkit.subscriptions.listener`, Subscriptions Backport IG channels).
Both are asyncio clients with a blocking facade, and both need the same machinery, kept
here:

- :class:`LoopThread` — their network loop on a daemon thread, so notebook code calls
  plain functions while the kernel's own loop is running (DESIGN.md D2);
- :class:`CallbackDispatcher` (built by :func:`callback_dispatcher`) — user callbacks
  delivered in arrival order on the caller's loop (the kernel's, where widget updates are
  safe) or on one dispatcher thread; :func:`invoke` calls one on the running loop;
- :class:`EventHistory` — what arrived, with :meth:`~EventHistory.mark` and
  :meth:`~EventHistory.wait_for`;
- :class:`ClientThreads` — the two together, started and stopped as one;
- :func:`retry_with_backoff` — reconnecting with doubling, jittered, capped delays;
- :func:`open_websocket` — the websocket options both use (no compression, no proxy,
  keep-alive pings);
- :class:`ClosedAtExit` — clients still open when the kernel or script exits are closed.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import inspect
import logging
import queue
import random
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, Protocol, TypeVar

import websockets
from websockets.asyncio.client import ClientConnection, connect

from imagingkit.errors import ImagingKitError

__all__ = [
    "CallbackDispatcher",
    "ClientThreads",
    "ClosedAtExit",
    "EventHistory",
    "LoopThread",
    "backoff_delay",
    "callback_dispatcher",
    "invoke",
    "open_websocket",
    "retry_with_backoff",
]

log = logging.getLogger("imagingkit.notify")

T = TypeVar("T")
Callback = Callable[[Any], Any]
ErrorFactory = Callable[[str], ImagingKitError]

_CALLBACK_TASKS: set[asyncio.Future[Any]] = set()


# --------------------------------------------------------------------------- the loop thread


class LoopThread:
    """Run an event loop on a background daemon thread.

    Parameters
    ----------
    name : str
        Thread name (shows up in ``threading.enumerate()`` and profilers).
    error : callable
        Builds the exception raised by :meth:`run` from its message (e.g. the client's
        own error class from :mod:`imagingkit.errors`).
    kind : str
        The protocol named in those messages (``"the <kind> client is closed"``).
    """

    def __init__(self, name: str, *, error: ErrorFactory, kind: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._error = error
        self._kind = kind
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
        ImagingKitError
            Built by ``error``: on timeout (the coroutine is cancelled), when the loop is
            closed, or when called from the loop thread, which would deadlock.
        """
        if self.in_loop_thread():
            raise self._error(f"a blocking {self._kind} call was made on the client's own loop")
        if not self.alive:
            raise self._error(f"the {self._kind} client is closed")
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(
            coro,  # type: ignore[arg-type]
            self.loop,
        )
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise self._error(f"no answer within {timeout} s") from None

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


# --------------------------------------------------------------------------- callbacks


def invoke(callback: Callback, arg: Any, *, logger: logging.Logger, label: str) -> None:
    """Call ``callback(arg)`` on the running loop; schedule it if it returns an awaitable.

    A failing callback is logged on *logger* (``"<label> callback … failed"``), never
    raised: one broken callback must not stop the delivery of the next event.
    """
    try:
        result = callback(arg)
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            _CALLBACK_TASKS.add(task)
            task.add_done_callback(_CALLBACK_TASKS.discard)
    except Exception:
        logger.exception("%s callback %r failed", label, callback)


class CallbackDispatcher:
    """Deliver callbacks in order: on the caller's loop if given, else on one thread.

    Parameters
    ----------
    loop : asyncio.AbstractEventLoop or None
        The loop to run callbacks on (a notebook kernel's); ``None`` starts a dispatcher
        thread.
    name : str
        Name of the dispatcher thread.
    logger : logging.Logger
        Where failing callbacks are reported.
    label : str
        What the callbacks belong to, in those reports (``"FHIRcast"`` …).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None,
        *,
        name: str,
        logger: logging.Logger,
        label: str,
    ) -> None:
        self.loop = loop
        self._logger = logger
        self._label = label
        self._queue: queue.SimpleQueue[tuple[Callback, Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        if loop is None:
            self._thread = threading.Thread(target=self._main, name=name, daemon=True)
            self._thread.start()

    def __call__(self, callback: Callback, arg: Any) -> None:
        """Deliver ``callback(arg)`` after everything delivered before it."""
        if self.loop is not None:
            if not self.loop.is_closed():
                self.loop.call_soon_threadsafe(self.invoke, callback, arg)
        else:
            self._queue.put((callback, arg))

    def invoke(self, callback: Callback, arg: Any) -> None:
        """Call ``callback(arg)`` here, on the running loop (see :func:`invoke`)."""
        invoke(callback, arg, logger=self._logger, label=self._label)

    def _main(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            callback, arg = item
            try:
                result = callback(arg)
                if inspect.isawaitable(result):
                    self._logger.warning("coroutine callback %r needs a loop; pass loop=", callback)
                    close = getattr(result, "close", None)
                    if close:
                        close()
            except Exception:
                self._logger.exception("%s callback %r failed", self._label, callback)

    def stop(self, timeout: float = 5.0) -> None:
        """End the dispatcher thread after the callbacks already queued."""
        if self._thread is not None:
            self._queue.put(None)
            if self._thread is not threading.current_thread():
                self._thread.join(timeout)


def callback_dispatcher(
    loop: asyncio.AbstractEventLoop | str | None,
    *,
    name: str,
    logger: logging.Logger,
    label: str,
) -> CallbackDispatcher:
    """Where callbacks run: *loop*, else the caller's running loop (a notebook kernel's,
    where widget updates are safe), else one dispatcher thread; ``"thread"`` forces it.

    *name*, *logger* and *label* are those of :class:`CallbackDispatcher`.
    """
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
    chosen = loop if isinstance(loop, asyncio.AbstractEventLoop) else None
    return CallbackDispatcher(chosen, name=name, logger=logger, label=label)


class ClientThreads:
    """The threads behind a blocking notification client, started and stopped together:
    the network loop and the callback dispatcher (a thread only without a caller loop).

    Parameters
    ----------
    loop : LoopThread
        Where the asyncio client runs.
    dispatcher : CallbackDispatcher
        Where its callbacks run.
    """

    def __init__(self, loop: LoopThread, dispatcher: CallbackDispatcher) -> None:
        self.loop = loop
        self.dispatcher = dispatcher

    def start(self, coro: Awaitable[T], timeout: float | None) -> T:
        """Run the client's start *coro*; if it fails, stop both threads and re-raise
        (a client that never connected leaves no thread behind)."""
        try:
            return self.loop.run(coro, timeout)
        except BaseException:
            self.loop.stop()
            self.dispatcher.stop()
            raise

    def stop(
        self,
        closing: Callable[[], Awaitable[Any]],
        *,
        timeout: float,
        wait: float,
        ignore: type[BaseException],
    ) -> None:
        """Run ``closing()`` on the loop if it still runs (waiting at most *wait* seconds,
        *ignore* errors ignored), then stop the loop and the dispatcher."""
        if self.loop.alive:
            with contextlib.suppress(ignore):
                self.loop.run(closing(), wait)
        self.loop.stop(timeout)
        self.dispatcher.stop(timeout)


# --------------------------------------------------------------------------- history


class EventHistory(Generic[T]):
    """The most recent items a client received, in order, and a way to wait for one.

    Items are recorded on the network loop itself (before any callback runs), so
    :meth:`wait_for` never waits on user callbacks.

    Parameters
    ----------
    maxlen : int
        How many items are kept (the oldest are dropped).
    """

    def __init__(self, maxlen: int = 10_000) -> None:
        self._items: deque[T] = deque(maxlen=maxlen)
        self._seq = 0
        self._cond = threading.Condition()

    def record(self, item: T) -> None:
        """Append *item* and wake the waiters."""
        with self._cond:
            self._items.append(item)
            self._seq += 1
            self._cond.notify_all()

    def mark(self) -> int:
        """Return the position after the last item recorded, for ``after=``."""
        with self._cond:
            return self._seq

    def items(self) -> list[T]:
        """Return the items kept, oldest first."""
        with self._cond:
            return list(self._items)

    def wait_for(
        self, predicate: Callable[[T], bool], timeout: float | None, *, after: int = 0
    ) -> T | None:
        """Block until an item recorded after position *after* satisfies *predicate*.

        Items recorded before the call count too. Returns the first such item, or
        ``None`` when none arrived within *timeout* seconds.
        """
        found: list[T] = []

        def scan() -> bool:
            skip = len(self._items) - (self._seq - after)
            for i, item in enumerate(self._items):
                if i >= skip and predicate(item):
                    found.append(item)
                    return True
            return False

        with self._cond:
            if not self._cond.wait_for(scan, timeout):
                return None
        return found[0]


# --------------------------------------------------------------------------- reconnecting


def backoff_delay(attempt: int, first: float, cap: float) -> float:
    """Seconds to wait before reconnect *attempt* (0-based): ``first`` doubled per attempt,
    at most ``cap``, times a random factor in [0.5, 1) so clients do not reconnect in step."""
    return min(cap, first * 2**attempt) * random.uniform(0.5, 1.0)


async def retry_with_backoff(
    attempt: Callable[[], Awaitable[None]],
    backoff: tuple[float, float],
    max_attempts: int | None,
    *,
    stopped: Callable[[], bool],
    retry_on: tuple[type[BaseException], ...],
    failed: Callable[[BaseException, int], bool],
) -> bool:
    """Await *attempt* after each :func:`backoff_delay` until it succeeds.

    Parameters
    ----------
    attempt : callable
        Reconnects (raises on failure).
    backoff : (float, float)
        First and largest delay, in seconds.
    max_attempts : int, optional
        Give up after this many failed attempts in a row (``None``: until *stopped*).
    stopped : callable
        Checked before every attempt: ``True`` ends the retries (the client is closing).
    retry_on : tuple of exception classes
        Failures that may be retried; anything else propagates.
    failed : callable
        ``failed(exc, attempts_so_far)`` after each such failure: ``True`` to try again,
        ``False`` to give up (e.g. the server denied or refused the credentials).

    Returns
    -------
    bool
        Whether *attempt* succeeded.
    """
    first, cap = backoff
    attempts = 0
    while not stopped():
        if max_attempts is not None and attempts >= max_attempts:
            return False
        await asyncio.sleep(backoff_delay(attempts, first, cap))
        attempts += 1
        try:
            await attempt()
        except retry_on as exc:
            if not failed(exc, attempts):
                return False
            continue
        return True
    return False


# --------------------------------------------------------------------------- websockets


async def open_websocket(
    url: str,
    *,
    timeout: float,
    max_size: int,
    error: ErrorFactory,
    what: str,
    headers: Mapping[str, str] | None = None,
) -> ClientConnection:
    """Open a websocket to *url* (RFC 6455) the way notification clients do.

    No per-message compression, no proxy (the URL is used as given), pings every 20 s
    with a 20 s timeout, frames up to *max_size* bytes. *headers* go with the opening
    handshake (e.g. the credential of the socket's own origin; the caller checks the
    origin).

    Raises
    ------
    ImagingKitError
        Built by *error* as ``"could not open the <what>: <reason>"`` when the socket
        cannot be opened within *timeout* seconds.
    """
    try:
        return await connect(
            url,
            open_timeout=timeout,
            compression=None,
            proxy=None,
            max_size=max_size,
            ping_interval=20,
            ping_timeout=20,
            additional_headers=dict(headers) if headers else None,
        )
    except (OSError, websockets.exceptions.WebSocketException, asyncio.TimeoutError) as exc:
        raise error(f"could not open the {what}: {exc}") from exc


# --------------------------------------------------------------------------- interpreter exit


class _Closable(Protocol):
    def close(self, timeout: float = ...) -> None: ...


class ClosedAtExit:
    """Clients still open when the interpreter exits (a kernel shutting down, a script
    ending) are closed cleanly: unsubscribed, Subscriptions removed.

    Parameters
    ----------
    timeout : float
        Seconds each ``close(timeout=…)`` may take.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._open: weakref.WeakSet[Any] = weakref.WeakSet()
        atexit.register(self.close_all)

    def add(self, client: _Closable) -> None:
        """Close *client* at exit unless it is closed (:meth:`discard`) before."""
        self._open.add(client)

    def discard(self, client: _Closable) -> None:
        """Forget *client* (it closed itself)."""
        self._open.discard(client)

    def close_all(self) -> None:
        """Close every client still registered; errors are ignored (the process exits)."""
        for client in list(self._open):
            with contextlib.suppress(Exception):
                client.close(timeout=self.timeout)
