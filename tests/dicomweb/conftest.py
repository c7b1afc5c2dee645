"""Fixtures for the DICOMweb client tests: data, the embedded store, Orthanc, test doubles."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dicomweb_helpers import CTSeries, Double, make_ct_series
from servers import OrthancServer

from imagingkit.cache import Cache
from imagingkit.config import Settings
from imagingkit.sandbox.dicomweb_store import DicomWebStore
from imagingkit.sandbox.fhir.testing import serving


@pytest.fixture(scope="session")
def ct_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CTSeries, CTSeries]:
    """A folder with two CT series: plain, and one mixing EVRLE and RLE Lossless."""
    root = tmp_path_factory.mktemp("client-ct")
    plain = make_ct_series(root / "plain", seed="plain")
    mixed = make_ct_series(root / "mixed", seed="mixed", mixed_syntax=True)
    return root, plain, mixed


@pytest.fixture(scope="session")
def sandbox_base(
    ct_data: tuple[Path, CTSeries, CTSeries], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The embedded DICOMweb store serving :func:`ct_data` on loopback; its base URL."""
    root = ct_data[0]
    settings = Settings(data_dir=tmp_path_factory.mktemp("store-data"))
    store = DicomWebStore.for_folder(root, settings=settings)
    try:
        with serving([store]) as origin:
            yield f"{origin}/dicom-web"
    finally:
        store.close()


@pytest.fixture(scope="session")
def orthanc_base(orthanc: OrthancServer, ct_data: tuple[Path, CTSeries, CTSeries]) -> str:
    """Orthanc holding :func:`ct_data`; its DICOMweb base URL."""
    _, plain, mixed = ct_data
    report = orthanc.upload([*plain.files, *mixed.files])
    assert not report.refused, report.refused
    return orthanc.dicomweb


@pytest.fixture(params=["sandbox", pytest.param("orthanc", marks=pytest.mark.orthanc)])
def server_base(request: pytest.FixtureRequest) -> str:
    """Each real server in turn: the embedded store, then Orthanc."""
    name = "sandbox_base" if request.param == "sandbox" else "orthanc_base"
    return str(request.getfixturevalue(name))


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache", max_bytes=10**9)


@pytest.fixture
def double_server() -> Iterator[Callable[[Callable[..., Any]], tuple[str, Double]]]:
    """Start test doubles: ``base, double = double_server(respond)``; stopped afterwards."""
    stack: list[Any] = []

    def start(respond: Callable[..., Any]) -> tuple[str, Double]:
        double = Double(respond)
        context = serving([double])  # type: ignore[list-item]
        origin = context.__enter__()
        stack.append(context)
        return f"{origin}/dw", double

    yield start
    for context in reversed(stack):
        context.__exit__(None, None, None)
