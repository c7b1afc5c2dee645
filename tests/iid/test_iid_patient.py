"""HL7 v2 CX patient identifiers as IID carries them (HL7 v2.5 §2.A.14, §2.7)."""

from __future__ import annotations

import pytest

from imagingkit.errors import InvalidQueryError
from imagingkit.iid import PatientID


@pytest.mark.parametrize(
    ("cx", "expected"),
    [
        ("99998410^^^AcmeHospital", PatientID("99998410", "AcmeHospital")),
        ("ID1^^^&1.2.3.4&ISO", PatientID("ID1", None, "1.2.3.4", "ISO")),
        ("ID1^^^HOSP&1.2.3.4&ISO^MR", PatientID("ID1", "HOSP", "1.2.3.4", "ISO", "MR")),
        ("plain", PatientID("plain")),
    ],
)
def test_cx_forms_parse_and_serialise_back(cx: str, expected: PatientID) -> None:
    parsed = PatientID.parse(cx)
    assert parsed == expected
    assert parsed.to_cx() == cx


def test_hl7_escape_sequences_carry_delimiters_inside_values() -> None:
    parsed = PatientID.parse(r"A\S\B\T\C\E\D^^^X\T\Y")
    assert parsed.value == "A^B&C\\D"
    assert parsed.namespace == "X&Y"
    assert PatientID.parse(parsed.to_cx()) == parsed


def test_a_stray_backslash_is_refused() -> None:
    with pytest.raises(InvalidQueryError, match="not an HL7 escape sequence"):
        PatientID.parse("A\\B")


def test_unsupported_cx_components_are_refused_strictly_and_dropped_leniently() -> None:
    with pytest.raises(InvalidQueryError, match=r"CX component\(s\) \[2, 3\]"):
        PatientID.parse("123^7^M10^^MR")
    assert PatientID.parse("123^7^M10^^MR", lenient=True) == PatientID("123", type_code="MR")


def test_too_many_components_or_subcomponents_are_refused() -> None:
    with pytest.raises(InvalidQueryError, match="at most 10"):
        PatientID.parse("^".join("x" * 11))
    with pytest.raises(InvalidQueryError, match="at most 3"):
        PatientID.parse("1^^^a&b&c&d")


def test_length_limits_follow_dicom_lo_unless_lenient() -> None:
    long = "9" * 65
    with pytest.raises(InvalidQueryError, match="at most 64"):
        PatientID.parse(long)
    assert PatientID.parse(long, lenient=True).value == long


def test_empty_identifier_is_refused() -> None:
    with pytest.raises(InvalidQueryError, match="patientID is empty"):
        PatientID.parse("^^^&1.2.3&ISO")


def test_an_iso_authority_must_be_an_oid() -> None:
    with pytest.raises(InvalidQueryError, match="typed ISO"):
        PatientID.parse("1^^^&hospital.example&ISO")


@pytest.mark.parametrize(
    ("cx", "system"),
    [
        ("1^^^&1.2.3&ISO", "urn:oid:1.2.3"),
        ("1^^^&https://hospital.example/mrn&URI", "https://hospital.example/mrn"),
        ("1^^^urn:oid:1.2.3", "urn:oid:1.2.3"),
        ("1^^^LocalName", None),
        ("1", None),
    ],
)
def test_fhir_identifier_system_follows_the_authority(cx: str, system: str | None) -> None:
    assert PatientID.parse(cx).fhir_system() == system


def test_issuer_is_namespace_else_universal_id() -> None:
    assert PatientID.parse("1^^^NS&1.2&ISO").issuer == "NS"
    assert PatientID.parse("1^^^&1.2&ISO").issuer == "1.2"
