"""Subscription notifications, sans I/O: bytes or JSON in, typed values out.

Three shapes of the same thing are accepted (notes §16.2):

* **R4 Backport** (Subscriptions Backport IG, ``BackportNotificationR4.fsh``): a ``history``
  Bundle whose ``entry[0]`` is a ``Parameters`` profiled ``backport-subscription-status-r4``
  (``events-since-subscription-start``, ``notification-event`` parts ``event-number``,
  ``timestamp``, ``focus``, ``additional-context``);
* **R4B** (and Medplum): a ``history`` Bundle whose ``entry[0]`` is a ``SubscriptionStatus``;
  Medplum sends ``eventNumber "0"`` and no ``eventsSinceSubscriptionStart``, and puts one
  ``SubscriptionStatus`` per bound Subscription into a heartbeat Bundle;
* **R5** (subscriptionstatus.html): a ``subscription-notification`` Bundle, ``entry[0]`` a
  ``SubscriptionStatus``.

Event numbers are ``integer64`` — JSON strings on the wire (R5 datatypes §2.1.28.0.1) —
and are read as Python ``int``; a number ``0`` or an absent one means *unnumbered* (the
server does not number its events, as Medplum), which disables gap detection for it.

The legacy R4 websocket speaks text frames (R4 subscription.html §2.46.7.2, the
``bind``/``bound``/``ping`` protocol); :func:`parse_legacy_frame` reads them. Anything
malformed raises :class:`~imagingkit.errors.InvalidInputError` naming what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from imagingkit.errors import InvalidInputError

__all__ = [
    "NOTIFICATION_TYPES",
    "BindingToken",
    "LegacyFrame",
    "Notification",
    "NotificationEvent",
    "bind_with_token_message",
    "parse_binding_token",
    "parse_legacy_frame",
    "parse_notifications",
    "parse_status",
    "parse_status_bundle",
    "reference_key",
]

#: ``SubscriptionStatus.type`` codes (R5 subscription-notification-type).
NOTIFICATION_TYPES = frozenset(
    {"handshake", "heartbeat", "event-notification", "query-status", "query-event"}
)
_BUNDLE_TYPES = frozenset({"history", "subscription-notification"})
_SHOWN = 200  # characters of a bad value quoted in an error message


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"


def reference_key(reference: str | None) -> str | None:
    """``"Type/id"`` of a (possibly absolute or versioned) FHIR reference, else None.

    ``https://x/fhir/ImagingStudy/abc/_history/2`` → ``ImagingStudy/abc``
    (R4 references.html §2.3.0.3: literal references).
    """
    if not reference or not isinstance(reference, str) or reference.startswith("#"):
        return None
    parts = reference.split("?", 1)[0].rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 2 or not parts[-2][:1].isupper() or not parts[-1]:
        return None
    return f"{parts[-2]}/{parts[-1]}"


def _integer64(value: Any, what: str) -> int | None:
    """An integer64 (a JSON string; a JSON number is tolerated) → int; None if absent."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidInputError(f"{what} {_shown(value)} is not an integer64")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value.strip())
    else:
        raise InvalidInputError(f"{what} {_shown(value)} is not an integer64")
    if number < 0:
        raise InvalidInputError(f"{what} {number} is negative")
    return number


@dataclass(frozen=True)
class NotificationEvent:
    """One ``notificationEvent`` (R5 SubscriptionStatus.notificationEvent).

    Attributes
    ----------
    number : int or None
        ``eventNumber``; None when the server does not number events (absent or ``"0"``).
    timestamp : str or None
        When the event happened (an instant, as sent).
    focus : str or None
        The focus reference as sent (relative or absolute).
    additional_context : tuple of str
        ``additionalContext`` references.
    """

    number: int | None
    timestamp: str | None = None
    focus: str | None = None
    additional_context: tuple[str, ...] = ()

    @property
    def focus_key(self) -> str | None:
        """``"Type/id"`` of :attr:`focus`."""
        return reference_key(self.focus)


@dataclass(frozen=True)
class Notification:
    """One subscription status with its events and the resources the Bundle carried.

    Attributes
    ----------
    type : str
        ``handshake``, ``heartbeat``, ``event-notification``, ``query-status`` or
        ``query-event``.
    status : str or None
        The Subscription's status as the server reports it.
    subscription : str or None
        The Subscription reference as sent; :attr:`subscription_id` is its id.
    topic : str or None
    events_since_start : int or None
        ``eventsSinceSubscriptionStart`` (includes this notification's events).
    events : tuple of NotificationEvent
    resources : mapping
        ``"Type/id"`` → resource JSON for every other entry of the Bundle.
    errors : tuple of str
        ``error`` codings/texts.
    shape : str
        ``"r4-backport"``, ``"r4b"`` or ``"r5"``.
    """

    type: str
    status: str | None = None
    subscription: str | None = None
    topic: str | None = None
    events_since_start: int | None = None
    events: tuple[NotificationEvent, ...] = ()
    resources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    errors: tuple[str, ...] = ()
    shape: str = "r4-backport"

    @property
    def subscription_id(self) -> str | None:
        """The logical id of :attr:`subscription`."""
        key = reference_key(self.subscription)
        if key and key.startswith("Subscription/"):
            return key.split("/", 1)[1]
        if self.subscription and "/" not in self.subscription:
            return self.subscription
        return None

    @property
    def numbered(self) -> bool:
        """Whether the server numbers this subscription's events (gaps can be detected)."""
        return bool(self.events_since_start) or any(e.number for e in self.events)

    def resource_for(self, event: NotificationEvent) -> Mapping[str, Any] | None:
        """The resource the Bundle carried for *event*'s focus (full-resource), if any."""
        key = event.focus_key
        return self.resources.get(key) if key else None


# --------------------------------------------------------------------------- decoding


def _load(data: bytes | str | Mapping[str, Any], what: str) -> Mapping[str, Any]:
    if isinstance(data, Mapping):
        return data
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{what} is not JSON ({exc}): {_shown(data)}") from None
    if not isinstance(value, dict):
        raise InvalidInputError(f"{what} is not a JSON object: {_shown(value)}")
    return value


def _reference(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        ref = value.get("reference")
        if ref is None:
            return None
        if isinstance(ref, str):
            return ref
    raise InvalidInputError(f"{what} {_shown(value)} is not a Reference")


def _text(value: Any, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidInputError(f"{what} {_shown(value)} is not a string")


def _check_type(kind: Any) -> str:
    if kind not in NOTIFICATION_TYPES:
        raise InvalidInputError(
            f"notification type {_shown(kind)} is not one of {sorted(NOTIFICATION_TYPES)}"
        )
    return str(kind)


def _errors(values: Any) -> tuple[str, ...]:
    out: list[str] = []
    for item in values or ():
        if isinstance(item, Mapping):
            codings = item.get("coding") or []
            text = item.get("text") or next(
                (c.get("display") or c.get("code") for c in codings if isinstance(c, Mapping)),
                None,
            )
            if text:
                out.append(str(text))
    return tuple(out)


def _from_subscription_status(resource: Mapping[str, Any], shape: str) -> Notification:
    """R4B/R5 ``SubscriptionStatus`` (subscriptionstatus.html)."""
    events = []
    raw_events = resource.get("notificationEvent") or []
    if not isinstance(raw_events, list):
        raise InvalidInputError(f"notificationEvent {_shown(raw_events)} is not a list")
    for raw in raw_events:
        if not isinstance(raw, Mapping):
            raise InvalidInputError(f"notificationEvent {_shown(raw)} is not an object")
        extra = raw.get("additionalContext") or []
        events.append(
            NotificationEvent(
                number=_integer64(raw.get("eventNumber"), "eventNumber") or None,
                timestamp=_text(raw.get("timestamp"), "timestamp"),
                focus=_reference(raw.get("focus"), "focus"),
                additional_context=tuple(
                    r for r in (_reference(x, "additionalContext") for x in extra) if r
                ),
            )
        )
    return Notification(
        type=_check_type(resource.get("type")),
        status=_text(resource.get("status"), "status"),
        subscription=_reference(resource.get("subscription"), "subscription"),
        topic=_text(resource.get("topic"), "topic"),
        events_since_start=_integer64(
            resource.get("eventsSinceSubscriptionStart"), "eventsSinceSubscriptionStart"
        ),
        events=tuple(events),
        errors=_errors(resource.get("error")),
        shape=shape,
    )


def _value(part: Mapping[str, Any]) -> Any:
    for key, value in part.items():
        if key.startswith("value"):
            return value
    return None


def _from_parameters(resource: Mapping[str, Any]) -> Notification:
    """R4 ``Parameters`` profiled ``backport-subscription-status-r4``."""
    params = resource.get("parameter") or []
    if not isinstance(params, list):
        raise InvalidInputError(f"Parameters.parameter {_shown(params)} is not a list")
    single: dict[str, Any] = {}
    events = []
    errors: list[Any] = []
    for param in params:
        if not isinstance(param, Mapping) or not isinstance(param.get("name"), str):
            raise InvalidInputError(f"status parameter {_shown(param)} has no name")
        name = param["name"]
        if name == "notification-event":
            parts = {p.get("name"): p for p in param.get("part") or [] if isinstance(p, Mapping)}
            number = _integer64(_value(parts.get("event-number", {})), "event-number")
            extra = [
                _reference(_value(p), "additional-context")
                for p in param.get("part") or []
                if isinstance(p, Mapping) and p.get("name") == "additional-context"
            ]
            events.append(
                NotificationEvent(
                    number=number or None,
                    timestamp=_text(_value(parts.get("timestamp", {})), "timestamp"),
                    focus=_reference(_value(parts.get("focus", {})), "focus"),
                    additional_context=tuple(r for r in extra if r),
                )
            )
        elif name == "error":
            errors.append(_value(param))
        else:
            single[name] = _value(param)
    return Notification(
        type=_check_type(single.get("type")),
        status=_text(single.get("status"), "status"),
        subscription=_reference(single.get("subscription"), "subscription"),
        topic=_text(single.get("topic"), "topic"),
        events_since_start=_integer64(
            single.get("events-since-subscription-start"), "events-since-subscription-start"
        ),
        events=tuple(events),
        errors=_errors(errors),
        shape="r4-backport",
    )


def parse_status(resource: Mapping[str, Any]) -> Notification:
    """Read one status resource: a ``SubscriptionStatus`` or a backport ``Parameters``.

    Raises
    ------
    InvalidInputError
        If *resource* is neither, or a field has the wrong type.
    """
    if not isinstance(resource, Mapping):
        raise InvalidInputError(f"subscription status {_shown(resource)} is not an object")
    kind = resource.get("resourceType")
    if kind == "Parameters":
        return _from_parameters(resource)
    if kind == "SubscriptionStatus":
        return _from_subscription_status(resource, "r4b")
    raise InvalidInputError(
        f"a subscription status is a Parameters or a SubscriptionStatus, not {_shown(kind)}"
    )


def _entries(bundle: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    entries = bundle.get("entry") or []
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        raise InvalidInputError(f"Bundle.entry {_shown(entries)} is not a list of objects")
    return entries


def _is_status(resource: Any) -> bool:
    return isinstance(resource, Mapping) and (
        resource.get("resourceType") == "SubscriptionStatus"
        or (
            resource.get("resourceType") == "Parameters"
            and any(
                isinstance(p, Mapping) and p.get("name") == "type"
                for p in resource.get("parameter") or []
            )
        )
    )


def parse_notifications(data: bytes | str | Mapping[str, Any]) -> tuple[Notification, ...]:
    """Read a notification Bundle (a websocket frame, a rest-hook body, ``$events`` output).

    Returns one :class:`Notification` per status entry at the head of the Bundle — one,
    except in heartbeats that cover several Subscriptions (Medplum); the resources of the
    remaining entries are attached to each.

    Raises
    ------
    InvalidInputError
        Not JSON, not a ``history``/``subscription-notification`` Bundle, no status entry
        first, or a malformed field (the message names it).
    """
    bundle = _load(data, "notification")
    if bundle.get("resourceType") != "Bundle":
        kind = bundle.get("resourceType")
        raise InvalidInputError(f"a notification is a Bundle, not {_shown(kind)}")
    if bundle.get("type") not in _BUNDLE_TYPES:
        raise InvalidInputError(
            f"notification Bundle.type {_shown(bundle.get('type'))} is not 'history' or "
            "'subscription-notification'"
        )
    entries = _entries(bundle)
    statuses = []
    index = 0
    while index < len(entries) and _is_status(entries[index].get("resource")):
        statuses.append(entries[index]["resource"])
        index += 1
    if not statuses:
        raise InvalidInputError(
            "notification Bundle has no SubscriptionStatus or backport status Parameters "
            "as its first entry"
        )
    resources: dict[str, Mapping[str, Any]] = {}
    for entry in entries[index:]:
        resource = entry.get("resource")
        if isinstance(resource, Mapping) and resource.get("resourceType") and resource.get("id"):
            resources[f"{resource['resourceType']}/{resource['id']}"] = resource
    r5 = bundle.get("type") == "subscription-notification"
    out = []
    for status in statuses:
        note = parse_status(status)
        shape = "r5" if r5 else note.shape
        out.append(
            Notification(
                type=note.type,
                status=note.status,
                subscription=note.subscription,
                topic=note.topic,
                events_since_start=note.events_since_start,
                events=note.events,
                resources=resources,
                errors=note.errors,
                shape=shape,
            )
        )
    return tuple(out)


def parse_status_bundle(data: bytes | str | Mapping[str, Any]) -> tuple[Notification, ...]:
    """Read the ``searchset`` Bundle ``$status`` answers (Backport IG, Operations.fsh)."""
    bundle = _load(data, "$status answer")
    if bundle.get("resourceType") == "Bundle":
        return tuple(
            parse_status(e["resource"]) for e in _entries(bundle) if _is_status(e.get("resource"))
        )
    return (parse_status(bundle),)


# --------------------------------------------------------------------------- websocket binding


@dataclass(frozen=True)
class BindingToken:
    """The answer of ``$get-ws-binding-token`` (Backport IG Operations.fsh, channels.md)."""

    token: str
    websocket_url: str
    expiration: str | None = None
    subscriptions: tuple[str, ...] = ()


def parse_binding_token(data: bytes | str | Mapping[str, Any]) -> BindingToken:
    """Read the Parameters of ``$get-ws-binding-token``.

    Raises
    ------
    InvalidInputError
        Not a Parameters, or no ``token``/``websocket-url``.
    """
    params = _load(data, "$get-ws-binding-token answer")
    if params.get("resourceType") != "Parameters":
        kind = params.get("resourceType")
        raise InvalidInputError(f"$get-ws-binding-token answered {_shown(kind)}, not Parameters")
    values: dict[str, Any] = {}
    subscriptions: list[str] = []
    for param in params.get("parameter") or []:
        if not isinstance(param, Mapping):
            continue
        value = _value(param)
        if param.get("name") == "subscription":
            ref = value.get("reference") if isinstance(value, Mapping) else value
            if isinstance(ref, str):
                subscriptions.append(ref)
        else:
            values[str(param.get("name"))] = value
    token, url = values.get("token"), values.get("websocket-url")
    if not isinstance(token, str) or not token:
        raise InvalidInputError("$get-ws-binding-token answered no token")
    if not isinstance(url, str) or not url:
        raise InvalidInputError("$get-ws-binding-token answered no websocket-url")
    expiration = values.get("expiration")
    return BindingToken(
        token, url, expiration if isinstance(expiration, str) else None, tuple(subscriptions)
    )


def bind_with_token_message(token: str, framing: str = "json") -> str:
    """The ``bind-with-token`` frame (Backport IG channels.md, websocket).

    ``framing="json"`` sends ``{"type": "bind-with-token", "payload": {"token": …}}`` (as
    Medplum reads it); ``"text"`` sends ``bind-with-token: <token>``.
    """
    if framing == "json":
        return json.dumps({"type": "bind-with-token", "payload": {"token": token}})
    if framing == "text":
        return f"bind-with-token: {token}"
    raise InvalidInputError(f"framing {framing!r} is not 'json' or 'text'")


@dataclass(frozen=True)
class LegacyFrame:
    """A frame of the R4 legacy websocket protocol: ``bound``, ``ping`` or ``error``."""

    kind: str
    value: str


def parse_legacy_frame(text: str | bytes) -> LegacyFrame:
    """Read ``bound <id>``, ``ping <id>`` or ``error <message>`` (R4 subscription.html).

    Raises
    ------
    InvalidInputError
        Any other frame.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInputError(f"legacy websocket frame {_shown(text)} is not UTF-8") from None
    kind, _, value = text.strip().partition(" ")
    if kind not in ("bound", "ping", "error") or (kind != "error" and not value.strip()):
        raise InvalidInputError(f"unknown legacy websocket frame {_shown(text)}")
    return LegacyFrame(kind, value.strip())


def focus_keys(notifications: Sequence[Notification]) -> list[str]:
    """The distinct ``"Type/id"`` focus keys of *notifications*' events, in order."""
    seen: dict[str, None] = {}
    for note in notifications:
        for event in note.events:
            if event.focus_key:
                seen[event.focus_key] = None
    return list(seen)
