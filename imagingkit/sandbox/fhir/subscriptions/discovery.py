"""How the CapabilityStatement advertises Subscriptions (R4 capabilitystatement-websocket;
Subscriptions Backport IG, capability statements and topic discovery).

- ``instantiates``: the Backport IG's ``backport-subscription-server-r4``;
- ``rest[0].extension[capabilitystatement-websocket].valueUrl``: the websocket endpoint;
- ``rest[0].resource[type=Subscription]``: one
  ``capabilitystatement-subscriptiontopic-canonical`` extension per topic, and the
  operations ``$status``, ``$events``, ``$get-ws-binding-token``.

Only constants are imported, so :mod:`..capability` can use this without a cycle.
"""

from __future__ import annotations

from typing import Any

from imagingkit.sandbox.fhir.subscriptions.definitions import (
    EVENTS_WINDOW,
    TOPIC_EXTENSION,
    TOPICS,
    WEBSOCKET_EXTENSION,
    websocket_url,
)

__all__ = ["SERVER_CAPABILITY", "advertise_subscriptions"]

_IG = "http://hl7.org/fhir/uv/subscriptions-backport"
#: the Backport IG's CapabilityStatement for R4 servers
SERVER_CAPABILITY = f"{_IG}/CapabilityStatement/backport-subscription-server-r4"
_OPERATIONS = {
    "status": "backport-subscription-status",
    "events": "backport-subscription-events",
    "get-ws-binding-token": "backport-subscription-get-ws-binding-token",
}


def advertise_subscriptions(statement: dict[str, Any], fhir_base: str) -> dict[str, Any]:
    """Add the Subscription advertising to *statement* (in place) and return it."""
    statement["instantiates"] = [SERVER_CAPABILITY]
    rest = statement["rest"][0]
    rest.setdefault("extension", []).append(
        {"url": WEBSOCKET_EXTENSION, "valueUrl": websocket_url(fhir_base)}
    )
    for resource in rest["resource"]:
        if resource["type"] != "Subscription":
            continue
        resource["extension"] = [
            {"url": TOPIC_EXTENSION, "valueCanonical": canonical} for canonical in TOPICS
        ]
        resource["operation"] = [
            {"name": name, "definition": f"{_IG}/OperationDefinition/{definition}"}
            for name, definition in _OPERATIONS.items()
        ]
        topics = "; ".join(f"{url}: {text}" for url, (_, text) in TOPICS.items())
        resource["documentation"] = (
            "R4 criteria Subscriptions (websocket bind/ping, rest-hook) and Backport "
            f"topic Subscriptions. Topics: {topics}. Channels: websocket "
            f"({websocket_url(fhir_base)}; bind <id>, or bind-with-token as JSON or text), "
            "rest-hook (handshake, then notifications; never follows redirects). "
            f"$events answers at most {EVENTS_WINDOW} events per call."
        )
    return statement
