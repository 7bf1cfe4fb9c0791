"""What one connection costs in memory: ``python -m rtserver.bench.conn_memory``.

An in-process ``RtServer`` (LocalBus, the shipped configuration on a loopback
port, the configured domains) takes ``--connections`` authenticated connections,
each subscribed to one room of ``--room-size`` (the shape of ``rtserver bench
connect-storm``), from a client in a child process. Two phases, each with fresh
connections after a warm-up (so that lazily built tables exist):

1. RSS: the server process's resident set before and after, per connection;
2. tracemalloc: the Python heap allocated by the connections and still alive
   after a full collection, per connection, grouped by what allocated it (the
   innermost frame's module, named below), and the largest source lines.

Loopback only; the secret is generated for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import secrets
import sys
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["CATEGORIES", "categorize", "client_argv", "main"]

#: (path fragment, category): the first fragment found in an allocation's innermost
#: frame names its category; anything else is "other".
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("websockets/asyncio/connection.py", "websockets asyncio Connection (+ its futures)"),
    ("websockets/asyncio/server.py", "websockets asyncio server (handler task, coroutine)"),
    ("websockets/asyncio/messages.py", "websockets incoming-message assembler"),
    ("websockets/protocol.py", "websockets Sans-I/O protocol"),
    ("websockets/server.py", "websockets Sans-I/O server protocol"),
    ("websockets/streams.py", "websockets reader buffer"),
    ("websockets/frames.py", "websockets frames"),
    ("websockets/http11.py", "websockets handshake request/response"),
    ("websockets/datastructures.py", "websockets headers"),
    ("websockets/", "websockets (other)"),
    # Allocated with no Python frame of its own while the loop runs: uvloop's C code
    # (the transport and its handles of each connection).
    ("asyncio/runners.py", "uvloop transport (C, under the loop's run)"),
    ("asyncio/", "asyncio (tasks, futures, timeouts)"),
    ("uvloop", "uvloop"),
    ("logging/", "logging adapters"),
    ("weakref.py", "weak references"),
    ("uuid.py", "uuid"),
    ("rtserver/ws_server.py", "rtserver connection layer (WsConnection)"),
    ("rtserver/rt_connection.py", "rtserver RtConnection (inbox, tasks)"),
    ("rtserver/server.py", "rtserver server"),
    ("rtserver/hub.py", "rtserver hub tables"),
    ("rtserver/rooms.py", "rtserver rooms"),
    ("rtserver/connection.py", "rtserver Connection"),
    ("rtserver/protocol/session.py", "rtserver session"),
    ("rtserver/protocol/", "rtserver protocol (codec, messages)"),
    ("rtserver/auth.py", "rtserver auth (principal, claims)"),
    ("rtserver/admission.py", "rtserver admission"),
    ("rtserver/fanout", "rtserver fan-out sink"),
    ("rtserver/node.py", "rtserver node"),
    ("rtserver/heartbeat.py", "rtserver heartbeat"),
    ("rtserver/domains/", "domains"),
    ("rtserver/", "rtserver (other)"),
)


def categorize(filename: str) -> str:
    """The category of an allocation made in ``filename``."""
    name = filename.replace(os.sep, "/")
    for fragment, category in CATEGORIES:
        if fragment in name:
            return category
    return "other (" + Path(name).name + ")"


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------ client (child)

async def _client(port: int, room_size: int, secret: str, in_flight: int) -> None:
    """For each line ``START COUNT`` on stdin: open and subscribe COUNT connections, say
    ``ready``, hold them until stdin says ``close``, close them and say ``closed``."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import WebSocketException

    from rtserver.bench.tokens import mint, user_id

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if line in ("", "quit"):
            return
        start, count = (int(x) for x in line.split())
        async def one(i: int, sem: asyncio.Semaphore) -> Any:
            async with sem:
                ws = await connect(
                    f"ws://127.0.0.1:{port}/ws?token={mint(secret, user_id(i), 3600)}",
                    compression=None, open_timeout=60, ping_interval=None)
                await ws.send(f'{{"type":"subscribe","room":"bench:mem-{i // room_size}"}}')
                while True:  # connection, authenticated, heartbeats, then subscribed
                    reply = str(await ws.recv())
                    if '"subscribed"' in reply:
                        return ws
                    if '"error"' in reply:
                        raise SystemExit(f"subscribe refused: {reply}")

        sem = asyncio.Semaphore(in_flight)
        try:
            sockets = await asyncio.gather(*(one(start + i, sem) for i in range(count)))
        except (OSError, TimeoutError, WebSocketException, SystemExit) as exc:
            # Said on stdout, so the measuring process names the cause in its error.
            print(f"failed {type(exc).__name__}: {exc}", flush=True)
            raise
        print("ready", flush=True)
        if (await reader.readline()).decode().strip() != "close":
            return
        await asyncio.gather(*(ws.close() for ws in sockets))
        print("closed", flush=True)


# ------------------------------------------------------------------ server (this process)

async def _phase(proc: asyncio.subprocess.Process, start: int, count: int) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(f"{start} {count}\n".encode())
    await proc.stdin.drain()
    line = (await proc.stdout.readline()).decode().strip()
    if line != "ready":
        raise SystemExit(f"client did not get ready (said {line!r}). Required action: see "
                         "its stderr above")


async def _close(proc: asyncio.subprocess.Process, server: Any) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"close\n")
    await proc.stdin.drain()
    if (await proc.stdout.readline()).decode().strip() != "closed":
        raise SystemExit("client did not close its connections")
    while server.node.hub.connections:
        await asyncio.sleep(0.05)


def client_argv(port: int, args: argparse.Namespace, secret: str) -> list[str]:
    """The client half's command line. The secret goes as ``--secret=VALUE``: a urlsafe
    secret starts with ``-`` once in 64, which argparse would take for an option."""
    return [sys.executable, "-m", "rtserver.bench.conn_memory", "--client", str(port),
            "--connections", str(args.connections), "--room-size", str(args.room_size),
            "--in-flight", str(args.in_flight), f"--secret={secret}"]


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    from rtserver.config import load_config
    from rtserver.server import RtServer

    secret = secrets.token_urlsafe(32)
    config = load_config(env={}, flags={"port": 0, "jwt_secret": secret, "host": "127.0.0.1",
                                        "log_level": "warning"})
    from rtserver import jsonlog

    jsonlog.configure("warning")
    server = RtServer(config, jwt_secret=secret)
    await server.start()
    from rtserver.gc_tuning import tune_gc

    tune_gc(config.server.gc_young_threshold)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                         env.get("PYTHONPATH", "")])
    if server.port is None:
        raise SystemExit("the in-process server reports no port after start()")
    proc = await asyncio.create_subprocess_exec(
        *client_argv(server.port, args, secret), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, env=env)
    n = args.connections
    try:
        await _phase(proc, 0, min(n, 1000))  # warm-up: tables, interned names, free lists
        await _close(proc, server)
        gc.collect()
        rss0 = _rss()
        await _phase(proc, n, n)
        gc.collect()
        rss1 = _rss()
        await _close(proc, server)
        gc.collect()
        tracemalloc.start(args.frames)
        snap0 = tracemalloc.take_snapshot()
        await _phase(proc, 2 * n, n)
        gc.collect()
        snap1 = tracemalloc.take_snapshot()
        tracemalloc.stop()
        await _close(proc, server)
    finally:
        assert proc.stdin is not None
        proc.stdin.write(b"quit\n")
        await proc.stdin.drain()
        await proc.wait()
        await server.stop(1001, "measurement over")
    by_cat: dict[str, int] = {}
    by_line: dict[str, int] = {}
    for diff in snap1.compare_to(snap0, "traceback"):
        innermost = diff.traceback[0]
        cat = categorize(innermost.filename)
        by_cat[cat] = by_cat.get(cat, 0) + diff.size_diff
        where = f"{_short(innermost.filename)}:{innermost.lineno}"
        by_line[where] = by_line.get(where, 0) + diff.size_diff
    return {"connections": n, "rss_per_connection": (rss1 - rss0) / n,
            "heap_per_connection": sum(by_cat.values()) / n,
            "categories": {k: v / n for k, v in by_cat.items()},
            "lines": {k: v / n for k, v in by_line.items()}}


def _short(filename: str) -> str:
    name = filename.replace(os.sep, "/")
    for marker in ("site-packages/", "/rtserver/", "/lib/python3"):
        if marker in name:
            tail = name.split(marker, 1)[1]
            return ("rtserver/" + tail) if marker == "/rtserver/" else tail
    return name


def _print(res: dict[str, Any], top: int) -> None:
    print(f"connections {res['connections']} (each authenticated and subscribed to one room)")
    print(f"RSS per connection          {res['rss_per_connection']:8.0f} B"
          f"  ({res['rss_per_connection'] / 1024:.2f} KiB)")
    print(f"Python heap per connection  {res['heap_per_connection']:8.0f} B"
          f"  ({res['heap_per_connection'] / 1024:.2f} KiB, tracemalloc, after gc.collect())")
    print()
    print("B/conn  share  allocated in")
    total = res["heap_per_connection"] or 1.0
    for cat, size in sorted(res["categories"].items(), key=lambda kv: -kv[1]):
        if abs(size) >= 1:
            print(f"{size:6.0f}  {100 * size / total:4.0f}%  {cat}")
    print()
    print(f"largest {top} source lines (B/conn):")
    for where, size in sorted(res["lines"].items(), key=lambda kv: -kv[1])[:top]:
        print(f"{size:6.0f}  {where}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: measure and print the breakdown (or run the client half)."""
    parser = argparse.ArgumentParser(prog="python -m rtserver.bench.conn_memory",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--room-size", type=int, default=10)
    parser.add_argument("--in-flight", type=int, default=500,
                        help="handshakes the client has in flight at once")
    parser.add_argument("--frames", type=int, default=1,
                        help="tracemalloc frames per allocation (1: the innermost)")
    parser.add_argument("--top", type=int, default=25, help="source lines listed")
    parser.add_argument("--json", action="store_true",
                        help="also print the figures as one JSON line at the end")
    parser.add_argument("--client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--secret", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.in_flight < 1:
        parser.error("--in-flight must be >= 1")
    if not 1 <= args.connections <= 15000:
        parser.error("--connections must be within 1..15000 (one client process, fd limit)")
    import uvloop

    if args.client is not None:
        uvloop.run(_client(args.client, args.room_size, args.secret, args.in_flight))
        return 0
    result = uvloop.run(_run(args))
    _print(result, args.top)
    if args.json:
        import orjson

        print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
