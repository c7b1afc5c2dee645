"""The rest-hook channel (FHIR R4 subscription.html; Subscriptions Backport IG, channels).

Notifications are POSTed by one worker thread, in order, to ``channel.endpoint`` with
``Content-Type`` = ``channel.payload`` and each ``channel.header`` as an HTTP header.
Rules:

- a POST must answer 2xx within the Subscription's timeout (``backport-timeout``, default
  10 s); anything else — an error status, a timeout, a refused connection, a redirect
  (redirects are never followed, so headers never reach another URL) — is a failure;
- environment proxies and ``.netrc`` are ignored (``trust_env=False``): the user's
  credentials never ride along to an endpoint;
- the queue is bounded (:data:`MAX_QUEUED`); when it is full a notification is dropped
  and logged — its event keeps its number, so ``$events`` still returns it.

What a failure means for the Subscription's status is the caller's decision (the
``on_done`` callback); see :mod:`..service`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import requests

__all__ = ["MAX_QUEUED", "Delivery", "RestHookSender"]

log = logging.getLogger("imagingkit.fhir.subscriptions")

#: notifications waiting for the worker before new ones are dropped
MAX_QUEUED = 10_000
_CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Delivery:
    """One POST to make.

    Attributes
    ----------
    subscription : str
    kind : str
        ``handshake``, ``heartbeat``, ``event-notification`` or ``ping`` (legacy).
    endpoint : str
    body : bytes
        Empty for a payload-less notification.
    headers : tuple of (str, str)
        ``channel.header`` plus ``Content-Type`` when there is a body.
    timeout : float
        Seconds the whole POST may take.
    on_done : callable
        ``on_done(ok, error_text)``, called on the worker thread.
    """

    subscription: str
    kind: str
    endpoint: str
    body: bytes
    headers: tuple[tuple[str, str], ...]
    timeout: float
    on_done: Callable[[bool, str | None], None]


class RestHookSender:
    """Posts :class:`Delivery` objects on a worker thread until :meth:`close`."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Delivery | None] = queue.Queue(maxsize=MAX_QUEUED)
        self._session = requests.Session()
        self._session.trust_env = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="imagingkit-fhir-resthook", daemon=True
        )
        self._thread.start()

    def submit(self, delivery: Delivery) -> bool:
        """Queue *delivery*; False if the queue is full or the sender closed."""
        if self._stop.is_set():
            return False
        try:
            self._queue.put_nowait(delivery)
        except queue.Full:
            log.warning(
                "rest-hook queue full: %s for Subscription/%s dropped",
                delivery.kind,
                delivery.subscription,
            )
            return False
        return True

    def _post(self, delivery: Delivery) -> str | None:
        try:
            response = self._session.post(
                delivery.endpoint,
                data=delivery.body,
                headers=dict(delivery.headers),
                timeout=(min(_CONNECT_TIMEOUT, delivery.timeout), delivery.timeout),
                allow_redirects=False,
            )
            response.close()
        except requests.RequestException as exc:
            return f"{delivery.kind} POST to {delivery.endpoint} failed: {type(exc).__name__}"
        if not 200 <= response.status_code < 300:
            return f"{delivery.kind} POST to {delivery.endpoint} answered {response.status_code}"
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                delivery = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if delivery is None or self._stop.is_set():
                break
            error = self._post(delivery)
            if self._stop.is_set():
                break
            try:
                delivery.on_done(error is None, error)
            except Exception:
                log.exception("rest-hook delivery callback failed")

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker (queued notifications are dropped; their events stay numbered)."""
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout)
        self._session.close()
