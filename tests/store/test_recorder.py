"""ConnectionRecorder against the shared PostgreSQL (healthy database)."""

from __future__ import annotations

import uuid

import pytest

from rtserver.metrics import REGISTRY
from rtserver.store import ConnectionRecorder, Store
from tests.store import pgutil
from tests.store.pgutil import wait_until

pytestmark = pytest.mark.timeout(60)

# Rows the recorders of this process upserted (tests run one at a time: deltas are this test's).
WRITTEN = REGISTRY.counter("rtserver_connection_records_written_total", "")


def _recorder(store: Store, **overrides: object) -> ConnectionRecorder:
    settings: dict[str, object] = {
        "worker": 2, "flush_interval": 0.05, "max_queued": 1000, "batch_max": 3,
        "retry_backoff_base": 0.05, "retry_backoff_max": 0.2, "on_state_change": None,
    }
    settings.update(overrides)
    return ConnectionRecorder(store, **settings)  # type: ignore[arg-type]


async def test_records_connect_activity_disconnect_in_batches(store: Store) -> None:
    states: list[tuple[bool, str | None]] = []
    recorder = _recorder(store, on_state_change=lambda ok, reason: states.append((ok, reason)))
    before = WRITTEN.get()
    recorder.start()
    prefix = uuid.uuid4().hex
    ids = [f"{prefix}-{i}" for i in range(7)]
    try:
        for i, cid in enumerate(ids):
            recorder.record_connect(cid, user_id=f"user-{i}", admin_user_id=None,
                                    ip_address="127.0.0.1", user_agent="pytest")
        recorder.record_authenticated(ids[0], user_id="late-user", admin_user_id="admin-1")
        recorder.touch(ids[1])
        recorder.record_disconnect(ids[2], close_code=1000, close_reason="bye")
        recorder.record_disconnect(ids[3], close_code=4001, close_reason="token expired")
        # 7 connections with batch_max 3: three statements in one flush.
        await wait_until(lambda: WRITTEN.get() - before >= 7, 10, "first flush")
        assert states == [] and recorder.lost_records == 0  # never degraded, nothing lost
        assert await pgutil.count_connections(store, prefix) == 7
        # Nothing is left queued: another flush writes no row.
        assert await recorder.flush() is True and WRITTEN.get() - before == 7

        first = await pgutil.get_connection(store, ids[0])
        assert first is not None
        assert (first.user_id, first.admin_user_id, first.worker) == ("late-user", "admin-1", 2)
        assert first.ip_address == "127.0.0.1" and first.user_agent == "pytest"
        assert first.connected_at is not None and first.disconnected_at is None

        touched = await pgutil.get_connection(store, ids[1])
        assert touched is not None and touched.last_activity is not None

        closed = await pgutil.get_connection(store, ids[3])
        assert closed is not None
        assert (closed.close_code, closed.close_reason) == (4001, "token expired")
        assert closed.disconnected_at is not None and closed.connected_at is not None
        assert closed.disconnected_at >= closed.connected_at

        # A later disconnect updates the existing row (upsert on connection_id).
        recorder.record_disconnect(ids[0], close_code=1001, close_reason="going away")
        await wait_until(lambda: WRITTEN.get() - before >= 8, 10, "second flush")
        later = await pgutil.get_connection(store, ids[0])
        assert later is not None and later.close_code == 1001
        assert later.connected_at == first.connected_at and later.user_id == "late-user"
    finally:
        report = await recorder.close()
    assert report.lost == 0 and report.reason is None
    # Closed: a later event is not queued but counted as lost.
    recorder.touch(ids[4])
    assert recorder.lost_records == 1


async def test_overflow_is_counted_never_silent(store: Store) -> None:
    recorder = _recorder(store, max_queued=3, flush_interval=60.0)
    recorder.start()
    prefix = uuid.uuid4().hex
    before = WRITTEN.get()
    try:
        for i in range(5):
            recorder.record_connect(f"{prefix}-{i}", user_id=None, admin_user_id=None,
                                    ip_address=None, user_agent=None)
        # Events for an already-queued connection merge into its row: no loss.
        recorder.touch(f"{prefix}-0")
        recorder.record_disconnect(f"{prefix}-1", close_code=1000, close_reason="")
        assert recorder.lost_records == 2
        assert await recorder.flush() is True
        # Exactly the three queued rows were written.
        assert WRITTEN.get() - before == 3
        assert await pgutil.count_connections(store, prefix) == 3
        assert await pgutil.get_connection(store, f"{prefix}-3") is None
        row = await pgutil.get_connection(store, f"{prefix}-1")
        assert row is not None and row.close_code == 1000
    finally:
        report = await recorder.close()
    assert report.lost == 0
    assert recorder.lost_records == 2


async def test_invalid_ip_is_rejected_at_the_call(store: Store) -> None:
    recorder = _recorder(store)
    before = WRITTEN.get()
    with pytest.raises(ValueError, match="Required action"):
        recorder.record_connect("x", user_id=None, admin_user_id=None,
                                ip_address="not-an-ip", user_agent=None)
    # Nothing was queued: a flush writes no row.
    assert await recorder.flush() is True
    assert WRITTEN.get() == before and recorder.lost_records == 0


async def test_rejected_row_is_isolated_and_counted(store: Store) -> None:
    states: list[tuple[bool, str | None]] = []
    recorder = _recorder(store, flush_interval=60.0,
                         on_state_change=lambda ok, reason: states.append((ok, reason)))
    recorder.start()
    prefix = uuid.uuid4().hex
    try:
        recorder.record_connect(f"{prefix}-ok", user_id="u", admin_user_id=None,
                                ip_address=None, user_agent=None)
        # A close code outside int4 is a data error the database rejects.
        recorder.record_disconnect(f"{prefix}-bad", close_code=2**40, close_reason="x")
        assert await recorder.flush() is True
        assert recorder.lost_records == 1
        assert await pgutil.get_connection(store, f"{prefix}-ok") is not None
        assert await pgutil.get_connection(store, f"{prefix}-bad") is None
        assert states == []  # a rejected row is not an outage: never degraded
    finally:
        await recorder.close()


async def test_activity_interval_throttles_touches(store: Store) -> None:
    recorder = _recorder(store, flush_interval=60.0, activity_interval=3600.0)
    recorder.start()
    cid = f"{uuid.uuid4().hex}-busy"
    try:
        recorder.record_connect(cid, user_id="u", admin_user_id=None, ip_address=None,
                                user_agent=None)
        assert await recorder.flush() is True
        row = await pgutil.get_connection(store, cid)
        assert row is not None and row.last_activity == row.connected_at
        for _ in range(100):
            recorder.touch(cid)
        before = WRITTEN.get()
        assert await recorder.flush() is True
        assert WRITTEN.get() == before  # within the interval: nothing to write
        recorder.record_disconnect(cid, close_code=1000, close_reason="done")
        assert await recorder.flush() is True
        assert WRITTEN.get() == before + 1
        row = await pgutil.get_connection(store, cid)
        assert row is not None and row.close_code == 1000
        assert row.last_activity == row.disconnected_at
    finally:
        await recorder.close()
    with pytest.raises(ValueError, match="record_activity_interval"):
        _recorder(store, activity_interval=0.0)
