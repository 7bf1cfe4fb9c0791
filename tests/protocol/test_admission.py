"""Admission before the upgrade: origins (403) and connection limits (503/429 with
Retry-After), as pure logic and against a real server with real clients."""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Callable
from typing import Any

import msgspec
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from conftest import ServerFactory, make_config, token, ws_url
from rtserver import jsonlog
from rtserver.admission import Admission, OriginPolicy
from rtserver.config import ConfigError, load_config
from rtserver.hub import ConnState
from rtserver.metrics import REGISTRY

# ------------------------------------------------------------------ pure logic


@pytest.mark.parametrize(("patterns", "origin", "allowed"), [
    ([], "https://app.example.com", False),
    (["https://app.example.com"], "https://app.example.com", True),
    (["https://app.example.com"], "HTTPS://APP.EXAMPLE.COM", True),
    (["https://app.example.com"], "http://app.example.com", False),
    (["https://app.example.com"], "https://app.example.com:8443", False),
    (["https://app.example.com"], "https://app.example.com.evil.example", False),
    (["https://*.example.com"], "https://a.example.com", True),
    (["https://*.example.com"], "https://a.b.example.com", True),
    (["https://*.example.com"], "https://example.com", False),
    (["https://*.example.com"], "https://evil-example.com", False),
    (["https://*.example.com"], "https://a.example.com.evil.example", False),
    (["https://*.example.com"], "https://evil.example/x.example.com", False),
    (["https://*.example.com"], "http://a.example.com", False),
    (["https://*.example.com:8443"], "https://a.example.com:8443", True),
    (["https://app.example.com"], "null", False),
    (["null"], "null", True),
    (["*"], "https://anything.example", True),
    (["*"], "null", False),
])
def test_origin_policy(patterns: list[str], origin: str, allowed: bool) -> None:
    assert OriginPolicy(patterns).allows(origin) is allowed


@pytest.mark.parametrize("bad", ["app.example.com", "https://app.example.com/",
                                 "https://app.example.com/path", "https://a.*.example.com",
                                 "https://*example.com", "https://**.example.com"])
def test_malformed_origin_patterns_refuse_to_start(bad: str) -> None:
    with pytest.raises(ValueError):
        OriginPolicy([bad])
    config = load_config(env={}, flags={"jwt_secret": "x" * 32})
    with pytest.raises(ConfigError, match=r"server\.allowed_origins"):
        from rtserver.config import _validate

        _validate(msgspec.structs.replace(config, server=msgspec.structs.replace(
            config.server, allowed_origins=[bad])))


def test_star_warns() -> None:
    assert OriginPolicy(["*"]).warnings and not OriginPolicy(["https://a.example"]).warnings


def _admission(**server: Any) -> Admission:
    config = make_config(server=server)
    return Admission(config.server, 0.0)


def test_limits_pure() -> None:
    a = _admission(max_connections=3, max_connections_per_address=2, max_unauthenticated=5,
                   connect_rate_burst=100, admission_retry_after=7.0)
    assert a.check([], "10.0.0.1", 0.0, 0) is None
    assert a.check([], "10.0.0.1", 0.0, 0) is None
    r = a.check([], "10.0.0.1", 0.0, 0)
    assert r is not None and (r.status, r.reason, r.retry_after) == (429, "per_address", 7)
    assert a.check([], "10.0.0.2", 0.0, 0) is None
    r = a.check([], "10.0.0.3", 0.0, 0)
    assert r is not None and (r.status, r.reason) == (503, "max_connections")
    a.release("10.0.0.1")
    assert a.open == 2 and a.per_address("10.0.0.1") == 1
    r = a.check([], "10.0.0.3", 0.0, 5)
    assert r is not None and r.reason == "unauthenticated"
    with pytest.raises(RuntimeError):
        a.release("10.9.9.9")


def test_connect_rate_pure() -> None:
    a = _admission(connect_rate_per_second=2.0, connect_rate_burst=2)
    assert a.check([], "a", 0.0, 0) is None and a.check([], "b", 0.0, 0) is None
    r = a.check([], "c", 0.0, 0)
    assert r is not None and (r.status, r.reason, r.retry_after) == (503, "connect_rate", 1)
    assert a.check([], "c", 0.5, 0) is None  # one token refilled


# ------------------------------------------------------------------ real server


async def _refused(url: str, headers: list[tuple[str, str]] | None = None) -> Any:
    with pytest.raises(InvalidStatus) as info:
        await connect(url, additional_headers=headers)
    return info.value.response


async def _welcome(ws: ClientConnection) -> None:
    assert orjson.loads(await ws.recv())["type"] == "connection"


async def _wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


def _refused_count(reason: str) -> float:
    for line in REGISTRY.render({}).splitlines():
        if line.startswith("rtserver_handshakes_refused_total{") and f'reason="{reason}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_origins_against_server(make_server: ServerFactory) -> None:
    server = await make_server(make_config(server={
        "allowed_origins": ["https://app.example.com", "https://*.example.org"]}))
    url = ws_url(server)
    before = _refused_count("origin")
    for origin in ("https://app.example.com", "https://a.b.example.org"):
        async with connect(url, origin=origin) as ws:  # type: ignore[arg-type]
            await _welcome(ws)
    async with connect(url) as ws:  # no Origin: a non-browser client
        await _welcome(ws)
    for origin in ("https://evil.example", "https://example.org", "null",
                   "https://app.example.com.evil.example"):
        response = await _refused(url, [("Origin", origin)])
        assert response.status_code == 403
        body = orjson.loads(response.body)
        assert body["error"] == "origin" and body["action"].startswith("Required action")
    response = await _refused(url, [("Origin", "https://app.example.com"),
                                    ("Origin", "https://evil.example")])
    assert response.status_code == 403
    assert _refused_count("origin") == before + 5
    # Refused handshakes never took a slot; the admitted ones gave theirs back.
    await _wait_until(lambda: server.admission.open == 0)


async def test_default_admits_only_requests_without_origin(make_server: ServerFactory) -> None:
    server = await make_server()
    url = ws_url(server)
    assert (await _refused(url, [("Origin", "https://app.example.com")])).status_code == 403
    assert (await _refused(url, [("Origin", "null")])).status_code == 403
    async with connect(url) as ws:
        await _welcome(ws)


async def test_null_origin_only_when_listed(make_server: ServerFactory) -> None:
    server = await make_server(make_config(server={"allowed_origins": ["null"]}))
    async with connect(ws_url(server), additional_headers=[("Origin", "null")]) as ws:
        await _welcome(ws)


async def test_star_origin_warns_at_start(make_server: ServerFactory) -> None:
    out = io.StringIO()
    jsonlog.configure("info", stream=out)
    try:
        server = await make_server(make_config(server={"allowed_origins": ["*"]}))
    finally:
        jsonlog.configure("info", stream=sys.stderr)
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert any(r["event"] == "allowed_origins_any" and r["level"] == "warning" for r in lines)
    async with connect(ws_url(server), origin="https://any.example") as ws:  # type: ignore[arg-type]
        await _welcome(ws)


async def test_max_connections_per_worker(make_server: ServerFactory) -> None:
    server = await make_server(make_config(server={"max_connections": 2,
                                                   "admission_retry_after": 3.0}))
    url = ws_url(server, token())
    first = await connect(url)
    second = await connect(url)
    response = await _refused(url)
    assert response.status_code == 503 and response.headers["Retry-After"] == "3"
    assert orjson.loads(response.body)["error"] == "max_connections"
    await first.close()
    await _wait_until(lambda: server.admission.open == 1)
    third = await connect(url)
    await _welcome(third)
    await second.close()
    await third.close()


async def test_max_connections_per_address(make_server: ServerFactory) -> None:
    server = await make_server(make_config(server={"max_connections_per_address": 1}))
    url = ws_url(server, token())
    async with connect(url) as ws:
        await _welcome(ws)
        response = await _refused(url)
        assert response.status_code == 429 and int(response.headers["Retry-After"]) >= 1
        assert orjson.loads(response.body)["error"] == "per_address"


async def test_connect_rate_per_worker(make_server: ServerFactory) -> None:
    server = await make_server(make_config(server={"connect_rate_per_second": 0.01,
                                                   "connect_rate_burst": 2}))
    url = ws_url(server, token())
    async with connect(url) as a, connect(url) as b:
        await _welcome(a)
        await _welcome(b)
        response = await _refused(url)
        assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1
        assert orjson.loads(response.body)["error"] == "connect_rate"


async def test_max_unauthenticated(make_server: ServerFactory) -> None:
    server = await make_server(make_config(server={"max_unauthenticated": 1}))
    url = ws_url(server)
    async with connect(url) as pending:
        await _welcome(pending)
        await _wait_until(lambda: server.node.hub.state_counts[ConnState.CONNECTING] == 1)
        response = await _refused(url)
        assert response.status_code == 503 and "Retry-After" in response.headers
        assert orjson.loads(response.body)["error"] == "unauthenticated"
        # Authenticating frees the slot.
        await pending.send(orjson.dumps({"type": "auth", "token": token()}).decode())
        assert orjson.loads(await pending.recv())["type"] == "authenticated"
        async with connect(url) as other:
            await _welcome(other)


async def test_failed_handshake_releases_its_slot(make_server: ServerFactory) -> None:
    server = await make_server(make_config(server={"max_connections": 1}))
    # A plain HTTP request to the WebSocket path: admitted, then the upgrade fails.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    status = await reader.readline()
    assert b" 426 " in status or b" 400 " in status, status
    writer.close()
    await _wait_until(lambda: server.admission.open == 0)
    async with connect(ws_url(server, token())) as ws:
        await _welcome(ws)


async def test_dev_mode_admits_the_servers_own_pages_only(make_server: ServerFactory) -> None:
    server = await make_server(make_config(server={"dev": True}))
    url = ws_url(server, token())
    own = f"http://127.0.0.1:{server.port}"
    ws = await connect(url, additional_headers=[("Origin", own)])
    await _welcome(ws)
    await ws.close()
    assert (await _refused(url, [("Origin", "https://evil.example")])).status_code == 403
    assert (await _refused(url, [("Origin", f"http://evil.example:{server.port}")])
            ).status_code == 403
    # Without --dev the same origin needs server.allowed_origins.
    plain = await make_server()
    own_plain = f"http://127.0.0.1:{plain.port}"
    assert (await _refused(ws_url(plain, token()), [("Origin", own_plain)])).status_code == 403
