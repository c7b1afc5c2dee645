"""Canonical URLs and limits of the store's FHIR Subscriptions (R4 + Subscriptions Backport IG).

Only constants live here, so the CapabilityStatement (:mod:`..capability`) can import them
without pulling in the subscription machinery.
"""

from __future__ import annotations

from imagingkit.subscriptions.topics import BACKPORT_SUBSCRIPTION_PROFILE, IMAGINGSTUDY_TOPIC

__all__ = [
    "BACKPORT_SUBSCRIPTION_PROFILE",
    "BINDING_TOKEN_LIFETIME",
    "CONTENT_EXTENSION",
    "EVENTS_RETAINED",
    "EVENTS_WINDOW",
    "FILTER_EXTENSION",
    "HEARTBEAT_EXTENSION",
    "IMAGINGSTUDY_TOPIC",
    "MAX_COUNT_EXTENSION",
    "NOTIFICATION_PROFILE",
    "STATUS_PROFILE",
    "TIMEOUT_EXTENSION",
    "TOPICS",
    "TOPIC_EXTENSION",
    "WEBSOCKET_EXTENSION",
    "WEBSOCKET_PATH",
    "websocket_url",
]

_SD = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"

#: ``Subscription.criteria.extension``: the topic's filter (Backport IG, backport-subscription)
FILTER_EXTENSION = _SD + "backport-filter-criteria"
#: ``Subscription.channel.extension``: seconds between heartbeats
HEARTBEAT_EXTENSION = _SD + "backport-heartbeat-period"
#: ``Subscription.channel.extension``: seconds a rest-hook POST may take
TIMEOUT_EXTENSION = _SD + "backport-timeout"
#: ``Subscription.channel.extension``: events per notification (accepted, always 1 here)
MAX_COUNT_EXTENSION = _SD + "backport-max-count"
#: ``Subscription.channel.payload.extension``: ``empty | id-only | full-resource``
CONTENT_EXTENSION = _SD + "backport-payload-content"
#: ``Bundle.meta.profile`` of a notification (Backport IG, R4 notifications)
NOTIFICATION_PROFILE = _SD + "backport-subscription-notification-r4"
#: ``Parameters.meta.profile`` of the status entry (Backport IG, R4 notifications)
STATUS_PROFILE = _SD + "backport-subscription-status-r4"
#: ``CapabilityStatement.rest.resource[Subscription].extension``: one per supported topic
#: (Backport IG, capability-subscriptiontopic-canonical)
TOPIC_EXTENSION = _SD + "capabilitystatement-subscriptiontopic-canonical"
#: ``CapabilityStatement.rest.extension``: where the websocket listens (R4 core)
WEBSOCKET_EXTENSION = "http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket"

#: The topics this store defines: canonical → (resource type, description).
TOPICS: dict[str, tuple[str, str]] = {
    IMAGINGSTUDY_TOPIC: (
        "ImagingStudy",
        "ImagingStudy created or updated (any write path: REST, Bundle, STOW-RS sync); "
        "filters are ImagingStudy search parameters, e.g. ImagingStudy?patient=Patient/p1",
    )
}

#: The websocket endpoint, relative to the FHIR base (a ``$`` name never collides with a
#: resource type or id route).
WEBSOCKET_PATH = "$subscription-ws"
#: Seconds a websocket binding token stays valid.
BINDING_TOKEN_LIFETIME = 300.0
#: Most events one ``$events`` answer carries (the rest: ask again from the next number).
EVENTS_WINDOW = 100
#: Events kept per Subscription for ``$events`` (older ones are dropped).
EVENTS_RETAINED = 10_000


def websocket_url(fhir_base: str) -> str:
    """The ``ws://``/``wss://`` URL of the websocket endpoint below *fhir_base*."""
    base = fhir_base.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    return f"{base}/{WEBSOCKET_PATH}"
