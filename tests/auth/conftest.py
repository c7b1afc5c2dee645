"""Fixtures of the auth tests (helpers live in ``auth_support.py``)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from auth_support import ScopedSandbox, facts_of, make_client, pick_patients, registry_of, token_for
from servers import SANDBOX_SEED, SANDBOX_SIZE, cached_sandbox_data_dir

from imagingkit.config import Settings
from imagingkit.sandbox.fhir.store import FhirStore
from imagingkit.sandbox.fhir.testing import serving
from imagingkit.sandbox.token_endpoint import AuthServer
from imagingkit.server.serve import build_components


def _observation(id_: str, subject: str, performer: str, **more: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": id_,
        "status": "final",
        "code": {"text": "cross-patient reference (auth test)"},
        "subject": {"reference": f"Patient/{subject}"},
        "performer": [{"reference": f"Patient/{performer}"}],
        **more,
    }


@pytest.fixture(scope="session")
def scoped_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScopedSandbox]:
    """The small sandbox behind the token endpoint, with clients for two patients.

    Clients: ``system`` (every patient, ``system/*.cruds``), ``clinic-a`` and ``clinic-b``
    (one patient each, ``patient/*.rs system/*.rs``; B signs RS384) and
    ``imaging-a`` (patient A, ``patient/ImagingStudy.rs`` only, as SMART Imaging Access).

    The data is a private copy with two Observations that refer across patients (A's
    has B as performer and B's Observation as member; B's has A as performer), so that
    includes *could* leak if the store did not check them.
    """
    data_dir = tmp_path_factory.mktemp("auth-sandbox")
    shutil.copytree(cached_sandbox_data_dir(), data_dir, dirs_exist_ok=True)
    settings = Settings(data_dir=data_dir)
    components = build_components(settings, sandbox=True, size=SANDBOX_SIZE, seed=SANDBOX_SEED)
    store = next(c for c in components if isinstance(c, FhirStore))
    a, b = pick_patients(store)
    store.upsert(_observation("xref-b", b, a))
    store.upsert(_observation("xref-a", a, b, hasMember=[{"reference": "Observation/xref-b"}]))
    clients = {
        "system": make_client("system", "system/*.cruds", None),
        "clinic-a": make_client("clinic-a", "patient/*.rs system/*.rs", [a]),
        "clinic-b": make_client("clinic-b", "patient/*.rs system/*.rs", [b], alg="RS384"),
        "imaging-a": make_client("imaging-a", "patient/ImagingStudy.rs", [a]),
    }
    server = AuthServer(registry_of(*clients.values()))
    try:
        with serving(server.protect(components)) as origin:
            token_url = f"{origin}/auth/token"
            token = token_for(token_url, clients["system"], "system/*.rs")["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            fhir, dicomweb = f"{origin}/fhir", f"{origin}/dicom-web"
            yield ScopedSandbox(
                origin,
                server,
                clients,
                facts_of(fhir, dicomweb, headers, a),
                facts_of(fhir, dicomweb, headers, b),
            )
    finally:
        for component in components:
            close = getattr(component, "close", None)
            if close is not None:
                close()
