"""The Imaging Bridge against the sandbox with ``--auth``: one patient's token, one patient's data.

``imagingkit.connect`` with a SMART Backend Services credential builds cohorts and pulls
metadata through the Endpoint the sandbox publishes (SMART Imaging Access token reuse on
the same origin); it sees patient A only, and its DataFrames keep no token.
"""

from __future__ import annotations

import json

from auth_support import ScopedSandbox

import imagingkit
from imagingkit.auth import AuthMap


def test_bridge_cohorts_and_pixels_are_scoped_to_the_token(scoped_sandbox: ScopedSandbox) -> None:
    sandbox = scoped_sandbox
    credential = sandbox.clients["clinic-a"].credential(sandbox.token_url, "patient/*.rs")
    bridge = imagingkit.connect(fhir=sandbox.fhir, auth=AuthMap({sandbox.fhir: credential}))
    try:
        series = bridge.cohort().studies(level="series")
        assert len(series) > 0
        assert set(series["StudyInstanceUID"]) == set(sandbox.a.studies)
        assert set(series["SeriesInstanceUID"]) <= set(sandbox.a.series)
        first = series.head(1)
        metadata = first.imaging.metadata(progress=False, bridge=bridge)
        assert set(metadata["StudyInstanceUID"]) == set(first["StudyInstanceUID"])
        assert metadata.attrs["failures"] == []
        # the same row pointed at patient B's series: refused by the DICOMweb store
        study, series_uid, _ = sandbox.b.instance
        forged = first.assign(StudyInstanceUID=study, SeriesInstanceUID=series_uid)
        refused = forged.imaging.metadata(progress=False, bridge=bridge)
        assert len(refused) == 0
        assert [f["status"] for f in refused.attrs["failures"]] == [403]
        token = credential.access_token()
        shown = json.dumps([series.attrs, metadata.attrs, refused.attrs], default=str)
        assert token not in shown and token not in repr(bridge.auth)
    finally:
        bridge.close()
