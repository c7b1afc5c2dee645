"""FHIR Subscriptions: keep a notebook current with the server (issue 6, point 4).

Live DataFrame of a cohort (the common case)::

    import imagingkit
    bridge = imagingkit.connect(fhir="http://127.0.0.1:8042/fhir")
    with bridge.watch(bridge.cohort().imaging(modality="CT")) as live:
        live.df                                  # same columns/dtypes as cohort.studies()
        live.on_change(lambda diff: print(diff.added, diff.updated, diff.removed))
        live.wait_for(lambda df: len(df) > 10, timeout=60)

Lower level, any resource type::

    from imagingkit.subscriptions import SubscriptionListener
    with SubscriptionListener(bridge.fhir, "ImagingStudy?patient=Patient/p1") as listener:
        listener.on_change(lambda change: print(change.focus, change.source))
        listener.wait_for("ImagingStudy/s9", timeout=30)
        listener.stats        # events, duplicates, gaps_detected, recoveries, reconnects …

Public API
----------
:class:`SubscriptionListener` (blocking; :class:`AsyncSubscriptionListener` for asyncio)
    Creates (or adopts, ``subscription_id=``) a Subscription — topic-based (Backport IG)
    when the server declares the topic, else R4 legacy criteria — binds a websocket
    (``$get-ws-binding-token`` + ``bind-with-token``, or legacy ``bind <id>``), tracks event
    numbers (dedupe, gaps → ``$events`` or re-query, heartbeat silence → ``$status`` and
    reconnect), reconnects with backoff and delivers one :class:`Change` per changed
    resource. ``close()`` deletes a Subscription it created (``on_close="off"`` switches it
    off instead, ``"keep"`` leaves it; adopted ones are kept).
:class:`LiveFrame` (``Bridge.watch(query)``)
    ``.df``, ``.on_change(cb)`` with a :class:`FrameDiff`, ``.wait_for(predicate | count,
    timeout)``, ``.refresh()``, ``.close()``, context manager, escaped ``_repr_html_``.
Sans-I/O pieces
    :func:`parse_notifications` (R4 backport Parameters, R4B/Medplum and R5
    SubscriptionStatus Bundles), :func:`parse_status_bundle`, :func:`parse_legacy_frame`,
    :func:`parse_binding_token`, :class:`EventTracker` (gap rules), :mod:`.resources`
    (Subscription resources, same-origin websocket check).

Errors: malformed notifications raise :class:`~imagingkit.errors.InvalidInputError`;
server refusals :class:`~imagingkit.errors.FHIRError`; a websocket URL on another origin
than the FHIR server :class:`~imagingkit.errors.AuthError` (the binding token is a
credential, DESIGN.md D7).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imagingkit.subscriptions.gaps import EventTracker, Gap
from imagingkit.subscriptions.notification import (
    BindingToken,
    LegacyFrame,
    Notification,
    NotificationEvent,
    parse_binding_token,
    parse_legacy_frame,
    parse_notifications,
    parse_status,
    parse_status_bundle,
)
from imagingkit.subscriptions.topics import BACKPORT_SUBSCRIPTION_PROFILE, IMAGINGSTUDY_TOPIC

if TYPE_CHECKING:
    from imagingkit.subscriptions.listener import (
        AsyncSubscriptionListener,
        Change,
        ListenerStats,
        SubscriptionListener,
    )
    from imagingkit.subscriptions.live import FrameDiff, LiveFrame

__all__ = [
    "BACKPORT_SUBSCRIPTION_PROFILE",
    "IMAGINGSTUDY_TOPIC",
    "AsyncSubscriptionListener",
    "BindingToken",
    "Change",
    "EventTracker",
    "FrameDiff",
    "Gap",
    "LegacyFrame",
    "ListenerStats",
    "LiveFrame",
    "Notification",
    "NotificationEvent",
    "SubscriptionListener",
    "parse_binding_token",
    "parse_legacy_frame",
    "parse_notifications",
    "parse_status",
    "parse_status_bundle",
]

_LAZY = {
    "AsyncSubscriptionListener": "listener",
    "Change": "listener",
    "ListenerStats": "listener",
    "SubscriptionListener": "listener",
    "FrameDiff": "live",
    "LiveFrame": "live",
}


def __getattr__(name: str) -> Any:
    # the listener pulls in the FHIR client and websockets, the live frame pandas: load
    # them when used, so parsing notifications stays light
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
