"""``imagingkit serve --sandbox --auth [CLIENTS]`` and the client registry file."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import requests
from auth_support import make_client, registry_of, write_registry
from servers import (
    SANDBOX_SEED,
    SANDBOX_SIZE,
    cached_sandbox_data_dir,
    imagingkit_command,
    start_imagingkit,
    subprocess_env,
)

from imagingkit import smart
from imagingkit.errors import SandboxError
from imagingkit.sandbox.token_endpoint import ClientRegistry

TIMEOUT = 60


@pytest.mark.slow
def test_serve_auth_generates_clients_whose_tokens_are_patient_scoped(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(cached_sandbox_data_dir(), data_dir)
    server = start_imagingkit(
        [
            "--sandbox",
            f"--size={SANDBOX_SIZE}",
            f"--seed={SANDBOX_SEED}",
            "--port=0",
            "--auth",
            f"--data-dir={data_dir}",
        ],
        log=tmp_path / "serve.log",
        data_dir=data_dir,
    )
    try:
        assert set(server.mounts) >= {"auth", "fhir", "dicom-web"}
        fhir = server.mounts["fhir"].rstrip("/")
        dicomweb = server.mounts["dicom-web"].rstrip("/")
        folder = data_dir / "auth" / f"sandbox-{SANDBOX_SIZE}-{SANDBOX_SEED}"
        registry = json.loads((folder / "clients.json").read_text())
        ids = [c["client_id"] for c in registry["clients"]]
        assert ids == ["imagingkit-system", "imagingkit-patient-1", "imagingkit-patient-2"]
        assert (folder / "imagingkit-patient-1.pem").stat().st_mode & 0o077 == 0
        assert requests.get(f"{dicomweb}/studies", timeout=TIMEOUT).status_code == 401
        discovery = requests.get(f"{fhir}/.well-known/smart-configuration", timeout=TIMEOUT)
        token_url = discovery.json()["token_endpoint"]
        patient_key = (folder / "imagingkit-patient-1.pem").read_bytes()
        credential = smart.SmartBackendServices(
            token_url, "imagingkit-patient-1", patient_key, "patient/*.rs"
        )
        headers = {"Authorization": credential.authorization()}
        bundle = requests.get(f"{fhir}/Patient", headers=headers, timeout=TIMEOUT).json()
        assert [e["resource"]["id"] for e in bundle["entry"]] == [credential.patient]
        assert credential.patient == registry["clients"][1]["patients"][0]
        system_key = (folder / "imagingkit-system.pem").read_bytes()
        system = smart.SmartBackendServices(
            token_url, "imagingkit-system", system_key, "system/*.rs"
        )
        everyone = requests.get(
            f"{dicomweb}/studies",
            headers={"Authorization": system.authorization()},
            timeout=TIMEOUT,
        ).json()
        mine = requests.get(f"{dicomweb}/studies", headers=headers, timeout=TIMEOUT).json()
        assert 0 < len(mine) < len(everyone)
        assert "Bearer" not in server.output and credential.access_token() not in server.output
    finally:
        assert server.stop(signal.SIGTERM) == 0


def test_a_bad_registry_file_stops_serve_before_the_slow_work(tmp_path: Path) -> None:
    bad = tmp_path / "clients.json"
    bad.write_text('{"clients": [{"client_id": "x", "patients": "*", "scope": "system/*.rs"}]}')
    result = subprocess.run(
        imagingkit_command(
            "serve", "--sandbox", "--port=0", f"--auth={bad}", f"--data-dir={tmp_path}"
        ),
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(tmp_path),
        check=False,
    )
    assert result.returncode == 2
    assert "clients.json clients[0] (x): jwks" in result.stderr
    assert not (tmp_path / "sandbox").exists()  # refused before generating anything


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"patients": "*", "scope": "system/*.rs"}, "client_id"),
        ({"client_id": "a", "patients": "*", "scope": "system/*.rs", "jwks": {"keys": []}}, "jwks"),
        ({"client_id": "a", "patients": "*", "scope": "openid", "jwks": "KEYS"}, "jwks"),
        (
            {"client_id": "a", "patients": "*", "scope": "openid", "jwks": "PUBLIC"},
            "no resource scope",
        ),
        ({"client_id": "a", "patients": "*", "scope": "system/*.rx", "jwks": "PUBLIC"}, "cruds"),
        ({"client_id": "a", "patients": [], "scope": "system/*.rs", "jwks": "PUBLIC"}, "patients"),
        (
            {"client_id": "a", "patients": ["a b"], "scope": "system/*.rs", "jwks": "PUBLIC"},
            "'a b'",
        ),
        (
            {"client_id": "a", "patients": ["p1"], "scope": "system/*.cruds", "jwks": "PUBLIC"},
            "only read",
        ),
        (
            {"client_id": "a", "patients": "*", "scope": "system/*.rs", "jwks": "PRIVATE"},
            "private key",
        ),
    ],
)
def test_registry_entries_are_validated(
    tmp_path: Path, entry: dict[str, object], message: str
) -> None:
    pem = smart.generate_private_key("ES384")
    public = smart.public_jwk(pem)
    keys = {
        "PUBLIC": {"keys": [public]},
        "PRIVATE": {"keys": [{**public, "d": "secret"}]},
        "KEYS": {"keys": "x"},
    }
    if isinstance(entry.get("jwks"), str):
        entry = {**entry, "jwks": keys[str(entry["jwks"])]}
    path = tmp_path / "clients.json"
    path.write_text(json.dumps({"clients": [entry]}))
    with pytest.raises(SandboxError, match=message) as caught:
        ClientRegistry.from_file(path)
    assert "secret" not in str(caught.value)


def test_registry_files_round_trip(tmp_path: Path) -> None:
    clients = [
        make_client("one", "system/*.cruds", None),
        make_client("two", "patient/*.rs", ["p1"]),
    ]
    path = write_registry(tmp_path / "clients.json", registry_of(*clients))
    loaded = ClientRegistry.from_file(path)
    assert [c.client_id for c in loaded] == ["one", "two"]
    assert loaded.get("two") == clients[1].registered
    for broken, message in (("[]", "clients"), ("{", "not JSON")):
        path.write_text(broken)
        with pytest.raises(SandboxError, match=message):
            ClientRegistry.from_file(path)
    with pytest.raises(SandboxError, match="cannot read"):
        ClientRegistry.from_file(tmp_path / "missing.json")
    with pytest.raises(SandboxError, match="twice"):
        registry_of(clients[0], clients[0])
