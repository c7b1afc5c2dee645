"""The notebook's context: current patient, study and report, kept in step by FHIRcast.

One observable object per kernel, :func:`current`, holds what the notebook is looking at.
It is a traitlets :class:`~traitlets.HasTraits`, so ipywidgets can ``link`` to it and code
can ``observe`` it. It changes in two ways:

- by code: :meth:`NotebookContext.select_study` (an ImagingStudy, a Study Instance UID, a
  row of ``cohort.studies()`` or a one-study frame) and :meth:`~NotebookContext.select_patient`;
- by other applications, once :meth:`~NotebookContext.bind` has subscribed it to a FHIRcast
  hub (FHIRcast 3.0.0, pages ``2-4`` subscribing and ``2-5`` notifications): their
  ``Patient-open``, ``ImagingStudy-open`` and ``DiagnosticReport-open`` replace the context
  and their ``*-close`` clears it.

While bound, a selection made in the notebook is published as ``Patient-open`` then
``ImagingStudy-open`` (``2-6``, ``3-3-1``, ``3-5-1``) so the other applications follow, and
:meth:`~NotebookContext.follow` runs a callback each time a study opens *elsewhere*; the
hub's echo of the notebook's own request (``2-6``: it is broadcast to the requester too) is
not "elsewhere".

Example::

    import imagingkit
    ctx = imagingkit.context.current()
    ctx.bind("http://127.0.0.1:8042/fhircast", "my-topic")
    handle = ctx.follow(lambda opened: print("the PACS opened", opened.study_uid))
    ctx.select_study(studies.iloc[0])        # a row of bridge.cohort().studies()
    ctx                                      # shows patient, study, report, hub status
    ctx.unbind()

The network, acknowledgements, ordering and reconnects are the
:class:`~imagingkit.fhircast.client.FhircastClient`'s: this module only maps its current
context onto traits. Callbacks (trait observers and followers) run on the kernel's event
loop when the context is bound from a notebook cell, so widget updates are safe; in a
plain script they run on the client's dispatcher thread.
"""

from __future__ import annotations

import asyncio
import copy
import html
import inspect
import logging
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from traitlets import Bool, HasTraits, Instance, Unicode

from imagingkit.errors import ConfigError, FHIRcastError, InvalidInputError, redact_url
from imagingkit.fhircast import protocol
from imagingkit.uids import validate_uid

if TYPE_CHECKING:
    from imagingkit.bridge import Bridge
    from imagingkit.fhircast.client import CurrentContext, Denial, FhircastClient
    from imagingkit.fhircast.protocol import Event

__all__ = ["Following", "NotebookContext", "OpenedStudy", "current"]

log = logging.getLogger("imagingkit.context")

DICOM_UID_SYSTEM = "urn:dicom:uid"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
#: ImagingStudy elements sent in ImagingStudy-open; series and instances stay behind
#: (the profile needs id, identifier, status and subject, FHIRcast ``3-5-1``).
_STUDY_ELEMENTS = (
    "resourceType",
    "id",
    "status",
    "subject",
    "identifier",
    "started",
    "description",
)
_PATIENT_ELEMENTS = ("resourceType", "id", "identifier", "name", "gender", "birthDate")


@dataclass(frozen=True)
class OpenedStudy:
    """A study another application opened (what :meth:`NotebookContext.follow` passes).

    Attributes
    ----------
    study : dict
        The ``study`` resource of the ``ImagingStudy-open`` event (FHIRcast ``3-5-1``).
    patient : dict or None
        Its ``patient`` resource, when the sender included one.
    study_uid : str or None
        Study Instance UID from ``identifier[system=urn:dicom:uid]`` (or the STU2 ``uid``).
    accession_number : str or None
        From the ACSN identifier.
    event : Event
        The notification itself (``2-5``).
    """

    study: dict[str, Any]
    patient: dict[str, Any] | None
    study_uid: str | None
    accession_number: str | None
    event: Event


class Following:
    """The handle :meth:`NotebookContext.follow` returns.

    Attributes
    ----------
    callback : callable
        ``callback(OpenedStudy)``.
    calls : int
        How many times it ran.
    errors : deque of (OpenedStudy, BaseException)
        The most recent 100 failures (each is also printed to ``sys.stderr``).
    """

    def __init__(self, context: NotebookContext, callback: Callable[[OpenedStudy], Any]) -> None:
        self.callback = callback
        self.calls = 0
        self.errors: deque[tuple[OpenedStudy, BaseException]] = deque(maxlen=100)
        self._context = context

    @property
    def active(self) -> bool:
        """Whether the callback still runs on new opens."""
        return self in self._context._followers

    def stop(self) -> None:
        """Stop following (idempotent)."""
        self._context._unfollow(self)

    def __enter__(self) -> Following:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        name = getattr(self.callback, "__qualname__", repr(self.callback))
        state = "active" if self.active else "stopped"
        return f"<Following {name} {state}, {self.calls} call(s), {len(self.errors)} error(s)>"

    def _report(self, opened: OpenedStudy, error: BaseException) -> None:
        self.errors.append((opened, error))
        name = getattr(self.callback, "__qualname__", repr(self.callback))
        print(
            f"imagingkit.context: follow callback {name} failed on study "
            f"{opened.study_uid or opened.study.get('id')} (it keeps following):",
            file=sys.stderr,
        )
        traceback.print_exception(error, file=sys.stderr)


class NotebookContext(HasTraits):
    """What the notebook is looking at, observable and optionally in a FHIRcast session.

    Parameters
    ----------
    bridge : Bridge, optional
        Used to find the ImagingStudy of a bare Study Instance UID
        (:meth:`select_study`); frames from ``cohort.studies()`` need none.

    Attributes
    ----------
    patient, study, report : dict or None
        The current context's ``patient``, ``study`` and ``report`` (a resource, or a
        Reference when the sender sent one), replaced by each open (FHIRcast ``2-5``:
        opens are complete replacements), cleared by a close.
    study_uid : str
        Study Instance UID of :attr:`study` (``""`` when none).
    selection : dict or None
        The notebook's own latest selection (an ImagingStudy or a Patient); other
        applications' events do not change it.
    anchor : str
        The anchor type of the current context (``"Patient"``, ``"ImagingStudy"``,
        ``"DiagnosticReport"``) or ``""``.
    status : str
        ``"unbound"``, or the FHIRcast client's ``connecting``/``connected``/
        ``reconnecting``/``denied``/``disconnected``/``closed``.
    in_sync : bool
        True while bound and following the hub (false after a denial, ``2-4``, or while
        disconnected, ``4-2-1``).
    """

    patient = Instance(dict, allow_none=True)
    study = Instance(dict, allow_none=True)
    report = Instance(dict, allow_none=True)
    study_uid = Unicode("")
    selection = Instance(dict, allow_none=True)
    anchor = Unicode("")
    status = Unicode("unbound")
    in_sync = Bool(False)

    def __init__(self, bridge: Bridge | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bridge = bridge
        self.hub_url: str | None = None
        self.topic: str | None = None
        self.denial: Denial | None = None
        self._client: FhircastClient | None = None
        self._followers: list[Following] = []
        self._lock = threading.RLock()
        self._timeout = 10.0

    # --- binding to a hub ----------------------------------------------------------------

    @property
    def client(self) -> FhircastClient | None:
        """The FHIRcast client while bound (for its ``stats``, ``wait_for`` …)."""
        return self._client

    def bind(
        self,
        hub_url: str,
        topic: str,
        token: str | Callable[[], str] | None = None,
        *,
        subscriber_name: str = "imagingkit notebook",
        timeout: float = 10.0,
        **options: Any,
    ) -> NotebookContext:
        """Subscribe the context to a FHIRcast session; replaces any earlier binding.

        The hub replays the context that is open now (FHIRcast ``2-4``, "current context"),
        so the context is current as soon as the replay arrives.

        Parameters
        ----------
        hub_url : str
            ``hub.url`` (e.g. ``http://127.0.0.1:8042/fhircast``; FHIRcast ``2-1``).
        topic : str
            ``hub.topic`` of the session.
        token : str or callable, optional
            Bearer token, or a function returning a fresh one (``2-2`` scopes
            ``fhircast/*.read`` and ``.write``).
        subscriber_name : str
            ``subscriber.name``, shown by other applications in SyncErrors (``2-4``).
        timeout : float
            Seconds to wait for the hub's answers and for each echo.
        **options
            Passed to :class:`~imagingkit.fhircast.client.FhircastClient`.

        Returns
        -------
        NotebookContext
            ``self``, so a cell can end with ``ctx.bind(...)`` and show it.

        Raises
        ------
        FHIRcastError
            The hub could not be reached, refused or denied the subscription.
        """
        from imagingkit.fhircast.client import FhircastClient

        self.unbind()
        client = FhircastClient(
            hub_url,
            topic,
            subscriber_name=subscriber_name,
            token=token,
            timeout=timeout,
            **options,
        )
        with self._lock:
            self._client = client
            self.hub_url, self.topic, self.denial = hub_url.rstrip("/"), topic, None
            self._timeout = timeout
        client.on_status(lambda status: self._on_status(client, status))
        client.on_denied(lambda denial: self._on_denied(client, denial))
        client.on_context(lambda ctx: self._on_context(client, ctx))
        client.on(("Patient-close",), lambda event: self._on_patient_close(client, event))
        client.on(("ImagingStudy-open",), lambda event: self._on_study_open(client, event))
        # events (the replay) that arrived before the listeners were registered
        self._on_status(client, client.status)
        self._on_context(client, client.current)
        return self

    def unbind(self, timeout: float = 5.0) -> None:
        """Unsubscribe and close the socket with 1000 (FHIRcast ``2-5``); idempotent.

        The context keeps its values; followers stay registered for a later :meth:`bind`.
        """
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close(timeout)
        with self._lock, self.hold_trait_notifications():
            self.status = "unbound"
            self.in_sync = False

    @property
    def bound(self) -> bool:
        """Whether the context is subscribed to a hub."""
        return self._client is not None

    # --- following other applications ----------------------------------------------------

    def follow(self, callback: Callable[[OpenedStudy], Any]) -> Following:
        """Run ``callback(opened)`` each time another application opens a study.

        Triggered by every ``ImagingStudy-open`` received from the hub (FHIRcast ``3-5-1``)
        except the echo of the notebook's own request (``2-6``). The context is already
        updated when the callback runs. A callback that raises is reported on
        ``sys.stderr`` and in :attr:`Following.errors`; it keeps following. A callback
        returning an awaitable is scheduled on the running loop.

        Parameters
        ----------
        callback : callable
            Receives an :class:`OpenedStudy`.

        Returns
        -------
        Following
            ``.stop()`` ends it.
        """
        if not callable(callback):
            raise InvalidInputError(f"follow() needs a callable, got {callback!r}")
        handle = Following(self, callback)
        with self._lock:
            self._followers.append(handle)
        return handle

    def _unfollow(self, handle: Following) -> None:
        with self._lock:
            if handle in self._followers:
                self._followers.remove(handle)

    # --- selecting in the notebook --------------------------------------------------------

    def select_study(
        self,
        study: Any,
        *,
        patient: Mapping[str, Any] | None = None,
        bridge: Bridge | None = None,
        lenient: bool = False,
    ) -> NotebookContext:
        """Make *study* the notebook's selection and current study; publish it when bound.

        When bound, publishes ``Patient-open`` (when the subject is a Patient) and then
        ``ImagingStudy-open`` with the ``study`` and ``patient`` keys (FHIRcast ``3-3-1``,
        ``3-5-1``), the study carrying its Study Instance UID as
        ``identifier[system=urn:dicom:uid]`` = ``urn:oid:<UID>`` and its accession number
        as an ``ACSN`` identifier, and waits (bounded) for the hub's echo.

        Parameters
        ----------
        study : dict, str, pandas.Series or pandas.DataFrame
            An ImagingStudy resource (with ``id``); a Study Instance UID (looked up on
            FHIR through *bridge*); a row of ``cohort.studies()`` (DESIGN.md D6 columns
            ``StudyInstanceUID``, ``imaging_study_id``, ``patient_ref`` …); or a frame
            whose rows all belong to one study.
        patient : dict, optional
            The Patient resource; by default built from the row or the study's subject.
        bridge : Bridge, optional
            For a bare UID; default :attr:`bridge`, else the bridge that made the frame.
        lenient : bool
            Accept real-world UIDs that break PS3.5 §9.1 (see :mod:`imagingkit.uids`).

        Returns
        -------
        NotebookContext
            ``self``.

        Raises
        ------
        InvalidUIDError
            A malformed Study Instance UID.
        InvalidInputError
            A row without a Study Instance UID, a frame of several studies, an
            ImagingStudy without ``id``, a UID no ImagingStudy has, anything else.
        ConfigError
            A bare UID and no bridge to look it up.
        FHIRcastError
            The hub refused the request; the selection is unchanged (a ``Patient-open``
            the hub accepted before refusing the study still reaches every subscriber).
        """
        resource, found_patient = _study_and_patient(study, bridge or self.bridge, lenient)
        if patient is not None:
            found_patient = _patient_resource(patient)
            resource.setdefault("subject", {"reference": f"Patient/{found_patient['id']}"})
        client = self._client
        ours = True
        if client is not None:
            if found_patient is not None:
                client.open_patient(found_patient)
            ours = self._await_echo(client, client.open_study(resource, found_patient))
        with self._lock, self.hold_trait_notifications():
            self.selection = copy.deepcopy(resource)
            if ours:
                self._set(
                    "ImagingStudy",
                    copy.deepcopy(found_patient) or _subject_reference(resource),
                    copy.deepcopy(resource),
                    None,
                )
        return self

    def select_patient(self, patient: Any) -> NotebookContext:
        """Make a Patient the notebook's selection; publish ``Patient-open`` when bound.

        Parameters
        ----------
        patient : dict, str or pandas.Series
            A Patient resource (with ``id``), a ``"Patient/<id>"`` reference, or a row
            with a ``patient_ref`` column (FHIRcast ``3-3-1``).

        Returns
        -------
        NotebookContext
            ``self``.
        """
        resource = _patient_resource(patient)
        client = self._client
        ours = client is None or self._await_echo(client, client.open_patient(resource))
        with self._lock, self.hold_trait_notifications():
            self.selection = copy.deepcopy(resource)
            if ours:
                self._set("Patient", copy.deepcopy(resource), None, None)
        return self

    def clear(self) -> None:
        """Forget the current context and the selection here (nothing is published)."""
        with self._lock, self.hold_trait_notifications():
            self.selection = None
            self._set("", None, None, None)

    @property
    def accession_number(self) -> str | None:
        """Accession number of :attr:`study`, if known."""
        return protocol.accession_number(self.study)

    def _await_echo(self, client: FhircastClient, sent: Event) -> bool:
        """Wait (bounded) for the hub's echo of *sent*; tell whether it is still current.

        The echo is recorded on the network thread, so this works inside a cell; once it
        is in, queued context callbacks for the intermediate Patient-open are stale. False
        when another application's event came after it: its callback will set the context.
        """
        try:
            client.wait_for(sent.id, timeout=self._timeout)
        except FHIRcastError:
            log.warning("the hub did not echo %s %s in time", sent.name, sent.id)
            return True
        now = client.current
        return now is not None and client.is_own(now.event)

    # --- from the hub ----------------------------------------------------------------------

    def _set(
        self,
        anchor: str,
        patient: dict[str, Any] | None,
        study: dict[str, Any] | None,
        report: dict[str, Any] | None,
    ) -> None:
        self.anchor = anchor
        self.patient = patient
        self.study = study
        self.report = report
        self.study_uid = protocol.study_instance_uid(study) or ""

    def _on_status(self, client: FhircastClient, status: str) -> None:
        with self._lock:
            if client is not self._client:
                return
            with self.hold_trait_notifications():
                self.status = status
                self.in_sync = client.in_sync

    def _on_denied(self, client: FhircastClient, denial: Denial) -> None:
        with self._lock:
            if client is not self._client:
                return
            self.denial = denial
            with self.hold_trait_notifications():
                self.status = "denied"
                self.in_sync = False

    def _on_context(self, client: FhircastClient, ctx: CurrentContext | None) -> None:
        with self._lock:
            # only the client's latest context: an older one is stale by the time it is
            # delivered (the notebook may have selected meanwhile)
            if client is not self._client or ctx is not client.current:
                return
            with self.hold_trait_notifications():
                self.in_sync = client.in_sync
                if ctx is None:
                    self._set("", None, None, None)
                    return
                study = _as_dict(ctx.study)
                self._set(
                    ctx.anchor,
                    _as_dict(ctx.patient) or _subject_reference(study),
                    study,
                    _as_dict(ctx.report),
                )

    def _on_patient_close(self, client: FhircastClient, event: Event) -> None:
        # closing the patient closes everything of that patient here, whatever the anchor
        with self._lock:
            if client is not self._client:
                return
            closed = protocol.anchor_id(event.value("patient"))
            if closed is not None and closed == protocol.anchor_id(self.patient):
                with self.hold_trait_notifications():
                    self._set("", None, None, None)

    def _on_study_open(self, client: FhircastClient, event: Event) -> None:
        if client is not self._client or client.is_own(event):
            return
        study = _as_dict(event.value("study")) or {}
        opened = OpenedStudy(
            study=study,
            patient=_as_dict(event.value("patient")),
            study_uid=protocol.study_instance_uid(study),
            accession_number=protocol.accession_number(study),
            event=event,
        )
        with self._lock:
            followers = list(self._followers)
        for handle in followers:
            _run_follower(handle, opened)

    # --- display ----------------------------------------------------------------------------

    def _rows(self) -> list[tuple[str, str]]:
        rows = [
            ("patient", _describe(self.patient)),
            ("study", _describe(self.study)),
            ("Study Instance UID", self.study_uid or "—"),
            ("accession", self.accession_number or "—"),
            ("report", _describe(self.report)),
            ("selection (this notebook)", _describe(self.selection)),
            ("anchor", self.anchor or "—"),
        ]
        if self.bound:
            rows.append(("hub", f"{redact_url(self.hub_url)} · topic {self.topic}"))
        state = f"{self.status}, {'in sync' if self.in_sync else 'not in sync'}"
        if self.denial is not None:
            state += f" (denied: {self.denial.reason or 'no reason'})"
        rows.append(("FHIRcast", state))
        errors = sum(len(f.errors) for f in self._followers)
        rows.append(("following", f"{len(self._followers)} callback(s), {errors} error(s)"))
        return rows

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
            f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
            for k, v in self._rows()
        )
        return f"<table><caption>imagingkit notebook context</caption>{body}</table>"

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self._rows())
        return f"<NotebookContext {inner}>"


def _run_follower(handle: Following, opened: OpenedStudy) -> None:
    handle.calls += 1
    try:
        result = handle.callback(opened)
    except Exception as error:
        handle._report(opened, error)
        return
    if inspect.isawaitable(result):
        try:
            task = asyncio.ensure_future(result, loop=asyncio.get_running_loop())
        except RuntimeError:  # a script's dispatcher thread: no loop to await it on
            close = getattr(result, "close", None)
            if close is not None:
                close()
            handle._report(
                opened,
                ConfigError(
                    "the follow callback returned a coroutine but no event loop runs here: "
                    "bind the context from a notebook cell, or pass loop= to bind()"
                ),
            )
            return

        def done(finished: asyncio.Future[Any]) -> None:
            if not finished.cancelled() and finished.exception() is not None:
                handle._report(opened, finished.exception())  # type: ignore[arg-type]

        task.add_done_callback(done)
        _PENDING.add(task)
        task.add_done_callback(_PENDING.discard)


_PENDING: set[asyncio.Future[Any]] = set()


# --- turning notebook values into FHIR resources ------------------------------------------


def _as_dict(value: Any) -> dict[str, Any] | None:
    return copy.deepcopy(dict(value)) if isinstance(value, Mapping) else None


def _subject_reference(study: Mapping[str, Any] | None) -> dict[str, Any] | None:
    ref = protocol.reference_of((study or {}).get("subject"))
    return {"reference": ref} if ref and ref.split("/")[-2:-1] == ["Patient"] else None


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        import pandas as pd

        return bool(pd.isna(value))
    except (ImportError, TypeError, ValueError):
        return False


def _text(value: Any) -> str | None:
    return None if _missing(value) or str(value) == "" else str(value)


def _is_frame(value: Any) -> bool:
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(value, pd.DataFrame)


def _is_row(value: Any) -> bool:
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(value, pd.Series)


def _study_and_patient(
    value: Any, bridge: Bridge | None, lenient: bool
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(ImagingStudy for ImagingStudy-open, Patient for Patient-open or None)."""
    if _is_frame(value):
        return _from_frame(value, bridge, lenient)
    if _is_row(value):
        return _from_row(value, None, bridge, lenient)
    if isinstance(value, str):
        uid = validate_uid(value.strip(), lenient=lenient, what="StudyInstanceUID")
        return _from_frame(_lookup(uid, bridge), bridge, lenient)
    if isinstance(value, Mapping):
        study = _study_resource(value, lenient)
        ref = protocol.reference_of(study.get("subject"))
        patient = None
        if ref and ref.split("/")[-2:-1] == ["Patient"]:
            patient = {"resourceType": "Patient", "id": ref.rsplit("/", 1)[-1]}
        return study, patient
    raise InvalidInputError(
        "select_study() takes an ImagingStudy dict, a StudyInstanceUID, a row of "
        f"cohort.studies() or a one-study frame, not {type(value).__name__}"
    )


def _from_frame(
    frame: Any, bridge: Bridge | None, lenient: bool
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    if len(frame) == 0:
        raise InvalidInputError("select_study() got an empty frame: select one study")
    if "StudyInstanceUID" not in frame.columns:
        raise InvalidInputError(
            "the frame has no StudyInstanceUID column (DESIGN.md D6): use cohort.studies()"
        )
    uids = {u for u in frame["StudyInstanceUID"] if not _missing(u)}
    if len(uids) > 1:
        raise InvalidInputError(
            f"the frame holds {len(uids)} studies; select one, e.g. frame.iloc[0]"
        )
    attrs = getattr(frame, "attrs", {}).get("imagingkit")
    return _from_row(frame.iloc[0], attrs, bridge, lenient)


def _from_row(
    row: Any, provenance: Any, bridge: Bridge | None, lenient: bool
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    uid = _text(row.get("StudyInstanceUID"))
    if uid is None:
        raise InvalidInputError(
            "the row has no StudyInstanceUID (DESIGN.md D6 column): cannot select a study "
            f"from {_row_label(row)}"
        )
    validate_uid(uid, lenient=lenient, what="StudyInstanceUID")
    study_id = _text(row.get("imaging_study_id"))
    if study_id is None:  # a frame made elsewhere: find its ImagingStudy on FHIR
        return _from_frame(_lookup(uid, bridge, provenance), bridge, lenient)
    identifiers: list[dict[str, Any]] = [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{uid}"}]
    accession = _text(row.get("AccessionNumber"))
    if accession is not None:
        identifiers.append(_accession_identifier(accession))
    study: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": study_id,
        "status": _text(row.get("status")) or "unknown",
        "identifier": identifiers,
    }
    description = _text(row.get("StudyDescription"))
    if description is not None:
        study["description"] = description
    patient: dict[str, Any] | None = None
    ref = _text(row.get("patient_ref"))
    if ref is not None:
        study["subject"] = {"reference": ref}
        if ref.split("/")[-2:-1] == ["Patient"]:
            patient = {"resourceType": "Patient", "id": ref.rsplit("/", 1)[-1]}
            mrn = _text(row.get("PatientID"))
            if mrn is not None:
                patient["identifier"] = [
                    {"type": {"coding": [{"system": V2_0203, "code": "MR"}]}, "value": mrn}
                ]
    return study, patient


def _row_label(row: Any) -> str:
    name = getattr(row, "name", None)
    return f"row {name!r}" if name is not None else "the row"


def _accession_identifier(value: str) -> dict[str, Any]:
    return {"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]}, "value": value}


def _study_resource(value: Mapping[str, Any], lenient: bool) -> dict[str, Any]:
    if value.get("resourceType") not in (None, "ImagingStudy"):
        raise InvalidInputError(
            f"select_study() needs an ImagingStudy, got a {value.get('resourceType')}"
        )
    study_id = value.get("id")
    if not isinstance(study_id, str) or not study_id:
        raise InvalidInputError(
            "the ImagingStudy has no 'id' (ImagingStudy-open needs one, FHIRcast 3-5-1); "
            "pass its Study Instance UID or a cohort row instead"
        )
    study = {k: copy.deepcopy(value[k]) for k in _STUDY_ELEMENTS if k in value}
    study["resourceType"] = "ImagingStudy"
    study.setdefault("status", "unknown")
    uid = protocol.study_instance_uid(value)
    if uid is not None:
        validate_uid(uid, lenient=lenient, what="StudyInstanceUID")
        others = [
            i
            for i in study.get("identifier") or []
            if not (isinstance(i, Mapping) and i.get("system") == DICOM_UID_SYSTEM)
        ]
        study["identifier"] = [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{uid}"}, *others]
    return study


def _patient_resource(value: Any) -> dict[str, Any]:
    if _is_row(value):
        ref = _text(value.get("patient_ref"))
        if ref is None:
            raise InvalidInputError(f"{_row_label(value)} has no patient_ref (DESIGN.md D6)")
        value = ref
    if isinstance(value, str):
        kind, _, ident = value.strip().rstrip("/").rpartition("/")
        if kind.rsplit("/", 1)[-1] != "Patient" or not ident:
            raise InvalidInputError(f"{value!r} is not a Patient reference ('Patient/<id>')")
        return {"resourceType": "Patient", "id": ident}
    if isinstance(value, Mapping):
        if value.get("resourceType") not in (None, "Patient"):
            raise InvalidInputError(f"expected a Patient, got a {value.get('resourceType')}")
        patient_id = value.get("id")
        if not isinstance(patient_id, str) or not patient_id:
            raise InvalidInputError("the Patient has no 'id' (Patient-open needs one, 3-3-1)")
        patient = {k: copy.deepcopy(value[k]) for k in _PATIENT_ELEMENTS if k in value}
        patient["resourceType"] = "Patient"
        return patient
    raise InvalidInputError(
        f"expected a Patient resource, a 'Patient/<id>' reference or a row, "
        f"not {type(value).__name__}"
    )


def _lookup(uid: str, bridge: Bridge | None, provenance: Any = None) -> Any:
    """The study-level frame of the ImagingStudy with this Study Instance UID."""
    if bridge is None and provenance is not None:
        from imagingkit.bridge import live_bridge

        bridge = live_bridge(provenance)
    if bridge is None:
        raise ConfigError(
            f"to select Study Instance UID {uid} the context must find its ImagingStudy: "
            "pass bridge=imagingkit.connect(...), set ctx.bridge, or pass a cohort row"
        )
    frame = bridge.cohort().imaging(study_uid=uid).studies(level="study", progress=False)
    frame = frame[frame["StudyInstanceUID"] == uid]
    if len(frame) == 0:
        raise InvalidInputError(f"no ImagingStudy on {bridge.fhir.url} has StudyInstanceUID {uid}")
    ids = sorted({str(i) for i in frame["imaging_study_id"] if not _missing(i)})
    if len(ids) != 1:
        raise InvalidInputError(
            f"StudyInstanceUID {uid} is held by {len(ids)} ImagingStudies ({', '.join(ids)})"
        )
    return frame.iloc[:1]


def _describe(resource: Mapping[str, Any] | None) -> str:
    if not resource:
        return "—"
    ref = protocol.reference_of(resource) or "?"
    extra = []
    for ident in resource.get("identifier") or []:
        value = ident.get("value") if isinstance(ident, Mapping) else None
        if isinstance(value, str) and ident.get("system") != DICOM_UID_SYSTEM:
            extra.append(value)
    uid = protocol.study_instance_uid(resource)
    if uid:
        extra.append(f"UID {uid}")
    description = resource.get("description")
    if isinstance(description, str):
        extra.append(description)
    return f"{ref} ({', '.join(extra)})" if extra else ref


_CURRENT: NotebookContext | None = None
_CURRENT_LOCK = threading.Lock()


def current() -> NotebookContext:
    """Return this process's notebook context (created on first use).

    Returns
    -------
    NotebookContext
        The same object on every call, so widgets and code share it.
    """
    global _CURRENT
    with _CURRENT_LOCK:
        if _CURRENT is None:
            _CURRENT = NotebookContext()
        return _CURRENT
