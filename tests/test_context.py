"""``imagingkit.context``: the notebook context on a real FHIRcast hub (issue 6 point 3).

The "other application" is a real :class:`FhircastClient` on the same topic; the hub is a
:class:`BackgroundHub` or the hub of ``imagingkit serve --sandbox``. Outside a kernel the
context's callbacks run on the client's dispatcher thread, so the tests wait (bounded) for
the state to arrive.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Generator
from typing import Any

import nbformat
import pandas as pd
import pytest
import requests
import traitlets
from nbclient import NotebookClient
from servers import ImagingkitServer

import imagingkit
from imagingkit.context import NotebookContext, OpenedStudy
from imagingkit.errors import ConfigError, FHIRcastError, InvalidInputError, InvalidUIDError
from imagingkit.fhircast import BackgroundHub, FhircastClient, FhircastHub, StaticTokenValidator
from imagingkit.fhircast.protocol import accession_number, study_instance_uid
from imagingkit.uids import is_valid_uid

WAIT = 10.0
ACSN = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}
PATIENT = {"resourceType": "Patient", "id": "pat-1", "identifier": [{"value": "MRN-1"}]}
STUDY = {
    "resourceType": "ImagingStudy",
    "id": "study-1",
    "status": "available",
    "subject": {"reference": "Patient/pat-1"},
    "identifier": [
        {"system": "urn:dicom:uid", "value": "urn:oid:1.2.840.99.1"},
        {"type": ACSN, "value": "ACC-1"},
    ],
    "series": [{"uid": "1.2.840.99.1.1", "instance": [{"uid": "1.2.840.99.1.1.1"}]}],
}
STUDY_2 = {
    "resourceType": "ImagingStudy",
    "id": "study-2",
    "status": "available",
    "subject": {"reference": "Patient/pat-2"},
    "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.840.99.2"}],
}
PATIENT_2 = {"resourceType": "Patient", "id": "pat-2"}


def wait_until(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def new_topic() -> str:
    return f"test-{uuid.uuid4()}"


@pytest.fixture
def hub() -> Generator[BackgroundHub, None, None]:
    background = BackgroundHub()
    yield background
    background.stop()


@pytest.fixture
def session(hub: BackgroundHub) -> Generator[tuple[NotebookContext, FhircastClient], None, None]:
    """A bound context and another application ("the PACS") on one topic."""
    topic = new_topic()
    ctx = NotebookContext().bind(hub.url, topic)
    pacs = FhircastClient(hub.url, topic, subscriber_name="pacs", loop="thread")
    yield ctx, pacs
    pacs.close()
    ctx.unbind()


def opens_elsewhere(ctx: NotebookContext) -> list[OpenedStudy]:
    """The studies a follow callback is given, in order."""
    seen: list[OpenedStudy] = []
    ctx.follow(seen.append)
    return seen


def names(subscriptions: list[Any]) -> list[str | None]:
    return sorted(s.subscriber_name or "" for s in subscriptions)


# --- following other applications ---------------------------------------------------------


def test_the_context_follows_opens_and_closes_elsewhere(session) -> None:
    ctx, pacs = session
    seen = opens_elsewhere(ctx)
    assert (ctx.status, ctx.in_sync, ctx.study) == ("connected", True, None)

    pacs.open_patient(PATIENT)
    wait_until(lambda: ctx.anchor == "Patient", "Patient-open")
    assert ctx.patient == PATIENT and ctx.study is None and seen == []

    pacs.open_study(STUDY, PATIENT)
    wait_until(lambda: len(seen) == 1, "the follow callback")
    assert (ctx.anchor, ctx.study_uid, ctx.accession_number) == (
        "ImagingStudy",
        "1.2.840.99.1",
        "ACC-1",
    )
    assert ctx.patient == PATIENT and ctx.study == STUDY
    opened = seen[0]
    assert (opened.study_uid, opened.accession_number) == ("1.2.840.99.1", "ACC-1")
    assert opened.patient == PATIENT and opened.study["id"] == "study-1"

    pacs.close_study(STUDY, PATIENT)
    wait_until(lambda: ctx.anchor == "", "ImagingStudy-close")
    assert (ctx.patient, ctx.study, ctx.study_uid) == (None, None, "")

    # closing the patient clears a study of that patient too, whatever the anchor
    pacs.open_study(STUDY, PATIENT)
    wait_until(lambda: ctx.study_uid == "1.2.840.99.1", "second open")
    pacs.close_patient(PATIENT)
    wait_until(lambda: ctx.study is None, "Patient-close")
    assert (ctx.patient, ctx.anchor) == (None, "")
    assert len(seen) == 2


def test_a_report_opened_elsewhere_sets_report_patient_and_study(session) -> None:
    ctx, pacs = session
    report = {
        "resourceType": "DiagnosticReport",
        "id": "rep-1",
        "status": "preliminary",
        "subject": {"reference": "Patient/pat-1"},
    }
    pacs.open_report(report, PATIENT, [STUDY])
    wait_until(lambda: ctx.anchor == "DiagnosticReport", "DiagnosticReport-open")
    assert ctx.report == report and ctx.patient == PATIENT and ctx.study_uid == "1.2.840.99.1"
    pacs.close_report(report, PATIENT, [STUDY])
    wait_until(lambda: ctx.report is None, "DiagnosticReport-close")
    assert ctx.study is None


def test_the_context_is_observable_and_linkable(session) -> None:
    ctx, pacs = session

    class Picker(traitlets.HasTraits):  # what an ipywidgets widget is, as far as link goes
        value = traitlets.Unicode("")

    picker = Picker()
    link = traitlets.dlink((ctx, "study_uid"), (picker, "value"))
    changes: list[tuple[str, Any]] = []
    ctx.observe(lambda change: changes.append((change["name"], change["new"])), ["study", "anchor"])
    pacs.open_study(STUDY, PATIENT)
    wait_until(lambda: picker.value == "1.2.840.99.1", "the linked trait")
    assert ("anchor", "ImagingStudy") in changes and ("study", STUDY) in changes
    link.unlink()


def test_a_bind_gets_the_context_open_now(hub) -> None:
    topic = new_topic()
    with FhircastClient(hub.url, topic, subscriber_name="pacs", loop="thread") as pacs:
        pacs.wait_for(pacs.open_study(STUDY, PATIENT).id)
        ctx = NotebookContext().bind(hub.url, topic)  # the hub replays the open (2-4)
        try:
            wait_until(lambda: ctx.study_uid == "1.2.840.99.1", "the replayed open")
        finally:
            ctx.unbind()


# --- selecting in the notebook --------------------------------------------------------------


def test_select_study_publishes_patient_then_study_open(session) -> None:
    ctx, pacs = session
    mark = pacs.mark()
    ctx.select_study(STUDY)
    # set at once, in the cell that selected
    assert ctx.selection is not None and ctx.selection["id"] == "study-1"
    assert (ctx.anchor, ctx.study_uid) == ("ImagingStudy", "1.2.840.99.1")
    patient_open = pacs.wait_for("Patient-open", after=mark)
    study_open = pacs.wait_for("ImagingStudy-open", after=mark)
    names = [e.name for e in pacs.received()[-2:]]
    assert names == ["Patient-open", "ImagingStudy-open"]
    assert patient_open.value("patient") == {"resourceType": "Patient", "id": "pat-1"}
    study = study_open.value("study")
    assert study_instance_uid(study) == "1.2.840.99.1"
    assert {"system": "urn:dicom:uid", "value": "urn:oid:1.2.840.99.1"} in study["identifier"]
    assert accession_number(study) == "ACC-1"
    assert (study["id"], study["status"], study["subject"]) == (
        "study-1",
        "available",
        {"reference": "Patient/pat-1"},
    )
    assert "series" not in study  # the event carries the study, not its instances
    assert study_open.value("patient") == patient_open.value("patient")
    # the hub's current context is the selection too (2-9)
    assert pacs.get_context()["context.type"] == "ImagingStudy"


def test_own_echo_does_not_run_follow(session) -> None:
    ctx, pacs = session
    seen = opens_elsewhere(ctx)
    ctx.select_study(STUDY)
    pacs.open_study(STUDY_2, PATIENT_2)  # after the echo: once it is followed, so is the echo
    wait_until(lambda: len(seen) >= 1, "the follow callback")
    time.sleep(0.2)
    assert [o.study["id"] for o in seen] == ["study-2"]
    assert ctx.study_uid == "1.2.840.99.2"
    assert ctx.selection is not None and ctx.selection["id"] == "study-1"  # still ours


def test_select_patient_publishes_patient_open(session) -> None:
    ctx, pacs = session
    mark = pacs.mark()
    ctx.select_patient("Patient/pat-2")
    assert (ctx.anchor, ctx.patient, ctx.study) == ("Patient", PATIENT_2, None)
    assert pacs.wait_for("Patient-open", after=mark).value("patient") == PATIENT_2


def test_unbound_selection_changes_only_the_context(hub) -> None:
    topic = new_topic()
    with FhircastClient(hub.url, topic, subscriber_name="pacs", loop="thread") as pacs:
        ctx = NotebookContext()
        ctx.select_study(STUDY)
        assert (ctx.status, ctx.in_sync, ctx.study_uid) == ("unbound", False, "1.2.840.99.1")
        assert hub.call(hub.hub.current_context, topic)["context"] == []
        assert pacs.received() == []
        ctx.clear()
        assert (ctx.study, ctx.selection, ctx.anchor) == (None, None, "")


def test_a_refused_selection_changes_nothing(make_read_only_hub) -> None:
    hub, topic = make_read_only_hub
    ctx = NotebookContext().bind(hub.url, topic, token="reader")
    try:
        with pytest.raises(FHIRcastError) as refused:
            ctx.select_study(STUDY)
        assert refused.value.status == 403
        assert (ctx.selection, ctx.study, ctx.anchor) == (None, None, "")
    finally:
        ctx.unbind()


@pytest.fixture
def make_read_only_hub() -> Generator[tuple[BackgroundHub, str], None, None]:
    validator = StaticTokenValidator({"reader": "fhircast/*.read"})
    background = BackgroundHub(FhircastHub(token_validator=validator))
    yield background, new_topic()
    background.stop()


# --- callbacks, binding ----------------------------------------------------------------------


def test_a_failing_callback_is_reported_and_following_goes_on(
    session, capfd: pytest.CaptureFixture[str]
) -> None:
    ctx, pacs = session

    def broken(opened: OpenedStudy) -> None:
        raise ZeroDivisionError(f"cannot follow {opened.study_uid}")

    bad = ctx.follow(broken)
    good = opens_elsewhere(ctx)
    pacs.open_study(STUDY, PATIENT)
    pacs.open_study(STUDY_2, PATIENT_2)
    wait_until(lambda: len(good) == 2, "the good callback, twice")
    assert bad.calls == 2 and len(bad.errors) == 2
    assert isinstance(bad.errors[0][1], ZeroDivisionError)
    assert bad.errors[1][0].study_uid == "1.2.840.99.2"
    err = capfd.readouterr().err
    assert "follow callback" in err and "broken" in err
    assert "ZeroDivisionError: cannot follow 1.2.840.99.1" in err
    assert ctx.status == "connected" and ctx.in_sync
    assert "2 error(s)" in repr(bad)
    bad.stop()
    assert not bad.active
    pacs.open_study(STUDY, PATIENT)
    wait_until(lambda: len(good) == 3, "the good callback, again")
    assert bad.calls == 2


def test_unbind_stops_listening_and_rebind_resumes(hub) -> None:
    first, second = new_topic(), new_topic()
    ctx = NotebookContext().bind(hub.url, first)
    seen = opens_elsewhere(ctx)
    with (
        FhircastClient(hub.url, first, subscriber_name="pacs", loop="thread") as pacs,
        FhircastClient(hub.url, second, subscriber_name="ris", loop="thread") as ris,
    ):
        pacs.open_study(STUDY, PATIENT)
        wait_until(lambda: len(seen) == 1, "the first open")
        ctx.unbind()
        assert (ctx.status, ctx.in_sync, ctx.bound) == ("unbound", False, False)
        assert names(hub.call(hub.hub.subscriptions, first)) == ["pacs"]  # unsubscribed
        assert ctx.study_uid == "1.2.840.99.1"  # keeps what it was looking at
        pacs.wait_for(pacs.open_study(STUDY_2, PATIENT_2).id)
        time.sleep(0.2)
        assert ctx.study_uid == "1.2.840.99.1" and len(seen) == 1

        ris.wait_for(ris.open_study(STUDY_2, PATIENT_2).id)
        ctx.bind(hub.url, second)
        wait_until(lambda: ctx.study_uid == "1.2.840.99.2", "the replay on the new topic")
        ris.open_study(STUDY, PATIENT)
        wait_until(lambda: len(seen) == 2, "following after the rebind")
        # binding again replaces the subscription: never two for one context
        ctx.bind(hub.url, second)
        assert names(hub.call(hub.hub.subscriptions, second)) == ["imagingkit notebook", "ris"]
    ctx.unbind()
    ctx.unbind()  # idempotent


def test_a_denial_is_shown(session, hub) -> None:
    ctx, _pacs = session
    assert ctx.client is not None
    requests.post(
        hub.url,
        data={
            "hub.channel.type": "websocket",
            "hub.mode": "unsubscribe",
            "hub.topic": ctx.topic,
            "hub.channel.endpoint": ctx.client.endpoint,
        },
        timeout=WAIT,
    )
    wait_until(lambda: ctx.status == "denied", "the denial")
    assert not ctx.in_sync and ctx.denial is not None and ctx.denial.reason == "unsubscribed"
    assert "denied: unsubscribed" in ctx._repr_html_()


# --- bad input ----------------------------------------------------------------------------


def test_bad_input_is_named_and_publishes_nothing(session) -> None:
    ctx, pacs = session
    mark = pacs.mark()
    row = pd.Series(
        {
            "StudyInstanceUID": "1.2.840.99.1",
            "imaging_study_id": "study-1",
            "patient_ref": "Patient/pat-1",
            "PatientID": "MRN-1",
            "AccessionNumber": None,
        }
    )
    cases: list[tuple[Any, type[Exception], str]] = [
        ("1.2.abc", InvalidUIDError, "1.2.abc"),
        ("1.2.840.99.1", ConfigError, "bridge"),  # a bare UID needs a FHIR server
        (row.drop("StudyInstanceUID"), InvalidInputError, "no StudyInstanceUID"),
        (row.replace("1.2.840.99.1", "1.02.3"), InvalidUIDError, "1.02.3"),
        (pd.DataFrame([row, row.replace("1.2.840.99.1", "1.2.3")]), InvalidInputError, "2 stud"),
        (pd.DataFrame(columns=["StudyInstanceUID"]), InvalidInputError, "empty"),
        (pd.DataFrame({"x": [1]}), InvalidInputError, "StudyInstanceUID"),
        ({k: v for k, v in STUDY.items() if k != "id"}, InvalidInputError, "'id'"),
        (
            {**STUDY, "identifier": [{"system": "urn:dicom:uid", "value": "x"}]},
            InvalidUIDError,
            "'x'",
        ),
        (PATIENT, InvalidInputError, "Patient"),
        (42, InvalidInputError, "int"),
    ]
    for value, error, named in cases:
        with pytest.raises(error) as raised:
            ctx.select_study(value)
        assert named in str(raised.value), (value, str(raised.value))
    for value in ("Observation/1", {"resourceType": "Patient"}, 3.5):
        with pytest.raises(InvalidInputError):
            ctx.select_patient(value)
    with pytest.raises(InvalidInputError):
        ctx.follow("not callable")  # type: ignore[arg-type]
    assert (ctx.selection, ctx.study) == (None, None)
    # the one good selection after all that is the first thing the PACS hears
    ctx.select_study(row)
    assert pacs.wait_for("ImagingStudy-open", after=mark).value("study")["id"] == "study-1"
    assert [e.name for e in pacs.received()[-2:]] == ["Patient-open", "ImagingStudy-open"]
    assert len([e for e in pacs.received() if e.key != "syncerror"]) == 2


def test_the_html_view_escapes_what_it_shows(session) -> None:
    ctx, pacs = session
    hostile = {
        **STUDY,
        "description": "<script>alert('x')</script>",
        "identifier": [*STUDY["identifier"], {"value": "<img src=x onerror=alert(1)>"}],
    }
    pacs.open_study(hostile, {**PATIENT, "identifier": [{"value": "A&B <b>"}]})
    wait_until(lambda: ctx.study is not None, "the hostile open")
    page = ctx._repr_html_()
    assert "<script>" not in page and "<img" not in page and "<b>" not in page
    assert "&lt;script&gt;" in page and "A&amp;B &lt;b&gt;" in page
    assert "1.2.840.99.1" in page and "connected, in sync" in page


def test_current_is_one_context_per_process() -> None:
    ctx = imagingkit.context.current()
    assert ctx is imagingkit.context.current()
    assert isinstance(ctx, traitlets.HasTraits) and isinstance(ctx, NotebookContext)


# --- against the sandbox: real cohort frames ---------------------------------------------------


@pytest.fixture(scope="module")
def sandbox_cohort(sandbox_server: ImagingkitServer) -> tuple[Any, pd.DataFrame]:
    bridge = imagingkit.connect(sandbox_server.mounts["fhir"].rstrip("/"))
    frame = bridge.cohort().imaging(modality="CT").studies(level="series", progress=False)
    # generated studies: strict UIDs and an accession number each
    frame = frame[frame["StudyInstanceUID"].map(is_valid_uid) & frame["AccessionNumber"].notna()]
    return bridge, frame


def test_selecting_cohort_rows_on_the_sandbox_hub(
    sandbox_server: ImagingkitServer, sandbox_cohort: tuple[Any, pd.DataFrame]
) -> None:
    bridge, series = sandbox_cohort
    hub_url = sandbox_server.mounts["fhircast"].rstrip("/")
    topic = new_topic()
    ctx = NotebookContext().bind(hub_url, topic)
    try:
        with FhircastClient(hub_url, topic, subscriber_name="pacs", loop="thread") as pacs:
            uids = list(dict.fromkeys(series["StudyInstanceUID"]))
            assert len(uids) >= 3
            one_study = series[series["StudyInstanceUID"] == uids[0]]  # series rows, one study
            by_row = series[series["StudyInstanceUID"] == uids[1]].iloc[0]
            for chosen, expected in (
                (one_study, one_study.iloc[0]),
                (by_row, by_row),
                (uids[2], series[series["StudyInstanceUID"] == uids[2]].iloc[0]),
            ):
                mark = pacs.mark()
                ctx.select_study(chosen, bridge=bridge)
                patient = pacs.wait_for("Patient-open", after=mark).value("patient")
                study = pacs.wait_for("ImagingStudy-open", after=mark).value("study")
                assert study["id"] == expected["imaging_study_id"]
                assert study_instance_uid(study) == expected["StudyInstanceUID"]
                assert accession_number(study) == expected["AccessionNumber"]
                assert study["subject"] == {"reference": expected["patient_ref"]}
                assert f"Patient/{patient['id']}" == expected["patient_ref"]
                assert patient["identifier"][0]["value"] == expected["PatientID"]
                assert ctx.study_uid == expected["StudyInstanceUID"]
            with pytest.raises(InvalidInputError, match="no ImagingStudy"):
                ctx.select_study("1.2.3.4.5.6.7.8.9", bridge=bridge)
    finally:
        ctx.unbind()


def test_in_a_kernel_callbacks_run_on_the_kernel_thread(hub: BackgroundHub) -> None:
    cells = [
        f"""
import asyncio
import threading
from imagingkit.context import current
from imagingkit.fhircast import FhircastClient
ctx = current().bind({hub.url!r}, "kernel-topic")
threads = []
ctx.observe(lambda change: threads.append(threading.current_thread().name), "study")
ctx.follow(lambda opened: threads.append(threading.current_thread().name))


async def later(opened):
    await asyncio.sleep(0)
    threads.append("awaited " + opened.study_uid)


ctx.follow(later)
pacs = FhircastClient({hub.url!r}, "kernel-topic", subscriber_name="pacs", loop="thread")
pacs.wait_for(pacs.open_study({STUDY!r}, {PATIENT!r}).id)
print("queued while the cell runs:", threads)
""",
        'print("after the cell:", threads, ctx.study_uid == "1.2.840.99.1")',
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    printed = [o["text"] for cell in notebook.cells for o in cell.outputs if "text" in o]
    assert printed == [
        "queued while the cell runs: []\n",
        "after the cell: ['MainThread', 'MainThread', 'awaited 1.2.840.99.1'] True\n",
    ]


def test_a_coroutine_callback_without_a_loop_is_reported(session) -> None:
    ctx, pacs = session

    async def needs_a_loop(opened: OpenedStudy) -> None:
        return None

    handle = ctx.follow(needs_a_loop)
    pacs.open_study(STUDY, PATIENT)
    wait_until(lambda: len(handle.errors) == 1, "the reported coroutine")
    assert isinstance(handle.errors[0][1], ConfigError)
    assert "no event loop" in str(handle.errors[0][1])
