"""The IID request model: parsing, serialising and validating RAD-106 requests."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from imagingkit.errors import (
    InvalidDateError,
    InvalidInputError,
    InvalidQueryError,
    InvalidUIDError,
)
from imagingkit.iid import IIDRequest, PatientID, RequestType

# -- STUDY -----------------------------------------------------------------------------


def test_study_request_parses_a_comma_separated_uid_list() -> None:
    request = IIDRequest.from_query(
        "requestType=STUDY&studyUID=1.2.840.113883.19.110.4,1.2.840.113883.19.110.5"
        "&viewerType=IHE_BIR&diagnosticQuality=true"
    )
    assert request.request_type is RequestType.STUDY
    assert request.study_uids == ("1.2.840.113883.19.110.4", "1.2.840.113883.19.110.5")
    assert request.viewer_type == "IHE_BIR"
    assert request.diagnostic_quality is True
    assert request.key_images_only is None


def test_study_request_by_accession_numbers() -> None:
    request = IIDRequest.from_query("requestType=STUDY&accessionNumber=1657271,A-99")
    assert request.accession_numbers == ("1657271", "A-99")
    assert request.study_uids == ()


def test_study_request_serialises_to_the_iid_url_and_back() -> None:
    request = IIDRequest.study(["1.2.3", "1.2.4"], key_images_only=False)
    url = request.to_url("https://pacs.example/iid")
    assert url == (
        "https://pacs.example/iid/IHEInvokeImageDisplay"
        "?requestType=STUDY&studyUID=1.2.3,1.2.4&keyImagesOnly=false"
    )
    assert IIDRequest.from_url(url) == request


def test_to_url_does_not_repeat_the_iid_path() -> None:
    request = IIDRequest.study("1.2.3")
    assert request.to_url("http://h/IHEInvokeImageDisplay") == (
        "http://h/IHEInvokeImageDisplay?requestType=STUDY&studyUID=1.2.3"
    )


@pytest.mark.parametrize(
    "endpoint", ["ftp://h/iid", "http://h/iid?x=1", "http://h/iid#f", "/relative/iid", "h/iid"]
)
def test_to_url_refuses_endpoints_that_are_not_bare_http_bases(endpoint: str) -> None:
    with pytest.raises(InvalidQueryError, match="IID endpoint"):
        IIDRequest.study("1.2.3").to_url(endpoint)


def test_both_study_uid_and_accession_number_are_refused() -> None:
    with pytest.raises(
        InvalidQueryError, match=r"exactly one of studyUID and accessionNumber \(both"
    ):
        IIDRequest.from_query("requestType=STUDY&studyUID=1.2.3&accessionNumber=A1")


def test_a_study_request_without_identifiers_is_refused() -> None:
    with pytest.raises(InvalidQueryError, match=r"\(neither was given\)"):
        IIDRequest.from_query("requestType=STUDY&viewerType=IHE_BIR")


@pytest.mark.parametrize(
    ("uid", "why"),
    [
        ("1.02.3", "leading zero"),
        ("1..2", "empty component"),
        ("1.2.", "trailing dot"),
        ("1." + "2" * 63, "65 characters"),
        ("1.2.3a", "letter"),
        ("javascript:alert(1)", "script"),
    ],
)
def test_strict_mode_refuses_malformed_uids_naming_them(uid: str, why: str) -> None:
    with pytest.raises(InvalidUIDError, match="studyUID") as info:
        IIDRequest.from_query(f"requestType=STUDY&studyUID={uid}")
    assert uid[:60] in str(info.value), why


def test_lenient_mode_accepts_the_odd_uids_real_archives_hold() -> None:
    odd = ["1.02.3", "1." + "2" * 100]
    request = IIDRequest.from_query(f"requestType=STUDY&studyUID={','.join(odd)}", lenient=True)
    assert request.study_uids == tuple(odd)
    # lenient still refuses anything but digits and dots
    with pytest.raises(InvalidUIDError):
        IIDRequest.from_query("requestType=STUDY&studyUID=1.2.3/..", lenient=True)


def test_accession_numbers_follow_dicom_sh_in_strict_mode() -> None:
    long = "A" * 17
    with pytest.raises(InvalidQueryError, match="at most 16"):
        IIDRequest.from_query(f"requestType=STUDY&accessionNumber={long}")
    assert IIDRequest.from_query(
        f"requestType=STUDY&accessionNumber={long}", lenient=True
    ).accession_numbers == (long,)
    with pytest.raises(InvalidQueryError, match="backslash"):
        IIDRequest.from_query("requestType=STUDY&accessionNumber=A%5CB")


def test_empty_list_items_are_refused_in_strict_mode_and_dropped_in_lenient_mode() -> None:
    with pytest.raises(InvalidQueryError, match="empty item"):
        IIDRequest.from_query("requestType=STUDY&studyUID=1.2.3,,1.2.4")
    lenient = IIDRequest.from_query("requestType=STUDY&studyUID=1.2.3,,%201.2.4%20", lenient=True)
    assert lenient.study_uids == ("1.2.3", "1.2.4")


def test_repeated_parameters_are_refused_strictly_and_merged_leniently() -> None:
    query = "requestType=STUDY&studyUID=1.2.3&studyUID=1.2.4"
    with pytest.raises(InvalidQueryError, match="more than once"):
        IIDRequest.from_query(query)
    assert IIDRequest.from_query(query, lenient=True).study_uids == ("1.2.3", "1.2.4")


def test_ohif_v2_semicolon_lists_are_not_iid() -> None:
    with pytest.raises(InvalidUIDError):
        IIDRequest.from_query("requestType=STUDY&studyUID=1.2.3;1.2.4")


def test_too_many_studies_are_refused() -> None:
    uids = ",".join(f"1.2.{i}" for i in range(101))
    with pytest.raises(InvalidQueryError, match="at most 100"):
        IIDRequest.from_query(f"requestType=STUDY&studyUID={uids}")


# -- PATIENT ---------------------------------------------------------------------------


def test_patient_request_parses_every_parameter() -> None:
    request = IIDRequest.from_query(
        "requestType=PATIENT&patientID=99998410%5E%5E%5E%261.2.3.4%26ISO"
        "&patientName=Doe%5EJohn&patientBirthDate=1970-01-31"
        "&lowerDateTime=2010-01-01T12:00:00Z&upperDateTime=2011-06-30T23:59:59%2B02:00"
        "&mostRecentResults=2&modalitiesInStudy=MR,XA&keyImagesOnly=false"
    )
    assert request.request_type is RequestType.PATIENT
    assert request.patient_id == PatientID("99998410", None, "1.2.3.4", "ISO")
    assert request.patient_name == "Doe^John"
    assert request.patient_birth_date == date(1970, 1, 31)
    assert request.lower_datetime == datetime(2010, 1, 1, 12, tzinfo=timezone.utc)
    assert request.upper_datetime == datetime(
        2011, 6, 30, 23, 59, 59, tzinfo=timezone(timedelta(hours=2))
    )
    assert request.most_recent_results == 2
    assert request.modalities_in_study == ("MR", "XA")
    assert request.key_images_only is False


def test_patient_request_round_trips_with_cx_delimiters_encoded() -> None:
    request = IIDRequest.patient(
        "12345^^^&1.2.3&ISO",
        patient_name="Doe^John",
        lower_datetime=datetime(2020, 1, 1, tzinfo=timezone.utc),
        modalities_in_study=("CT",),
    )
    query = request.to_query()
    assert "patientID=12345%5E%5E%5E%261.2.3%26ISO" in query
    assert "patientName=Doe%5EJohn" in query
    assert "lowerDateTime=2020-01-01T00:00:00Z" in query
    assert "&" not in query.split("patientID=")[1].split("&patientName")[0].replace("%26", "")
    assert IIDRequest.from_query(query) == request


def test_an_unencoded_plus_in_a_time_zone_offset_is_understood() -> None:
    # form decoding turns '+' into a space; the only sensible reading is an offset
    request = IIDRequest.from_query(
        "requestType=PATIENT&patientID=1&lowerDateTime=2010-01-01T12:00:00+01:00"
    )
    assert request.lower_datetime == datetime(2010, 1, 1, 12, tzinfo=timezone(timedelta(hours=1)))


def test_patient_request_needs_patient_id() -> None:
    with pytest.raises(InvalidQueryError, match="needs patientID"):
        IIDRequest.from_query("requestType=PATIENT&patientName=Doe%5EJohn")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("lowerDateTime=2010-13-01T00:00:00Z", "not a real date"),
        ("lowerDateTime=2010-01-01", "not an XML Schema dateTime"),
        ("upperDateTime=yesterday", "upperDateTime 'yesterday'"),
        ("lowerDateTime=2010-01-01T25:00:00Z", "impossible time of day"),
        ("patientBirthDate=19700131", "not an XML Schema date"),
    ],
)
def test_malformed_dates_name_the_parameter(query: str, message: str) -> None:
    with pytest.raises(InvalidDateError, match=message):
        IIDRequest.from_query(f"requestType=PATIENT&patientID=1&{query}")


def test_lenient_mode_accepts_dicom_and_date_only_forms() -> None:
    request = IIDRequest.from_query(
        "requestType=PATIENT&patientID=1&patientBirthDate=19700131&lowerDateTime=20100101",
        lenient=True,
    )
    assert request.patient_birth_date == date(1970, 1, 31)
    assert request.lower_datetime == datetime(2010, 1, 1)


def test_a_reversed_date_range_is_refused() -> None:
    with pytest.raises(InvalidQueryError, match="is after upperDateTime"):
        IIDRequest.from_query(
            "requestType=PATIENT&patientID=1"
            "&lowerDateTime=2012-01-01T00:00:00Z&upperDateTime=2011-01-01T00:00:00Z"
        )


def test_range_comparison_uses_the_time_zones() -> None:
    # 10:00+02:00 is 08:00Z: before 09:00Z, so this range is fine
    request = IIDRequest.from_query(
        "requestType=PATIENT&patientID=1"
        "&lowerDateTime=2012-01-01T10:00:00%2B02:00&upperDateTime=2012-01-01T09:00:00Z"
    )
    assert request.lower_datetime is not None


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "99999999"])
def test_most_recent_results_must_be_a_positive_count(value: str) -> None:
    with pytest.raises(InvalidQueryError, match="mostRecentResults"):
        IIDRequest.from_query(f"requestType=PATIENT&patientID=1&mostRecentResults={value}")


def test_modalities_are_dicom_codes() -> None:
    with pytest.raises(InvalidQueryError, match="not a DICOM modality code"):
        IIDRequest.from_query("requestType=PATIENT&patientID=1&modalitiesInStudy=ct")
    lenient = IIDRequest.from_query(
        "requestType=PATIENT&patientID=1&modalitiesInStudy=ct,mr", lenient=True
    )
    assert lenient.modalities_in_study == ("CT", "MR")


def test_booleans_are_xml_schema_booleans() -> None:
    assert IIDRequest.from_query("requestType=STUDY&studyUID=1.2&keyImagesOnly=1").key_images_only
    with pytest.raises(InvalidQueryError, match="keyImagesOnly 'yes' is not a boolean"):
        IIDRequest.from_query("requestType=STUDY&studyUID=1.2&keyImagesOnly=yes")
    with pytest.raises(InvalidQueryError):
        IIDRequest.from_query("requestType=STUDY&studyUID=1.2&diagnosticQuality=TRUE")
    assert IIDRequest.from_query(
        "requestType=STUDY&studyUID=1.2&diagnosticQuality=TRUE", lenient=True
    ).diagnostic_quality


def test_patient_name_is_checked_as_dicom_pn() -> None:
    with pytest.raises(InvalidQueryError, match="component groups"):
        IIDRequest.patient("1", patient_name="a=b=c=d")
    with pytest.raises(InvalidQueryError, match="more than 5 components"):
        IIDRequest.patient("1", patient_name="a^b^c^d^e^f")
    with pytest.raises(InvalidQueryError, match="backslash"):
        IIDRequest.patient("1", patient_name="a\\b")
    assert IIDRequest.patient("1", patient_name="Yamada^Tarou=山田^太郎").patient_name


# -- parameters ------------------------------------------------------------------------


def test_unknown_request_type_is_refused() -> None:
    with pytest.raises(InvalidQueryError, match="requestType 'SERIES' is not supported"):
        IIDRequest.from_query("requestType=SERIES&studyUID=1.2.3")
    with pytest.raises(InvalidQueryError, match="requestType 'STUDYBASE64'"):
        IIDRequest.from_query("requestType=STUDYBASE64&studyUID=MS4yLjM=")


def test_missing_request_type_is_refused() -> None:
    with pytest.raises(InvalidQueryError, match="requestType is missing"):
        IIDRequest.from_query("studyUID=1.2.3")


def test_parameter_names_are_exact_in_strict_mode_and_case_insensitive_in_lenient() -> None:
    with pytest.raises(InvalidQueryError, match="did you mean 'accessionNumber'"):
        IIDRequest.from_query("requestType=STUDY&Accessionnumber=123")
    request = IIDRequest.from_query("requesttype=study&Accessionnumber=123", lenient=True)
    assert request.accession_numbers == ("123",)


def test_unknown_parameters_are_refused_strictly_and_ignored_leniently() -> None:
    query = "requestType=STUDY&studyUID=1.2.3&seriesUID=1.2.3.4"
    with pytest.raises(InvalidQueryError, match="unknown parameter 'seriesUID'"):
        IIDRequest.from_query(query)
    assert IIDRequest.from_query(query, lenient=True) == IIDRequest.study("1.2.3")


def test_parameters_of_the_other_request_type_are_refused() -> None:
    with pytest.raises(
        InvalidQueryError, match="patientID is not a parameter of requestType=STUDY"
    ):
        IIDRequest.from_query("requestType=STUDY&studyUID=1.2.3&patientID=1")
    with pytest.raises(
        InvalidQueryError, match="studyUID is not a parameter of requestType=PATIENT"
    ):
        IIDRequest.from_query("requestType=PATIENT&patientID=1&studyUID=1.2.3")


def test_control_characters_are_refused_everywhere() -> None:
    with pytest.raises(InvalidInputError, match="control character"):
        IIDRequest.from_query("requestType=PATIENT&patientID=1&patientName=A%0D%0AB")
    with pytest.raises(InvalidInputError, match="control character"):
        IIDRequest.from_query("requestType=PATIENT&patientID=1%00")


def test_invalid_utf8_is_refused_clearly() -> None:
    with pytest.raises(InvalidQueryError, match="not valid UTF-8"):
        IIDRequest.from_query("requestType=PATIENT&patientID=%FF%FE")


def test_oversized_values_and_queries_are_refused() -> None:
    with pytest.raises(InvalidQueryError, match="at most 4096"):
        IIDRequest.from_query("requestType=PATIENT&patientID=1&patientName=" + "A" * 5000)
    with pytest.raises(InvalidQueryError, match="at most 8192"):
        IIDRequest.from_query("requestType=STUDY&studyUID=1.2&x=" + "1" * 9000)


def test_viewer_type_is_a_plain_token() -> None:
    with pytest.raises(InvalidQueryError, match="viewerType"):
        IIDRequest.from_query("requestType=STUDY&studyUID=1.2&viewerType=http://evil.example/")


def test_with_studies_keeps_the_display_options() -> None:
    patient = IIDRequest.patient("1", viewer_type="ohif", diagnostic_quality=True)
    study = patient.with_studies(["1.2.3"])
    assert study == IIDRequest.study("1.2.3", viewer_type="ohif", diagnostic_quality=True)


def test_errors_are_value_errors_for_generic_callers() -> None:
    with pytest.raises(ValueError):
        IIDRequest.from_query("requestType=NOPE")
