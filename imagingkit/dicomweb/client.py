"""The DICOMweb client: QIDO-RS, WADO-RS and concurrent, cached bulk retrieval.

:class:`DicomWebClient` speaks PS3.18 to any DICOMweb server through a
:class:`~imagingkit.dicomweb.transport.Transport` (credentials per origin, retries that
honour ``Retry-After``, timeouts) and keeps what it retrieves in a
:class:`~imagingkit.cache.Cache` (DESIGN.md D8). It closes the gaps of dicomweb-client
(DESIGN.md D1) rather than re-creating its API:

* **Paging that terminates** (PS3.18 §8.3.4.4): searches are paged with ``limit`` and
  ``offset`` and stop at an empty page, at a page that brings no new UID (a server that
  ignores ``offset``), at the caller's ``limit``, or after a bounded number of pages.
* **Per-part headers kept**: :meth:`DicomWebClient.iter_series` yields :class:`Part`\\ s
  with their own ``Content-Type`` (and so the transfer syntax each was sent in,
  PS3.18 §8.7.3.5), split from the stream as it arrives
  (:func:`imagingkit.dicomweb.multipart.iter_parts`).
* **One stream per series**: a series is retrieved with one WADO-RS request
  (PS3.18 §10.4.1.1.1), which servers such as Orthanc serve ~10× faster than one request
  per instance; series run concurrently (``Settings.concurrency``) on keep-alive
  connections, on any :class:`concurrent.futures.Executor` or a ``dask.distributed``
  client (:mod:`imagingkit.dicomweb.bulk`).
* **Thumbnails** (Sup 203, PS3.18 §10.4.1.1.3) with a fall-back to ``/rendered`` for
  servers that predate them.

The same session is available to dicomweb-client for what imagingkit does not wrap
(:meth:`DicomWebClient.dicomweb_client`: STOW-RS, DELETE, bulk data URIs).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.datadict import keyword_for_tag, tag_for_keyword

from imagingkit.auth import AuthMap, origin_of
from imagingkit.cache import Cache, CacheKey
from imagingkit.config import Settings, get_settings
from imagingkit.dicomweb.multipart import iter_parts, parse_media_type
from imagingkit.dicomweb.transport import RetryPolicy, Transport
from imagingkit.errors import (
    AuthError,
    DICOMwebError,
    InvalidInputError,
    InvalidQueryError,
)
from imagingkit.uids import validate_uid

if TYPE_CHECKING:
    from concurrent.futures import Executor

    import requests

    from imagingkit.dicomweb.bulk import BulkResult
    from imagingkit.dicomweb.volume import Volume

__all__ = ["DicomWebClient", "Part", "dataset_keywords"]

log = logging.getLogger("imagingkit.dicomweb.client")

INSTANCE_MEDIA = "application/dicom"
#: Default page size of QIDO-RS searches (below the 1,000-result caps some servers apply).
PAGE_SIZE = 500
#: Upper bound on the pages one search may request (a bounded loop, whatever the server).
MAX_PAGES = 10_000
_LEVEL_UID = {"study": "0020000D", "series": "0020000E", "instance": "00080018"}
_THUMBNAIL_FALLBACK = (400, 404, 405, 406, 415, 501)


@dataclass(frozen=True)
class Part:
    """One part of a ``multipart/related`` WADO-RS answer (PS3.18 §8.7.3, RFC 2387).

    Attributes
    ----------
    headers : dict
        The part's own header fields, names lower-cased (``content-type``,
        ``content-location``, ...).
    payload : bytes
        The part's body: a Part-10 instance, a frame's pixels, or bulk data.
    """

    headers: dict[str, str]
    payload: bytes = field(repr=False)

    @property
    def content_type(self) -> str:
        """The part's media type without parameters (e.g. ``"application/dicom"``)."""
        return parse_media_type(self.headers.get("content-type", INSTANCE_MEDIA))[0]

    @property
    def content_location(self) -> str | None:
        return self.headers.get("content-location")

    @property
    def transfer_syntax(self) -> str | None:
        """The transfer syntax this part was sent in (PS3.18 §8.7.3.5.2).

        From the part's ``transfer-syntax`` media type parameter; for a Part-10 instance
        whose part carries no label (Orthanc's do not), from its File Meta Information
        (0002,0010). None if neither says.
        """
        params = parse_media_type(self.headers.get("content-type", ""))[1]
        if params.get("transfer-syntax"):
            return params["transfer-syntax"]
        if self.content_type == INSTANCE_MEDIA:
            return _meta_transfer_syntax(self.payload)
        return None


def _meta_transfer_syntax(payload: bytes) -> str | None:
    """Read (0002,0010) from the File Meta Information of a Part-10 byte string."""
    if len(payload) < 140 or payload[128:132] != b"DICM":
        return None
    pos, end = 132, min(len(payload), 132 + 4096)
    while pos + 8 <= end:
        group = int.from_bytes(payload[pos : pos + 2], "little")
        elem = int.from_bytes(payload[pos + 2 : pos + 4], "little")
        if group != 0x0002:
            return None
        vr = payload[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
            length = int.from_bytes(payload[pos + 8 : pos + 12], "little")
            pos += 12
        else:
            length = int.from_bytes(payload[pos + 6 : pos + 8], "little")
            pos += 8
        if elem == 0x0010:
            return payload[pos : pos + length].decode("ascii", "replace").rstrip("\x00 ")
        pos += length
    return None


def _query_key(name: str) -> str:
    """Normalise a QIDO attribute name: a keyword or an 8-hex-digit tag (PS3.18 §8.3.4.1)."""
    text = str(name).strip()
    if len(text) == 8 and all(c in "0123456789abcdefABCDEF" for c in text):
        return text.upper()
    if "." in text:  # a sequence path such as "ReferencedSeriesSequence.SeriesInstanceUID"
        return ".".join(_query_key(part) for part in text.split("."))
    if tag_for_keyword(text) is None:
        raise InvalidQueryError(
            f"{text!r} is neither a DICOM keyword nor a tag (e.g. 'PatientID' or '00100020')"
        )
    return text


def _query_value(name: str, value: Any) -> str:
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(str(v) for v in value)  # UID list matching (PS3.18 §8.3.4.1)
    if isinstance(value, bool) or value is None:
        raise InvalidQueryError(f"query value {value!r} for {name!r} is not a string")
    return str(value)


def _result_key(item: Mapping[str, Any], level: str) -> str:
    """Identity of a QIDO result (its level's UID; the whole JSON when it has none)."""
    entry = item.get(_LEVEL_UID[level]) or {}
    values = entry.get("Value") if isinstance(entry, Mapping) else None
    if values:
        return str(values[0])
    return json.dumps(item, sort_keys=True)


class DicomWebClient:
    """A DICOMweb client with cached, concurrent retrieval (PS3.18 §10.4, §10.6).

    Parameters
    ----------
    base_url : str
        The service's base URL (e.g. ``"http://127.0.0.1:8042/dicom-web"``), without
        ``/studies``; a trailing slash is ignored.
    auth : AuthMap, optional
        Credentials per origin. Requests carry a credential only when their origin is
        mapped (DESIGN.md D7).
    settings : Settings, optional
        ``timeout``, ``concurrency`` and ``data_dir`` (for the default cache).
    cache : Cache, False or None
        Where retrieved objects are kept. None (default): the cache under
        ``settings.data_dir / "cache"``; False: no caching.
    retry : RetryPolicy, optional
        Overrides the transport's retry policy.

    Raises
    ------
    InvalidInputError
        If *base_url* is not an absolute http(s) URL.

    Examples
    --------
    >>> client = DicomWebClient("http://127.0.0.1:8042/dicom-web")    # doctest: +SKIP
    >>> studies = client.search_studies({"PatientID": "PAT-001"})      # doctest: +SKIP
    >>> volume = client.series_volume(study_uid, series_uid)           # doctest: +SKIP
    """

    def __init__(
        self,
        base_url: str,
        *,
        auth: AuthMap | None = None,
        settings: Settings | None = None,
        cache: Cache | bool | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        base = str(base_url).strip().rstrip("/")
        try:
            self.origin = origin_of(base)
        except AuthError:
            raise InvalidInputError(
                f"DICOMweb base URL {base_url!r} is not an absolute http(s) URL"
            ) from None
        if not base.lower().startswith(("http://", "https://")):
            raise InvalidInputError(f"DICOMweb base URL {base_url!r} must use http or https")
        self.base_url = base
        self.settings = settings if settings is not None else get_settings()
        self.auth = auth if auth is not None else AuthMap()
        self.transport = Transport(self.auth, self.settings, retry)
        if cache is None or cache is True:
            self.cache: Cache | None = Cache(settings=self.settings)
        elif cache is False:
            self.cache = None
        else:
            self.cache = cache

    def __repr__(self) -> str:
        return f"DicomWebClient({self.base_url!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "auth": self.auth,
            "settings": self.settings,
            "cache": self.cache if self.cache is not None else False,
            "retry": self.transport.retry,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        base_url = state.pop("base_url")
        self.__init__(base_url, **state)  # type: ignore[misc]

    def __enter__(self) -> DicomWebClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close pooled connections (the client stays usable)."""
        self.transport.close()

    @property
    def principal(self) -> str:
        """Who the cache believes is asking (non-secret, from the AuthMap)."""
        return self.auth.principal_for(self.base_url)

    def dicomweb_client(self) -> Any:
        """A :class:`dicomweb_client.DICOMwebClient` sharing this client's session.

        Its requests get this client's per-origin credentials and ``Retry-After``-aware
        retries. Use it for what this client does not wrap (``store_instances``,
        ``delete_*``, ``retrieve_bulkdata``).
        """
        return self.transport.dicomweb_client(self.base_url)

    # ------------------------------------------------------------------ helpers

    def cache_key(self, uids: Sequence[str], representation: str) -> CacheKey:
        """The cache key of *uids* in *representation* for this client's principal."""
        return CacheKey(self.principal, self.origin, tuple(uids), representation)

    def _url(self, *path: str) -> str:
        return "/".join([self.base_url, *path])

    @staticmethod
    def _uids(*uids: str | None) -> list[str]:
        what = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
        out = []
        for name, uid in zip(what, uids, strict=False):
            if uid is None:
                break
            out.append(validate_uid(uid, lenient=True, what=name))
        return out

    def _path(
        self, study: str, series: str | None = None, instance: str | None = None
    ) -> list[str]:
        uids = self._uids(study, series, instance)
        path = ["studies", uids[0]]
        if len(uids) > 1:
            path += ["series", uids[1]]
        if len(uids) > 2:
            path += ["instances", uids[2]]
        return path

    # ------------------------------------------------------------------ QIDO-RS

    def _search(
        self,
        path: list[str],
        level: str,
        filters: Mapping[str, Any] | None,
        fields: Iterable[str],
        limit: int | None,
        fuzzy: bool,
        page_size: int,
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {}
        for name, value in (filters or {}).items():
            params[_query_key(name)] = _query_value(name, value)
        wanted = [_query_key(f) for f in fields]
        if wanted:
            params["includefield"] = ",".join(wanted)
        if fuzzy:
            params["fuzzymatching"] = "true"
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise InvalidQueryError(f"limit {limit!r} is not a non-negative integer")
        if page_size < 1:
            raise InvalidQueryError(f"page_size {page_size!r} must be at least 1")
        url = self._url(*path)
        results: list[dict[str, Any]] = []
        seen: set[str] = set()
        offset = 0
        for _ in range(MAX_PAGES):
            if limit is not None and len(results) >= limit:
                break
            size = page_size if limit is None else min(page_size, limit - len(results))
            page, response = self.transport.get_json(
                url, params={**params, "limit": size, "offset": offset}
            )
            if "Warning" in response.headers:
                log.info("%s: %s", url, response.headers["Warning"])
            fresh = []
            for item in page:
                key = _result_key(item, level)
                if key not in seen:
                    seen.add(key)
                    fresh.append(item)
            if not page:
                break
            if not fresh:
                log.warning(
                    "%s repeated a page of results (it ignores 'offset'); stopped paging", url
                )
                break
            results.extend(fresh)
            offset += len(page)
        else:
            log.warning("%s: stopped after %d pages", url, MAX_PAGES)
        return results if limit is None else results[:limit]

    def search_studies(
        self,
        filters: Mapping[str, Any] | None = None,
        *,
        fields: Iterable[str] = (),
        limit: int | None = None,
        fuzzy: bool = False,
        page_size: int = PAGE_SIZE,
    ) -> list[dict[str, Any]]:
        """Search for studies (QIDO-RS, PS3.18 §10.6.1.2; attributes: Table 10.6.1-5).

        Parameters
        ----------
        filters : mapping, optional
            Matching attributes by keyword or tag: ``{"PatientID": "X",
            "StudyDate": "20200101-20201231", "ModalitiesInStudy": "CT"}``; a list value
            is a UID list (PS3.18 §8.3.4.1).
        fields : iterable of str
            Further attributes to return (``includefield``).
        limit : int, optional
            At most this many results; all of them by default.
        fuzzy : bool
            Ask for fuzzy person-name matching (servers may ignore it).
        page_size : int
            Results asked for per request.

        Returns
        -------
        list of dict
            DICOM JSON datasets (PS3.18 Annex F), every page, each study once.

        Raises
        ------
        InvalidQueryError
            If an attribute name is neither a keyword nor a tag, or *limit* is negative.
        DICOMwebError
            If the server answers with an error.
        """
        return self._search(["studies"], "study", filters, fields, limit, fuzzy, page_size)

    def search_series(
        self,
        filters: Mapping[str, Any] | None = None,
        *,
        study_uid: str | None = None,
        fields: Iterable[str] = (),
        limit: int | None = None,
        fuzzy: bool = False,
        page_size: int = PAGE_SIZE,
    ) -> list[dict[str, Any]]:
        """Search for series (QIDO-RS, PS3.18 §10.6.1.2), in one study or in all.

        See :meth:`search_studies` for the parameters and errors.
        """
        path = ["series"] if study_uid is None else [*self._path(study_uid), "series"]
        return self._search(path, "series", filters, fields, limit, fuzzy, page_size)

    def search_instances(
        self,
        filters: Mapping[str, Any] | None = None,
        *,
        study_uid: str | None = None,
        series_uid: str | None = None,
        fields: Iterable[str] = (),
        limit: int | None = None,
        fuzzy: bool = False,
        page_size: int = PAGE_SIZE,
    ) -> list[dict[str, Any]]:
        """Search for instances (QIDO-RS, PS3.18 §10.6.1.2) of a series, a study, or all.

        See :meth:`search_studies` for the parameters and errors.
        """
        if series_uid is not None and study_uid is None:
            raise InvalidQueryError("series_uid needs study_uid (PS3.18 §10.6.1.2 resources)")
        if study_uid is None:
            path = ["instances"]
        else:
            path = [*self._path(study_uid, series_uid), "instances"]
        return self._search(path, "instance", filters, fields, limit, fuzzy, page_size)

    # ------------------------------------------------------------------ WADO-RS

    def retrieve_metadata(
        self,
        study: str,
        series: str | None = None,
        instance: str | None = None,
        *,
        refresh: bool = False,
    ) -> list[dict[str, Any]]:
        """Retrieve metadata (WADO-RS, PS3.18 §10.4.1.1.2) as DICOM JSON, cached.

        Parameters
        ----------
        study, series, instance : str
            The UIDs of the resource; metadata of every instance below it is returned.
        refresh : bool
            Ask the server even when the cache has an answer (a study or series may
            have gained instances since it was cached; instances never change).

        Returns
        -------
        list of dict
            One DICOM JSON dataset per instance.
        """
        path = [*self._path(study, series, instance), "metadata"]
        key = self.cache_key(self._uids(study, series, instance), "metadata")
        if self.cache is not None and not refresh:
            cached = self.cache.get_json(key)
            if cached is not None:
                return list(cached)
        data, _ = self.transport.get_json(self._url(*path))
        if self.cache is not None and data:
            self.cache.put_json(key, data)
        return data

    def open_series(
        self, study: str, series: str, *, transfer_syntax: str | None = "*"
    ) -> requests.Response:
        """Send a series retrieve (PS3.18 §10.4.1.1.1); return the unread streamed answer.

        For readers that consume the body themselves (see
        :mod:`imagingkit.dicomweb.direct`); close the response when done.
        """
        path = self._path(study, series)
        accept = self._instance_accept(transfer_syntax)
        return self.transport.get(self._url(*path), accept=accept, bulk=True, stream=True)

    def _stream(self, path: list[str], accept: str) -> Iterator[Part]:
        response = self.transport.get(self._url(*path), accept=accept, bulk=True, stream=True)
        content_type = response.headers.get("Content-Type", "")
        chunks = self.transport.iter_body(response)
        if not content_type.lower().startswith("multipart/"):
            # single-part answer (dicomweb-client#41): the body is the one object
            yield Part({"content-type": content_type or INSTANCE_MEDIA}, b"".join(chunks))
            return
        try:
            for headers, body in iter_parts(chunks, content_type):
                yield Part(headers, body)
        except InvalidInputError as exc:
            raise DICOMwebError(str(exc), url=response.url) from exc

    @staticmethod
    def _instance_accept(transfer_syntax: str | None) -> str:
        accept = f'multipart/related; type="{INSTANCE_MEDIA}"'
        if transfer_syntax:
            if transfer_syntax != "*":
                validate_uid(transfer_syntax, lenient=True, what="transfer-syntax")
            accept += f"; transfer-syntax={transfer_syntax}"
        return accept

    def iter_series(
        self, study: str, series: str, *, transfer_syntax: str | None = "*"
    ) -> Iterator[Part]:
        """Stream the instances of a series, one :class:`Part` each (PS3.18 §10.4.1.1.1).

        One request; parts are yielded as they arrive, each with its own headers.

        Parameters
        ----------
        study, series : str
            UIDs.
        transfer_syntax : str or None
            ``"*"`` (default): as the server stores them, the fastest and the SMART
            Imaging Access minimum; a UID: transcoded to it; None: the server's default,
            Explicit VR Little Endian (PS3.18 §8.7.3.5.2).

        Raises
        ------
        DICOMwebError
            If the server refuses or the stream breaks off (the parts already yielded
            are complete).
        """
        path = self._path(study, series)
        return self._stream(path, self._instance_accept(transfer_syntax))

    def iter_study(self, study: str, *, transfer_syntax: str | None = "*") -> Iterator[Part]:
        """Stream every instance of a study (PS3.18 §10.4.1.1.1); see :meth:`iter_series`."""
        return self._stream(self._path(study), self._instance_accept(transfer_syntax))

    def retrieve_instance(
        self, study: str, series: str, instance: str, *, transfer_syntax: str | None = "*"
    ) -> bytes:
        """Retrieve one instance as Part-10 bytes (PS3.18 §10.4.1.1.1), cached.

        Raises
        ------
        DICOMwebError
            If the server refuses or sends no instance.
        """
        uids = self._uids(study, series, instance)
        key = self.cache_key(uids, f"{INSTANCE_MEDIA}; transfer-syntax={transfer_syntax}")
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                return cached
        parts = list(self._stream(self._path(*uids), self._instance_accept(transfer_syntax)))
        if not parts:
            raise DICOMwebError("the server sent no instance", url=self._url(*self._path(*uids)))
        payload = parts[0].payload
        if self.cache is not None:
            self.cache.put(key, payload)
        return payload

    def retrieve_frames(
        self,
        study: str,
        series: str,
        instance: str,
        frames: Sequence[int],
        *,
        media_type: str = "application/octet-stream",
        transfer_syntax: str | None = None,
    ) -> list[Part]:
        """Retrieve frames of an instance (PS3.18 §10.4.1.1.4), one :class:`Part` each.

        Parameters
        ----------
        frames : sequence of int
            1-based frame numbers.
        media_type : str
            ``application/octet-stream`` (native pixels, the default) or a compressed
            image type (``image/jpeg``, ``image/jp2``, ``image/jls`` ...).
        transfer_syntax : str, optional
            ``"*"`` for the stored encoding, or a UID.

        Raises
        ------
        InvalidInputError
            If a frame number is not a positive integer.
        """
        numbers = [int(f) for f in frames]
        if not numbers or any(n < 1 for n in numbers):
            raise InvalidInputError(f"frame numbers {list(frames)!r} must be positive (1-based)")
        path = [*self._path(study, series, instance), "frames", ",".join(map(str, numbers))]
        accept = f'multipart/related; type="{media_type}"'
        if transfer_syntax:
            accept += f"; transfer-syntax={transfer_syntax}"
        return list(self._stream(path, accept))

    def _image(
        self,
        path: list[str],
        uids: list[str],
        representation: str,
        accept: str,
        params: dict[str, Any],
    ) -> bytes:
        key = self.cache_key(uids, representation)
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                return cached
        response = self.transport.get(self._url(*path), accept=accept, params=params, bulk=True)
        body = response.content
        content_type = response.headers.get("Content-Type", "")
        if content_type.lower().startswith("multipart/"):
            parts = list(iter_parts(body, content_type, strict=False))
            body = parts[0][1] if parts else b""
        if not body:
            raise DICOMwebError("the server sent an empty image", url=response.url)
        if self.cache is not None:
            self.cache.put(key, body)
        return body

    def rendered(
        self,
        study: str,
        series: str | None = None,
        instance: str | None = None,
        *,
        frame: int | None = None,
        media_type: str = "image/png",
        window: str | tuple[float, ...] | None = None,
        viewport: tuple[int, int] | None = None,
        quality: int | None = None,
    ) -> bytes:
        """Retrieve a rendered image (PS3.18 §10.4.1.1.3, parameters §8.3.5.1), cached.

        Parameters
        ----------
        frame : int, optional
            1-based frame of a multi-frame instance.
        media_type : str
            ``image/png`` (default), ``image/jpeg`` or ``image/gif``.
        window : str or tuple, optional
            VOI window in the Modality LUT's units: ``(center, width[, function])``,
            e.g. ``(40, 400)``; the function defaults to ``linear``.
        viewport : (width, height), optional
            Scale to fit.
        quality : int, optional
            JPEG quality 1–100.

        Returns
        -------
        bytes
            The encoded image.
        """
        path = self._path(study, series, instance)
        if frame is not None:
            if instance is None:
                raise InvalidInputError("a frame needs an instance UID")
            path += ["frames", str(int(frame))]
        path.append("rendered")
        params: dict[str, Any] = {}
        if window is not None:
            values = window.split(",") if isinstance(window, str) else [str(v) for v in window]
            if len(values) == 2:  # PS3.18 §8.3.5.1.4: center,width,function
                values.append("linear")
            params["window"] = ",".join(v.strip() for v in values)
        if viewport is not None:
            params["viewport"] = f"{int(viewport[0])},{int(viewport[1])}"
        if quality is not None:
            params["quality"] = int(quality)
        representation = "rendered; " + json.dumps(
            {"media": media_type, "frame": frame, **params}, sort_keys=True
        )
        uids = self._uids(study, series, instance)
        return self._image(path, uids, representation, media_type, params)

    def thumbnail(
        self,
        study: str,
        series: str | None = None,
        instance: str | None = None,
        *,
        media_type: str = "image/jpeg",
        size: int = 128,
    ) -> bytes:
        """Retrieve a small representative image (Sup 203 ``/thumbnail``), cached.

        Servers without ``/thumbnail`` (Orthanc's plugin before 1.19, dicomweb-client has
        no call for it) are asked for ``/rendered`` with a ``size`` × ``size`` viewport:
        of the instance, or of the middle instance of a series, or of the first series
        of a study.

        Returns
        -------
        bytes
            The encoded image (``media_type``).
        """
        uids = self._uids(study, series, instance)
        path = [*self._path(study, series, instance), "thumbnail"]
        viewport = {"viewport": f"{int(size)},{int(size)}"}
        representation = f"thumbnail; media={media_type}; size={int(size)}"
        try:
            return self._image(path, uids, representation, media_type, viewport)
        except DICOMwebError as exc:
            if exc.status not in _THUMBNAIL_FALLBACK:
                raise
        target = list(uids)
        if len(target) == 1:
            found = self.search_series(study_uid=target[0], limit=1)
            if not found:
                raise DICOMwebError("the study has no series to show", url=self._url(*path))
            target.append(_result_key(found[0], "series"))
        if len(target) == 2:
            found = self.search_instances(study_uid=target[0], series_uid=target[1])
            if not found:
                raise DICOMwebError("the series has no instance to show", url=self._url(*path))

            def number(item: dict[str, Any]) -> int:
                values = (item.get("00200013") or {}).get("Value") or [0]
                try:
                    return int(values[0])
                except (TypeError, ValueError):
                    return 0

            found.sort(key=number)
            target.append(_result_key(found[len(found) // 2], "instance"))
        try:
            return self.rendered(*target, media_type=media_type, viewport=(size, size))
        except DICOMwebError as exc:
            if exc.status != 400:  # Orthanc refuses viewports larger than the image
                raise
        return _shrink(self.rendered(*target, media_type=media_type), size, media_type)

    # ------------------------------------------------------------------ volumes and bulk

    def series_volume(self, study: str, series: str, *, refresh: bool = False) -> Volume:
        """Retrieve a series as a 3-D volume (:func:`.volume.series_volume`)."""
        from imagingkit.dicomweb.volume import series_volume

        return series_volume(self, study, series, refresh=refresh)

    def instance_pixels(
        self, study: str, series: str, instance: str, *, frames: Sequence[int] | None = None
    ) -> np.ndarray:
        """One instance's pixels with the Modality LUT applied (PS3.3 C.11.1), cached.

        Parameters
        ----------
        frames : sequence of int, optional
            1-based frames of a multi-frame instance; all by default.

        Returns
        -------
        numpy.ndarray
            ``(rows, columns)`` for one frame, ``(frames, rows, columns)`` for several (a
            trailing samples axis for colour); see
            :func:`imagingkit.dicomweb.pixels.instance_pixels`.

        Raises
        ------
        InvalidInputError
            If a frame number is outside the instance.
        """
        from imagingkit.dicomjson import read_dicom_json
        from imagingkit.dicomweb.pixels import instance_pixels

        payload = self.retrieve_instance(study, series, instance)
        pixels = instance_pixels(payload)
        if frames is None:
            return pixels
        entry = read_dicom_json(payload, only={0x00280008}).dataset.get("00280008") or {}
        count = int((entry.get("Value") or [1])[0] or 1)
        wanted = [int(f) for f in frames]
        if not wanted or any(not 1 <= f <= count for f in wanted):
            raise InvalidInputError(f"frames {wanted} outside 1..{count} of instance {instance}")
        stack = pixels if count > 1 else pixels[np.newaxis]
        chosen = stack[[f - 1 for f in wanted]]
        return chosen[0] if len(wanted) == 1 else chosen

    def instance_count(self, study: str, series: str) -> int | None:
        """Number of instances of a series per QIDO-RS (Number of Series Related Instances)."""
        try:
            found = self.search_series(
                {"SeriesInstanceUID": series},
                study_uid=study,
                fields=["NumberOfSeriesRelatedInstances"],
                limit=1,
            )
        except DICOMwebError:
            return None
        if not found:
            return None
        values = (found[0].get("00201209") or {}).get("Value") or []
        try:
            return int(values[0]) if values else None
        except (TypeError, ValueError):
            return None

    def fetch_series(
        self,
        refs: Any,
        *,
        output: str = "volume",
        executor: Executor | Any | None = None,
        progress: bool = True,
    ) -> BulkResult:
        """Retrieve many series concurrently; see :func:`imagingkit.dicomweb.bulk.fetch_series`."""
        from imagingkit.dicomweb.bulk import fetch_series

        return fetch_series(self, refs, output=output, executor=executor, progress=progress)

    def download(
        self,
        refs: Any,
        directory: str | Path,
        *,
        executor: Executor | Any | None = None,
        progress: bool = True,
    ) -> BulkResult:
        """Save series as Part-10 files, resumably (:func:`.bulk.download`)."""
        from imagingkit.dicomweb.bulk import download

        return download(self, refs, directory, executor=executor, progress=progress)


def _keyword(tag: str) -> str:
    """The keyword of an 8-hex-digit tag, or the tag itself (for DataFrame columns)."""
    try:
        return keyword_for_tag(int(tag, 16)) or tag
    except ValueError:
        return tag


def dataset_keywords(item: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten a DICOM JSON dataset to ``{keyword: first value or list}`` (for DataFrames)."""
    out: dict[str, Any] = {}
    for tag, entry in item.items():
        if not isinstance(entry, Mapping):
            continue
        values = entry.get("Value")
        if values is None:
            out[_keyword(tag)] = None
        elif entry.get("vr") == "PN":
            names = [v.get("Alphabetic") if isinstance(v, Mapping) else v for v in values]
            out[_keyword(tag)] = names[0] if len(names) == 1 else names
        elif entry.get("vr") == "SQ":
            out[_keyword(tag)] = values
        else:
            out[_keyword(tag)] = values[0] if len(values) == 1 else list(values)
    return out


def _shrink(data: bytes, size: int, media_type: str) -> bytes:
    """Scale an encoded image down to fit *size* × *size* (never up), re-encoded."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(data))
    if max(image.size) <= size:
        return data
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, {"image/png": "PNG", "image/gif": "GIF"}.get(media_type, "JPEG"))
    return out.getvalue()
