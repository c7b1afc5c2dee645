"""imagingkit inside a real Jupyter server: the server extension as a user meets it.

A ``jupyter server`` subprocess (loopback, a token, base URL ``/user/ada/`` as under
JupyterHub or Binder) loads the extension through the config file that ``pip install``
puts in ``{sys.prefix}/etc/jupyter`` and serves the cached small sandbox; the tests talk
HTTP and websockets to it. ``ComponentMount``'s start-up gate is tested in-process.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Generator, Iterator
from urllib.parse import urlsplit

import pytest
import requests
import websockets.exceptions
import websockets.sync.client
from servers import (
    JUPYTER_START_TIMEOUT,
    REPO,
    JupyterProcess,
    _stop_process,
    _tail,
    cached_sandbox_data_dir,
    jupyter_env,
    start_jupyter,
)

import imagingkit
from imagingkit.errors import ConfigError
from imagingkit.fhircast import FhircastClient
from imagingkit.jupyter import current_server
from imagingkit.jupyter.mount import ComponentMount
from imagingkit.sandbox.fhir.testing import serving_app
from imagingkit.viewer import BuiltinViewer

BASE_URL = "/user/ada/"
START_TIMEOUT = JUPYTER_START_TIMEOUT
EXIT_TIMEOUT = 30


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterProcess]:
    """Binder's set-up: ``binder/prepare_sandbox.py`` at build time, then ``jupyter server``
    started through ``binder/start``, serving the small sandbox through the extension.
    """
    tmp = tmp_path_factory.mktemp("jupyter")
    data_dir = tmp / "cache" / "imagingkit"
    shutil.copytree(cached_sandbox_data_dir(), data_dir)  # generated already: no 20 s wait
    env = jupyter_env(tmp)
    prepared = subprocess.run(
        [sys.executable, str(REPO / "binder" / "prepare_sandbox.py"), "small"],
        env=env,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        check=False,
    )
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    assert f"prepared in {data_dir}" in prepared.stdout
    assert (data_dir / "fhir" / "sandbox-small-42.sqlite.record").is_file()
    server = start_jupyter(tmp, env, root_dir=tmp, base_url=BASE_URL)
    try:
        server.wait_ready()
        yield server
    finally:
        _stop_process(server.process, signal.SIGTERM, EXIT_TIMEOUT)


@pytest.fixture
def as_kernel(jupyter: JupyterProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process sees the server's runtime files, as a kernel of that server would."""
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(jupyter.runtime_dir))


# --------------------------------------------------------------------------- the stores


def test_status_lists_every_component_under_the_base_url(jupyter: JupyterProcess) -> None:
    status = jupyter.get("/").json()
    assert status["status"] == "ready"
    assert status["sandbox"] == {"size": "small", "seed": 42}
    assert status["endpoints"] == {
        mount: f"{jupyter.imagingkit}/{mount}/"
        for mount in ("dicom-web", "fhir", "iid", "viewer", "fhircast")
    }


def test_fhir_metadata_is_a_capability_statement(jupyter: JupyterProcess) -> None:
    answer = jupyter.get("/fhir/metadata")
    assert answer.status_code == 200, answer.text
    statement = answer.json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"].startswith("4.0")
    types = {r["type"] for r in statement["rest"][0]["resource"]}
    assert {"Patient", "ImagingStudy", "Endpoint"} <= types


def test_endpoint_address_is_the_dicomweb_base_under_jupyter(jupyter: JupyterProcess) -> None:
    bundle = jupyter.get("/fhir/Endpoint").json()
    addresses = {e["resource"]["address"] for e in bundle["entry"]}
    assert addresses == {f"{jupyter.imagingkit}/dicom-web"}


def test_dicomweb_qido_and_wado_metadata(jupyter: JupyterProcess) -> None:
    accept = {"Accept": "application/dicom+json"}
    studies = jupyter.get("/dicom-web/studies", headers={**jupyter.headers, **accept})
    assert studies.status_code == 200, studies.text
    assert studies.headers["Content-Type"].startswith("application/dicom+json")
    uids = [s["0020000D"]["Value"][0] for s in studies.json()]
    # every DICOM study is in the FHIR record too (the DICOMcast-like sync)
    fhir_total = jupyter.get("/fhir/ImagingStudy", params={"_summary": "count"}).json()["total"]
    assert len(uids) == len(set(uids)) == fhir_total > 0
    series = jupyter.get(f"/dicom-web/studies/{uids[0]}/series").json()
    assert series and all(s["0020000D"]["Value"] == [uids[0]] for s in series)
    metadata = jupyter.get(f"/dicom-web/studies/{uids[0]}/metadata")
    assert metadata.status_code == 200
    assert all(m["0020000D"]["Value"] == [uids[0]] for m in metadata.json())


def test_iid_facade_redirects_to_the_viewer_under_the_base_url(jupyter: JupyterProcess) -> None:
    study = jupyter.get("/dicom-web/studies?limit=1").json()[0]["0020000D"]["Value"][0]
    answer = jupyter.get(
        "/iid/IHEInvokeImageDisplay",
        params={"requestType": "STUDY", "studyUID": study},
        allow_redirects=False,
    )
    assert answer.status_code == 302, answer.text
    assert answer.headers["Location"].startswith(f"{BASE_URL}imagingkit/viewer/")
    assert study in answer.headers["Location"]
    page = jupyter.get(answer.headers["Location"].removeprefix(f"{BASE_URL}imagingkit"))
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")


# --------------------------------------------------------------------------- notebook helpers


def test_a_kernel_finds_its_server_and_connects_with_its_token(
    jupyter: JupyterProcess, as_kernel: None
) -> None:
    server = current_server(pid=jupyter.process.pid)
    assert server.url == f"{jupyter.origin}{BASE_URL}"
    urls = server.base_urls(wait=10)
    assert urls["fhir"] == f"{jupyter.imagingkit}/fhir"
    assert urls["dicom-web"] == f"{jupyter.imagingkit}/dicom-web"
    bridge = imagingkit.connect(urls["fhir"], auth=server.auth())
    studies = bridge.cohort().studies(level="study")
    fhir_total = jupyter.get("/fhir/ImagingStudy", params={"_summary": "count"}).json()["total"]
    assert len(studies) == fhir_total > 0
    assert all(url.startswith(f"{urls['dicom-web']}/studies/") for url in studies["dicomweb_url"])
    # the pixels' side goes through Jupyter's auth too
    series = bridge.cohort().imaging(modality="CT").studies(level="series").head(1)
    metadata = series.imaging.metadata(progress=False)
    assert len(metadata) == int(series["NumberOfSeriesRelatedInstances"].iloc[0]) > 0
    # the token goes to the Jupyter origin only (DESIGN.md D7)
    assert server.auth().headers_for("http://127.0.0.1:1/") == {}


def test_watch_through_jupyter_sees_a_new_study(jupyter: JupyterProcess, as_kernel: None) -> None:
    """A FHIR Subscription's websocket passes Jupyter's auth with the server's token."""
    server = current_server(pid=jupyter.process.pid)
    bridge = imagingkit.connect(server.base_urls(wait=10)["fhir"], auth=server.auth())
    template = jupyter.get("/fhir/ImagingStudy", params={"_count": "1"}).json()["entry"][0]
    study = {k: v for k, v in template["resource"].items() if k not in ("id", "meta")}
    uid = f"2.25.{secrets.randbits(100)}"
    study["identifier"] = [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}]
    with bridge.watch(level="study", debounce=0) as live:
        before = len(live.df)
        created = requests.post(
            f"{jupyter.imagingkit}/fhir/ImagingStudy",
            json=study,
            headers=jupyter.headers,
            timeout=60,
        )
        assert created.status_code == 201, created.text
        frame = live.wait_for(before + 1, timeout=60)
        assert uid in set(frame["StudyInstanceUID"])
        assert live.stats.events >= 1


def test_current_server_names_the_missing_server(as_kernel: None) -> None:
    with pytest.raises(ConfigError, match="no running Jupyter server"):
        current_server(pid=2**22 + 12345)


# --------------------------------------------------------------------------- FHIRcast


def test_fhircast_discovery_and_websocket_through_jupyter(jupyter: JupyterProcess) -> None:
    config = jupyter.get("/fhircast/.well-known/fhircast-configuration")
    assert config.status_code == 200, config.text
    assert "Patient-open" in config.json()["eventsSupported"]
    hub = f"{jupyter.imagingkit}/fhircast"
    topic = f"jupyter-{secrets.token_hex(4)}"
    with (
        FhircastClient(hub, topic, ["Patient-open"], token=jupyter.token, timeout=30) as listener,
        FhircastClient(hub, topic, ["Patient-open"], token=jupyter.token, timeout=30) as sender,
    ):
        assert listener.status == "connected"
        channel = urlsplit(listener.endpoint or "").path
        assert channel.startswith(f"{BASE_URL}imagingkit/fhircast/ws/")
        sent = sender.open_patient({"resourceType": "Patient", "id": "p-jupyter"})
        received = listener.wait_for(sent.id, timeout=30)
        assert received.value("patient")["id"] == "p-jupyter"


# --------------------------------------------------------------------------- authentication


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/fhir/metadata",
        "/fhir/Patient",
        "/dicom-web/studies",
        "/fhircast/.well-known/fhircast-configuration",
        "/iid/IHEInvokeImageDisplay?requestType=STUDY&studyUID=1.2.3",
        "/viewer/",
    ],
)
@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_without_the_token_every_route_is_forbidden(
    jupyter: JupyterProcess, path: str, token: str | None
) -> None:
    headers = {"Authorization": f"token {token}"} if token else {}
    answer = jupyter.get(path, headers=headers, allow_redirects=False)
    assert answer.status_code == 403, answer.text
    assert "resourceType" not in answer.text or "OperationOutcome" in answer.text
    assert "Patient/" not in answer.text and "0020000D" not in answer.text


def test_without_the_token_nothing_can_be_written(jupyter: JupyterProcess) -> None:
    patient = json.dumps({"resourceType": "Patient", "name": [{"family": "Intruder"}]})
    created = requests.post(
        f"{jupyter.imagingkit}/fhir/Patient",
        data=patient,
        headers={"Content-Type": "application/fhir+json"},
        timeout=30,
    )
    assert created.status_code == 403
    assert created.json()["resourceType"] == "OperationOutcome"
    subscribed = requests.post(
        f"{jupyter.imagingkit}/fhircast",
        data={"hub.mode": "subscribe", "hub.channel.type": "websocket", "hub.topic": "t"},
        timeout=30,
    )
    assert subscribed.status_code == 403
    found = jupyter.get("/fhir/Patient", params={"family": "Intruder"}).json()
    assert found.get("total", len(found.get("entry", []))) == 0


def test_login_cookie_reads_and_writes_only_with_the_xsrf_token(jupyter: JupyterProcess) -> None:
    browser = requests.Session()
    # a browser that opened the token URL once holds Jupyter's login cookie
    assert browser.get(f"{jupyter.origin}{BASE_URL}lab?token={jupyter.token}", timeout=60).ok
    assert browser.get(f"{jupyter.imagingkit}/fhir/metadata", timeout=30).status_code == 200
    patient = json.dumps({"resourceType": "Patient", "name": [{"family": "Cookie"}]})
    fhir_json = {"Content-Type": "application/fhir+json"}
    url = f"{jupyter.imagingkit}/fhir/Patient"
    refused = browser.post(url, data=patient, headers=fhir_json, timeout=30)
    assert refused.status_code == 403
    assert "XSRF" in refused.text
    xsrf = browser.cookies.get("_xsrf")
    assert xsrf, "Jupyter's page set no _xsrf cookie"
    created = browser.post(
        url, data=patient, headers={**fhir_json, "X-XSRFToken": xsrf}, timeout=30
    )
    assert created.status_code == 201, created.text


def test_a_foreign_host_header_is_refused(jupyter: JupyterProcess) -> None:
    # DNS rebinding: a page of another site resolving to this machine (Jupyter's Host check)
    port = urlsplit(jupyter.origin).port
    answer = jupyter.get(
        "/fhir/metadata", headers={**jupyter.headers, "Host": f"evil.example:{port}"}
    )
    assert answer.status_code == 403


def test_cors_preflight_needs_no_credentials(jupyter: JupyterProcess) -> None:
    answer = requests.options(
        f"{jupyter.imagingkit}/dicom-web/studies",
        headers={"Origin": "http://viewer.example", "Access-Control-Request-Method": "GET"},
        timeout=30,
    )
    assert answer.status_code == 204
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in answer.headers


def test_the_fhircast_channel_is_only_reachable_through_a_real_endpoint(
    jupyter: JupyterProcess,
) -> None:
    # the websocket needs no Jupyter credentials, so a made-up endpoint must lead nowhere
    ws = f"ws://{urlsplit(jupyter.origin).netloc}{BASE_URL}imagingkit/fhircast/ws/guessed"
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        websockets.sync.client.connect(ws, open_timeout=30)
    assert refused.value.response.status_code == 404


# --------------------------------------------------------------------------- shutdown (last)


def test_sigterm_closes_the_components_and_the_server_exits(jupyter: JupyterProcess) -> None:
    """Runs last in this module: it stops the module's server."""
    answer = requests.post(
        f"{jupyter.imagingkit}/fhircast",
        data={
            "hub.mode": "subscribe",
            "hub.channel.type": "websocket",
            "hub.topic": "shutdown",
            "hub.events": "Patient-open",
            "subscriber.name": "test",
        },
        headers=jupyter.headers,
        timeout=30,
    )
    assert answer.status_code == 202, answer.text
    endpoint = answer.json()["hub.channel.endpoint"]
    with websockets.sync.client.connect(endpoint, open_timeout=30) as ws:
        assert json.loads(ws.recv(timeout=30))["hub.mode"] == "subscribe"
        jupyter.process.send_signal(signal.SIGTERM)
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            ws.recv(timeout=EXIT_TIMEOUT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001  # going away
    assert jupyter.process.wait(timeout=EXIT_TIMEOUT) == 0, _tail(jupyter.log)
    assert re.search(r"imagingkit stopped \(5 components closed\)", jupyter.log.read_text())


# --------------------------------------------------------------------------- start-up gate


@pytest.fixture
def gate() -> Generator[tuple[ComponentMount, str], None, None]:
    """A bare tornado app with a :class:`ComponentMount` at ``/jh/imagingkit``."""
    import tornado.web

    holder: dict[str, ComponentMount] = {}

    def make() -> tornado.web.Application:
        app = tornado.web.Application()
        holder["mount"] = ComponentMount(app, "/jh/imagingkit/", retry_after=7)
        app.add_handlers(".*$", [holder["mount"].rule()])
        return app

    with serving_app(make, timeout=30) as origin:
        yield holder["mount"], f"{origin}/jh/imagingkit"


def test_gate_answers_503_with_retry_after_until_installed(
    gate: tuple[ComponentMount, str],
) -> None:
    mount, url = gate
    waiting = requests.get(f"{url}/viewer/", timeout=30)
    assert waiting.status_code == 503
    assert waiting.headers["Retry-After"] == "7"
    assert waiting.headers["Content-Type"] == "application/problem+json"
    assert "preparing" in waiting.json()["detail"]
    assert requests.get(f"{url}/", timeout=30).json()["status"] == "starting"
    mount.install([BuiltinViewer()])  # swaps the router: no loop work, safe from this thread
    ready = requests.get(f"{url}/viewer/", timeout=30)
    assert ready.status_code == 200
    assert ready.headers["Content-Type"].startswith("text/html")
    status = requests.get(url, timeout=30).json()
    assert status["status"] == "ready"
    assert status["endpoints"] == {"viewer": f"{url}/viewer/"}
    assert requests.get(f"{url}/unknown", timeout=30).status_code == 404


def test_gate_names_the_cause_of_a_failed_start(gate: tuple[ComponentMount, str]) -> None:
    mount, url = gate
    mount.fail("--dicom-dir '/nowhere' is not a folder")
    answer = requests.get(f"{url}/fhir/metadata", timeout=30)
    assert answer.status_code == 500
    assert "Retry-After" not in answer.headers
    detail = "imagingkit could not start: --dicom-dir '/nowhere' is not a folder"
    assert answer.json()["detail"] == detail
    assert requests.get(url, timeout=30).json()["status"] == "failed"
