"""Fixtures for the FHIRcast conformance suite: real hubs on 127.0.0.1, port 0."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import pytest
from fhircast_helpers import FakeClock

from imagingkit.fhircast.background import BackgroundHub
from imagingkit.fhircast.hub import FhircastHub, HubPolicy

MakeHub = Callable[..., BackgroundHub]


@pytest.fixture
def make_hub() -> Generator[MakeHub, None, None]:
    """Start hubs with a given policy (``make_hub(ack_timeout=None, …)``); stop them after."""
    started: list[BackgroundHub] = []

    def make(
        *, token_validator: Any = None, clock: Any = None, base_url: str = "/", **policy: Any
    ) -> BackgroundHub:
        hub = FhircastHub(
            HubPolicy(**policy),
            token_validator=token_validator,
            **({"clock": clock} if clock is not None else {}),
        )
        background = BackgroundHub(hub, base_url=base_url)
        started.append(background)
        return background

    yield make
    for background in started:
        background.stop()


@pytest.fixture
def hub(make_hub: MakeHub) -> BackgroundHub:
    """A hub with the specification's defaults."""
    return make_hub()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def clocked_hub(make_hub: MakeHub, clock: FakeClock) -> BackgroundHub:
    """A hub whose leases and acknowledgement deadlines follow ``clock``."""
    return make_hub(clock=clock)
