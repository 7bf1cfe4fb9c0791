"""``rtserver serve --domains ''``: the real-time core alone, no domain package imported.

Real server processes (``python -m rtserver serve``), real websockets clients:
rooms, publish, presence, health and metrics work with zero domains, domain
messages are unknown types, and a third-party domain loads by ``module:Class``.
"""

from __future__ import annotations

import asyncio
import os
import urllib.request
import uuid
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import connect

from conftest import SECRET, Client, ServerProcess
from rtserver.auth import mint_token

ROOT = Path(__file__).resolve().parents[2]


def _token(perms: list[str], rooms: list[str]) -> str:
    return mint_token(SECRET, str(uuid.uuid4()), perms, rooms, 600)


async def _client(port: int, tok: str) -> Client:
    c = Client(await connect(f"ws://127.0.0.1:{port}/ws?token={tok}"))
    assert (await c.recv())["type"] == "connection"
    assert (await c.recv())["type"] == "authenticated"
    return c


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_core_alone_rooms_publish_presence_health_metrics() -> None:
    proc = ServerProcess(["--domains", ""])
    try:
        port = await asyncio.to_thread(proc.wait_listening)
        # A namespace with presence and room events (core namespace rules, no domain).
        tok = _token(["quote:read", "quote:write"], ["quote:*"])
        a, b = await _client(port, tok), await _client(port, tok)
        for c in (a, b):
            sub = await c.request({"type": "subscribe", "room": "quote:core", "id": 1},
                                  "subscribed")
            assert sub["room"] == "quote:core"
        await a.send({"type": "publish", "room": "quote:core", "data": {"n": 1}, "id": 2})
        got = await b.recv_type("message")
        assert got["data"] == {"n": 1} and got["seq"] >= 1
        assert (await a.recv_type("message"))["seq"] == got["seq"]
        assert (await a.recv_type("ack"))["seq"] == got["seq"]
        presence = await a.request({"type": "presence", "room": "quote:core", "id": 3},
                                   "presence")
        assert presence["count"] == 2
        # A domain message type is not part of the core's union.
        err = await a.request({"type": "quote_subscribe", "quote_id": str(uuid.uuid4()),
                               "id": 4}, "error")
        assert err["code"] == "unknown_type", err
        status, body = await asyncio.to_thread(_get, port, "/healthz")
        assert status == 200 and orjson.loads(body)["status"] == "ok"
        status, body = await asyncio.to_thread(_get, port, "/metrics")
        assert status == 200
        text = body.decode()
        assert "rtserver_publications_total" in text
        # No domain module was imported: none of its metrics exist.
        assert "rtserver_analytics_queries_total" not in text
        assert "rtserver_alerts_raised_total" not in text
        status, _ = await asyncio.to_thread(_get, port, "/admin/health")
        assert status == 404
        await a.ws.close()
        await b.ws.close()
    finally:
        proc.stop()
    assert not proc.events("domain_started")


async def test_example_domain_loads_by_module_and_class() -> None:
    """examples/domains/chat.py (shown in docs/architecture.md) as a real plugin."""
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = ServerProcess(["--domains", "examples.domains.chat:ChatDomain"], env=env)
    try:
        port = await asyncio.to_thread(proc.wait_listening)
        tok = _token(["publish"], ["bench:*"])
        a, b = await _client(port, tok), await _client(port, tok)
        for c in (a, b):
            await c.request({"type": "subscribe", "room": "bench:chat", "id": 1}, "subscribed")
            greeting = await c.recv_type("chat_said")
            assert greeting["text"] == "welcome to bench:chat"
        await a.send({"type": "chat_say", "room": "bench:chat", "text": "hello", "id": 2})
        said = await b.recv_type("chat_said")
        assert said["text"] == "hello" and said["user"] is not None
        assert (await a.recv_type("chat_said"))["text"] == "hello"
        err = await a.request({"type": "chat_say", "room": "bench:other", "text": "x", "id": 3},
                              "error")
        assert err["code"] == "not_subscribed"
        await a.ws.close()
        await b.ws.close()
    finally:
        proc.stop()
    assert [e["domain"] for e in proc.events("domain_started")] == ["chat"]


def test_unknown_domain_refused_at_start() -> None:
    proc = ServerProcess(["--domains", "nosuch.module:Thing"])
    try:
        with pytest.raises(AssertionError, match="did not start"):
            proc.wait_listening(timeout=20)
        assert proc.proc.wait(20) == 2
    finally:
        proc.stop()


def test_architecture_doc_shows_the_example_domain() -> None:
    """The example in docs/architecture.md is the tested file, not a copy that drifts."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    code = (ROOT / "examples" / "domains" / "chat.py").read_text()
    body = code[code.index("class Say"):]
    assert body.strip() in doc
