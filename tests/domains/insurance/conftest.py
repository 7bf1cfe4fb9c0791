"""Fixtures of the domain handler tests: real servers with the domain handlers, a real,
freshly migrated PostgreSQL database, real WebSocket clients.

* ``db_dsn`` (session): a migrated database for the handler tests (dropped at the end).
* ``domain_server``: factory ``await domain_server(store=True|False, **settings)`` -> RtServer
  with the insurance domain plugin enabled (stopped afterwards).
* ``ws``: factory ``await ws(server, token)`` -> Client (welcome and authenticated consumed).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import msgspec
import pytest
from websockets.asyncio.client import ClientConnection, connect

from conftest import SECRET, Client, make_config
from rtserver.backoff import BackoffPolicy
from rtserver.bus.embedded_client import EmbeddedBus
from rtserver.bus.embedded_server import EmbeddedBusServer
from rtserver.bus.embedded_settings import EmbeddedBusServerSettings, EmbeddedBusSettings
from rtserver.bus.room_streams import HistorySettings
from rtserver.domain_settings import DomainSettings
from rtserver.server import RtServer
from rtserver.store import Store
from tests.store.pgutil import TempDatabase, make_store

HISTORY = HistorySettings(history_size=100, history_ttl=300.0, history_max_bytes=1 << 20,
                          idempotency_window=60.0)
SETTINGS = DomainSettings(
    analytics_interval=0.25,
    analytics_top_states=5,
    analytics_max_streams=16,
    monitoring_min_interval=0.05,
    monitoring_max_interval=60.0,
    user_activity_interval=0.1,
    user_activity_limit=50,
    performance_interval=0.1,
    latency_samples=256,
    loop_lag_interval=0.1,
    alerts_list_limit=100,
    alert_pending_max=10,
    slow_consumer_alert_threshold=3,
    slow_consumer_alert_window=5.0,
    edit_max_string_length=20,
    editable_fields={"driver_name": "string", "vehicle_value": "number",
                     "driver_count": "integer", "garaged": "boolean", "start_date": "date"},
)

DomainServerFactory = Callable[..., Awaitable[RtServer]]
WsFactory = Callable[..., Awaitable[Client]]


@pytest.fixture(scope="session")
def db_dsn() -> Iterator[str]:
    with TempDatabase(migrated=True) as dsn:
        yield dsn


@pytest.fixture
async def domain_server(db_dsn: str) -> AsyncIterator[DomainServerFactory]:
    started: list[tuple[RtServer, Store | None]] = []

    async def factory(*, store: bool = True, dsn: str | None = None, bus: Any = None,
                      worker_id: int = 0, config: dict[str, dict[str, Any]] | None = None,
                      **settings: Any) -> RtServer:
        st: Store | None = None
        if store:
            st = make_store(dsn or db_dsn)
            await st.open()
        cfg = make_config(**(config or {}))
        cfg = msgspec.structs.replace(cfg, domain=msgspec.structs.replace(SETTINGS, **settings))
        server = RtServer(cfg, jwt_secret=SECRET, store=st, bus=bus,
                          worker_id=worker_id)
        await server.start()  # also the domain plugins and /admin/health
        started.append((server, st))
        return server

    yield factory
    for server, st in started:
        await server.stop(1001, "test over")  # also the domain plugins
        if st is not None:
            await st.close()


@pytest.fixture
async def ws() -> AsyncIterator[WsFactory]:
    clients: list[ClientConnection] = []

    async def factory(server: RtServer, tok: str) -> Client:
        conn = await connect(f"ws://127.0.0.1:{server.port}/ws?token={tok}", max_size=None,
                             compression=None)
        clients.append(conn)
        client = Client(conn)
        assert (await client.recv())["type"] == "connection"
        auth = await client.recv()
        assert auth["type"] == "authenticated", auth
        return client

    yield factory
    for conn in clients:
        await conn.close()


@pytest.fixture
async def bus_hub() -> AsyncIterator[Callable[[int], EmbeddedBus]]:
    """An embedded bus hub (the supervisor's) in this process; yields ``bus_for(worker)``.

    Request it before ``domain_server`` so the servers stop before the hub closes.
    """
    runtime = tempfile.mkdtemp(prefix="rth")
    socket_path = f"{runtime}/bus.sock"
    hub = EmbeddedBusServer(EmbeddedBusServerSettings(socket_path=socket_path, expected_workers=2,
                             max_worker_buffer=64 * 1024 * 1024, collect_timeout=2.0,
                             history=HISTORY))
    await hub.start()

    def bus_for(worker: int) -> EmbeddedBus:
        return EmbeddedBus(EmbeddedBusSettings(
            socket_path=socket_path, worker_id=worker, request_timeout=5.0, connect_timeout=2.0,
            reconnect=BackoffPolicy(initial_delay=0.05, max_delay=0.3, jitter=0.2)))

    yield bus_for
    await hub.close()
    shutil.rmtree(runtime, ignore_errors=True)
