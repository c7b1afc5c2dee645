"""HTTP for DICOMweb: keep-alive sessions, credentials per origin, retries, timeouts.

Every request imagingkit's DICOMweb client makes goes through a :class:`Transport`:

* **Credentials per origin** (DESIGN.md D7). The ``Authorization`` header comes from
  :meth:`imagingkit.auth.AuthMap.headers_for` for the URL actually requested, on the first
  request and again on every redirect hop, so a redirect to another origin carries no
  credential and an unmapped origin never gets one. A ``401`` to a request carrying a
  refreshing credential (SMART Backend Services) is retried once with a new token
  (:class:`imagingkit.auth.OriginAuth`).
* **Retries that honour ``Retry-After``.** ``429 Too Many Requests`` and ``503 Service
  Unavailable`` (RFC 9110 §15.6.4, RFC 6585 §4; the SMART Imaging Access IG asks clients
  to repeat the identical request after a 503 with ``Retry-After``) are retried after the
  delay the server asks for (seconds or an HTTP-date, RFC 9110 §10.2.3), capped by
  :attr:`RetryPolicy.max_retry_after`; ``502``/``504`` and connections dropped before an
  answer are retried with exponential backoff. Only GET and HEAD are retried.
* **Timeouts** (connect and read, :attr:`imagingkit.config.Settings.timeout`).
* **No gzip for bulk data.** Pixel data does not compress well and servers such as Orthanc
  spend ~46 ms of CPU compressing each instance when a client allows it, so bulk
  requests send ``Accept-Encoding: identity``.
* **One error type.** Failures become :class:`imagingkit.errors.DICOMwebError` carrying the
  (redacted) URL, the status and the server's message; ``requests`` exceptions never leak.

The session is a plain :class:`requests.Session` with these policies installed (an
adapter and an auth hook), so dicomweb-client's :class:`~dicomweb_client.DICOMwebClient`
can share it and gain the same behaviour (see :meth:`Transport.dicomweb_client`).
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import queue
import random
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

import requests
import requests.adapters

from imagingkit.auth import AuthMap
from imagingkit.config import Settings, get_settings
from imagingkit.errors import DICOMwebError, redact_url

__all__ = ["IDENTITY", "Pump", "RetryPolicy", "Transport", "parse_retry_after"]

log = logging.getLogger("imagingkit.dicomweb.transport")

#: Header sent with bulk (pixel) requests: never negotiate compression for them.
IDENTITY = {"Accept-Encoding": "identity"}
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before repeating a failed request.

    Attributes
    ----------
    attempts : int
        Total tries of one request, the first included.
    backoff : float
        First backoff delay in seconds when the server gives no ``Retry-After``; doubled
        at each further try, with ±25 % jitter.
    max_backoff : float
        Upper bound of one backoff delay.
    max_retry_after : float
        Longest ``Retry-After`` honoured; a server asking for more gets its error
        reported instead of a hung notebook.
    statuses : frozenset of int
        Statuses retried (PS3.18 §8.6 leaves throttling to HTTP: 429, 503, and the
        gateway errors 502, 504).
    """

    attempts: int = 4
    backoff: float = 0.25
    max_backoff: float = 8.0
    max_retry_after: float = 120.0
    statuses: frozenset[int] = field(default_factory=lambda: frozenset({429, 502, 503, 504}))

    def delay(self, attempt: int) -> float:
        """Backoff before try number *attempt* + 1 (``attempt`` counts from 1)."""
        base = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return base * random.uniform(0.75, 1.25)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Return the delay in seconds a ``Retry-After`` value asks for (RFC 9110 §10.2.3).

    Parameters
    ----------
    value : str or None
        ``delay-seconds`` (e.g. ``"3"``) or an HTTP-date.
    now : float, optional
        The current POSIX time (for tests).

    Returns
    -------
    float or None
        Seconds to wait (never negative), or None if *value* is missing or unreadable.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = datetime.now(timezone.utc).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


class _PolicySession(requests.Session):
    """A session whose redirects re-derive credentials for each hop's origin."""

    def __init__(self, auth: AuthMap) -> None:
        super().__init__()
        self.origin_auth = auth.requests_auth()  # with the one retry after 401
        self.auth = self.origin_auth

    def rebuild_auth(
        self, prepared_request: requests.PreparedRequest, response: requests.Response
    ) -> None:
        # requests keeps Authorization across some origin changes (http->https on the
        # same host) and may add ~/.netrc credentials; D7 wants exactly the AuthMap's.
        self.origin_auth(prepared_request)


class _RetryingAdapter(requests.adapters.HTTPAdapter):
    """An adapter that retries idempotent requests per a :class:`RetryPolicy`."""

    def __init__(self, policy: RetryPolicy, pool_size: int) -> None:
        super().__init__(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.policy = policy

    def send(  # type: ignore[override]
        self, request: requests.PreparedRequest, **kwargs: Any
    ) -> requests.Response:
        policy = self.policy
        retriable = (request.method or "GET").upper() in _IDEMPOTENT
        attempt = 1
        while True:
            try:
                response = super().send(request, **kwargs)
            except (requests.ConnectTimeout, requests.ReadTimeout):
                raise
            except requests.ConnectionError:
                # typically a keep-alive connection the server closed (RemoteDisconnected)
                if not retriable or attempt >= policy.attempts:
                    raise
                wait = policy.delay(attempt)
                log.info("retrying %s after a dropped connection", redact_url(request.url))
            else:
                if (
                    not retriable
                    or response.status_code not in policy.statuses
                    or attempt >= policy.attempts
                ):
                    return response
                asked = parse_retry_after(response.headers.get("Retry-After"))
                if asked is not None and asked > policy.max_retry_after:
                    return response  # the caller reports it, with the server's message
                wait = asked if asked is not None else policy.delay(attempt)
                log.info(
                    "HTTP %s from %s; retrying in %.2f s",
                    response.status_code,
                    redact_url(request.url),
                    wait,
                )
                response.close()
            time.sleep(wait)
            attempt += 1


def _server_message(response: requests.Response) -> str | None:
    """The server's own explanation from an error body (JSON problem or short text)."""
    try:
        text = response.text[:2000]
    except Exception:
        return None
    if not text.strip():
        return response.reason or None
    try:
        body = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:300]
    if isinstance(body, dict):
        for key in ("detail", "message", "Message", "error", "Details", "title"):
            if isinstance(body.get(key), str):
                return str(body[key])[:300]
    return " ".join(text.split())[:300]


class Pump:
    """Read a streamed response body ahead, on a thread, in large chunks.

    ``recv`` releases the GIL, so while the caller parses and copies one chunk the
    pump already receives the next: the server keeps streaming instead of stalling on a
    full socket buffer whenever the client is busy (on a 2-core machine that shares the
    cores with the server this makes series pulls several times faster). At most
    *queued* chunks of up to *chunk_size* bytes wait in memory.

    Parameters
    ----------
    response : requests.Response
        Sent with ``stream=True``; its body is read from http.client's response when
        it is not content-encoded (no urllib3 copy), else through urllib3.
    """

    def __init__(
        self, response: requests.Response, chunk_size: int = 4 << 20, queued: int = 16
    ) -> None:
        raw = response.raw
        inner = getattr(raw, "_fp", None)
        plain = response.headers.get("Content-Encoding", "identity").lower() == "identity"
        source: Any = inner if plain and hasattr(inner, "read1") else raw
        self.url = response.url
        self.chunk_size = chunk_size
        self.queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=queued)
        self.stopped = threading.Event()
        self.finished = False
        self.thread = threading.Thread(
            target=self._run, args=(source,), name="imagingkit-pump", daemon=True
        )
        self.thread.start()

    def _run(self, source: Any) -> None:
        read = getattr(source, "read1", source.read)
        while not self.stopped.is_set():
            try:
                item: bytes | BaseException = read(self.chunk_size)
            except BaseException as exc:  # handed to the consumer, raised there
                item = exc
            while not self.stopped.is_set():
                try:
                    self.queue.put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue
            if not isinstance(item, bytes) or not item:
                return

    def next(self) -> bytes:
        """The next chunk; ``b""`` at the end of the body.

        Raises
        ------
        DICOMwebError
            If the transfer broke off or timed out.
        """
        if self.finished:
            return b""
        item = self.queue.get()
        if isinstance(item, BaseException):
            self.finished = True
            raise DICOMwebError(
                f"the transfer broke off: {type(item).__name__}: {item}", url=self.url
            ) from item
        if not item:
            self.finished = True
        return item

    def close(self) -> None:
        """Stop reading (close the response too, to unblock a pending read)."""
        self.stopped.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self.queue.get_nowait()


class Transport:
    """Keep-alive HTTP with the policies of this module; thread-safe for concurrent GETs.

    Parameters
    ----------
    auth : AuthMap, optional
        Credentials by origin; requests to unmapped origins carry none.
    settings : Settings, optional
        ``timeout`` (seconds, connect and read) and ``concurrency`` (connection pool size).
    retry : RetryPolicy, optional
        Defaults to :class:`RetryPolicy`'s defaults.
    """

    def __init__(
        self,
        auth: AuthMap | None = None,
        settings: Settings | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.auth = auth if auth is not None else AuthMap()
        self.settings = settings if settings is not None else get_settings()
        self.retry = retry if retry is not None else RetryPolicy()
        self._lock = threading.Lock()
        self._session: _PolicySession | None = None

    # The session is created lazily so that a Transport can be pickled (dask, process pools).
    @property
    def session(self) -> requests.Session:
        """The shared :class:`requests.Session` carrying this transport's policies."""
        with self._lock:
            if self._session is None:
                session = _PolicySession(self.auth)
                size = max(4, 2 * self.settings.concurrency)
                adapter = _RetryingAdapter(self.retry, size)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                self._session = session
            return self._session

    def __getstate__(self) -> dict[str, Any]:
        return {"auth": self.auth, "settings": self.settings, "retry": self.retry}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["auth"], state["settings"], state["retry"])  # type: ignore[misc]

    def close(self) -> None:
        """Close pooled connections (the transport stays usable)."""
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()

    @property
    def timeout(self) -> tuple[float, float]:
        """``(connect, read)`` timeouts in seconds."""
        total = float(self.settings.timeout)
        return (min(total, 10.0), total)

    def get(
        self,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        accept: str | None = None,
        bulk: bool = False,
        stream: bool = False,
        ok: tuple[int, ...] = (200, 206),
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """GET *url*; return the response if its status is in *ok*.

        Parameters
        ----------
        url : str
        params : mapping, optional
            Query parameters (lists give repeated parameters).
        accept : str, optional
            The ``Accept`` header.
        bulk : bool
            Send ``Accept-Encoding: identity`` (pixel data, instances, frames).
        stream : bool
            Leave the body unread (read it with :meth:`iter_body`).
        ok : tuple of int
            Statuses returned to the caller rather than raised.
        headers : mapping, optional
            Further request headers (never ``Authorization``: that comes from the AuthMap).

        Raises
        ------
        DICOMwebError
            On a status not in *ok*, a timeout, or a connection failure.
        """
        sent: dict[str, str] = {}
        if headers:
            sent.update({k: v for k, v in headers.items() if k.lower() != "authorization"})
        if accept:
            sent["Accept"] = accept
        if bulk:
            sent.update(IDENTITY)
        if params:
            # Commas (lists, windows, viewports) and '*' (wildcards) stay literal: PS3.18
            # uses them as separators, and some servers (Orthanc) do not percent-decode.
            query = urlencode({k: v for k, v in params.items() if v is not None}, True, ",*")
            url = f"{url}{'&' if '?' in url else '?'}{query}"
        try:
            response = self.session.get(url, headers=sent, stream=stream, timeout=self.timeout)
        except requests.Timeout as exc:
            raise DICOMwebError(
                f"no answer within {self.settings.timeout:g} s (Settings.timeout)", url=url
            ) from exc
        except requests.RequestException as exc:
            raise DICOMwebError(f"cannot reach the DICOMweb server: {exc}", url=url) from exc
        if response.status_code not in ok:
            message = _server_message(response)
            response.close()
            raise DICOMwebError(
                f"the DICOMweb server refused GET ({response.reason or 'error'})",
                url=response.url or url,
                status=response.status_code,
                server_message=message,
            )
        return response

    def iter_body(self, response: requests.Response) -> Iterator[bytes]:
        """Yield the body of a streamed *response* in chunks, read ahead by a :class:`Pump`.

        Raises
        ------
        DICOMwebError
            If the connection breaks or times out mid-body.
        """
        pump = Pump(response)
        try:
            while chunk := pump.next():
                yield chunk
        finally:
            pump.close()
            response.close()

    def get_json(
        self, url: str, *, params: Mapping[str, Any] | None = None
    ) -> tuple[list[dict[str, Any]], requests.Response]:
        """GET a DICOM JSON array (QIDO-RS results or WADO-RS metadata).

        Empty answers in every form servers use — ``204``, ``200`` with an empty body,
        ``[]``, or a non-JSON page on a successful status — mean "no results"; a single
        object is wrapped into a list (PS3.18 §8.3.5, notes on real servers).

        Returns
        -------
        tuple of (list of dict, requests.Response)
            The datasets and the response (for its ``Warning`` header).

        Raises
        ------
        DICOMwebError
            On an error status, or JSON that is neither an object nor an array.
        """
        response = self.get(
            url, params=params, accept="application/dicom+json, application/json", ok=(200, 204)
        )
        body = response.content
        if response.status_code == 204 or not body.strip():
            return [], response
        try:
            data = json.loads(body)
        except ValueError:
            kind = response.headers.get("Content-Type", "?")
            log.warning("%s answered %s, not JSON; taken as no results", redact_url(url), kind)
            return [], response
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
            raise DICOMwebError(
                "the answer is not a DICOM JSON array (PS3.18 Annex F)",
                url=url,
                status=response.status_code,
            )
        return data, response

    def dicomweb_client(self, base_url: str) -> Any:
        """Return a :class:`dicomweb_client.DICOMwebClient` sharing this transport's session.

        Its own retry loop is switched off: the session's adapter retries (honouring
        ``Retry-After``) and the session's auth hook sets per-origin credentials.
        Useful for what imagingkit does not wrap (STOW-RS, DELETE, bulk data URIs).
        """
        from dicomweb_client import DICOMwebClient

        client = DICOMwebClient(base_url, session=self.session, timeout=self.settings.timeout)
        client.set_http_retry_params(retry=False)
        return client
