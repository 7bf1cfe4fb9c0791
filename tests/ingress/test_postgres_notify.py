"""Backend ingress over LISTEN/NOTIFY on the shared PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import asyncpg
import msgspec
import pytest

from rtserver.domains.insurance.ingress_kinds import (
    INSURANCE_KINDS,
    AlertEvent,
    AnalyticsEvent,
    CalculationProgress,
    QuoteUpdate,
    UserNotify,
    send_user_notification,
)
from rtserver.ingress.payloads import (
    CORE_KINDS,
    NOTIFY_PAYLOAD_MAX,
    IngressDecoder,
    IngressInvalid,
    IngressMessage,
    IngressPayloadTooLarge,
    RoomPublish,
    encode_ingress,
)
from rtserver.ingress.postgres_notify import IngressListener, send_ingress
from rtserver.metrics import REGISTRY
from rtserver.store import Store
from tests.store import pgutil
from tests.store.pgutil import wait_until

pytestmark = pytest.mark.timeout(60)

#: The kinds a server with the insurance domain accepts.
DECODER = IngressDecoder((*CORE_KINDS, *INSURANCE_KINDS))
decode_ingress = DECODER.decode

Handler = Callable[[IngressMessage], object]

# Process-wide counters (tests run one at a time: deltas are this test's).
RECEIVED = REGISTRY.counter("rtserver_ingress_received_total", "")
HANDLER_ERRORS = REGISTRY.counter("rtserver_ingress_handler_errors_total", "")
DROPPED = REGISTRY.counter("rtserver_ingress_dropped_total", "")


def _channel() -> str:
    return f"test_{uuid.uuid4().hex[:16]}"


def _listener(dsn: str, channel: str, received: list[IngressMessage], *,
              elect_leader: bool = False, fail_on: str | None = None,
              states: list[tuple[bool, str | None]] | None = None) -> IngressListener:
    async def handler(message: IngressMessage) -> None:
        if fail_on is not None and isinstance(message, RoomPublish) and message.room == fail_on:
            raise RuntimeError("handler failure for the test")
        received.append(message)

    return IngressListener(
        dsn, channel, handler, decoder=DECODER, connect_timeout=5.0, keepalive_interval=1.0,
        reconnect_backoff_base=0.05, reconnect_backoff_max=0.5, max_pending=100,
        elect_leader=elect_leader, standby_retry_interval=0.1,
        on_state_change=None if states is None else (
            lambda ok, reason: states.append((ok, reason))),
    )


async def _listen_connections(dsn: str, channel: str) -> int:
    """How many LISTEN connections of ``channel``'s listeners are open (pg_stat_activity)."""
    conn = await asyncpg.connect(dsn)
    try:
        n = await conn.fetchval("SELECT count(*) FROM pg_stat_activity "
                                "WHERE application_name = $1", f"rtserver-ingress-{channel}")
    finally:
        await conn.close()
    return int(n)


async def _send(dsn: str, channel: str, payload: bytes) -> None:
    await send_ingress(dsn, channel, payload, DECODER, connect_timeout=5.0)


async def _notify_raw(dsn: str, channel: str, payload: str) -> None:
    """NOTIFY without client-side validation (what a buggy backend would do)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_notify($1, $2)", channel, payload)
    finally:
        await conn.close()


def test_decode_every_message_type() -> None:
    qid = uuid.uuid4()
    assert decode_ingress(
        b'{"type":"room_publish","room":"bench:r","data":{"a":[1,2]}}'
    ) == RoomPublish(room="bench:r", data=msgspec.Raw(b'{"a":[1,2]}'))
    message = RoomPublish(room="quote:1", data=msgspec.Raw(b'[1, {"x": null}]'))
    assert decode_ingress(encode_ingress(message)) == message
    notify = decode_ingress(b'{"type":"user_notify","user":"u","title":"t","body":"b"}')
    assert isinstance(notify, UserNotify) and bytes(notify.data) == b"{}"
    assert notify.notification_id is None
    update = decode_ingress(
        f'{{"type":"quote_update","quote_id":"{qid}","update_type":"premium",'
        f'"data":{{"total":1}},"version":3}}')
    assert isinstance(update, QuoteUpdate) and update.quote_id == qid and update.version == 3
    progress = decode_ingress(
        f'{{"type":"calculation_progress","quote_id":"{qid}","progress":0.5,"stage":"rating"}}')
    assert isinstance(progress, CalculationProgress) and progress.progress == 0.5
    event = decode_ingress(b'{"type":"analytics_event","event":"quote_converted"}')
    assert isinstance(event, AnalyticsEvent) and event.quote_id is None
    alert = decode_ingress(
        b'{"type":"alert","alert_type":"rating","severity":"critical","message":"down"}')
    assert isinstance(alert, AlertEvent) and alert.severity == "critical"
    for bad, reason in [
        (b"not json", "not JSON"),
        (b'{"type":"nope"}', "Invalid value 'nope'"),
        (b'{"type":"room_publish","room":"r"}', "missing required field `data`"),
        (b'{"type":"room_publish","room":"","data":1}', "length >= 1"),
        (b'{"type":"room_publish","room":"r","data":1,"extra":2}', "unknown field `extra`"),
        (f'{{"type":"calculation_progress","quote_id":"{qid}","progress":1.5,"stage":"s"}}'
         .encode(), "<= 1.0"),
        (b'{"type":"quote_update","quote_id":"x","update_type":"u","data":1,"version":1}',
         "Invalid UUID"),
        (b'{"type":"alert","alert_type":"a","severity":"urgent","message":"m"}',
         "Invalid enum value 'urgent'"),
        (b'{"type":"analytics_event","event":"quote_deleted"}', "Invalid enum value"),
    ]:
        with pytest.raises(IngressInvalid, match=r"invalid ingress payload|not JSON") as info:
            decode_ingress(bad)
        assert reason in str(info.value), (bad, str(info.value))
        assert info.value.kind == ("not_json" if bad == b"not json" else "schema")


async def test_notify_reaches_handler_in_order_and_invalid_is_counted(pg_dsn: str) -> None:
    channel = _channel()
    received: list[IngressMessage] = []
    states: list[tuple[bool, str | None]] = []
    listener = _listener(pg_dsn, channel, received, fail_on="boom:1", states=states)
    invalid_metric = REGISTRY.counter("rtserver_ingress_invalid_total", "", ("kind",))
    schema_before = invalid_metric.get("schema")
    json_before = invalid_metric.get("not_json")
    received_before, errors_before = RECEIVED.get(), HANDLER_ERRORS.get()
    dropped_before = DROPPED.get()
    listener.start()
    try:
        await listener.wait_listening(10)
        assert states == []  # listening, never reported unavailable
        for i in range(5):
            await _send(pg_dsn, channel,
                        b'{"type":"room_publish","room":"bench:r","data":%d}' % i)
        await _notify_raw(pg_dsn, channel, '{"type":"room_publish","room":"r"}')
        await _notify_raw(pg_dsn, channel, "{{{")
        await _send(pg_dsn, channel, b'{"type":"room_publish","room":"boom:1","data":0}')
        await _send(pg_dsn, channel,
                    b'{"type":"user_notify","user":"u1","title":"t","body":"b","data":{"x":1}}')
        await wait_until(lambda: len(received) + HANDLER_ERRORS.get() - errors_before == 7,
                         10, "all messages handled")
        assert RECEIVED.get() - received_before == 9
        assert HANDLER_ERRORS.get() - errors_before == 1 and len(received) == 6
        assert DROPPED.get() == dropped_before
        rooms = [bytes(m.data) for m in received if isinstance(m, RoomPublish)]
        assert rooms == [b"0", b"1", b"2", b"3", b"4"]
        assert isinstance(received[-1], UserNotify) and received[-1].user == "u1"
        assert invalid_metric.get("schema") == schema_before + 1
        assert invalid_metric.get("not_json") == json_before + 1
    finally:
        await listener.close()
    with pytest.raises(TimeoutError):  # closed: no longer listening
        await listener.wait_listening(0)


async def test_send_rejects_too_large_and_invalid(pg_dsn: str) -> None:
    channel = _channel()
    big = b'{"type":"room_publish","room":"r","data":"' + b"x" * NOTIFY_PAYLOAD_MAX + b'"}'
    with pytest.raises(IngressPayloadTooLarge, match="Required action"):
        await _send(pg_dsn, channel, big)
    with pytest.raises(IngressInvalid):
        await _send(pg_dsn, channel, b'{"type":"room_publish"}')
    with pytest.raises(ValueError, match="ingress channel"):
        await _send(pg_dsn, "Bad-Channel", b'{"type":"room_publish","room":"r","data":1}')
    # The largest accepted payload really goes through PostgreSQL.
    head = b'{"type":"room_publish","room":"r","data":"'
    exact = head + b"y" * (NOTIFY_PAYLOAD_MAX - len(head) - 2) + b'"}'
    assert len(exact) == NOTIFY_PAYLOAD_MAX
    received: list[IngressMessage] = []
    listener = _listener(pg_dsn, channel, received)
    listener.start()
    try:
        await listener.wait_listening(10)
        await _send(pg_dsn, channel, exact)
        await wait_until(lambda: len(received) == 1, 10, "largest payload")
    finally:
        await listener.close()


async def test_send_user_notification_is_stored_and_announced(pg_dsn: str,
                                                              store: Store) -> None:
    channel = _channel()
    user = f"user-{uuid.uuid4()}"
    received: list[IngressMessage] = []
    listener = _listener(pg_dsn, channel, received)
    listener.start()
    try:
        await listener.wait_listening(10)
        nid = await send_user_notification(pg_dsn, channel, user=user, title="Quote ready",
                                           body="Your quote is ready", data={"quote": 1},
                                           connect_timeout=5.0)
        await wait_until(lambda: len(received) == 1, 10, "notification announcement")
    finally:
        await listener.close()
    message = received[0]
    assert isinstance(message, UserNotify) and message.notification_id == nid
    assert message.user == user and msgspec.json.decode(message.data) == {"quote": 1}
    pending = await pgutil.pending_notifications(store, user, limit=10)
    assert [(n.id, n.title) for n in pending] == [(nid, "Quote ready")]
    stored = await store.get_notification(nid)
    assert stored is not None and stored.user_id == user and stored.body == "Your quote is ready"
    assert await store.get_notification(2**62) is None


async def test_exactly_one_leader_acts_and_standby_takes_over(pg_dsn: str) -> None:
    channel = _channel()
    got_a: list[IngressMessage] = []
    got_b: list[IngressMessage] = []
    a = _listener(pg_dsn, channel, got_a, elect_leader=True)
    a.start()
    await a.wait_listening(10)
    b_states: list[tuple[bool, str | None]] = []
    b = _listener(pg_dsn, channel, got_b, elect_leader=True, states=b_states)
    assert await _listen_connections(pg_dsn, channel) == 1
    b.start()
    try:
        # b connected while a holds the leader lock: b stands by (and reports no failure).
        async with asyncio.timeout(10):
            while await _listen_connections(pg_dsn, channel) != 2:
                await asyncio.sleep(0.02)
        assert b_states == []
        with pytest.raises(TimeoutError):
            await b.wait_listening(0)
        for i in range(3):
            await _send(pg_dsn, channel, b'{"type":"room_publish","room":"r","data":%d}' % i)
        await wait_until(lambda: len(got_a) == 3, 10, "leader receives")
        assert got_b == []
        await a.close()
        await b.wait_listening(10)
        await _send(pg_dsn, channel, b'{"type":"room_publish","room":"r","data":9}')
        await wait_until(lambda: len(got_b) == 1, 10, "new leader receives")
        assert len(got_a) == 3
    finally:
        await a.close()
        await b.close()


async def test_full_queue_drops_are_counted(pg_dsn: str) -> None:
    channel = _channel()
    release = asyncio.Event()
    handled: list[IngressMessage] = []

    async def slow_handler(message: IngressMessage) -> None:
        await release.wait()
        handled.append(message)

    listener = IngressListener(
        pg_dsn, channel, slow_handler, decoder=DECODER, connect_timeout=5.0,
        keepalive_interval=1.0,
        reconnect_backoff_base=0.05, reconnect_backoff_max=0.5, max_pending=2,
        elect_leader=False, standby_retry_interval=0.1, on_state_change=None,
    )
    received_before, dropped_before = RECEIVED.get(), DROPPED.get()
    listener.start()
    try:
        await listener.wait_listening(10)
        for i in range(5):
            await _send(pg_dsn, channel, b'{"type":"room_publish","room":"r","data":%d}' % i)
        # One message is in the handler, two wait in the queue, two are dropped.
        await wait_until(lambda: RECEIVED.get() - received_before == 5, 10, "all received")
        assert DROPPED.get() - dropped_before == 2
        release.set()
        await wait_until(lambda: len(handled) == 3, 10, "queued ones handled")
        assert [bytes(m.data) for m in handled if isinstance(m, RoomPublish)] == [
            b"0", b"1", b"2"]
    finally:
        await listener.close()
