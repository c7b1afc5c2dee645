"""``Bridge.watch``: a live DataFrame kept current by the embedded store's Subscriptions.

Against the real store (in-process, and ``imagingkit serve`` for STOW-RS and a restart):
the frame grows when an ImagingStudy is POSTed or a study is STOWed, a study updated out
of the cohort's criteria leaves it, the columns and dtypes stay those of
``cohort.studies()`` (DESIGN.md D6), and the listener survives a server restart.
"""

from __future__ import annotations

import html
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pydicom
import pytest
import requests
from client_helpers import wait_until
from pydicom.data import get_testdata_file
from servers import start_imagingkit

import imagingkit
from imagingkit.dicomweb.multipart import encode_multipart
from imagingkit.sandbox.fhir.testing import serving_store
from imagingkit.subscriptions import FrameDiff, SubscriptionListener

FAST: dict[str, Any] = {"grace": 0.3, "backoff": (0.05, 1.0), "heartbeat_period": 5}


def study(study_id: str, modality: str, *, patient: str = "p1", description: str = "") -> dict:
    uid = f"2.25.{uuid.uuid4().int}"
    return {
        "resourceType": "ImagingStudy",
        "id": study_id,
        "status": "available",
        "subject": {"reference": f"Patient/{patient}"},
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
        "started": "2024-05-01T10:00:00Z",
        "description": description or f"{modality} study {study_id}",
        "numberOfSeries": 1,
        "numberOfInstances": 1,
        "series": [
            {
                "uid": f"{uid}.1",
                "number": 1,
                "modality": {
                    "system": "http://dicom.nema.org/resources/ontology/DCM",
                    "code": modality,
                },
                "numberOfInstances": 1,
            }
        ],
    }


def put(base: str, resource: dict) -> None:
    answer = requests.put(
        f"{base}/{resource['resourceType']}/{resource['id']}",
        json=resource,
        headers={"Content-Type": "application/fhir+json"},
        timeout=30,
    )
    assert answer.status_code in (200, 201), answer.text


def seed(base: str) -> None:
    put(
        base, {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-01-01"}
    )
    put(base, {"resourceType": "Patient", "id": "p2", "gender": "male", "birthDate": "1980-01-01"})
    put(base, study("s1", "CT"))
    put(base, study("s2", "MR"))


def ids(df: pd.DataFrame) -> set[str]:
    return set(df["imaging_study_id"].dropna())


def test_watch_follows_posts_and_updates_with_the_cohort_dtypes(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (base, _store):
        seed(base)
        bridge = imagingkit.connect(fhir=base, fill_in=False)
        cohort = bridge.cohort().imaging(modality="CT")
        diffs: list[FrameDiff] = []
        with bridge.watch(cohort, loop="thread", **FAST) as live:
            assert live.listener.mode == "topic" and live.listener.channel == "token"
            assert ids(live.df) == {"s1"}
            live.on_change(diffs.append)

            put(base, study("s3", "CT", patient="p2"))  # a new study in the cohort
            df = live.wait_for(lambda df: "s3" in ids(df), timeout=30)
            assert ids(df) == {"s1", "s3"}
            put(base, study("s4", "MR"))  # outside the cohort: notified, re-checked, left out

            expected = cohort.studies(progress=False)
            assert list(df.columns) == list(expected.columns)
            assert df.dtypes.equals(expected.dtypes)
            key = ["imaging_study_id", "SeriesInstanceUID"]
            pd.testing.assert_frame_equal(
                df.sort_values(key).reset_index(drop=True),
                expected.sort_values(key).reset_index(drop=True),
            )

            put(base, study("s1", "MR"))  # updated out of the criteria: leaves the frame
            live.wait_for(lambda df: "s1" not in ids(df), timeout=30)
            assert ids(live.df) == {"s3"}
            wait_until(lambda: any(d.removed == ("s1",) for d in diffs), what="removal diff")
            assert diffs[0] == FrameDiff(added=("s3",), version=1)  # s4 changed nothing
            assert live.listener.stats.events >= 3  # s3, s4, s1
            assert "s4" not in ids(live.df)

            shown = live._repr_html_()
            assert "<b>LiveFrame</b>" in shown and "connected" in shown
        assert live.status == "closed"
        gone = requests.get(f"{base}/Subscription/{live.listener.subscription_id}", timeout=30)
        assert gone.status_code in (404, 410)  # close() deleted it


def test_watch_patient_criteria_and_count_wait(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (base, _store):
        seed(base)
        bridge = imagingkit.connect(fhir=base, fill_in=False)
        cohort = bridge.cohort().patient(gender="male")
        with bridge.watch(cohort, level="study", loop="thread", **FAST) as live:
            assert ids(live.df) == set()
            put(base, study("s5", "CT", patient="p2"))
            put(base, study("s6", "CT", patient="p1"))  # female: re-checked, not added
            df = live.wait_for(1, timeout=30)
            assert ids(df) == {"s5"}
            assert list(df.columns) == list(cohort.studies(level="study", progress=False).columns)


def test_repr_html_escapes_server_text(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (base, _store):
        seed(base)
        put(base, study("s7", "CT", description="<script>alert(1)</script>"))
        bridge = imagingkit.connect(fhir=base, fill_in=False)
        with bridge.watch(bridge.cohort(), level="study", loop="thread", **FAST) as live:
            shown = live._repr_html_()
            assert "<script>" not in shown
            assert html.escape("<script>alert(1)</script>") in shown


def test_check_46_legacy_websocket_on_the_real_store(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (base, _store):
        seed(base)
        client = imagingkit.connect(fhir=base).fhir
        options = {"grace": 0.3, "backoff": (0.05, 1.0)}
        with SubscriptionListener(
            client, "ImagingStudy", topic=None, binding="bind", **options
        ) as listener:
            assert (listener.mode, listener.channel) == ("criteria", "bind")
            put(base, study("s8", "CT"))
            change = listener.wait_for("ImagingStudy/s8", timeout=30)
            assert change.source == "requery" and change.resource is not None


def test_watch_sees_stow_and_survives_a_server_restart(tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    data = tmp_path / "data"
    server = start_imagingkit(["--dicom-dir", str(folder), "--port", "0"], tmp_path / "a.log", data)
    port = server.port
    live = None
    try:
        fhir = server.mounts["fhir"].rstrip("/")
        bridge = imagingkit.connect(fhir=fhir, fill_in=False)
        live = bridge.watch(bridge.cohort(), level="study", loop="thread", **FAST)
        assert ids(live.df) == set()

        source = Path(str(get_testdata_file("CT_small.dcm")))
        uid = str(pydicom.dcmread(source).StudyInstanceUID)
        body, content_type = encode_multipart(
            [({"Content-Type": "application/dicom"}, source.read_bytes())], "application/dicom"
        )
        stored = requests.post(
            f"{server.dicomweb}/studies",
            data=body,
            headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
            timeout=60,
        )
        assert stored.status_code == 200, stored.text
        df = live.wait_for(lambda df: uid in set(df["StudyInstanceUID"].dropna()), timeout=60)
        assert len(df) == 1

        assert server.stop() == 0
        server = start_imagingkit(
            ["--dicom-dir", str(folder), "--port", str(port)], tmp_path / "b.log", data
        )
        patient = str(df["patient_ref"].iloc[0]).split("/", 1)[1]
        # written as soon as the server is back, maybe before the listener is
        put(fhir, study("after-restart", "CT", patient=patient))
        live.wait_for(lambda df: "after-restart" in ids(df), timeout=60)
        assert live.listener.stats.reconnects >= 1
        assert live.status == "connected"
    finally:
        if live is not None:
            live.close()
        assert server.stop() == 0


@pytest.mark.parametrize("query", ["not a cohort", 3])
def test_watch_refuses_what_is_not_a_cohort_of_this_bridge(query: Any) -> None:
    bridge = imagingkit.connect(fhir="http://127.0.0.1:9/fhir")
    with pytest.raises(imagingkit.errors.InvalidInputError, match="cohort"):
        bridge.watch(query)


def test_check_45_events_missed_while_away_are_replayed_by_the_store(tmp_path: Path) -> None:
    with serving_store(tmp_path) as (base, _store):
        seed(base)
        client = imagingkit.connect(fhir=base).fhir
        options: dict[str, Any] = {"grace": 0.2, "backoff": (0.05, 1.0)}
        first = SubscriptionListener(client, "ImagingStudy", on_close="keep", **options)
        try:
            put(base, study("s9", "CT"))
            assert first.wait_for("ImagingStudy/s9", timeout=30).number == 1
            resume_after = first.tracker.contiguous
        finally:
            first.close()
        put(base, study("s10", "CT"))  # nobody listening: event 2 is only recorded
        put(base, study("s11", "MR"))  # event 3
        with SubscriptionListener(
            client, subscription_id=first.subscription_id, after_event=resume_after, **options
        ) as second:
            replayed = [second.wait_for(f"ImagingStudy/{i}", timeout=30) for i in ("s10", "s11")]
            assert [(c.number, c.source) for c in replayed] == [(2, "events"), (3, "events")]
            assert replayed[0].resource is not None and replayed[0].resource["id"] == "s10"
            assert second.stats.gaps_detected == 1 and second.stats.recoveries == 1
            assert second.tracker.contiguous == 3
