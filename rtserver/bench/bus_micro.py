"""Bus micro-benchmark: embedded hub vs Redis vs the in-process bus, in one run.

    python -m rtserver.bench.bus_micro [--messages 20000] [--window 256] [--latency-samples 2000]

What it measures, for each bus (two bus clients A and B, both interested in
the room; A publishes):

* ``rtt``: one publish at a time, time from ``publish()`` to its return
  (p50 / p99, microseconds). For the embedded hub this is one Unix-socket
  round trip through the hub process; for Redis one EVALSHA round trip.
* ``pipelined``: ``--messages`` publishes with up to ``--window`` in flight,
  until every publication reached both A and B (messages per second).

Baselines measured in the same run: ``local`` (the in-process bus, no I/O:
the floor of the bus API itself) and ``uds-echo`` (a bare Unix-socket
round trip to an echo process: the floor of any out-of-process hub).
Absolute numbers are noisy on a shared machine; the ratios are the result.
The embedded hub runs in its own process, as in the supervisor (on uvloop
with ``--uvloop``, as ``serve_workers`` runs it).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
import uuid

import redis.asyncio as aioredis

from rtserver.backoff import BackoffPolicy
from rtserver.bus.base import Bus, BusHealth, InterestSnapshot
from rtserver.bus.embedded_client import EmbeddedBus
from rtserver.bus.embedded_server import EmbeddedBusServer
from rtserver.bus.embedded_settings import EmbeddedBusServerSettings, EmbeddedBusSettings
from rtserver.bus.local import LocalBus
from rtserver.bus.redis_bus import RedisBus
from rtserver.bus.redis_settings import RedisBusSettings, default_node_id
from rtserver.bus.room_streams import HistorySettings

__all__ = ["main"]

HISTORY = HistorySettings(history_size=100, history_ttl=300.0, history_max_bytes=1 << 20,
                          idempotency_window=60.0)
RECONNECT = BackoffPolicy(initial_delay=0.1, max_delay=1.0, jitter=0.2)
BODY = b'{"type":"message","room":"bench:bus","from":"u","data":{"price":1234.5,"n":1}}'
ROOM = "bench:bus"


class Counter:
    """A BusHandler counting publications."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.done: asyncio.Event = asyncio.Event()

    def on_publication(self, room: str, epoch: str, seq: int, body: bytes) -> None:
        self.count += 1
        if self.count >= self.target:
            self.done.set()

    def on_stream_gap(self, room: str, epoch: str, from_seq: int, to_seq: int,
                      reason: str) -> None:
        print(f"stream gap during the bench: {room} {from_seq}..{to_seq} ({reason})")

    def on_room_event(self, room: str, payload: bytes) -> None:
        """Unused."""

    def on_user_message(self, user: str, payload: bytes) -> None:
        """Unused."""

    def on_bus_state(self, health: BusHealth) -> None:
        if not health.ok:
            print(f"bus degraded during the bench: {health.reason}")

    def interest_snapshot(self) -> InterestSnapshot:
        """Nothing to re-declare: a bench run with a reconnect is reported as degraded."""
        return InterestSnapshot(rooms=[], users=[], presence=[])


def _hub_process(
    path: str,
    ready: multiprocessing.synchronize.Event,
    stop: multiprocessing.synchronize.Event,
    use_uvloop: bool,
) -> None:
    async def run() -> None:
        hub = EmbeddedBusServer(
            EmbeddedBusServerSettings(
                socket_path=path,
                expected_workers=2,
                max_worker_buffer=256 * 1024 * 1024,
                collect_timeout=2.0,
                history=HISTORY,
            )
        )
        await hub.start()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await hub.close()

    if use_uvloop:
        import uvloop

        uvloop.run(run())
    else:
        asyncio.run(run())


def _echo_process(path: str, ready: multiprocessing.synchronize.Event, use_uvloop: bool) -> None:
    async def run() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                writer.write(data)

        server = await asyncio.start_unix_server(handle, path)
        ready.set()
        async with server:
            await server.serve_forever()

    if use_uvloop:
        import uvloop

        uvloop.run(run())
    else:
        asyncio.run(run())


async def measure(
    name: str, a: Bus, b: Bus, ca: Counter, cb: Counter, messages: int, window: int, samples: int
) -> dict[str, float]:
    """RTT percentiles and pipelined throughput of one bus pair."""
    await a.add_interest(ROOM)
    await b.add_interest(ROOM)
    for _ in range(200):  # warm-up
        await a.publish(ROOM, BODY)
    rtts: list[float] = []
    for _ in range(samples):
        t0 = time.perf_counter()
        await a.publish(ROOM, BODY)
        rtts.append((time.perf_counter() - t0) * 1e6)
    start_a, start_b = ca.count, cb.count
    ca.target, cb.target = start_a + messages, start_b + messages
    ca.done.clear()
    cb.done.clear()
    per_lane, rest = divmod(messages, window)

    async def lane(count: int) -> None:
        # ``window`` lanes each publish one at a time: ``window`` requests in flight.
        for _ in range(count):
            await a.publish(ROOM, BODY)

    t0 = time.perf_counter()
    await asyncio.gather(*(lane(per_lane + (1 if i < rest else 0)) for i in range(window)))
    await ca.done.wait()
    await cb.done.wait()
    elapsed = time.perf_counter() - t0
    rtts.sort()
    return {
        "rtt_p50_us": statistics.median(rtts),
        "rtt_p99_us": rtts[int(len(rtts) * 0.99)],
        "msgs_per_s": messages / elapsed,
    }


async def uds_echo_rtt(path: str, samples: int) -> float:
    """Median round trip of a 100-byte frame to the echo process (microseconds)."""
    reader, writer = await asyncio.open_unix_connection(path)
    frame = b"x" * 100
    rtts: list[float] = []
    for i in range(samples + 200):
        t0 = time.perf_counter()
        writer.write(frame)
        got = 0
        while got < len(frame):
            got += len(await reader.read(65536))
        if i >= 200:
            rtts.append((time.perf_counter() - t0) * 1e6)
    writer.close()
    return statistics.median(rtts)


async def run(args: argparse.Namespace) -> None:
    results: dict[str, dict[str, float]] = {}
    tmp = tempfile.mkdtemp(prefix="rtbb")
    mp = multiprocessing.get_context("spawn")
    try:
        # uds-echo floor
        ready = mp.Event()
        echo = mp.Process(
            target=_echo_process, args=(f"{tmp}/echo.sock", ready, args.uvloop), daemon=True
        )
        echo.start()
        ready.wait(10)
        echo_rtt = await uds_echo_rtt(f"{tmp}/echo.sock", args.latency_samples)
        echo.terminate()
        echo.join()

        # local (in-process) floor
        la, lb = LocalBus(HISTORY), None
        ca, cb = Counter(), Counter()
        await la.start(_Both(ca, cb))
        results["local"] = await measure(
            "local", la, la, ca, cb, args.messages, args.window, args.latency_samples
        )
        await la.close()
        del lb

        # embedded hub in its own process, two clients
        ready, stop = mp.Event(), mp.Event()
        path = f"{tmp}/hub.sock"
        hub = mp.Process(target=_hub_process, args=(path, ready, stop, args.uvloop), daemon=True)
        hub.start()
        ready.wait(10)
        buses = []
        counters = []
        for wid in (0, 1):
            bus = EmbeddedBus(
                EmbeddedBusSettings(
                    socket_path=path,
                    worker_id=wid,
                    request_timeout=10.0,
                    connect_timeout=5.0,
                    reconnect=RECONNECT,
                )
            )
            counter = Counter()
            await bus.start(counter)
            buses.append(bus)
            counters.append(counter)
        results["embedded"] = await measure(
            "embedded",
            buses[0],
            buses[1],
            counters[0],
            counters[1],
            args.messages,
            args.window,
            args.latency_samples,
        )
        for bus in buses:
            await bus.close()
        stop.set()
        hub.join(10)

        # Redis
        prefix = f"rtbench-{uuid.uuid4().hex[:8]}"
        rbuses: list[RedisBus] = []
        rcounters = []
        for wid in (0, 1):
            rbus = RedisBus(
                RedisBusSettings(
                    url=args.redis,
                    key_prefix=prefix,
                    node_id=default_node_id(wid),
                    history_size=100,
                    history_ttl=300.0,
                    history_max_bytes=1 << 20,
                    idempotency_window=60.0,
                    presence_ttl=60.0,
                    presence_refresh_interval=20.0,
                    request_timeout=10.0,
                    connect_timeout=5.0,
                    max_connections=8,
                    publish_batch_max=args.window,
                    reconnect=RECONNECT,
                )
            )
            counter = Counter()
            await rbus.start(counter)
            rbuses.append(rbus)
            rcounters.append(counter)
        try:
            results["redis"] = await measure(
                "redis",
                rbuses[0],
                rbuses[1],
                rcounters[0],
                rcounters[1],
                args.messages,
                args.window,
                args.latency_samples,
            )
        finally:
            for rbus in rbuses:
                await rbus.close()
            client = aioredis.from_url(args.redis)
            keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
            if keys:
                await client.delete(*keys)
            await client.aclose()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"bus micro-benchmark: {args.messages} publications, window {args.window}, "
        f"{args.latency_samples} latency samples, body {len(BODY)} B, pid {os.getpid()}"
    )
    print(f"uds-echo floor: round trip p50 {echo_rtt:.1f} us")
    print(
        f"{'bus':<10}{'rtt p50 us':>12}{'rtt p99 us':>12}{'msgs/s':>12}"
        f"{'rtt/echo':>10}{'thr/local':>11}{'thr/redis':>11}"
    )
    for name, r in results.items():
        print(
            f"{name:<10}{r['rtt_p50_us']:>12.1f}{r['rtt_p99_us']:>12.1f}"
            f"{r['msgs_per_s']:>12.0f}{r['rtt_p50_us'] / echo_rtt:>10.2f}"
            f"{r['msgs_per_s'] / results['local']['msgs_per_s']:>11.3f}"
            f"{r['msgs_per_s'] / results['redis']['msgs_per_s']:>11.2f}"
        )


class _Both:
    """LocalBus has one handler: deliver to both counters (two 'workers')."""

    def __init__(self, a: Counter, b: Counter) -> None:
        self.a, self.b = a, b

    def on_publication(self, room: str, epoch: str, seq: int, body: bytes) -> None:
        self.a.on_publication(room, epoch, seq, body)
        self.b.on_publication(room, epoch, seq, body)

    def on_stream_gap(self, room: str, epoch: str, from_seq: int, to_seq: int,
                      reason: str) -> None:
        """LocalBus never has a gap."""

    def on_room_event(self, room: str, payload: bytes) -> None:
        """Unused."""

    def on_user_message(self, user: str, payload: bytes) -> None:
        """Unused."""

    def on_bus_state(self, health: BusHealth) -> None:
        """Unused."""

    def interest_snapshot(self) -> InterestSnapshot:
        """LocalBus never reconnects."""
        return InterestSnapshot(rooms=[], users=[], presence=[])


def main(argv: list[str] | None = None) -> None:
    """Parse the options and run the benchmark."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--window", type=int, default=256, help="publishes in flight")
    parser.add_argument("--latency-samples", type=int, default=2000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--uvloop", action="store_true", help="run the clients on uvloop")
    args = parser.parse_args(argv)
    if args.uvloop:
        import uvloop

        uvloop.run(run(args))
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
