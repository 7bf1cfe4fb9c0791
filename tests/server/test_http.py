"""/healthz and /metrics on the WebSocket port."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable

import orjson

from conftest import Client, token
from rtserver.server import RtServer

Connect = Callable[..., Awaitable[Client]]


def fetch(port: int, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


async def test_healthz(server: RtServer, connect_client: Connect) -> None:
    await connect_client(token())
    await connect_client(token())
    status, ctype, body = await asyncio.to_thread(fetch, server.port or 0, "/healthz")
    doc = orjson.loads(body)
    assert status == 200 and ctype == "application/json"
    assert doc["status"] == "ok" and doc["worker"] == 0 and doc["connections"] == 2
    assert doc["uptime"] >= 0 and doc["bus"]["kind"] == "local"


async def test_healthz_degraded_is_503(server: RtServer) -> None:
    server.node.set_degraded("database", True, "connection refused")
    status, _, body = await asyncio.to_thread(fetch, server.port or 0, "/healthz")
    doc = orjson.loads(body)
    assert status == 503 and doc["status"] == "degraded"
    assert doc["reasons"] == {"database": "connection refused"}
    server.node.set_degraded("database", False, None)
    status, _, _ = await asyncio.to_thread(fetch, server.port or 0, "/healthz")
    assert status == 200


def sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        metric, value = line.rsplit(" ", 1)
        if metric.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in metric for k, v in labels.items()):
            return float(value)
    raise AssertionError(f"{name} {labels} not in metrics")


async def test_metrics(server: RtServer, connect_client: Connect) -> None:
    port = server.port or 0
    before = (await asyncio.to_thread(fetch, port, "/metrics"))[2].decode()
    pub = await connect_client(token(perms=["publish"], rooms=["bench:*"]))
    sub = await connect_client(token(rooms=["bench:*"]))
    await sub.request({"type": "subscribe", "room": "bench:m"}, "subscribed")
    await pub.request({"type": "publish", "room": "bench:m", "data": 1}, "ack")
    await sub.recv_type("message")
    await pub.ws.send("{bad")
    await pub.recv_type("error")
    status, ctype, body = await asyncio.to_thread(fetch, port, "/metrics")
    text = body.decode()
    assert status == 200 and ctype.startswith("text/plain")
    assert sample(text, "rtserver_connections", state="authenticated") == 2
    assert sample(text, "rtserver_rooms") == 1
    assert sample(text, "rtserver_subscriptions") == 1

    def delta(name: str, **labels: str) -> float:
        try:
            old = sample(before, name, **labels)
        except AssertionError:
            old = 0.0
        return sample(text, name, **labels) - old

    assert delta("rtserver_messages_in_total", type="publish") == 1
    assert delta("rtserver_messages_out_total", type="ack") == 1
    assert delta("rtserver_errors_total", code="invalid_json") == 1
    assert delta("rtserver_fanout_deliveries_total") == 1
    assert 'worker="0"' in text


def fetch_auth(port: int, path: str, tok: str | None) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if tok is not None:
        req.add_header("Authorization", f"Bearer {tok}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_admin_connections(server: RtServer, connect_client: Connect) -> None:
    c = await connect_client(token(rooms=["bench:*"]))
    await c.request({"type": "subscribe", "room": "bench:adm"}, "subscribed")
    port = server.port or 0
    status, body = await asyncio.to_thread(fetch_auth, port, "/admin/connections", None)
    assert status == 401 and b"Required action" in body
    status, _ = await asyncio.to_thread(fetch_auth, port, "/admin/connections", token())
    assert status == 403
    status, body = await asyncio.to_thread(fetch_auth, port, "/admin/connections?state="
                                           "authenticated", token(perms=["admin:monitor"]))
    doc = orjson.loads(body)
    assert status == 200 and doc["total"] == 1
    [entry] = doc["connections"]
    assert entry["rooms"] == ["bench:adm"] and entry["state"] == "authenticated"
    assert entry["remote"].startswith("127.0.0.1:") and entry["last_activity"] > 0
