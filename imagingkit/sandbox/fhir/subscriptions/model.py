"""What a stored ``Subscription`` asks for, checked when it is written.

R4 legacy (criteria-based, FHIR R4 subscription.html) and Backport topic-based
(Subscriptions Backport IG, ``backport-subscription`` profile) Subscriptions are both
read into one :class:`SubscriptionSpec`. :func:`parse_subscription` refuses, with a 400
naming the element, anything the store cannot honour: a criteria that is not a search of
a served type, an unknown topic, a filter the topic's search engine rejects, a channel
type other than ``rest-hook``/``websocket``, a rest-hook endpoint that is not an absolute
``http(s)`` URL, malformed headers, a heartbeat period or timeout out of range, an
unsupported payload MIME type or content code, a malformed ``end``.

Rest-hook endpoints may name any host, loopback included: the user configures them and
the store runs on the user's machine (the sandbox has no multi-tenant threat model).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from imagingkit.errors import InvalidInputError
from imagingkit.sandbox.fhir.dates import date_range
from imagingkit.sandbox.fhir.search import SearchRequest, parse_search
from imagingkit.sandbox.fhir.searchparams import RESOURCE_TYPES
from imagingkit.sandbox.fhir.subscriptions.definitions import (
    BACKPORT_SUBSCRIPTION_PROFILE,
    CONTENT_EXTENSION,
    FILTER_EXTENSION,
    HEARTBEAT_EXTENSION,
    MAX_COUNT_EXTENSION,
    TIMEOUT_EXTENSION,
    TOPICS,
)

__all__ = [
    "CONTENTS",
    "DELIVERING",
    "STATUSES",
    "SubscriptionSpec",
    "parse_subscription",
]

#: ``Subscription.status`` codes (R4 subscription-status).
STATUSES = ("requested", "active", "error", "off")
#: Statuses under which changes are numbered and delivered (Backport errors: events keep
#: counting while delivery fails).
DELIVERING = ("active", "error")
#: ``backport-payload-content`` codes.
CONTENTS = ("empty", "id-only", "full-resource")
_CHANNELS = ("rest-hook", "websocket")
_PAYLOADS = ("application/fhir+json", "application/json")
_RESULT_PARAMS = ("_sort", "_count", "_include", "_revinclude", "_summary", "_elements")
_MAX_HEARTBEAT = 86_400
_MAX_TIMEOUT = 60
_DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True)
class SubscriptionSpec:
    """A Subscription as the delivery machinery uses it.

    Attributes
    ----------
    id : str
    version : int
        ``meta.versionId`` of the stored resource it was read from.
    status : str
        One of :data:`STATUSES`.
    topic : str or None
        The topic canonical (Backport), or None for an R4 legacy criteria Subscription.
    resource_type : str
        The type whose writes it watches.
    search : SearchRequest
        The criteria (legacy) or the topic filter (Backport), parsed by the store's own
        search engine; matching restricts it to the written ids.
    channel : str
        ``rest-hook`` or ``websocket``.
    endpoint : str or None
        The rest-hook URL.
    headers : tuple of (str, str)
        ``channel.header`` split into HTTP header name and value.
    payload : str or None
        ``channel.payload`` (MIME type), None for no body.
    content : str
        ``empty``, ``id-only`` or ``full-resource`` (Backport; legacy: ``full-resource``
        when a payload is set, else ``empty``).
    heartbeat : int or None
        Seconds between heartbeats (Backport ``backport-heartbeat-period``).
    timeout : float
        Seconds a rest-hook POST may take (``backport-timeout``, default 10).
    end_ms : int or None
        ``Subscription.end`` in epoch ms: no delivery after it.
    error : str or None
        ``Subscription.error``: why the server set status ``error``.
    """

    id: str
    version: int
    status: str
    topic: str | None
    resource_type: str
    search: SearchRequest
    channel: str
    endpoint: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    payload: str | None = None
    content: str = "empty"
    heartbeat: int | None = None
    timeout: float = _DEFAULT_TIMEOUT
    end_ms: int | None = None
    error: str | None = None

    @property
    def backport(self) -> bool:
        """Whether it is a topic-based (Backport IG) Subscription."""
        return self.topic is not None

    def ended(self, now_ms: int) -> bool:
        """Whether ``Subscription.end`` has passed."""
        return self.end_ms is not None and now_ms >= self.end_ms

    def with_status(self, status: str) -> SubscriptionSpec:
        """A copy with another status."""
        return dataclasses.replace(self, status=status)


def _bad(element: str, why: str) -> InvalidInputError:
    return InvalidInputError(f"Subscription.{element}: {why}")


def _extensions(element: Any, url: str) -> list[dict[str, Any]]:
    if not isinstance(element, dict):
        return []
    found = element.get("extension") or []
    if not isinstance(found, list):
        return []
    return [e for e in found if isinstance(e, dict) and e.get("url") == url]


def _one_extension_value(element: Any, url: str, key: str, where: str) -> Any:
    found = _extensions(element, url)
    if not found:
        return None
    if len(found) > 1:
        raise _bad(where, f"extension {url} may appear once")
    return found[0].get(key)


def _search(resource_type: str, query: str, where: str) -> SearchRequest:
    params = parse_qsl(query, keep_blank_values=True)
    for name, _ in params:
        if name.split(":", 1)[0] in _RESULT_PARAMS:
            raise _bad(where, f"{name!r} is a result parameter; criteria select resources only")
    try:
        return parse_search(resource_type, params, strict=True)
    except InvalidInputError as exc:
        raise _bad(where, f"{query!r} is not a search this store can run: {exc}") from None


def _criteria_search(text: str, where: str, *, required_type: str | None = None) -> SearchRequest:
    rtype, _, query = text.partition("?")
    if required_type is not None and "?" not in text and "=" in text:
        rtype, query = required_type, text  # a bare filter "patient=Patient/x"
    if rtype not in RESOURCE_TYPES:
        raise _bad(
            where,
            f"{text!r} does not start with a resource type this store serves "
            f"({', '.join(RESOURCE_TYPES)})",
        )
    if required_type is not None and rtype != required_type:
        raise _bad(where, f"{text!r}: the topic's filters apply to {required_type}")
    return _search(rtype, query, where)


def _topic_search(resource: dict[str, Any], topic: str) -> SearchRequest:
    rtype, _ = TOPICS[topic]
    criteria_element = resource.get("_criteria")
    filters = _extensions(criteria_element, FILTER_EXTENSION)
    merged = SearchRequest(rtype)
    for item in filters:
        value = item.get("valueString")
        if not isinstance(value, str) or not value.strip():
            raise _bad("criteria.extension", "backport-filter-criteria needs a valueString")
        part = _criteria_search(value.strip(), "criteria.extension", required_type=rtype)
        merged.criteria.extend(part.criteria)
        merged.used.extend(part.used)
    return merged


def _endpoint(channel: dict[str, Any]) -> str:
    endpoint = channel.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise _bad("channel.endpoint", "a rest-hook needs the URL to POST notifications to")
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _bad("channel.endpoint", f"{endpoint!r} is not an absolute http(s) URL")
    if any(ch in endpoint for ch in "\r\n\t "):
        raise _bad("channel.endpoint", f"{endpoint!r} contains whitespace")
    return endpoint


def _headers(channel: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    raw = channel.get("header") or []
    if not isinstance(raw, list):
        raise _bad("channel.header", "must be a list of 'Name: value' strings")
    out = []
    for item in raw:
        if not isinstance(item, str) or ":" not in item or any(c in item for c in "\r\n\0"):
            raise _bad("channel.header", f"{item!r} is not a 'Name: value' header")
        name, _, value = item.partition(":")
        name = name.strip()
        if not name or any(c in name for c in ' ()<>@,;:\\"/[]?={}'):
            raise _bad("channel.header", f"{item!r} has no valid header name")
        out.append((name, value.strip()))
    return tuple(out)


def _bounded_int(value: Any, where: str, low: int, high: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(where, f"{value!r} is not a whole number of seconds from {low} to {high}")
    return value


def _content(channel: dict[str, Any], payload: str | None, backport: bool) -> str:
    code = _one_extension_value(
        channel.get("_payload"), CONTENT_EXTENSION, "valueCode", "channel.payload"
    )
    if code is None:
        if not backport:
            return "full-resource" if payload else "empty"
        return "id-only" if payload else "empty"
    if code not in CONTENTS:
        raise _bad("channel.payload", f"content {code!r} is not one of {', '.join(CONTENTS)}")
    if payload is None and code != "empty":
        raise _bad("channel.payload", f"content {code!r} needs a payload MIME type")
    return str(code)


def _end_ms(resource: dict[str, Any]) -> int | None:
    end = resource.get("end")
    if end is None:
        return None
    if not isinstance(end, str):
        raise _bad("end", f"{end!r} is not an instant")
    try:
        return date_range(end, what="Subscription.end")[0]
    except InvalidInputError:
        raise _bad("end", f"{end!r} is not an instant") from None


def parse_subscription(resource: dict[str, Any]) -> SubscriptionSpec:
    """Read and check a Subscription resource (R4 subscription.html, Backport IG).

    Parameters
    ----------
    resource : dict
        A ``Subscription`` (``id`` and ``meta.versionId`` may be absent before storing).

    Returns
    -------
    SubscriptionSpec

    Raises
    ------
    InvalidInputError
        Naming the element that cannot be honoured (see the module docstring).
    """
    status = resource.get("status", "requested")
    if status not in STATUSES:
        raise _bad("status", f"{status!r} is not one of {', '.join(STATUSES)}")
    criteria = resource.get("criteria")
    if not isinstance(criteria, str) or not criteria.strip():
        raise _bad("criteria", "a search (R4) or a topic canonical (Backport) is required")
    criteria = criteria.strip()
    profiles = (resource.get("meta") or {}).get("profile") or []
    looks_topic = criteria.startswith(("http://", "https://", "urn:"))
    if looks_topic or BACKPORT_SUBSCRIPTION_PROFILE in profiles:
        if criteria not in TOPICS:
            raise _bad(
                "criteria",
                f"unknown topic {criteria!r}; this store defines: {', '.join(TOPICS)} "
                "(see CapabilityStatement.rest.resource[Subscription])",
            )
        topic: str | None = criteria
        rtype = TOPICS[criteria][0]
        search = _topic_search(resource, criteria)
    else:
        topic = None
        search = _criteria_search(criteria, "criteria")
        rtype = search.resource_type
    channel = resource.get("channel")
    if not isinstance(channel, dict):
        raise _bad("channel", "a channel (type, endpoint, payload) is required")
    kind = channel.get("type")
    if kind not in _CHANNELS:
        raise _bad("channel.type", f"{kind!r} is not supported here; use {' or '.join(_CHANNELS)}")
    payload = channel.get("payload")
    if payload is not None:
        if not isinstance(payload, str) or payload.split(";")[0].strip() not in _PAYLOADS:
            raise _bad("channel.payload", f"{payload!r} is not one of {', '.join(_PAYLOADS)}")
        payload = payload.split(";")[0].strip()
    heartbeat = _bounded_int(
        _one_extension_value(channel, HEARTBEAT_EXTENSION, "valueUnsignedInt", "channel"),
        "channel.extension (backport-heartbeat-period)",
        1,
        _MAX_HEARTBEAT,
    )
    timeout = _bounded_int(
        _one_extension_value(channel, TIMEOUT_EXTENSION, "valueUnsignedInt", "channel"),
        "channel.extension (backport-timeout)",
        1,
        _MAX_TIMEOUT,
    )
    _bounded_int(
        _one_extension_value(channel, MAX_COUNT_EXTENSION, "valuePositiveInt", "channel"),
        "channel.extension (backport-max-count)",
        1,
        1_000_000,
    )
    meta = resource.get("meta") or {}
    version = str(meta.get("versionId", "0"))
    return SubscriptionSpec(
        id=str(resource.get("id", "")),
        version=int(version) if version.isdigit() else 0,
        status=str(status),
        topic=topic,
        resource_type=rtype,
        search=search,
        channel=str(kind),
        endpoint=_endpoint(channel) if kind == "rest-hook" else None,
        headers=_headers(channel),
        payload=payload,
        content=_content(channel, payload, topic is not None),
        heartbeat=heartbeat,
        timeout=float(timeout) if timeout is not None else _DEFAULT_TIMEOUT,
        end_ms=_end_ms(resource),
        error=resource["error"] if isinstance(resource.get("error"), str) else None,
    )
