"""Files stored through STOW-RS appear in the FHIR store at once (issue 3 point 1).

``imagingkit serve --dicom-dir`` turns a folder into Patient and ImagingStudy resources, as
Azure's DICOMcast does; the resources must follow the files as they arrive, not only at the
next restart.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pydicom
import requests
from pydicom.data import get_testdata_file
from servers import start_imagingkit

from imagingkit.dicomweb.multipart import encode_multipart


def test_stored_study_appears_as_imagingstudy_without_restart(tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    server = start_imagingkit(
        ["--dicom-dir", str(folder), "--port", "0"], tmp_path / "serve.log", tmp_path / "data"
    )
    try:
        fhir = server.mounts["fhir"].rstrip("/")
        source = Path(str(get_testdata_file("CT_small.dcm")))
        ds = pydicom.dcmread(source)
        study_uid = str(ds.StudyInstanceUID)
        before = requests.get(f"{fhir}/ImagingStudy", timeout=30).json()
        assert before.get("total", 0) == 0

        boundary = uuid.uuid4().hex
        body, content_type = encode_multipart(
            [({"Content-Type": "application/dicom"}, source.read_bytes())],
            "application/dicom",
            boundary=boundary,
        )
        stored = requests.post(
            f"{server.dicomweb}/studies",
            data=body,
            headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
            timeout=60,
        )
        assert stored.status_code == 200, stored.text

        found = requests.get(
            f"{fhir}/ImagingStudy",
            params={"identifier": f"urn:dicom:uid|urn:oid:{study_uid}"},
            timeout=30,
        ).json()
        assert found["total"] == 1
        study = found["entry"][0]["resource"]
        assert study["numberOfInstances"] == 1
        patient = requests.get(f"{fhir}/{study['subject']['reference']}", timeout=30)
        assert patient.status_code == 200
        assert patient.json()["identifier"][0]["value"] == str(ds.PatientID)
    finally:
        assert server.stop() == 0
