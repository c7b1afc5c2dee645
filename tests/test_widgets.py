"""``imagingkit.widgets`` driven from Python, as a user's clicks would drive them.

Real servers throughout: the sandbox's FHIR and DICOMweb stores (in this process, on a
private copy of the cached test data), a real FHIRcast hub (:class:`BackgroundHub`) with a
real :class:`FhircastClient` playing "another application", and the embedded FHIR store's
Subscriptions behind ``bridge.watch``. No browser: the widgets' state is traitlets, so the
tests set values, call ``button.click()`` and read the HTML the front end would render.
Outside a kernel the context's callbacks run on the FHIRcast client's dispatcher thread,
so the tests wait (bounded) for them.
"""

from __future__ import annotations

import ast
import html
import shutil
import uuid
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
from servers import cached_sandbox_data_dir, free_port
from test_context import wait_until

import imagingkit
from imagingkit.context import NotebookContext
from imagingkit.fhircast import BackgroundHub, FhircastClient
from imagingkit.fhircast.protocol import Event, study_instance_uid
from imagingkit.iid import ViewerRegistry, viewer_url
from imagingkit.sandbox.fhir.testing import serving_store
from imagingkit.sandbox.running import RunningSandbox, start
from imagingkit.widgets import ContextBar, LiveTable, StudyBrowser, ViewerButtons
from imagingkit.widgets.study_browser import CONTEXT_MARK

WAIT = 30.0
HOSTILE = "<script>alert(1)</script>"
HOSTILE_ATTR = '"><img src=x onerror=alert(2)>'


def assert_escaped(markup: str) -> None:
    """No hostile markup survived; it is there, escaped."""
    assert "<script" not in markup and "<img src=x" not in markup
    assert "&lt;script&gt;" in markup or "&lt;img src=x" in markup


def live_widgets() -> int:
    """Widgets alive in this process (each would be a model in the front end)."""
    from ipywidgets.widgets.widget import _instances

    return len(_instances)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Generator[RunningSandbox, None, None]:
    """The sandbox's stores served in this process, on a private copy of the data."""
    data_dir = tmp_path_factory.mktemp("widgets-sandbox")
    shutil.copytree(cached_sandbox_data_dir(), data_dir, dirs_exist_ok=True)
    running = start(size="small", data_dir=data_dir)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def bridge(sandbox: RunningSandbox) -> imagingkit.Bridge:
    return imagingkit.connect(sandbox.fhir_url)


@pytest.fixture(scope="module")
def series(bridge: imagingkit.Bridge) -> pd.DataFrame:
    return bridge.cohort().studies(level="series", progress=False)


def imaging_study(sandbox: RunningSandbox, study_id: str) -> dict[str, Any]:
    """The ImagingStudy as the FHIR store serves it, trimmed as a PACS would send it."""
    answer = requests.get(f"{sandbox.fhir_url}/ImagingStudy/{study_id}", timeout=30)
    answer.raise_for_status()
    keep = ("resourceType", "id", "status", "subject", "identifier", "started", "description")
    return {k: v for k, v in answer.json().items() if k in keep}


@pytest.fixture
def hub() -> Generator[BackgroundHub, None, None]:
    background = BackgroundHub()
    yield background
    background.stop()


@pytest.fixture
def session(hub: BackgroundHub) -> Generator[tuple[NotebookContext, FhircastClient], None, None]:
    """A bound context and another application ("the PACS") on one topic."""
    topic = f"widgets-{uuid.uuid4()}"
    ctx = NotebookContext().bind(hub.url, topic)
    pacs = FhircastClient(hub.url, topic, subscriber_name="pacs", loop="thread")
    yield ctx, pacs
    pacs.close()
    ctx.unbind()


def study_open_of(uid: str) -> Callable[[Event], bool]:
    return lambda event: (
        event.key == "imagingstudy-open" and study_instance_uid(event.value("study")) == uid
    )


# --------------------------------------------------------------------------- StudyBrowser


def test_select_publishes_imagingstudy_open_that_another_application_receives(
    series: pd.DataFrame, session: tuple[NotebookContext, FhircastClient]
) -> None:
    ctx, pacs = session
    browser = StudyBrowser(series, context=ctx, thumbnails=False, page_size=10)
    browser.select_button.click()  # nothing highlighted yet
    assert "Highlight a study first" in browser.status.value

    _label, uid = browser.studies.options[3]  # the user clicks the fourth line
    browser.studies.value = uid
    assert browser.highlighted == uid
    assert uid in browser.details.value and not browser.select_button.disabled
    mark = pacs.mark()
    browser.select_button.click()

    received = pacs.wait_for(study_open_of(uid), timeout=WAIT, after=mark)
    row = series[series["StudyInstanceUID"] == uid].iloc[0]
    assert received.value("study")["id"] == row["imaging_study_id"]
    assert (
        pacs.wait_for("patient-open", after=mark).value("patient")["id"]
        == (row["patient_ref"].split("/")[-1])
    )
    assert ctx.selection is not None and ctx.selection["id"] == row["imaging_study_id"]
    assert ctx.study_uid == uid
    assert "Selected study" in browser.status.value and "published to topic" in browser.status.value
    wait_until(lambda: browser.studies.options[3][0].startswith(CONTEXT_MARK), "the context mark")
    browser.close()


def test_a_study_opened_elsewhere_is_highlighted_on_its_page(
    series: pd.DataFrame,
    sandbox: RunningSandbox,
    session: tuple[NotebookContext, FhircastClient],
) -> None:
    ctx, pacs = session
    browser = StudyBrowser(series, context=ctx, thumbnails=False, page_size=5)
    assert browser.page == 0 and browser.page_count > 2
    order = list(browser.filtered.index)
    uid = order[12]  # on the third page
    row = series[series["StudyInstanceUID"] == uid].iloc[0]

    pacs.open_study(imaging_study(sandbox, row["imaging_study_id"]))
    wait_until(lambda: browser.highlighted == uid, "the highlight of the study opened elsewhere")
    assert browser.page == 2
    assert browser.studies.value == uid
    labels = dict((value, text) for text, value in browser.studies.options)
    assert labels[uid].startswith(CONTEXT_MARK)
    assert sum(text.startswith(CONTEXT_MARK) for text in labels.values()) == 1
    assert html.escape(uid) in browser.details.value
    assert browser.viewer_buttons.study_uid == uid

    # a study the filters hide: named in the status line, still highlighted for details
    other = series[series["Modality"] != "CT"].drop_duplicates("StudyInstanceUID")
    other = other[
        ~other["StudyInstanceUID"].isin(series.loc[series["Modality"] == "CT", "StudyInstanceUID"])
    ]
    hidden = other.iloc[0]
    browser.modality.value = "CT"
    pacs.open_study(imaging_study(sandbox, hidden["imaging_study_id"]))
    wait_until(lambda: browser.highlighted == hidden["StudyInstanceUID"], "the hidden study")
    assert "hidden by the filters" in browser.status.value
    assert hidden["StudyInstanceUID"] not in [v for _, v in browser.studies.options]
    browser.close()


def synthetic_frame(studies: int = 1000) -> pd.DataFrame:
    """2,000 series rows (two per study) with the D6 columns the browser reads."""
    rng = np.random.default_rng(7)
    modalities = np.array(["CT", "MR", "CR", "US", "PT"])
    parts = np.array(["CHEST", "HEAD", "ABDOMEN", "KNEE"])
    rows = []
    start_day = pd.Timestamp("2015-01-01")
    for i in range(studies):
        uid = f"2.25.{10**20 + i}"
        day = start_day + pd.Timedelta(days=int(rng.integers(0, 3000)))
        first = str(rng.choice(modalities))
        for number, modality in enumerate((first, "SR" if i % 3 == 0 else first), start=1):
            rows.append(
                {
                    "imaging_study_id": f"study-{i}",
                    "patient_ref": f"Patient/p{i % 97}",
                    "PatientID": f"MRN{i % 97:04d}",
                    "StudyInstanceUID": uid,
                    "AccessionNumber": f"ACC{i:05d}",
                    "StudyDate": day,
                    "StudyDescription": f"{first} exam {i}",
                    "SeriesInstanceUID": f"{uid}.{number}",
                    "Modality": modality,
                    "BodyPartExamined": None if i % 10 == 0 else str(rng.choice(parts)),
                    "dicomweb_url": f"http://127.0.0.1:9/dicom-web/studies/{uid}/series/{uid}.{number}",
                }
            )
    frame = pd.DataFrame(rows)
    frame["StudyDate"] = frame["StudyDate"].astype("datetime64[us]")
    for column in ("Modality", "BodyPartExamined"):
        frame[column] = frame[column].astype("category")
    return frame


def test_filters_and_paging_of_2000_rows_render_one_page(
    session: tuple[NotebookContext, FhircastClient],
) -> None:
    ctx, _pacs = session
    frame = synthetic_frame()
    assert len(frame) == 2000
    before = live_widgets()
    small = StudyBrowser(frame.head(4), context=ctx, thumbnails=False, page_size=25)
    per_browser = live_widgets() - before
    small.close()
    before = live_widgets()
    browser = StudyBrowser(frame, context=ctx, thumbnails=False, page_size=25)
    built = live_widgets() - before
    assert built == per_browser, f"{built} widgets for 2,000 rows, {per_browser} for 4"
    assert len(browser.studies.options) == 25
    assert browser.page_count == 40 and "Studies 1–25 of 1,000" in browser.pager.value

    def expected(mask: pd.Series) -> set[str]:
        return set(frame.loc[mask, "StudyInstanceUID"])

    def shown_everywhere() -> list[str]:
        seen: list[str] = []
        browser.go(0)
        for _ in range(browser.page_count):
            seen.extend(value for _, value in browser.studies.options)
            if browser.next.disabled:
                break
            browser.next.click()
        return seen

    browser.modality.value = "MR"
    mr = expected(frame["Modality"] == "MR")
    assert set(browser.filtered.index) == mr and browser.page == 0
    pages = shown_everywhere()
    assert len(pages) == len(set(pages)) == len(mr)  # every study once, page by page
    assert set(pages) == mr and browser.next.disabled and not browser.previous.disabled
    assert max(len(browser.studies.options), 1) <= 25

    browser.modality.value = "SR"  # a study matches through any of its series
    assert set(browser.filtered.index) == expected(frame["Modality"] == "SR")

    browser.modality.value = ""
    browser.body_part.value = "KNEE"
    browser.date_from.value = pd.Timestamp("2017-01-01").date()
    browser.date_to.value = pd.Timestamp("2018-12-31").date()
    dates = frame["StudyDate"].between(pd.Timestamp("2017-01-01"), pd.Timestamp("2018-12-31"))
    assert set(browser.filtered.index) == expected((frame["BodyPartExamined"] == "KNEE") & dates)
    assert "filtered from 1,000" in browser.pager.value

    browser.body_part.value = ""
    browser.date_from.value = None
    browser.date_to.value = None
    browser.search.value = "acc00042"  # case-insensitive, accession number
    assert list(browser.filtered.index) == [f"2.25.{10**20 + 42}"]
    browser.search.value = "no such study"
    assert browser.studies.options == () and "No study passes the filters" in browser.pager.value
    assert browser.next.disabled and browser.previous.disabled
    assert live_widgets() - before == built  # filtering and paging build no widgets
    browser.close()
    assert live_widgets() - before <= 0


# --------------------------------------------------------------------------- thumbnails


def test_thumbnails_are_fetched_lazily_cached_and_failures_are_named(
    series: pd.DataFrame, bridge: imagingkit.Bridge
) -> None:
    ctx = NotebookContext()
    ct = series[series["Modality"] == "CT"].drop_duplicates("StudyInstanceUID")
    first, second = ct["StudyInstanceUID"].iloc[0], ct["StudyInstanceUID"].iloc[1]
    browser = StudyBrowser(series, context=ctx, thumbnail_size=64, max_thumbnails=3)
    assert browser.thumbnails.state == "empty" and browser.thumbnails.fetches == 0  # lazily

    browser.highlight(first)
    assert browser.thumbnails.state in ("loading", "ready")
    if browser.thumbnails.state == "loading":
        assert "fa-spin" in browser.thumbnails.value
    assert browser.thumbnails.wait(60) == "ready"
    count = min(3, series.loc[series["StudyInstanceUID"] == first, "SeriesInstanceUID"].nunique())
    assert browser.thumbnails.value.count("<img src='data:image/jpeg;base64,") == count
    browser.highlight(second)
    assert browser.thumbnails.wait(60) == "ready"
    browser.highlight(first)  # from the cache: at once, no new fetch
    assert browser.thumbnails.state == "ready" and browser.thumbnails.fetches == 2
    browser.close()

    # a study-level frame: the series are found on FHIR through the bridge
    studies = bridge.cohort().imaging(modality="CT").studies(level="study", progress=False)
    browser = StudyBrowser(studies, context=ctx, thumbnail_size=64)
    browser.highlight(first)
    assert browser.thumbnails.wait(60) == "ready", browser.thumbnails.value
    browser.close()

    # pixels that cannot be fetched: a DICOMweb server that is not there
    broken = series[series["StudyInstanceUID"] == first].copy()
    port = free_port()
    broken["dicomweb_url"] = broken["dicomweb_url"].str.replace(
        r"^http://[^/]+", f"http://127.0.0.1:{port}", regex=True
    )
    browser = StudyBrowser(broken, context=ctx)
    browser.highlight(first)
    assert browser.thumbnails.wait(120) == "error"
    assert "could not be fetched" in browser.thumbnails.value
    assert 'role="alert"' in browser.thumbnails.value
    browser.close()


# --------------------------------------------------------------------------- ViewerButtons


def test_viewer_buttons_give_the_iid_builders_links(series: pd.DataFrame) -> None:
    registry = ViewerRegistry.from_config(
        {
            "default": "ohif",
            "viewers": {
                "ohif": {"type": "ohif", "base": "http://127.0.0.1:3000"},
                "pacs": {"type": "template", "url": "https://pacs.test/view?study={{studyUID}}"},
            },
        }
    )
    row = series.iloc[0]
    names = ["builtin", "weasis", "ohif", "pacs"]
    buttons = ViewerButtons(row, names, registry=registry, context=NotebookContext())
    base = row["dicomweb_url"].partition("/studies/")[0]
    for name in names:
        built = viewer_url(
            name,
            study_uid=row["StudyInstanceUID"],
            series_uid=row["SeriesInstanceUID"],
            dicomweb_base=base,
            accession_number=row["AccessionNumber"]
            if isinstance(row["AccessionNumber"], str)
            else None,
            registry=registry,
            lenient=True,
        )
        assert buttons.links[name] == built
        assert (
            buttons.links[name]
            == series.iloc[:1].imaging.viewer_urls(name, registry=registry).iloc[0]
        )
        assert (
            f'href="{html.escape(built, quote=True)}" target="_blank" rel="noopener noreferrer"'
            in buttons.value
        )
    assert buttons.errors == {}

    # a viewer that cannot be placed shows why, the others still work
    buttons = ViewerButtons(row, ["builtin", "slim"], context=NotebookContext())
    assert list(buttons.links) == ["builtin"] and "slim" in buttons.errors
    assert "needs to be configured" in buttons.value

    # a frame of several studies: the links follow the context's study
    ctx = NotebookContext()
    following = ViewerButtons(series, "builtin", context=ctx)
    assert following.links == {} and "No study open" in following.value
    pick = series.drop_duplicates("StudyInstanceUID").iloc[5]
    ctx.select_study(pick)
    assert following.study_uid == pick["StudyInstanceUID"]
    assert following.links["builtin"] == viewer_url(
        "builtin",
        study_uid=pick["StudyInstanceUID"],
        series_uid=pick["SeriesInstanceUID"],
        dicomweb_base=base,
        lenient=True,
    )
    following.close()


def test_hostile_locations_never_become_links(series: pd.DataFrame) -> None:
    row = series.iloc[0].copy()
    uid = row["StudyInstanceUID"]
    for hostile in (
        f"javascript:alert(1)//x/dicom-web/studies/{uid}",
        f"http://127.0.0.1:1/{HOSTILE_ATTR}/dicom-web/studies/{uid}",
        f"http://127.0.0.1:1/{HOSTILE}/dicom-web/studies/{uid}",
    ):
        row["dicomweb_url"] = hostile
        buttons = ViewerButtons(row, ["builtin", "weasis"], context=NotebookContext())
        assert buttons.links == {} and set(buttons.errors) == {"builtin", "weasis"}
        assert "href=" not in buttons.value
        if "<" in hostile:
            assert_escaped(buttons.value)


# --------------------------------------------------------------------------- escaping


def test_hostile_server_text_is_escaped_everywhere(
    series: pd.DataFrame,
    sandbox: RunningSandbox,
    session: tuple[NotebookContext, FhircastClient],
) -> None:
    ctx, pacs = session
    ct = series[series["Modality"] == "CT"]
    uid = ct["StudyInstanceUID"].iloc[0]
    frame = series[series["StudyInstanceUID"] == uid].copy()
    frame["StudyDescription"] = HOSTILE
    frame["PatientID"] = HOSTILE_ATTR
    frame["SeriesDescription"] = HOSTILE
    frame.attrs = dict(series.attrs)
    browser = StudyBrowser(frame, context=ctx, thumbnail_size=48)
    browser.highlight(uid)
    assert_escaped(browser.details.value)
    assert "&lt;img src=x" in browser.details.value
    # the list's labels are plain text (the front end sets textContent), shown as typed
    assert HOSTILE in browser.studies.options[0][0]
    assert browser.thumbnails.wait(60) == "ready"
    assert_escaped(browser.thumbnails.value)

    # a malformed UID in a row: the error names it, escaped
    bad = frame.copy()
    bad["StudyInstanceUID"] = "1.2.<script>"
    bad_browser = StudyBrowser(bad, context=ctx, thumbnails=False)
    bad_browser.highlight("1.2.<script>")
    bad_browser.select()
    assert "Could not select" in bad_browser.status.value
    assert (
        "1.2.&lt;script&gt;" in bad_browser.status.value
        and "<script" not in bad_browser.status.value
    )
    bad_browser.close()

    # another application opens a study and a patient with hostile text: the bar shows it safely
    bar = ContextBar(ctx)
    study = imaging_study(sandbox, frame["imaging_study_id"].iloc[0])
    study["description"] = HOSTILE
    patient = {
        "resourceType": "Patient",
        "id": frame["patient_ref"].iloc[0].split("/")[-1],
        "name": [{"family": HOSTILE_ATTR, "given": [HOSTILE]}],
    }
    pacs.open_study(study, patient)
    wait_until(
        lambda: "onerror" in bar.summary.value and "alert(1)" in bar.summary.value, "the open"
    )
    assert_escaped(bar.summary.value)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in bar.summary.value
    bar.close()
    browser.close()


# --------------------------------------------------------------------------- ContextBar


def test_context_bar_binds_shows_the_context_live_and_unbinds(
    hub: BackgroundHub, series: pd.DataFrame, sandbox: RunningSandbox
) -> None:
    ctx = NotebookContext()
    bar = ContextBar(ctx, timeout=5)
    assert "unbound" in bar.summary.value and bar.unbind_button.disabled
    bar.bind_button.click()
    assert "Enter the hub URL and the topic" in bar.message.value and not ctx.bound

    topic = f"bar-{uuid.uuid4()}"
    bar.hub.value = hub.url
    bar.topic.value = topic
    bar.bind_button.click()
    assert ctx.bound and "Bound to topic" in bar.message.value
    wait_until(lambda: "connected · in sync" in bar.summary.value, "the connected status")
    assert html.escape(topic) in bar.summary.value and not bar.unbind_button.disabled

    pacs = FhircastClient(hub.url, topic, subscriber_name="pacs", loop="thread")
    try:
        row = series.drop_duplicates("StudyInstanceUID").iloc[2]
        study = imaging_study(sandbox, row["imaging_study_id"])
        pacs.open_study(study)
        wait_until(lambda: html.escape(row["StudyInstanceUID"]) in bar.summary.value, "the study")
        assert "ImagingStudy/" + html.escape(row["imaging_study_id"]) in bar.summary.value
        pacs.close_study(study)
        wait_until(lambda: ctx.study is None, "the close")
        wait_until(lambda: "ImagingStudy/" not in bar.summary.value, "the cleared study")
    finally:
        pacs.close()

    bar.unbind_button.click()
    assert not ctx.bound and "Unbound" in bar.message.value
    assert "unbound" in bar.summary.value and bar.unbind_button.disabled

    bar.hub.value = f"http://127.0.0.1:{free_port()}/fhircast"  # nothing listens there
    bar.bind_button.click()
    assert "Could not bind" in bar.message.value and 'role="alert"' in bar.message.value
    assert not ctx.bound
    bar.close()


# --------------------------------------------------------------------------- LiveTable

FAST: dict[str, Any] = {"grace": 0.3, "backoff": (0.05, 1.0), "heartbeat_period": 5}


def put(base: str, resource: dict[str, Any]) -> None:
    answer = requests.put(
        f"{base}/{resource['resourceType']}/{resource['id']}",
        json=resource,
        headers={"Content-Type": "application/fhir+json"},
        timeout=30,
    )
    assert answer.status_code in (200, 201), answer.text


def ct_study(study_id: str, description: str) -> dict[str, Any]:
    uid = f"2.25.{uuid.uuid4().int}"
    return {
        "resourceType": "ImagingStudy",
        "id": study_id,
        "status": "available",
        "subject": {"reference": "Patient/p1"},
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
        "started": "2024-05-01T10:00:00Z",
        "description": description,
        "series": [
            {
                "uid": f"{uid}.1",
                "modality": {
                    "system": "http://dicom.nema.org/resources/ontology/DCM",
                    "code": "CT",
                },
            }
        ],
    }


def test_live_table_updates_when_a_study_is_posted(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (base, _store):
        put(base, {"resourceType": "Patient", "id": "p1", "gender": "female"})
        put(base, ct_study("s1", "CT CHEST"))
        bridge = imagingkit.connect(fhir=base, fill_in=False)
        ctx = NotebookContext()
        with bridge.watch(
            bridge.cohort().imaging(modality="CT"), level="study", loop="thread", **FAST
        ) as live:
            table = LiveTable(live, context=ctx)
            assert (table.studies, table.rows, table.version) == (1, 1, 0)
            assert "1 studies · 1 rows · listener connected" in table.header.value
            assert "No change since" in table.change.value

            answer = requests.post(
                f"{base}/ImagingStudy",
                json={k: v for k, v in ct_study("ignored", HOSTILE).items() if k != "id"},
                headers={"Content-Type": "application/fhir+json"},
                timeout=30,
            )
            assert answer.status_code == 201, answer.text
            new_id = answer.json()["id"]
            wait_until(lambda: table.studies == 2, "the posted study in the table", timeout=WAIT)
            assert table.version == 1
            assert f"added {html.escape(new_id)}" in table.change.value
            body = table.body.value
            assert_escaped(body)
            first_row = body.split("<tbody>")[1].split("</tr>")[0]
            assert "<td>new</td>" in first_row and "&lt;script&gt;" in first_row

            # the context's study is marked
            uid = live.df.loc[live.df["imaging_study_id"] == "s1", "StudyInstanceUID"].iloc[0]
            ctx.select_study(live.df[live.df["imaging_study_id"] == "s1"])
            assert "<td>●</td>" in table.body.value and ctx.study_uid == uid
            table.close()

            # a closed table unregisters itself (LiveFrame.off_change): only live callbacks run
            seen: list[object] = []
            dropped: list[object] = []
            live.on_change(seen.append)
            live.on_change(dropped.append)
            live.off_change(dropped.append)
            again = requests.post(
                f"{base}/ImagingStudy",
                json={k: v for k, v in ct_study("ignored", "CT again").items() if k != "id"},
                headers={"Content-Type": "application/fhir+json"},
                timeout=30,
            )
            assert again.status_code == 201, again.text
            wait_until(lambda: len(seen) == 1, "the frame's next change", timeout=WAIT)
            assert dropped == [] and table.version == 1 and table.studies == 2
            assert live.version == 2 and len(set(live.df["imaging_study_id"])) == 3


# --------------------------------------------------------------------------- in a kernel


def test_in_a_kernel_updates_arrive_on_the_kernel_thread(
    sandbox: RunningSandbox, series: pd.DataFrame, hub: BackgroundHub
) -> None:
    """Context follows and thumbnails are applied on the kernel's own thread (its loop)."""
    pytest.importorskip("jupyter_client", reason="jupyter_client (with ipykernel)")
    from kernels import run_cell, started_kernel

    topic = f"kernel-{uuid.uuid4()}"
    mr = series[series["Modality"] == "MR"].drop_duplicates("StudyInstanceUID").iloc[-1]
    study = imaging_study(sandbox, mr["imaging_study_id"])
    with started_kernel(startup_timeout=90) as (_manager, client):
        run_cell(
            client,
            f"""
import asyncio, threading, imagingkit
from imagingkit.widgets import StudyBrowser
ctx = imagingkit.context.current().bind({hub.url!r}, {topic!r})
bridge = imagingkit.connect({sandbox.fhir_url!r})
browser = StudyBrowser(bridge.cohort().studies(level="series", progress=False), page_size=5)
seen = []
main = threading.main_thread()
def note(change):
    seen.append((change["name"], change["new"], threading.current_thread() is main))
browser.observe(note, names=["highlighted"])
browser.thumbnails.observe(note, names=["state"])
""",
            timeout=120,
        )
        pacs = FhircastClient(hub.url, topic, subscriber_name="pacs", loop="thread")
        try:
            pacs.open_study(study)
            out = run_cell(
                client,
                f"""
for _ in range(600):  # bounded: 60 s; awaiting lets the kernel's loop deliver
    if browser.highlighted == {mr["StudyInstanceUID"]!r} and browser.thumbnails.state != "loading":
        break
    await asyncio.sleep(0.1)
print(seen)
""",
                timeout=120,
            )
        finally:
            pacs.close()
        run_cell(client, "browser.close(); ctx.unbind()", timeout=60)
    seen = ast.literal_eval(out.strip())  # the (name, value, on_main_thread) tuples printed
    assert ("highlighted", mr["StudyInstanceUID"], True) in seen
    assert ("state", "ready", True) in seen
    assert all(on_main for _name, _value, on_main in seen), seen
