"""FHIRcast 3.0.0 (STU3): the protocol, a hub and a client.

- :mod:`~imagingkit.fhircast.protocol` — messages and validation, sans I/O;
- :mod:`~imagingkit.fhircast.session` — the state of one topic, sans I/O;
- :mod:`~imagingkit.fhircast.hub` — :class:`FhircastHub`, the tornado component at
  ``/fhircast/``;
- :mod:`~imagingkit.fhircast.client` — :class:`FhircastClient` (blocking, notebook-safe)
  and :class:`AsyncFhircastClient` on the ``websockets`` library;
- :mod:`~imagingkit.fhircast.background` — :class:`BackgroundHub`, a hub on a thread.

Example::

    from imagingkit.fhircast import BackgroundHub, FhircastClient

    with BackgroundHub() as hub, FhircastClient(hub.url, "session-1") as client:
        client.on("ImagingStudy-open", lambda event: print(event.value("study")["id"]))
        sent = client.open_patient({"resourceType": "Patient", "id": "p1"})
        client.wait_for(sent.id)              # the hub's echo of our own request
        print(client.current.anchor)          # "Patient"
"""

from imagingkit.fhircast.auth import StaticTokenValidator, TokenInfo
from imagingkit.fhircast.background import BackgroundHub
from imagingkit.fhircast.client import (
    AsyncFhircastClient,
    CurrentContext,
    Denial,
    FhircastClient,
)
from imagingkit.fhircast.hub import FhircastHub, HubPolicy
from imagingkit.fhircast.protocol import FHIRCAST_VERSION, Event

__all__ = [
    "FHIRCAST_VERSION",
    "AsyncFhircastClient",
    "BackgroundHub",
    "CurrentContext",
    "Denial",
    "Event",
    "FhircastClient",
    "FhircastHub",
    "HubPolicy",
    "StaticTokenValidator",
    "TokenInfo",
]
