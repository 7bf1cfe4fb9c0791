"""A real server on an ephemeral port with real websockets clients: welcome, auth, errors."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import Client, ServerFactory, make_config, token, ws_url
from rtserver.server import RtServer

Connect = Callable[..., Awaitable[Client]]


async def closed_code(client: Client, timeout: float = 5.0) -> int | None:
    """Read until the server closes; return its close code."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await client.ws.recv()
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None


async def test_welcome_frame(server: RtServer, connect_client: Connect) -> None:
    ws = await connect(ws_url(server, token()))
    client = Client(ws)
    welcome = await client.recv()
    assert welcome["type"] == "connection" and welcome["status"] == "connected"
    assert welcome["worker"] == 0
    uuid.UUID(welcome["connection_id"])
    assert welcome["server_time"].endswith("Z")
    auth = await client.recv()
    assert auth["type"] == "authenticated" and auth["anonymous"] is False
    await ws.close()


async def test_connection_ids_unique(server: RtServer, connect_client: Connect) -> None:
    ids = set()
    for _ in range(5):
        ws = await connect(ws_url(server, token()))
        ids.add((await Client(ws).recv())["connection_id"])
        await ws.close()
    assert len(ids) == 5


@pytest.mark.parametrize(("make", "code"), [
    (lambda: token(ttl=-5), "token_expired"),
    (lambda: jwt.encode({"sub": str(uuid.uuid4()), "exp": int(time.time()) + 60},
                        "forged-secret-0123456789abcdef-0123456789", algorithm="HS256"),
     "token_invalid"),
    (lambda: jwt.encode({"sub": str(uuid.uuid4()), "exp": int(time.time()) + 60}, None,
                        algorithm="none"), "token_invalid"),
    (lambda: "not-a-token", "token_invalid"),
])
async def test_bad_url_token_closes_4001(server: RtServer, make: Any, code: str) -> None:
    ws = await connect(ws_url(server, make()))
    client = Client(ws)
    assert (await client.recv())["type"] == "connection"
    err = await client.recv()
    assert err["type"] == "error" and err["code"] == code
    assert err["action"].startswith("Required action")
    assert await closed_code(client) == 4001


async def test_first_frame_auth(server: RtServer) -> None:
    ws = await connect(ws_url(server))
    client = Client(ws)
    await client.recv()
    reply = await client.request({"type": "auth", "token": token(perms=["publish"]), "id": 1},
                                 "authenticated")
    assert reply["permissions"] == ["publish"] and reply["id"] == 1
    assert (await client.request({"type": "ping"}, "pong"))["type"] == "pong"
    await ws.close()


async def test_first_frame_auth_failure(server: RtServer) -> None:
    ws = await connect(ws_url(server))
    client = Client(ws)
    await client.recv()
    await client.send({"type": "auth", "token": token(ttl=-1)})
    assert (await client.recv())["code"] == "token_expired"
    assert await closed_code(client) == 4001


async def test_missing_token_auth_timeout(make_server: ServerFactory) -> None:
    server = await make_server(make_config(auth={"auth_timeout": 0.3}))
    ws = await connect(ws_url(server))
    client = Client(ws)
    await client.recv()
    # messages other than auth/ping are refused while waiting
    await client.send({"type": "subscribe", "room": "bench:a"})
    assert (await client.recv())["code"] == "auth_required"
    err = await client.recv()
    assert err["code"] == "auth_timeout"
    assert await closed_code(client) == 4001


async def test_anonymous_only_when_allowed(make_server: ServerFactory) -> None:
    server = await make_server(make_config(auth={"allow_anonymous": True}))
    ws = await connect(ws_url(server))
    client = Client(ws)
    await client.recv()
    auth = await client.recv()
    assert auth["anonymous"] is True and auth["permissions"] == [] and auth["user"] is None
    err = await client.request({"type": "subscribe", "room": "bench:a"}, "error")
    assert err["code"] == "forbidden"
    # an anonymous connection may still authenticate
    ok = await client.request({"type": "auth", "token": token(rooms=["bench:*"])},
                              "authenticated")
    assert ok["anonymous"] is False
    assert (await client.request({"type": "subscribe", "room": "bench:a"},
                                 "subscribed"))["room"] == "bench:a"
    await ws.close()


async def test_ping_pong(connect_client: Connect) -> None:
    client = await connect_client(token())
    pong = await client.request({"type": "ping", "id": "p1"}, "pong")
    assert pong["id"] == "p1"


@pytest.mark.parametrize(("frame", "code"), [
    ("{not json", "invalid_json"),
    ('{"type":"launch"}', "unknown_type"),
    ('{"type":"unsubscribe"}', "missing_field"),
    ('{"type":"subscribe","room":42}', "invalid_field"),
    ('{"type":"subscribe","room":"bench:a","colour":"red"}', "unknown_field"),
    ('{"type":"subscribe","room":"bench:' + "k" * 300 + '"}', "invalid_room"),
    ('{"type":"subscribe","room":"bench:sp ace"}', "invalid_room"),
    ('{"type":"subscribe","room":"mars:a"}', "unknown_namespace"),
])
async def test_bad_input_over_the_wire(connect_client: Connect, frame: str, code: str) -> None:
    client = await connect_client(token(rooms=["bench:*"]))
    await client.ws.send(frame)
    err = await client.recv_type("error")
    assert err["code"] == code
    assert err["action"].startswith("Required action")
    # the connection survives
    assert (await client.request({"type": "ping"}, "pong"))["type"] == "pong"


async def test_binary_frame(connect_client: Connect) -> None:
    client = await connect_client(token())
    await client.ws.send(b'{"type":"ping"}')
    assert (await client.recv_type("error"))["code"] == "binary_not_supported"


async def test_frame_too_large_closes_1009(server: RtServer, connect_client: Connect) -> None:
    client = await connect_client(token())
    await client.ws.send('{"type":"ping","id":"' + "x" * (server.config.server.max_message_bytes
                                                          + 10) + '"}')
    assert await closed_code(client) == 1009


async def test_too_many_errors_closes_1008(make_server: ServerFactory,
                                           connect_client: Connect) -> None:
    server = await make_server(make_config(limits={"max_errors_per_minute": 3}))
    client = await connect_client(token(), srv=server)
    for _ in range(4):
        await client.ws.send("{bad")
    codes = [(await client.recv_type("error"))["code"] for _ in range(5)]
    assert codes == ["invalid_json"] * 4 + ["too_many_errors"]
    assert await closed_code(client) == 1008


async def test_rate_limited(make_server: ServerFactory, connect_client: Connect) -> None:
    server = await make_server(make_config(limits={"rate_limit_per_second": 1.0,
                                                   "rate_limit_burst": 2}))
    client = await connect_client(token(), srv=server)
    for i in range(3):
        await client.send({"type": "ping", "id": i})
    replies = [await client.recv() for _ in range(3)]
    assert [r["type"] for r in replies] == ["pong", "pong", "error"]
    assert replies[2]["code"] == "rate_limited" and "retry after" in replies[2]["action"]


async def test_idle_timeout_closes_4008(make_server: ServerFactory,
                                        connect_client: Connect) -> None:
    server = await make_server(make_config(heartbeat={"interval": 0.2, "idle_timeout": 0.5}))
    client = await connect_client(token(), srv=server)
    kinds: list[str] = []
    try:
        async with asyncio.timeout(5):
            while True:
                kinds.append((await client.recv(heartbeats=True))["type"])
    except ConnectionClosed as exc:
        assert exc.rcvd is not None and exc.rcvd.code == 4008
    assert "heartbeat" in kinds and kinds[-1] == "error"


async def test_pings_keep_connection_alive(make_server: ServerFactory,
                                           connect_client: Connect) -> None:
    # Pings every 0.05 s keep a connection with a 1 s idle timeout open for longer than
    # that timeout: only a stall of about a second of this process could close it, not
    # the scheduling jitter that a 0.1 s ping against a 0.4 s timeout was exposed to.
    idle = 1.0
    server = await make_server(make_config(heartbeat={"interval": 0.2, "idle_timeout": idle}))
    client = await connect_client(token(), srv=server)
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < 1.5 * idle:
        await client.send({"type": "ping", "id": sent})
        assert (await client.recv_type("pong"))["id"] == sent
        sent += 1
        await asyncio.sleep(0.05)
    await client.send({"type": "ping", "id": "last"})
    assert (await client.recv_type("pong"))["id"] == "last"
    assert time.monotonic() - start > idle and sent >= 10


async def test_unknown_http_path_404(server: RtServer) -> None:
    import urllib.error
    import urllib.request

    def get() -> int:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/nope", timeout=5)
        except urllib.error.HTTPError as exc:
            return exc.code
        return 200

    assert await asyncio.to_thread(get) == 404


async def test_unanswered_ws_pings_close_1011(make_server: ServerFactory) -> None:
    """A peer that never answers WebSocket pings is closed with 1011 (the sweep's pings)."""
    import base64
    import os
    import struct

    server = await make_server(make_config(heartbeat={"interval": 0.1, "idle_timeout": 30.0,
                                                      "ws_ping_timeout": 0.3}))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /ws?token={token()} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    await writer.drain()
    assert b"101" in await reader.readuntil(b"\r\n\r\n")
    opcodes = []
    close_code = None
    async with asyncio.timeout(10):
        while close_code is None:
            head = await reader.readexactly(2)
            length = head[1] & 0x7F
            if length == 126:
                length = struct.unpack("!H", await reader.readexactly(2))[0]
            payload = await reader.readexactly(length)
            opcodes.append(head[0] & 0x0F)
            if head[0] & 0x0F == 0x8:
                close_code = struct.unpack("!H", payload[:2])[0]
    writer.close()
    assert 0x9 in opcodes  # pings were sent (and never answered)
    assert close_code == 1011


async def test_answered_ws_pings_keep_connection(make_server: ServerFactory,
                                                 connect_client: Connect) -> None:
    # Wait for answered pings, seen on the server (RtConnection.last_pong), spanning more
    # than ws_ping_timeout, instead of sleeping for a second against a 0.3 s timeout that a
    # stall of the shared event loop could exceed.
    timeout = 1.0
    server = await make_server(make_config(heartbeat={"interval": 0.1, "idle_timeout": 30.0,
                                                      "ws_ping_timeout": timeout}))
    client = await connect_client(token(), srv=server)  # the websockets client answers pings
    (conn,) = server.node.hub.connections.values()
    pongs: list[float] = []
    async with asyncio.timeout(20):
        while len(pongs) < 2 or pongs[-1] - pongs[0] < 1.5 * timeout:
            last = conn.ws.last_pong
            if last and (not pongs or last > pongs[-1]):
                pongs.append(last)
            await asyncio.sleep(0.02)
    assert len(pongs) >= 5  # pings every heartbeat interval, each answered
    assert (await client.request({"type": "ping", "id": "alive"}, "pong"))["id"] == "alive"


async def test_server_bug_closes_1011_and_is_counted(server: RtServer,
                                                     connect_client: Connect,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Failure injection: a bug below the read loop closes the connection with 1011."""
    from rtserver.metrics import REGISTRY

    errors = REGISTRY.counter("rtserver_errors_total", "", ("code",))
    before = errors.get("internal_error")
    client = await connect_client(token())

    async def broken(conn: object, frame: object) -> None:
        raise RuntimeError("injected bug")

    monkeypatch.setattr(server.node, "handle_frame", broken)
    await client.send({"type": "ping"})
    assert await closed_code(client) == 1011
    assert errors.get("internal_error") - before == 1
