"""The built-in viewer page is served from the package, self-contained and locked down."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import requests
from iid_support import AppServer

from imagingkit.errors import ConfigError
from imagingkit.viewer import STATIC_DIR, BuiltinViewer


@pytest.fixture
def viewer(serve_app: Callable[..., AppServer]) -> AppServer:
    return serve_app([BuiltinViewer()])


def test_the_page_is_served_with_a_strict_content_security_policy(viewer: AppServer) -> None:
    response = requests.get(f"{viewer.url}/viewer/?study=1.2.3", timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp
    assert "connect-src 'self'" in csp
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert '<meta name="imagingkit-dicomweb" content="../dicom-web">' in response.text


def test_the_path_without_slash_redirects_keeping_the_query(viewer: AppServer) -> None:
    response = requests.get(
        f"{viewer.url}/viewer?study=1.2.3&series=1.2.3.4", allow_redirects=False, timeout=30
    )
    assert response.status_code == 301
    assert response.headers["Location"] == "/viewer/?study=1.2.3&series=1.2.3.4"


@pytest.mark.parametrize(
    ("asset", "content_type"),
    [("viewer.js", "text/javascript; charset=utf-8"), ("viewer.css", "text/css; charset=utf-8")],
)
def test_assets_come_from_the_package_with_explicit_types(
    viewer: AppServer, asset: str, content_type: str
) -> None:
    response = requests.get(f"{viewer.url}/viewer/static/{asset}", timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == content_type
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.content == (STATIC_DIR / asset).read_bytes()


def test_assets_outside_the_folder_are_not_served(viewer: AppServer) -> None:
    for path in ("static/../__init__.py", "static/%2e%2e/__init__.py", "static/missing.js"):
        response = requests.get(f"{viewer.url}/viewer/{path}", timeout=30)
        assert response.status_code in (403, 404), path


def test_the_assets_load_nothing_from_other_sites() -> None:
    for asset in STATIC_DIR.iterdir():
        text = asset.read_text(encoding="utf-8")
        assert not re.search(r"https?://", text), f"{asset.name} refers to another site"
        assert "//cdn" not in text


def test_the_script_writes_text_only_never_markup() -> None:
    script = (STATIC_DIR / "viewer.js").read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script


def test_the_script_has_every_window_preset() -> None:
    script = (STATIC_DIR / "viewer.js").read_text(encoding="utf-8")
    for preset in ("lung", "mediastinum", "bone", "brain", "abdomen"):
        assert re.search(rf"\b{preset}: \[-?\d+, \d+\]", script), preset
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    assert page.count("<option") == 6


def test_a_configured_dicomweb_server_is_escaped_and_allowed_by_the_policy(
    serve_app: Callable[..., AppServer],
) -> None:
    server = serve_app([BuiltinViewer('https://pacs.example/dicom-web"><script>')])
    response = requests.get(f"{server.url}/viewer/", timeout=30)
    assert 'content="https://pacs.example/dicom-web&quot;&gt;&lt;script&gt;"' in response.text
    assert "connect-src 'self' https://pacs.example;" in response.headers["Content-Security-Policy"]


def test_a_non_http_dicomweb_server_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="not an http"):
        BuiltinViewer("javascript:alert(1)")
