"""FHIRcast 3.0.0 (STU3) messages, sans I/O: names, builders, validators and parsers.

Everything here takes plain Python values (dicts, strings, form pairs) and returns plain
values or raises; nothing touches a socket. The hub (:mod:`imagingkit.fhircast.hub`) and
the client (:mod:`imagingkit.fhircast.client`) only pump these functions.

Section numbers refer to the FHIRcast STU3 pages: ``2-3`` Events, ``2-4`` Subscribing,
``2-5`` Receive Event Notification, ``2-6`` Send Event Notification, ``2-7`` Conformance,
``2-9`` Get Current Context, ``2-10`` Content Sharing, ``3-2-1`` SyncError.

Known defects of the specification's own examples are tolerated on input and never
produced on output (notes §14): a string acknowledgement status, zone-less or malformed
timestamps, ``versionId`` instead of ``context.versionId``, the ``…/subscriber`` SyncError
system, the older ``select``/``report`` shapes, and a missing ``request.url`` in update
Bundles.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal
from urllib.parse import parse_qsl

from imagingkit.errors import InvalidInputError

__all__ = [
    "ACK_OK",
    "CATALOGUE",
    "FHIRCAST_VERSION",
    "SYNCERROR_SYSTEMS",
    "Event",
    "EventSpec",
    "SubscriptionRequest",
    "accession_number",
    "ack",
    "canonical_event_name",
    "configuration",
    "confirmation",
    "context_items",
    "context_value",
    "denial",
    "event_grammar_ok",
    "format_timestamp",
    "hub_url_from_capability_statement",
    "loads_object",
    "notification",
    "parse_ack",
    "parse_event",
    "parse_subscription_request",
    "parse_timestamp",
    "reference_of",
    "report_reference",
    "scope_allows",
    "selected_references",
    "study_instance_uid",
    "sync_error",
    "sync_error_details",
]

#: the FHIRcast version this package implements (``2-7``: ``fhircastVersion``)
FHIRCAST_VERSION = "3.0.0"

#: acknowledgement status meaning "context change applied" (``2-5``)
ACK_OK = 200

#: SyncError ``details.coding`` systems in the order IHE RAD-155 fixes (``3-2-1``)
SYNCERROR_SYSTEMS = (
    "https://fhircast.hl7.org/events/syncerror/eventid",
    "https://fhircast.hl7.org/events/syncerror/eventname",
    "https://fhircast.hl7.org/events/syncerror/subscribername",
)
# The 3-2-1 page example uses ``…/subscriber``; the profile says ``…/subscribername``.
_SYNCERROR_SUBSCRIBER_ALIASES = (
    SYNCERROR_SYSTEMS[2],
    "https://fhircast.hl7.org/events/syncerror/subscriber",
)

_CAPABILITY_EXTENSION_URLS = (
    "http://fhircast.hl7.org/StructureDefinition/fhircast-configuration-extension",
    "http://hl7.org/fhir/uv/fhircast/StructureDefinition/fhircast-configuration-extension",
    "http://fhircast.hl7.org/StructureDefinition/fhircast-configuration",
)

Kind = Literal["open", "close", "update", "select", "other"]


@dataclass(frozen=True)
class EventSpec:
    """One event of the catalogue (``3-*``).

    Attributes
    ----------
    name : str
        Canonical spelling, e.g. ``"ImagingStudy-open"`` (names compare case-insensitively).
    required : tuple of str
        Context keys that must be present.
    optional : tuple of str
        Context keys that may be present.
    repeatable : tuple of str
        Keys that may appear more than once (``study`` in DiagnosticReport-open, ``select``).
    kind : {"open", "close", "update", "select", "other"}
    anchor : str or None
        The anchor resourceType of open/close/update/select events.
    anchor_key : str or None
        The context key holding the anchor (``patient``, ``study``, ``report`` …).
    """

    name: str
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    repeatable: tuple[str, ...] = ()
    kind: Kind = "other"
    anchor: str | None = None
    anchor_key: str | None = None

    @property
    def key(self) -> str:
        """The lower-case name used for comparisons (``2-3``: case-insensitive)."""
        return self.name.lower()


def _pair(
    anchor: str,
    key: str,
    required: tuple[str, ...],
    optional: tuple[str, ...] = (),
    repeatable: tuple[str, ...] = (),
) -> list[EventSpec]:
    return [
        EventSpec(f"{anchor}-{kind}", required, optional, repeatable, kind, anchor, key)
        for kind in ("open", "close")
    ]


_SPECS: list[EventSpec] = [
    *_pair("Patient", "patient", ("patient",), ("encounter",)),
    *_pair("Encounter", "encounter", ("encounter", "patient")),
    *_pair("ImagingStudy", "study", ("study",), ("patient", "encounter")),
    *_pair("DiagnosticReport", "report", ("report", "patient"), ("study", "encounter"), ("study",)),
    EventSpec(
        "DiagnosticReport-update",
        ("report", "updates"),
        ("patient",),
        (),
        "update",
        "DiagnosticReport",
        "report",
    ),
    # ``select`` is 1..* in the profile but "zero or more" in the text; an empty selection
    # clears every selection (3-6-4), so it is optional here.
    EventSpec(
        "DiagnosticReport-select",
        ("report",),
        ("patient", "select"),
        ("select",),
        "select",
        "DiagnosticReport",
        "report",
    ),
    EventSpec("SyncError", ("operationoutcome",)),
    # STU3 makes ``parameters`` 1..1; STU2 sent an empty context, which is accepted.
    EventSpec("userLogout", (), ("parameters",)),
    EventSpec("userHibernate", (), ("parameters",)),
    EventSpec("Home-open"),
]

#: the events this package knows, keyed by lower-case name
CATALOGUE: dict[str, EventSpec] = {spec.key: spec for spec in _SPECS}

#: the ballot-era heartbeat (removed from STU3; Medplum still sends it)
HEARTBEAT = EventSpec("heartbeat", (), ("period",))

_RESOURCE_EVENT = re.compile(r"^[A-Za-z][A-Za-z0-9]*-(open|close|update|select)$", re.I)
_PROPRIETARY_EVENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+$")
_INFRASTRUCTURE = {"syncerror", "userlogout", "userhibernate", "heartbeat"}


def event_grammar_ok(name: str) -> bool:
    """Return whether *name* follows the event-name grammar (``2-3``).

    A FHIR resource event is ``{Resource}-{open|close|update|select}``; a proprietary
    event uses reverse-domain notation without a dash (``org.example.transmogrify``).
    """
    if not isinstance(name, str):
        return False
    return bool(
        _RESOURCE_EVENT.match(name)
        or _PROPRIETARY_EVENT.match(name)
        or name.lower() in _INFRASTRUCTURE
    )


def canonical_event_name(name: str, extra: Iterable[str] = ()) -> str | None:
    """Return the canonical spelling of *name*, or ``None`` if it is not supported.

    Names compare case-insensitively (``2-3``, ``2-4``). *extra* lists further supported
    names (proprietary events the hub advertises).
    """
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    spec = CATALOGUE.get(key)
    if spec is not None:
        return spec.name
    for other in extra:
        if other.lower() == key:
            return other
    return None


def spec_for(name: str) -> EventSpec | None:
    """Return the catalogue entry for *name* (any case), or ``None``."""
    key = name.lower()
    if key == HEARTBEAT.key:
        return HEARTBEAT
    return CATALOGUE.get(key)


# --- timestamps -------------------------------------------------------------------------

_TIMESTAMP = re.compile(
    r"^\s*(\d{4})-(\d{1,2})-(\d{1,2})[Tt ](\d{1,3}):(\d{1,2})(?::(\d{1,2})(?:[.,](\d+))?)?"
    r"\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?\s*$"
)


def parse_timestamp(value: object) -> datetime | None:
    """Parse an ISO 8601 timestamp leniently; return an aware UTC datetime or ``None``.

    The specification's examples carry timestamps without a zone (read as UTC) and with a
    three-digit hour (``"2023-04-01T010:38:04.16"``), notes §14.3. Anything unparseable
    gives ``None``: callers then fall back to arrival order and never reject the event.
    """
    if not isinstance(value, str):
        return None
    m = _TIMESTAMP.match(value)
    if not m:
        return None
    year, month, day, hour, minute, second, fraction, zone = m.groups()
    try:
        micro = int((fraction or "0")[:6].ljust(6, "0"))
        dt = datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second or 0),
            micro,
            tzinfo=timezone.utc,
        )
    except ValueError:
        return None
    if zone and zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        offset_min = int(digits[:2]) * 60 + int(digits[2:4] or 0)
        dt = dt - sign * timedelta(minutes=offset_min)
    return dt


def format_timestamp(when: datetime | None = None) -> str:
    """Return *when* (default: now) as ISO 8601 UTC with microseconds and ``Z`` (``2-5``)."""
    when = when or datetime.now(timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- JSON -------------------------------------------------------------------------------


def loads_object(text: str | bytes, what: str = "message") -> dict[str, Any]:
    """Parse *text* as a JSON object or raise :class:`InvalidInputError` saying where.

    The ``2-6`` publish example is not JSON (a member inside an array after a missing
    comma); it cannot be repaired without guessing, so it is refused with the position.
    """
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInputError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


# --- events -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One event notification or context-change request (``2-5``, ``2-6``).

    Attributes
    ----------
    id : str
        Unique event id; the hub reuses a request's id in its broadcast (``2-6``).
    timestamp : str
        When the event occurred, as sent (parse with :attr:`time`).
    topic : str
        ``event.hub.topic``.
    name : str
        ``event.hub.event``, canonical spelling when known.
    context : list of dict
        ``event.context``: items ``{"key": …, "resource"|"reference"|…: …}``.
    version_id, prior_version_id : str or None
        ``event.context.versionId`` / ``event.context.priorVersionId`` (``2-10``).
    """

    id: str
    timestamp: str
    topic: str
    name: str
    context: list[dict[str, Any]] = field(default_factory=list)
    version_id: str | None = None
    prior_version_id: str | None = None

    @property
    def key(self) -> str:
        """Lower-case event name, for comparisons."""
        return self.name.lower()

    @property
    def time(self) -> datetime | None:
        """The parsed :attr:`timestamp`, or ``None`` if it is unparseable."""
        return parse_timestamp(self.timestamp)

    @property
    def spec(self) -> EventSpec | None:
        """The catalogue entry, if the event is known."""
        return spec_for(self.name)

    def value(self, key: str) -> Any:
        """Return the value (resource, reference …) of the first item with *key*."""
        return context_value(self.context, key)

    def to_json(self) -> dict[str, Any]:
        """Return the wire form with dotted ``context.versionId`` keys (``2-9``, ``2-10``)."""
        event: dict[str, Any] = {"hub.topic": self.topic, "hub.event": self.name}
        if self.version_id is not None:
            event["context.versionId"] = self.version_id
        if self.prior_version_id is not None:
            event["context.priorVersionId"] = self.prior_version_id
        event["context"] = self.context
        return {"timestamp": self.timestamp, "id": self.id, "event": event}

    def dumps(self) -> str:
        """Return :meth:`to_json` serialised compactly."""
        return json.dumps(self.to_json(), separators=(",", ":"))


def context_items(context: Sequence[Mapping[str, Any]], key: str) -> list[Mapping[str, Any]]:
    """Return every context item whose ``key`` is *key* (keys are case-sensitive, ``2-3``)."""
    return [item for item in context if isinstance(item, Mapping) and item.get("key") == key]


def _item_value(item: Mapping[str, Any]) -> Any:
    for name, value in item.items():
        if name != "key":
            return value
    return None


def context_value(context: Sequence[Mapping[str, Any]], key: str) -> Any:
    """Return the value of the first *key* item (its ``resource``, ``reference`` …)."""
    items = context_items(context, key)
    return _item_value(items[0]) if items else None


def parse_event(
    message: Mapping[str, Any],
    *,
    extra_events: Iterable[str] = (),
    accept_unknown: bool = False,
    default_topic: str | None = None,
    validate_context: bool = True,
) -> Event:
    """Validate an event envelope and return it as an :class:`Event` (``2-5``, ``2-6``).

    Parameters
    ----------
    message : mapping
        The decoded JSON object.
    extra_events : iterable of str
        Proprietary event names that are supported besides the catalogue.
    accept_unknown : bool
        Accept any grammatical event name (IHE IRA hubs "accept any events"); context keys
        are then checked only for known events.
    default_topic : str, optional
        Topic to assume when ``event.hub.topic`` is missing (the ``POST hub.url/{topic}``
        compatibility route); without it a missing topic is an error (check 19).
    validate_context : bool
        Check required context keys of known events.

    Raises
    ------
    InvalidInputError
        Naming the missing or malformed member.
    """
    if not isinstance(message, Mapping):
        raise InvalidInputError("event message must be a JSON object")
    event_id = message.get("id")
    if not isinstance(event_id, str) or not event_id.strip():
        raise InvalidInputError(f"event 'id' must be a non-empty string, got {event_id!r}")
    timestamp = message.get("timestamp")
    if not isinstance(timestamp, str) or not timestamp.strip():
        raise InvalidInputError(f"event 'timestamp' must be a string, got {timestamp!r}")
    event = message.get("event")
    if not isinstance(event, Mapping):
        raise InvalidInputError("event member 'event' must be a JSON object")
    topic = event.get("hub.topic", default_topic)
    if not isinstance(topic, str) or not topic.strip():
        raise InvalidInputError(f"'event.hub.topic' must be a non-empty string, got {topic!r}")
    raw_name = event.get("hub.event")
    if not isinstance(raw_name, str) or not raw_name.strip():
        raise InvalidInputError(f"'event.hub.event' must be a non-empty string, got {raw_name!r}")
    name = canonical_event_name(raw_name, extra_events)
    if name is None:
        if raw_name.lower() == HEARTBEAT.key:
            name = HEARTBEAT.name
        elif accept_unknown and event_grammar_ok(raw_name):
            name = raw_name
        elif not event_grammar_ok(raw_name):
            raise InvalidInputError(f"event name {raw_name!r} breaks the FHIRcast event grammar")
        else:
            raise InvalidInputError(f"event {raw_name!r} is not supported by this hub")
    context = event.get("context")
    if not isinstance(context, list):
        raise InvalidInputError(f"'event.context' of {name} must be an array, got {context!r}")
    for i, item in enumerate(context):
        if not isinstance(item, Mapping) or not isinstance(item.get("key"), str):
            raise InvalidInputError(f"'event.context[{i}]' of {name} must be an object with 'key'")
    spec = spec_for(name)
    if validate_context and spec is not None:
        keys = [item["key"] for item in context]
        missing = [k for k in spec.required if k not in keys]
        if missing:
            raise InvalidInputError(f"{name} needs context key(s) {', '.join(missing)}")
        repeated = sorted({k for k in keys if keys.count(k) > 1} - set(spec.repeatable))
        if repeated:
            raise InvalidInputError(f"{name} repeats context key(s) {', '.join(repeated)}")
    version = event.get("context.versionId", event.get("versionId"))
    prior = event.get("context.priorVersionId", event.get("priorVersionId"))
    for label, val in (("context.versionId", version), ("context.priorVersionId", prior)):
        if val is not None and not isinstance(val, str):
            raise InvalidInputError(f"'event.{label}' must be a string, got {val!r}")
    return Event(
        id=event_id,
        timestamp=timestamp,
        topic=topic,
        name=name,
        context=[dict(item) for item in context],
        version_id=version,
        prior_version_id=prior,
    )


def notification(
    topic: str,
    name: str,
    context: Sequence[Mapping[str, Any]],
    *,
    event_id: str | None = None,
    timestamp: str | None = None,
    version_id: str | None = None,
    prior_version_id: str | None = None,
) -> Event:
    """Build an :class:`Event` with a fresh UUID id and the current time by default."""
    return Event(
        id=event_id or str(uuid.uuid4()),
        timestamp=timestamp or format_timestamp(),
        topic=topic,
        name=name,
        context=[dict(item) for item in context],
        version_id=version_id,
        prior_version_id=prior_version_id,
    )


# --- acknowledgements, confirmation, denial ---------------------------------------------


def ack(event_id: str, status: int = ACK_OK) -> dict[str, Any]:
    """Return the acknowledgement ``{"id": …, "status": <int>}`` (``2-5``)."""
    return {"id": event_id, "status": int(status)}


def parse_ack(message: Mapping[str, Any]) -> tuple[str, int] | None:
    """Return ``(id, status)`` if *message* is an acknowledgement, else ``None``.

    ``status`` is a number in the text but the string ``"200"`` in the examples (notes
    §14.1): both are accepted.
    """
    event_id = message.get("id")
    status = message.get("status")
    if not isinstance(event_id, str) or "event" in message:
        return None
    if isinstance(status, bool):
        return None
    if isinstance(status, int):
        return event_id, status
    if isinstance(status, str) and status.strip().isdigit():
        return event_id, int(status.strip())
    return None


def confirmation(topic: str, events: Sequence[str], lease_seconds: int) -> dict[str, Any]:
    """Return the websocket subscription confirmation (``2-4``), exactly four members."""
    return {
        "hub.mode": "subscribe",
        "hub.topic": topic,
        "hub.events": ",".join(events),
        "hub.lease_seconds": int(lease_seconds),
    }


def denial(topic: str, events: Sequence[str], reason: str | None = None) -> dict[str, Any]:
    """Return a subscription denial (``2-4``); the hub closes the socket after it."""
    message: dict[str, Any] = {
        "hub.mode": "denied",
        "hub.topic": topic,
        "hub.events": ",".join(events),
    }
    if reason:
        message["hub.reason"] = reason
    return message


# --- SyncError --------------------------------------------------------------------------


def sync_error(
    topic: str,
    *,
    event_id: str,
    event_name: str,
    subscriber_name: str,
    diagnostics: str,
    issue_code: str = "processing",
    sync_event_id: str | None = None,
) -> Event:
    """Build a SyncError notification (``3-2-1``, profile ``fhircast-operation-outcome-syncerror``).

    ``details.coding`` carries the event id, event name and subscriber name, in the order
    IHE RAD-155 fixes; ``severity`` is ``warning``.
    """
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "warning",
                "code": issue_code,
                "diagnostics": diagnostics,
                "details": {
                    "coding": [
                        {"system": SYNCERROR_SYSTEMS[0], "code": event_id},
                        {"system": SYNCERROR_SYSTEMS[1], "code": event_name},
                        {"system": SYNCERROR_SYSTEMS[2], "code": subscriber_name},
                    ]
                },
            }
        ],
    }
    return notification(
        topic,
        "SyncError",
        [{"key": "operationoutcome", "resource": outcome}],
        event_id=sync_event_id,
    )


def sync_error_details(event: Event) -> dict[str, str | None]:
    """Return ``eventid``, ``eventname``, ``subscribername``, ``diagnostics`` of a SyncError.

    Accepts the ``…/subscriber`` system of the 3-2-1 example as well (notes §14.5).
    """
    found: dict[str, str | None] = {
        "eventid": None,
        "eventname": None,
        "subscribername": None,
        "diagnostics": None,
    }
    outcome = event.value("operationoutcome")
    if not isinstance(outcome, Mapping):
        return found
    for issue in outcome.get("issue") or []:
        if not isinstance(issue, Mapping):
            continue
        found["diagnostics"] = found["diagnostics"] or issue.get("diagnostics")
        for coding in (issue.get("details") or {}).get("coding") or []:
            system = coding.get("system") if isinstance(coding, Mapping) else None
            if system == SYNCERROR_SYSTEMS[0]:
                found["eventid"] = coding.get("code")
            elif system == SYNCERROR_SYSTEMS[1]:
                found["eventname"] = coding.get("code")
            elif system in _SYNCERROR_SUBSCRIBER_ALIASES:
                found["subscribername"] = coding.get("code")
    return found


# --- subscription requests ---------------------------------------------------------------

_TOLERATED = ("hub.callback", "hub.secret", "hub.lease")


@dataclass(frozen=True)
class SubscriptionRequest:
    """A parsed subscribe or unsubscribe request (``2-4``).

    Attributes
    ----------
    mode : {"subscribe", "unsubscribe"}
    topic : str
    events : tuple of str
        Requested events, canonical spelling, duplicates (any case) removed.
    lease_seconds : int or None
    endpoint : str or None
        ``hub.channel.endpoint``: resubscribe/unsubscribe target.
    subscriber_name : str or None
    tolerated : tuple of str
        Webhook-era parameters that were present and ignored (``hub.callback`` …).
    """

    mode: Literal["subscribe", "unsubscribe"]
    topic: str
    events: tuple[str, ...]
    lease_seconds: int | None = None
    endpoint: str | None = None
    subscriber_name: str | None = None
    tolerated: tuple[str, ...] = ()


def parse_subscription_request(
    body: str | bytes | Sequence[tuple[str, str]] | Mapping[str, Any],
    *,
    extra_events: Iterable[str] = (),
    accept_unknown: bool = False,
    require_subscriber_name: bool = False,
) -> SubscriptionRequest:
    """Parse and validate a subscription request (``2-4``).

    Parameters
    ----------
    body : str, bytes, sequence of pairs or mapping
        The ``application/x-www-form-urlencoded`` body, its decoded pairs, or a JSON
        object (some hubs in the wild accept JSON subscriptions; so does this one).
    extra_events : iterable of str
        Proprietary events the hub supports.
    accept_unknown : bool
        Keep grammatical but unknown event names (IHE IRA); otherwise they are dropped
        (the hub may grant a subset) and an empty remainder is an error.
    require_subscriber_name : bool
        IHE RAD-146: a missing or empty ``subscriber.name`` is an error.

    Raises
    ------
    InvalidInputError
        A repeated parameter ("each parameter SHALL appear at most one time"), a missing
        or non-websocket ``hub.channel.type``, an unknown ``hub.mode``, a missing topic, a
        malformed event name, no supported event, or a non-integer lease.
    """
    if isinstance(body, Mapping):
        pairs = [(str(k), str(v)) for k, v in body.items()]
    elif isinstance(body, (str, bytes)):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        pairs = parse_qsl(text, keep_blank_values=True)
    else:
        pairs = list(body)
    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params:
            raise InvalidInputError(f"parameter {key!r} appears more than once (2-4)")
        params[key] = value
    channel = params.get("hub.channel.type")
    if channel is None:
        raise InvalidInputError("hub.channel.type is missing; it must be 'websocket'")
    if channel.strip().lower() != "websocket":
        raise InvalidInputError(
            f"hub.channel.type {channel!r} is not supported; FHIRcast 3.0 is websocket-only"
        )
    mode = params.get("hub.mode", "").strip().lower()
    if mode not in ("subscribe", "unsubscribe"):
        raise InvalidInputError(
            f"hub.mode {params.get('hub.mode')!r} is neither 'subscribe' nor 'unsubscribe'"
        )
    topic = params.get("hub.topic", "").strip()
    if not topic:
        raise InvalidInputError("hub.topic is missing or empty")
    endpoint = params.get("hub.channel.endpoint") or None
    if mode == "unsubscribe" and not endpoint:
        raise InvalidInputError("hub.channel.endpoint is required to unsubscribe")
    names = [n.strip() for n in params.get("hub.events", "").split(",") if n.strip()]
    events: list[str] = []
    seen: set[str] = set()
    for raw in names:
        if not event_grammar_ok(raw):
            raise InvalidInputError(f"hub.events item {raw!r} breaks the FHIRcast event grammar")
        name = canonical_event_name(raw, extra_events)
        if name is None and raw.lower() == HEARTBEAT.key:
            name = HEARTBEAT.name
        if name is None and accept_unknown:
            name = raw
        if name is None or name.lower() in seen:
            continue
        seen.add(name.lower())
        events.append(name)
    if mode == "subscribe" and not names:
        raise InvalidInputError("hub.events is missing or empty")
    if mode == "subscribe" and not events:
        raise InvalidInputError(
            f"none of the requested events {', '.join(names)!s} is supported by this hub"
        )
    raw_lease = params.get("hub.lease_seconds", params.get("hub.lease"))
    lease: int | None = None
    if raw_lease not in (None, ""):
        try:
            lease = int(str(raw_lease).strip())
        except ValueError:
            raise InvalidInputError(f"hub.lease_seconds {raw_lease!r} is not an integer") from None
        if lease <= 0:
            raise InvalidInputError(f"hub.lease_seconds {raw_lease!r} must be positive")
    name_param = params.get("subscriber.name")
    subscriber_name = name_param.strip() if name_param else None
    if require_subscriber_name and mode == "subscribe" and not subscriber_name:
        raise InvalidInputError("subscriber.name is missing or empty (IHE RAD-146)")
    return SubscriptionRequest(
        mode=mode,  # type: ignore[arg-type]
        topic=topic,
        events=tuple(events),
        lease_seconds=lease,
        endpoint=endpoint,
        subscriber_name=subscriber_name,
        tolerated=tuple(k for k in _TOLERATED if k in params),
    )


# --- scopes -----------------------------------------------------------------------------

_SCOPE = re.compile(r"^fhircast/(\S+)\.(read|write|\*)$", re.I)


def scope_allows(scopes: Iterable[str], event_name: str, access: Literal["read", "write"]) -> bool:
    """Return whether SMART *scopes* grant *access* to *event_name* (``2-2``).

    Grammar: ``fhircast/(event-name|*).(read|write|*)``; event names compare
    case-insensitively.
    """
    wanted = event_name.lower()
    for scope in scopes:
        m = _SCOPE.match(scope.strip())
        if not m:
            continue
        event, mode = m.group(1).lower(), m.group(2).lower()
        if event in ("*", wanted) and mode in ("*", access):
            return True
    return False


# --- discovery --------------------------------------------------------------------------


def configuration(
    events_supported: Sequence[str],
    *,
    get_current_context: bool = True,
    non_current_updates: bool = False,
    fhir_version: str = "R4",
) -> dict[str, Any]:
    """Return the ``.well-known/fhircast-configuration`` document (``2-7``).

    ``getCurrentSupport`` is deprecated but still sent next to ``capabilities``, as the
    page asks capable implementers to do.
    """
    return {
        "eventsSupported": list(events_supported),
        "websocketSupport": True,
        "fhircastVersion": FHIRCAST_VERSION,
        "getCurrentSupport": get_current_context,
        "capabilities": {
            "supportsGetCurrentContext": get_current_context,
            "supportsNonCurrentContextUpdates": non_current_updates,
        },
        "fhirVersion": fhir_version,
    }


def hub_url_from_capability_statement(statement: Mapping[str, Any]) -> str | None:
    """Return the ``hub.url`` a FHIR CapabilityStatement advertises, if any (``2-7``).

    Matches the final, the pre-2025 and the STU2 extension URLs (notes §2.3).
    """
    for rest in statement.get("rest") or []:
        for ext in (rest.get("extension") or []) if isinstance(rest, Mapping) else []:
            if not isinstance(ext, Mapping) or ext.get("url") not in _CAPABILITY_EXTENSION_URLS:
                continue
            for sub in ext.get("extension") or []:
                if isinstance(sub, Mapping) and sub.get("url") == "hub.url":
                    value = sub.get("valueUrl") or sub.get("valueUri")
                    if isinstance(value, str):
                        return value
            value = ext.get("valueUri") or ext.get("valueUrl")
            if isinstance(value, str):
                return value
    return None


# --- resources inside contexts (client side) ----------------------------------------------


def reference_of(value: Any) -> str | None:
    """Return ``"Type/id"`` for a resource, or the ``reference`` of a Reference."""
    if not isinstance(value, Mapping):
        return None
    if isinstance(value.get("reference"), str):
        return value["reference"]
    if isinstance(value.get("resourceType"), str) and isinstance(value.get("id"), str):
        return f"{value['resourceType']}/{value['id']}"
    return None


def anchor_id(value: Any) -> str | None:
    """Return the logical id of an anchor given as a resource or a Reference."""
    ref = reference_of(value)
    if ref is None:
        return None
    return ref.rstrip("/").rsplit("/", 1)[-1]


def report_reference(context: Sequence[Mapping[str, Any]]) -> str | None:
    """Return ``DiagnosticReport/id`` whether ``report`` is a resource or a reference.

    STU3 ballots sent ``report`` as a ``resource`` in update/select; the final version uses
    a ``reference`` (notes §10, §14.10).
    """
    return reference_of(context_value(context, "report"))


def selected_references(context: Sequence[Mapping[str, Any]]) -> list[str]:
    """Return the selected references of a DiagnosticReport-select (``3-6-4``).

    Accepts the final form (the ``select`` key repeated, one ``reference`` each) and the
    older ``{"key": "select", "resources": [...]}`` form that Medplum still builds.
    """
    selected: list[str] = []
    for item in context_items(context, "select"):
        if isinstance(item.get("resources"), list):
            selected.extend(r for r in map(reference_of, item["resources"]) if r)
        else:
            ref = reference_of(item.get("reference") or item.get("resource"))
            if ref:
                selected.append(ref)
    return selected


def _codes(concept: Any) -> list[str]:
    codings = concept.get("coding") if isinstance(concept, Mapping) else None
    found = []
    for coding in codings or []:
        if isinstance(coding, Mapping):
            # the spec's examples put the code in ``value`` (notes §14.2)
            code = coding.get("code") or coding.get("value")
            if isinstance(code, str):
                found.append(code)
    return found


def study_instance_uid(study: Any) -> str | None:
    """Return the Study Instance UID of an ImagingStudy (``3-5-1``).

    Reads ``identifier[system=urn:dicom:uid]`` (STU3; the ``urn:oid:`` prefix is removed)
    and falls back to the R3-era ``uid`` element that STU2 senders and OHIF use.
    """
    if not isinstance(study, Mapping):
        return None
    for ident in study.get("identifier") or []:
        if isinstance(ident, Mapping) and ident.get("system") == "urn:dicom:uid":
            value = ident.get("value")
            if isinstance(value, str):
                return value[8:] if value.startswith("urn:oid:") else value
    uid = study.get("uid")
    if isinstance(uid, str):
        return uid[8:] if uid.startswith("urn:oid:") else uid
    return None


def accession_number(study: Any) -> str | None:
    """Return the accession number of an ImagingStudy (``3-5-1``).

    From ``identifier`` with ``type`` v2-0203 ``ACSN`` (R4), else from ``basedOn``
    references that carry an ACSN identifier (R5 style).
    """
    if not isinstance(study, Mapping):
        return None
    candidates: list[Any] = list(study.get("identifier") or [])
    for based in study.get("basedOn") or []:
        if isinstance(based, Mapping) and isinstance(based.get("identifier"), Mapping):
            candidates.append(based["identifier"])
    for ident in candidates:
        if isinstance(ident, Mapping) and "ACSN" in _codes(ident.get("type")):
            value = ident.get("value")
            if isinstance(value, str):
                return value
    return None
