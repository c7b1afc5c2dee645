"""Differential tests: the embedded FHIR store against a real FHIR engine (issue 3 point 3).

The same resources — the sandbox's clinical and imaging record, a FHIR-only synthetic
cohort of the same shape (:mod:`imagingkit.sandbox.clinical_scale`) and a few edge cases
(partial dates, accents, apostrophes, a missing birth date, an Encounter across New Year)
— are loaded into the embedded store (:class:`FhirStore` served on loopback) and into Medplum's
FhirRouter over its MemoryRepository (``tests/medplum/server.mjs``), both by transaction
Bundles of PUTs, so ids are the same. Every search is run on both and must return the same
resources and the same ``total``.

Where Medplum's in-memory engine departs from R4 or lacks the feature, the expected
result is computed from the loaded resources following the R4 text instead
(:mod:`medplum.spec`), and the case says which section and which deviation. Observed
deviations of Medplum 4.5 (see also shared notes, reference-servers.md):

- no ``number``/``quantity`` matching at all (every quantity search returns nothing);
- string search is "contains, case-insensitive" for the default, ``:exact`` and
  ``:contains`` alike, and does not fold accents;
- token matching ignores case; ``:text`` compares the whole display/text;
- date ``eq`` is "overlaps" instead of "contains"; ``ne`` matches resources without a value;
- references must be ``Type/id``: a bare id, an absolute URL or ``:Type`` match nothing;
- chained parameters and ``_has`` match nothing; ``_include``/``_revinclude`` are ignored;
- ``_elements`` is ignored; ``_sort`` with several keys sorts by the last key first;
- no paging links (``server.mjs`` adds them);
- PATCH ignores ``If-Match``, answers 400 to a failed ``test`` (R4: 422) and stores a
  patched ``id`` or an invalid result; system search (``GET [base]?_type=…``) always answers
  an empty searchset, so it is compared with the union of Medplum's type searches.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import time
import warnings
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from medplum.launcher import MedplumServer, medplum_missing_reason, put_bundles, start_medplum
from medplum.spec import Dataset, date_matches, date_range, quantity_matches, string_matches

from imagingkit.config import Settings
from imagingkit.sandbox.clinical import build_clinical_resources, transaction_bundles
from imagingkit.sandbox.clinical_scale import synthetic_record
from imagingkit.sandbox.dicom_index import DicomIndex
from imagingkit.sandbox.fhir import FhirStore
from imagingkit.sandbox.fhir.testing import serving

with warnings.catch_warnings():
    # registered in pyproject.toml's markers once the lead adds it; no warning meanwhile
    warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
    pytestmark = [pytest.mark.medplum]

Resource = dict[str, Any]
MAX_PAGES = 500
SYNTHETIC_STUDIES = 150
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
EDGE_ISSUER = "urn:imagingkit:issuer:EDGE"


# --------------------------------------------------------------------------- edge data


def _edge_patient(ident: str, family: str, given: list[str], gender: str, **more: Any) -> Resource:
    identifier: dict[str, str] = {"value": f"E-{ident.upper()}"}
    if not ident.endswith("3"):
        identifier["system"] = EDGE_ISSUER
    return {
        "resourceType": "Patient",
        "id": f"edge-{ident}",
        "identifier": [identifier],
        "name": [{"family": family, "given": given}],
        "gender": gender,
        **more,
    }


#: Resources that make the spec's corner cases reachable in any sandbox.
EDGE: list[Resource] = [
    _edge_patient("p1", "D'Arcy", ["Zoë"], "female", birthDate="1950"),
    _edge_patient("p2", "Darcy", ["Zoe", "Anne"], "male", birthDate="1950-06-15"),
    _edge_patient("p3", "DARCYSON", ["Bo"], "other", birthDate="1961-02-03"),
    _edge_patient("p4", "Nobirth", ["Kim"], "unknown"),
    {
        "resourceType": "ImagingStudy",
        "id": "edge-study",
        "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:2.25.31415926535"}],
        "status": "available",
        # study-level DX, series-level CR: R4's `modality` parameter reads series.modality
        "modality": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "DX"}],
        "subject": {"reference": "Patient/edge-p1"},
        "started": "2019-07-01T10:00:00Z",
        "endpoint": [{"reference": "Endpoint/dicomweb"}],
        "numberOfSeries": 1,
        "numberOfInstances": 1,
        "series": [
            {
                "uid": "2.25.31415926535.1",
                "modality": {
                    "system": "http://dicom.nema.org/resources/ontology/DCM",
                    "code": "CR",
                },
                "numberOfInstances": 1,
                "instance": [
                    {
                        "uid": "2.25.31415926535.1.1",
                        "sopClass": {
                            "system": "urn:ietf:rfc:3986",
                            "code": "urn:oid:1.2.840.10008.5.1.4.1.1.1",
                        },
                    }
                ],
            }
        ],
    },
    {
        "resourceType": "Encounter",
        "id": "edge-enc",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
        "subject": {"reference": "Patient/edge-p2"},
        # across New Year: R4 `date=2020` (eq: contained) must not match it
        "period": {"start": "2019-12-31T23:00:00Z", "end": "2020-01-01T01:00:00Z"},
        "length": {"value": 120, "unit": "min", "system": UCUM, "code": "min"},
    },
    {
        "resourceType": "Condition",
        "id": "edge-cond",
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "active",
                }
            ]
        },
        "code": {
            "coding": [{"system": SNOMED, "code": "125605004", "display": "Fracture of bone"}],
            "text": "Broken knee",
        },
        "subject": {"reference": "Patient/edge-p1"},
        "onsetDateTime": "2019",
    },
]


# --------------------------------------------------------------------------- servers


@dataclass
class Answer:
    """Everything a search returned, all pages followed."""

    matches: list[str]
    included: list[str]
    total: int | None
    bundles: list[dict[str, Any]]


@dataclass
class Fhir:
    """A FHIR base URL (with a trailing slash) and a session."""

    base: str
    session: requests.Session = field(default_factory=requests.Session)

    def get(self, url: str) -> requests.Response:
        absolute = url if url.startswith("http") else self.base + url
        return self.session.get(absolute, headers={"Accept": "application/fhir+json"}, timeout=120)

    def search(self, query: str) -> Answer:
        matches: list[str] = []
        included: list[str] = []
        bundles = []
        total = None
        url: str | None = query
        for _ in range(MAX_PAGES):
            if url is None:
                break
            response = self.get(url)
            assert response.status_code == 200, (
                f"{url}: HTTP {response.status_code} {response.text}"
            )
            bundle = response.json()
            bundles.append(bundle)
            if total is None:
                total = bundle.get("total")
            for entry in bundle.get("entry", []):
                key = f"{entry['resource']['resourceType']}/{entry['resource']['id']}"
                mode = entry.get("search", {}).get("mode", "match")
                (matches if mode == "match" else included).append(key)
            url = _link(bundle, "next")
        else:
            pytest.fail(f"{query}: more than {MAX_PAGES} pages")
        return Answer(matches, included, total, bundles)

    def load(self, resources: list[Resource]) -> None:
        for bundle in transaction_bundles(resources):
            response = self.session.post(
                self.base,
                json=bundle,
                headers={"Content-Type": "application/fhir+json"},
                timeout=300,
            )
            assert response.status_code == 200, response.text[:2000]


def _link(bundle: dict[str, Any], relation: str) -> str | None:
    links = bundle.get("link", [])
    return next((k["url"] for k in links if k.get("relation") == relation), None)


def _quiet_scan(index: DicomIndex) -> None:
    """Index the sandbox; its real-world files are deliberately odd, so pydicom warns."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        index.scan()


@dataclass
class Servers:
    ours: Fhir
    medplum: Fhir
    data: Dataset
    ctx: dict[str, str]


@pytest.fixture(scope="module")
def resources(sandbox_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Resource]:
    index = DicomIndex(tmp_path_factory.mktemp("diff-index") / "index.sqlite", sandbox_dir)
    try:
        _quiet_scan(index)
        built = build_clinical_resources(sandbox_dir, index)
    finally:
        index.close()
    # the small sandbox has ten studies: a FHIR-only synthetic cohort of the same shape
    # gives every parameter enough values to tell right from wrong
    more = [r for r in synthetic_record(SYNTHETIC_STUDIES, seed=7) if r["id"] != "dicomweb"]
    return built + more + EDGE


@pytest.fixture(scope="module")
def medplum_server() -> Generator[MedplumServer, None, None]:
    reason = medplum_missing_reason()
    if reason:
        pytest.skip(reason)
    server = start_medplum()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def embedded_fhir(tmp_path_factory: pytest.TempPathFactory) -> Generator[str, None, None]:
    """The embedded FHIR store, empty, served on loopback; yields its base URL."""
    store = FhirStore(tmp_path_factory.mktemp("diff-embedded") / "fhir.sqlite", settings=Settings())
    try:
        with serving([store]) as origin:
            yield f"{origin}/fhir/"
    finally:
        store.close()


def _phase_boundary(after: float) -> str:
    """An instant (second precision) strictly after *after* (epoch seconds)."""
    moment = dt.datetime.fromtimestamp(int(after) + 1, tz=dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def servers(
    resources: list[Resource], medplum_server: MedplumServer, embedded_fhir: str
) -> Servers:
    """Both servers loaded with the same resources, in two phases.

    Phase 2 (the DiagnosticReports) is written more than a second after ``ctx["T"]`` and
    phase 1 before it, so ``_lastUpdated`` can be compared on both.
    """
    ours = Fhir(embedded_fhir)
    medplum = Fhir(medplum_server.url, medplum_server.session)
    first = [r for r in resources if r["resourceType"] != "DiagnosticReport"]
    second = [r for r in resources if r["resourceType"] == "DiagnosticReport"]
    ours.load(first)
    put_bundles(medplum_server, first)
    boundary = _phase_boundary(time.time())
    while time.time() < date_range(boundary)[1].timestamp() + 0.05:
        time.sleep(0.05)
    ours.load(second)
    put_bundles(medplum_server, second)
    data = Dataset(resources)
    return Servers(ours, medplum, data, _context(data, ours.base, boundary))


def _context(data: Dataset, base: str, boundary: str) -> dict[str, str]:
    """Values the queries use, taken from the loaded data (so any sandbox works)."""
    studies = [s for s in data.of_type("ImagingStudy") if s.get("encounter")]
    by_patient: dict[str, list[Resource]] = {}
    for study in studies:
        by_patient.setdefault(study["subject"]["reference"], []).append(study)
    ranked = sorted(by_patient, key=lambda p: (-len(by_patient[p]), p))
    pat, pat2 = ranked[0], ranked[1]
    study = by_patient[pat][0]
    patient = data.by_key[pat]
    identifier = patient["identifier"][0]
    conditions = data.of_type("Condition")
    codes: dict[str, int] = {}
    for condition in conditions:
        coding = condition["code"]["coding"][0]
        codes[coding["code"]] = codes.get(coding["code"], 0) + 1
    reasons = sorted(codes, key=lambda c: (-codes[c], c))
    reason = next(c for c in conditions if c["code"]["coding"][0]["code"] == reasons[0])
    body_sites = [
        s["bodySite"]["code"]
        for st in data.of_type("ImagingStudy")
        for s in st.get("series", [])
        if "bodySite" in s
    ]
    hemoglobin = next(
        o for o in data.of_type("Observation") if o["code"]["coding"][0]["code"] == "718-7"
    )
    report = next(r for r in data.of_type("DiagnosticReport") if r["subject"]["reference"] == pat)
    return {
        "T": boundary,
        "base": base,
        "pat": pat.split("/")[1],
        "pat2": pat2.split("/")[1],
        "pid": identifier["value"],
        "issuer": identifier.get("system", ""),
        "family_prefix": patient["name"][0]["family"][:3].lower(),
        "study": study["id"],
        "study_uid": study["identifier"][0]["value"].removeprefix("urn:oid:"),
        "accession": next(
            i["value"] for i in study["identifier"] if i.get("type", {}).get("coding")
        ),
        "series_uid": study["series"][0]["uid"],
        "sop_class": study["series"][0]["instance"][0]["sopClass"]["code"],
        "enc": study["encounter"]["reference"].split("/")[1],
        "cond": reason["id"],
        "reason": reasons[0],
        "reason2": reasons[1] if len(reasons) > 1 else reasons[0],
        "reason_word": reason["code"]["coding"][0]["display"].split()[0].lower(),
        "bodysite": max(set(body_sites), key=body_sites.count),
        "hb": str(hemoglobin["valueQuantity"]["value"]),
        "report": report["id"],
    }


# --------------------------------------------------------------------------- spec helpers

Spec = Callable[[Dataset, dict[str, str]], set[str]]


def _codings(node: Any) -> Iterable[tuple[str | None, str | None, list[str]]]:
    """(system, code, texts) of a CodeableConcept, Coding, Identifier or code value."""
    if isinstance(node, str):
        yield None, node, []
    elif isinstance(node, dict) and "coding" in node:
        for coding in node["coding"]:
            texts = [node["text"]] if node.get("text") else []
            texts += [coding["display"]] if coding.get("display") else []
            yield coding.get("system"), coding.get("code"), texts
    elif isinstance(node, dict):
        yield node.get("system"), node.get("code", node.get("value")), []


def token(path: str, value: str, modifier: str = "") -> Callable[[Resource], bool]:
    """R4 search.html#token: ``code``, ``system|code``, ``|code``; case-sensitive."""

    def matches(resource: Resource) -> bool:
        for node in Dataset.values(resource, path):
            for system, code, texts in _codings(node):
                if modifier == "text":
                    if any(string_matches(value, t) for t in texts):
                        return True
                    continue
                if "|" in value:
                    want_system, want_code = value.split("|", 1)
                    if (system or "") == want_system and code == want_code:
                        return True
                elif code == value:
                    return True
        return False

    return matches


def dated(path: str, search: str) -> Callable[[Resource], bool]:
    """R4 search.html#date on the values (date, dateTime, instant or Period) at *path*."""

    def ranges(node: Any) -> Iterable[tuple[dt.datetime, dt.datetime]]:
        if isinstance(node, str):
            yield date_range(node)
        elif isinstance(node, dict):
            low = (
                date_range(node["start"])[0]
                if "start" in node
                else dt.datetime.min.replace(tzinfo=dt.timezone.utc)
            )
            high = (
                date_range(node["end"])[1]
                if "end" in node
                else dt.datetime.max.replace(tzinfo=dt.timezone.utc)
            )
            yield low, high

    return lambda r: any(
        date_matches(search, rng) for n in Dataset.values(r, path) for rng in ranges(n)
    )


def quantity(path: str, search: str) -> Callable[[Resource], bool]:
    """R4 search.html#quantity: ``[prefix]number[|system|code]``; ``||code`` is code or unit."""
    number, _, unit = search.partition("|")
    system, _, code = unit.partition("|")

    def matches(resource: Resource) -> bool:
        for node in Dataset.values(resource, path):
            if unit and system and (node.get("system"), node.get("code")) != (system, code):
                continue
            if unit and not system and code not in (node.get("code"), node.get("unit")):
                continue
            if quantity_matches(number, float(node["value"])):
                return True
        return False

    return matches


def refers(path: str, key: str) -> Callable[[Resource], bool]:
    return lambda r: any(
        isinstance(ref, dict) and ref.get("reference") == key for ref in Dataset.values(r, path)
    )


def strings(path: str, value: str, modifier: str = "") -> Callable[[Resource], bool]:
    return lambda r: any(
        string_matches(value, v, modifier) for v in Dataset.values(r, path) if isinstance(v, str)
    )


def human_name(value: str) -> Callable[[Resource], bool]:
    """R4 Patient ``name``: any of family, given, prefix, suffix, text (starts-with)."""
    return lambda r: any(
        strings(f"name.{part}", value)(r)
        for part in ("family", "given", "prefix", "suffix", "text")
    )


def select(type_: str, predicate: Callable[[dict[str, str]], Callable[[Resource], bool]]) -> Spec:
    return lambda data, ctx: data.keys(type_, predicate(ctx))


def chained(
    type_: str, path: str, target_predicate: Callable[[dict[str, str]], Callable[[Resource], bool]]
) -> Spec:
    """R4 search.html#chaining: resources whose reference at *path* resolves to a match."""

    def spec(data: Dataset, ctx: dict[str, str]) -> set[str]:
        wanted = target_predicate(ctx)
        return data.keys(type_, lambda r: any(wanted(t) for t in data.referenced(r, path)))

    return spec


def has(
    type_: str,
    source: str,
    path: str,
    predicate: Callable[[dict[str, str]], Callable[[Resource], bool]],
) -> Spec:
    """R4 search.html#has: *type_* resources referred to (at *path*) by a matching *source*."""

    def spec(data: Dataset, ctx: dict[str, str]) -> set[str]:
        wanted = predicate(ctx)
        keys = set()
        for resource in data.of_type(source):
            if wanted(resource):
                keys |= {f"{t['resourceType']}/{t['id']}" for t in data.referenced(resource, path)}
        return {k for k in keys if k.startswith(f"{type_}/")}

    return spec


# --------------------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class Case:
    """One search. Without *spec* Medplum is the oracle; with it, R4's text is.

    Attributes
    ----------
    query : str
        Relative to the FHIR base; ``{name}`` fields come from the data (:func:`_context`).
    spec : callable, optional
        Expected ``Type/id`` matches computed per R4, where Medplum cannot be trusted.
    why : str
        The R4 section followed and, for spec cases, Medplum's deviation.
    includes : callable, optional
        ``(data, ctx) -> set`` of resources R4 says ``_include``/``_revinclude`` add.
    nonempty : bool
        The data is built so that the search finds something.
    """

    query: str
    spec: Spec | None = None
    why: str = ""
    includes: Spec | None = None
    nonempty: bool = True


CASES: list[Case] = [
    # ---- string (R4 search.html#string) --------------------------------------------------
    Case(
        "Patient?family=darcy",
        select("Patient", lambda c: strings("name.family", "darcy")),
        "string default = starts-with, case-insensitive (Medplum: contains)",
    ),
    Case(
        "Patient?given=zoe",
        select("Patient", lambda c: strings("name.given", "zoe")),
        "string matching folds accents: Zoë matches zoe (Medplum does not fold)",
    ),
    Case(
        "Patient?family:exact=Darcy",
        select("Patient", lambda c: strings("name.family", "Darcy", "exact")),
        ":exact = whole value, case-sensitive (Medplum ignores :exact)",
    ),
    Case(
        "Patient?family:exact=darcy",
        select("Patient", lambda c: strings("name.family", "darcy", "exact")),
        ":exact is case-sensitive: no match (Medplum ignores :exact)",
        nonempty=False,
    ),
    Case("Patient?family:contains=arcy", why=":contains matches anywhere, case-insensitive"),
    Case(
        "Patient?name=anne",
        select("Patient", lambda c: human_name("anne")),
        "Patient name: any part of HumanName, starts-with (Medplum: contains)",
    ),
    Case(
        "Patient?family={family_prefix}",
        select("Patient", lambda c: strings("name.family", c["family_prefix"])),
        "starts-with on the sandbox's names (Medplum: contains)",
    ),
    Case("Endpoint?name:contains=dicomweb", why="string :contains on Endpoint.name"),
    # ---- token (R4 search.html#token) ----------------------------------------------------
    Case("Patient?gender=female"),
    Case("Patient?gender=male,female", why="comma = OR (search.html#combining)"),
    Case("Patient?gender:not=female", why=":not: resources without that code"),
    Case(
        "Patient?gender=FEMALE",
        select("Patient", lambda c: token("gender", "FEMALE")),
        "tokens are case-sensitive (search.html#token); Medplum ignores case",
        nonempty=False,
    ),
    Case("Patient?identifier={issuer}|{pid}", why="token system|code on Identifier"),
    Case("Patient?identifier=|E-P3", why="|code: identifiers without a system"),
    Case("Patient?identifier=E-P1", why="code alone: any system"),
    Case("ImagingStudy?modality=CT", why="R4 defines modality on ImagingStudy.series.modality"),
    Case(
        "ImagingStudy?modality=DX",
        select("ImagingStudy", lambda c: token("series.modality", "DX")),
        "series.modality, not ImagingStudy.modality (edge-study has study-level DX only)",
        nonempty=False,
    ),
    Case(
        "ImagingStudy?modality=ct",
        select("ImagingStudy", lambda c: token("series.modality", "ct")),
        "DICOM codes are case-sensitive (search.html#token); Medplum ignores case",
        nonempty=False,
    ),
    Case("ImagingStudy?modality=http://dicom.nema.org/resources/ontology/DCM|MR,CT"),
    Case("ImagingStudy?bodysite=http://snomed.info/sct|{bodysite}"),
    Case("ImagingStudy?dicom-class=urn:ietf:rfc:3986|{sop_class}"),
    Case("ImagingStudy?identifier=urn:dicom:uid|urn:oid:{study_uid}"),
    Case("ImagingStudy?identifier={accession}", why="accession number (type ACSN)"),
    Case("ImagingStudy?series={series_uid}"),
    Case("ImagingStudy?status=available&reason=http://snomed.info/sct|{reason}", why="AND"),
    Case("ImagingStudy?encounter:missing=true", why=":missing (search.html#modifiers)"),
    Case("Condition?code=http://snomed.info/sct|{reason}"),
    Case("Condition?code={reason},{reason2}"),
    Case("Condition?code=|{reason}", why="|code: codings without a system — none", nonempty=False),
    Case(
        "Condition?code:text={reason_word}",
        select("Condition", lambda c: token("code", c["reason_word"], "text")),
        ":text is a string search on text/display (Medplum compares the whole text)",
    ),
    Case(
        "Condition?code:text=broken",
        select("Condition", lambda c: token("code", "broken", "text")),
        ":text on CodeableConcept.text",
    ),
    Case("Condition?clinical-status=active&verification-status=confirmed"),
    Case(
        "Condition?verification-status=http://terminology.hl7.org/CodeSystem/condition-ver-status|refuted"
    ),
    Case("Observation?code=http://loinc.org|8302-2"),
    Case("Observation?code=8302-2,29463-7&category=vital-signs"),
    Case("Observation?code:not=http://loinc.org|2345-7&category=laboratory"),
    Case("Encounter?class=EMER"),
    Case("Encounter?reason-code={reason}"),
    Case("DiagnosticReport?code=http://loinc.org|18748-4&category=RAD"),
    Case("DiagnosticReport?conclusion=http://snomed.info/sct|{reason}"),
    Case(
        "Endpoint?connection-type=http://terminology.hl7.org/CodeSystem/endpoint-connection-type|dicom-wado-rs&status=active"
    ),
    Case("Patient?_id={pat},{pat2}", why="_id (search.html#id) with OR"),
    # ---- uri (R4 search.html#uri) --------------------------------------------------------
    Case("Observation?_profile=http://hl7.org/fhir/StructureDefinition/bodyheight"),
    # ---- date (R4 search.html#date, #prefix) ---------------------------------------------
    Case("ImagingStudy?started=ge2020-01-01"),
    Case("ImagingStudy?started=lt2018"),
    Case("ImagingStudy?started=gt2019-06-30T12:00:00Z"),
    Case("ImagingStudy?started=le2020-12-31"),
    Case("ImagingStudy?started=sa2021-01-01"),
    Case("ImagingStudy?started=eb2019-01-01"),
    Case("ImagingStudy?started=2020", why="eq on a year: every instant inside it"),
    Case("Patient?birthdate=lt1960"),
    Case("Patient?birthdate=ge1940&birthdate=lt1960", why="repeated parameter = AND"),
    Case("Patient?birthdate=1950", why="eq: the year contains 1950 and 1950-06-15"),
    Case(
        "Patient?birthdate=1950-06",
        select("Patient", lambda c: dated("birthDate", "1950-06")),
        "eq: search range must contain the target; '1950' is not inside 1950-06 (Medplum: overlap)",
    ),
    Case(
        "Patient?birthdate=ne1950-06-15",
        select("Patient", lambda c: dated("birthDate", "ne1950-06-15")),
        "ne: not eq — includes '1950', excludes resources without a birthDate "
        "(Medplum matches missing values)",
    ),
    Case(
        "Encounter?date=2020",
        select("Encounter", lambda c: dated("period", "2020")),
        "eq on a Period: must lie inside 2020; edge-enc starts in 2019 (Medplum: overlap)",
    ),
    Case("Observation?date=ge2021-01-01T00:00:00Z"),
    Case("DiagnosticReport?issued=lt2020-06-01T00:00:00Z"),
    Case("Condition?onset-date=le2019-06-01"),
    Case("Condition?onset-date=2019"),
    Case("DiagnosticReport?_lastUpdated=gt{T}", why="_lastUpdated: only phase 2"),
    Case("Patient?_lastUpdated=gt{T}", why="_lastUpdated: nothing after T", nonempty=False),
    Case("Patient?_lastUpdated=le{T}"),
    # ---- quantity (R4 search.html#quantity); Medplum matches no quantity at all ----------
    Case(
        "Observation?value-quantity=gt139.5|http://unitsofmeasure.org|mm[Hg]",
        select("Observation", lambda c: quantity("valueQuantity", "gt139.5|" + UCUM + "|mm[Hg]")),
        "prefix + system|code (Medplum: quantity unsupported)",
    ),
    Case(
        "Observation?code=http://loinc.org|2160-0&value-quantity=ge1.25",
        select(
            "Observation",
            lambda c: (
                lambda r: (
                    token("code", LOINC + "|2160-0")(r) and quantity("valueQuantity", "ge1.25")(r)
                )
            ),
        ),
        "number without units, AND with a token (Medplum: quantity unsupported)",
    ),
    Case(
        "Observation?value-quantity=lt12.05||g/dL",
        select("Observation", lambda c: quantity("valueQuantity", "lt12.05||g/dL")),
        "||code: unit code or unit, any system (Medplum: quantity unsupported)",
    ),
    Case(
        "Observation?value-quantity={hb}",
        select("Observation", lambda c: quantity("valueQuantity", c["hb"])),
        "eq uses the search value's implicit precision (Medplum: quantity unsupported)",
    ),
    Case(
        "Encounter?length=gt199.5|http://unitsofmeasure.org|min",
        select("Encounter", lambda c: quantity("length", "gt199.5|" + UCUM + "|min")),
        "quantity on a Duration (Medplum: quantity unsupported)",
    ),
    # ---- reference (R4 search.html#reference) --------------------------------------------
    Case("ImagingStudy?patient=Patient/{pat}"),
    Case("ImagingStudy?subject=Patient/{pat}&endpoint=Endpoint/dicomweb"),
    Case("Observation?encounter=Encounter/{enc}"),
    Case("DiagnosticReport?patient=Patient/{pat},Patient/{pat2}"),
    Case("Encounter?reason-reference=Condition/{cond}"),
    Case(
        "ImagingStudy?patient={pat}",
        select("ImagingStudy", lambda c: refers("subject", f"Patient/{c['pat']}")),
        "a bare id is allowed when the target type is unique (Medplum needs Type/id)",
    ),
    Case(
        "ImagingStudy?subject={base}Patient/{pat}",
        select("ImagingStudy", lambda c: refers("subject", f"Patient/{c['pat']}")),
        "an absolute URL on the server's own base equals the relative reference",
    ),
    Case(
        "ImagingStudy?subject:Patient={pat}",
        select("ImagingStudy", lambda c: refers("subject", f"Patient/{c['pat']}")),
        ":Type modifier (Medplum ignores it and matches nothing)",
    ),
    # ---- chaining (R4 search.html#chaining); Medplum matches nothing ---------------------
    Case(
        "ImagingStudy?patient.gender=female",
        chained("ImagingStudy", "subject", lambda c: token("gender", "female")),
        "chained token",
    ),
    Case(
        "ImagingStudy?subject:Patient.birthdate=lt1960",
        chained("ImagingStudy", "subject", lambda c: dated("birthDate", "lt1960")),
        "chained with :Type and a date prefix",
    ),
    Case(
        "Observation?patient.identifier={issuer}|{pid}",
        chained(
            "Observation", "subject", lambda c: token("identifier", f"{c['issuer']}|{c['pid']}")
        ),
        "chained identifier",
    ),
    Case(
        "DiagnosticReport?encounter.class=EMER",
        chained("DiagnosticReport", "encounter", lambda c: token("class", "EMER")),
        "chained through the Encounter",
    ),
    Case(
        "Condition?subject:Patient.family:exact=D'Arcy",
        chained("Condition", "subject", lambda c: strings("name.family", "D'Arcy", "exact")),
        "chained string with a modifier and an apostrophe",
    ),
    # ---- _has (R4 search.html#has); Medplum: not implemented (empty) ---------------------
    Case(
        "Patient?_has:Condition:patient:code={reason}",
        has("Patient", "Condition", "subject", lambda c: token("code", c["reason"])),
        "reverse chaining",
    ),
    Case(
        "Patient?_has:ImagingStudy:patient:modality=CT",
        has("Patient", "ImagingStudy", "subject", lambda c: token("series.modality", "CT")),
        "reverse chaining on series.modality",
    ),
    Case(
        "Encounter?_has:Observation:encounter:code=http://loinc.org|2160-0",
        has("Encounter", "Observation", "encounter", lambda c: token("code", LOINC + "|2160-0")),
        "reverse chaining on another reference",
    ),
]


#: _include / _revinclude: matches against Medplum (which ignores the includes), the
#: included resources against R4 search.html#include.
INCLUDE_CASES: list[tuple[str, Callable[[Dataset, set[str]], set[str]]]] = [
    (
        "ImagingStudy?modality=CT&_include=ImagingStudy:patient",
        lambda d, m: {k for s in m for k in _refs(d, s, "subject")},
    ),
    (
        "ImagingStudy?_id={study}&_include=ImagingStudy:endpoint&_include=ImagingStudy:encounter",
        lambda d, m: {k for s in m for k in _refs(d, s, "endpoint") + _refs(d, s, "encounter")},
    ),
    (
        "Observation?code=2160-0&_include=Observation:patient:Patient",
        lambda d, m: {k for s in m for k in _refs(d, s, "subject")},
    ),
    (
        "Patient?_id={pat}&_revinclude=ImagingStudy:patient",
        lambda d, m: {
            _key(s) for p in m for s in d.referring("ImagingStudy", "subject", d.by_key[p])
        },
    ),
    (
        "Patient?gender=female&_revinclude=Condition:subject",
        lambda d, m: {_key(c) for p in m for c in d.referring("Condition", "subject", d.by_key[p])},
    ),
    (
        # :iterate follows the included Encounter to its reason Condition
        "DiagnosticReport?_id={report}&_include=DiagnosticReport:encounter"
        "&_include:iterate=Encounter:reason-reference",
        lambda d, m: {
            k
            for r in m
            for enc in _refs(d, r, "encounter")
            for k in [enc, *_refs(d, enc, "reasonReference")]
        },
    ),
    (
        # :iterate from the revincluded Encounters to their Observations
        "Patient?_id={pat}&_revinclude=Encounter:subject&_revinclude:iterate=Observation:encounter",
        lambda d, m: {
            k
            for p in m
            for enc in d.referring("Encounter", "subject", d.by_key[p])
            for k in [_key(enc)] + [_key(o) for o in d.referring("Observation", "encounter", enc)]
        },
    ),
]


def _key(resource: Resource) -> str:
    return f"{resource['resourceType']}/{resource['id']}"


def _refs(data: Dataset, key: str, path: str) -> list[str]:
    return [_key(t) for t in data.referenced(data.by_key[key], path)]


def _assert_clean(answer: Answer, query: str) -> None:
    assert len(answer.matches) == len(set(answer.matches)), f"{query}: duplicate entries"


@pytest.mark.parametrize("case", CASES, ids=[c.query for c in CASES])
def test_search_agrees(case: Case, servers: Servers) -> None:
    """Each search: same matches and total as Medplum, or as R4 says where Medplum errs."""
    query = case.query.format(**servers.ctx)
    ours = servers.ours.search(query)
    _assert_clean(ours, query)
    if case.spec is None:
        theirs = servers.medplum.search(query)
        expected = set(theirs.matches)
        assert set(ours.matches) == expected, f"{query}: differs from Medplum"
        assert ours.total == theirs.total, (
            f"{query}: total {ours.total} != Medplum's {theirs.total}"
        )
    else:
        expected = case.spec(servers.data, servers.ctx)
        assert set(ours.matches) == expected, f"{query}: differs from R4 ({case.why})"
        if ours.total is not None:
            assert ours.total == len(expected)
    assert not ours.included, f"{query}: included resources without _include"
    if case.nonempty:
        assert expected, f"{query}: the data should make this search find something"


@pytest.mark.parametrize(
    "query,expected_includes", INCLUDE_CASES, ids=[q for q, _ in INCLUDE_CASES]
)
def test_include_and_revinclude(
    query: str, expected_includes: Callable[[Dataset, set[str]], set[str]], servers: Servers
) -> None:
    """_include/_revinclude (R4 search.html#include): matches as Medplum, includes per R4.

    Medplum's in-memory engine ignores both parameters, so it still gives the matches.
    """
    query = query.format(**servers.ctx)
    ours = servers.ours.search(query)
    theirs = servers.medplum.search(query)
    _assert_clean(ours, query)
    assert set(ours.matches) == set(theirs.matches) != set()
    assert ours.total == theirs.total
    wanted = expected_includes(servers.data, set(ours.matches)) - set(ours.matches)
    assert wanted, f"{query}: the data should give included resources"
    assert set(ours.included) == wanted


# --------------------------------------------------------------------------- result control


@pytest.mark.parametrize(
    "query", ["ImagingStudy?_count=7", "Observation?category=laboratory&_count=25&_sort=_id"]
)
def test_paging_walks_every_match_once(query: str, servers: Servers) -> None:
    """_count + next links (R4 http.html#paging, search.html#count): all matches, once each.

    Medplum's engine writes no links; server.mjs adds them from _count/_offset.
    """
    ours = servers.ours.search(query)
    theirs = servers.medplum.search(query)
    _assert_clean(ours, query)
    assert set(ours.matches) == set(theirs.matches)
    assert ours.total == theirs.total == len(ours.matches)
    count = int(query.split("_count=")[1].split("&")[0])
    assert len(ours.bundles) == -(-len(ours.matches) // count) > 1
    for number, bundle in enumerate(ours.bundles):
        assert len(bundle.get("entry", [])) <= count
        assert _link(bundle, "self")
        assert (_link(bundle, "previous") is not None) == (number > 0)
        assert (_link(bundle, "next") is not None) == (number < len(ours.bundles) - 1)


def test_summary_count_gives_the_total_only(servers: Servers) -> None:
    """_summary=count (search.html#summary): the total, no entries."""
    query = "ImagingStudy?modality=CT&_summary=count"
    ours, theirs = servers.ours.search(query), servers.medplum.search(query)
    assert ours.total == theirs.total > 0
    assert ours.matches == [] and theirs.matches == []


@pytest.mark.parametrize("query", ["Patient?gender=female&_total=accurate", "Patient?_total=none"])
def test_total_parameter(query: str, servers: Servers) -> None:
    """_total (search.html#total): ``accurate`` gives the exact count; ``none`` lets the
    server omit it (Medplum always sends it), the matches are the same either way."""
    ours, theirs = servers.ours.search(query), servers.medplum.search(query)
    assert set(ours.matches) == set(theirs.matches) != set()
    if query.endswith("accurate"):
        assert ours.total == theirs.total == len(ours.matches)
    else:
        assert ours.total in (None, len(ours.matches))


def test_elements_returns_the_asked_elements(servers: Servers) -> None:
    """_elements (search.html#elements): only those elements, marked SUBSETTED.

    Medplum's engine ignores _elements, so only the matches are compared with it.
    """
    query = "Patient?gender=male&_elements=gender,birthDate"
    ours, theirs = servers.ours.search(query), servers.medplum.search(query)
    assert set(ours.matches) == set(theirs.matches) != set()
    for bundle in ours.bundles:
        for entry in bundle["entry"]:
            resource = entry["resource"]
            assert set(resource) <= {"resourceType", "id", "meta", "gender", "birthDate"}
            assert resource["gender"] == "male"
            tags = resource.get("meta", {}).get("tag", [])
            assert any(t.get("code") == "SUBSETTED" for t in tags), resource


def _sort_key(resource: Resource, param: str) -> Any:
    paths = {
        "birthdate": "birthDate",
        "started": "started",
        "gender": "gender",
        "date": "effectiveDateTime",
        "family": "name.family",
    }
    values = Dataset.values(resource, paths[param])
    return values[0] if values else None


@pytest.mark.parametrize(
    "query,keys",
    [
        ("Patient?_sort=birthdate", [("birthdate", False)]),
        ("ImagingStudy?_sort=-started", [("started", True)]),
        ("Patient?_sort=gender,-birthdate", [("gender", False), ("birthdate", True)]),
        ("Patient?_sort=-birthdate,family", [("birthdate", True), ("family", False)]),
    ],
    ids=["birthdate", "-started", "gender,-birthdate", "-birthdate,family"],
)
def test_sort_orders_matches(query: str, keys: list[tuple[str, bool]], servers: Servers) -> None:
    """_sort (search.html#sort): keys in priority order, ``-`` descending.

    The set of matches is compared with Medplum; the order with R4 (Medplum sorts several
    keys last-key-first). Two neighbours are only compared on a key where both have a value
    and their date ranges do not overlap (R4 leaves the rest to the server).
    """
    ours, theirs = servers.ours.search(query), servers.medplum.search(query)
    assert set(ours.matches) == set(theirs.matches) != set()
    resources = [servers.data.by_key[k] for k in ours.matches]
    for before, after in itertools.pairwise(resources):
        for param, descending in keys:
            a, b = _sort_key(before, param), _sort_key(after, param)
            if a is None or b is None:
                break
            if param in ("birthdate", "started", "date"):
                (a_low, a_high), (b_low, b_high) = date_range(a), date_range(b)
                if a_high > b_low and b_high > a_low:  # overlapping ranges: a tie here
                    continue
                a, b = a_low, b_low
            if a == b:
                continue
            assert (a > b) if descending else (a < b), (
                f"{query}: {_key(before)} before {_key(after)}"
            )
            break


def test_post_search_equals_get(servers: Servers) -> None:
    """POST [type]/_search with a form body (R4 http.html#search) = the GET search."""
    response = servers.ours.session.post(
        servers.ours.base + "Patient/_search",
        data={"gender": "female", "birthdate": "lt1960"},
        headers={"Accept": "application/fhir+json"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    posted = {f"Patient/{e['resource']['id']}" for e in response.json().get("entry", [])}
    theirs = servers.medplum.search("Patient?gender=female&birthdate=lt1960&_count=1000")
    assert posted == set(theirs.matches) != set()


@pytest.mark.parametrize(
    "query,eq_query,window",
    [
        ("ImagingStudy?started=ap2020-06", "ImagingStudy?started=2020-06", ("2019", "2021")),
        ("Observation?value-quantity=ap{hb}||g/dL", "Observation?value-quantity={hb}||g/dL", None),
    ],
    ids=["date", "quantity"],
)
def test_approximately(query: str, eq_query: str, window: Any, servers: Servers) -> None:
    """``ap`` (search.html#prefix): at least the ``eq`` matches, and only values near the
    search value (R4 recommends 10 %; the test allows any width up to a year / 10 %).

    Medplum treats ``ap`` as ``eq`` on dates and matches no quantity, so R4 is the oracle.
    """
    ctx = servers.ctx
    ours = set(servers.ours.search(query.format(**ctx)).matches)
    exact = set(servers.ours.search(eq_query.format(**ctx)).matches)
    assert exact <= ours
    for key in ours:
        resource = servers.data.by_key[key]
        if window is not None:
            low, high = date_range(window[0])[0], date_range(window[1])[1]
            start, end = date_range(resource["started"])
            assert low <= start and end <= high, key
        else:
            assert quantity_matches("ap" + ctx["hb"], resource["valueQuantity"]["value"]), key
    if window is None:
        assert ours, "the data holds that hemoglobin value"


def test_medplum_validates_every_resource(
    resources: list[Resource], medplum_server: MedplumServer
) -> None:
    """A second independent R4 validator: Medplum's (``POST /$validate`` in server.mjs,
    @medplum/core validateResource against the R4 StructureDefinitions)."""
    served = [
        # the store renders the Endpoint's placeholder as a URL
        {**r, "address": "http://127.0.0.1:8042/dicom-web"}
        if r["resourceType"] == "Endpoint"
        else r
        for r in resources
    ]
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in served],
    }
    outcome = medplum_server.post("$validate", bundle).json()
    problems = [i for i in outcome.get("issue", []) if i.get("severity") in ("error", "fatal")]
    assert problems == []


# --------------------------------------------------------------------------- system search
# R4 search §3.1.1.3. Medplum 4.5's in-memory engine answers ``GET [base]?_type=…`` with an
# empty searchset (total 0) and refuses a system search without ``_type`` (400): its
# MemoryRepository searches only one type. So the system search of the embedded store is
# compared with the union of Medplum's type searches with the same common parameters.

SYSTEM_QUERIES = [
    ("Patient,ImagingStudy", ""),
    ("ImagingStudy,DiagnosticReport,Condition", "_lastUpdated=ge{T}"),
    ("Patient,Encounter", "_lastUpdated=lt{T}"),
    ("Patient,ImagingStudy,Observation", "_id={study},{pat}"),
]


@pytest.mark.parametrize(("types", "params"), SYSTEM_QUERIES, ids=[t for t, _ in SYSTEM_QUERIES])
def test_system_search_is_the_union_of_type_searches(
    types: str, params: str, servers: Servers
) -> None:
    params = params.format(**servers.ctx)
    ours = servers.ours.search(f"?_type={types}&_count=200" + (f"&{params}" if params else ""))
    union: list[str] = []
    for type_ in types.split(","):
        union += servers.medplum.search(
            f"{type_}?_count=200" + (f"&{params}" if params else "")
        ).matches
    assert sorted(ours.matches) == sorted(union)
    assert ours.total == len(union)
    medplum_system = servers.medplum.get(f"?_type={types}")
    assert medplum_system.status_code == 200 and medplum_system.json()["total"] == 0  # deviation


def test_system_search_refusals_follow_r4(servers: Servers) -> None:
    """A type-specific parameter across types: R4 "SHALL be common" — ours 400, Medplum
    ignores the rule (an empty answer); no ``_type``: R4 allows it, Medplum refuses."""
    uncommon = servers.ours.get("?_type=Patient,ImagingStudy&gender=male")
    assert uncommon.status_code == 400 and "gender" in uncommon.text
    assert servers.medplum.get("?_type=Patient,ImagingStudy&gender=male").status_code == 200
    every = servers.ours.get(f"?_lastUpdated=ge{servers.ctx['T']}&_summary=count")
    reports = servers.medplum.search(f"DiagnosticReport?_lastUpdated=ge{servers.ctx['T']}")
    assert every.status_code == 200 and every.json()["total"] == len(reports.matches)
    assert servers.medplum.get(f"?_lastUpdated=ge{servers.ctx['T']}").status_code == 400


# --------------------------------------------------------------------------- PATCH
# R4 http.html "patch" with JSON Patch (RFC 6902). Run after the searches (own ids, so the
# search data is untouched). Medplum 4.5's in-memory engine applies JSON Patch with the
# same results, but: it ignores If-Match on PATCH, answers 400 (not R4's 422) to a failed
# `test` or a missing target, and stores a patch that changes `id` or makes the resource
# invalid. Those cases are checked against the R4 text on the embedded store only.

JSON_PATCH_TYPE = {"Content-Type": "application/json-patch+json"}


def _patch(fhir: Fhir, url: str, operations: Any) -> requests.Response:
    return fhir.session.patch(
        fhir.base + url, data=json.dumps(operations), headers=JSON_PATCH_TYPE, timeout=60
    )


def _content(resource: Resource) -> Resource:
    return {k: v for k, v in resource.items() if k != "meta"}


def _patch_targets() -> list[Resource]:
    return [
        _edge_patient("patch1", "Patchwork", ["Ann"], "female", birthDate="1970-01-02"),
        _edge_patient("patch2", "Patchwork", ["Bob"], "male"),
        _edge_patient("patch3", "Patchwork", ["Cy"], "male"),
    ]


@pytest.fixture(scope="module")
def patched(servers: Servers) -> Servers:
    for fhir in (servers.ours, servers.medplum):
        for resource in _patch_targets():
            answer = fhir.session.put(
                f"{fhir.base}Patient/{resource['id']}", json=resource, timeout=60
            )
            assert answer.ok, answer.text
    return servers


PATCHES: list[list[dict[str, Any]]] = [
    [{"op": "replace", "path": "/gender", "value": "other"}],
    [{"op": "add", "path": "/name/0/given/-", "value": "Zoë"}],
    [{"op": "add", "path": "/name/0/given/0", "value": "First"}],
    [{"op": "remove", "path": "/birthDate"}],
    [{"op": "copy", "from": "/name/0", "path": "/name/-"}],
    [{"op": "move", "from": "/name/1", "path": "/name/0"}],
    [
        {"op": "test", "path": "/gender", "value": "other"},
        {"op": "add", "path": "/active", "value": True},
    ],
    [{"op": "add", "path": "/telecom", "value": [{"system": "phone", "value": "1"}]}],
    [{"op": "replace", "path": "/telecom/0/value", "value": "2"}],
]


def test_json_patch_results_agree(patched: Servers) -> None:
    """The same sequence of patches gives the same resource on both servers."""
    for operations in PATCHES:
        answers = [
            _patch(f, "Patient/edge-patch1", operations) for f in (patched.ours, patched.medplum)
        ]
        assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
        assert _content(answers[0].json()) == _content(answers[1].json()), operations
    for fhir in (patched.ours, patched.medplum):
        # the patched values are searchable on both
        found = fhir.search("Patient?telecom=2&family=Patchwork")
        assert found.matches == ["Patient/edge-patch1"]


def test_conditional_patch_agrees(patched: Servers) -> None:
    op = [{"op": "add", "path": "/active", "value": False}]
    for query, status in [
        ("Patient?family=Nobodyhere", 404),
        ("Patient?family=Patchwork&gender=male", 412),
        ("Patient?family=Patchwork&given=Cy", 200),
    ]:
        answers = [_patch(f, query, op) for f in (patched.ours, patched.medplum)]
        assert [a.status_code for a in answers] == [status, status], query
    for fhir in (patched.ours, patched.medplum):
        assert fhir.get("Patient/edge-patch3").json()["active"] is False


@pytest.mark.parametrize("kind", ["batch", "transaction"])
def test_patch_entries_in_bundles_agree(kind: str, patched: Servers) -> None:
    """R4: a JSON Patch travels in a Bundle as a base64 Binary."""
    operations = [{"op": "replace", "path": "/name/0/given", "value": [kind]}]
    data = base64.b64encode(json.dumps(operations).encode()).decode()
    bundle = {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [
            {
                "request": {"method": "PATCH", "url": "Patient/edge-patch2"},
                "resource": {
                    "resourceType": "Binary",
                    "contentType": JSON_PATCH_TYPE["Content-Type"],
                    "data": data,
                },
            }
        ],
    }
    results = []
    for fhir in (patched.ours, patched.medplum):
        answer = fhir.session.post(fhir.base, json=bundle, timeout=60)
        assert answer.status_code == 200, answer.text
        entry = answer.json()["entry"][0]
        assert entry["response"]["status"].startswith("200")
        results.append(_content(fhir.get("Patient/edge-patch2").json()))
    assert results[0] == results[1] and results[0]["name"][0]["given"] == [kind]


def test_patch_errors_follow_r4(patched: Servers) -> None:
    """Where Medplum departs from R4 (see the section comment), R4 decides."""
    ours, medplum = patched.ours, patched.medplum
    for fhir in (ours, medplum):  # a malformed document: 400 on both
        assert (
            _patch(fhir, "Patient/edge-patch1", [{"op": "frob", "path": "/a"}]).status_code == 400
        )
    failed_test = [{"op": "test", "path": "/gender", "value": "unknown"}]
    assert _patch(ours, "Patient/edge-patch1", failed_test).status_code == 422
    assert _patch(medplum, "Patient/edge-patch1", failed_test).status_code == 400  # deviation
    stale = ours.session.patch(
        ours.base + "Patient/edge-patch1",
        data=json.dumps([{"op": "replace", "path": "/gender", "value": "male"}]),
        headers={**JSON_PATCH_TYPE, "If-Match": 'W/"1"'},
        timeout=60,
    )
    assert stale.status_code == 412
    assert (
        _patch(
            ours, "Patient/edge-patch1", [{"op": "replace", "path": "/id", "value": "x"}]
        ).status_code
        == 400
    )
    invalid = [{"op": "add", "path": "/birthDate", "value": "1970-13-45"}]
    assert _patch(ours, "Patient/edge-patch1", invalid).status_code == 400
