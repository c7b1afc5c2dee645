"""ImagingStudy → DataFrame: columns, dtypes, empty columns, Endpoint conventions (D6)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from imagingkit.errors import FHIRError
from imagingkit.fhir.flatten import COLUMNS, empty_frame, flatten, flatten_resources

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from flatten_imagingstudy import make_pages, with_json_normalize_meta

DTYPES = {"str": "string", "cat": "category", "int": "Int64", "bool": "boolean"}
WADO = {
    "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
    "code": "dicom-wado-rs",
}


def study(uid: str = "1.2.3", **more: Any) -> dict[str, Any]:
    return {
        "resourceType": "ImagingStudy",
        "id": f"s-{uid}",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
        "status": "available",
        "subject": {"reference": "Patient/p1"},
        "started": "2020-05-17T10:00:00+02:00",
        "endpoint": [{"reference": "Endpoint/e1"}],
        "series": [
            {
                "uid": f"{uid}.1",
                "number": 1,
                "modality": {"code": "CT"},
                "bodySite": {"system": "http://snomed.info/sct", "code": "51185008"},
                "numberOfInstances": 2,
                "instance": [
                    {
                        "uid": f"{uid}.1.1",
                        "sopClass": {"code": "urn:oid:1.2.840.10008.5.1.4.1.1.2"},
                        "number": 1,
                    },
                    {"uid": f"{uid}.1.2", "number": 2},
                ],
            },
            {"uid": f"{uid}.2", "number": 2, "modality": {"code": "SEG"}},
        ],
        **more,
    }


def endpoint(address: str | None, ident: str = "e1", **more: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Endpoint",
        "id": ident,
        "status": "active",
        "connectionType": WADO,
        **more,
    }
    if address is not None:
        resource["address"] = address
    return resource


PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "identifier": [
        {"system": "urn:issuer", "value": "MRN-1", "type": {"coding": [{"code": "MR"}]}}
    ],
    "gender": "female",
    "birthDate": "1960",
}


@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_every_column_with_its_dtype_even_when_empty(level: str) -> None:
    for frame in (
        empty_frame(level),
        flatten_resources([study(), PATIENT, endpoint("http://h/dw")], level=level),
    ):
        assert list(frame.columns) == [name for name, _ in COLUMNS[level]]
        for name, kind in COLUMNS[level]:
            dtype = str(frame[name].dtype)
            if kind in DTYPES:
                assert dtype == DTYPES[kind], (name, dtype)
            elif kind == "date":
                assert dtype == "datetime64[us]", (name, dtype)
            else:
                assert dtype == "datetime64[us, UTC]", (name, dtype)


def test_series_level_values() -> None:
    frame = flatten_resources([study(), PATIENT, endpoint("http://h/dicom-web/")])
    assert len(frame) == 2
    first = frame.iloc[0]
    assert first["StudyInstanceUID"] == "1.2.3"
    assert first["SeriesInstanceUID"] == "1.2.3.1"
    assert first["Modality"] == "CT"
    assert first["BodyPartExamined"] == "CHEST"
    assert first["PatientID"] == "MRN-1" and first["IssuerOfPatientID"] == "urn:issuer"
    assert first["PatientSex"] == "F"
    assert first["PatientBirthDate"] == pd.Timestamp("1960-01-01")
    # the local date of the study, and the instant in UTC
    assert first["StudyDate"] == pd.Timestamp("2020-05-17")
    assert first["study_started"] == pd.Timestamp("2020-05-17T08:00:00Z")
    assert first["NumberOfStudyRelatedSeries"] == 2  # from the series when not stated
    assert first["dicomweb_url"] == "http://h/dicom-web/studies/1.2.3/series/1.2.3.1"
    assert first["endpoint_convention"] == "fhir-core"
    # empty values stay empty, typed
    assert pd.isna(frame.iloc[1]["BodyPartExamined"]) and pd.isna(
        frame.iloc[1]["NumberOfSeriesRelatedInstances"]
    )


def test_instance_level_and_study_without_series_is_kept() -> None:
    bare = study("1.2.4")
    del bare["series"]
    frame = flatten_resources([study(), bare, endpoint("http://h/dw")], level="instance")
    # 2 instances of series 1, one row for series 2 (no instances listed), one for the bare study
    assert list(frame["SOPInstanceUID"].fillna("-")) == ["1.2.3.1.1", "1.2.3.1.2", "-", "-"]
    assert frame["SOPClassUID"].iloc[0] == "1.2.840.10008.5.1.4.1.1.2"
    assert (
        frame["dicomweb_url"].iloc[0]
        == "http://h/dw/studies/1.2.3/series/1.2.3.1/instances/1.2.3.1.1"
    )
    assert frame["dicomweb_url"].iloc[3] == "http://h/dw/studies/1.2.4"
    assert frame["StudyInstanceUID"].tolist() == ["1.2.3", "1.2.3", "1.2.3", "1.2.4"]


@pytest.mark.parametrize(
    ("address", "base", "convention"),
    [
        ("http://pacs/wado", "http://pacs/wado", "fhir-core"),  # R4 core: service base
        ("http://pacs/wado/studies/1.2.3", "http://pacs/wado", "ihe-idr"),  # IDR: study URL
        ("http://pacs/wadors/study/1.2.3/", "http://pacs/wadors", "ihe-idr"),
        ("http://pacs/wado/studies/1.2.3/series/1.2.3.1", "http://pacs/wado", "ihe-idr"),
    ],
)
def test_endpoint_address_conventions(address: str, base: str, convention: str) -> None:
    frame = flatten_resources([study(), endpoint(address)])
    assert frame["dicomweb_url"].iloc[0] == f"{base}/studies/1.2.3/series/1.2.3.1"
    assert frame["endpoint_convention"].iloc[0] == convention


def test_mado_series_endpoint_over_study_endpoint_and_placeholders() -> None:
    resource = study()
    # MADO: series 1 names its own endpoint, a placeholder resolved by RetrieveLocationUID
    resource["series"][0]["endpoint"] = [{"reference": "Endpoint/mado"}]
    mado = endpoint(
        None,
        "mado",
        extension=[
            {
                "url": "https://profiles.ihe.net/RAD/MADO/StructureDefinition/RetrieveLocationUID",
                "valueOid": "urn:oid:1.2.9",
            }
        ],
    )
    frame = flatten_resources(
        [resource, endpoint("http://study-level/dw"), mado], dicomweb={"1.2.9": "http://archive/dw"}
    )
    assert frame["dicomweb_url"].tolist() == [
        "http://archive/dw/studies/1.2.3/series/1.2.3.1",
        "http://study-level/dw/studies/1.2.3/series/1.2.3.2",
    ]
    assert frame["endpoint_convention"].tolist() == ["mado", "fhir-core"]
    # an unknown placeholder resolves to nothing rather than to a wrong server
    frame = flatten_resources([resource, endpoint("urn:x:placeholder"), mado])
    assert frame["dicomweb_url"].isna().all()


def test_smart_contained_endpoint_capability_url_and_non_wado_skipped() -> None:
    resource = study(
        contained=[
            endpoint(
                "https://cap.example/abc",
                "ep",
                extension=[
                    {
                        "url": "http://fhir.org/argonaut/smart-imaging/StructureDefinition/requires-access-token",
                        "valueBoolean": False,
                    }
                ],
            )
        ]
    )
    resource["endpoint"] = [{"reference": "Endpoint/viewer"}, {"reference": "#ep"}]
    viewer = endpoint("http://viewer/", "viewer", connectionType={"code": "ihe-iid"})
    frame = flatten_resources([resource, viewer])
    assert frame["dicomweb_url"].iloc[0].startswith("https://cap.example/abc/studies/1.2.3")
    assert (
        frame["dicomweb_requires_token"].iloc[0] is False
        or not frame["dicomweb_requires_token"].iloc[0]
    )
    assert not pd.isna(frame["dicomweb_requires_token"].iloc[0])


def test_configured_dicomweb_overrides_endpoints() -> None:
    frame = flatten_resources(
        [study(), endpoint("http://elsewhere/dw")], dicomweb="http://mine/dw/"
    )
    assert frame["dicomweb_url"].iloc[0] == "http://mine/dw/studies/1.2.3/series/1.2.3.1"
    assert frame["endpoint_convention"].iloc[0] == "configured"


def test_unreadable_pages_raise_fhir_error_naming_the_element() -> None:
    with pytest.raises(FHIRError, match="numberOfSeries"):
        flatten(
            [
                json.dumps(
                    {
                        "resourceType": "Bundle",
                        "entry": [
                            {"resource": {"resourceType": "ImagingStudy", "numberOfSeries": "six"}}
                        ],
                    }
                ).encode()
            ]
        )
    with pytest.raises(FHIRError, match="Bundle"):
        flatten([b'{"resourceType": "OperationOutcome"}'])
    with pytest.raises(FHIRError):
        flatten([b"<html>not json</html>"])


def test_same_facts_as_json_normalize_on_benchmark_data() -> None:
    pages = make_pages(300, seed=5)
    ours = flatten(pages)
    theirs = with_json_normalize_meta(pages)
    assert len(ours) == len(theirs)
    assert ours["SeriesInstanceUID"].tolist() == theirs["series.uid"].tolist()
    assert ours["StudyInstanceUID"].tolist() == theirs["StudyInstanceUID"].tolist()
    assert ours["AccessionNumber"].tolist() == theirs["AccessionNumber"].tolist()
    assert ours["Modality"].astype(str).tolist() == theirs["series.modality.code"].tolist()
    assert (
        ours["NumberOfSeriesRelatedInstances"].tolist()
        == theirs["series.numberOfInstances"].tolist()
    )
    assert (
        ours["study_started"].dt.tz_localize(None) == theirs["StudyDate"].dt.tz_localize(None)
    ).all()
