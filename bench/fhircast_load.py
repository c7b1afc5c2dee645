"""FHIRcast fan-out: imagingkit's hub vs a plain tornado reference hub, same run.

Claim (issue 6, point 6): with ≥ 200 subscribers and ≥ 1,000 events every delivery
arrives exactly once and in order, and publish-to-receive p99 stays ≤ 10 ms on loopback.

Layout (three processes, so the hub does not share a GIL with the load):

- the hub under test in its own process: imagingkit's :class:`FhircastHub` (validation,
  topic session, acknowledgement tracking, replay …) or the *reference* hub below — a
  minimal tornado fan-out that answers the same subscribe form and confirmation but
  validates nothing and ignores acknowledgements (the "plain tornado reference hub" of
  the shared performance notes);
- ``--subscribers`` websocket subscribers in one process, each an
  :class:`AsyncFhircastClient` (imagingkit's client: it acknowledges every event,
  de-duplicates, tracks context), recording ``time.monotonic_ns()`` when the event
  reaches its listener;
- the publisher in this process, POSTing ``Patient-open`` events to ``hub.url`` with
  ``time.monotonic_ns()`` taken just before each POST (CLOCK_MONOTONIC is shared by all
  processes of a Linux machine).

Modes: ``paced`` publishes at ``--rate`` events/s (latency under a steady load);
``burst`` publishes as fast as possible (the notes' "as fast as possible", throughput).
Both keep at most ``--window`` events in flight ahead of the slowest subscriber, so an
overloaded machine slows the publisher instead of growing an unbounded queue. Every run
checks zero lost, zero duplicated and per-subscriber order. ``--profile`` prints where
the imagingkit hub spends its time.

Run: ``.venv/bin/python bench/fhircast_load.py [--subscribers 200] [--events 1000]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import itertools
import json
import multiprocessing as mp
import os
import platform
import pstats
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import requests

TOPIC = "bench-topic"


# --------------------------------------------------------------------------- hubs


def _reference_app() -> Any:
    """The reference: fan-out only (same wire format, no validation, acks ignored)."""
    import tornado.web
    import tornado.websocket

    endpoints: dict[str, str] = {}
    topics: dict[str, set[Any]] = {}

    class Post(tornado.web.RequestHandler):
        def post(self) -> None:
            ctype = self.request.headers.get("Content-Type", "")
            if ctype.startswith("application/x-www-form-urlencoded"):
                topic = self.get_body_argument("hub.topic")
                endpoint = uuid.uuid4().hex
                endpoints[endpoint] = topic
                self.set_status(202)
                self.finish(
                    {"hub.channel.endpoint": f"ws://{self.request.host}/fhircast/ws/{endpoint}"}
                )
                return
            text = self.request.body.decode()
            topic = json.loads(text)["event"]["hub.topic"]
            for sock in list(topics.get(topic, ())):
                sock.write_message(text)
            self.set_status(202)
            self.finish()

    class Channel(tornado.websocket.WebSocketHandler):
        def open(self, endpoint: str) -> None:
            self.topic = endpoints.pop(endpoint)
            topics.setdefault(self.topic, set()).add(self)
            self.set_nodelay(True)
            self.write_message(
                json.dumps(
                    {
                        "hub.mode": "subscribe",
                        "hub.topic": self.topic,
                        "hub.events": "Patient-open",
                        "hub.lease_seconds": 3600,
                    }
                )
            )

        def on_message(self, message: str | bytes) -> None:
            pass

        def on_close(self) -> None:
            topics.get(self.topic, set()).discard(self)

    return tornado.web.Application([(r"/fhircast/?", Post), (r"/fhircast/ws/(\w+)", Channel)])


def _imagingkit_app(ack_timeout: float) -> tuple[Any, Any]:
    from imagingkit.fhircast.hub import FhircastHub, HubPolicy
    from imagingkit.server.app import make_app

    hub = FhircastHub(HubPolicy(ack_timeout=ack_timeout))
    return make_app([hub]), hub


def hub_process(kind: str, ports: Any, stop: Any, profile: bool, ack_timeout: float) -> None:
    """Serve one hub on 127.0.0.1 until *stop* is set; print a profile if asked."""
    import tornado.httpserver
    import tornado.netutil

    profiler = cProfile.Profile() if profile else None

    async def main() -> None:
        if kind == "reference":
            app, hub = _reference_app(), None
        else:
            app, hub = _imagingkit_app(ack_timeout)
        sockets = tornado.netutil.bind_sockets(0, address="127.0.0.1")
        server = tornado.httpserver.HTTPServer(app)
        server.add_sockets(sockets)
        ports.put(sockets[0].getsockname()[1])
        loop = asyncio.get_running_loop()
        if profiler:
            profiler.enable()
        await loop.run_in_executor(None, stop.wait)
        if profiler:
            profiler.disable()
        ports.put(("cpu", time.process_time()))
        if hub is not None:
            ports.put(("stats", vars(hub.stats)))
        server.stop()

    asyncio.run(main())
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        ports.put(("profile", out.getvalue()))


# --------------------------------------------------------------------------- subscribers


def subscriber_process(
    url: str,
    first: int,
    count: int,
    events: int,
    results: Any,
    go: Any,
    progress: Any,
    denials: Any,
) -> None:
    """Hold *count* imagingkit clients; record (subscriber, seq, receive time) per event."""
    import logging

    from imagingkit.fhircast.client import AsyncFhircastClient

    logging.getLogger("imagingkit").setLevel(logging.ERROR)  # denials are counted instead

    async def main() -> None:
        received: list[list[tuple[int, int]]] = [[] for _ in range(count)]
        done = asyncio.Event()
        remaining = [count * events]

        def listener(index: int) -> Any:
            box = received[index]

            def on_event(event: Any) -> None:
                box.append((int(event.context[1]["data"]["seq"]), time.monotonic_ns()))
                progress.value += 1
                remaining[0] -= 1
                if remaining[0] == 0:
                    done.set()

            return on_event

        clients = []
        limit = asyncio.Semaphore(20)

        async def start(i: int) -> None:
            client = AsyncFhircastClient(
                url,
                TOPIC,
                ["Patient-open"],
                subscriber_name=f"sub-{first + i}",
                reconnect=False,
                timeout=60,
            )
            client.add_listener(listener(i))
            client.add_denial_listener(lambda denial: _count(denials))
            async with limit:
                await client.start()
            clients.append(client)

        await asyncio.gather(*(start(i) for i in range(count)))
        results.put("ready")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, go.wait)
        cpu_start = time.process_time()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), timeout=max(120, events))
        denied = sum(1 for c in clients if c.denial is not None)
        results.put((received, time.process_time() - cpu_start, denied))
        await asyncio.gather(*(c.close(timeout=5) for c in clients), return_exceptions=True)

    asyncio.run(main())


def _count(value: Any) -> None:
    with value.get_lock():
        value.value += 1


# --------------------------------------------------------------------------- publisher


def publish_all(
    url: str,
    events: int,
    mode: str,
    rate: float,
    window: int,
    subscribers: int,
    progress: list[Any],
    denials: Any,
) -> tuple[list[int], float]:
    """Publish *events*, never more than *window* ahead of what every subscriber received.

    Without the window a publisher faster than the subscribers builds an unbounded queue;
    after 10 s of lag the hub rightly unsubscribes the laggards (``2-5``), which would
    measure the machine's overload rather than the hub.
    """
    session = requests.Session()
    session.trust_env = False
    sent: list[int] = []
    interval = 1.0 / rate if mode == "paced" else 0.0
    start = time.monotonic()
    for seq in range(events):
        if interval:
            delay = start + seq * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if seq >= window:  # never run further ahead of the slowest subscriber
            needed = subscribers * (seq - window + 1)
            deadline = time.monotonic() + 120
            while sum(p.value for p in progress) < needed and time.monotonic() < deadline:
                if denials.value:
                    raise SystemExit(
                        f"{denials.value} subscriber(s) denied by the hub at event {seq} "
                        "(no acknowledgement within the ack timeout: the machine is overloaded; "
                        "see --ack-timeout)"
                    )
                time.sleep(0.0002)
        message = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "id": f"bench-{uuid.uuid4()}",
            "event": {
                "hub.topic": TOPIC,
                "hub.event": "Patient-open",
                "context": [
                    {"key": "patient", "resource": {"resourceType": "Patient", "id": f"p{seq}"}},
                    {"key": "extension", "data": {"seq": seq}},
                ],
            },
        }
        body = json.dumps(message)
        sent.append(time.monotonic_ns())
        response = session.post(
            url, data=body, headers={"Content-Type": "application/json"}, timeout=60
        )
        if response.status_code != 202:
            raise SystemExit(f"publish {seq} failed: {response.status_code} {response.text}")
    return sent, time.monotonic() - start


# --------------------------------------------------------------------------- one run


@dataclass
class Result:
    hub: str
    mode: str
    deliveries: int
    lost: int
    duplicated: int
    out_of_order: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    events_per_s: float
    deliveries_per_s: float
    hub_cpu_us: float
    sub_cpu_us: float


def run(
    kind: str,
    subscribers: int,
    events: int,
    mode: str,
    rate: float,
    window: int,
    procs: int,
    profile: bool,
    ack_timeout: float = 10.0,
) -> Result:
    ctx = mp.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    hub = ctx.Process(
        target=hub_process, args=(kind, ports, stop, profile, ack_timeout), daemon=True
    )
    hub.start()
    port = ports.get(timeout=60)
    url = f"http://127.0.0.1:{port}/fhircast"
    results, go = ctx.Queue(), ctx.Event()
    progress = [ctx.Value("q", 0, lock=False) for _ in range(procs)]
    denials = ctx.Value("q", 0)
    shares = [subscribers // procs + (1 if i < subscribers % procs else 0) for i in range(procs)]
    workers = []
    for i, share in enumerate(shares):
        proc = ctx.Process(
            target=subscriber_process,
            args=(url, sum(shares[:i]), share, events, results, go, progress[i], denials),
            daemon=True,
        )
        proc.start()
        workers.append(proc)
    for _ in workers:
        if results.get(timeout=300) != "ready":
            raise SystemExit("subscribers failed to start")
    go.set()
    sent, elapsed = publish_all(url, events, mode, rate, window, subscribers, progress, denials)
    received, sub_cpu, denied = [], 0.0, 0
    for _ in workers:
        part, cpu, part_denied = results.get(timeout=max(300, events))
        received += part
        sub_cpu += cpu
        denied += part_denied
    last_receive = max((r[-1][1] for r in received if r), default=0)
    for proc in workers:
        proc.join(60)
    stop.set()
    extra = {}
    for _ in range(3 if profile else 2):
        try:
            item = ports.get(timeout=30)
        except Exception:
            break
        if isinstance(item, tuple):
            extra[item[0]] = item[1]
    hub.join(30)
    for proc in (hub, *workers):
        if proc.is_alive():
            proc.terminate()
    if "profile" in extra:
        print(f"\n--- profile of the {kind} hub (tottime) ---\n{extra['profile']}")
    hub_cpu = extra.get("cpu", float("nan"))
    if "stats" in extra or denied:
        print(f"  {kind} hub counters: {extra.get('stats')}; subscribers denied: {denied}")

    latencies: list[float] = []
    lost = duplicated = disorder = 0
    for box in received:
        seqs = [seq for seq, _ in box]
        duplicated += len(seqs) - len(set(seqs))
        lost += events - len(set(seqs))
        disorder += sum(1 for a, b in itertools.pairwise(seqs) if b <= a)
        latencies.extend((t - sent[seq]) / 1e6 for seq, t in box)
    latencies.sort()
    total_s = max(elapsed, (last_receive - sent[0]) / 1e9)

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else 0.0

    return Result(
        hub=kind,
        mode=mode,
        deliveries=len(latencies),
        lost=lost,
        duplicated=duplicated,
        out_of_order=disorder,
        p50_ms=statistics.median(latencies) if latencies else 0.0,
        p99_ms=pct(0.99),
        max_ms=latencies[-1] if latencies else 0.0,
        events_per_s=events / elapsed,
        deliveries_per_s=len(latencies) / total_s,
        hub_cpu_us=hub_cpu / max(1, len(latencies)) * 1e6,
        sub_cpu_us=sub_cpu / max(1, len(latencies)) * 1e6,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--modes", default="paced,burst", help="paced, burst or both")
    parser.add_argument("--rate", type=float, default=20.0, help="events/s in paced mode")
    parser.add_argument(
        "--window", type=int, default=10, help="burst: events in flight before waiting"
    )
    parser.add_argument("--procs", type=int, default=1, help="subscriber processes")
    parser.add_argument(
        "--ack-timeout", type=float, default=10.0, help="imagingkit hub's ack timeout (2-5: 10 s)"
    )
    parser.add_argument("--hubs", default="reference,imagingkit")
    parser.add_argument("--profile", action="store_true", help="profile the imagingkit hub")
    args = parser.parse_args(argv)
    print(
        f"FHIRcast fan-out: {args.subscribers} subscribers × {args.events} events; "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    results = []
    ok = True
    for mode in args.modes.split(","):
        for kind in args.hubs.split(","):
            result = run(
                kind,
                args.subscribers,
                args.events,
                mode,
                args.rate,
                args.window,
                args.procs,
                args.profile and kind == "imagingkit",
                args.ack_timeout,
            )
            results.append(result)
            clean = result.lost == result.duplicated == result.out_of_order == 0
            ok &= clean
            print(
                f"{mode:<6} {kind:<11} deliveries {result.deliveries:>7}  lost {result.lost} "
                f"dup {result.duplicated} disorder {result.out_of_order}  "
                f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
                f"max {result.max_ms:7.1f} ms  {result.events_per_s:6.1f} events/s  "
                f"{result.deliveries_per_s:8.0f} deliveries/s  CPU per delivery: hub "
                f"{result.hub_cpu_us:5.1f} µs, subscribers {result.sub_cpu_us:5.1f} µs",
                flush=True,
            )
    by = {(r.mode, r.hub): r for r in results}
    for mode in args.modes.split(","):
        ref, ours = by.get((mode, "reference")), by.get((mode, "imagingkit"))
        if ref and ours:
            print(
                f"{mode}: imagingkit/reference p99 {ours.p99_ms / ref.p99_ms:.2f}×, "
                f"events/s {ours.events_per_s / ref.events_per_s:.2f}×"
            )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
