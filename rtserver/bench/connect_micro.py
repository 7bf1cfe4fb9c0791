"""rtserver's own CPU per connection after the upgrade: ``python -m rtserver.bench.connect_micro``.

A :class:`~rtserver.node.Node` built as a worker builds it (the shipped
configuration, its domains, the compiled fan-out core, the configured log writer
and GC settings; the bus of ``--bus``: ``local`` = :class:`LocalBus` as one
worker runs, ``embedded`` = a worker's :class:`EmbeddedBus` client of an
:class:`EmbeddedBusServer` run in a child process, as ``--workers N`` runs) takes
``--connections`` connections shaped like ``rtserver bench connect-storm``'s (one
user each, a ``?token=`` HS256 token, one ``subscribe`` to a room of
``--room-size``), without sockets: each ``ws`` is a stand-in with just what the
node and the fan-out core read (its frames are queued and flushed to a transport
that drops them). Per stage, in batches of ``--batch`` connections at once (a
task per connection, as the server has):

* ``open``: :meth:`Node.open_connection` (session, connection, sink, hub tables,
  the ``connecting`` log line, the welcome frame);
* ``auth``: :meth:`Node.authenticate_token` (token verification, user limit, hub
  tables, user interest on the bus, the ``authenticated`` line and reply, hooks);
* ``subscribe``: :meth:`Node.handle_frame` of the ``subscribe`` frame (decode,
  access, join, bus interest and position, ``subscribed``);
* ``close``: :meth:`Node.connection_closed` (tables, bus interests, ``closed``
  line, hooks), after every connection of the round is open and subscribed;

and ``tasks``, the harness's own cost of one task per connection in a batch
(included in auth, subscribe and close). Each figure is the process CPU time
(user + system) of the stage per connection, including the loop callbacks it
caused (fan-out flush, log writes to a regular file, bus frames); the best and the
median of the rounds (``--processes`` measuring processes of ``--repeat`` rounds,
each round with fresh connections) are printed. The bus server's CPU (a child
process) is not included.

``--vs DIR`` measures another source tree (say a worktree of the previous commit,
its extension built) in the same run, its measuring processes alternating with this
tree's, and prints this tree / DIR per stage.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson

__all__ = ["STAGES", "FakeTransport", "FakeWs", "main"]

STAGES = ("open", "auth", "subscribe", "close", "tasks")


# ------------------------------------------------------------------ stand-ins for websockets

class FakeTransport:
    """A transport that takes every write and says it is never behind (``keep``: the
    bytes written are kept in ``data``, for tests)."""

    __slots__ = ("data", "keep", "written")

    def __init__(self, keep: bool = False) -> None:
        self.written = 0
        self.keep = keep
        self.data = bytearray()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default  # no socket: the fan-out core writes through write()

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.written += 1
        if self.keep:
            self.data += data

    def texts(self) -> list[bytes]:
        """The payloads of the (unmasked text) frames written so far."""
        out: list[bytes] = []
        data, i = bytes(self.data), 0
        while i < len(data):
            n, i = data[i + 1] & 0x7F, i + 2
            if n >= 126:
                width = 2 if n == 126 else 8
                n, i = int.from_bytes(data[i:i + width], "big"), i + width
            out.append(data[i:i + n])
            i += n
        return out


class _Protocol:
    __slots__ = ("extensions", "side", "state")

    def __init__(self) -> None:
        from websockets.protocol import Side, State

        self.side = Side.SERVER
        self.state = State.OPEN
        self.extensions: list[Any] = []


class FakeWs:
    """What the node and the fan-out core read of a websockets connection."""

    __slots__ = ("closed_with", "protocol", "remote_address", "send_in_progress",
                 "transport")

    def __init__(self, transport: FakeTransport, port: int = 40000) -> None:
        self.transport = transport
        self.protocol = _Protocol()
        self.remote_address = ("127.0.0.1", port)
        self.send_in_progress = None
        self.closed_with: tuple[int, str] | None = None

    def start_close(self, code: int = 1000, reason: str = "") -> None:
        self.closed_with = (code, reason)


# ------------------------------------------------------------------ hub server (child)

def _hub_child(path: str) -> None:
    import uvloop

    from rtserver.bus.embedded_server import EmbeddedBusServer
    from rtserver.bus.embedded_settings import EmbeddedBusServerSettings
    from rtserver.bus.room_streams import HistorySettings
    from rtserver.config import load_layers

    bus = load_layers(env={}, validate=False).config.bus

    async def run() -> None:
        hub = EmbeddedBusServer(EmbeddedBusServerSettings(
            socket_path=path, expected_workers=1, max_worker_buffer=1 << 30,
            collect_timeout=5.0, history=HistorySettings(
                history_size=bus.history_size, history_ttl=bus.history_ttl,
                history_max_bytes=bus.history_max_bytes,
                idempotency_window=bus.idempotency_window)))
        await hub.start()
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        print("ready", flush=True)
        await reader.read()  # until the parent closes stdin
        await hub.close()

    uvloop.run(run())


# ------------------------------------------------------------------ measuring (child)

async def _batches(n: int, batch: int,
                   step: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    for start in range(0, n, batch):
        await asyncio.gather(*(step(i) for i in range(start, min(start + batch, n))))


async def _noop(i: int) -> None:
    return None


async def _round(node: Any, secret: str, args: argparse.Namespace, r: int,
                 transport: FakeTransport) -> dict[str, float]:
    """One round of fresh connections: CPU µs per connection of each stage."""
    from rtserver.bench.tokens import mint, user_id
    from rtserver.connection import ConnState

    n, batch = args.connections, args.batch
    base = 1_000_000 + r * n
    ids = [str(uuid.uuid4()) for _ in range(n)]
    tokens = [mint(secret, user_id(base + i), 3600) for i in range(n)]
    frames = [f'{{"type":"subscribe","room":"bench:storm-{i // args.room_size}","id":1}}'
              for i in range(n)]
    sockets = [FakeWs(transport, 10_000 + i % 50_000) for i in range(n)]
    conns: list[Any] = [None] * n
    gc.collect()
    cpu: dict[str, float] = {}

    t0 = time.process_time()
    for start in range(0, n, batch):
        for i in range(start, min(start + batch, n)):
            conns[i] = node.open_connection(sockets[i], ids[i], "127.0.0.1:40000",
                                            "bench-client/1")
        await asyncio.sleep(0)  # the loop callbacks the batch caused (flushes)
    await asyncio.sleep(0)
    cpu["open"] = time.process_time() - t0

    async def auth(i: int) -> None:
        await node.authenticate_token(conns[i], tokens[i])

    async def subscribe(i: int) -> None:
        await node.handle_frame(conns[i], frames[i])

    async def close(i: int) -> None:
        await node.connection_closed(conns[i], 1000, "client closed")

    for stage, step in (("auth", auth), ("subscribe", subscribe), ("tasks", _noop)):
        t0 = time.process_time()
        await _batches(n, batch, step)
        await asyncio.sleep(0)
        cpu[stage] = time.process_time() - t0
    bad = [c.id for c in conns if c.state is not ConnState.AUTHENTICATED or not c.rooms]
    if bad:
        raise SystemExit(f"{len(bad)} connections not authenticated and subscribed (first "
                         f"{bad[0]}). Required action: see the log lines on stderr")
    expected_rooms = -(-n // args.room_size)
    if len(node.hub.rooms) != expected_rooms or node.hub.subscription_count() != n:
        raise SystemExit(f"hub holds {len(node.hub.rooms)} rooms and "
                         f"{node.hub.subscription_count()} subscriptions, expected "
                         f"{expected_rooms} and {n}")
    t0 = time.process_time()
    await _batches(n, batch, close)
    await asyncio.sleep(0)
    cpu["close"] = time.process_time() - t0
    if node.hub.connections or node.hub.by_user or node.hub.rooms:
        raise SystemExit("connections left in the hub after closing every one")
    return {k: v / n * 1e6 for k, v in cpu.items()}


async def _measure(args: argparse.Namespace) -> dict[str, Any]:
    from rtserver import (
        _fanout,  # type: ignore[attr-defined, unused-ignore]
        jsonlog,
    )
    from rtserver.backoff import BackoffPolicy
    from rtserver.bus.base import Bus
    from rtserver.bus.local import LocalBus
    from rtserver.config import load_config, log_writer_settings
    from rtserver.gc_tuning import tune_gc
    from rtserver.node import Node
    from rtserver.plugin import load_domain_classes

    secret = secrets.token_urlsafe(32)
    config = load_config(env={"RTSERVER_JWT_SECRET": secret})
    jsonlog.configure(config.server.log_level, writer=config.server.log_writer,
                      loop_settings=log_writer_settings(config))
    jsonlog.set_worker(0)
    bus: Bus
    if args.hub_socket:
        from rtserver.bus.embedded_client import EmbeddedBus
        from rtserver.bus.embedded_settings import EmbeddedBusSettings

        bus = EmbeddedBus(EmbeddedBusSettings(
            socket_path=args.hub_socket, worker_id=0,
            request_timeout=config.bus.request_timeout,
            connect_timeout=config.bus.connect_timeout,
            reconnect=BackoffPolicy(initial_delay=config.bus.reconnect_backoff_base,
                                    max_delay=config.bus.reconnect_backoff_max,
                                    jitter=config.bus.reconnect_jitter)))
    else:
        bus = LocalBus.from_config(config.bus)
    node = Node(config, bus, _fanout, load_domain_classes(config.domains.enabled), 0, secret)
    await node.start()
    await node.start_domains()
    tune_gc(config.server.gc_young_threshold)
    transport = FakeTransport()
    rounds = [await _round(node, secret, args, r, transport) for r in range(args.repeat)]
    await node.stop_domains()
    await node.close()
    jsonlog.flush()
    return {"bus": bus.kind, "rounds": rounds, "frames_written": transport.written}


def _child(args: argparse.Namespace) -> None:
    import uvloop

    result = uvloop.run(_measure(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


# ------------------------------------------------------------------ parent

#: Runs this file as the measuring child with whatever ``rtserver`` is on the path (the
#: tree under test, or the ``--vs`` tree), so both are measured by the same code.
_CHILD_BOOT = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('rtserver_connect_micro', sys.argv[1])\n"
    "mod = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(mod)\n"
    "raise SystemExit(mod.main(sys.argv[2:]))\n")


def _tree_of_this_rtserver() -> Path:
    import rtserver

    return Path(rtserver.__file__).resolve().parent.parent


def _run(args: argparse.Namespace, tree: Path, log_file: Path, hub_socket: str,
         cwd: str) -> dict[str, Any]:
    argv = [sys.executable, "-c", _CHILD_BOOT, str(Path(__file__).resolve()), "--child",
            "--connections", str(args.connections), "--batch", str(args.batch),
            "--room-size", str(args.room_size), "--repeat", str(args.repeat)]
    if hub_socket:
        argv += ["--hub-socket", hub_socket]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with log_file.open("wb") as f:
        out = subprocess.run(argv, stderr=f, stdout=subprocess.PIPE, check=False, env=env,
                             cwd=cwd)
    if out.returncode != 0:
        tail = log_file.read_bytes()[-3000:].decode(errors="replace")
        raise SystemExit(f"the measuring process ({tree}) failed (exit {out.returncode}); its "
                         f"stderr ends with:\n{tail}")
    result: dict[str, Any] = orjson.loads(out.stdout)
    return result


def _log_lines(log_file: Path) -> dict[str, int]:
    events: dict[str, int] = {}
    with log_file.open("rb") as f:
        for line in f:
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            key = str(doc.get("event"))
            if key == "connection_state":
                key += ":" + str(doc.get("state"))
            events[key] = events.get(key, 0) + 1
    return events


def summarize(rounds: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Best and median µs per connection of each stage (and of the sum of open, auth,
    subscribe and close) over the rounds."""
    out: dict[str, dict[str, float]] = {}
    for stage in (*STAGES, "total"):
        values = [sum(r[s] for s in STAGES[:4]) if stage == "total" else r[stage]
                  for r in rounds]
        out[stage] = {"best": min(values), "median": statistics.median(values)}
    return out


def _measure_trees(args: argparse.Namespace, trees: dict[str, Path],
                   tmp: str) -> dict[str, dict[str, Any]]:
    """Alternating measuring processes, ``--processes`` per tree, each ``--repeat`` rounds."""
    hub: subprocess.Popen[bytes] | None = None
    sock = ""
    if args.bus == "embedded":
        sock = os.path.join(tmp, "hub.sock")
        hub = subprocess.Popen(
            [sys.executable, "-c", _CHILD_BOOT, str(Path(__file__).resolve()), "--hub-child",
             sock], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(next(iter(trees.values())))}, cwd=tmp)
        assert hub.stdout is not None
        if hub.stdout.readline().strip() != b"ready":
            raise SystemExit("the embedded bus server did not start")
    results: dict[str, dict[str, Any]] = {
        label: {"tree": str(tree), "rounds": [], "log_lines": {}}
        for label, tree in trees.items()}
    try:
        for k in range(args.processes):
            for label, tree in trees.items():
                log_file = Path(tmp) / f"{label}-{k}.log"
                result = _run(args, tree, log_file, sock, tmp)
                entry = results[label]
                entry["rounds"] += result["rounds"]
                for key, n in _log_lines(log_file).items():
                    entry["log_lines"][key] = entry["log_lines"].get(key, 0) + n
                log_file.unlink()
    finally:
        if hub is not None:
            assert hub.stdin is not None
            hub.stdin.close()
            hub.wait(10)
    for entry in results.values():
        entry["summary"] = summarize(entry["rounds"])
        made = args.connections * len(entry["rounds"])
        entry["log_lines_per_connection"] = {
            k: v / made for k, v in entry["log_lines"].items()
            if k.startswith("connection_state:")}
    return results


def main(argv: list[str] | None = None) -> int:
    """Print µs of CPU per connection by stage (best and median of the rounds)."""
    p = argparse.ArgumentParser(prog="python -m rtserver.bench.connect_micro",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--connections", type=int, default=10_000, help="per round")
    p.add_argument("--room-size", type=int, default=10)
    p.add_argument("--batch", type=int, default=100, help="connections handled at once")
    p.add_argument("--repeat", type=int, default=3,
                   help="rounds per measuring process (fresh connections each)")
    p.add_argument("--processes", type=int, default=2,
                   help="measuring processes per tree (alternating with --vs)")
    p.add_argument("--bus", choices=("local", "embedded"), default="embedded")
    p.add_argument("--vs", metavar="DIR", default="",
                   help="another rtserver source tree (a checkout with its extension built) "
                   "measured in the same run, alternately; ratios are this tree / DIR")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--hub-socket", default="", help=argparse.SUPPRESS)
    p.add_argument("--hub-child", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.hub_child:
        _hub_child(args.hub_child)
        return 0
    if args.child:
        _child(args)
        return 0
    if min(args.connections, args.batch, args.repeat, args.room_size, args.processes) < 1:
        p.error("--connections, --batch, --repeat, --processes and --room-size must be >= 1")
    trees = {"this": _tree_of_this_rtserver()}
    if args.vs:
        vs = Path(args.vs).resolve()
        if not (vs / "rtserver" / "node.py").is_file():
            p.error(f"--vs {args.vs}: no rtserver package there (rtserver/node.py)")
        trees["vs"] = vs
    with tempfile.TemporaryDirectory(prefix="rtserver-connect-micro-") as tmp:
        results = _measure_trees(args, trees, tmp)
    if args.json:
        print(orjson.dumps({"connections": args.connections, "batch": args.batch,
                            "bus": args.bus, "trees": results}).decode())
        return 0
    rounds = len(results["this"]["rounds"])
    print(f"connect_micro: bus={args.bus} connections={args.connections} batch={args.batch} "
          f"rounds={rounds} per tree (CPU µs per connection, best / median)")
    for label, entry in results.items():
        print(f"  {label}: {entry['tree']}")
    head = f"  {'stage':<10} {'this':>17}"
    if "vs" in results:
        head += f" {'vs':>17} {'this/vs':>13}"
    print(head)
    for stage in (*STAGES, "total"):
        a = results["this"]["summary"][stage]
        line = f"  {stage:<10} {a['best']:8.2f} {a['median']:8.2f}"
        if "vs" in results:
            b = results["vs"]["summary"][stage]
            line += (f" {b['best']:8.2f} {b['median']:8.2f}"
                     f"   {a['best'] / b['best']:5.3f} {a['median'] / b['median']:5.3f}")
        if stage == "tasks":
            line += "  (harness; inside auth, subscribe, close)"
        elif stage == "total":
            line += "  (open + auth + subscribe + close)"
        print(line)
    for label, entry in results.items():
        lines = ", ".join(f"{k.split(':', 1)[1]} {v:g}"
                          for k, v in sorted(entry["log_lines_per_connection"].items()))
        print(f"  log lines per connection ({label}): {lines}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
