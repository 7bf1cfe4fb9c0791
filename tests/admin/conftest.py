"""Fixtures of the admin console tests: the insurance domain servers (real PostgreSQL),
real WebSocket clients, HTTP with and without tokens, a private Redis."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from rtserver.backoff import BackoffPolicy
from rtserver.bus.redis_bus import RedisBus
from rtserver.bus.redis_settings import RedisBusSettings, default_node_id
from tests.domains.insurance.conftest import bus_hub, db_dsn, domain_server, ws
from tests.domains.insurance.test_alerts_outage import RedisProcess
from tests.store.pgutil import TempDatabase

__all__ = ["bus_hub", "db_dsn", "domain_server", "get", "redis_bus", "ws"]


def _get(port: int, path: str, tok: str | None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {tok}"} if tok is not None else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def get(port: int, path: str, tok: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """``GET path`` (with ``Authorization: Bearer tok`` when given): status, headers, body."""
    return await asyncio.to_thread(_get, port, path, tok)


@pytest.fixture
def fresh_dsn() -> Iterator[str]:
    """A migrated database of its own: one cluster's alerts, nobody else's."""
    with TempDatabase(migrated=True) as dsn:
        yield dsn


@pytest.fixture
def redis_proc() -> Iterator[RedisProcess]:
    r = RedisProcess()
    r.start()
    try:
        yield r
    finally:
        r.stop()


def redis_bus(port: int, prefix: str, worker: int) -> RedisBus:
    """A Redis bus of worker ``worker`` of one cluster (``prefix``) on a private Redis."""
    return RedisBus(RedisBusSettings(
        url=f"redis://127.0.0.1:{port}/0", key_prefix=prefix,
        node_id=default_node_id(worker), history_size=10, history_ttl=300.0,
        history_max_bytes=1 << 20, idempotency_window=60.0, presence_ttl=30.0,
        presence_refresh_interval=10.0, request_timeout=1.0, connect_timeout=0.5,
        max_connections=4, publish_batch_max=16,
        reconnect=BackoffPolicy(initial_delay=0.05, max_delay=0.3, jitter=0.2)))


def new_prefix() -> str:
    return f"rtadm-{uuid.uuid4().hex[:8]}"
