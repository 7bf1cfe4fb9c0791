"""The cluster document and ``admin_disconnect`` by connection id over every node: two real
``rtserver serve --redis`` (the insurance domain, a real PostgreSQL) sharing one Redis, and
one ``rtserver serve --workers 2`` on the embedded hub.

``/admin/cluster`` and the ``start_cluster`` pushes list both nodes' workers grouped by node;
a SIGSTOPped node is named in ``missing`` / ``missing_nodes``; a connection on the other node
or the other worker is closed by its id alone with the chosen code (the ``websockets``
client sees it), and every outcome is an ``admin_activity_logs`` row."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from conftest import Client, ServerProcess, token
from tests.admin.test_cluster_rooms import (
    REDIS_URL,
    client_on,
    http_get,
    node_id,
    serve_drained,
)
from tests.store.pgutil import TempDatabase

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
MONITOR = token(perms=["admin:monitor"])
ADMIN = "0e1d2c3b-4a59-4867-9a5b-4c3d2e1f0a98"
OPERATOR = ["admin:monitor", "admin:operate"]
#: A worker that does not answer is named after this many seconds.
COLLECT_TIMEOUT = 3.0
CONFIG = f"""
[workers]
collect_timeout = {COLLECT_TIMEOUT}
[admin]
refresh_seconds = 1.0
"""


@contextlib.contextmanager
def serving(args: list[str], config: Path, dsn: str, listening: int) -> Iterator[ServerProcess]:
    """``rtserver serve ARGS`` with the insurance domain and ``dsn`` (see serve_drained)."""
    with serve_drained([*args, "--database", dsn, "--config", str(config)], listening,
                       90.0) as proc:
        yield proc


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with TempDatabase(migrated=True) as url:
        yield url


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory,
          dsn: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two nodes (one worker each) sharing a Redis key prefix of their own."""
    prefix = f"rtnodes-{os.getpid()}-{id(tmp_path_factory)}"
    config = tmp_path_factory.mktemp("nodes") / "rtserver.toml"
    config.write_text(CONFIG + f'[bus]\nredis_key_prefix = "{prefix}"\n')
    try:
        with serving(["--redis", REDIS_URL], config, dsn, 1) as a, \
                serving(["--redis", REDIS_URL], config, dsn, 1) as b:
            yield a, b
    finally:
        async def clean() -> None:
            client = aioredis.from_url(REDIS_URL)
            keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
            if keys:
                await client.delete(*keys)
            await client.aclose()
        asyncio.run(clean())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, dsn: str) -> Iterator[ServerProcess]:
    config = tmp_path_factory.mktemp("hub") / "rtserver.toml"
    config.write_text(CONFIG)
    with serving(["--workers", "2"], config, dsn, 2) as proc:
        yield proc


@pytest.fixture
async def opened() -> Any:
    conns: list[Any] = []
    yield conns
    for ws in conns:
        await ws.close()


def node_of(proc: ServerProcess) -> str:
    """The node name of ``proc``'s workers: ``host:<supervisor pid>``."""
    return f"{socket.gethostname()}:{proc.proc.pid}"


async def audit(dsn: str, target: str) -> list[Any]:
    pg = await asyncpg.connect(dsn)
    try:
        return list(await pg.fetch(
            "SELECT admin_user_id, status, details FROM admin_activity_logs "
            "WHERE action = 'admin_disconnect' AND resource_id = $1 ORDER BY id", target))
    finally:
        await pg.close()


async def closed(client: Client) -> tuple[int | None, str | None]:
    async with asyncio.timeout(30):
        await client.ws.wait_closed()
    return client.ws.close_code, client.ws.close_reason


@contextlib.contextmanager
def stopped(proc: ServerProcess) -> Iterator[None]:
    """The whole node (supervisor and workers) SIGSTOPped, then continued."""
    pids = [proc.proc.pid, *(e["pid"] for e in proc.events("worker_started"))]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


async def test_redis_cluster_document_lists_every_node(
        nodes: tuple[ServerProcess, ServerProcess], opened: list[Any]) -> None:
    a, b = nodes
    ids = {node_id(a): node_of(a), node_id(b): node_of(b)}
    status, doc = await http_get(a.port, "/admin/cluster", MONITOR)
    assert status == 200, doc
    assert doc["scope"] == "cluster" and doc["missing"] == [] and doc["missing_nodes"] == []
    assert set(doc["workers"]) == set(ids) and doc["expected_workers"] == 2
    for wid, worker in doc["workers"].items():
        assert worker["node"] == ids[wid] and worker["worker"] == 0
        assert worker["uptime"] > 0 and worker["health"]["bus"]["kind"] == "redis"
        assert worker["restarts"] == 0
    assert doc["nodes"] == {ids[w]: {"workers": [w], "missing": [], "failed": []}
                            for w in ids}
    assert doc["answered_by_node"] == node_of(a)
    # The pushes carry the same document (one collection per interval on this worker).
    console, _ = await client_on(a.port, "0", token(ADMIN, ["admin:monitor"]), opened)
    await console.request({"type": "start_cluster", "id": 1}, "cluster_started")
    pushed = await console.recv_type("cluster_status", 30)
    assert set(pushed["workers"]) == set(ids) and set(pushed["nodes"]) == set(ids.values())


async def test_redis_a_stopped_node_is_named_missing(
        nodes: tuple[ServerProcess, ServerProcess], opened: list[Any], dsn: str) -> None:
    a, b = nodes
    operator, _ = await client_on(a.port, "0", token(ADMIN, OPERATOR), opened)
    ghost = "00000000-0000-4000-8000-00000000dead"
    with stopped(b):
        status, doc = await http_get(a.port, "/admin/cluster", MONITOR)
        error = await operator.request({"type": "admin_disconnect", "connection_id": ghost,
                                        "code": 4000, "reason": "gone?", "id": 2}, "error")
    assert status == 200, doc
    assert doc["missing"] == [node_id(b)] and set(doc["workers"]) == {node_id(a)}
    assert doc["missing_nodes"] == [node_of(b)]
    assert doc["nodes"][node_of(b)] == {"workers": [], "missing": [node_id(b)], "failed": []}
    assert doc["nodes"][node_of(a)]["workers"] == [node_id(a)]
    # Not found where asked, but one worker did not answer: said so, never "not found".
    assert error["code"] == "workers_not_answering" and node_id(b) in error["message"]
    [row] = await audit(dsn, ghost)
    assert row["status"] == "workers_not_answering"
    assert '"missing": ["' + node_id(b) in row["details"]


async def test_redis_disconnect_by_id_on_the_other_node(
        nodes: tuple[ServerProcess, ServerProcess], opened: list[Any], dsn: str) -> None:
    a, b = nodes
    victim, conn_id = await client_on(b.port, "0", token(), opened)
    operator, _ = await client_on(a.port, "0", token(ADMIN, OPERATOR), opened)
    done = await operator.request({"type": "admin_disconnect", "connection_id": conn_id,
                                   "code": 4321, "reason": "by id, other node", "id": 3},
                                  "admin_action_done")
    assert done["result"] == "closed" and done["target"] == conn_id
    assert node_id(b) in done["detail"] and node_of(b) in done["detail"]
    assert await closed(victim) == (4321, "by id, other node")
    [row] = await audit(dsn, conn_id)
    assert row["admin_user_id"] == ADMIN and row["status"] == "closed"
    assert f'"closed_by": "{node_id(b)}"' in row["details"]
    # Gone now: every worker answers without it.
    error = await operator.request({"type": "admin_disconnect", "connection_id": conn_id,
                                    "code": 4321, "reason": "again", "id": 4}, "error")
    assert error["code"] == "not_found" and "2 worker(s) answered" in error["message"]
    assert [r["status"] for r in await audit(dsn, conn_id)] == ["closed", "not_found"]


async def test_hub_disconnect_by_id_on_the_other_worker(
        cluster: ServerProcess, opened: list[Any], dsn: str) -> None:
    victim, conn_id = await client_on(cluster.port, "1", token(), opened)
    operator, _ = await client_on(cluster.port, "0", token(ADMIN, OPERATOR), opened)
    done = await operator.request({"type": "admin_disconnect", "connection_id": conn_id,
                                   "code": 1008, "reason": "by id, other worker", "id": 5},
                                  "admin_action_done")
    assert done["result"] == "closed" and "worker 1 of node" in done["detail"]
    assert await closed(victim) == (1008, "by id, other worker")
    [row] = await audit(dsn, conn_id)
    assert row["status"] == "closed" and '"closed_by": "1"' in row["details"]
    assert '"scope": "node"' in row["details"]
    status, doc = await http_get(cluster.port, "/admin/cluster", MONITOR)
    assert status == 200 and doc["scope"] == "node", doc
    assert {w["node"] for w in doc["workers"].values()} == {node_of(cluster)}
    assert doc["nodes"][node_of(cluster)]["workers"] == ["0", "1"]


async def test_redis_a_respawned_worker_counts_its_restart(
        nodes: tuple[ServerProcess, ServerProcess]) -> None:
    """Last of the Redis tests: node b's worker is replaced (a new node id)."""
    a, b = nodes
    old = node_id(b)
    [started] = b.events("worker_started")
    os.kill(started["pid"], signal.SIGKILL)
    async with asyncio.timeout(90):
        while len([e for e in b.events("bus_connected") if "node" in e]) < 2:
            await asyncio.sleep(0.2)  # the log lines are read by the drain thread
    [new] = [e["node"] for e in b.events("bus_connected") if "node" in e and e["node"] != old]
    status, doc = await http_get(a.port, "/admin/cluster", MONITOR)
    assert status == 200, doc
    assert doc["workers"][new]["node"] == node_of(b) and doc["workers"][new]["restarts"] == 1
    assert doc["workers"][node_id(a)]["restarts"] == 0
    # The killed worker never unregistered: named missing under its node until its entry
    # expires (bus.presence_ttl).
    assert doc["nodes"][node_of(b)] == {"workers": [new], "missing": [old], "failed": []}
    assert doc["missing"] == [old] and doc["missing_nodes"] == []
