"""Room history figures: memory, publish cost with history on vs off, recovery at scale.

``python -m rtserver.bench.history_micro`` prints three measurements, each
made by this run (never typed in):

1. **Memory**: the RSS growth of the seq authority's room streams
   (:class:`rtserver.bus.room_streams.RoomStreams`, what the embedded bus server
   and the local bus hold) for ``--rooms`` rooms with a full history of
   ``--history`` messages of ``--body`` bytes each, per room and per message.
2. **Publish cost**: the authority's publish step with history on
   (``--history``) vs off (``history_size = 0``), interleaved in one run;
   the ratio is the cost of keeping history.
3. **Recovery**: a real ``rtserver serve --workers 2``; ``--clients`` clients
   each subscribe ``--client-rooms`` of ``--recover-rooms`` rooms, disconnect,
   ``--missed`` messages are published to every room, every client reconnects
   and resubscribes all its rooms in one frame with ``since``. Prints the
   time until every client has every missed message, the server's CPU
   seconds over that window, and checks each client got exactly its messages.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import orjson

from rtserver.bench.procstat import cpu_seconds, descendants
from rtserver.bus.room_streams import HistorySettings, RoomStreams

__all__ = ["main"]

SECRET = "history-micro-secret-0123456789abcdef-0123"


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_memory(rooms: int, history: int, body: int) -> dict[str, float]:
    """RSS growth of ``rooms`` rooms with ``history`` messages of ``body`` bytes each."""
    settings = HistorySettings(history_size=history, history_ttl=3600.0,
                               history_max_bytes=max(history * body * 2, 1),
                               idempotency_window=60.0)
    gc.collect()
    before = _rss()
    streams = RoomStreams(settings, "bench")
    tail = b"x" * max(body - 10, 0)
    now = time.monotonic()
    n = 0
    for r in range(rooms):
        room = f"bench:room-{r}"
        for _ in range(history):
            n += 1
            # A distinct bytes object per message, as bodies arriving from workers are.
            streams.publish(room, b"%010d" % n + tail, None, now)
    gc.collect()
    grown = _rss() - before
    messages = rooms * history
    result = {"rooms": rooms, "history": history, "body_bytes": body,
              "rss_bytes": grown, "bytes_per_room": grown / rooms,
              "bytes_per_message": grown / messages,
              "overhead_per_message": grown / messages - body}
    del streams
    return result


def measure_publish_cost(history: int, body: int, publishes: int, rounds: int) -> dict[str, float]:
    """ns per publish with history on vs off, interleaved rounds (median of each)."""
    payload = b"x" * body
    on: list[float] = []
    off: list[float] = []
    for _ in range(rounds):
        for size, out in ((history, on), (0, off)):
            streams = RoomStreams(HistorySettings(
                history_size=size, history_ttl=3600.0, history_max_bytes=1 << 30,
                idempotency_window=60.0), "bench")
            now = time.monotonic()
            t0 = time.perf_counter_ns()
            for i in range(publishes):
                streams.publish("bench:hot", payload, None, now)
                if i & 1023 == 0:
                    now = time.monotonic()
            out.append((time.perf_counter_ns() - t0) / publishes)
    on_ns, off_ns = statistics.median(on), statistics.median(off)
    return {"history_on_ns": on_ns, "history_off_ns": off_ns, "ratio_on_off": on_ns / off_ns}


async def measure_recovery(clients: int, client_rooms: int, rooms: int, missed: int,
                           timeout: float) -> dict[str, Any]:
    """The recovery scenario against a real 2-worker server (see the module docstring)."""
    from websockets.asyncio.client import connect

    from rtserver.auth import mint_token

    env = dict(os.environ, RTSERVER_JWT_SECRET=SECRET, RTSERVER_PORT="0",
               RTSERVER_LOG_LEVEL="warning", RTSERVER_DOMAINS="")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtserver", "serve", "--workers", "2", "--log-level", "info"],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        port = _wait_listening(proc, 2, timeout)
        # Keep reading the server's log so a full pipe never blocks it.
        threading.Thread(target=_drain, args=(proc,), daemon=True).start()
        tok = mint_token(SECRET, str(uuid.uuid4()), ["publish"], ["bench:*"], 3600)
        url = f"ws://127.0.0.1:{port}/ws?token={tok}"
        room_names = [f"bench:rec-{i}" for i in range(rooms)]
        rng = random.Random(7)
        plan = [rng.sample(room_names, client_rooms) for _ in range(clients)]

        async def open_client() -> Any:
            ws = await connect(url, max_size=None, compression=None, ping_interval=None)
            await ws.recv()
            await ws.recv()
            return ws

        positions: dict[str, dict[str, int | str]] = {}
        first = []
        for chunk in range(0, clients, 100):
            first += await asyncio.gather(*(open_client() for _ in range(chunk, min(chunk + 100,
                                                                                   clients))))
        for ws, mine in zip(first, plan, strict=True):
            await ws.send(orjson.dumps({"type": "subscribe", "id": 1,
                                        "rooms": [{"room": r} for r in mine]}).decode())
        for ws, mine in zip(first, plan, strict=True):
            seen = 0
            while seen < len(mine):
                msg = orjson.loads(await ws.recv())
                if msg["type"] == "subscribed":
                    positions[msg["room"]] = {"epoch": msg["epoch"], "seq": msg["seq"]}
                    seen += 1
        await asyncio.gather(*(ws.close() for ws in first))
        pub = await open_client()
        for r in room_names:
            for i in range(missed):
                await pub.send(orjson.dumps({"type": "publish", "room": r, "data": i}).decode())
        acks = 0
        while acks < rooms * missed:
            if orjson.loads(await pub.recv())["type"] == "ack":
                acks += 1
        second = []
        for chunk in range(0, clients, 100):
            second += await asyncio.gather(*(open_client() for _ in range(chunk, min(chunk + 100,
                                                                                    clients))))
        pids = [proc.pid, *descendants(proc.pid)]
        cpu0 = sum(cpu_seconds(p) for p in pids)
        t0 = time.perf_counter()

        async def recover(ws: Any, mine: list[str]) -> tuple[int, int]:
            await ws.send(orjson.dumps({"type": "subscribe", "id": 2, "rooms": [
                {"room": r, "since": positions[r]} for r in mine]}).decode())
            replayed_msgs = 0
            recovered = 0
            while recovered < len(mine) or replayed_msgs < len(mine) * missed:
                msg = orjson.loads(await ws.recv())
                if msg["type"] == "subscribed":
                    assert msg.get("recovered") is True, msg
                    recovered += 1
                elif msg["type"] == "message":
                    replayed_msgs += 1
            return recovered, replayed_msgs

        results = await asyncio.wait_for(asyncio.gather(
            *(recover(ws, mine) for ws, mine in zip(second, plan, strict=True))), timeout)
        elapsed = time.perf_counter() - t0
        cpu = sum(cpu_seconds(p) for p in pids) - cpu0
        total = sum(m for _, m in results)
        await asyncio.gather(*(ws.close() for ws in (*second, pub)))
        return {"clients": clients, "rooms_per_client": client_rooms, "rooms": rooms,
                "missed_per_room": missed, "replayed_messages": total,
                "expected": clients * client_rooms * missed, "seconds": elapsed,
                "server_cpu_seconds": cpu,
                "server_cpu_us_per_replayed_message": cpu / total * 1e6 if total else None}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _drain(proc: subprocess.Popen[str]) -> None:
    assert proc.stderr is not None
    for _ in proc.stderr:
        pass


def _wait_listening(proc: subprocess.Popen[str], workers: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    seen = 0
    port = 0
    assert proc.stderr is not None
    while seen < workers:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("the server did not start. Required action: run "
                               "`rtserver serve --workers 2` by hand and read its log")
        line = proc.stderr.readline()
        if line.startswith("{"):
            rec = json.loads(line)
            if rec.get("event") == "listening":
                seen += 1
                port = int(rec["port"])
    return port


def main(argv: list[str] | None = None) -> int:
    """Run the three measurements and print them (and one JSON line)."""
    p = argparse.ArgumentParser(prog="python -m rtserver.bench.history_micro",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--rooms", type=int, default=10_000, help="rooms for the memory figure")
    p.add_argument("--history", type=int, default=100, help="messages of history per room")
    p.add_argument("--body", type=int, default=100, help="bytes per message body")
    p.add_argument("--publishes", type=int, default=200_000, help="publishes per cost round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved cost rounds")
    p.add_argument("--clients", type=int, default=1000, help="recovering clients")
    p.add_argument("--client-rooms", type=int, default=10, help="rooms per client")
    p.add_argument("--recover-rooms", type=int, default=100, help="distinct rooms")
    p.add_argument("--missed", type=int, default=20, help="messages missed per room")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per phase at most")
    args = p.parse_args(argv)
    if args.history > 10_000 or args.rooms * args.history > 5_000_000:
        p.error("at most 10,000 history messages and 5,000,000 messages in all")
    mem = measure_memory(args.rooms, args.history, args.body)
    print(f"memory: {mem['rooms']} rooms x {mem['history']} messages of {mem['body_bytes']} B: "
          f"RSS +{mem['rss_bytes'] / 2**20:.1f} MiB = {mem['bytes_per_room'] / 1024:.1f} KiB "
          f"per room, {mem['bytes_per_message']:.0f} B per message "
          f"({mem['overhead_per_message']:.0f} B over the body)")
    cost = measure_publish_cost(args.history, args.body, args.publishes, args.rounds)
    print(f"publish step: history on {cost['history_on_ns']:.0f} ns, off "
          f"{cost['history_off_ns']:.0f} ns, ratio {cost['ratio_on_off']:.2f}")
    rec = asyncio.run(measure_recovery(args.clients, args.client_rooms, args.recover_rooms,
                                       args.missed, args.timeout))
    ok = rec["replayed_messages"] == rec["expected"]
    print(f"recovery: {rec['clients']} clients x {rec['rooms_per_client']} rooms x "
          f"{rec['missed_per_room']} missed: {rec['replayed_messages']} messages replayed "
          f"({'all' if ok else 'NOT all: expected ' + str(rec['expected'])}) in "
          f"{rec['seconds']:.2f} s, server CPU {rec['server_cpu_seconds']:.2f} s "
          f"({rec['server_cpu_us_per_replayed_message']:.1f} us per replayed message)")
    print(orjson.dumps({"memory": mem, "publish_cost": cost, "recovery": rec}).decode())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
