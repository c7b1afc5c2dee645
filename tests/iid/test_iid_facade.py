"""The facade endpoint ``GET /iid/IHEInvokeImageDisplay`` against real servers.

Study lookups go to a private Orthanc (QIDO-RS) and Medplum's FHIR engine (FHIR R4
search) loaded with the same small corpus (``conftest.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import pytest
import requests
from iid_support import CORPUS, SYSTEM_A, AppServer, DicomwebProxy, fhir_resources
from servers import OrthancServer, free_port

from imagingkit.iid import IIDRequest
from imagingkit.iid.facade import IidFacade
from imagingkit.iid.viewers import (
    BuiltinAdapter,
    IIDAdapter,
    OHIFAdapter,
    ViewerRegistry,
    WeasisAdapter,
)

S1, S2, S3, S4 = (CORPUS[a].uid for a in ("ACC1", "ACC2", "ACC3", "ACC4"))
PATIENT_A = "IK-A001%5E%5E%5E%261.2.3.4.5%26ISO"  # IK-A001^^^&1.2.3.4.5&ISO


def iid(server: AppServer, query: str, **headers: str) -> requests.Response:
    return requests.get(
        f"{server.url}/iid/IHEInvokeImageDisplay?{query}",
        allow_redirects=False,
        timeout=60,
        headers=headers,
    )


def closed_url(path: str) -> str:
    """A loopback URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}/{path}"


@pytest.fixture(scope="module")
def medplum() -> Generator[Any, None, None]:
    """Medplum's FHIR engine holding the corpus's Patients and ImagingStudies."""
    from medplum.launcher import medplum_missing_reason, put_bundles, start_medplum

    reason = medplum_missing_reason()
    if reason:
        pytest.skip(reason)
    server = start_medplum(max_old_space_mb=1024)
    try:
        put_bundles(server, fhir_resources())
        yield server
    finally:
        server.stop()


@pytest.fixture
def facade_with(
    serve_app: Callable[..., AppServer],
) -> Callable[..., AppServer]:
    def start(**kwargs: Any) -> AppServer:
        return serve_app([IidFacade(**kwargs)])

    return start


# -- STUDY requests ---------------------------------------------------------------------


def test_study_request_redirects_to_the_builtin_viewer(
    facade_with: Callable[..., AppServer],
) -> None:
    server = facade_with()
    response = iid(server, f"requestType=STUDY&studyUID={S1},{S2}")
    assert response.status_code == 302
    assert response.headers["Location"] == f"/viewer/?study={S1},{S2}"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"


def test_the_redirect_follows_the_base_url(serve_app: Callable[..., AppServer]) -> None:
    server = serve_app([IidFacade()], base_url="/user/ann/imagingkit/")
    response = requests.get(
        f"{server.url}/user/ann/imagingkit/iid/IHEInvokeImageDisplay?requestType=STUDY&studyUID={S1}",
        allow_redirects=False,
        timeout=30,
    )
    assert response.headers["Location"] == f"/user/ann/imagingkit/viewer/?study={S1}"


@pytest.mark.orthanc
def test_accession_numbers_resolve_through_qido(
    facade_with: Callable[..., AppServer], iid_orthanc: OrthancServer
) -> None:
    server = facade_with(fhir_base=closed_url("fhir"), dicomweb_base=iid_orthanc.dicomweb)
    response = iid(server, "requestType=STUDY&accessionNumber=ACC2")
    assert response.status_code == 302, response.text
    assert response.headers["Location"] == f"/viewer/?study={S2}"
    both = iid(server, "requestType=STUDY&accessionNumber=ACC2,ACC1")
    assert both.headers["Location"] == f"/viewer/?study={S2},{S1}"


@pytest.mark.orthanc
def test_accession_numbers_of_different_patients_are_refused(
    facade_with: Callable[..., AppServer], iid_orthanc: OrthancServer
) -> None:
    server = facade_with(dicomweb_base=iid_orthanc.dicomweb)
    response = iid(server, "requestType=STUDY&accessionNumber=ACC2,ACC4")
    assert response.status_code == 409
    assert "match studies of 2 different patients" in response.text
    assert "Location" not in response.headers


@pytest.mark.orthanc
def test_same_server_lookups_ignore_the_host_header(
    serve_app: Callable[..., AppServer], iid_orthanc: OrthancServer
) -> None:
    # no bases configured: lookups go to this server's own /dicom-web, reached on the
    # address the request came in on, never on the Host a client claims
    server = serve_app([DicomwebProxy(iid_orthanc.dicomweb), IidFacade(timeout=10)])
    response = requests.get(
        f"{server.url}/iid/IHEInvokeImageDisplay?requestType=STUDY&accessionNumber=ACC2",
        headers={"Host": "evil.example:9"},
        allow_redirects=False,
        timeout=60,
    )
    assert response.status_code == 302, response.text
    assert response.headers["Location"] == f"/viewer/?study={S2}"


@pytest.mark.orthanc
def test_credentials_go_with_same_server_lookups_only(
    serve_app: Callable[..., AppServer], iid_orthanc: OrthancServer
) -> None:
    guarded = DicomwebProxy(iid_orthanc.dicomweb, token="t0ken")
    query = "/iid/IHEInvokeImageDisplay?requestType=STUDY&accessionNumber=ACC2"
    auth = {"Authorization": "Bearer t0ken"}
    same = serve_app([guarded, IidFacade(timeout=10)])
    response = requests.get(same.url + query, headers=auth, allow_redirects=False, timeout=60)
    assert response.status_code == 302, response.text
    assert guarded.seen[-1]["Authorization"] == "Bearer t0ken"
    # the same DICOMweb configured as another server: the caller's token stays home
    other = serve_app([IidFacade(dicomweb_base=f"{same.url}/dicom-web", timeout=10)])
    response = requests.get(other.url + query, headers=auth, allow_redirects=False, timeout=60)
    assert response.status_code == 502
    assert "Authorization" not in guarded.seen[-1]


@pytest.mark.orthanc
def test_an_unknown_accession_number_is_404(
    facade_with: Callable[..., AppServer], iid_orthanc: OrthancServer
) -> None:
    server = facade_with(dicomweb_base=iid_orthanc.dicomweb)
    response = iid(server, "requestType=STUDY&accessionNumber=NOPE")
    assert response.status_code == 404
    assert "no imaging study was found for this accession number" in response.text
    assert response.headers["Content-Type"].startswith("text/html")


# -- PATIENT requests through FHIR ---------------------------------------------------------


@pytest.mark.orthanc
@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ("", [S3, S2, S1]),
        ("&lowerDateTime=2021-01-01T00:00:00Z", [S3, S2]),
        ("&lowerDateTime=2021-01-01T00:00:00Z&upperDateTime=2021-12-31T23:59:59Z", [S2]),
        # inclusive bounds, to the second
        ("&lowerDateTime=2021-03-10T09:00:00Z&upperDateTime=2021-03-10T09:00:00Z", [S2]),
        ("&upperDateTime=2021-03-10T08:59:59Z", [S1]),
        ("&modalitiesInStudy=CT", [S3, S1]),
        ("&modalitiesInStudy=MR,CT&mostRecentResults=2", [S3, S2]),
        ("&mostRecentResults=1", [S3]),
        ("&patientBirthDate=1970-01-31&patientName=Alpha%5EAnn", [S3, S2, S1]),
    ],
)
def test_patient_requests_resolve_through_fhir_imagingstudy_search(
    facade_with: Callable[..., AppServer],
    medplum: Any,
    iid_orthanc: OrthancServer,
    filters: str,
    expected: list[str],
) -> None:
    # QIDO would also find patient A's studies; the closed DICOMweb port proves FHIR did
    server = facade_with(fhir_base=medplum.url, dicomweb_base=closed_url("dicom-web"))
    response = iid(server, f"requestType=PATIENT&patientID={PATIENT_A}{filters}")
    assert response.status_code == 302, response.text
    assert response.headers["Location"] == f"/viewer/?study={','.join(expected)}"


def test_the_fhir_search_uses_the_identifier_system(medplum: Any) -> None:
    # the same value under another system is another patient
    bundle = medplum.get(f"Patient?identifier={SYSTEM_A}|IK-A001").json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["pat-a"]


@pytest.mark.orthanc
def test_a_patient_missing_from_fhir_falls_back_to_qido(
    facade_with: Callable[..., AppServer], medplum: Any, iid_orthanc: OrthancServer
) -> None:
    server = facade_with(fhir_base=medplum.url, dicomweb_base=iid_orthanc.dicomweb)
    response = iid(server, "requestType=PATIENT&patientID=IK-B002")
    assert response.status_code == 302, response.text
    assert response.headers["Location"] == f"/viewer/?study={S4}"


@pytest.mark.orthanc
def test_without_fhir_qido_resolves_and_honours_the_issuer(
    facade_with: Callable[..., AppServer], iid_orthanc: OrthancServer
) -> None:
    server = facade_with(fhir_base=closed_url("fhir"), dicomweb_base=iid_orthanc.dicomweb)
    # IK-A001 of issuer OTHER (study 5) is another person and must not be shown
    response = iid(server, "requestType=PATIENT&patientID=IK-A001%5E%5E%5EIKTEST")
    assert response.headers["Location"] == f"/viewer/?study={S3},{S2},{S1}"
    ranged = iid(
        server,
        "requestType=PATIENT&patientID=IK-A001%5E%5E%5EIKTEST&modalitiesInStudy=CT"
        "&lowerDateTime=2020-01-05T10:15:00Z&upperDateTime=2022-07-20T14:29:59Z",
    )
    assert ranged.headers["Location"] == f"/viewer/?study={S1}"


@pytest.mark.orthanc
def test_an_ambiguous_patient_id_is_refused_not_guessed(
    facade_with: Callable[..., AppServer], medplum: Any, iid_orthanc: OrthancServer
) -> None:
    server = facade_with(fhir_base=medplum.url, dicomweb_base=iid_orthanc.dicomweb)
    response = iid(server, "requestType=PATIENT&patientID=IK-A001")
    assert response.status_code == 409
    assert "assigning authority" in response.text
    # with a namespace FHIR cannot map, DICOM's IssuerOfPatientID decides
    named = iid(server, "requestType=PATIENT&patientID=IK-A001%5E%5E%5EIKTEST")
    assert named.headers["Location"] == f"/viewer/?study={S3},{S2},{S1}"


@pytest.mark.orthanc
def test_a_patient_with_no_study_is_404(
    facade_with: Callable[..., AppServer], medplum: Any, iid_orthanc: OrthancServer
) -> None:
    server = facade_with(fhir_base=medplum.url, dicomweb_base=iid_orthanc.dicomweb)
    for query in (
        "requestType=PATIENT&patientID=NOBODY",
        f"requestType=PATIENT&patientID={PATIENT_A}&patientBirthDate=1999-01-01",
        f"requestType=PATIENT&patientID={PATIENT_A}&lowerDateTime=2030-01-01T00:00:00Z",
    ):
        response = iid(server, query)
        assert response.status_code == 404, query
        assert "no imaging study was found for this patient" in response.text


def test_unreachable_servers_give_502_without_their_urls(
    facade_with: Callable[..., AppServer],
) -> None:
    server = facade_with(fhir_base=closed_url("fhir"), dicomweb_base=closed_url("dicom-web"))
    response = iid(server, "requestType=PATIENT&patientID=IK-A001")
    assert response.status_code == 502
    assert "could not look up" in response.text
    assert "IK-A001" not in response.text.split("could not look up", 1)[1]


# -- viewers, answers --------------------------------------------------------------------


def test_viewer_type_chooses_among_configured_viewers(
    facade_with: Callable[..., AppServer],
) -> None:
    registry = ViewerRegistry(
        {
            "builtin": BuiltinAdapter(),
            "ohif": OHIFAdapter("https://ohif.example"),
            "weasis": WeasisAdapter(),
        },
        "builtin",
    )
    server = facade_with(viewers=registry)
    ohif = iid(server, f"requestType=STUDY&studyUID={S1}&viewerType=ohif")
    assert ohif.headers["Location"] == f"https://ohif.example/viewer?StudyInstanceUIDs={S1}"
    generic = iid(server, f"requestType=STUDY&studyUID={S1}&viewerType=IHE_BIR")
    assert generic.headers["Location"] == f"/viewer/?study={S1}"
    weasis = iid(server, f"requestType=STUDY&studyUID={S1}&viewerType=weasis")
    # Weasis is told this server's DICOMweb, as the client addressed it
    expected = (
        "weasis://%24dicom%3Ars+--url+%22http%3A%2F%2F127.0.0.1%3A"
        f"{server.port}%2Fdicom-web%22+-r+%22studyUID%3D{S1}%22"
    )
    assert weasis.headers["Location"] == expected
    unknown = iid(server, f"requestType=STUDY&studyUID={S1}&viewerType=slicer")
    assert unknown.status_code == 400
    assert "viewer &#x27;slicer&#x27; is not configured here" in unknown.text


def test_iid_pass_through_forwards_patient_requests_without_lookup(
    facade_with: Callable[..., AppServer],
) -> None:
    registry = ViewerRegistry({"pacs": IIDAdapter("https://pacs.example/display")}, "pacs")
    server = facade_with(viewers=registry, fhir_base=closed_url("fhir"))
    response = iid(server, f"requestType=PATIENT&patientID={PATIENT_A}&mostRecentResults=1")
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location == (
        "https://pacs.example/display/IHEInvokeImageDisplay?requestType=PATIENT"
        f"&patientID={PATIENT_A}&mostRecentResults=1"
    )
    assert IIDRequest.from_url(location).most_recent_results == 1


def test_errors_come_as_problem_json_when_asked(facade_with: Callable[..., AppServer]) -> None:
    server = facade_with()
    response = iid(server, "requestType=STUDY", Accept="application/json")
    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["detail"] == (
        "requestType=STUDY needs exactly one of studyUID and accessionNumber (neither was given)"
    )


def test_the_error_page_is_readable_html(facade_with: Callable[..., AppServer]) -> None:
    server = facade_with()
    response = iid(server, "requestType=STUDY&studyUID=1.2.03")
    assert response.status_code == 400
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "<h1>400 Bad Request</h1>" in response.text
    assert "studyUID &#x27;1.2.03&#x27; is not a valid DICOM UID" in response.text
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]


def test_lenient_mode_is_a_facade_setting(facade_with: Callable[..., AppServer]) -> None:
    strict = facade_with()
    lenient = facade_with(lenient=True)
    query = "requesttype=STUDY&studyUID=1.2.03&seriesUID=1.2"
    assert iid(strict, query).status_code == 400
    assert iid(lenient, query).headers["Location"] == "/viewer/?study=1.2.03"
