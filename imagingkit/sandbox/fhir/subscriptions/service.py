"""The Subscription service of one FHIR store: lifecycle, change detection, delivery.

Lifecycle (FHIR R4 subscription.html; Subscriptions Backport IG, channels and errors)
------------------------------------------------------------------------------------
- A client writes a Subscription with status ``requested`` (``active`` from a client is
  stored as ``requested``: only the server activates). Every write path (REST, Bundle,
  :class:`~imagingkit.sandbox.fhir.store.FhirStore` API) is checked by
  :func:`.model.parse_subscription`; a bad one is refused with 400 and nothing is stored.
- After the commit, the server activates it by writing a new version: at once for
  websocket and R4 legacy rest-hook Subscriptions; for a Backport rest-hook only after its
  ``handshake`` POST answers 2xx — otherwise status ``error`` with ``Subscription.error``.
- ``off`` stops delivery; ``end`` in the past stops delivery and the server sets ``off``.
- A rest-hook delivery that fails sets ``error`` (+ ``Subscription.error``); events keep
  their numbers and ``$events`` returns them; heartbeats are still attempted. Only the
  client re-activates (PUT with status ``requested``), which handshakes again.
- The status is the stored resource, so it survives a restart; a Subscription found
  ``requested`` at start-up is activated then.

Change detection
----------------
:class:`~imagingkit.sandbox.fhir.storage.Storage` calls :meth:`SubscriptionService.on_commit`
after every COMMIT (never after a rollback) with the versions written, whatever path
wrote them. Creates and updates (not deletes) are matched against the Subscriptions that
are ``active`` or ``error`` with the store's search engine (:mod:`.matching`); each match
gets the next event number of its Subscription in the same database (:mod:`.events`),
then is handed to the channels. With no such Subscription the hook returns after one
dictionary scan.

Notification base URL
---------------------
Websocket notifications use the URL the socket connected to. Rest-hook notifications use
the FHIR base the store was last reached at by an HTTP request (before any request,
references are relative).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

from imagingkit.errors import InvalidInputError
from imagingkit.sandbox.authz import Grant
from imagingkit.sandbox.fhir.dates import now_instant
from imagingkit.sandbox.fhir.representation import BaseUrls, rendered
from imagingkit.sandbox.fhir.searchparams import RESOURCE_TYPES
from imagingkit.sandbox.fhir.storage import Storage, Stored
from imagingkit.sandbox.fhir.subscriptions.channels.resthook import Delivery, RestHookSender
from imagingkit.sandbox.fhir.subscriptions.channels.websocket import SocketHub
from imagingkit.sandbox.fhir.subscriptions.events import Event, EventLog
from imagingkit.sandbox.fhir.subscriptions.matching import Matcher
from imagingkit.sandbox.fhir.subscriptions.model import (
    DELIVERING,
    SubscriptionSpec,
    parse_subscription,
)
from imagingkit.sandbox.fhir.subscriptions.notifications import Focus, notification_bundle
from imagingkit.sandbox.fhir.subscriptions.tokens import EVERYONE, Audience, BindingTokens

__all__ = ["SubscriptionService"]

log = logging.getLogger("imagingkit.fhir.subscriptions")

_TICK = 0.2
_FHIR_JSON = "application/fhir+json"


def _dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


class SubscriptionService:
    """Subscriptions of one store (see the module docstring).

    Parameters
    ----------
    storage : Storage
        The store's database; the service installs its write check and commit hook.
    executor : Executor
        The store's worker (SQLite work requested by websocket handlers runs there).
    mount : str
        The store's mount segment (``fhir``).
    """

    def __init__(self, storage: Storage, executor: Executor, *, mount: str = "fhir") -> None:
        self.storage = storage
        self.executor = executor
        self.mount = mount
        self.events = EventLog(storage)
        self.matcher = Matcher(storage)
        self.tokens = BindingTokens()
        self.hub = SocketHub()
        self.resthook = RestHookSender()
        self._specs: dict[str, SubscriptionSpec] = {}
        self._lock = threading.RLock()
        self._local = threading.local()
        self._base = ""
        self._rest_last: dict[str, float] = {}
        self._rest_pending: set[str] = set()
        self._stop = threading.Event()
        storage.write_checks["Subscription"] = self._check
        storage.commit_hooks.append(self.on_commit)
        self._load()
        self._ticker = threading.Thread(
            target=self._tick_loop, name="imagingkit-fhir-heartbeat", daemon=True
        )
        self._ticker.start()

    # -- registry -------------------------------------------------------------------------

    def _load(self) -> None:
        rows = self.storage.query(
            "SELECT h.body FROM resource r JOIN history h ON h.seq = r.seq "
            "WHERE r.type = 'Subscription' AND r.deleted = 0",
            (),
        )
        for (body,) in rows:
            try:
                spec = parse_subscription(json.loads(body))
            except (InvalidInputError, ValueError) as exc:
                log.warning("stored Subscription not served: %s", exc)
                continue
            with self._lock:
                self._specs[spec.id] = spec
        for spec in self.specs():
            if spec.status == "requested":
                self._activate(spec)

    def spec(self, sub_id: str) -> SubscriptionSpec | None:
        """The current Subscription *sub_id*, or None."""
        with self._lock:
            return self._specs.get(sub_id)

    def specs(self) -> list[SubscriptionSpec]:
        """Every stored Subscription."""
        with self._lock:
            return list(self._specs.values())

    def remember_base(self, fhir_base: str) -> None:
        """Record the FHIR base URL a request reached the store at (for rest-hooks)."""
        self._base = fhir_base

    @property
    def fhir_base(self) -> str:
        """The FHIR base last seen ("" before any request)."""
        return self._base

    def audience_of(self, grant: Grant | None) -> Audience:
        """Who a grant lets see deliveries (everyone without ``--auth``)."""
        if grant is None:
            return EVERYONE
        readable = frozenset(t for t in RESOURCE_TYPES if grant.permits(t, "r"))
        return Audience(
            patients=grant.patients,
            readable=None if readable == frozenset(RESOURCE_TYPES) else readable,
        )

    # -- writes -----------------------------------------------------------------------------

    def _check(self, resource: dict[str, Any]) -> None:
        """The store's write check of Subscriptions: refuse what cannot be honoured."""
        parse_subscription(resource)
        client = not getattr(self._local, "server", False)
        if client and resource.get("status", "requested") in ("requested", "active"):
            resource["status"] = "requested"  # only the server activates
            resource.pop("error", None)

    def set_status(
        self, sub_id: str, status: str, *, error: str | None = None, version: int | None = None
    ) -> bool:
        """Write a new version of Subscription *sub_id* with *status* (server side).

        Parameters
        ----------
        sub_id : str
        status : str
        error : str, optional
            ``Subscription.error`` (removed when None).
        version : int, optional
            Only if the stored version is still this one (a client's newer write wins).

        Returns
        -------
        bool
            Whether a version was written.
        """
        if self._stop.is_set():
            return False
        with self.storage.transaction():
            current = self.storage.current("Subscription", sub_id)
            if current is None or current.deleted or current.body is None:
                return False
            if version is not None and current.version != version:
                return False
            resource = json.loads(current.body)
            if resource.get("status") == status and resource.get("error") == error:
                return False
            resource["status"] = status
            if error:
                resource["error"] = error
            else:
                resource.pop("error", None)
            self._local.server = True
            try:
                self.storage.write(resource, "PUT")
            finally:
                self._local.server = False
        return True

    def _activate(self, spec: SubscriptionSpec) -> None:
        if spec.backport and spec.channel == "rest-hook":
            self._handshake_rest(spec)
        else:
            self.set_status(spec.id, "active", version=spec.version)

    def _handshake_rest(self, spec: SubscriptionSpec) -> None:
        bundle = notification_bundle(spec, "handshake", self.events.count(spec.id), self._base)

        def done(ok: bool, error: str | None) -> None:
            if ok:
                self.set_status(spec.id, "active", version=spec.version)
            else:
                self.set_status(spec.id, "error", error=error, version=spec.version)

        self._post(spec, "handshake", _dumps(bundle).encode("utf-8"), done)

    def _post(self, spec: SubscriptionSpec, kind: str, body: bytes, on_done: Any) -> bool:
        assert spec.endpoint is not None
        headers = list(spec.headers)
        if body:
            headers.append(("Content-Type", spec.payload or _FHIR_JSON))
        self._rest_last[spec.id] = time.monotonic()
        return self.resthook.submit(
            Delivery(spec.id, kind, spec.endpoint, body, tuple(headers), spec.timeout, on_done)
        )

    def _failed(self, spec: SubscriptionSpec) -> Any:
        def done(ok: bool, error: str | None) -> None:
            if not ok:
                current = self.spec(spec.id)
                if current is not None and current.status == "active":
                    self.set_status(spec.id, "error", error=error, version=current.version)

        return done

    # -- the commit hook ----------------------------------------------------------------------

    def on_commit(self, written: list[Stored]) -> None:
        """Storage commit hook: track Subscriptions, then number and deliver matches."""
        if self._stop.is_set():
            return
        for stored in written:
            if stored.type == "Subscription":
                self._subscription_written(stored)
        with self._lock:
            live = [s for s in self._specs.values() if s.status in DELIVERING]
        if live:
            self._notify(live, written)

    def _subscription_written(self, stored: Stored) -> None:
        if stored.deleted or stored.body is None:
            with self._lock:
                self._specs.pop(stored.id, None)
            self._rest_last.pop(stored.id, None)
            self.events.forget(stored.id)
            return
        spec = parse_subscription(json.loads(stored.body))
        with self._lock:
            self._specs[spec.id] = spec
        if spec.status == "requested":
            self._activate(spec)

    def _notify(self, live: Sequence[SubscriptionSpec], written: Sequence[Stored]) -> None:
        now_ms, _ = now_instant()
        matches: list[tuple[SubscriptionSpec, Stored]] = []
        for spec in live:
            if spec.ended(now_ms):
                continue  # the ticker sets it off
            matches.extend((spec, stored) for stored in self.matcher.matching(spec, written))
        if not matches:
            return
        events = self.events.assign([(spec.id, stored) for spec, stored in matches])
        for (spec, stored), event in zip(matches, events, strict=True):
            try:
                self._deliver(spec, event, stored)
            except Exception:
                log.exception("delivery of event %s to Subscription/%s failed", event, spec.id)

    def _resource(self, stored: Stored, fhir_base: str) -> dict[str, Any]:
        assert stored.body is not None
        resource: dict[str, Any] = json.loads(stored.body)
        if fhir_base:
            rendered(resource, BaseUrls.from_fhir_base(fhir_base, self.mount))
        return resource

    def _deliver(self, spec: SubscriptionSpec, event: Event, stored: Stored) -> None:
        texts: dict[str, str] = {}
        for socket, bound in self.hub.bound(spec.id):
            if not self.matcher.visible(bound.audience, stored):
                continue
            if bound.legacy:
                socket.deliver(f"ping {spec.id}")
                continue
            base = socket.fhir_base
            if base not in texts:
                texts[base] = self._event_text(spec, event, stored, base)
            bound.last_sent = time.monotonic()
            socket.deliver(texts[base])
        if spec.channel == "rest-hook" and spec.status == "active":
            if spec.backport:
                body = self._event_text(spec, event, stored, self._base).encode("utf-8")
            elif spec.payload:
                body = _dumps(self._resource(stored, self._base)).encode("utf-8")
            else:
                body = b""
            self._post(spec, "event-notification", body, self._failed(spec))

    def _event_text(self, spec: SubscriptionSpec, event: Event, stored: Stored, base: str) -> str:
        resource = self._resource(stored, base) if spec.content == "full-resource" else None
        focus: list[Focus] = [(event, resource)]
        bundle = notification_bundle(spec, "event-notification", event.number, base, focus=focus)
        return _dumps(bundle)

    # -- notifications asked for by channels and operations ----------------------------------

    def handshake_text(self, sub_id: str, fhir_base: str) -> str | None:
        """The websocket handshake of *sub_id* (``bound <id>`` for a legacy one)."""
        spec = self.spec(sub_id)
        if spec is None:
            return None
        if not spec.backport:
            return f"bound {sub_id}"
        count = self.events.count(sub_id)
        return _dumps(notification_bundle(spec, "handshake", count, fhir_base, error=spec.error))

    def replay(
        self,
        spec: SubscriptionSpec,
        events: Sequence[Event],
        fhir_base: str,
        *,
        content: str,
        audience: Audience = EVERYONE,
    ) -> dict[str, Any]:
        """The ``$events`` answer: a ``query-event`` notification of *events*.

        Resources the audience may not read are left out (their entries stay id-only).
        """
        focus: list[Focus] = []
        for event in events:
            resource = None
            if content == "full-resource":
                stored = self.storage.version(event.focus_type, event.focus_id, event.focus_version)
                if (
                    stored is not None
                    and not stored.deleted
                    and self.matcher.visible(audience, stored)
                ):
                    resource = self._resource(stored, fhir_base)
            focus.append((event, resource))
        count = self.events.count(spec.id)
        return notification_bundle(
            spec, "query-event", count, fhir_base, focus=focus, content=content, error=spec.error
        )

    # -- heartbeats and end ------------------------------------------------------------------

    def _tick_loop(self) -> None:
        while not self._stop.wait(_TICK):
            try:
                self._tick()
            except Exception:
                log.exception("subscription heartbeat tick failed")

    def _tick(self) -> None:
        now = time.monotonic()
        now_ms, _ = now_instant()
        for spec in self.specs():
            if spec.status != "off" and spec.ended(now_ms):
                self.set_status(spec.id, "off", version=spec.version)
        for socket, bound in self.hub.bound():
            found = self.spec(bound.subscription)
            if found is None or not found.backport or not found.heartbeat:
                continue
            if found.status in DELIVERING and now - bound.last_sent >= found.heartbeat:
                bound.last_sent = now
                count = self.events.count(found.id)
                bundle = notification_bundle(
                    found, "heartbeat", count, socket.fhir_base, error=found.error
                )
                socket.deliver(_dumps(bundle))
        for spec in self.specs():
            if not (spec.backport and spec.heartbeat and spec.channel == "rest-hook"):
                continue
            if spec.status not in DELIVERING or spec.id in self._rest_pending:
                continue
            if now - self._rest_last.get(spec.id, now - spec.heartbeat) >= spec.heartbeat:
                self._heartbeat_rest(spec)

    def _heartbeat_rest(self, spec: SubscriptionSpec) -> None:
        count = self.events.count(spec.id)
        bundle = notification_bundle(spec, "heartbeat", count, self._base, error=spec.error)
        failed = self._failed(spec)

        def done(ok: bool, error: str | None) -> None:
            self._rest_pending.discard(spec.id)
            failed(ok, error)

        self._rest_pending.add(spec.id)
        if not self._post(spec, "heartbeat", _dumps(bundle).encode("utf-8"), done):
            self._rest_pending.discard(spec.id)

    # -- shutdown ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop heartbeats and rest-hook deliveries and close the websockets (bounded)."""
        self._stop.set()
        if self.on_commit in self.storage.commit_hooks:
            self.storage.commit_hooks.remove(self.on_commit)
        self._ticker.join(5.0)
        self.resthook.close()
        self.hub.close_all()
