"""The client inside a real ipykernel (issue 6: "works inside an ipykernel").

The kernel runs its own event loop on its main thread while cells execute, so the client
must not call ``asyncio.run`` there; callbacks must reach the kernel's loop (where widget
updates are safe) and the client must close when the kernel shuts down.
"""

from __future__ import annotations

import time

import pytest
from fhircast_helpers import new_topic, patient_open, publish, wait_until
from kernels import run_cell, started_kernel

pytest.importorskip("jupyter_client", reason="jupyter_client (with ipykernel)")
pytest.importorskip("ipykernel", reason="ipykernel is part of the lab extra")


@pytest.fixture
def kernel():
    with started_kernel(startup_timeout=60) as (manager, client):
        yield manager, client


def test_client_in_a_running_kernel(hub, kernel):
    manager, client = kernel
    topic = new_topic()
    out = run_cell(
        client,
        f"""
import asyncio, threading
from imagingkit.fhircast import FhircastClient
kernel_loop = asyncio.get_running_loop()
fc = FhircastClient({hub.url!r}, {topic!r}, ["Patient-open"])
seen = []
fc.on("Patient-open", lambda ev: seen.append(
    (ev.id, threading.current_thread() is threading.main_thread())))
own = fc.open_patient({{"resourceType": "Patient", "id": "from-kernel"}})
print(fc.status, kernel_loop.is_running())
""",
    )
    assert out.split() == ["connected", "True"]
    message = patient_open(topic)
    publish(hub.url, message)
    for _ in range(100):  # callbacks run on the kernel's loop between cells
        if run_cell(client, "print(len(seen))").strip() == "2":
            break
        time.sleep(0.05)
    out = run_cell(client, "print(seen[0][0] == own.id, seen[1][0], all(m for _, m in seen))")
    assert out.split() == ["True", message["id"], "True"]
    assert len(hub.call(hub.hub.subscriptions, topic)) == 1
    client.stop_channels()
    manager.shutdown_kernel(now=False)  # atexit: unsubscribe and close with 1000
    wait_until(lambda: hub.call(hub.hub.subscriptions, topic) == [], what="unsubscribed")
