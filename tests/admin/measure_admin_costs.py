"""Measure what the admin console's room and connection figures cost the server (not a
test): ``python -m tests.admin.measure_admin_costs [rates|memory]`` (both by default).

1. Messages/s per room: ``RoomRates.count`` (called once per publication of a room with
   local members) against a baseline loop calling a no-op with the same arguments and the
   same ``perf_counter()``, in the same run, over 1,000 rooms.
2. State history per connection: tracemalloc over 2,000 real WebSocket connections of an
   in-process server, counting the allocations of the lines that record transitions
   (the tuples in ``rtserver/connection.py``, the timestamps in
   ``rtserver/hub.py``; freelist reuse is not traced), the same structure by
   ``sys.getsizeof``, and the whole process's traced memory per connection.

Prints the figures it measured; nothing here is asserted.
"""

from __future__ import annotations

import asyncio
import linecache
import sys
import time
import tracemalloc
from pathlib import Path

from websockets.asyncio.client import connect

from conftest import SECRET, make_config, token
from rtserver.room_rates import RoomRates
from rtserver.server import RtServer

CALLS = 2_000_000
ROOMS = [f"bench:r{i}" for i in range(1000)]
CONNECTIONS = 2_000
ROOT = Path(__file__).resolve().parents[2] / "rtserver"


def _noop(room: str, now: float) -> None:
    return None


def measure_rates() -> None:
    rates = RoomRates(10)
    perf = time.perf_counter
    rooms = ROOMS
    n = len(rooms)
    for label, fn in (("baseline (no-op)", _noop), ("RoomRates.count", rates.count),
                      ("baseline (no-op)", _noop), ("RoomRates.count", rates.count)):
        t0 = perf()
        for i in range(CALLS):
            fn(rooms[i % n], perf())
        elapsed = perf() - t0
        print(f"{label:18s} {elapsed / CALLS * 1e9:7.1f} ns per publication "
              f"({CALLS:,} calls, {n} rooms)")


def _recording_lines() -> set[tuple[str, int]]:
    """(file, line) of every line that allocates state history."""
    wanted = {str(ROOT / "connection.py"): ("items = (*self.transitions,",),
              str(ROOT / "hub.py"): ("conn.record_state(",)}
    out = set()
    for path, needles in wanted.items():
        for lineno, text in enumerate(Path(path).read_text().splitlines(), 1):
            if any(n in text for n in needles):
                out.add((path, lineno))
    return out


async def measure_state_history() -> None:
    server = RtServer(make_config(), jwt_secret=SECRET, domains=[])
    await server.start()
    tok = token(rooms=["bench:*"])
    clients = []
    try:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(CONNECTIONS):
            ws = await connect(f"ws://127.0.0.1:{server.port}/ws?token={tok}",
                               compression=None)
            await ws.recv()
            await ws.recv()
            clients.append(ws)
        snap = tracemalloc.take_snapshot()
        total = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        lines = _recording_lines()
        history = sum(s.size for s in snap.statistics("lineno")
                      if (s.traceback[0].filename, s.traceback[0].lineno) in lines)
        conns = list(server.node.hub.connections.values())
        states = [len(c.transitions) // 4 for c in conns]
        # The same structure by size: the tuple (its slot is 8 bytes) and its timestamps;
        # states, reasons and None are shared objects.
        sized = sum(sys.getsizeof(c.transitions) + sum(
            sys.getsizeof(v) for v in c.transitions[1::4]) for c in conns) / len(conns)
        print(f"{CONNECTIONS} connections, {sum(states) / len(states):.1f} transitions each: "
              f"state history {history / CONNECTIONS:.1f} bytes per connection; everything "
              f"traced in the process (server and clients) {total / CONNECTIONS:,.0f} bytes "
              "per connection")
        print(f"by sys.getsizeof: tuple + timestamps {sized:.1f} bytes per connection "
              "(+ 8 bytes for its slot)")
        for path, lineno in sorted(lines):
            text = linecache.getline(path, lineno).strip()
            print(f"  counted: {Path(path).name}:{lineno} {text}")
    finally:
        for ws in clients:
            await ws.close()
        await server.stop(1001, "measured")


if __name__ == "__main__":
    which = sys.argv[1:] or ["rates", "memory"]
    if "rates" in which:
        measure_rates()
    if "memory" in which:
        asyncio.run(measure_state_history())
