"""What TLS costs per delivery: server CPU time per delivery, plain TCP vs TLS, in one run.

Usage (on a quiet machine; it loads one core fully)::

    python -m rtserver.bench.tls_cost --connections 1000 --deliveries 200000 --repeat 5

Two websockets servers (uvloop, compression off, as rtserver runs) are started
in this process, one plain and one with TLS (a throw-away certificate from
:mod:`rtserver.bench.selfsigned`, the server context from
:func:`rtserver.tls.server_ssl_context`). A reader process
(:mod:`rtserver.bench.fanout_reader`, ``--cafile`` for TLS) opens N connections
to each and drains them. The compiled fan-out core then delivers the same
message to all N members of each room, ``deliveries / N`` times; the server
CPU time (``time.process_time``, from the first send until the reader
confirmed every byte, so the encryption of data the SSL transport had to
buffer is counted too) is divided by the deliveries. Plain and TLS alternate
``--repeat`` times and the minimum of each is reported, with the ratio.

Under TLS the core never writes to the socket itself (every sink has
``fd == -1`` and takes the transport path: ``transport.write`` encrypts);
the run checks that, and that the plain room used direct ``send()``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import resource
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import uvloop
from websockets.asyncio.server import Server, ServerConnection, serve

from rtserver.bench.fanout_micro import Reader
from rtserver.bench.selfsigned import make_tls_files
from rtserver.fanout import load_fanout
from rtserver.fanout_reference import frame_text
from rtserver.tls import server_ssl_context

__all__ = ["main"]

PAYLOAD = orjson.dumps({
    "type": "message", "room": "bench:tls", "from": "7f1c2a9e-5b1d-4f7e-9a0c-3d2b1e0f4a6c",
    "data": {"quote": "Q-2026-000123", "premium": 1234.56, "currency": "EUR", "ok": True},
    "seq": 1})


class _TlsReader(Reader):
    """The fan-out micro benchmark's reader process, told to use TLS when ``cafile`` is set."""

    def __init__(self, port: int, n: int, args: argparse.Namespace,
                 cafile: str | None) -> None:  # the parent's __init__ is replaced, not extended
        command = [sys.executable, str(Path(__file__).with_name("fanout_reader.py")),
                   "--port", str(port), "--connections", str(n),
                   "--connect-timeout", str(args.connect_timeout),
                   "--sync-timeout", str(args.sync_timeout)]
        if cafile is not None:
            command += ["--cafile", cafile]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)


def _on_slow(sink: Any, buffered: int) -> None:
    raise RuntimeError(f"benchmark connection went over the outbound limit ({buffered} bytes). "
                       "Required action: raise --outbound-limit or lower --deliveries.")


@dataclass
class Room:
    """One server, its N connections and the compiled core's sinks for them."""

    mode: str
    server: Server
    reader: _TlsReader
    fanout: Any
    sinks: set[Any] = field(default_factory=set)
    sent_bytes: int = 0


async def _open(mode: str, n: int, context: ssl.SSLContext | None, cafile: str | None,
                args: argparse.Namespace) -> Room:
    conns: list[ServerConnection] = []
    arrived = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        conns.append(ws)
        if len(conns) == n:
            arrived.set()
        await ws.wait_closed()

    server = await serve(handler, "127.0.0.1", 0, compression=None, ping_interval=None,
                         backlog=4096, max_queue=None, ssl=context)
    reader = _TlsReader(server.sockets[0].getsockname()[1], n, args, cafile)
    ready = await reader.line(args.connect_timeout + 10)
    if ready.get("ready") != n:
        raise RuntimeError(f"{mode}: the reader reported {ready}, expected {n} connections")
    await asyncio.wait_for(arrived.wait(), args.connect_timeout)
    compiled = load_fanout("compiled")
    room = Room(mode, server, reader,
                compiled.Fanout(asyncio.get_running_loop(), args.outbound_limit, _on_slow))
    room.sinks = {compiled.Sink(ws, None) for ws in conns}
    direct = sum(1 for s in room.sinks if s.fd >= 0)
    if direct != (n if context is None else 0):
        raise RuntimeError(f"{mode}: {direct} of {n} sinks would write to the socket directly")
    return room


async def _measure(room: Room, rounds: int, n: int, args: argparse.Namespace) -> float:
    """Server CPU seconds per delivery for ``rounds`` sends to all N, until received."""
    send_many = room.fanout.send_many
    sinks = room.sinks
    gc.collect()
    t0 = time.process_time()
    for _ in range(rounds):
        send_many(sinks, PAYLOAD)
        await asyncio.sleep(0)
    room.sent_bytes += rounds * n * len(frame_text(PAYLOAD))
    await room.reader.sync(room.sent_bytes, args.sync_timeout)
    return (time.process_time() - t0) / (rounds * n)


async def _close(room: Room, timeout: float) -> None:
    room.reader.stop(timeout)
    room.server.close()
    await asyncio.wait_for(room.server.wait_closed(), timeout)


async def _main(args: argparse.Namespace) -> int:
    n = args.connections
    rounds = max(1, args.deliveries // n)
    print(f"# python -m rtserver.bench.tls_cost --connections {n} --deliveries "
          f"{args.deliveries} --repeat {args.repeat}")
    print(f"# {platform.platform()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, {ssl.OPENSSL_VERSION}, load average at start "
          f"{os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="rtserver-tls-cost-") as tmp:
        files = make_tls_files(Path(tmp))
        context = server_ssl_context(files.certfile, files.keyfile)
        started = time.monotonic()
        rooms = [await _open("plain", n, None, None, args),
                 await _open("tls", n, context, files.cafile, args)]
        try:
            best: dict[str, float] = {}
            for _ in range(args.repeat):
                for room in rooms:
                    per = await _measure(room, rounds, n, args)
                    best[room.mode] = min(best.get(room.mode, per), per)
            stats = {room.mode: room.fanout.stats() for room in rooms}
        finally:
            for room in rooms:
                await _close(room, args.sync_timeout)
    if stats["plain"]["direct_sends"] == 0 or stats["tls"]["direct_sends"] != 0:
        raise RuntimeError(f"unexpected write paths: {stats}")
    print()
    print(f"N = {n:,} connections, frame {len(frame_text(PAYLOAD))} bytes, {rounds} rounds, "
          f"best of {args.repeat}")
    print()
    print("| transport | µs/delivery | core counters |")
    print("|---|---:|---|")
    for mode in ("plain", "tls"):
        st = stats[mode]
        print(f"| {mode} | {best[mode] * 1e6:.2f} | direct_sends={st['direct_sends']} "
              f"transport_writes={st['transport_writes']} writes={st['writes']} |")
    print()
    print(f"TLS / plain CPU per delivery: {best['tls'] / best['plain']:.2f}x "
          f"({time.monotonic() - started:.1f} s wall, load average "
          f"{os.getloadavg()[0]:.2f})")
    return 0


def main() -> int:
    """Entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000, help="room size N (each room)")
    parser.add_argument("--deliveries", type=int, default=200_000,
                        help="deliveries per measurement (rounds = deliveries / N)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="alternating plain/TLS measurements; the minimum is reported")
    parser.add_argument("--outbound-limit", type=int, default=8 << 20,
                        help="outbound buffer limit per connection of the fan-out core")
    parser.add_argument("--connect-timeout", type=float, default=120.0,
                        help="seconds allowed for opening the N connections of one room")
    parser.add_argument("--sync-timeout", type=float, default=60.0,
                        help="seconds allowed for the reader to receive one measurement's bytes")
    args = parser.parse_args()
    if args.connections < 1 or args.deliveries < 1 or args.repeat < 1:
        parser.error("--connections, --deliveries and --repeat must be >= 1")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return uvloop.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
