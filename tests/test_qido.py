"""QIDO-RS against the embedded store over real HTTP (PS3.18 §10.6, PS3.4 §C.2.2.2)."""

from __future__ import annotations

import random
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from pydicom.uid import generate_uid
from store_server import UID_ROOT, StoreServer, make_instance, write_instances

TIMEOUT = 30
DICOM_JSON = "application/dicom+json"


def _uid() -> str:
    return generate_uid(prefix=UID_ROOT)


@dataclass
class Cohort:
    """Four studies built to exercise every matching rule."""

    s1: str  # Doe^John, 2020-01-15 10:15, CT (3) + MR (2)
    s2: str  # Smith^Jane, 2021-06-20 08:30, MR (1)
    s3: str  # Müller^Jürgen, 2019-12-31 23:59:59, CT (2)
    s4: str  # O'Brien^Pat, 2020-01-01, no time, OT (1)
    s1_ct: str
    s1_mr: str
    s1_ct_sops: list[str]


def _write_cohort(root: Path) -> Cohort:
    s1, s2, s3, s4 = (_uid() for _ in range(4))
    s1_ct, s1_mr, s2_mr, s3_ct, s4_ot = (_uid() for _ in range(5))
    # not indexed: an instance-, a study- and a series-level attribute (PS3.3 A.1.2)
    common = {
        "ConvolutionKernel": "B70f",
        "AdditionalPatientHistory": "ex-smoker",
        "OperatorsName": "Op^One",
    }
    datasets = [
        *(
            make_instance(study=s1, series=s1_ct, instance_number=n, series_number=1, **common)
            for n in (3, 1, 2)
        ),
        *(
            make_instance(
                study=s1,
                series=s1_mr,
                modality="MR",
                instance_number=n,
                series_number=2,
                series_description="T2 axial",
            )
            for n in (1, 2)
        ),
        make_instance(
            study=s2,
            series=s2_mr,
            modality="MR",
            patient_name="Smith^Jane^^^",
            patient_id="P2",
            study_date="20210620",
            study_time="083000",
            accession="ACC2",
            study_description="MR BRAIN",
            PatientSex="F",
        ),
        *(
            make_instance(
                study=s3,
                series=s3_ct,
                patient_name="Müller^Jürgen",
                patient_id="P3",
                study_date="20191231",
                study_time="235959",
                accession="ACC3",
                study_description="CT ABDOMEN",
                instance_number=n,
            )
            for n in (1, 2)
        ),
        make_instance(
            study=s4,
            series=s4_ot,
            modality="OT",
            patient_name="O'Brien^Pat",
            patient_id="P4",
            study_date="20200101",
            study_time="",
            accession="X-9",
            study_description="Desc [x]",
        ),
    ]
    write_instances(root / "cohort", datasets)
    s1_ct_sops = [ds.SOPInstanceUID for ds in sorted(datasets[:3], key=lambda d: d.InstanceNumber)]
    return Cohort(s1, s2, s3, s4, s1_ct, s1_mr, s1_ct_sops)


@pytest.fixture(scope="module")
def cohort_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Generator[tuple[StoreServer, Cohort], None, None]:
    tmp = tmp_path_factory.mktemp("qido")
    cohort = _write_cohort(tmp / "root")
    with StoreServer(tmp / "root", tmp / "data", max_query_limit=50) as server:
        yield server, cohort


@pytest.fixture
def server(cohort_server: tuple[StoreServer, Cohort]) -> StoreServer:
    return cohort_server[0]


@pytest.fixture
def cohort(cohort_server: tuple[StoreServer, Cohort]) -> Cohort:
    return cohort_server[1]


def get(server: StoreServer, path: str, **params: object) -> requests.Response:
    return requests.get(f"{server.url}{path}", params=params, timeout=TIMEOUT)  # type: ignore[arg-type]


def raw_get(server: StoreServer, target: str, **headers: str) -> requests.Response:
    """GET with the query string exactly as written (no re-encoding by requests)."""
    return requests.get(f"{server.url}{target}", headers=headers, timeout=TIMEOUT)


def values(items: list[dict], tag: str) -> list[object]:
    return [(item.get(tag, {}).get("Value") or [None])[0] for item in items]


def studies(server: StoreServer, **params: object) -> list[str]:
    response = get(server, "/studies", **params)
    assert response.status_code == 200, response.text
    return values(response.json(), "0020000D")  # type: ignore[return-value]


# --------------------------------------------------------------------------- results


def test_studies_have_the_required_attributes_in_date_order(
    server: StoreServer, cohort: Cohort
) -> None:
    response = get(server, "/studies")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith(DICOM_JSON)
    items = response.json()
    assert values(items, "0020000D") == [cohort.s3, cohort.s4, cohort.s1, cohort.s2]
    s1 = items[2]
    required = {
        "00080020": "20200115",  # StudyDate
        "00080030": "101500",  # StudyTime
        "00080050": "ACC1",  # AccessionNumber
        "00080056": "ONLINE",  # InstanceAvailability
        "00080090": {"Alphabetic": "Ref^Doctor"},  # ReferringPhysicianName
        "00100010": {"Alphabetic": "Doe^John"},  # PatientName
        "00100020": "P1",  # PatientID
        "00100030": "19700101",  # PatientBirthDate
        "00100040": "M",  # PatientSex
        "00200010": "1",  # StudyID
        "00081030": "CT CHEST",  # StudyDescription
        "00201206": 2,  # NumberOfStudyRelatedSeries
        "00201208": 5,  # NumberOfStudyRelatedInstances
    }
    for tag, expected in required.items():
        assert s1[tag]["Value"] == [expected], tag
    assert s1["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}  # ModalitiesInStudy
    assert s1["00081190"]["Value"] == [f"{server.url}/studies/{cohort.s1}"]  # RetrieveURL
    assert "00080018" not in s1 and "0020000E" not in s1  # no lower-level attributes


def test_series_and_instances_carry_their_level_and_parents(
    server: StoreServer, cohort: Cohort
) -> None:
    series = get(server, "/series", Modality="MR").json()
    assert len(series) == 2
    mr = next(s for s in series if s["0020000D"]["Value"] == [cohort.s1])
    assert mr["0020000E"]["Value"] == [cohort.s1_mr]
    assert mr["00201209"]["Value"] == [2]  # NumberOfSeriesRelatedInstances
    assert mr["00200011"]["Value"] == [2]  # SeriesNumber
    assert mr["0008103E"]["Value"] == ["T2 axial"]
    assert mr["00100020"]["Value"] == ["P1"]  # /series also returns study attributes
    nested = get(server, f"/studies/{cohort.s1}/series").json()
    assert values(nested, "0020000E") == [cohort.s1_ct, cohort.s1_mr]
    assert nested[0]["00100020"]["Value"] == ["P1"]  # with the study's attributes too
    instances = get(server, f"/studies/{cohort.s1}/series/{cohort.s1_ct}/instances").json()
    assert values(instances, "00080018") == cohort.s1_ct_sops  # by InstanceNumber
    first = instances[0]
    for tag, expected in {
        "00080016": "1.2.840.10008.5.1.4.1.1.2",
        "00200013": 1,
        "00280010": 4,
        "00280011": 4,
        "00280100": 16,
    }.items():
        assert first[tag]["Value"] == [expected], tag
    assert first["00081190"]["Value"] == [
        f"{server.url}/studies/{cohort.s1}/series/{cohort.s1_ct}/instances/{cohort.s1_ct_sops[0]}"
    ]
    in_study = get(server, f"/studies/{cohort.s1}/instances").json()
    assert len(in_study) == 5 and values(in_study, "0020000E")[:3] == [cohort.s1_ct] * 3
    everything = get(server, "/instances").json()
    assert len(everything) == 9
    assert everything[0]["00100010"]["Value"] == [{"Alphabetic": "Müller^Jürgen"}]


def test_empty_result_is_200_with_an_empty_array(server: StoreServer) -> None:
    response = get(server, "/studies", PatientID="nobody")
    assert (response.status_code, response.json()) == (200, [])
    assert response.headers["Content-Type"].startswith(DICOM_JSON)


# --------------------------------------------------------------------------- matching


def test_single_value_matching_by_keyword_or_tag(server: StoreServer, cohort: Cohort) -> None:
    assert studies(server, PatientID="P2") == [cohort.s2]
    assert studies(server, **{"00100020": "P2"}) == [cohort.s2]
    assert studies(server, AccessionNumber="X-9") == [cohort.s4]
    assert studies(server, PatientSex="F") == [cohort.s2]
    assert studies(server, PatientID="p2") == []  # not PN: case-sensitive


def test_uid_list_matching(server: StoreServer, cohort: Cohort) -> None:
    both = {cohort.s1, cohort.s2}
    assert set(studies(server, StudyInstanceUID=f"{cohort.s1},{cohort.s2}")) == both
    assert set(studies(server, StudyInstanceUID=f"{cohort.s2}\\{cohort.s1}")) == both
    sop = cohort.s1_ct_sops[1]
    found = get(server, "/instances", SOPInstanceUID=sop).json()
    assert values(found, "00080018") == [sop]


def test_wildcard_matching(server: StoreServer, cohort: Cohort) -> None:
    assert studies(server, PatientName="Doe*") == [cohort.s1]
    assert studies(server, PatientName="*oe^J?hn") == [cohort.s1]
    assert studies(server, PatientName="doe*") == [cohort.s1]  # PN ignores case
    assert studies(server, PatientName="MÜLLER*") == [cohort.s3]  # beyond ASCII too
    assert studies(server, StudyDescription="CT*") == [cohort.s3, cohort.s1]
    assert studies(server, StudyDescription="ct*") == []  # other VRs keep case
    assert studies(server, AccessionNumber="ACC?") == [cohort.s3, cohort.s1, cohort.s2]
    assert studies(server, StudyDescription="Desc [x]") == [cohort.s4]  # [ is literal
    assert studies(server, StudyDescription="Desc [*") == [cohort.s4]
    assert len(studies(server, PatientName="*")) == 4  # universal matching
    assert len(studies(server, PatientName="")) == 4


def test_person_names_ignore_trailing_empty_components(server: StoreServer, cohort: Cohort) -> None:
    assert studies(server, PatientName="Smith^Jane") == [cohort.s2]
    assert studies(server, PatientName="smith^jane^") == [cohort.s2]
    assert studies(server, PatientName="Smith") == []  # literal: the whole name


def test_date_and_time_range_matching(server: StoreServer, cohort: Cohort) -> None:
    assert studies(server, StudyDate="20200115") == [cohort.s1]
    assert studies(server, StudyDate="20200101-20201231") == [cohort.s4, cohort.s1]
    assert studies(server, StudyDate="-20200101") == [cohort.s3, cohort.s4]
    assert studies(server, StudyDate="20210101-") == [cohort.s2]
    assert studies(server, StudyTime="1000-1100") == [cohort.s1]
    assert studies(server, StudyTime="23") == [cohort.s3]  # the whole hour
    assert studies(server, StudyTime="-0900") == [cohort.s2]
    both = studies(server, StudyDate="2020-2021".replace("-", "0101-") + "1231")
    assert both == [cohort.s4, cohort.s1, cohort.s2]
    assert studies(server, PatientBirthDate="19700101") == studies(server)


def test_date_and_time_together_match_as_one_date_time(server: StoreServer, cohort: Cohort) -> None:
    """PS3.4 C.2.2.2.5.1 combined date-time range matching (asked of QIDO by PS3.18 §8.3.4.1).

    s3 is 2019-12-31 23:59:59, s4 2020-01-01 without a time, s1 2020-01-15 10:15:00.
    """
    # over midnight: matching each attribute alone would find nothing here; s4 has no
    # time, so no date-time to match
    assert studies(server, StudyDate="20191231-20200101", StudyTime="2300-0100") == [cohort.s3]
    assert studies(server, StudyDate="20191231-20200115", StudyTime="235959.5-1015") == [
        cohort.s1,  # 10:15 covers 10:15:00–10:15:59.999999; s3's 23:59:59.0 is too early
    ]
    assert studies(server, StudyDate="20191231-20200115", StudyTime="235959-1015") == [
        cohort.s3,
        cohort.s1,
    ]
    assert studies(server, StudyDate="20200115-", StudyTime="1016-") == [cohort.s2]
    assert studies(server, StudyDate="20200115-", StudyTime="1015-") == [cohort.s1, cohort.s2]
    assert studies(server, StudyDate="-20200115", StudyTime="-1014") == [cohort.s3]
    assert studies(server, StudyDate="20200115", StudyTime="10") == [cohort.s1]
    assert studies(server, StudyDate="20200115", StudyTime="11") == []
    by_tag = raw_get(server, "/studies?00080020=20191231-20200101&00080030=2300-0100")
    assert values(by_tag.json(), "0020000D") == [cohort.s3]
    # a universal time leaves the date to ordinary range matching
    assert studies(server, StudyDate="20191231-20200101", StudyTime="*") == [cohort.s3, cohort.s4]
    no_series_time = get(server, "/series", SeriesDate="20191231-", SeriesTime="2300-")
    assert no_series_time.json() == []  # the files have a SeriesDate but no SeriesTime
    items = get(server, "/studies", StudyDate="20200115", StudyTime="10").json()
    assert items[0]["00080030"]["Value"] == ["101500"]  # matching keys come back


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"StudyDate": "20200102", "StudyTime": "2300-0100"}, "StudyTime"),
        ({"StudyDate": "20200102-20200101", "StudyTime": "10"}, "StudyDate"),
        ({"StudyDate": "2020-01-01", "StudyTime": "10"}, "StudyDate"),
        ({"StudyDate": "20200101", "StudyTime": "25"}, "StudyTime"),
        ({"StudyDate": "20200101-", "StudyTime": "1x"}, "StudyTime"),
        ({"SeriesDate": "20200101--", "SeriesTime": "10"}, "SeriesDate"),
        (
            {"StudyDate": "20200101,20200102", "StudyTime": "10", "multiplevaluematching": "true"},
            "StudyDate",
        ),
    ],
)
def test_malformed_combined_date_times_get_400_naming_the_value(
    server: StoreServer, params: dict[str, str], named: str
) -> None:
    response = get(server, "/studies", **params)
    assert response.status_code == 400, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    detail = response.json()["detail"]
    assert named in detail
    assert params[named][:8] in detail


def test_lower_level_keys_filter_higher_levels(server: StoreServer, cohort: Cohort) -> None:
    assert studies(server, Modality="MR") == [cohort.s1, cohort.s2]
    assert studies(server, ModalitiesInStudy="MR") == [cohort.s1, cohort.s2]
    assert studies(server, ModalitiesInStudy="CT\\OT") == [cohort.s3, cohort.s4, cohort.s1]
    assert studies(server, SeriesDescription="T2*") == [cohort.s1]
    assert studies(server, SOPInstanceUID=cohort.s1_ct_sops[0]) == [cohort.s1]
    assert studies(server, SOPClassesInStudy="1.2.840.10008.5.1.4.1.1.4") == [cohort.s1, cohort.s2]
    series = get(server, "/series", InstanceNumber="3").json()
    assert values(series, "0020000E") == [cohort.s1_ct]


def test_multiple_value_matching(server: StoreServer, cohort: Cohort) -> None:
    assert studies(server, PatientID="P2,P4", multiplevaluematching="true") == [
        cohort.s4,
        cohort.s2,
    ]
    assert studies(server, PatientID="P2,P4") == []  # without it the comma is literal


def test_fuzzy_matching_of_person_names(server: StoreServer, cohort: Cohort) -> None:
    assert studies(server, PatientName="joh", fuzzymatching="true") == [cohort.s1]
    assert studies(server, PatientName="jane smi", fuzzymatching="true") == [cohort.s2]
    assert studies(server, PatientName="jürg", fuzzymatching="true") == [cohort.s3]
    assert studies(server, PatientName="joh", fuzzymatching="false") == []
    assert studies(server, PatientName="joh") == []


def test_percent_encoded_values_are_decoded(server: StoreServer, cohort: Cohort) -> None:
    response = raw_get(server, "/studies?PatientName=Doe%5EJ%2A&00100020=P1")
    assert values(response.json(), "0020000D") == [cohort.s1]


# --------------------------------------------------------------------------- includefield


def test_includefield_by_keyword_tag_list_and_repeat(server: StoreServer, cohort: Cohort) -> None:
    response = raw_get(
        server,
        f"/studies?StudyInstanceUID={cohort.s1}&includefield=ConvolutionKernel,00180015"
        "&includefield=SOPClassesInStudy",
    )
    (item,) = response.json()
    assert item["00181210"]["Value"] == ["B70f"]  # from the study's first instance
    assert item["00180015"]["Value"] == ["CHEST"]
    assert item["00080062"]["Value"] == [
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.840.10008.5.1.4.1.1.4",
    ]


def test_includefield_all_returns_the_whole_instance_header(
    server: StoreServer, cohort: Cohort
) -> None:
    response = get(
        server, f"/studies/{cohort.s1}/series/{cohort.s1_ct}/instances", includefield="all"
    )
    first = response.json()[0]
    assert first["00181210"]["Value"] == ["B70f"]  # ConvolutionKernel: not indexed
    assert first["00280101"]["Value"] == [12]  # BitsStored
    assert "7FE00010" not in first  # no bulk data in QIDO


def test_includefield_all_at_study_and_series_level_returns_the_level_attributes(
    server: StoreServer, cohort: Cohort
) -> None:
    """PS3.18 §8.3.4.3 / Tables 10.6.3-3 and -4: all attributes of the level, from the files."""
    plain = get(server, "/studies", StudyInstanceUID=cohort.s1).json()[0]
    (study,) = get(server, "/studies", StudyInstanceUID=cohort.s1, includefield="all").json()
    assert "001021B0" not in plain  # not a default return attribute
    assert study["001021B0"]["Value"] == ["ex-smoker"]  # AdditionalPatientHistory (Patient Study)
    assert study["00080062"]["Value"]  # SOPClassesInStudy is computed
    for lower in ("00181210", "00081070", "00080018", "00280010"):  # kernel, operator, SOP, Rows
        assert lower not in study, lower
    assert set(plain) <= set(study)
    (series,) = get(
        server, f"/studies/{cohort.s1}/series", SeriesInstanceUID=cohort.s1_ct, includefield="all"
    ).json()
    assert series["00081070"]["Value"] == [{"Alphabetic": "Op^One"}]  # OperatorsName
    assert series["001021B0"]["Value"] == ["ex-smoker"]  # the study's, above
    assert "00181210" not in series and "00080018" not in series
    named = get(
        server, "/studies", StudyInstanceUID=cohort.s1, includefield="all,ConvolutionKernel"
    ).json()[0]
    assert named["00181210"]["Value"] == ["B70f"]  # named explicitly: still returned


def test_includefield_all_reads_a_changed_file_again(tmp_path: Path) -> None:
    study, series = _uid(), _uid()
    (path,) = write_instances(
        tmp_path / "root",
        [make_instance(study=study, series=series, AdditionalPatientHistory="first")],
    )
    with StoreServer(tmp_path / "root", tmp_path / "data") as server:
        first = get(server, "/studies", includefield="all").json()[0]
        assert first["001021B0"]["Value"] == ["first"]
        ds = pydicom.dcmread(path)
        ds.AdditionalPatientHistory = "second, longer"
        ds.save_as(path, enforce_file_format=True)
        again = get(server, "/studies", includefield="all").json()[0]
        assert again["001021B0"]["Value"] == ["second, longer"]


def test_includefield_survives_a_file_that_vanished_after_indexing(tmp_path: Path) -> None:
    study, series = _uid(), _uid()
    paths = write_instances(
        tmp_path / "root",
        [make_instance(study=study, series=series, instance_number=n) for n in (1, 2)],
    )
    with StoreServer(tmp_path / "root", tmp_path / "data") as server:
        paths[0].unlink()
        response = get(server, "/instances", includefield="all")
        assert response.status_code == 200
        assert len(response.json()) == 2  # the index still lists it until the next scan


def test_matching_keys_are_returned(server: StoreServer, cohort: Cohort) -> None:
    (item,) = get(server, "/studies", PatientID="P2", SeriesDescription="", Manufacturer="").json()
    assert item["00100020"]["Value"] == ["P2"]


# --------------------------------------------------------------------------- paging


def test_limit_and_offset_page_deterministically(server: StoreServer) -> None:
    everything = values(get(server, "/instances").json(), "00080018")
    pages = []
    for offset in range(0, 12, 4):
        response = get(server, "/instances", limit=4, offset=offset)
        assert response.status_code == 200
        pages.extend(values(response.json(), "00080018"))
    assert pages == everything
    assert get(server, "/instances", offset=100).json() == []


def test_a_page_cut_short_says_so_in_a_warning(server: StoreServer) -> None:
    response = get(server, "/instances", limit=2)
    assert len(response.json()) == 2
    assert response.headers["Warning"].startswith("299 ")
    assert "Additional results" in response.headers["Warning"]
    assert "Warning" not in get(server, "/instances", limit=9).headers


@pytest.mark.parametrize("limit", [str(10**12), "9" * 5000])
def test_absurd_limit_is_capped_with_a_warning(server: StoreServer, limit: str) -> None:
    response = raw_get(server, f"/instances?limit={limit}")
    assert response.status_code == 200
    assert len(response.json()) == 9
    assert "exceeds the maximum of 50" in response.headers["Warning"]


def test_absurd_offset_is_an_empty_page(server: StoreServer) -> None:
    response = raw_get(server, "/instances?offset=" + "9" * 40)
    assert (response.status_code, response.json()) == (200, [])


def test_dicomweb_client_pages_to_the_end(server: StoreServer, cohort: Cohort) -> None:
    client = DICOMwebClient(server.url)
    found = client.search_for_instances(limit=2, get_remaining=True)
    assert len(found) == 9
    s1 = client.search_for_studies(search_filters={"PatientName": "Doe*"}, fields=["00181210"])
    assert [s["0020000D"]["Value"][0] for s in s1] == [cohort.s1]
    assert s1[0]["00181210"]["Value"] == ["B70f"]
    series = client.search_for_series(cohort.s1, search_filters={"Modality": "CT"})
    assert [s["0020000E"]["Value"][0] for s in series] == [cohort.s1_ct]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("target", "named"),
    [
        ("/studies/not-a-uid/series", "not-a-uid"),
        ("/studies?StudyInstanceUID=1.2.abc", "StudyInstanceUID"),
        ("/studies?StudyDate=20201301", "StudyDate"),
        ("/studies?StudyDate=2020-01-01", "StudyDate"),
        ("/studies?StudyDate=-", "StudyDate"),
        ("/studies?StudyTime=2500", "StudyTime"),
        ("/studies?limit=-1", "limit"),
        ("/studies?limit=0", "limit"),
        ("/studies?limit=ten", "limit"),
        ("/studies?offset=x", "offset"),
        ("/studies?offset=-5", "offset"),
        ("/studies?limit=%EF%BC%95", "limit"),  # a full-width digit
        ("/studies?NoSuchAttribute=1", "NoSuchAttribute"),
        ("/studies?includefield=Bogus", "Bogus"),
        ("/studies?fuzzymatching=maybe", "fuzzymatching"),
        ("/studies?ReferencedImageSequence=1", "ReferencedImageSequence"),
        ("/studies?InstanceNumber=one", "InstanceNumber"),
        ("/studies?NumberOfStudyRelatedSeries=2", "NumberOfStudyRelatedSeries"),
        ("/studies?ContrastBolusAgent=x", "ContrastBolusAgent"),
        ("/instances?includefield=" + ",".join(["PatientID"] * 501), "includefield"),
        ("/studies?limit=1&limit=2", "limit"),
        ("/studies?StudyInstanceUID=,", "StudyInstanceUID"),
        ("/studies?SOPClassesInStudy=%5C", "SOPClassesInStudy"),
        ("/studies?PatientID=,&multiplevaluematching=true", "PatientID"),
    ],
)
def test_malformed_queries_get_400_naming_the_parameter(
    server: StoreServer, target: str, named: str
) -> None:
    response = raw_get(server, target)
    assert response.status_code == 400, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert named in response.json()["detail"]


def test_unknown_uids_in_nested_paths_get_404(server: StoreServer, cohort: Cohort) -> None:
    assert get(server, "/studies/1.2.3.4/series").status_code == 404
    assert get(server, "/studies/1.2.3.4/instances").status_code == 404
    response = get(server, f"/studies/{cohort.s1}/series/{cohort.s2}/instances")
    assert response.status_code == 404
    assert cohort.s2 in response.json()["detail"]


def test_accept_negotiation(server: StoreServer) -> None:
    def accept(value: str) -> requests.Response:
        return raw_get(server, "/studies", Accept=value)

    assert accept("application/dicom+json").headers["Content-Type"].startswith(DICOM_JSON)
    assert accept("application/json").headers["Content-Type"].startswith("application/json")
    assert accept("text/html, */*;q=0.1").status_code == 200
    refused = accept('multipart/related; type="application/dicom+xml"')
    assert refused.status_code == 406
    assert "application/dicom+json" in refused.json()["detail"]
    assert accept("application/dicom+json;q=0, image/png").status_code == 406


def test_empty_value_matching_is_declined_with_a_warning(server: StoreServer) -> None:
    response = get(server, "/studies", emptyvaluematching="true")
    assert response.status_code == 200
    assert "emptyvaluematching parameter is not supported" in response.headers["Warning"]


def test_cors_for_browser_viewers(server: StoreServer) -> None:
    response = get(server, "/studies")
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Warning" in response.headers["Access-Control-Expose-Headers"]
    preflight = requests.options(
        f"{server.url}/studies",
        headers={
            "Origin": "http://viewer.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "accept",
        },
        timeout=TIMEOUT,
    )
    assert preflight.status_code == 204
    assert "GET" in preflight.headers["Access-Control-Allow-Methods"]


def test_the_store_keeps_serving_after_bad_requests(server: StoreServer) -> None:
    bad = [
        "/studies?StudyDate=garbage",
        "/studies/%00%ff/series",
        "/studies?PatientName=%ff%fe",
        "/instances?limit=1e9",
        "/series?includefield=" + ",".join(f"{i:08X}" for i in range(0x00100000, 0x00100300)),
    ]
    for target in bad * 3:
        assert 400 <= raw_get(server, target).status_code < 500
    assert get(server, "/studies").status_code == 200


def test_random_queries_never_fail_on_the_server(server: StoreServer) -> None:
    """Generated junk and edge-case queries get 200 or 400, never a server error."""
    rng = random.Random(7)
    keys = [
        "PatientName",
        "PatientID",
        "StudyDate",
        "StudyTime",
        "StudyInstanceUID",
        "Modality",
        "00100020",
        "ModalitiesInStudy",
        "InstanceNumber",
        "Rows",
        "ImageType",
        "PixelSpacing",
        "AcquisitionDate",
        "includefield",
        "limit",
        "offset",
        "fuzzymatching",
        "Bogus",
        "0010",
        "multiplevaluematching",
        "SOPClassesInStudy",
        "ReferencedImageSequence",
        "00091010",
    ]
    alphabet = "0123456789.-*?^=,\\[]%az AZ\t'\"é漢"
    for _ in range(300):
        params = {}
        for _ in range(rng.randrange(1, 4)):
            value = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
            params[rng.choice(keys)] = value
        path = rng.choice(["/studies", "/series", "/instances"])
        response = get(server, path, **params)
        assert response.status_code in (200, 400), (path, params, response.text)
