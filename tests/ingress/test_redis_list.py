"""The Redis ingress against real Redis: one ordered consumer, takeover, dead letters, retry.

The handlers are fakes (they record what they carry out); Redis, its lists,
the leader lock and the killed connection are real.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
import redis.asyncio as aioredis

from rtserver.bus.base import BusUnavailable
from rtserver.ingress.dispatch import IngressRejected
from rtserver.ingress.payloads import CORE_KINDS, IngressDecoder, IngressMessage, RoomPublish
from rtserver.ingress.redis_list import RedisIngress, ingress_keys
from rtserver.metrics import REGISTRY

URL = "redis://127.0.0.1:6379/0"
DECODER = IngressDecoder(CORE_KINDS)
Handler = Callable[[IngressMessage], Awaitable[None]]


def payload(room: str, n: int) -> bytes:
    return orjson.dumps({"type": "room_publish", "room": room, "data": {"n": n}})


def number(message: IngressMessage) -> int:
    assert isinstance(message, RoomPublish)
    return int(orjson.loads(bytes(message.data))["n"])


@pytest.fixture
async def redis_key() -> AsyncIterator[tuple[str, aioredis.Redis]]:
    key = f"rtserver:test-ingress:{uuid.uuid4().hex}"
    r = aioredis.from_url(URL)
    yield key, r
    await r.delete(key, *ingress_keys(key))
    await r.aclose()


def make(key: str, handler: Handler, *, lock_ttl: float = 0.6, backoff_base: float = 0.05,
         states: list[tuple[bool, str | None]] | None = None) -> RedisIngress:
    seen = states if states is not None else []
    return RedisIngress(URL, key, handler, decoder=DECODER, block_timeout=0.2,
                        lock_ttl=lock_ttl, backoff_base=backoff_base,
                        backoff_max=max(backoff_base, 0.2), jitter=0.0,
                        on_state_change=lambda ok, reason: seen.append((ok, reason)))


async def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``cond`` (state the consumers change) until it holds."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)


async def test_one_leader_in_order_and_takeover_after_killed_connection(
        redis_key: tuple[str, aioredis.Redis]) -> None:
    """Two consumers: one leads and handles every payload in order; its connection is
    killed while it is stuck in payload 3, the standby takes over after the lock TTL,
    handles payload 3 again (at-least-once) and the rest in order; nothing is lost."""
    key, r = redis_key
    a_seen: list[int] = []
    b_seen: list[int] = []
    stuck = asyncio.Event()
    release = asyncio.Event()

    async def handle_a(message: IngressMessage) -> None:
        n = number(message)
        a_seen.append(n)
        if n == 3:
            stuck.set()
            await release.wait()

    async def handle_b(message: IngressMessage) -> None:
        b_seen.append(number(message))

    # A reconnects only after 5 s: longer than the lock TTL, so B must take over.
    a = make(key, handle_a, backoff_base=5.0)
    a.start()
    await a.wait_leader(5.0)
    b = make(key, handle_b)
    b.start()
    try:
        await wait_until(lambda: b.role == "standby")
        for n in range(1, 9):
            await r.rpush(key, payload("bench:order", n))
        async with asyncio.timeout(5):
            await stuck.wait()
        assert a_seen == [1, 2, 3] and b_seen == []
        lock, processing, _ = ingress_keys(key)
        assert await r.lrange(processing, 0, -1) == [payload("bench:order", 3)]
        # Kill every connection of A (its client name carries its lock token).
        clients = await r.client_list()
        killed = [c["id"] for c in clients if c.get("name") == f"rtserver-ingress-{a.token}"]
        assert killed
        for client_id in killed:
            await r.client_kill_filter(_id=client_id)
        await b.wait_leader(5.0)
        await wait_until(lambda: len(b_seen) == 6)
        assert b_seen == [3, 4, 5, 6, 7, 8]
        assert await r.get(lock) == b.token.encode()
        # A finishes payload 3 late: it no longer holds the lock, so it changes nothing.
        release.set()
        await wait_until(lambda: a.role != "leader")
        assert a_seen == [1, 2, 3]
        assert await r.llen(key) == 0 and await r.llen(processing) == 0
    finally:
        await a.close()
        await b.close()
    # Closing the leader released the lock.
    assert await r.get(ingress_keys(key)[0]) is None


async def test_close_releases_lock_and_standby_takes_over(
        redis_key: tuple[str, aioredis.Redis]) -> None:
    key, r = redis_key
    seen: list[tuple[str, int]] = []

    def recorder(name: str) -> Handler:
        async def handle(message: IngressMessage) -> None:
            seen.append((name, number(message)))
        return handle

    # A long TTL: the takeover comes from the release, not from expiry.
    a = make(key, recorder("a"), lock_ttl=30.0)
    a.start()
    await a.wait_leader(5.0)
    b = make(key, recorder("b"), lock_ttl=0.6)
    b.start()
    try:
        await r.rpush(key, payload("bench:x", 1))
        await wait_until(lambda: len(seen) == 1)
        await a.close()
        await b.wait_leader(5.0)
        await r.rpush(key, payload("bench:x", 2))
        await wait_until(lambda: len(seen) == 2)
        assert seen == [("a", 1), ("b", 2)]
    finally:
        await b.close()


async def test_dead_letters_keep_the_payload_and_the_rest_goes_on(
        redis_key: tuple[str, aioredis.Redis]) -> None:
    key, r = redis_key
    dead = REGISTRY.counter("rtserver_redis_ingress_dead_letters_total", "", ("reason",))
    before = {reason: dead.get(reason) for reason in ("not_json", "schema", "no_handler",
                                                     "handler_error")}
    seen: list[int] = []

    async def handle(message: IngressMessage) -> None:
        n = number(message)
        if n == 2:
            raise IngressRejected("no_handler", "refused for the test")
        if n == 4:
            raise RuntimeError("a handler bug")
        seen.append(n)

    bad_json = b"{not json"
    bad_schema = b'{"type":"room_publish","room":"bench:d"}'
    pushed = [payload("bench:d", 1), bad_json, payload("bench:d", 2), bad_schema,
              payload("bench:d", 3), payload("bench:d", 4), payload("bench:d", 5)]
    await r.rpush(key, *pushed)
    consumer = make(key, handle)
    consumer.start()
    try:
        await wait_until(lambda: 5 in seen)
        assert seen == [1, 3, 5]
        _, processing, dead_key = ingress_keys(key)
        assert await r.lrange(dead_key, 0, -1) == [bad_json, payload("bench:d", 2), bad_schema,
                                                   payload("bench:d", 4)]
        assert await r.llen(processing) == 0 and await r.llen(key) == 0
        assert {reason: dead.get(reason) - before[reason] for reason in before} == {
            "not_json": 1, "schema": 1, "no_handler": 1, "handler_error": 1}
    finally:
        await consumer.close()


async def test_bus_down_payload_is_retried_in_order_never_dropped(
        redis_key: tuple[str, aioredis.Redis]) -> None:
    """The handler raises BusUnavailable the first two times for payload 1: it is retried
    (logged, counted, reported degraded then ok) and payload 2 waits behind it."""
    key, r = redis_key
    retries = REGISTRY.counter("rtserver_redis_ingress_retries_total", "", ("cause",))
    before = retries.get("bus")
    attempts: list[int] = []
    done: list[int] = []
    states: list[tuple[bool, str | None]] = []

    async def handle(message: IngressMessage) -> None:
        n = number(message)
        attempts.append(n)
        if n == 1 and attempts.count(1) <= 2:
            raise BusUnavailable("the bus is down (test)")
        done.append(n)

    await r.rpush(key, payload("bench:r", 1), payload("bench:r", 2))
    consumer = make(key, handle, states=states)
    consumer.start()
    try:
        await wait_until(lambda: done == [1, 2])
        assert attempts == [1, 1, 1, 2]
        assert retries.get("bus") - before == 2
        assert [ok for ok, _ in states] == [False, True]
        assert states[0][1] is not None and "bus unavailable" in states[0][1]
        _, processing, dead_key = ingress_keys(key)
        assert await r.llen(processing) == 0 and await r.llen(dead_key) == 0
    finally:
        await consumer.close()


async def test_payload_left_by_a_dead_leader_is_handled_first(
        redis_key: tuple[str, aioredis.Redis]) -> None:
    """What a dead leader left on the processing list is handled before the list, in order."""
    key, r = redis_key
    _, processing, _ = ingress_keys(key)
    await r.rpush(processing, payload("bench:p", 1), payload("bench:p", 2))
    await r.rpush(key, payload("bench:p", 3))
    seen: list[int] = []

    async def handle(message: IngressMessage) -> None:
        seen.append(number(message))

    consumer = make(key, handle)
    consumer.start()
    try:
        await wait_until(lambda: len(seen) == 3)
        assert seen == [1, 2, 3]
    finally:
        await consumer.close()
