"""The console's cluster pushes (``start_cluster``): the /admin/cluster document over the
WebSocket every admin.refresh_seconds, one collection per interval per worker however many
consoles watch, stopped when nobody watches, refused without admin:monitor."""

from __future__ import annotations

from typing import Any

from conftest import make_config, token
from rtserver.cluster_feed import COLLECTIONS, PUSHES
from tests.domains.insurance.helpers import wait_until

MONITOR = ["admin:monitor"]


async def _config_server(make_server: Any) -> Any:
    return await make_server(make_config(admin={"refresh_seconds": 0.2}), domains=[])


async def test_one_collection_for_many_watchers(make_server: Any, connect_client: Any) -> None:
    server = await _config_server(make_server)
    watchers = [await connect_client(token(perms=MONITOR), srv=server) for _ in range(3)]
    before_collections = COLLECTIONS.get("ok")
    before_pushes = PUSHES.get()
    for i, w in enumerate(watchers):
        started = await w.request({"type": "start_cluster", "id": i}, "cluster_started")
        assert started == {"type": "cluster_started", "interval": 0.2, "id": i}
    received = []
    for w in watchers:
        docs = [await w.recv_type("cluster_status") for _ in range(4)]
        received.append(len(docs))
        doc = docs[-1]
        assert doc["answered_by"] == 0 and doc["missing"] == []
        worker = doc["workers"]["0"]
        assert worker["health"]["status"] == "ok" and "latency" in worker
        assert set(worker["delivery_latency"]) == {"buckets", "count", "sum"}
    collections = COLLECTIONS.get("ok") - before_collections
    pushes = PUSHES.get() - before_pushes
    # Every watcher got 4 pushes from about 4 collections, not 3 x 4: the document is
    # collected once per interval and the same bytes go to every watcher.
    assert pushes >= sum(received)
    assert 4 <= collections <= 4 + 2, collections
    # Nobody watching: the collection task stops.
    for w in watchers[:2]:
        stopped = await w.request({"type": "stop_cluster", "id": "s"}, "cluster_stopped")
        assert stopped["was_running"] is True
    assert server.cluster_feed._task is not None
    await watchers[2].ws.close()
    await wait_until(lambda: server.cluster_feed._task is None and not server.cluster_feed.watchers,
                     "the feed stops when its last watcher closes")
    again = await watchers[0].request({"type": "stop_cluster"}, "cluster_stopped")
    assert again["was_running"] is False


async def test_refused_without_admin_monitor(make_server: Any, connect_client: Any) -> None:
    server = await _config_server(make_server)
    c = await connect_client(token(perms=["publish"]), srv=server)
    error = await c.request({"type": "start_cluster", "id": 7}, "error")
    assert error["code"] == "forbidden" and error["id"] == 7
    assert "admin:monitor" in error["action"]
    assert server.cluster_feed._task is None and not server.cluster_feed.watchers


async def test_cluster_route_is_the_same_document(make_server: Any,
                                                  connect_client: Any) -> None:
    """GET /admin/cluster stays for scripts: the same document as the pushes."""
    from tests.admin.conftest import get

    server = await _config_server(make_server)
    c = await connect_client(token(perms=MONITOR), srv=server)
    await c.request({"type": "start_cluster"}, "cluster_started")
    pushed = await c.recv_type("cluster_status")
    import orjson

    status, _, body = await get(server.port, "/admin/cluster", token(perms=MONITOR))
    doc = orjson.loads(body)
    assert status == 200
    assert set(doc) | {"type"} == set(pushed)
    assert set(doc["workers"]["0"]) == set(pushed["workers"]["0"])
