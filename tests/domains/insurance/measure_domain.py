"""Measure the domain channels (not a test).

Run: ``PYTHONPATH=tests python -m tests.domains.insurance.measure_domain``

1. ``quote_edit`` round trip (edit -> ack, the row written with one guarded
   statement, field_update fanned out to a second editor) against a baseline of
   ``ping`` -> ``pong`` round trips on the same connection, in the same run.
2. Analytics: N viewers of one (dashboard, filters) for K intervals; prints the
   queries run (counter) against the viewers x intervals a per-viewer design
   would run, and the quotes dashboard query time over ROWS quotes.

Prints the figures it measured; nothing here is asserted.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import UTC, datetime

import msgspec
import orjson
from websockets.asyncio.client import connect

from conftest import SECRET, make_config, token
from rtserver.domains.insurance.analytics import QUERIES
from rtserver.server import RtServer
from tests.domains.insurance.conftest import SETTINGS
from tests.store import pgutil
from tests.store.pgutil import create_database, drop_database, make_store, migrate

EDITS = 1000
VIEWERS = 50
INTERVALS = 8
ROWS = 20_000


def pct(values: list[float], p: float) -> float:
    data = sorted(values)
    return data[min(len(data) - 1, int(p * len(data)))] * 1000.0


async def main() -> None:
    dsn = await create_database()
    try:
        await migrate(dsn)
        store = make_store(dsn)
        await store.open()
        # The per-connection rate limit would throttle the sequential round trips.
        config = make_config(limits={"rate_limit_per_second": 1e6, "rate_limit_burst": 10**6})
        config = msgspec.structs.replace(
            config, domain=msgspec.structs.replace(SETTINGS, analytics_interval=0.5))
        server = RtServer(config, jwt_secret=SECRET, store=store)
        await server.start()
        try:
            await measure_edits(server)
            await measure_analytics(server)
        finally:
            await server.stop(1001, "measure over")
            await store.close()
    finally:
        await drop_database(dsn)


async def measure_edits(server: RtServer) -> None:
    store = server.node.store
    assert store is not None
    quote = await pgutil.insert_quote(store, customer_id=None, state="CA", status="draft",
                                      total_premium=None, fields={}, created_at=None)
    tok = token(perms=["quote:read", "quote:write"], rooms=[f"quote:{quote.id}"])
    url = f"ws://127.0.0.1:{server.port}/ws?token={tok}"
    async with connect(url, compression=None) as a, connect(url, compression=None) as b:
        for ws in (a, b):
            await ws.recv()
            await ws.recv()
            await ws.send(orjson.dumps({"type": "quote_subscribe",
                                        "quote_id": str(quote.id)}).decode())
            while orjson.loads(await ws.recv())["type"] != "quote_state":
                pass
        pings: list[float] = []
        for _ in range(EDITS):
            t0 = time.perf_counter()
            await a.send('{"type":"ping"}')
            while orjson.loads(await a.recv())["type"] != "pong":
                pass
            pings.append(time.perf_counter() - t0)
        edits: list[float] = []
        version = 1
        for i in range(EDITS):
            t0 = time.perf_counter()
            await a.send(orjson.dumps({"type": "quote_edit", "quote_id": str(quote.id),
                                       "field": "vehicle_value", "value": i,
                                       "base_version": version}).decode())
            while True:
                msg = orjson.loads(await a.recv())
                if msg["type"] == "ack":
                    version = msg["version"]
                    break
                if msg["type"] == "error":
                    raise RuntimeError(msg)
            edits.append(time.perf_counter() - t0)
        got = 0
        while got < EDITS:
            if orjson.loads(await b.recv())["type"] == "field_update":
                got += 1
    print(f"quote_edit round trip over {EDITS} edits: p50 {pct(edits, 0.5):.3f} ms, "
          f"p99 {pct(edits, 0.99):.3f} ms, mean {statistics.mean(edits) * 1000:.3f} ms")
    print(f"ping baseline, same connection:  p50 {pct(pings, 0.5):.3f} ms, "
          f"p99 {pct(pings, 0.99):.3f} ms")
    print(f"ratio edit/ping p50: {pct(edits, 0.5) / pct(pings, 0.5):.1f}x; the second editor "
          f"got {got} field_update frames")


async def measure_analytics(server: RtServer) -> None:
    store = server.node.store
    assert store is not None
    now = datetime.now(UTC)
    async with store.acquire("measure_seed") as conn:
        await conn.execute(
            "INSERT INTO quotes (state, status, total_premium, created_at) "
            "SELECT (ARRAY['CA','NY','TX','WA','OR'])[1 + g % 5], "
            "(ARRAY['draft','quoted','converted'])[1 + g % 3], 100 + g % 900, "
            "$1::timestamptz - (g % 86400) * interval '1 second' FROM generate_series(1, $2) g",
            now, ROWS)
    t0 = time.perf_counter()
    for _ in range(10):
        await store.quotes_dashboard(hours=24, state=None, top_states=10)
    query_ms = (time.perf_counter() - t0) / 10 * 1000.0
    print(f"quotes dashboard query over {ROWS} quotes (24 h): {query_ms:.2f} ms per query")
    tok = token(perms=["analytics:read"])
    url = f"ws://127.0.0.1:{server.port}/ws?token={tok}"
    viewers = [await connect(url, compression=None) for _ in range(VIEWERS)]
    try:
        for ws in viewers:
            await ws.recv()
            await ws.recv()
            await ws.send(orjson.dumps({"type": "start_analytics", "dashboard": "quotes",
                                        "filters": {"hours": 24}}).decode())
        before = QUERIES.get("quotes")

        async def updates(ws: object, n: int) -> int:
            got = 0
            while got < n:
                msg = orjson.loads(await ws.recv())  # type: ignore[attr-defined]
                if msg["type"] == "analytics_update":
                    got += 1
            return got

        counts = await asyncio.gather(*(updates(ws, INTERVALS) for ws in viewers))
        queries = QUERIES.get("quotes") - before
    finally:
        for ws in viewers:
            await ws.close()
    print(f"{VIEWERS} viewers x {INTERVALS} intervals: {sum(counts)} analytics_update frames "
          f"delivered, {queries:.0f} queries run (a query per viewer would be "
          f"{VIEWERS * INTERVALS}); ratio {VIEWERS * INTERVALS / max(queries, 1):.0f}x fewer")



if __name__ == "__main__":
    asyncio.run(main())
