"""After a policy close the session carries out nothing more and the error frame is
sent once: as a sans-I/O session and against a real server with a raw client that
ignores the close frame."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import uuid

import msgspec
import orjson

from conftest import SECRET, ServerFactory, make_config, token
from rtserver.auth import AccessPolicy, TokenVerifier, mint_token
from rtserver.config import load_config
from rtserver.metrics import REGISTRY
from rtserver.protocol.codec import Codec
from rtserver.protocol.session import CloseConnection, Fail, Session


def _session(max_errors: int) -> Session:
    config = load_config(env={}, flags={"jwt_secret": SECRET})
    limits = msgspec.structs.replace(config.limits, max_errors_per_minute=max_errors)
    return Session("c", Codec(), TokenVerifier(config.auth, SECRET),
                   AccessPolicy(config.namespaces, limits.max_room_name_length), limits, 0.0,
                   set(), {})


def test_session_silent_after_error_budget_close() -> None:
    s = _session(3)
    actions = [a for i in range(4) for a in s.on_frame('{"type":"nope"}', i * 0.01)]
    assert [a.code for a in actions if isinstance(a, Fail)].count("too_many_errors") == 1
    assert [a for a in actions if isinstance(a, CloseConnection)] == [
        CloseConnection(1008, "too many errors")]
    assert s.closed
    for frame in ('{"type":"nope"}', '{"type":"ping"}', b"\x00"):
        assert s.on_frame(frame, 1.0) == []


def test_session_silent_after_failed_auth() -> None:
    s = _session(30)
    actions = s.on_frame('{"type":"auth","token":"a.b.c"}', 0.0)
    assert isinstance(actions[-1], CloseConnection) and actions[-1].code == 4001
    tok = mint_token(SECRET, str(uuid.uuid4()), [], [], 60)
    assert s.on_frame(orjson.dumps({"type": "auth", "token": tok}).decode(), 0.1) == []


def _metric(name: str, label: str) -> float:
    total = 0.0
    for line in REGISTRY.render({}).splitlines():
        if line.startswith(name + "{") and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _masked_text(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126])
                            + struct.pack("!H", n))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def _read_frames(reader: asyncio.StreamReader) -> list[tuple[int, bytes]]:
    """Server frames (opcode, payload) until the close frame."""
    frames = []
    async with asyncio.timeout(10):
        while True:
            b0, b1 = await reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await reader.readexactly(8))
            payload = await reader.readexactly(n)
            frames.append((b0 & 0x0F, payload))
            if b0 & 0x0F == 0x8:
                return frames


async def test_client_ignoring_the_close_frame_publishes_nothing(
        make_server: ServerFactory) -> None:
    server = await make_server(make_config(limits={"max_errors_per_minute": 5},
                                           server={"close_timeout": 0.5}))
    tok = token(perms=["publish"], rooms=["bench:*"])
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /ws?token={tok} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    publishes = _metric("rtserver_messages_in_total", 'type="publish"')
    budget_closes = _metric("rtserver_errors_total", 'code="too_many_errors"')
    # Everything in one write: the budget is spent on the 6th bad frame, and the
    # client goes on publishing without reading the close frame.
    burst = [_masked_text(b'{"type":"nope"}') for _ in range(6)]
    burst += [_masked_text(b'{"type":"publish","room":"bench:r","data":1}') for _ in range(50)]
    writer.write(b"".join(burst))
    await writer.drain()
    frames = await _read_frames(reader)
    errors = [orjson.loads(p) for op, p in frames if op == 0x1]
    codes = [e["code"] for e in errors if e["type"] == "error"]
    assert codes.count("too_many_errors") == 1
    assert frames[-1][0] == 0x8 and struct.unpack("!H", frames[-1][1][:2])[0] == 1008
    assert not [e for e in errors if e["type"] == "ack"]
    # The server drops the TCP connection after close_timeout; then its read loop has
    # ended and every frame it read went through the session.
    async with asyncio.timeout(10):
        while await reader.read(65536):
            pass
        while server.node.hub.connections:
            await asyncio.sleep(0.01)
    writer.close()
    assert _metric("rtserver_messages_in_total", 'type="publish"') == publishes
    assert _metric("rtserver_errors_total", 'code="too_many_errors"') == budget_closes + 1
