"""``bridge.watch`` inside a real ipykernel: no ``asyncio.run`` on the kernel's thread,
change callbacks on the kernel's loop (main thread), the Subscription removed on exit."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
from client_helpers import wait_until
from kernels import run_cell, started_kernel
from test_watch import put, seed, study

from imagingkit.sandbox.fhir.testing import serving_store

pytest.importorskip("jupyter_client", reason="jupyter_client (with ipykernel)")
pytest.importorskip("ipykernel", reason="ipykernel is part of the lab extra")


def test_watch_in_a_running_kernel(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (base, _store):
        seed(base)
        with started_kernel(startup_timeout=90) as (manager, client):
            out = run_cell(
                client,
                f"""
import asyncio, threading, imagingkit
bridge = imagingkit.connect(fhir={base!r}, fill_in=False)
live = bridge.watch(bridge.cohort().imaging(modality="CT"), level="study", grace=0.3)
seen = []
live.on_change(lambda d: seen.append(
    (d.added, threading.current_thread() is threading.main_thread())))
print(live.status, sorted(live.study_ids), asyncio.get_running_loop().is_running())
print(live.listener.subscription_id)
""",
                timeout=90,
            )
            first, sub_id = out.strip().splitlines()
            assert first.split() == ["connected", "['s1']", "True"]
            put(base, study("k1", "CT"))
            for _ in range(200):  # callbacks run on the kernel's loop between cells
                if run_cell(client, "print(len(seen))", timeout=90).strip() == "1":
                    break
                time.sleep(0.05)
            assert run_cell(client, "print(seen)", timeout=90).strip() == "[(('k1',), True)]"
            client.stop_channels()
            manager.shutdown_kernel(now=False)  # atexit: the Subscription is deleted
            wait_until(
                lambda: (
                    requests.get(f"{base}/Subscription/{sub_id}", timeout=10).status_code
                    in (404, 410)
                ),
                timeout=30,
                what="Subscription deleted at kernel exit",
            )
