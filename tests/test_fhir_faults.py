"""Bad input and faults: the FHIR store answers with an OperationOutcome and loses nothing.

Malformed bodies and parameters get a 4xx OperationOutcome naming the bad value; a failed
transaction writes nothing; hostile text in parameters is data, never SQL; include cycles
terminate; a process killed with SIGKILL in the middle of a transaction leaves the
transaction wholly present or wholly absent, and the store reopens cleanly.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from imagingkit.config import Settings
from imagingkit.sandbox.fhir import FhirStore
from imagingkit.sandbox.fhir.search import MAX_COUNT
from imagingkit.sandbox.fhir.testing import serving_store

Resource = dict[str, Any]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, FhirStore]]:
    with serving_store(tmp_path) as pair:
        yield pair


@pytest.fixture
def base(served: tuple[str, FhirStore]) -> str:
    return served[0]


def outcome(response: requests.Response, status: int, *words: str) -> Resource:
    """Check *response* is an OperationOutcome with *status* mentioning every word."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    body: Resource = response.json()
    assert body["resourceType"] == "OperationOutcome"
    text = body["issue"][0]["diagnostics"]
    for word in words:
        assert word in text, f"{word!r} not in {text!r}"
    return body


def count(base: str, query: str = "Patient") -> int:
    total: int = requests.get(f"{base}/{query}?_summary=count", timeout=30).json()["total"]
    return total


def raw_post(
    url: str, data: bytes | str, ctype: str = "application/fhir+json"
) -> requests.Response:
    return requests.post(url, data=data, headers={"Content-Type": ctype}, timeout=30)


# --------------------------------------------------------------------------- bodies


def test_malformed_json(base: str) -> None:
    outcome(raw_post(f"{base}/Patient", b'{"resourceType": "Patient",'), 400, "not valid JSON")
    outcome(raw_post(f"{base}/Patient", b"\xff\xfe"), 400, "not valid JSON")
    outcome(raw_post(f"{base}/Patient", b""), 400, "no body")
    outcome(raw_post(f"{base}/Patient", b"[1, 2]"), 400, "JSON object")
    outcome(raw_post(base, b"{"), 400, "not valid JSON")
    assert count(base) == 0


def test_resource_type_must_match_the_url(base: str) -> None:
    body = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    outcome(requests.post(f"{base}/Patient", json=body, timeout=30), 400, "Observation", "Patient")
    outcome(
        requests.put(f"{base}/Patient/x", json=body | {"id": "x"}, timeout=30), 400, "Observation"
    )
    outcome(requests.post(f"{base}/Patient", json={"name": []}, timeout=30), 400, "resourceType")


def test_id_must_match_the_url(base: str) -> None:
    patient = {"resourceType": "Patient", "id": "b"}
    outcome(requests.put(f"{base}/Patient/a", json=patient, timeout=30), 400, "'b'", "'a'")
    outcome(
        requests.put(f"{base}/Patient/a", json={"resourceType": "Patient"}, timeout=30),
        400,
        "no id",
    )
    bad = {"resourceType": "Patient", "id": "has space"}
    outcome(
        requests.put(f"{base}/Patient/has%20space", json=bad, timeout=30),
        400,
        "not a valid FHIR id",
    )
    outcome(requests.get(f"{base}/Patient/{'x' * 65}", timeout=30), 400, "not a valid FHIR id")


def test_unknown_type_and_path(base: str) -> None:
    outcome(requests.get(f"{base}/Spaceship", timeout=30), 404, "Spaceship")
    outcome(requests.get(f"{base}/Spaceship/1", timeout=30), 404, "Spaceship")
    outcome(requests.post(f"{base}/Spaceship", json={"resourceType": "Spaceship"}, timeout=30), 404)
    outcome(requests.get(f"{base}/Patient/1/_history/1/extra", timeout=30), 404)
    outcome(requests.get(f"{base}/lowercase", timeout=30), 404)
    response = requests.patch(f"{base}/_history", json=[], timeout=30)
    assert response.status_code == 405
    assert response.json()["resourceType"] == "OperationOutcome"


def test_invalid_element_value_is_refused_and_not_stored(base: str) -> None:
    patient = {"resourceType": "Patient", "id": "p", "birthDate": "1970-13-45"}
    outcome(requests.put(f"{base}/Patient/p", json=patient, timeout=30), 400, "1970-13-45")
    assert requests.get(f"{base}/Patient/p", timeout=30).status_code == 404
    outcome(
        requests.put(
            f"{base}/Patient/p", json={"resourceType": "Patient", "id": "p", "meta": 3}, timeout=30
        ),
        400,
        "meta",
    )


def test_dangling_reference_is_refused(base: str) -> None:
    study = {
        "resourceType": "ImagingStudy",
        "status": "available",
        "subject": {"reference": "Patient/nobody"},
    }
    outcome(
        requests.post(f"{base}/ImagingStudy", json=study, timeout=30),
        400,
        "Patient/nobody",
        "subject",
    )
    external = study | {"subject": {"reference": "http://elsewhere.example/fhir/Patient/1"}}
    assert requests.post(f"{base}/ImagingStudy", json=external, timeout=30).status_code == 201
    practitioner = study | {
        "subject": {"reference": "Device/d"},
        "referrer": {"reference": "Practitioner/x"},
    }
    assert requests.post(f"{base}/ImagingStudy", json=practitioner, timeout=30).status_code == 201


# --------------------------------------------------------------------------- search values


BAD_SEARCHES = [
    ("Patient?birthdate=2020-13", "birthdate", "2020-13"),
    ("Patient?birthdate=yesterday", "birthdate", "yesterday"),
    ("Patient?birthdate=xx2020", "birthdate", "xx2020"),
    ("RiskAssessment?probability=abc", "probability", "abc"),
    ("RiskAssessment?probability=gtNaN", "probability", "NaN"),
    ("Observation?value-quantity=1|2", "value-quantity", "1|2"),
    ("Patient?identifier=a|b|c", "identifier", "a|b|c"),
    ("Patient?gender=|", "gender", "|"),
    ("Patient?family:below=x", "family", ":below"),
    ("Patient?gender:in=http://x", "gender", ":in"),
    ("Patient?birthdate:missing=maybe", "birthdate", "maybe"),
    ("Patient?gender.name=x", "gender.name", "chained"),
    ("ImagingStudy?subject:Endpoint.name=x", "subject:Endpoint", "Endpoint"),
    ("ImagingStudy?subject=a/b/c/d", "subject", "a/b/c/d"),
    ("Observation?code-value-quantity=718-7", "code-value-quantity", "'$'"),
    ("Patient?_count=abc", "_count", "abc"),
    ("Patient?_count=-1", "_count", "-1"),
    ("Patient?_offset=-5", "_offset", "-5"),
    ("Patient?_total=maybe", "_total", "maybe"),
    ("Patient?_summary=everything", "_summary", "everything"),
    ("Patient?_include=Patient", "_include", "Patient"),
    ("Patient?_include=Observation:patient", "_include", "Observation:patient"),
    ("Patient?_has:Condition=x", "_has:Condition", "_has"),
]


@pytest.mark.parametrize(
    ("query", "name", "value"), BAD_SEARCHES, ids=[q for q, _, _ in BAD_SEARCHES]
)
def test_malformed_search_value_names_parameter_and_value(
    base: str, query: str, name: str, value: str
) -> None:
    """R4 search §3.1.1.1: a value the server cannot process is a 400 naming it."""
    outcome(requests.get(f"{base}/{query}", timeout=30), 400, name, value)


def test_huge_count_is_capped_with_a_warning(base: str) -> None:
    for i in range(3):
        requests.put(
            f"{base}/Patient/p{i}", json={"resourceType": "Patient", "id": f"p{i}"}, timeout=30
        )
    response = requests.get(f"{base}/Patient?_count=10000000", timeout=30)
    assert response.status_code == 200
    bundle = response.json()
    assert bundle["total"] == 3
    warnings = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert "10000000" in warnings[0]["issue"][0]["diagnostics"]
    assert warnings[0]["issue"][0]["severity"] == "warning"
    self_url = next(x["url"] for x in bundle["link"] if x["relation"] == "self")
    assert f"_count={MAX_COUNT}" in self_url


HOSTILE = [
    "' OR '1'='1",
    "x'); DROP TABLE resource; --",
    '"; DELETE FROM history; --',
    "%",
    "_",
    "\\",
    "*",
    "Robert'); DROP TABLE idx_string;--",
    "\u0000",
    "ü' UNION SELECT rid FROM resource --",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_in_parameters_is_data(served: tuple[str, FhirStore], text: str) -> None:
    """Values are bound, never spliced into SQL; LIKE wildcards are literal characters."""
    base, store = served
    requests.put(
        f"{base}/Patient/victim",
        json={"resourceType": "Patient", "id": "victim", "name": [{"family": "Tables"}]},
        timeout=30,
    )
    filters = (
        {"family": text},
        {"family:contains": text},
        {"family:exact": text},
        {"_id": text},
        {"identifier": f"{text}|{text}"},
        {"general-practitioner": text},
        {"_has:Condition:patient:code": text},
    )
    for query in filters:
        response = requests.get(f"{base}/Patient", params=query, timeout=30)
        assert response.status_code in (200, 400), (query, response.text)
        if response.status_code == 200:
            assert response.json().get("total") == 0, query
    for ignored in ({"_sort": text}, {text: "x"}):  # unknown: ignored, left out of `self`
        bundle = requests.get(f"{base}/Patient", params=ignored, timeout=30).json()
        assert bundle["total"] == 1
        assert (
            next(x["url"] for x in bundle["link"] if x["relation"] == "self") == f"{base}/Patient"
        )
    assert count(base) == 1
    assert store.read("Patient", "victim")["name"][0]["family"] == "Tables"


def test_literal_percent_and_underscore_match_only_themselves(base: str) -> None:
    for pid, family in (("a", "100% Smith"), ("b", "Smith_Jones"), ("c", "Smithers")):
        body = {"resourceType": "Patient", "id": pid, "name": [{"family": family}]}
        requests.put(f"{base}/Patient/{pid}", json=body, timeout=30)

    def ids(**query: str) -> set[str]:
        bundle = requests.get(f"{base}/Patient", params=query, timeout=30).json()
        return {e["resource"]["id"] for e in bundle.get("entry", [])}

    assert ids(**{"family:contains": "%"}) == {"a"}
    assert ids(**{"family:contains": "h_j"}) == {"b"}
    assert ids(family="smith_") == {"b"}


def test_include_cycles_terminate(base: str) -> None:
    """Two Observations that are members of each other: ``:iterate`` stops when nothing is new."""

    def member(me: str, other: str) -> Resource:
        return {
            "fullUrl": f"Observation/{me}",
            "resource": {
                "resourceType": "Observation",
                "id": me,
                "status": "final",
                "code": {"text": "panel"},
                "hasMember": [{"reference": f"Observation/{other}"}],
            },
            "request": {"method": "PUT", "url": f"Observation/{me}"},
        }

    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [member("a", "b"), member("b", "a")],
    }
    assert requests.post(base, json=bundle, timeout=30).status_code == 200
    response = requests.get(
        f"{base}/Observation?_id=a&_include:iterate=Observation:has-member"
        "&_revinclude:iterate=Observation:has-member",
        timeout=30,
    )
    assert response.status_code == 200
    entries = [(e["search"]["mode"], e["resource"]["id"]) for e in response.json()["entry"]]
    assert entries == [("match", "a"), ("include", "b")]


# --------------------------------------------------------------------------- transactions


def _tx(*entries: Resource) -> Resource:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def _create(resource: Resource, full_url: str | None = None) -> Resource:
    entry: Resource = {
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }
    if full_url:
        entry["fullUrl"] = full_url
    return entry


PATIENT = {"resourceType": "Patient", "name": [{"family": "Atomic"}]}


def test_transaction_with_dangling_urn_writes_nothing(base: str) -> None:
    bundle = _tx(
        _create(PATIENT, "urn:uuid:11111111-1111-4111-8111-111111111111"),
        _create(
            {
                "resourceType": "Condition",
                "subject": {"reference": "urn:uuid:22222222-2222-4222-8222-222222222222"},
            }
        ),
    )
    outcome(requests.post(base, json=bundle, timeout=30), 400, "urn:uuid:2222", "entry[1]")
    assert count(base) == 0 and count(base, "Condition") == 0


def test_transaction_with_missing_target_writes_nothing(base: str) -> None:
    bundle = _tx(
        _create(PATIENT),
        _create(
            {
                "resourceType": "ImagingStudy",
                "status": "available",
                "subject": {"reference": "Patient/404"},
            }
        ),
    )
    outcome(requests.post(base, json=bundle, timeout=30), 400, "Patient/404")
    assert count(base) == 0


def test_transaction_fails_whole_on_a_late_error(base: str) -> None:
    """The first entries are valid; the last is not; none is kept (R4 http §3.1.0.11.2)."""
    requests.put(f"{base}/Patient/keep", json={"resourceType": "Patient", "id": "keep"}, timeout=30)
    bundle = _tx(
        _create(PATIENT),
        {"request": {"method": "DELETE", "url": "Patient/keep"}},
        {
            "resource": {"resourceType": "Patient", "id": "bad", "birthDate": "not-a-date"},
            "request": {"method": "PUT", "url": "Patient/bad"},
        },
    )
    outcome(requests.post(base, json=bundle, timeout=30), 400, "not-a-date")
    assert count(base) == 1
    assert requests.get(f"{base}/Patient/keep", timeout=30).status_code == 200


def test_transaction_if_match_conflict_writes_nothing(base: str) -> None:
    requests.put(f"{base}/Patient/v", json={"resourceType": "Patient", "id": "v"}, timeout=30)
    bundle = _tx(
        _create(PATIENT),
        {
            "resource": {"resourceType": "Patient", "id": "v", "gender": "male"},
            "request": {"method": "PUT", "url": "Patient/v", "ifMatch": 'W/"7"'},
        },
    )
    outcome(requests.post(base, json=bundle, timeout=30), 412, "If-Match")
    assert count(base) == 1


def test_malformed_bundles(base: str) -> None:
    outcome(requests.post(base, json={"resourceType": "Patient"}, timeout=30), 400, "Bundle")
    outcome(
        requests.post(base, json={"resourceType": "Bundle", "type": "collection"}, timeout=30),
        400,
        "collection",
    )
    outcome(requests.post(base, json=_tx({"resource": PATIENT}), timeout=30), 400, "entry[0]")
    outcome(
        requests.post(
            base, json=_tx({"request": {"method": "POST", "url": "Patient"}}), timeout=30
        ),
        400,
        "no resource",
    )
    wrong = {"resource": PATIENT, "request": {"method": "POST", "url": "Observation"}}
    outcome(requests.post(base, json=_tx(wrong), timeout=30), 400, "Patient", "Observation")
    twice = {
        "resource": {"resourceType": "Patient", "id": "t"},
        "request": {"method": "PUT", "url": "Patient/t"},
    }
    outcome(requests.post(base, json=_tx(twice, twice), timeout=30), 400, "Patient/t")
    assert count(base) == 0


# --------------------------------------------------------------------------- kill -9

_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from imagingkit.config import Settings
    from imagingkit.sandbox.fhir import FhirStore

    store = FhirStore(Path(sys.argv[1]), settings=Settings())
    size = int(sys.argv[2])
    for batch in range(1, 1000):
        entries = [
            {
                "fullUrl": f"urn:uuid:00000000-0000-4000-8000-{batch:06d}{i:06d}",
                "resource": {
                    "resourceType": "Patient",
                    "meta": {"tag": [{"system": "urn:batch", "code": str(batch)}]},
                    "name": [{"family": f"Batch{batch}", "given": [str(i)]}],
                    "birthDate": "1970-01-01",
                },
                "request": {"method": "POST", "url": "Patient"},
            }
            for i in range(size)
        ]
        print(f"begin {batch}", flush=True)
        store.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries})
        print(f"done {batch}", flush=True)
    """
)


def _kill_during_third_transaction(db: Path, script: Path, size: int) -> tuple[bool, str]:
    """Run the writer, SIGKILL it right after it starts its third transaction.

    Returns whether the kill hit the middle of that transaction, and the writer's output.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(db), str(size)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
            if line.strip() == "begin 3":
                time.sleep(0.05)  # well inside the SQLite transaction of `size` resources
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        rest = proc.stdout.read() if proc.stdout else ""
    lines += rest.split()
    output = "\n".join(lines)
    assert "begin 3" in output, output
    return "done 3" not in output and proc.returncode == -signal.SIGKILL, output


@pytest.mark.slow
def test_kill_9_during_a_transaction_leaves_it_whole_or_absent(tmp_path: Path) -> None:
    """A real SIGKILL mid-transaction: the batch is wholly present or wholly absent."""
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    db = tmp_path / "killed.sqlite"
    size = 1500
    for _attempt in range(4):  # bounded: a faster machine may need bigger transactions
        if db.exists():
            for suffix in ("", "-wal", "-shm"):
                Path(str(db) + suffix).unlink(missing_ok=True)
        hit, output = _kill_during_third_transaction(db, script, size)
        if hit:
            break
        size *= 3
    else:
        pytest.fail(f"could not kill the writer inside a transaction:\n{output}")

    # the database opens cleanly and is intact
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store = FhirStore(db, settings=Settings())
    try:
        counts = {}
        for batch in (1, 2, 3, 4):
            bundle = store.search(
                "Patient",
                [("_tag", f"urn:batch|{batch}"), ("_summary", "count")],
                base_url="http://h/fhir",
            )
            counts[batch] = bundle["total"]
        assert counts[1] == counts[2] == size
        assert counts[3] in (0, size), f"batch 3 is partial: {counts[3]} of {size}"
        assert counts[4] == 0
        # the index agrees with the resource table, and the store still takes writes
        everyone = store.search("Patient", [("_summary", "count")], base_url="http://h/fhir")
        assert everyone["total"] == counts[1] + counts[2] + counts[3]
        family = store.search(
            "Patient", [("family", "batch1"), ("_summary", "count")], base_url="http://h/fhir"
        )
        assert family["total"] == size
        store.upsert({"resourceType": "Patient", "id": "after-restart"})
        assert store.read("Patient", "after-restart")["meta"]["versionId"] == "1"
    finally:
        store.close()
