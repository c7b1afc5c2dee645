"""``imagingkit.widgets`` in a real JupyterLab, as a user sees and clicks them.

``binder/start`` runs Jupyter (loopback, a token, base URL ``/user/ada/``) with the cached
small sandbox embedded, as ``make demo`` and Binder do. The test writes a small notebook
into the server's root folder, opens it in Debian's headless Chromium (driven by
Playwright, never ``playwright install``) and runs it with JupyterLab's *Run All Cells*
from the command palette. The cells ``find_or_start()`` the sandbox, bind the notebook
context to the sandbox's FHIRcast hub (with ``sandbox.token``), build a cohort frame and
display ``ContextBar()``, ``StudyBrowser(frame)`` and ``ViewerButtons(frame.iloc[0])``.
Everything else happens in the page: choosing in the dropdowns, clicking the list and the
buttons, reading the rendered DOM. The test plays "the PACS" with a
:class:`imagingkit.fhircast.FhircastClient` on the notebook's topic.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import shutil
import signal
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import nbformat
import pandas as pd
import pytest
import requests
from servers import (
    JupyterProcess,
    _stop_process,
    cached_sandbox_data_dir,
    chromium_browser,
    jupyter_env,
    start_jupyter,
)

from imagingkit.fhircast import FhircastClient
from imagingkit.fhircast.protocol import study_instance_uid

pytestmark = pytest.mark.chromium

BASE_URL = "/user/ada/"
PAGE_SIZE = 6
NOTEBOOK = "widgets-in-the-browser.ipynb"
FRAME = "frame.pkl"  # the notebook's cohort frame, for the test to compare the page with
HOSTILE = "<img src=x onerror=window.__pwned=1>"
UI_MS = 90_000  # JupyterLab's first load and a cold kernel on a loaded 2-core machine
WAIT_MS = 30_000
#: console errors of ipywidgets' manager, its comm or a widget view
WIDGET_ERROR = re.compile(r"widget|comm\b|model", re.IGNORECASE)
UNCAUGHT = "uncaught: "


# --------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Jupyter's root folder: the test writes its notebook here."""
    return tmp_path_factory.mktemp("widgets-browser-root")


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory: pytest.TempPathFactory, root: Path) -> Iterator[JupyterProcess]:
    """Binder's Jupyter with the small sandbox (a copy of the cached data) and JupyterLab."""
    tmp = tmp_path_factory.mktemp("widgets-browser")
    shutil.copytree(cached_sandbox_data_dir(), tmp / "cache" / "imagingkit")
    env = jupyter_env(tmp)
    # JupyterLab's workspaces and settings stay in tmp; nothing from the network
    env["JUPYTERLAB_WORKSPACES_DIR"] = str(tmp / "workspaces")
    env["JUPYTERLAB_SETTINGS_DIR"] = str(tmp / "settings")
    (tmp / "config").mkdir()
    lab = {"news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate"}
    (tmp / "config" / "jupyter_server_config.json").write_text(json.dumps({"LabApp": lab}))
    notifications = tmp / "settings" / "@jupyterlab" / "apputils-extension"
    notifications.mkdir(parents=True)
    (notifications / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    server = start_jupyter(tmp, env, root_dir=root, base_url=BASE_URL)
    try:
        server.wait_ready()
        yield server
    finally:
        _stop_process(server.process, signal.SIGTERM, 30)


def _fhir(server: JupyterProcess, method: str, path: str, **kwargs: Any) -> Any:
    """A FHIR request to the sandbox through Jupyter's token."""
    headers = {**server.headers, "Accept": "application/fhir+json"}
    if "json" in kwargs:
        headers["Content-Type"] = "application/fhir+json"
    answer = requests.request(
        method, f"{server.imagingkit}/fhir/{path}", headers=headers, timeout=60, **kwargs
    )
    answer.raise_for_status()
    return answer.json()


def _post_hostile_study(server: JupyterProcess) -> str:
    """A copy of a sandbox ImagingStudy whose description is markup; its Study Instance UID."""
    bundle = _fhir(server, "GET", "ImagingStudy", params={"_count": "1"})
    study = bundle["entry"][0]["resource"]
    uid = f"2.25.{secrets.randbits(100)}"
    study.pop("id")
    study.pop("meta", None)
    study["identifier"] = [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}]
    study["description"] = HOSTILE
    _fhir(server, "POST", "ImagingStudy", json=study)
    return uid


def _write_notebook(root: Path, topic: str) -> None:
    cells = [
        "import imagingkit\n"
        "from imagingkit.sandbox.running import find_or_start\n"
        "from imagingkit.widgets import ContextBar, StudyBrowser, ViewerButtons\n\n"
        "sandbox = find_or_start()\n"
        "ctx = imagingkit.context.current()\n"
        f"ctx.bind(sandbox.hub_url, {topic!r}, token=sandbox.token, timeout=30)\n"
        'frame = sandbox.connect().cohort().studies(level="series", progress=False)\n'
        f"frame.to_pickle({FRAME!r})\n"
        "print(sandbox.where, ctx.bound)",
        "ContextBar()",
        f"StudyBrowser(frame, page_size={PAGE_SIZE})",
        "ViewerButtons(frame.iloc[0])",
    ]
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(source) for source in cells],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}},
    )
    nbformat.write(notebook, root / NOTEBOOK)


# --------------------------------------------------------------------------- the page


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium_browser() as instance:
        yield instance


@contextlib.contextmanager
def notebook_page(browser: Any, server: JupyterProcess) -> Iterator[tuple[Any, list[str]]]:
    """The generated notebook open in JupyterLab, logged in with the token; the page's
    console errors and uncaught exceptions are collected in the list."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.add_init_script("window.__pwned = undefined;")
    errors: list[str] = []
    try:
        page = context.new_page()
        page.set_default_timeout(UI_MS)
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"{UNCAUGHT}{e}"))
        page.goto(f"{server.origin}{BASE_URL}lab/tree/{NOTEBOOK}?token={server.token}")
        page.wait_for_selector(".jp-Notebook .jp-CodeCell")
        yield page, errors
    finally:
        context.close()


def _run_all(page: Any) -> None:
    """JupyterLab's *Run All Cells*, from the command palette, once the kernel is idle."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.get_by_text(re.compile(r"Python 3 \(ipykernel\) \| Idle")).wait_for()
    palette = page.locator("#command-palette")
    for _attempt in range(10):  # the shortcut works once JupyterLab has the focus
        _cell(page, 0).locator(".jp-InputPrompt").click()  # command mode, cell 1
        page.keyboard.press("Control+Shift+C")
        with contextlib.suppress(PlaywrightTimeout):
            palette.locator("input").wait_for(timeout=2_000)
            break
    palette.locator("input").fill("Run All Cells")
    palette.locator('.lm-CommandPalette-item[data-command="notebook:run-all-cells"]').click()


def _cell(page: Any, index: int) -> Any:
    return page.locator(".jp-Notebook .jp-CodeCell").nth(index)


def _options(select: Any) -> list[str]:
    """The texts of a ``<select>``'s options (ipywidgets puts no-break spaces for spaces)."""
    texts = select.evaluate("s => Array.from(s.options, o => o.textContent)")
    return [t.replace("\xa0", " ") for t in texts]


def _expected_labels(studies: pd.DataFrame) -> list[list[str]]:
    """Per study, the texts its list line must show: description and patient ID."""
    shown = studies[["StudyDescription", "PatientID"]].astype(object).fillna("—")
    return [[str(value) for value in row] for row in shown.itertuples(index=False)]


def _assert_lines(select: Any, studies: pd.DataFrame) -> None:
    shown = _options(select)
    expected = _expected_labels(studies)
    assert len(shown) == len(expected), (shown, expected)
    for line, words in zip(shown, expected, strict=True):
        assert all(word in line for word in words), (line, words)


def _assert_inside(element: Any, box: Any) -> None:
    """*element* lies within *box* horizontally: nothing of it is cut off."""
    inner, outer = element.bounding_box(), box.bounding_box()
    assert inner is not None and outer is not None
    assert outer["x"] <= inner["x"], (inner, outer)
    assert inner["x"] + inner["width"] <= outer["x"] + outer["width"], (inner, outer)


def _published(pacs: FhircastClient, mark: int, event: str, uid: str | None = None) -> Any:
    """The *event* the PACS received after *mark* (for the study *uid*, if given)."""

    def wanted(received: Any) -> bool:
        if received.key != event.lower():
            return False
        return uid is None or study_instance_uid(received.value("study")) == uid

    return pacs.wait_for(wanted, timeout=30, after=mark)


# --------------------------------------------------------------------------- the test


def test_widgets_render_filter_select_follow_and_escape_in_jupyterlab(
    jupyter: JupyterProcess, root: Path, browser: Any
) -> None:
    from playwright.sync_api import expect

    topic = f"widgets-browser-{secrets.token_hex(4)}"
    hostile_uid = _post_hostile_study(jupyter)
    _write_notebook(root, topic)
    hub = f"{jupyter.imagingkit}/fhircast"
    with (
        FhircastClient(hub, topic, subscriber_name="PACS", token=jupyter.token, timeout=30) as pacs,
        notebook_page(browser, jupyter) as (page, errors),
    ):
        _run_all(page)
        viewer_cell = _cell(page, 3)
        expect(viewer_cell.locator(".widget-html-content a")).to_be_visible(timeout=UI_MS)
        assert "jupyter True" in _cell(page, 0).locator(".jp-OutputArea").inner_text()
        frame = pd.read_pickle(root / FRAME)
        studies = frame.drop_duplicates("StudyInstanceUID").set_index("StudyInstanceUID")
        assert hostile_uid in studies.index

        # -- the list shows the first page of the frame's studies
        browser_cell = _cell(page, 2)
        lines = browser_cell.locator(".widget-select select")
        expect(lines).to_be_visible()
        _assert_lines(lines, studies.head(PAGE_SIZE))
        expect(browser_cell).to_contain_text(f"Studies 1–{PAGE_SIZE} of {len(studies)}")
        _assert_inside(lines, browser_cell.locator(".jp-OutputArea-output"))

        # -- the modality dropdown filters the list
        modality = browser_cell.locator(".widget-dropdown select").first
        assert _options(modality)[0] == "All modalities"
        wanted = "CT" if "CT" in set(frame["Modality"]) else str(frame["Modality"].iloc[0])
        with_modality = frame.loc[frame["Modality"] == wanted, "StudyInstanceUID"].unique()
        assert 0 < len(with_modality) < len(studies)
        modality.select_option(label=wanted)
        expect(browser_cell).to_contain_text(f"(filtered from {len(studies)})")
        _assert_lines(lines, studies.loc[with_modality[:PAGE_SIZE]])

        # -- clicking a study shows its details and thumbnails
        picked = str(with_modality[0])
        lines.select_option(index=0)
        expect(browser_cell).to_contain_text(picked)  # the details' Study Instance UID
        thumbnails = browser_cell.locator('img[src^="data:image/jpeg;base64,"]')
        expect(thumbnails.first).to_be_visible(timeout=60_000)

        # -- Select publishes Patient-open and ImagingStudy-open; the PACS receives them
        mark = pacs.mark()
        browser_cell.locator("button", has_text=re.compile(r"^Select$")).click()
        patient_open = _published(pacs, mark, "Patient-open")
        study_open = _published(pacs, mark, "ImagingStudy-open", picked)
        patient_ref = str(studies.loc[picked, "patient_ref"])
        assert f"Patient/{patient_open.value('patient')['id']}" == patient_ref
        assert study_instance_uid(study_open.value("study")) == picked
        expect(browser_cell).to_contain_text(f"Selected study {picked}")

        # -- the PACS opens another study: the browser goes to it and marks it, the bar shows it
        modality.select_option(label="All modalities")
        later = studies.iloc[PAGE_SIZE : 2 * PAGE_SIZE]  # page 2
        other = str(later[later["StudyDescription"].notna()].index[0])
        assert other != picked
        described = studies.loc[other, "StudyDescription"]
        resource = _fhir(jupyter, "GET", f"ImagingStudy/{studies.loc[other, 'imaging_study_id']}")
        pacs.open_study(resource)
        marked = lines.locator("option", has_text="●")
        expect(marked).to_contain_text(str(described), timeout=WAIT_MS)  # the mark moved
        expect(marked).to_have_count(1)
        expect(browser_cell).to_contain_text(other)
        expect(browser_cell).to_contain_text("page 2 of")
        bar = _cell(page, 1).locator(".widget-html-content").first
        expect(bar).to_contain_text(str(described), timeout=WAIT_MS)

        # -- the "From" date picker: only studies of that day or later, none without a date
        since = "2010-01-01"
        date_from = browser_cell.locator('.widget-datepicker input[type="date"]').first
        date_from.fill(since)
        expect(browser_cell).to_contain_text(f"(filtered from {len(studies)})")
        dates = [line.strip(" ●").split(" · ")[0] for line in _options(lines)]
        assert dates, "no study since 2010 on the first page"
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\d", d) and d >= since for d in dates), dates
        date_from.fill("")
        expect(browser_cell).not_to_contain_text("filtered from")

        # -- ViewerButtons: a link to the built-in viewer, in a new tab
        first = frame.iloc[0]
        link = viewer_cell.locator(".widget-html-content a")
        expect(link).to_have_count(1)
        assert link.get_attribute("target") == "_blank"
        assert set((link.get_attribute("rel") or "").split()) >= {"noopener", "noreferrer"}
        href = urlsplit(link.get_attribute("href") or "")
        assert f"{href.scheme}://{href.netloc}" == jupyter.origin
        assert href.path == f"{BASE_URL}imagingkit/viewer/"
        assert parse_qs(href.query)["study"] == [first["StudyInstanceUID"]]
        assert parse_qs(href.query)["series"] == [first["SeriesInstanceUID"]]
        with page.context.expect_page(timeout=WAIT_MS) as opened:
            link.click()
        tab = opened.value
        tab.wait_for_load_state(timeout=WAIT_MS)
        assert urlsplit(tab.url).path == f"{BASE_URL}imagingkit/viewer/", tab.url
        tab.close()

        # -- a hostile description is text in the list, the details and the bar
        search = browser_cell.locator(".widget-text input").first
        search.fill(hostile_uid)
        search.press("Enter")
        expect(browser_cell).to_contain_text("Studies 1–1 of 1")
        assert HOSTILE in _options(lines)[0]
        lines.select_option(index=0)
        expect(browser_cell.locator(".widget-html-content", has_text=HOSTILE)).to_have_count(1)
        browser_cell.locator("button", has_text=re.compile(r"^Select$")).click()
        expect(bar).to_contain_text(HOSTILE, timeout=WAIT_MS)
        # no image but the thumbnails' data URLs; the handler never ran
        assert page.locator('.jp-Notebook img:not([src^="data:"])').count() == 0
        assert page.evaluate("window.__pwned") is None

        # -- the page logged no widget-manager error
        _report_console(errors)


def _report_console(errors: list[str]) -> None:
    """Fail on the widget manager's errors and uncaught exceptions; warn about the rest."""
    failing = [e for e in errors if WIDGET_ERROR.search(e) or e.startswith(UNCAUGHT)]
    for other in sorted(set(errors) - set(failing)):
        warnings.warn(f"JupyterLab console error: {other}", stacklevel=2)
    assert failing == [], failing
