"""Benchmark: how soon a new ImagingStudy shows in a cohort DataFrame, watched vs polled.

Claim (issue 6, point 4): ``bridge.watch(cohort)`` keeps a DataFrame current without
re-running the query. The alternatives a notebook user writes today are polling:

* **re-query**: run ``cohort.studies()`` again every ``--interval`` seconds (the whole
  cohort each time; what "re-run the cell" amounts to);
* **incremental poll**: fhirpy ``ImagingStudy?_lastUpdated=gt<last seen>`` every
  ``--interval`` seconds, appending what comes back (cheaper, but the rows are raw
  resources, not the cohort's checked, flattened rows).

The embedded FHIR store runs in its own process (``--serve``; no shared GIL) with
``--studies`` ImagingStudies. For each method in turn, a writer thread POSTs ``--new``
ImagingStudies, one every ``--gap`` seconds, and the script records when each one is
visible to the method: the latency from the POST's answer to the study's row. Printed per
method: p50 / max latency, HTTP requests the client sent, and client CPU seconds.

    .venv/bin/python bench/watch_vs_polling.py [--studies 2000] [--new 20] [--interval 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import requests
from cohort_query import load, serve, store_process  # same store process and synthetic record


class Writer(threading.Thread):
    """POST *count* copies of *template* as new ImagingStudies, *gap* seconds apart."""

    def __init__(self, base: str, template: dict[str, Any], count: int, gap: float) -> None:
        super().__init__(daemon=True)
        self.base, self.template, self.count, self.gap = base, template, count, gap
        self.posted: dict[str, float] = {}  # study id -> time the POST was answered
        self.lock = threading.Lock()

    def run(self) -> None:
        with requests.Session() as session:
            for _ in range(self.count):
                study = copy.deepcopy(self.template)
                study.pop("id", None)
                study.pop("meta", None)
                study["identifier"] = [
                    {"system": "urn:dicom:uid", "value": f"urn:oid:2.25.{uuid.uuid4().int}"}
                ]
                answer = session.post(f"{self.base}/ImagingStudy", json=study, timeout=60)
                answer.raise_for_status()
                with self.lock:
                    self.posted[answer.json()["id"]] = time.perf_counter()
                time.sleep(self.gap)


class Clock:
    """Latency of each posted study from its POST to the first time a method saw it."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.latency: dict[str, float] = {}

    def seen(self, ids: set[str]) -> None:
        now = time.perf_counter()
        with self.writer.lock:
            for study_id in ids & set(self.writer.posted) - set(self.latency):
                self.latency[study_id] = now - self.writer.posted[study_id]

    def done(self) -> bool:
        return len(self.latency) == self.writer.count


def by_watch(base: str, clock: Clock, deadline: float, counter: list[int]) -> None:
    import imagingkit

    bridge = imagingkit.connect(base)
    with bridge.watch(level="study", debounce=0, progress=False) as live:
        live.on_change(lambda diff: clock.seen(set(diff.added)))
        while not clock.done() and time.perf_counter() < deadline:
            time.sleep(0.01)
        counter.append(len(bridge.fhir.requests_made))


def by_requery(
    base: str, clock: Clock, deadline: float, counter: list[int], interval: float
) -> None:
    import imagingkit

    bridge = imagingkit.connect(base)
    cohort = bridge.cohort()
    while not clock.done() and time.perf_counter() < deadline:
        tick = time.perf_counter()
        frame = cohort.studies(level="study", progress=False)
        clock.seen(set(frame["imaging_study_id"]))
        time.sleep(max(0.0, interval - (time.perf_counter() - tick)))
    counter.append(len(bridge.fhir.requests_made))


def by_incremental_poll(
    base: str, clock: Clock, deadline: float, counter: list[int], interval: float
) -> None:
    from fhirpy import SyncFHIRClient

    client = SyncFHIRClient(base)
    newest = requests.get(
        f"{base}/ImagingStudy", params={"_sort": "-_lastUpdated", "_count": "1"}, timeout=60
    ).json()["entry"][0]["resource"]
    last = newest["meta"]["lastUpdated"]  # start from the newest study already there
    requests_sent = 0
    seen_rows: list[dict[str, Any]] = []
    while not clock.done() and time.perf_counter() < deadline:
        tick = time.perf_counter()
        found = client.resources("ImagingStudy").search(_lastUpdated=f"gt{last}").fetch_all()
        requests_sent += 1
        for resource in found:
            seen_rows.append(resource.serialize())
            last = max(last, resource["meta"]["lastUpdated"])
        clock.seen({row["id"] for row in seen_rows})
        time.sleep(max(0.0, interval - (time.perf_counter() - tick)))
    counter.append(requests_sent)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=2_000)
    parser.add_argument("--new", type=int, default=20, help="studies posted per method")
    parser.add_argument("--gap", type=float, default=0.5, help="seconds between new studies")
    parser.add_argument("--interval", type=float, default=1.0, help="polling interval, s")
    parser.add_argument("--serve", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    with store_process(__file__, "ik-bench-watch-") as base:
        load(base, args.studies)
        template = requests.get(f"{base}/ImagingStudy", params={"_count": "1"}, timeout=60).json()[
            "entry"
        ][0]["resource"]
        print(
            f"{args.studies:,} ImagingStudies in the store; {args.new} new ones per method, "
            f"one every {args.gap} s; polling every {args.interval} s"
        )
        methods: dict[str, Callable[[str, Clock, float, list[int]], None]] = {
            "re-query cohort().studies()": lambda b, c, d, n: by_requery(b, c, d, n, args.interval),
            "fhirpy _lastUpdated poll": lambda b, c, d, n: by_incremental_poll(
                b, c, d, n, args.interval
            ),
            "imagingkit bridge.watch()": by_watch,
        }
        print(
            f"\n{'method':<30} {'p50 ms':>8} {'max ms':>8} {'seen':>6} {'requests':>9} {'CPU s':>7}"
        )
        results: dict[str, float] = {}
        for name, method in methods.items():
            writer = Writer(base, template, args.new, args.gap)
            clock = Clock(writer)
            counter: list[int] = []
            deadline = time.perf_counter() + args.new * args.gap + 120
            cpu = time.process_time()
            runner = threading.Thread(target=method, args=(base, clock, deadline, counter))
            runner.start()
            time.sleep(2.0)  # let the method settle (initial load, subscription)
            writer.start()
            runner.join(timeout=args.new * args.gap + 180)
            writer.join(timeout=60)
            cpu = time.process_time() - cpu
            latencies = sorted(clock.latency.values())
            p50 = statistics.median(latencies) * 1000 if latencies else float("nan")
            worst = latencies[-1] * 1000 if latencies else float("nan")
            results[name] = p50
            print(
                f"{name:<30} {p50:>8.0f} {worst:>8.0f} {len(latencies):>3}/{args.new:<2} "
                f"{counter[-1] if counter else -1:>9} {cpu:>7.1f}"
            )
        watch = results["imagingkit bridge.watch()"]
        for name, p50 in results.items():
            if name != "imagingkit bridge.watch()":
                print(f"p50 latency, {name} / watch: {p50 / watch:.1f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
