"""System search on the embedded store: ``GET [base]?_type=…`` (R4 search §3.1.1.3).

R4: "All resource types: GET [base]?parameter(s) (parameters common to all types). If the
_type parameter is included, all other search parameters SHALL be common to all provided
types. If _type is not included, all parameters SHALL be common to all resource types."
The store decides: a parameter is common when every searched type defines it (same code
and parameter type; each type applies its own definition); a parameter some searched types
lack is a 400 naming it. Over real HTTP against a fresh store on 127.0.0.1.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from imagingkit.sandbox.fhir.testing import serving_store

Resource = dict[str, Any]
MAX_PAGES = 50


def _resources() -> list[Resource]:
    tag = {"system": "urn:test", "code": "cohort-a"}
    return [
        {"resourceType": "Patient", "id": "p1", "gender": "female", "meta": {"tag": [tag]}},
        {"resourceType": "Patient", "id": "p2", "gender": "male"},
        {
            "resourceType": "ImagingStudy",
            "id": "s1",
            "status": "available",
            "subject": {"reference": "Patient/p1"},
            "meta": {"tag": [tag]},
        },
        {
            "resourceType": "ImagingStudy",
            "id": "s2",
            "status": "available",
            "subject": {"reference": "Patient/p2"},
        },
        {
            "resourceType": "Condition",
            "id": "c1",
            "subject": {"reference": "Patient/p1"},
            "code": {"text": "x"},
        },
    ]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The base URL and an instant between the first four writes and the last one."""
    folder = tmp_path_factory.mktemp("system-search")
    with serving_store(folder) as (url, store):
        resources = _resources()
        for resource in resources[:4]:
            store.upsert(resource)
        time.sleep(0.05)
        boundary = store.read("ImagingStudy", "s2")["meta"]["lastUpdated"]
        time.sleep(0.05)
        store.upsert(resources[4])
        yield url, boundary


def _get(base: str, query: str, **headers: str) -> requests.Response:
    return requests.get(f"{base}?{query}" if query else base, headers=headers, timeout=30)


def _keys(bundle: Resource, mode: str = "match") -> list[str]:
    return [
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == mode
    ]


def _search(base: str, query: str) -> Resource:
    answer = _get(base, query)
    assert answer.status_code == 200, answer.text
    bundle: Resource = answer.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    return bundle


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (
            "_type=Patient,ImagingStudy",
            {"Patient/p1", "Patient/p2", "ImagingStudy/s1", "ImagingStudy/s2"},
        ),
        ("_type=Condition", {"Condition/c1"}),
        ("_type=Patient,Condition&_id=p1,c1,s1", {"Patient/p1", "Condition/c1"}),
        ("_type=Patient,ImagingStudy&_tag=urn:test|cohort-a", {"Patient/p1", "ImagingStudy/s1"}),
        ("_tag=urn:test|cohort-a", {"Patient/p1", "ImagingStudy/s1"}),
        ("_id=s2", {"ImagingStudy/s2"}),
        ("_type=Patient&_type=Patient,Condition", {"Patient/p1", "Patient/p2"}),
        ("_type=Patient&_type=Condition", set()),
        # `patient` is common to Condition and ImagingStudy (R4 clinical-patient)
        ("_type=Condition,ImagingStudy&patient=Patient/p1", {"Condition/c1", "ImagingStudy/s1"}),
        ("_type=Condition,ImagingStudy&patient.gender=male", {"ImagingStudy/s2"}),
        ("", {"Patient/p1", "Patient/p2", "ImagingStudy/s1", "ImagingStudy/s2", "Condition/c1"}),
    ],
)
def test_system_search_matches_across_types(
    served: tuple[str, str], query: str, expected: set[str]
) -> None:
    base, _ = served
    bundle = _search(base, query)
    assert set(_keys(bundle)) == expected
    assert bundle["total"] == len(expected)
    for entry in bundle.get("entry", []):
        resource = entry["resource"]
        assert entry["fullUrl"] == f"{base}/{resource['resourceType']}/{resource['id']}"


def test_last_updated_with_and_without_type(served: tuple[str, str]) -> None:
    base, boundary = served
    later = _search(base, f"_lastUpdated=gt{boundary}")
    assert _keys(later) == ["Condition/c1"]
    earlier = _search(base, f"_type=Patient,Condition&_lastUpdated=le{boundary}")
    assert set(_keys(earlier)) == {"Patient/p1", "Patient/p2"}


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("_type=Patient,ImagingStudy&gender=female", "ImagingStudy"),
        ("_type=Patient,ImagingStudy&status=available", "Patient"),
        ("gender=female", "Condition"),
        ("_type=Patient,ImagingStudy&_sort=gender", None),
    ],
)
def test_a_parameter_that_is_not_common_is_refused(
    served: tuple[str, str], query: str, named: str | None
) -> None:
    base, _ = served
    answer = _get(base, query)
    if named is None:  # an uncommon _sort key is ignored as on a type search (lenient)
        assert answer.status_code == 200
        outcome = [e for e in answer.json()["entry"] if e["search"]["mode"] == "outcome"]
        assert "_sort=gender" in outcome[0]["resource"]["issue"][0]["diagnostics"]
        strict = _get(base, query, Prefer="handling=strict")
        assert strict.status_code == 400
        return
    assert answer.status_code == 400
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome"
    text = outcome["issue"][0]["diagnostics"]
    param = query.split("&")[-1].split("=")[0]
    assert repr(param) in text and named in text and "not common" in text


def test_unknown_types_and_parameters(served: tuple[str, str]) -> None:
    base, _ = served
    for query in ("_type=Spaceship", "_type=Patient,Practitioner", "_type="):
        answer = _get(base, query)
        assert answer.status_code == 400, query
        assert "_type" in answer.json()["issue"][0]["diagnostics"]
    lenient = _search(base, "_type=Patient&frobnicate=1")
    assert set(_keys(lenient)) == {"Patient/p1", "Patient/p2"}
    assert "frobnicate" not in lenient["link"][0]["url"]
    assert _get(base, "_type=Patient&frobnicate=1", Prefer="handling=strict").status_code == 400


def test_paging_count_and_sort(served: tuple[str, str]) -> None:
    base, _ = served
    first = _search(base, "_type=Patient,ImagingStudy,Condition&_count=2&_sort=-_lastUpdated")
    assert first["total"] == 5
    seen: list[str] = []
    stamps: list[str] = []
    page: Resource | None = first
    for _ in range(MAX_PAGES):
        assert page is not None
        seen += _keys(page)
        stamps += [e["resource"]["meta"]["lastUpdated"] for e in page.get("entry", [])]
        assert len(_keys(page)) <= 2
        nxt = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
        if nxt is None:
            break
        assert nxt.startswith(f"{base}?") and "_type=Patient%2CImagingStudy%2CCondition" not in nxt
        assert "_type=Patient,ImagingStudy,Condition" in nxt
        page = requests.get(nxt, timeout=30).json()
    assert sorted(seen) == sorted(
        ["Patient/p1", "Patient/p2", "ImagingStudy/s1", "ImagingStudy/s2", "Condition/c1"]
    )
    assert seen[0] == "Condition/c1"
    assert stamps == sorted(stamps, reverse=True)
    ascending = _search(base, "_type=Patient,Condition&_sort=_lastUpdated")
    assert _keys(ascending) == ["Patient/p1", "Patient/p2", "Condition/c1"]


def test_summary_count_includes_and_post(served: tuple[str, str]) -> None:
    base, _ = served
    counted = _search(base, "_type=Patient,ImagingStudy&_summary=count")
    assert counted["total"] == 4 and "entry" not in counted
    included = _search(base, "_type=ImagingStudy,Condition&_id=s2,c1&_include=ImagingStudy:subject")
    assert set(_keys(included)) == {"ImagingStudy/s2", "Condition/c1"}
    assert _keys(included, "include") == ["Patient/p2"]
    posted = requests.post(
        f"{base}/_search",
        data={"_type": "Patient,ImagingStudy", "_tag": "urn:test|cohort-a"},
        timeout=30,
    )
    assert posted.status_code == 200, posted.text
    assert set(_keys(posted.json())) == {"Patient/p1", "ImagingStudy/s1"}


def test_system_search_in_a_batch(served: tuple[str, str]) -> None:
    base, _ = served
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": "?_type=Patient&gender=male"}}],
    }
    answer = requests.post(base, json=bundle, timeout=30)
    assert answer.status_code == 200, answer.text
    assert _keys(answer.json()["entry"][0]["resource"]) == ["Patient/p2"]


def test_capability_statement_advertises_system_search(served: tuple[str, str]) -> None:
    base, _ = served
    rest = requests.get(f"{base}/metadata", timeout=30).json()["rest"][0]
    assert "search-system" in {i["code"] for i in rest["interaction"]}
    assert {p["name"] for p in rest["searchParam"]} == {
        "_id",
        "_lastUpdated",
        "_tag",
        "_security",
        "_profile",
        "_source",
    }
