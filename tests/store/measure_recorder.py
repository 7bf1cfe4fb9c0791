"""Measure the connection recorder (not a test): ``python -m tests.store.measure_recorder``.

1. Cost of the synchronous hot-path calls (record_connect + touch x3 +
   record_disconnect per connection) against a baseline of the same number
   of plain dict stores, in the same run.
2. Flush throughput of the batched upsert (one ``unnest`` statement per
   ``batch_max`` rows) against a baseline of ``executemany`` with the same
   upsert, row by row, in the same run, on a fresh database.

Prints the figures it measured; nothing here is asserted.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from rtserver.store import ConnectionRecorder
from rtserver.store.connections import UPSERT_CONNECTIONS
from rtserver.store.models import ConnectionRow
from tests.store.pgutil import create_database, drop_database, make_store, migrate

CONNECTIONS = 50_000
ROWS = 20_000
BATCH = 5_000


async def main() -> None:
    dsn = await create_database()
    try:
        await migrate(dsn)
        store = make_store(dsn, statement_timeout=60.0, command_timeout=60.0)
        await store.open()
        try:
            recorder = ConnectionRecorder(
                store, worker=0, flush_interval=3600.0, max_queued=CONNECTIONS * 2,
                batch_max=BATCH, retry_backoff_base=1.0, retry_backoff_max=1.0,
                on_state_change=None,
            )
            ids = [f"conn-{i}" for i in range(CONNECTIONS)]
            t0 = time.perf_counter()
            for cid in ids:
                recorder.record_connect(cid, user_id="u", admin_user_id=None,
                                        ip_address="127.0.0.1", user_agent="ua")
                recorder.touch(cid)
                recorder.touch(cid)
                recorder.touch(cid)
                recorder.record_disconnect(cid, close_code=1000, close_reason="bye")
            calls = time.perf_counter() - t0
            baseline: dict[str, tuple[float, int]] = {}
            t0 = time.perf_counter()
            for cid in ids:
                for _ in range(5):
                    baseline[cid] = (time.time(), 1)
            base = time.perf_counter() - t0
            per_call = calls / (CONNECTIONS * 5) * 1e9
            per_base = base / (CONNECTIONS * 5) * 1e9
            print(f"hot path: {per_call:.0f} ns per recorder call, baseline dict store "
                  f"{per_base:.0f} ns, ratio {per_call / per_base:.2f}x "
                  f"({CONNECTIONS} connections x 5 calls)")

            t0 = time.perf_counter()
            for cid in ids:
                recorder.touch(cid)
            touch = (time.perf_counter() - t0) / CONNECTIONS * 1e9
            t0 = time.perf_counter()
            for cid in ids:
                baseline[cid] = (time.time(), 1)
            touch_base = (time.perf_counter() - t0) / CONNECTIONS * 1e9
            print(f"touch alone: {touch:.0f} ns per call, baseline dict store "
                  f"{touch_base:.0f} ns, ratio {touch / touch_base:.2f}x")

            throttled = ConnectionRecorder(
                store, worker=0, flush_interval=3600.0, max_queued=CONNECTIONS * 2,
                batch_max=BATCH, retry_backoff_base=1.0, retry_backoff_max=1.0,
                on_state_change=None, activity_interval=60.0,
            )
            for cid in ids:
                throttled.touch(cid)
            t0 = time.perf_counter()
            for cid in ids:
                throttled.touch(cid)
            touch_throttled = (time.perf_counter() - t0) / CONNECTIONS * 1e9
            print(f"touch within activity_interval: {touch_throttled:.0f} ns per call, "
                  f"ratio to baseline {touch_throttled / touch_base:.2f}x")

            t0 = time.perf_counter()
            ok = await recorder.flush()
            flushed = time.perf_counter() - t0
            print(f"recorder flush: {CONNECTIONS} merged rows in {flushed:.2f} s "
                  f"({CONNECTIONS / flushed:.0f} rows/s, ok={ok}, batch_max={BATCH})")

            now = datetime.now(UTC)
            rows = [ConnectionRow(connection_id=f"b-{i}", worker=1, user_id="u",
                                  ip_address="10.0.0.1", connected_at=now, last_activity=now)
                    for i in range(ROWS)]
            t0 = time.perf_counter()
            for start in range(0, ROWS, BATCH):
                await store.write_connection_rows(rows[start:start + BATCH])
            batched = time.perf_counter() - t0

            args = [(f"e-{i}", 1, "u", None, "10.0.0.1", None, now, None, now, None, None)
                    for i in range(ROWS)]
            single = UPSERT_CONNECTIONS.replace("$1::text[]", "ARRAY[$1::text]")
            for n, typ in enumerate(("int", "text", "text", "inet", "text", "timestamptz",
                                     "timestamptz", "timestamptz", "int", "text"), start=2):
                single = single.replace(f"${n}::{typ}[]", f"ARRAY[${n}::{typ}]")
            t0 = time.perf_counter()
            async with store.acquire("measure") as conn:
                await conn.executemany(single, args)
            many = time.perf_counter() - t0
            print(f"upsert {ROWS} rows: unnest batches {ROWS / batched:.0f} rows/s, "
                  f"executemany baseline {ROWS / many:.0f} rows/s, "
                  f"ratio {many / batched:.2f}x faster")
        finally:
            await store.close()
    finally:
        await drop_database(dsn)


if __name__ == "__main__":
    asyncio.run(main())
