"""Benchmark: flatten 50,000 ImagingStudy resources to a series-level DataFrame.

Claim (issue 4): imagingkit's flattening is at least 5× faster than
``pandas.json_normalize`` + ``explode`` and than FHIR-PYrate's ``bundles_to_dataframe``.

"From the same bytes": every method starts from the same list of raw JSON search pages
(searchset Bundles of 500 entries, as a FHIR server sends them) and ends with a
series-level DataFrame holding the same facts — study id, subject, Study Instance UID,
accession number, study date (parsed), description, counts, status, series UID, number,
modality, description, body site, instance count. Parsing the JSON is part of every
method's time.

The data are generated here, deterministically (``--seed``), in the shape of the NCI
Imaging Data Commons index: about six series per study (1–20, skewed), IDC-like
modalities and body parts, no instance lists (``numberOfInstances`` only), ≈ 2.4 KB per
study.

    .venv/bin/python bench/flatten_imagingstudy.py [--studies 50000] [--repeat 3]

FHIR-PYrate is measured if it is installed (``pip install fhir-pyrate``; it is not a
dependency of imagingkit), with the FHIRPath columns its README recommends plus the
``explode`` it needs for series.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import pandas as pd

from imagingkit.fhir.flatten import flatten

PAGE_SIZE = 500
DCM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED = "http://snomed.info/sct"
#: (study description, modalities of its series, body part SNOMED code, typical series count)
PROTOCOLS = [
    ("CT CHEST W CONTRAST", ("CT", "CT", "CT", "SEG", "SR"), ("51185008", "Thorax"), 7),
    ("CT ABDOMEN PELVIS", ("CT", "CT", "CT"), ("818981001", "Abdomen"), 6),
    ("MR BRAIN WO W CONTRAST", ("MR",), ("12738006", "Brain"), 9),
    ("PET-CT WHOLE BODY", ("PT", "CT", "PT", "CT"), ("38266002", "Entire body as a whole"), 6),
    ("MAMMO SCREENING", ("MG",), ("76752008", "Breast"), 4),
    ("MR PROSTATE", ("MR", "MR", "SEG"), ("41216001", "Prostate"), 8),
    ("XR CHEST 2 VIEWS", ("CR", "DX"), ("51185008", "Thorax"), 2),
    ("SLIDE MICROSCOPY", ("SM",), ("39607008", "Lung"), 3),
]
SERIES_DESCRIPTIONS = {
    "CT": ["AXIAL 5MM", "AXIAL 1.25MM LUNG", "CORONAL MPR", "SCOUT", "ARTERIAL", "VENOUS"],
    "MR": ["T1 AX", "T2 FLAIR", "DWI", "ADC", "T1 POST GAD", "SWI", "T2 SAG"],
    "PT": ["PET WB AC", "PET WB NAC"],
    "MG": ["L CC", "L MLO", "R CC", "R MLO"],
    "CR": ["PA", "LAT"],
    "DX": ["PA", "LAT"],
    "SEG": ["Segmentation"],
    "SR": ["Measurements"],
    "SM": ["Slide 1", "Slide 2"],
}
INSTANCES = {"CT": 180, "MR": 40, "PT": 250, "MG": 1, "CR": 1, "DX": 1, "SEG": 1, "SR": 1, "SM": 6}


def make_study(rng: random.Random, n: int) -> dict[str, Any]:
    """One IDC-shaped ImagingStudy (deterministic in *rng*)."""
    description, modalities, (site_code, site_display), typical = rng.choice(PROTOCOLS)
    uid = f"1.3.6.1.4.1.14519.5.2.1.{rng.randrange(10**4)}.{rng.randrange(10**12)}.{n}"
    count = max(1, min(20, int(rng.gauss(typical, 2))))
    series = []
    total = 0
    for index in range(count):
        modality = modalities[index % len(modalities)]
        instances = max(1, int(INSTANCES[modality] * rng.uniform(0.3, 1.7)))
        total += instances
        element: dict[str, Any] = {
            "uid": f"{uid}.{index + 1}.{rng.randrange(10**6)}",
            "number": index + 1,
            "modality": {"system": DCM, "code": modality},
            "description": rng.choice(SERIES_DESCRIPTIONS[modality]),
            "numberOfInstances": instances,
            "bodySite": {"system": SNOMED, "code": site_code, "display": site_display},
        }
        if modality == "MG":
            element["laterality"] = {"system": SNOMED, "code": rng.choice(["7771000", "24028007"])}
        if rng.random() < 0.5:
            element["started"] = (
                f"20{rng.randrange(10, 25)}-0{rng.randrange(1, 10)}-1{rng.randrange(10)}"
            )
        series.append(element)
    day = f"{rng.randrange(1995, 2025)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
    return {
        "resourceType": "ImagingStudy",
        "id": f"study-{n}",
        "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00Z"},
        "identifier": [
            {"use": "official", "system": "urn:dicom:uid", "value": f"urn:oid:{uid}"},
            {
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}
                    ]
                },
                "value": f"A{rng.randrange(10**8):08d}",
            },
        ],
        "status": "available",
        "modality": [{"system": DCM, "code": m} for m in dict.fromkeys(modalities)],
        "subject": {"reference": f"Patient/p{rng.randrange(n // 3 + 1)}"},
        "started": f"{day}T{rng.randrange(7, 20):02d}:{rng.randrange(60):02d}:00Z",
        "endpoint": [{"reference": "Endpoint/dicomweb"}],
        "numberOfSeries": count,
        "numberOfInstances": total,
        "description": description,
        "series": series,
    }


def make_pages(studies: int, seed: int) -> list[bytes]:
    """Searchset Bundles of PAGE_SIZE studies, serialised as a server would."""
    rng = random.Random(f"imagingkit-bench-flatten:{seed}")
    pages = []
    base = "http://127.0.0.1:8042/fhir"
    for start in range(0, studies, PAGE_SIZE):
        entries = []
        for n in range(start, min(studies, start + PAGE_SIZE)):
            resource = make_study(rng, n)
            entries.append(
                {
                    "fullUrl": f"{base}/ImagingStudy/{resource['id']}",
                    "resource": resource,
                    "search": {"mode": "match"},
                }
            )
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": studies,
            "link": [{"relation": "next", "url": f"{base}/ImagingStudy?_offset={start}"}],
            "entry": entries,
        }
        pages.append(json.dumps(bundle).encode())
    return pages


# --------------------------------------------------------------------------- methods


def with_imagingkit(pages: list[bytes]) -> pd.DataFrame:
    return flatten(pages, level="series")


def _study_uid(identifiers: Any) -> Any:
    for identifier in identifiers if isinstance(identifiers, list) else []:
        if identifier.get("system") == "urn:dicom:uid":
            return identifier["value"].removeprefix("urn:oid:")
    return None


def _accession(identifiers: Any) -> Any:
    for identifier in identifiers if isinstance(identifiers, list) else []:
        codes = [c.get("code") for c in identifier.get("type", {}).get("coding", [])]
        if "ACSN" in codes:
            return identifier.get("value")
    return None


def _finish(df: pd.DataFrame) -> pd.DataFrame:
    """The post-processing every pandas method needs for the same facts."""
    df["StudyInstanceUID"] = [_study_uid(v) for v in df["identifier"]]
    df["AccessionNumber"] = [_accession(v) for v in df["identifier"]]
    df["StudyDate"] = pd.to_datetime(df["started"], format="ISO8601", errors="coerce")
    return df.drop(columns=["identifier"])


META = [
    "id",
    "identifier",
    "status",
    "started",
    "description",
    "numberOfSeries",
    "numberOfInstances",
    ["subject", "reference"],
]


def with_json_normalize_meta(pages: list[bytes]) -> pd.DataFrame:
    """``json.loads`` + ``json_normalize(record_path="series", meta=...)``."""
    resources = [e["resource"] for page in pages for e in json.loads(page).get("entry", [])]
    df = pd.json_normalize(
        resources, record_path="series", meta=META, record_prefix="series.", errors="ignore"
    )
    return _finish(df)


def with_json_normalize_explode(pages: list[bytes]) -> pd.DataFrame:
    """``json.loads`` + ``json_normalize`` of studies + ``explode("series")`` + normalize."""
    resources = [e["resource"] for page in pages for e in json.loads(page).get("entry", [])]
    studies = pd.json_normalize(resources, max_level=1)
    exploded = studies.explode("series", ignore_index=True)
    series = pd.json_normalize(exploded["series"].tolist()).add_prefix("series.")
    df = pd.concat([exploded.drop(columns=["series"]), series], axis=1)
    return _finish(df)


FHIR_PATHS = [
    ("id", "id"),
    ("subject", "subject.reference"),
    (
        "StudyInstanceUID",
        "identifier.where(system = 'urn:dicom:uid').value.replace('urn:oid:', '')",
    ),
    ("AccessionNumber", "identifier.where(type.coding.code = 'ACSN').value"),
    ("started", "started"),
    ("description", "description"),
    ("numberOfSeries", "numberOfSeries"),
    ("numberOfInstances", "numberOfInstances"),
    ("status", "status"),
    ("series_uid", "series.uid"),
    ("series_number", "series.number"),
    ("series_modality", "series.modality.code"),
    ("series_description", "series.description"),
    ("series_body_site", "series.bodySite.code"),
    ("series_instances", "series.numberOfInstances"),
]
SERIES_COLUMNS = [
    "series_uid",
    "series_number",
    "series_modality",
    "series_description",
    "series_body_site",
    "series_instances",
]


def fhir_pyrate_method() -> Callable[[list[bytes]], pd.DataFrame] | None:
    """FHIR-PYrate's ``bundles_to_dataframe`` with FHIRPath columns + explode, if installed."""
    try:
        from fhir_pyrate import Pirate
        from fhir_pyrate.util import FHIRObj
    except ImportError:
        return None
    pirate = Pirate(
        base_url="http://127.0.0.1:8042/fhir",
        auth=None,
        num_processes=1,
        disable_multiprocessing_build=True,
        silence_fhirpath_warning=True,
    )

    def run(pages: list[bytes]) -> pd.DataFrame:
        bundles = [FHIRObj(**json.loads(page)) for page in pages]
        df = pirate.bundles_to_dataframe(bundles, fhir_paths=FHIR_PATHS)
        assert isinstance(df, pd.DataFrame)
        # series-level values come back as lists (or scalars for one-series studies)
        for column in SERIES_COLUMNS:
            df[column] = [v if isinstance(v, list) else [v] for v in df[column]]
        df = df.explode(SERIES_COLUMNS, ignore_index=True)
        df["StudyDate"] = pd.to_datetime(df["started"], format="ISO8601", errors="coerce")
        return df

    return run


# --------------------------------------------------------------------------- runner


def timed(method: Callable[[list[bytes]], pd.DataFrame], pages: list[bytes]) -> tuple[float, int]:
    """CPU seconds of one run (every method is single-threaded; CPU time is what a
    shared, loaded machine measures most steadily) and the number of rows."""
    gc.collect()
    start = time.process_time()
    df = method(pages)
    elapsed = time.process_time() - start
    return elapsed, len(df)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-pyrate", action="store_true", help="skip FHIR-PYrate (slow)")
    args = parser.parse_args(argv)

    pages = make_pages(args.studies, args.seed)
    size = sum(map(len, pages))
    series = sum(len(e["resource"]["series"]) for p in pages[:1] for e in json.loads(p)["entry"])
    print(
        f"{args.studies:,} ImagingStudy in {len(pages)} pages, {size / 1e6:.0f} MB of JSON "
        f"(first page: {series / min(PAGE_SIZE, args.studies):.1f} series per study)"
    )
    methods: dict[str, Callable[[list[bytes]], pd.DataFrame]] = {
        "imagingkit flatten (msgspec, columnar)": with_imagingkit,
        "json.loads + json_normalize(record_path=series, meta)": with_json_normalize_meta,
        "json.loads + json_normalize + explode + json_normalize": with_json_normalize_explode,
        "json.loads only (floor of every stdlib-json method)": lambda p: pd.DataFrame(
            {"n": [len(json.loads(x)["entry"]) for x in p]}
        ),
    }
    pyrate = None if args.skip_pyrate else fhir_pyrate_method()
    if pyrate is not None:
        methods["FHIR-PYrate bundles_to_dataframe (FHIRPath) + explode"] = pyrate
    elif not args.skip_pyrate:
        print("FHIR-PYrate is not installed (pip install fhir-pyrate): not measured")
    times: dict[str, list[float]] = {name: [] for name in methods}
    rows: dict[str, int] = {}
    for run in range(args.repeat):
        for name, method in methods.items():
            if run > 0 and "PYrate" in name and args.repeat > 1 and times[name][0] > 60:
                continue  # one run is enough for a method this slow
            elapsed, n = timed(method, pages)
            times[name].append(elapsed)
            rows[name] = n
    ours = statistics.median(times["imagingkit flatten (msgspec, columnar)"])
    print(f"{'method':<58} {'rows':>9} {'CPU s':>9} {'vs imagingkit':>14}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<58} {rows[name]:>9,} {median:>9.2f} {median / ours:>13.1f}×")
    baselines = [n for n in times if n.startswith(("json.loads + json_normalize", "FHIR-PYrate"))]
    worst = min(statistics.median(times[n]) / ours for n in baselines)
    verdict = "met" if worst >= 5 else "MISSED"
    print(f"target ≥ 5× faster than every baseline: {verdict} (smallest ratio {worst:.1f}×)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
