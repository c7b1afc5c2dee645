"""The state of one FHIRcast session (one ``hub.topic``), sans I/O.

A :class:`TopicSession` applies accepted events in order and answers what the hub must
send: the broadcast form of each event (with content-sharing versions), the current
context (``2-9``) and the opens to replay to a new subscriber (``2-4``). It holds no
sockets and no clocks, so every rule here is testable without a network.

Rules implemented (FHIRcast 3.0.0):

- every unclosed ``*-open`` is kept (tabs, ``4-2-2``); the current context is the last
  open; a close removes its anchor and, if that was current, leaves the context empty
  even when older opens remain (``2-9``);
- ``DiagnosticReport-open`` gets a ``context.versionId``; ``DiagnosticReport-update`` must
  name the current version, is applied atomically to the content Bundle and broadcast with
  a new version and ``context.priorVersionId``; a close discards the content (``2-10``);
- ``DiagnosticReport-select`` must name the current report (``3-6-4``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from imagingkit.errors import FHIRcastError, InvalidInputError
from imagingkit.fhircast.protocol import (
    Event,
    anchor_id,
    context_items,
    context_value,
    reference_of,
    selected_references,
)

__all__ = ["OpenContext", "TopicSession", "derived_opens"]


@dataclass
class OpenContext:
    """One unclosed ``*-open`` (a "tab") of a session.

    Attributes
    ----------
    anchor : str
        Anchor resourceType (``"Patient"``, ``"ImagingStudy"``, ``"DiagnosticReport"`` …).
    anchor_id : str or None
        Logical id of the anchor resource.
    event : Event
        The open event as broadcast (original id and timestamp, replayed verbatim).
    version_id : str
        ``context.versionId``; changes whenever this context changes.
    content : dict
        Content-sharing state: ``"Type/id"`` → resource, in insertion order.
    bundle_id : str
        Id of the ``content`` collection Bundle returned by Get Current Context.
    selection : list of str
        References currently selected (``DiagnosticReport-select``).
    """

    anchor: str
    anchor_id: str | None
    event: Event
    version_id: str
    content: dict[str, dict[str, Any]] = field(default_factory=dict)
    bundle_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    selection: list[str] = field(default_factory=list)

    def protected(self) -> set[str]:
        """References of the resources in the open event, which updates may not delete."""
        refs = set()
        for item in self.event.context:
            ref = reference_of(item.get("resource") or item.get("reference"))
            if ref:
                refs.add(ref)
        return refs


class TopicSession:
    """Ordered state of one topic.

    Parameters
    ----------
    topic : str
        The ``hub.topic``.
    content_sharing : bool
        Track DiagnosticReport content and versions (``2-10``).
    non_current_updates : bool
        Accept updates for an open report that is not the current context
        (``capabilities.supportsNonCurrentContextUpdates``, experimental).
    max_update_entries : int
        More entries in one update Bundle are refused with 413 (``2-10``).
    new_id : callable
        Generator of version and Bundle ids (UUIDv4 by default).
    """

    def __init__(
        self,
        topic: str,
        *,
        content_sharing: bool = True,
        non_current_updates: bool = False,
        max_update_entries: int = 1000,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self.topic = topic
        self.content_sharing = content_sharing
        self.non_current_updates = non_current_updates
        self.max_update_entries = max_update_entries
        self._new_id = new_id
        self.opens: list[OpenContext] = []
        self.current: OpenContext | None = None

    # --- applying events -------------------------------------------------------------

    def apply(self, event: Event) -> Event:
        """Apply an accepted *event* and return the form to broadcast.

        Raises
        ------
        InvalidInputError
            The event is malformed for this session (400).
        FHIRcastError
            With ``status`` 409 (stale version, not the current context) or 413 (update too
            large). The session is unchanged whenever an error is raised.
        """
        spec = event.spec
        if spec is None or spec.anchor is None:
            return event
        if spec.kind == "open":
            return self._open(event, spec.anchor, spec.anchor_key or "")
        if spec.kind == "close":
            return self._close(event, spec.anchor, spec.anchor_key or "")
        if spec.kind == "update":
            return self._update(event)
        return self._select(event)

    def _open(self, event: Event, anchor: str, key: str) -> Event:
        ident = anchor_id(context_value(event.context, key))
        previous = self._find(anchor, ident)
        if previous is not None:
            # switching back to a tab keeps its content and version (multi-tab, 4-2-2)
            self.opens.remove(previous)
            ctx = replace(previous, event=event)
        else:
            ctx = OpenContext(anchor, ident, event, self._new_id())
        if anchor == "DiagnosticReport" and self.content_sharing:
            event = replace(event, version_id=ctx.version_id, prior_version_id=None)
            ctx.event = event
        self.opens.append(ctx)
        self.current = ctx
        return event

    def _close(self, event: Event, anchor: str, key: str) -> Event:
        ident = anchor_id(context_value(event.context, key))
        ctx = self._find(anchor, ident)
        if ctx is not None:
            self.opens.remove(ctx)
            if ctx is self.current:
                self.current = None
        return event

    def _target_report(self, event: Event) -> OpenContext:
        ident = anchor_id(context_value(event.context, "report"))
        if ident is None:
            raise InvalidInputError(f"{event.name} 'report' names no DiagnosticReport id")
        ctx = self._find("DiagnosticReport", ident)
        if ctx is None:
            raise FHIRcastError(
                f"{event.name} for DiagnosticReport/{ident}, which is not open in topic "
                f"{self.topic!r}",
                status=409,
            )
        return ctx

    def _update(self, event: Event) -> Event:
        ctx = self._target_report(event)
        if ctx is not self.current and not self.non_current_updates:
            raise FHIRcastError(
                f"DiagnosticReport/{ctx.anchor_id} is open but not the current context; "
                "this hub does not support non-current context updates",
                status=409,
            )
        if event.version_id is None:
            raise InvalidInputError("DiagnosticReport-update needs 'context.versionId' (2-10)")
        if event.version_id != ctx.version_id:
            raise FHIRcastError(
                f"stale context.versionId {event.version_id!r}; the current version of "
                f"DiagnosticReport/{ctx.anchor_id} is {ctx.version_id!r}",
                status=409,
            )
        content = self._apply_bundle(ctx, context_value(event.context, "updates"))
        new_version = self._new_id()
        ctx.content = content
        prior, ctx.version_id = ctx.version_id, new_version
        return replace(event, version_id=new_version, prior_version_id=prior)

    def _apply_bundle(self, ctx: OpenContext, bundle: Any) -> dict[str, dict[str, Any]]:
        """Return the content after applying *bundle*, all entries or none (``2-10``)."""
        if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
            raise InvalidInputError("'updates' must be a Bundle resource")
        if bundle.get("type") != "transaction":
            raise InvalidInputError(
                f"'updates' Bundle type must be 'transaction', got {bundle.get('type')!r}"
            )
        entries = bundle.get("entry") or []
        if not isinstance(entries, list):
            raise InvalidInputError("'updates' Bundle 'entry' must be an array")
        if len(entries) > self.max_update_entries:
            raise FHIRcastError(
                f"update has {len(entries)} entries; this hub accepts at most "
                f"{self.max_update_entries}",
                status=413,
            )
        content = dict(ctx.content)
        protected = ctx.protected()
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            where = f"updates.entry[{i}]"
            if not isinstance(entry, Mapping):
                raise InvalidInputError(f"{where} must be an object")
            request = entry.get("request")
            method = request.get("method") if isinstance(request, Mapping) else None
            method = method.upper() if isinstance(method, str) else None
            if method == "PUT":
                resource = entry.get("resource")
                if not isinstance(resource, Mapping) or "reference" in resource:
                    resource = None
                ref = reference_of(resource)
                if ref is None:
                    raise InvalidInputError(
                        f"{where}: PUT needs a resource with resourceType and id"
                    )
            elif method == "DELETE":
                if entry.get("resource") is not None:
                    raise InvalidInputError(f"{where}: DELETE must not carry a resource")
                url = entry.get("fullUrl") or (request or {}).get("url")
                if not isinstance(url, str) or "/" not in url:
                    raise InvalidInputError(f"{where}: DELETE needs fullUrl 'Type/id'")
                ref = "/".join(url.rstrip("/").split("/")[-2:])
                if ref in protected:
                    raise InvalidInputError(
                        f"{where}: {ref} belongs to the open context and cannot be deleted"
                    )
            else:
                raise InvalidInputError(
                    f"{where}: request.method {method!r} is not allowed (PUT or DELETE only)"
                )
            if ref in seen:
                raise InvalidInputError(f"{where}: {ref} appears more than once in the Bundle")
            seen.add(ref)
            if method == "PUT":
                content[ref] = json.loads(json.dumps(resource))
            else:
                content.pop(ref, None)
        return content

    def _select(self, event: Event) -> Event:
        ctx = self._target_report(event)
        if ctx is not self.current:
            raise FHIRcastError(
                f"DiagnosticReport-select for DiagnosticReport/{ctx.anchor_id}, which is not "
                "the current context (3-6-4)",
                status=409,
            )
        ctx.selection = selected_references(event.context)
        return event

    def _find(self, anchor: str, ident: str | None) -> OpenContext | None:
        for ctx in reversed(self.opens):
            if ctx.anchor == anchor and (ident is None or ctx.anchor_id == ident):
                return ctx
        return None

    # --- queries ---------------------------------------------------------------------

    def current_context(self) -> dict[str, Any]:
        """Return the Get Current Context body (``2-9``).

        ``{"context.type": "", "context": []}`` when nothing is open; otherwise the anchor
        type, ``context.versionId`` and the original open context, plus a ``content``
        collection Bundle for a DiagnosticReport when content sharing is on.
        """
        ctx = self.current
        if ctx is None:
            return {"context.type": "", "context": []}
        context = [dict(item) for item in ctx.event.context if item.get("key") != "content"]
        if ctx.anchor == "DiagnosticReport" and self.content_sharing:
            bundle = {
                "resourceType": "Bundle",
                "id": ctx.bundle_id,
                "type": "collection",
                "entry": [{"resource": r} for r in ctx.content.values()],
            }
            context.append({"key": "content", "resource": bundle})
        return {
            "context.type": ctx.anchor,
            "context.versionId": ctx.version_id,
            "context": context,
        }

    def replay(self) -> list[Event]:
        """Return the most recent unclosed open per anchor type, oldest first (``2-4``)."""
        latest: dict[str, OpenContext] = {}
        for ctx in self.opens:
            latest[ctx.anchor] = ctx
        return [ctx.event for ctx in sorted(latest.values(), key=self.opens.index)]


def derived_opens(event: Event) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """Return the opens or closes implied by *event* (``2-5`` "Hub generated open events").

    ``DiagnosticReport-open`` implies ``Patient-open`` and ``ImagingStudy-open`` (first
    study); ``ImagingStudy-open`` and ``Encounter-open`` imply ``Patient-open``; closes
    mirror opens. Each item is ``(suffix, name, context)``.
    """
    spec = event.spec
    if spec is None or spec.kind not in ("open", "close") or spec.anchor == "Patient":
        return []
    kind = spec.kind
    implied: list[tuple[str, str, list[dict[str, Any]]]] = []
    patient = context_items(event.context, "patient")
    if patient:
        implied.append(("patient", f"Patient-{kind}", [dict(patient[0])]))
    if spec.anchor == "DiagnosticReport":
        study = context_items(event.context, "study") or context_items(
            event.context, "imagingstudy"
        )
        if study:
            ctx = [dict(study[0])]
            ctx[0]["key"] = "study"
            if patient:
                ctx.append(dict(patient[0]))
            implied.append(("study", f"ImagingStudy-{kind}", ctx))
    return implied
