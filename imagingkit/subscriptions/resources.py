"""Subscription resources and server discovery, sans I/O.

* :func:`topic_subscription` — an R4 ``backport-subscription`` (Subscriptions Backport IG
  ``BackportSubscription.fsh``): ``criteria`` = the topic canonical, filters in
  ``criteria.extension[backport-filter-criteria]``, heartbeat in
  ``channel.extension[backport-heartbeat-period]``, payload content in
  ``channel.payload.extension[backport-payload-content]``.
* :func:`criteria_subscription` — an R4 legacy Subscription (R4 subscription.html):
  ``criteria`` a search, ``channel.type = websocket``.
* :func:`legacy_websocket_url` — the URL a server advertises with the
  ``capabilitystatement-websocket`` extension (R4 subscription.html §2.46.7.2).
* :func:`same_origin_websocket` — refuses a websocket URL on another origin than the FHIR
  server (DESIGN.md D7: a binding token is a credential).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from imagingkit.auth import origin_of
from imagingkit.errors import AuthError, InvalidInputError, redact_url
from imagingkit.subscriptions.topics import BACKPORT_SUBSCRIPTION_PROFILE

__all__ = [
    "BACKPORT",
    "CONTENTS",
    "WEBSOCKET_EXTENSION",
    "criteria_subscription",
    "declares_topic",
    "heartbeat_period",
    "legacy_websocket_url",
    "same_origin_websocket",
    "topic_subscription",
]

#: Base of the Backport IG's extension URLs.
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
#: ``CapabilityStatement.rest.extension`` advertising the legacy websocket URL.
WEBSOCKET_EXTENSION = "http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket"
#: Payload content codes (Backport IG ``backport-content-code-system``).
CONTENTS = ("empty", "id-only", "full-resource")
_WS_SCHEME = {"ws": "http", "wss": "https"}


def _check_content(content: str) -> str:
    if content not in CONTENTS:
        raise InvalidInputError(f"payload content {content!r} is not one of {CONTENTS}")
    return content


def topic_subscription(
    topic: str,
    filter_criteria: str | None = None,
    *,
    content: str = "id-only",
    heartbeat_period: int | None = 30,
    reason: str = "imagingkit live query",
    end: str | None = None,
) -> dict[str, Any]:
    """A topic-based R4 Subscription on the websocket channel (Backport IG).

    Parameters
    ----------
    topic : str
        Topic canonical URL (e.g. :data:`~imagingkit.subscriptions.topics.IMAGINGSTUDY_TOPIC`).
    filter_criteria : str, optional
        ``ImagingStudy?patient=Patient/p1`` style filter.
    content : {"empty", "id-only", "full-resource"}
    heartbeat_period : int, optional
        Seconds between heartbeats the server should send.
    """
    channel: dict[str, Any] = {
        "type": "websocket",
        "payload": "application/fhir+json",
        "_payload": {
            "extension": [
                {"url": BACKPORT + "backport-payload-content", "valueCode": _check_content(content)}
            ]
        },
    }
    if heartbeat_period:
        channel["extension"] = [
            {"url": BACKPORT + "backport-heartbeat-period", "valueUnsignedInt": heartbeat_period}
        ]
    resource: dict[str, Any] = {
        "resourceType": "Subscription",
        "meta": {"profile": [BACKPORT_SUBSCRIPTION_PROFILE]},
        "status": "requested",
        "reason": reason,
        "criteria": topic,
        "channel": channel,
    }
    if filter_criteria:
        extension = {"url": BACKPORT + "backport-filter-criteria", "valueString": filter_criteria}
        resource["_criteria"] = {"extension": [extension]}
    if end:
        resource["end"] = end
    return resource


def criteria_subscription(
    criteria: str, *, reason: str = "imagingkit live query", payload: str | None = None
) -> dict[str, Any]:
    """An R4 legacy, criteria-based Subscription on the websocket channel.

    Servers that give these binding tokens (Medplum) send R4B-style notification
    Bundles; the others speak ``bind``/``bound``/``ping``.
    """
    channel: dict[str, Any] = {"type": "websocket"}
    if payload:
        channel["payload"] = payload
    return {
        "resourceType": "Subscription",
        "status": "active",
        "reason": reason,
        "criteria": criteria,
        "channel": channel,
    }


def heartbeat_period(subscription: Mapping[str, Any]) -> int | None:
    """The heartbeat period of a (backport) Subscription, in seconds, if it has one."""
    channel = subscription.get("channel") or {}
    for ext in channel.get("extension") or []:
        if isinstance(ext, Mapping) and str(ext.get("url", "")).endswith("heartbeat-period"):
            value = ext.get("valueUnsignedInt")
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def legacy_websocket_url(statement: Mapping[str, Any] | None) -> str | None:
    """The websocket URL of ``CapabilityStatement.rest[].extension`` (uri or string)."""
    for rest in (statement or {}).get("rest") or []:
        for ext in (rest or {}).get("extension") or []:
            if isinstance(ext, Mapping) and ext.get("url") == WEBSOCKET_EXTENSION:
                value = ext.get("valueUrl") or ext.get("valueUri") or ext.get("valueString")
                if isinstance(value, str) and value:
                    return value
    return None


def declares_topic(statement: Mapping[str, Any] | None, topic: str) -> bool:
    """Whether a CapabilityStatement names *topic* anywhere (extension or instantiates)."""

    def walk(value: Any) -> bool:
        if isinstance(value, str):
            return value == topic
        if isinstance(value, Mapping):
            return any(walk(v) for v in value.values())
        if isinstance(value, list):
            return any(walk(v) for v in value)
        return False

    return walk(statement or {})


def same_origin_websocket(url: str, fhir_base: str) -> str:
    """Return *url* if it is a websocket URL on the FHIR server's own origin.

    ``ws`` pairs with ``http`` and ``wss`` with ``https``; a relative URL is resolved
    against the FHIR base.

    Raises
    ------
    AuthError
        The URL is on another origin (host, port or scheme): the binding token — a
        credential — would leave the FHIR server (DESIGN.md D7).
    """
    parts = urlsplit(url)
    if not parts.scheme:
        base = urlsplit(fhir_base)
        scheme = "wss" if base.scheme == "https" else "ws"
        path = url if url.startswith("/") else f"{base.path.rstrip('/')}/{url}"
        url = f"{scheme}://{base.netloc}{path}"
        parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _WS_SCHEME:
        raise AuthError(f"websocket URL {redact_url(url)!r} is not ws:// or wss://")
    as_http = _WS_SCHEME[scheme] + url[len(parts.scheme) :]
    if origin_of(as_http) != origin_of(fhir_base):
        raise AuthError(
            f"the server's websocket URL {redact_url(url)!r} is on another origin than the "
            f"FHIR server {origin_of(fhir_base)!r}; refused, the binding token would leave it"
        )
    return url
