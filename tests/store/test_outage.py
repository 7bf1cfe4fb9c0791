"""Database stopped mid-test: a private PostgreSQL instance is stopped and restarted.

Covers the recorder (degraded state, callback, records kept and flushed after
restart, overflow counted, shutdown report) and the ingress listener
(reconnect with backoff, state callback, NOTIFY received after recovery).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from rtserver.ingress.payloads import CORE_KINDS, IngressDecoder, IngressMessage, RoomPublish
from rtserver.ingress.postgres_notify import IngressListener, send_ingress
from rtserver.metrics import REGISTRY
from rtserver.store import (
    ConnectionRecorder,
    Store,
    StoreUnavailable,
)
from tests.store import pgutil
from tests.store.pgutil import (
    PgInstance,
    create_database,
    drop_database,
    make_store,
    migrate,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)

# Process-wide counters (tests run one at a time: deltas are this test's).
WRITTEN = REGISTRY.counter("rtserver_connection_records_written_total", "")
FLUSH_FAILURES = REGISTRY.counter("rtserver_connection_record_flush_failures_total", "")
DECODER = IngressDecoder(CORE_KINDS)
RECONNECTS = REGISTRY.counter("rtserver_ingress_reconnects_total", "")


@pytest.fixture
async def instance_dsn(pg_instance: PgInstance) -> AsyncIterator[str]:
    if not pg_instance.running:
        pg_instance.start()
    dsn = await create_database(pg_instance.admin_dsn)
    await migrate(dsn)
    try:
        yield dsn
    finally:
        if not pg_instance.running:
            pg_instance.start()
        await drop_database(dsn, pg_instance.admin_dsn)


async def test_recorder_survives_database_outage(pg_instance: PgInstance,
                                                 instance_dsn: str) -> None:
    store = make_store(instance_dsn, connect_timeout=2.0, pool_acquire_timeout=3.0)
    await store.open()
    states: list[tuple[bool, str | None]] = []
    recorder = ConnectionRecorder(
        store, worker=1, flush_interval=0.05, max_queued=6, batch_max=100,
        retry_backoff_base=0.05, retry_backoff_max=0.3,
        on_state_change=lambda ok, reason: states.append((ok, reason)),
    )
    written_before = WRITTEN.get()
    failures_before = FLUSH_FAILURES.get()
    recorder.start()
    try:
        for i in range(2):
            recorder.record_connect(f"before-{i}", user_id=f"u{i}", admin_user_id=None,
                                    ip_address="127.0.0.1", user_agent=None)
        await wait_until(lambda: WRITTEN.get() - written_before == 2, 10, "first write")

        pg_instance.stop()
        # Events keep being accepted while the database is down: the calls are
        # synchronous (they cannot wait for the database) and queue the rows.
        recorder.record_disconnect("before-0", close_code=1006, close_reason="abnormal")
        recorder.record_disconnect("before-1", close_code=1000, close_reason="normal")
        for i in range(3):
            recorder.record_connect(f"during-{i}", user_id="u", admin_user_id=None,
                                    ip_address="::1", user_agent="ua")
        # Pending or in a failing flush: kept (written after recovery, below).

        await wait_until(lambda: bool(states), 15, "degraded state")
        ok, reason = states[0]
        assert ok is False and reason is not None and "Required action" in reason
        assert recorder.lost_records == 0 and FLUSH_FAILURES.get() > failures_before
        assert WRITTEN.get() - written_before == 2
        with pytest.raises(StoreUnavailable):
            await store.ping()

        # Bounded: max_queued=6 pending rows (the 5 above and one more), the 7th
        # and 8th connections are lost (counted).
        for i in range(3):
            recorder.record_connect(f"overflow-{i}", user_id=None, admin_user_id=None,
                                    ip_address=None, user_agent=None)
        assert recorder.lost_records == 2

        pg_instance.start()
        await wait_until(lambda: len(states) == 2, 20, "recovery")
        assert states[-1] == (True, None)
        assert [ok for ok, _ in states] == [False, True]
        # All 6 queued rows were written after the 2 before the outage: 8 upserts of
        # 6 connections (before-0 and before-1 were written twice).
        await wait_until(lambda: WRITTEN.get() - written_before == 8, 10, "queued rows written")
        assert await pgutil.count_connections(store, "") == 6
        assert await recorder.flush() is True and WRITTEN.get() - written_before == 8

        row = await pgutil.get_connection(store, "before-0")
        assert row is not None and (row.close_code, row.close_reason) == (1006, "abnormal")
        row = await pgutil.get_connection(store, "during-2")
        assert row is not None and row.ip_address == "::1" and row.connected_at is not None
        assert await pgutil.get_connection(store, "overflow-0") is not None
        assert await pgutil.get_connection(store, "overflow-2") is None
    finally:
        report = await recorder.close()
        await store.close()
    assert report.lost == 0


async def test_close_while_down_reports_lost(pg_instance: PgInstance, instance_dsn: str) -> None:
    store = make_store(instance_dsn, connect_timeout=2.0, pool_acquire_timeout=3.0)
    await store.open()
    recorder = ConnectionRecorder(
        store, worker=1, flush_interval=30.0, max_queued=100, batch_max=100,
        retry_backoff_base=0.05, retry_backoff_max=0.3, on_state_change=None,
    )
    recorder.start()
    try:
        pg_instance.stop()
        recorder.record_connect("lost-0", user_id=None, admin_user_id=None,
                                ip_address=None, user_agent=None)
        recorder.record_connect("lost-1", user_id=None, admin_user_id=None,
                                ip_address=None, user_agent=None)
        report = await recorder.close()
        assert report.lost == 2 and report.flushed == 0
        assert report.reason is not None
        assert recorder.lost_records == 2
        # After close every event is counted as lost too.
        recorder.touch("late")
        assert recorder.lost_records == 3
    finally:
        pg_instance.start()
        await store.close()


async def test_ingress_reconnects_after_outage(pg_instance: PgInstance,
                                               instance_dsn: str) -> None:
    received: list[IngressMessage] = []
    states: list[tuple[bool, str | None]] = []

    async def handler(message: IngressMessage) -> None:
        received.append(message)

    listener = IngressListener(
        instance_dsn, "outage_test", handler, decoder=DECODER, connect_timeout=2.0,
        keepalive_interval=0.2,
        reconnect_backoff_base=0.05, reconnect_backoff_max=0.3, max_pending=100,
        elect_leader=True, standby_retry_interval=0.1,
        on_state_change=lambda ok, reason: states.append((ok, reason)),
    )
    reconnects_before = RECONNECTS.get()
    listener.start()
    try:
        await listener.wait_listening(10)
        await send_ingress(instance_dsn, "outage_test",
                           b'{"type":"room_publish","room":"a:b","data":1}', DECODER,
                           connect_timeout=5)
        await wait_until(lambda: len(received) == 1, 10, "first message")

        pg_instance.stop()
        await wait_until(lambda: bool(states), 15, "reconnecting")
        ok, reason = states[0]
        assert ok is False and reason is not None and "LISTEN connection failed" in reason
        # Several failed reconnect attempts with backoff.
        await wait_until(lambda: RECONNECTS.get() - reconnects_before >= 2, 15, "reconnects")

        pg_instance.start()
        await listener.wait_listening(20)
        assert states[-1] == (True, None)
        await send_ingress(instance_dsn, "outage_test",
                           b'{"type":"room_publish","room":"a:b","data":2}', DECODER,
                           connect_timeout=5)
        await wait_until(lambda: len(received) == 2, 10, "message after recovery")
        second = received[1]
        assert isinstance(second, RoomPublish) and bytes(second.data) == b"2"
    finally:
        await listener.close()
    with pytest.raises(TimeoutError):  # closed: no longer listening
        await listener.wait_listening(0)


async def test_store_unavailable_then_back(pg_instance: PgInstance, instance_dsn: str) -> None:
    store: Store = make_store(instance_dsn, connect_timeout=2.0, pool_acquire_timeout=3.0)
    await store.open()
    try:
        pg_instance.stop()
        with pytest.raises(StoreUnavailable, match="Required action"):
            await store.create_notification("u", "t", "b", {})
        pg_instance.start()
        note = await store.create_notification("u", "t", "b", {})
        assert [n.id for n in await pgutil.pending_notifications(store, "u", limit=5)] == [note.id]
    finally:
        await store.close()
