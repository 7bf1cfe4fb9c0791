"""Micro-benchmark of the fan-out core: server CPU time per delivery, one room of N members.

Usage::

    python -m rtserver.bench.fanout_micro --connections 1000,10000

For each N, one websockets server (uvloop, compression off, the configuration
rtserver runs with) accepts N real loopback connections opened by a separate
reader process (:mod:`rtserver.bench.fanout_reader`) that drains them. The same small
JSON message is then delivered to all N connections by each method, and the
server process's CPU time (``time.process_time``) is divided by the number of
deliveries:

* ``floor``: a Python loop of ``socket.send(prebuilt_frame)`` on every socket
  (the kernel floor: one syscall per delivery, nothing else);
* ``compiled``: ``rtserver._fanout.Fanout.send_many`` (frame once, cork, direct send);
* ``python``: the pure-Python reference ``rtserver.fanout_reference``;
* ``broadcast``: ``websockets.broadcast()``;
* ``await send``: ``for ws in members: await ws.send(payload)``.

The burst case queues 10 messages per connection within one loop tick
(``floor`` then means 10 sends per connection). Each case runs ``--repeat``
times, interleaved with the other cases, and the minimum is reported (the
machine may be shared); every case is checked: the reader must have received
exactly the bytes sent before the next case starts. Ratios are to the single
message floor measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson
import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve

from rtserver import fanout_reference
from rtserver.fanout import load_fanout

__all__ = ["main"]

BURST = 10
CASES = ("floor", "compiled", "python", "broadcast", "await send")


def _payload(seq: int) -> bytes:
    """A typical room message (fixed length for every seq)."""
    return orjson.dumps(
        {
            "type": "message",
            "room": "bench:r1",
            "from": "7f1c2a9e-5b1d-4f7e-9a0c-3d2b1e0f4a6c",
            "data": {"quote": "Q-2026-000123", "premium": 1234.56, "currency": "EUR", "ok": True},
            "seq": f"{seq:08d}",
        }
    )


@dataclass
class Ctx:
    """Everything one N needs."""

    n: int
    conns: list[ServerConnection] = field(default_factory=list)
    socks: list[socket.socket] = field(default_factory=list)
    compiled: Any = None
    compiled_sinks: set[Any] = field(default_factory=set)
    python: Any = None
    python_sinks: set[Any] = field(default_factory=set)
    payloads: list[bytes] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)
    sent_bytes: int = 0
    send_shortfalls: int = 0


def _on_slow(sink: Any, buffered: int) -> None:
    raise RuntimeError(
        f"benchmark connection went over the outbound limit ({buffered} bytes). "
        "Required action: raise --outbound-limit or lower --deliveries."
    )


async def _floor(ctx: Ctx, rounds: int, k: int) -> None:
    frames = ctx.frames[:k]
    for _ in range(rounds):
        for s in ctx.socks:
            for f in frames:
                if s.send(f) != len(f):
                    ctx.send_shortfalls += 1
        await asyncio.sleep(0)


async def _compiled(ctx: Ctx, rounds: int, k: int) -> None:
    payloads = ctx.payloads[:k]
    send_many = ctx.compiled.send_many
    sinks = ctx.compiled_sinks
    for _ in range(rounds):
        for p in payloads:
            send_many(sinks, p)
        await asyncio.sleep(0)


async def _python(ctx: Ctx, rounds: int, k: int) -> None:
    payloads = ctx.payloads[:k]
    send_many = ctx.python.send_many
    sinks = ctx.python_sinks
    for _ in range(rounds):
        for p in payloads:
            send_many(sinks, p)
        await asyncio.sleep(0)


async def _broadcast(ctx: Ctx, rounds: int, k: int) -> None:
    payloads = ctx.payloads[:k]
    conns = ctx.conns
    for _ in range(rounds):
        for p in payloads:
            broadcast(conns, p, text=True)
        await asyncio.sleep(0)


async def _await_send(ctx: Ctx, rounds: int, k: int) -> None:
    payloads = ctx.payloads[:k]
    for _ in range(rounds):
        for ws in ctx.conns:
            for p in payloads:
                await ws.send(p, text=True)
        await asyncio.sleep(0)


RUNNERS: dict[str, Callable[[Ctx, int, int], Awaitable[None]]] = {
    "floor": _floor,
    "compiled": _compiled,
    "python": _python,
    "broadcast": _broadcast,
    "await send": _await_send,
}


class Reader:
    """The reader subprocess and its line protocol."""

    def __init__(self, port: int, n: int, args: argparse.Namespace) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("fanout_reader.py")),
                "--port",
                str(port),
                "--connections",
                str(n),
                "--connect-timeout",
                str(args.connect_timeout),
                "--sync-timeout",
                str(args.sync_timeout),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    async def line(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        text = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), timeout)
        if not text:
            raise RuntimeError(
                f"the reader process exited (code {self.proc.poll()}). "
                "Required action: read its stderr above."
            )
        result: dict[str, Any] = orjson.loads(text)
        return result

    async def sync(self, total: int, timeout: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"sync {total}\n")
        self.proc.stdin.flush()
        reply = await self.line(timeout + 5)
        if not reply.get("ok"):
            raise RuntimeError(
                f"the reader received {reply.get('received')} bytes, expected {total}. "
                "Required action: check the server and reader output."
            )

    def stop(self, timeout: float) -> None:
        try:
            self.proc.communicate("quit\n", timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
            raise


async def _drain_transports(ctx: Ctx, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while any(ws.transport.get_write_buffer_size() for ws in ctx.conns):
            await asyncio.sleep(0.001)


async def _measure(
    ctx: Ctx, reader: Reader, case: str, rounds: int, k: int, args: argparse.Namespace
) -> float:
    """CPU seconds of the server process for ``rounds`` x ``k`` messages to all N."""
    gc.collect()
    t0 = time.process_time()
    await RUNNERS[case](ctx, rounds, k)
    await asyncio.sleep(0)
    cpu = time.process_time() - t0
    await _drain_transports(ctx, args.sync_timeout)
    ctx.sent_bytes += rounds * k * ctx.n * len(ctx.frames[0])
    await reader.sync(ctx.sent_bytes, args.sync_timeout)
    return cpu


async def _bench_n(n: int, args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    ctx = Ctx(n=n)
    arrived = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        ctx.conns.append(ws)
        if len(ctx.conns) == n:
            arrived.set()
        await ws.wait_closed()

    server = await serve(
        handler, "127.0.0.1", 0, compression=None, ping_interval=None, backlog=4096, max_queue=None
    )
    port = server.sockets[0].getsockname()[1]
    reader = Reader(port, n, args)
    try:
        ready = await reader.line(args.connect_timeout + 10)
        if ready.get("ready") != n:
            raise RuntimeError(f"reader reported {ready}, expected {n} connections")
        await asyncio.wait_for(arrived.wait(), args.connect_timeout)
        ctx.payloads = [_payload(i) for i in range(BURST)]
        ctx.frames = [fanout_reference.frame_text(p) for p in ctx.payloads]
        assert len({len(f) for f in ctx.frames}) == 1
        compiled_mod = load_fanout("compiled")
        ctx.compiled = compiled_mod.Fanout(loop, args.outbound_limit, _on_slow)
        ctx.compiled_sinks = {compiled_mod.Sink(ws, None) for ws in ctx.conns}
        ctx.python = fanout_reference.Fanout(loop, args.outbound_limit, _on_slow)
        ctx.python_sinks = {fanout_reference.Sink(ws, None) for ws in ctx.conns}
        ctx.socks = [
            socket.socket(fileno=ws.transport.get_extra_info("socket").fileno()) for ws in ctx.conns
        ]
        rounds_single = max(1, args.deliveries // n)
        rounds_burst = max(1, args.deliveries // (n * BURST))
        best: dict[tuple[str, int], float] = {}
        worst: dict[tuple[str, int], float] = {}
        for _ in range(args.repeat):
            for k, rounds in ((1, rounds_single), (BURST, rounds_burst)):
                for case in CASES:
                    cpu = await _measure(ctx, reader, case, rounds, k, args)
                    per = cpu / (rounds * k * n)
                    key = (case, k)
                    best[key] = min(best.get(key, per), per)
                    worst[key] = max(worst.get(key, per), per)
        for s in ctx.socks:
            s.detach()
        return {
            "n": n,
            "rounds": (rounds_single, rounds_burst),
            "best": best,
            "worst": worst,
            "frame_len": len(ctx.frames[0]),
            "compiled_stats": ctx.compiled.stats(),
            "python_stats": ctx.python.stats(),
            "shortfalls": ctx.send_shortfalls,
        }
    finally:
        reader.stop(args.sync_timeout)
        server.close()
        await asyncio.wait_for(server.wait_closed(), args.sync_timeout)


def _table(result: dict[str, Any]) -> str:
    best = result["best"]
    floor = best[("floor", 1)]
    lines = [
        f"N = {result['n']:,} connections, frame {result['frame_len']} bytes, "
        f"rounds {result['rounds'][0]} (single) / {result['rounds'][1]} (burst)",
        "",
        "| case | µs/delivery | ratio to floor | µs above floor |",
        "|---|---:|---:|---:|",
    ]
    for case in CASES:
        v = best[(case, 1)]
        lines.append(f"| {case} | {v * 1e6:.2f} | {v / floor:.2f} | {(v - floor) * 1e6:+.2f} |")
    lines.append(
        f"| **burst: {BURST} msgs/connection/tick** | **µs/message** "
        "| **ratio to single floor** | |"
    )
    for case in CASES:
        v = best[(case, BURST)]
        lines.append(f"| {case} (burst) | {v * 1e6:.2f} | {v / floor:.2f} | |")
    c, b = best[("compiled", 1)], best[("broadcast", 1)]
    lines.append("")
    lines.append(
        f"compiled vs broadcast(): {b / c:.2f}x faster; compiled vs floor: "
        f"{c / floor:.2f}x; burst compiled per message vs single floor: "
        f"{best[('compiled', BURST)] / floor:.2f}x; share of broadcast()'s overhead above "
        f"the floor removed: {1 - (c - floor) / (b - floor):.0%}"
    )
    worst = result["worst"]
    lines.append(
        "spread over the repeats (max/min): "
        + ", ".join(f"{case} {worst[(case, 1)] / best[(case, 1)]:.2f}" for case in CASES)
    )
    st = result["compiled_stats"]
    lines.append(
        "compiled core counters: "
        + ", ".join(
            f"{k}={st[k]}"
            for k in (
                "deliveries",
                "frames_written",
                "writes",
                "coalesced",
                "direct_sends",
                "partial_writes",
                "transport_writes",
                "send_errors",
                "skipped_not_open",
                "dropped_slow",
            )
        )
    )
    if result["shortfalls"]:
        lines.append(f"floor: {result['shortfalls']} short socket.send() calls")
    return "\n".join(lines)


async def _main(args: argparse.Namespace) -> int:
    ns = [int(x) for x in args.connections.split(",")]
    print(
        f"# python -m rtserver.bench.fanout_micro --connections {args.connections} "
        f"--deliveries {args.deliveries} --repeat {args.repeat}"
    )
    print(
        f"# {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"websockets {version('websockets')}, uvloop {version('uvloop')}, "
        f"load average at start {os.getloadavg()[0]:.2f}"
    )
    for n in ns:
        started = time.monotonic()
        result = await _bench_n(n, args)
        for key in ("compiled_stats", "python_stats"):
            st = result[key]
            if st["frames_written"] != st["deliveries"]:
                raise RuntimeError(f"{key}: not every delivery was written: {st}")
        print()
        print(_table(result))
        print(
            f"(N={n:,}: {time.monotonic() - started:.1f} s wall, "
            f"load average {os.getloadavg()[0]:.2f})"
        )
    return 0


def main() -> int:
    """Entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", default="1000,10000", help="comma-separated room sizes N")
    parser.add_argument(
        "--deliveries",
        type=int,
        default=100_000,
        help="deliveries per case and repeat (rounds = deliveries / N)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="interleaved repeats per case; the minimum is reported",
    )
    parser.add_argument(
        "--outbound-limit",
        type=int,
        default=8 << 20,
        help="outbound buffer limit per connection for the fan-out cores",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=120.0,
        help="seconds allowed for opening all N connections",
    )
    parser.add_argument(
        "--sync-timeout",
        type=float,
        default=60.0,
        help="seconds allowed for the reader to receive one case's bytes",
    )
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return uvloop.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
