"""``$status``, ``$events`` and ``$get-ws-binding-token`` (Subscriptions Backport IG,
Operations; FHIR R4 operations framework).

Routes below the FHIR base (GET with query parameters, or POST with a ``Parameters``
body or a form)::

    GET|POST Subscription/$status?id=…&status=…          every Subscription, or those named
    GET|POST Subscription/{id}/$status                     one
    GET|POST Subscription/{id}/$events?eventsSinceNumber=&eventsUntilNumber=&content=
    GET|POST Subscription/{id}/$get-ws-binding-token
    GET|POST Subscription/$get-ws-binding-token?id=a&id=b  one token for several

``$status`` answers a ``searchset`` Bundle of ``backport-subscription-status-r4``
Parameters (type ``query-status``). ``$events`` answers a ``query-event`` notification
Bundle; the window is bounded: at most :data:`.EVENTS_WINDOW` events
(``eventsSinceNumber`` … ``min(eventsUntilNumber, since + 99)``; ask again from the next
number for more); ``eventsSinceNumber`` defaults to 1 and ``eventsUntilNumber`` to the
latest; only the newest :data:`.EVENTS_RETAINED` events of a Subscription are kept.
``content`` (``empty | id-only | full-resource``) overrides the Subscription's payload
content; full resources are the versions the events wrote. ``$get-ws-binding-token``
answers ``token``, ``expiration``, ``subscription`` (one per id) and ``websocket-url``;
it is refused (400) for a Subscription whose channel is not ``websocket``.

Under ``--auth`` these routes pass the FHIR guard like any other ``Subscription`` request
(the grant must allow reading Subscriptions; patient-scoped grants are refused), and a
binding token remembers the grant's patients and readable types: deliveries through it
are screened like reads (:mod:`.matching`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl

from imagingkit.errors import InvalidInputError
from imagingkit.sandbox import authz
from imagingkit.sandbox.fhir.handlers import FHIR_JSON, FhirHandler
from imagingkit.sandbox.fhir.outcome import fhir_error
from imagingkit.sandbox.fhir.references import check_id
from imagingkit.sandbox.fhir.subscriptions.definitions import EVENTS_WINDOW, websocket_url
from imagingkit.sandbox.fhir.subscriptions.model import CONTENTS, STATUSES, SubscriptionSpec
from imagingkit.sandbox.fhir.subscriptions.notifications import status_bundle, status_parameters
from imagingkit.sandbox.fhir.subscriptions.service import SubscriptionService
from imagingkit.sandbox.fhir.subscriptions.tokens import EVERYONE, Audience
from imagingkit.server.app import RouteList

__all__ = ["operation_routes"]

_MAX_NUMBER = 2**62


class _OperationHandler(FhirHandler):
    """Shared parameter parsing and replies of the Subscription operations."""

    def initialize(  # type: ignore[override]
        self, service: SubscriptionService, **kwargs: Any
    ) -> None:
        super().initialize(**kwargs)
        self.service = service

    def prepare(self) -> None:
        super().prepare()
        self.service.remember_base(self.urls.fhir)

    def params(self) -> list[tuple[str, str]]:
        """Query parameters plus those of a POSTed Parameters resource or form."""
        cached: list[tuple[str, str]] | None = getattr(self, "_params", None)
        if cached is None:
            cached = self._params = self._read_params()
        return cached

    def _read_params(self) -> list[tuple[str, str]]:
        found = list(self.query_params())
        if self.request.method != "POST" or not self.request.body:
            return found
        ctype = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype == "application/x-www-form-urlencoded":
            try:
                return found + parse_qsl(self.request.body.decode("utf-8"))
            except UnicodeDecodeError:
                raise InvalidInputError("the form body is not UTF-8") from None
        body = self.json_body()
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise InvalidInputError("POST a Parameters resource (or a form) to this operation")
        for item in body.get("parameter") or []:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise InvalidInputError("Parameters.parameter needs a name")
            values = [v for k, v in item.items() if k.startswith("value")]
            if len(values) != 1 or not isinstance(values[0], (str, int)):
                raise InvalidInputError(f"parameter {item['name']!r} needs one simple value")
            found.append((item["name"], str(values[0])))
        return found

    def listed(self, name: str) -> list[str]:
        """Every value of *name* (repeated or comma-separated)."""
        return [v.strip() for k, v in self.params() if k == name for v in v.split(",") if v.strip()]

    def audience(self) -> Audience:
        """The deliveries this request's grant may see (everything without ``--auth``)."""
        access = authz._access(self)  # set by the --auth guard (None without --auth)
        return EVERYONE if access is None else self.service.audience_of(access.grant)

    def subscription(self, sub_id: str) -> SubscriptionSpec:
        spec = self.service.spec(check_id(sub_id, what="Subscription id"))
        if spec is None:
            raise fhir_error(404, f"Subscription/{sub_id} is not known")
        return spec

    def reply(self, body: dict[str, Any]) -> None:
        """Write *body* (already screened by the operation itself)."""
        self.set_header("Content-Type", f"{FHIR_JSON}; charset=utf-8")
        self.finish(json.dumps(body, ensure_ascii=False))

    async def answer(self, fn: Callable[..., dict[str, Any]], *args: Any) -> None:
        self.reply(await self.run(fn, *args))


class _StatusHandler(_OperationHandler):
    async def get(self, sub_id: str | None = None) -> None:
        if sub_id is not None:
            specs = [self.subscription(sub_id)]
        else:
            ids, statuses = set(self.listed("id")), set(self.listed("status"))
            unknown = statuses - set(STATUSES)
            if unknown:
                raise InvalidInputError(f"status {sorted(unknown)} is not one of {STATUSES}")
            specs = [
                s
                for s in self.service.specs()
                if (not ids or s.id in ids) and (not statuses or s.status in statuses)
            ]
        await self.answer(self._statuses, sorted(specs, key=lambda s: s.id), self.urls.fhir)

    post = get

    def _statuses(self, specs: list[SubscriptionSpec], base: str) -> dict[str, Any]:
        return status_bundle(
            [
                status_parameters(
                    s, "query-status", self.service.events.count(s.id), base, error=s.error
                )
                for s in specs
            ]
        )


def _number(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    if not value.isdigit() or not 0 < int(value) < _MAX_NUMBER:
        raise InvalidInputError(f"{name}={value!r} is not an event number (1, 2, …)")
    return int(value)


class _EventsHandler(_OperationHandler):
    async def get(self, sub_id: str) -> None:
        spec = self.subscription(sub_id)
        params = dict(self.params())
        since = _number(params.get("eventsSinceNumber"), "eventsSinceNumber") or 1
        until = _number(params.get("eventsUntilNumber"), "eventsUntilNumber")
        content = params.get("content") or spec.content
        if content not in CONTENTS:
            raise InvalidInputError(f"content={content!r} is not one of {', '.join(CONTENTS)}")
        if until is not None and until < since:
            raise InvalidInputError(
                f"eventsUntilNumber {until} is before eventsSinceNumber {since}"
            )
        last = since + EVENTS_WINDOW - 1 if until is None else min(until, since + EVENTS_WINDOW - 1)
        audience = self.audience()
        base = self.urls.fhir

        def replay() -> dict[str, Any]:
            events = self.service.events.between(spec.id, since, last, EVENTS_WINDOW)
            return self.service.replay(spec, events, base, content=content, audience=audience)

        await self.answer(replay)

    post = get


class _BindingTokenHandler(_OperationHandler):
    async def get(self, sub_id: str | None = None) -> None:
        ids = [sub_id] if sub_id is not None else self.listed("id")
        if not ids:
            raise InvalidInputError(
                "name the Subscription: Subscription/{id}/$get-ws-binding-token or ?id="
            )
        specs = [self.subscription(i) for i in dict.fromkeys(ids)]
        for spec in specs:
            if spec.channel != "websocket":
                raise InvalidInputError(
                    f"Subscription/{spec.id} has channel type {spec.channel}, not websocket"
                )
        audience = self.audience()
        access = authz._access(self)
        if access is not None and not access.grant.permits("Subscription", "r"):
            raise authz.insufficient_scope(self, "the token's scopes do not allow Subscription.r")
        token, binding = self.service.tokens.issue([s.id for s in specs], audience)
        expiration = datetime.fromtimestamp(binding.expires_at, timezone.utc)
        parameters: list[dict[str, Any]] = [
            {"name": "token", "valueString": token},
            {"name": "expiration", "valueDateTime": expiration.isoformat(timespec="seconds")},
        ]
        parameters += [{"name": "subscription", "valueString": s.id} for s in specs]
        parameters.append({"name": "websocket-url", "valueUrl": websocket_url(self.urls.fhir)})
        self.set_header("Cache-Control", "no-store")
        self.reply({"resourceType": "Parameters", "parameter": parameters})

    post = get


def operation_routes(
    prefix: str, service: SubscriptionService, kwargs: dict[str, Any]
) -> RouteList:
    """Tornado rules of the operations (placed before the store's generic routes).

    Parameters
    ----------
    prefix : str
        The FHIR base path (``{base_url}fhir``).
    service : SubscriptionService
    kwargs : dict
        The store handlers' own arguments (interactions, executor, prefix, mount).
    """
    kw = {"service": service, **kwargs}
    sub = rf"{prefix}/Subscription"
    i = r"([^/$][^/]*)"
    return [
        (rf"{sub}/\$status", _StatusHandler, kw),
        (rf"{sub}/{i}/\$status", _StatusHandler, kw),
        (rf"{sub}/{i}/\$events", _EventsHandler, kw),
        (rf"{sub}/\$get-ws-binding-token", _BindingTokenHandler, kw),
        (rf"{sub}/{i}/\$get-ws-binding-token", _BindingTokenHandler, kw),
    ]
