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
import http.client
import io
import itertools
import json
import multiprocessing as mp
import os
import platform
import pstats
import random
import socket
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
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


def hub_process(
    kind: str,
    ports: Any,
    go: Any,
    stop: Any,
    profile: bool,
    ack_timeout: float,
    cpus: set[int] | None,
) -> None:
    """Serve one hub on 127.0.0.1 until *stop* is set; report its CPU time from *go* on."""
    import tornado.httpserver
    import tornado.netutil

    if cpus:
        os.sched_setaffinity(0, cpus)
    profiler = cProfile.Profile(time.process_time) if profile else None  # CPU time

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
        await loop.run_in_executor(None, go.wait)  # subscriptions are set up by now
        start = os.times()
        if profiler:
            profiler.enable()
        await loop.run_in_executor(None, stop.wait)
        if profiler:
            profiler.disable()
        end = os.times()
        ports.put(("cpu", end.user + end.system - start.user - start.system))
        ports.put(("kernel", end.system - start.system))
        if hub is not None:
            ports.put(("stats", vars(hub.stats)))
        server.stop()

    asyncio.run(main())
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        ports.put(("profile", out.getvalue()))


# --------------------------------------------------------------------------- subscribers


class _LeanSubscriber(asyncio.Protocol):
    """One websocket subscriber on a bare asyncio transport (RFC 6455 client side).

    The bench's default subscriber: it does what every subscriber must (read a frame,
    parse the JSON, send a masked ``{"id", "status": 200}`` acknowledgement, answer pings)
    and nothing else, so the subscriber process costs little next to the hub and the same
    code measures both hubs. ``--client imagingkit`` uses imagingkit's full client instead.
    """

    def __init__(self, index: int, box: list[tuple[int, int]], shared: Any) -> None:
        self.index, self.box, self.shared = index, box, shared
        self.buf = bytearray()
        self.handshake = True
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        buf = self.buf
        buf += data
        if self.handshake:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(RuntimeError(bytes(buf[:200]).decode("latin-1")))
                return
            del buf[: end + 4]
            self.handshake = False
        pos, size = 0, len(buf)
        while size - pos >= 2:
            opcode, length, head = buf[pos] & 0x0F, buf[pos + 1] & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if size - pos < head + length:
                break
            payload = bytes(buf[pos + head : pos + head + length])
            pos += head + length
            if opcode == 1:
                self.on_text(payload, now)
            elif opcode == 9:
                self.send(0xA, payload)
        del buf[:pos]

    def on_text(self, payload: bytes, now: int) -> None:
        message = json.loads(payload)
        if "event" in message:
            self.box.append((message["event"]["context"][1]["data"]["seq"], now))
            self.send(1, b'{"id":"%s","status":200}' % message["id"].encode())
            self.shared.progress[self.index] += 1
            self.shared.received += 1
        elif message.get("hub.mode") == "subscribe" and not self.opened.done():
            self.opened.set_result(None)
        elif message.get("hub.mode") == "denied":
            self.shared.denied += 1
            _count(self.shared.denials)

    def send(self, opcode: int, payload: bytes) -> None:
        """Write one masked frame (clients mask every frame, RFC 6455 §5.3)."""
        size = len(payload)
        mask = random.getrandbits(32)
        key = mask.to_bytes(4, "big")
        words = int.from_bytes((key * (size // 4 + 1))[:size], "big")
        masked = (int.from_bytes(payload, "big") ^ words).to_bytes(size, "big")
        if size < 126:
            head = bytes((0x80 | opcode, 0x80 | size))
        else:
            head = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
        assert self.transport is not None
        self.transport.write(head + key + masked)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed during the handshake"))


def lean_subscriber_process(
    url: str,
    first: int,
    count: int,
    events: int,
    results: Any,
    go: Any,
    progress: Any,
    denials: Any,
    cpus: set[int] | None,
    profile: bool = False,
) -> None:
    """Hold *count* lean subscribers; record (seq, receive time) per event and subscriber."""
    import base64
    from urllib.parse import urlsplit

    if cpus:
        os.sched_setaffinity(0, cpus)

    class Shared:
        received = 0
        denied = 0

    shared = Shared()
    shared.progress = progress  # type: ignore[attr-defined]
    shared.denials = denials  # type: ignore[attr-defined]
    session = requests.Session()
    session.trust_env = False
    endpoints = []
    for i in range(count):
        answer = session.post(
            url,
            data={
                "hub.channel.type": "websocket",
                "hub.mode": "subscribe",
                "hub.topic": TOPIC,
                "hub.events": "Patient-open",
                "subscriber.name": f"sub-{first + i}",
            },
            timeout=60,
        )
        endpoints.append(urlsplit(answer.json()["hub.channel.endpoint"]))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        received: list[list[tuple[int, int]]] = [[] for _ in range(count)]
        subs = []
        for i, endpoint in enumerate(endpoints):
            transport, sub = await loop.create_connection(
                lambda i=i: _LeanSubscriber(first + i, received[i], shared),
                endpoint.hostname,
                endpoint.port,
            )
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            key = base64.b64encode(os.urandom(16)).decode()
            transport.write(
                f"GET {endpoint.path} HTTP/1.1\r\nHost: {endpoint.netloc}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            await asyncio.wait_for(sub.opened, 60)
            subs.append((transport, sub))
        results.put("ready")
        await loop.run_in_executor(None, go.wait)
        cpu_start = time.process_time()
        deadline = time.monotonic() + max(120, events)
        total = count * events
        while shared.received < total and not shared.denied and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        results.put((received, time.process_time() - cpu_start, shared.denied))
        for _, sub in subs:  # a normal close (1000): the hub sends no SyncError for it
            sub.send(8, (1000).to_bytes(2, "big"))
        await asyncio.sleep(0.5)
        for transport, _ in subs:
            transport.close()

    _profiled(main, profile, results)


def subscriber_process(
    url: str,
    first: int,
    count: int,
    events: int,
    results: Any,
    go: Any,
    progress: Any,
    denials: Any,
    cpus: set[int] | None,
    profile: bool = False,
) -> None:
    """Hold *count* imagingkit clients; record (subscriber, seq, receive time) per event."""
    import logging

    if cpus:
        os.sched_setaffinity(0, cpus)

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
                progress[first + index] += 1
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
        deadline = time.monotonic() + max(120, events)
        while not done.is_set() and time.monotonic() < deadline:
            if any(c.denial is not None for c in clients):
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=0.2)
        denied = sum(1 for c in clients if c.denial is not None)
        results.put((received, time.process_time() - cpu_start, denied))
        await asyncio.gather(*(c.close(timeout=5) for c in clients), return_exceptions=True)

    _profiled(main, profile, results)


def _profiled(main: Any, profile: bool, results: Any) -> None:
    """Run ``asyncio.run(main())``, under cProfile in CPU time if asked."""
    if not profile:
        asyncio.run(main())
        return
    profiler = cProfile.Profile(time.process_time)
    profiler.runcall(asyncio.run, main())
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
    print(f"\n--- profile of a subscriber process (tottime, CPU) ---\n{out.getvalue()}")


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
    progress: Sequence[int],
    denials: Any,
) -> tuple[list[int], float]:
    """Publish *events*, never more than *window* ahead of the slowest subscriber.

    Without the window a publisher faster than the subscribers builds an unbounded queue;
    after 10 s of lag the hub rightly unsubscribes the laggards (``2-5``), which would
    measure the machine's overload rather than the hub. The window is per subscriber
    (``progress`` holds one count each): a total over all subscribers would let a few
    of them fall hundreds of events behind while the rest keep the sum up.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    headers = {"Content-Type": "application/json"}
    sent: list[int] = []
    interval = 1.0 / rate if mode == "paced" else 0.0
    start = time.monotonic()
    for seq in range(events):
        if interval:
            delay = start + seq * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if seq >= window:  # never run further ahead of the slowest subscriber
            needed = seq - window + 1
            deadline = time.monotonic() + 120
            while min(progress) < needed and time.monotonic() < deadline:
                if denials.value:
                    raise SystemExit(
                        f"{denials.value} subscriber(s) denied by the hub at event {seq} "
                        "(no acknowledgement within the ack timeout: the machine is overloaded; "
                        "see --ack-timeout)"
                    )
                time.sleep(0.0005)
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
        body = json.dumps(message).encode()
        sent.append(time.monotonic_ns())
        conn.request("POST", parts.path, body, headers)
        response = conn.getresponse()
        answer = response.read()
        if response.status != 202:
            raise SystemExit(f"publish {seq} failed: {response.status} {answer!r}")
    conn.close()
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
    hub_cpu_us: float  # hub process CPU per delivery, from the first event to the last
    sub_cpu_us: float  # subscriber processes' CPU per delivery
    pub_cpu_us: float  # publisher CPU per event


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
    client: str = "lean",
    pin: bool = False,
) -> Result:
    ctx = mp.get_context("spawn")
    ports, go, stop = ctx.Queue(), ctx.Event(), ctx.Event()
    # --pin: the hub alone on CPU 0, subscribers and publisher on the others
    hub_cpus = {0} if pin else None
    load_cpus = set(range(1, os.cpu_count() or 2)) if pin else None
    if load_cpus:
        os.sched_setaffinity(0, load_cpus)
    hub = ctx.Process(
        target=hub_process,
        args=(kind, ports, go, stop, profile, ack_timeout, hub_cpus),
        daemon=True,
    )
    hub.start()
    port = ports.get(timeout=60)
    url = f"http://127.0.0.1:{port}/fhircast"
    results = ctx.Queue()
    progress = ctx.Array("q", subscribers, lock=False)  # events received, per subscriber
    denials = ctx.Value("q", 0)
    shares = [subscribers // procs + (1 if i < subscribers % procs else 0) for i in range(procs)]
    target = lean_subscriber_process if client == "lean" else subscriber_process
    workers = []
    for i, share in enumerate(shares):
        proc = ctx.Process(
            target=target,
            args=(
                url,
                sum(shares[:i]),
                share,
                events,
                results,
                go,
                progress,
                denials,
                load_cpus,
                profile,
            ),
            daemon=True,
        )
        proc.start()
        workers.append(proc)
    for _ in workers:
        if results.get(timeout=300) != "ready":
            raise SystemExit("subscribers failed to start")
    go.set()
    pub_start = time.process_time()
    sent, elapsed = publish_all(url, events, mode, rate, window, progress, denials)
    pub_cpu = time.process_time() - pub_start
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
    for _ in range(4 if profile else 3):
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
    kernel = extra.get("kernel", float("nan"))
    print(f"  {kind} hub CPU: {kernel / hub_cpu:.0%} in the kernel (socket I/O)")
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
        pub_cpu_us=pub_cpu / events * 1e6,
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
    parser.add_argument(
        "--client",
        choices=("lean", "imagingkit"),
        default="lean",
        help="subscriber code (the same for both hubs): lean raw websockets or imagingkit's",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="hub process alone on CPU 0, subscribers and publisher on the other CPUs",
    )
    parser.add_argument("--runs", type=int, default=1, help="interleaved runs per hub")
    parser.add_argument(
        "--profile", action="store_true", help="profile the hubs and subscribers (CPU time)"
    )
    args = parser.parse_args(argv)
    print(
        f"FHIRcast fan-out: {args.subscribers} subscribers × {args.events} events; "
        f"{args.client} subscribers in {args.procs} process(es){', pinned' if args.pin else ''}; "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    results = []
    ok = True
    hubs = args.hubs.split(",")
    for index in range(args.runs):
        for mode in args.modes.split(","):
            for kind in hubs if index % 2 == 0 else hubs[::-1]:
                result = run(
                    kind,
                    args.subscribers,
                    args.events,
                    mode,
                    args.rate,
                    args.window,
                    args.procs,
                    args.profile,
                    args.ack_timeout,
                    args.client,
                    args.pin,
                )
                results.append(result)
                ok &= result.lost == result.duplicated == result.out_of_order == 0
                print(
                    f"{mode:<6} {kind:<11} deliveries {result.deliveries:>7}  lost {result.lost} "
                    f"dup {result.duplicated} disorder {result.out_of_order}  "
                    f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
                    f"max {result.max_ms:7.1f} ms  {result.events_per_s:6.1f} events/s  "
                    f"{result.deliveries_per_s:7.0f} deliveries/s  CPU: hub "
                    f"{result.hub_cpu_us:5.1f} µs/delivery, subscribers "
                    f"{result.sub_cpu_us:5.1f} µs/delivery, publisher "
                    f"{result.pub_cpu_us:5.0f} µs/event  (load {os.getloadavg()[0]:.2f})",
                    flush=True,
                )
    print("medians:")
    for mode in args.modes.split(","):
        med = {}
        for kind in hubs:
            mine = [r for r in results if r.mode == mode and r.hub == kind]
            if not mine:
                continue
            med[kind] = {
                name: statistics.median(getattr(r, name) for r in mine)
                for name in ("p50_ms", "p99_ms", "events_per_s", "hub_cpu_us", "sub_cpu_us")
            }
            m = med[kind]
            print(
                f"{mode:<6} {kind:<11} p50 {m['p50_ms']:7.2f} ms  p99 {m['p99_ms']:7.2f} ms  "
                f"{m['events_per_s']:6.1f} events/s  hub {m['hub_cpu_us']:5.1f} µs/delivery  "
                f"subscribers {m['sub_cpu_us']:5.1f} µs/delivery"
            )
        if "reference" in med and "imagingkit" in med:
            ref, ours = med["reference"], med["imagingkit"]
            print(
                f"{mode}: imagingkit/reference p99 {ours['p99_ms'] / ref['p99_ms']:.2f}×, "
                f"events/s {ours['events_per_s'] / ref['events_per_s']:.2f}×, "
                f"hub CPU per delivery {ours['hub_cpu_us'] / ref['hub_cpu_us']:.2f}×"
            )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
