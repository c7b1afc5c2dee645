"""Notification Bundles in the R4 shape of the Subscriptions Backport IG (notifications page).

A notification is a ``history`` Bundle (profile ``backport-subscription-notification-r4``)
whose first entry is a ``Parameters`` profiled ``backport-subscription-status-r4`` with
``subscription``, ``topic``, ``status``, ``type`` (``handshake | heartbeat |
event-notification | query-status | query-event``), ``events-since-subscription-start``
(a string: ``integer64``) and one ``notification-event`` per event (``event-number``,
``timestamp``, ``focus``). The status entry carries ``request GET …/Subscription/{id}/$status``
and ``response 200`` (bdl-3/bdl-4 want a request and response on every history entry).

Payload content (``backport-payload-content``):

- ``empty``: no ``focus`` and no resource entries;
- ``id-only``: ``focus`` plus an entry with ``fullUrl``, ``request`` and ``response`` but no
  resource;
- ``full-resource``: the entry also holds the resource as that event wrote it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from imagingkit.sandbox.fhir.dates import now_instant
from imagingkit.sandbox.fhir.subscriptions.definitions import NOTIFICATION_PROFILE, STATUS_PROFILE
from imagingkit.sandbox.fhir.subscriptions.events import Event
from imagingkit.sandbox.fhir.subscriptions.model import SubscriptionSpec

__all__ = ["Focus", "notification_bundle", "status_bundle", "status_parameters"]

#: an event with the resource it focuses on (None: not loaded, or content below full)
Focus = tuple[Event, dict[str, Any] | None]


def _url(fhir_base: str, path: str) -> str:
    """An absolute URL below *fhir_base*, or *path* itself when no base is known yet."""
    return f"{fhir_base}/{path}" if fhir_base else path


def _part_events(focus: Sequence[Focus], content: str, fhir_base: str) -> list[dict[str, Any]]:
    parts = []
    for event, _ in focus:
        part: list[dict[str, Any]] = [
            {"name": "event-number", "valueString": str(event.number)},
            {"name": "timestamp", "valueInstant": event.timestamp},
        ]
        if content != "empty":
            part.append(
                {"name": "focus", "valueReference": {"reference": _url(fhir_base, event.focus)}}
            )
        parts.append({"name": "notification-event", "part": part})
    return parts


def status_parameters(
    spec: SubscriptionSpec,
    kind: str,
    count: int,
    fhir_base: str,
    *,
    focus: Sequence[Focus] = (),
    content: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """The ``backport-subscription-status-r4`` Parameters of one notification.

    Parameters
    ----------
    spec : SubscriptionSpec
    kind : str
        ``handshake``, ``heartbeat``, ``event-notification``, ``query-status`` or
        ``query-event``.
    count : int
        ``events-since-subscription-start`` (the count includes the events sent).
    fhir_base : str
        The FHIR base URL for references.
    focus : sequence of (Event, resource or None)
    content : str, optional
        Payload content overriding ``spec.content``.
    error : str, optional
        ``Subscription.error`` text, reported as an ``error`` CodeableConcept.
    """
    params: list[dict[str, Any]] = [
        {
            "name": "subscription",
            "valueReference": {"reference": _url(fhir_base, f"Subscription/{spec.id}")},
        }
    ]
    if spec.topic is not None:
        params.append({"name": "topic", "valueCanonical": spec.topic})
    params += [
        {"name": "status", "valueCode": spec.status},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(count)},
    ]
    params += _part_events(focus, content or spec.content, fhir_base)
    if error:
        params.append({"name": "error", "valueCodeableConcept": {"text": error}})
    return {
        "resourceType": "Parameters",
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": params,
    }


def _focus_entry(event: Event, resource: dict[str, Any] | None, fhir_base: str) -> dict[str, Any]:
    created = event.focus_version == 1
    entry: dict[str, Any] = {"fullUrl": _url(fhir_base, event.focus)}
    if resource is not None:
        entry["resource"] = resource
    entry["request"] = {
        "method": "POST" if created else "PUT",
        "url": event.focus_type if created else event.focus,
    }
    entry["response"] = {"status": "201" if created else "200"}
    return entry


def notification_bundle(
    spec: SubscriptionSpec,
    kind: str,
    count: int,
    fhir_base: str,
    *,
    focus: Sequence[Focus] = (),
    **options: str | None,
) -> dict[str, Any]:
    """A whole notification Bundle (Backport IG R4 shape); the arguments, and the
    ``content`` and ``error`` options, are those of :func:`status_parameters`."""
    content = options.get("content") or spec.content
    _, now = now_instant()
    status = status_parameters(
        spec, kind, count, fhir_base, focus=focus, content=content, error=options.get("error")
    )
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": status,
            "request": {"method": "GET", "url": _url(fhir_base, f"Subscription/{spec.id}/$status")},
            "response": {"status": "200"},
        }
    ]
    if content != "empty":
        for event, resource in focus:
            shown = resource if content == "full-resource" else None
            entries.append(_focus_entry(event, shown, fhir_base))
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [NOTIFICATION_PROFILE]},
        "type": "history",
        "timestamp": now,
        "entry": entries,
    }


def status_bundle(statuses: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The ``$status`` answer: a searchset Bundle of status Parameters (Backport IG
    OperationDefinition backport-subscription-status)."""
    _, now = now_instant()
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "searchset",
        "timestamp": now,
        "total": len(statuses),
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": status,
                "search": {"mode": "match"},
            }
            for status in statuses
        ],
    }
