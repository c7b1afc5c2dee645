"""The notebook context at a glance, and the controls to join or leave a FHIRcast session.

:class:`ContextBar` renders :func:`imagingkit.context.current` live: the patient, study
and report open now (FHIRcast 3.0.0 ``2-5``: each open replaces the context), the
notebook's own selection, the hub and topic (``2-1``, the URL redacted), the client's
status and whether it is in sync (``2-4``, ``4-2-1``). Its *Bind* and *Unbind* buttons call
:meth:`~imagingkit.context.NotebookContext.bind` and
:meth:`~imagingkit.context.NotebookContext.unbind`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ipywidgets

from imagingkit.context import NotebookContext, current
from imagingkit.errors import ImagingKitError, redact_url
from imagingkit.fhircast import protocol
from imagingkit.widgets.markup import MISSING, message, table
from imagingkit.widgets.tree import close_models, close_tree

__all__ = ["ContextBar", "describe"]

#: the traits of the context the bar shows
_TRAITS = ["patient", "study", "report", "study_uid", "selection", "anchor", "status", "in_sync"]


def describe(resource: Mapping[str, Any] | None) -> str:
    """A one-line description of a FHIR resource (or Reference) for people.

    Patient: name, identifier, birth date; ImagingStudy: description, Study Instance
    UID, accession number; anything else: its reference.
    """
    if not resource:
        return MISSING
    words: list[str] = [protocol.reference_of(resource) or "?"]
    for name in resource.get("name") or []:
        if isinstance(name, Mapping):
            given = " ".join(str(g) for g in name.get("given") or [])
            full = " ".join(p for p in (given, str(name.get("family") or "")) if p)
            if full:
                words.append(full)
                break
    for ident in resource.get("identifier") or []:
        value = ident.get("value") if isinstance(ident, Mapping) else None
        if isinstance(value, str) and not value.startswith("urn:oid:"):
            words.append(value)
    if resource.get("birthDate"):
        words.append(f"born {resource['birthDate']}")
    if isinstance(resource.get("description"), str):
        words.append(resource["description"])
    uid = protocol.study_instance_uid(resource)
    if uid:
        words.append(f"UID {uid}")
    return " · ".join(words)


class ContextBar(ipywidgets.VBox):
    """The notebook context, live, with bind/unbind controls.

    Parameters
    ----------
    context : NotebookContext, optional
        Default :func:`imagingkit.context.current`.
    hub_url, topic : str
        Initial values of the hub URL and topic fields (the context's own when bound).
    timeout : float
        Seconds *Bind* waits for the hub.

    Attributes
    ----------
    summary : ipywidgets.HTML
        The context (escaped table).
    hub, topic, token : ipywidgets.Text / Password
        Where *Bind* subscribes; the token is optional and never shown.
    bind_button, unbind_button : ipywidgets.Button
        ``.click()`` them from code.
    message : ipywidgets.HTML
        The outcome of the last click.
    """

    _closed = True  # until the bar observes the context

    def __init__(
        self,
        context: NotebookContext | None = None,
        *,
        hub_url: str = "",
        topic: str = "",
        timeout: float = 10.0,
    ) -> None:
        self.context = context if context is not None else current()
        self.timeout = timeout
        self.summary = ipywidgets.HTML()
        self.hub = ipywidgets.Text(
            value=hub_url or self.context.hub_url or "",
            description="Hub",
            placeholder="http://127.0.0.1:8042/fhircast",
        )
        self.topic = ipywidgets.Text(
            value=topic or self.context.topic or "", description="Topic", placeholder="hub.topic"
        )
        self.token = ipywidgets.Password(description="Token", placeholder="optional bearer token")
        self.bind_button = ipywidgets.Button(description="Bind", button_style="primary")
        self.unbind_button = ipywidgets.Button(description="Unbind")
        self.message = ipywidgets.HTML()
        self.bind_button.on_click(lambda _button: self.bind())
        self.unbind_button.on_click(lambda _button: self.unbind())
        self.context.observe(self._refresh, names=_TRAITS)
        self._closed = False
        super().__init__(
            children=[
                self.summary,
                ipywidgets.HBox([self.hub, self.topic, self.token]),
                ipywidgets.HBox([self.bind_button, self.unbind_button, self.message]),
            ]
        )
        self._refresh()

    def bind(self) -> None:
        """Bind the context to the hub and topic in the fields (what *Bind* does)."""
        hub, topic = self.hub.value.strip(), self.topic.value.strip()
        if not hub or not topic:
            self.message.value = message("Enter the hub URL and the topic", "warning")
            return
        try:
            self.context.bind(hub, topic, token=self.token.value or None, timeout=self.timeout)
        except ImagingKitError as error:
            self.message.value = message(f"Could not bind: {error}", "error")
        else:
            self.message.value = message(f"Bound to topic {topic}", "ok")
        self._refresh()

    def unbind(self) -> None:
        """Leave the session (what *Unbind* does)."""
        was = self.context.bound
        self.context.unbind()
        self.message.value = message("Unbound" if was else "Not bound", "info")
        self._refresh()

    def close(self) -> None:
        """Stop observing the context and close the bar."""
        if self._closed:
            return
        self._closed = True
        self.context.unobserve(self._refresh, names=_TRAITS)
        for child in self.children:
            close_tree(child)
        super().close()
        close_models(self)

    def _refresh(self, _change: Any = None) -> None:
        ctx = self.context
        rows: list[tuple[str, str]] = [
            ("Patient", describe(ctx.patient)),
            ("Study", describe(ctx.study)),
            ("Report", describe(ctx.report)),
            ("Selected here", describe(ctx.selection)),
        ]
        if ctx.bound:
            rows.append(("Hub", f"{redact_url(ctx.hub_url)} · topic {ctx.topic}"))
        sync = "in sync" if ctx.in_sync else "not in sync"
        state = f"{ctx.status} · {sync}" if ctx.bound else "unbound"
        if ctx.denial is not None:
            state += f" (denied: {ctx.denial.reason or 'no reason'})"
        rows.append(("FHIRcast", state))
        self.summary.value = table(("", ""), rows, caption="Notebook context")
        self.bind_button.disabled = False
        self.unbind_button.disabled = not ctx.bound
