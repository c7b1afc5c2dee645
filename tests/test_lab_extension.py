"""The JupyterLab extension (``extension/``) in a real JupyterLab, in headless Chromium.

The extension is built from ``extension/package-lock.json`` (``npm ci``, ``npm run
build``; both skipped when up to date), packed into a wheel by ``pip wheel`` as ``pip
install`` would, and the wheel's ``share/jupyter/labextensions`` is put first on
``JUPYTER_PATH``. A ``jupyter lab`` subprocess (loopback, a token, base URL
``/user/ada/``) serves the cached small sandbox through imagingkit's server extension;
Debian's Chromium, driven by Playwright (never ``playwright install``), opens it. The
test plays "another application": it publishes ``Patient-open`` and
``ImagingStudy-open`` with :class:`imagingkit.fhircast.FhircastClient`.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from servers import (
    _stop_process,
    _tail,
    cached_sandbox_data_dir,
    chromium_browser,
    start_jupyter,
)

from imagingkit import __version__
from imagingkit.fhircast import FhircastClient

pytestmark = pytest.mark.chromium

REPO = Path(__file__).resolve().parent.parent
EXTENSION = REPO / "extension"
NAME = "imagingkit-lab"
BASE_URL = "/user/ada/"
START_TIMEOUT = 240  # jupyter lab plus the embedded sandbox on a loaded 2-core machine
UI_TIMEOUT_MS = 120_000  # JupyterLab's first load in a software-rendered browser
HOSTILE = '<img src=x onerror="window.__imagingkitXss = 1">CT chest <b>bold</b>'


# --------------------------------------------------------------------------- build, install


def _npm(*args: str, timeout: float = 600) -> None:
    done = subprocess.run(
        ["npm", *args],
        cwd=EXTENSION,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, (
        f"npm {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    )


def _newest(paths: list[Path]) -> float:
    return max(path.stat().st_mtime for path in paths)


def build_extension() -> Path:
    """Build ``extension/`` if a source is newer than its output; return the output."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js missing: apt-get install nodejs npm (Node >= 20)")
    lock = EXTENSION / "package-lock.json"
    installed = EXTENSION / "node_modules" / ".package-lock.json"
    if not installed.is_file() or installed.stat().st_mtime < lock.stat().st_mtime:
        _npm("ci", "--no-audit", "--no-fund")
    sources = [EXTENSION / "package.json", EXTENSION / "tsconfig.json", lock]
    for folder in ("src", "style", "schema"):
        sources.extend(p for p in (EXTENSION / folder).rglob("*") if p.is_file())
    output = EXTENSION / "labextension"
    manifest = output / "package.json"
    if not manifest.is_file() or manifest.stat().st_mtime < _newest(sources):
        _npm("run", "build")
    assert manifest.is_file()
    return output


@pytest.fixture(scope="module")
def labextensions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``share/jupyter`` folder of the built wheel: what ``pip install`` installs."""
    build_extension()
    tmp = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = tmp.glob("imagingkit-*.whl")
    data = f"imagingkit-{__version__}.data/data/"
    prefix = tmp / "prefix"
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.startswith(f"{data}share/jupyter/")]
        for member in members:
            target = prefix / member.removeprefix(data)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(member))
    share = prefix / "share" / "jupyter"
    assert (share / "labextensions" / NAME / "package.json").is_file(), members
    return share


# --------------------------------------------------------------------------- jupyter lab


@dataclass
class Lab:
    """A running ``jupyter lab`` with the extension and the embedded sandbox."""

    process: subprocess.Popen[bytes]
    origin: str
    token: str
    log: Path
    env: dict[str, str]

    def url(self, path: str = "") -> str:
        """``{origin}{base_url}{path}``."""
        return f"{self.origin}{BASE_URL}{path}"

    def get_json(self, path: str, **params: Any) -> Any:
        answer = requests.get(
            self.url(path),
            params=params,
            headers={"Authorization": f"token {self.token}"},
            timeout=60,
        )
        answer.raise_for_status()
        return answer.json()


def _lab_env(tmp: Path, share: Path, imagingkit: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGINGKIT_", "JUPYTER"))}
    env.update(
        {
            "IMAGINGKIT_DATA_DIR": str(tmp / "imagingkit"),
            # the wheel's labextensions first; nothing of this account's own Jupyter set-up
            "JUPYTER_PATH": str(share),
            "JUPYTER_CONFIG_DIR": str(tmp / "config"),
            "JUPYTER_DATA_DIR": str(tmp / "data"),
            "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
            "PYTHONUNBUFFERED": "1",
            **imagingkit,
        }
    )
    return env


@contextlib.contextmanager
def running_lab(tmp: Path, share: Path, imagingkit: dict[str, str], until: str) -> Iterator[Lab]:
    """``jupyter lab`` with the *imagingkit* environment, once its status is *until*."""
    env = _lab_env(tmp, share, imagingkit)
    started = start_jupyter(
        tmp,
        env,
        root_dir=tmp,
        base_url=BASE_URL,
        app="jupyterlab",
        binder=False,
        # nothing from the network: no update check, no news
        options=[
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.news_url=",
        ],
    )
    process, log = started.process, started.log
    server = Lab(process, started.origin, started.token, log, env)
    try:
        deadline, state = time.monotonic() + START_TIMEOUT, "no answer"
        while state != until:
            assert process.poll() is None, f"jupyter lab exited:\n{_tail(log)}"
            assert time.monotonic() < deadline, f"not {until} ({state}):\n{_tail(log)}"
            try:
                state = server.get_json("imagingkit/")["status"]
            except (requests.RequestException, ValueError) as exc:
                state = repr(exc)
            if state != until:
                time.sleep(0.5)
        yield server
    finally:
        _stop_process(process, signal.SIGTERM, 30)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, labextensions: Path) -> Iterator[Lab]:
    """JupyterLab with the small sandbox embedded (a copy of the cached data)."""
    tmp = tmp_path_factory.mktemp("lab")
    shutil.copytree(cached_sandbox_data_dir(), tmp / "imagingkit")  # generated already
    with running_lab(tmp, labextensions, {"IMAGINGKIT_SANDBOX": "1"}, "ready") as server:
        yield server


def test_labextension_list_shows_the_installed_extension_enabled(
    lab: Lab, labextensions: Path
) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "jupyter-labextension"), "list"],
        env=lab.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)
    assert done.returncode == 0, output
    listed = output.split(str(labextensions / "labextensions"), 1)
    assert len(listed) == 2, output
    assert re.search(rf"^\s+{NAME} v0\.1\.0 enabled\s+OK", listed[1], re.MULTILINE), output


# --------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium_browser() as instance:
        yield instance


@contextlib.contextmanager
def lab_tab(browser: Any, lab: Lab) -> Iterator[Any]:
    """JupyterLab, logged in with the token (which leaves Jupyter's login cookie)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.add_init_script("window.__imagingkitXss = 0;")
    try:
        tab = context.new_page()
        tab.set_default_timeout(UI_TIMEOUT_MS)
        tab.goto(lab.url(f"lab?token={lab.token}"))
        tab.wait_for_selector('.lm-TabBar-tab[data-id="imagingkit-context"]')
        yield tab
    finally:
        context.close()


@pytest.fixture
def page(browser: Any, lab: Lab) -> Iterator[Any]:
    with lab_tab(browser, lab) as tab:
        yield tab


def _field(page: Any, name: str) -> Any:
    return page.locator(f'#imagingkit-context dd[data-field="{name}"]')


def _open_panel(page: Any, topic: str) -> None:
    from playwright.sync_api import expect

    page.click('.lm-TabBar-tab[data-id="imagingkit-context"]')
    panel = page.locator("#imagingkit-context")
    expect(panel).to_be_visible()
    expect(panel.locator(".jp-ImagingkitContext-server")).to_have_attribute("data-state", "ready")
    panel.locator('input[name="topic"]').fill(topic)
    panel.locator('button[type="submit"]').click()
    connection = panel.locator(".jp-ImagingkitContext-connection")
    expect(connection).to_have_attribute("data-state", "connected")
    expect(connection).to_contain_text(topic)


def _sandbox_study(lab: Lab) -> tuple[dict[str, Any], dict[str, Any]]:
    """An ImagingStudy of the sandbox and its Patient, as the FHIR store serves them."""
    bundle = lab.get_json(
        "imagingkit/fhir/ImagingStudy", _count="1", _include="ImagingStudy:subject"
    )
    resources = [entry["resource"] for entry in bundle["entry"]]
    study = next(r for r in resources if r["resourceType"] == "ImagingStudy")
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    return study, patient


def _identifier(resource: dict[str, Any], *, code: str = "", system: str = "") -> str:
    for identifier in resource.get("identifier", []):
        codes = {c.get("code") for c in identifier.get("type", {}).get("coding", [])}
        if (code and code in codes) or (system and identifier.get("system") == system):
            return str(identifier["value"])
    raise AssertionError(f"no identifier {code or system} in {resource['resourceType']}")


def test_the_panel_follows_another_application_and_opens_the_viewer(lab: Lab, page: Any) -> None:
    from playwright.sync_api import expect

    topic = f"reading-room-{secrets.token_hex(4)}"
    _open_panel(page, topic)
    study, patient = _sandbox_study(lab)
    study["description"] = HOSTILE
    uid = _identifier(study, system="urn:dicom:uid").removeprefix("urn:oid:")
    with FhircastClient(
        lab.url("imagingkit/fhircast"), topic, ["SyncError"], token=lab.token, timeout=30
    ) as pacs:
        pacs.open_patient(patient)
        pacs.open_study(study, patient)
        published = time.monotonic()

        expect(_field(page, "study-uid")).to_have_text(uid, timeout=30_000)
        name = patient["name"][0]
        for part in [name["family"], *name.get("given", [])]:
            expect(_field(page, "patient-name")).to_contain_text(part)
        expect(_field(page, "patient-mrn")).to_have_text(_identifier(patient, code="MR"))
        expect(_field(page, "study-accession")).to_have_text(_identifier(study, code="ACSN"))
        # another application's text stays text: shown verbatim, never parsed as HTML
        expect(_field(page, "study-description")).to_have_text(HOSTILE)
        assert page.locator("#imagingkit-context img, #imagingkit-context b").count() == 0
        assert page.evaluate("window.__imagingkitXss") == 0

        # "Open in viewer": the IID facade redirects the new tab to the viewer
        with page.context.expect_page() as opened:
            page.locator(".jp-ImagingkitContext-open").click()
        _expect_viewer(opened.value, lab, uid)

        # the same from the command palette
        page.keyboard.press("Control+Shift+C")
        palette = page.locator("#command-palette")
        palette.locator("input").fill("Open Current Study in Viewer")
        with page.context.expect_page() as opened:
            palette.locator(
                '.lm-CommandPalette-item[data-command="imagingkit:open-in-viewer"]'
            ).click()
        _expect_viewer(opened.value, lab, uid)

        # FHIRcast 3.0 §2.5: a subscriber that does not acknowledge within 10 s gets a
        # SyncError broadcast and loses its subscription; the panel acknowledges
        time.sleep(max(0.0, published + 12 - time.monotonic()))
        connection = page.locator("#imagingkit-context .jp-ImagingkitContext-connection")
        expect(connection).to_have_attribute("data-state", "connected")
        errors = [e for e in pacs.received() if e.key == "syncerror"]
        assert errors == [], [e.context for e in errors]
        assert page.evaluate("window.__imagingkitXss") == 0

        # closing the study in the other application clears it in the panel
        pacs.close_study(study, patient)
        expect(_field(page, "study-uid")).to_have_text("—")
        expect(page.locator(".jp-ImagingkitContext-open")).to_be_disabled()


def _expect_viewer(tab: Any, lab: Lab, uid: str) -> None:
    tab.wait_for_url(re.compile(r".*/imagingkit/viewer/.*"), timeout=60_000)
    address = urlsplit(tab.url)
    assert f"{address.scheme}://{address.netloc}" == lab.origin
    assert address.path == f"{BASE_URL}imagingkit/viewer/"
    assert parse_qs(address.query)["study"] == [uid]
    tab.close()


def test_the_panel_says_why_imagingkit_could_not_start(
    tmp_path: Path, labextensions: Path, browser: Any
) -> None:
    from playwright.sync_api import expect

    missing = tmp_path / "no-such-folder"
    with (
        running_lab(
            tmp_path, labextensions, {"IMAGINGKIT_DICOM_DIR": str(missing)}, "failed"
        ) as lab,
        lab_tab(browser, lab) as tab,
    ):
        tab.click('.lm-TabBar-tab[data-id="imagingkit-context"]')
        server = tab.locator("#imagingkit-context .jp-ImagingkitContext-server")
        expect(server).to_have_attribute("data-state", "failed")
        expect(server).to_contain_text("imagingkit could not start")
        expect(server).to_contain_text(str(missing))
        # nothing to follow: the panel does not subscribe to a hub that is not there
        connection = tab.locator("#imagingkit-context .jp-ImagingkitContext-connection")
        expect(connection).to_have_attribute("data-state", "idle")
        expect(connection).to_contain_text("when imagingkit is ready")
