"""The connection layer (rtserver/ws_server.py) over a real server and real clients:
no task per idle connection, frames in order through the inbox with back-pressure,
fragmented and invalid text messages, handshake and close bounds, the shared logger."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import sys
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from conftest import Client, ServerFactory, make_config, token, ws_url
from rtserver import jsonlog
from rtserver import server as server_module
from rtserver._wsframes import FrameProtocol
from rtserver.rt_connection import AUTH_WAITING, AuthTurns, RtConnection
from rtserver.server import RtServer
from rtserver.ws_handshake import quick_request
from rtserver.ws_server import (
    CLOSE_TIMEOUTS,
    HANDSHAKE_TIMEOUTS,
    INVALID_UTF8,
    WsConnection,
    WsServer,
    WsSettings,
)
from rtserver.ws_slim import ConnectionLogger, url_token


async def test_idle_connections_hold_no_task_and_share_one_logger(
        server: RtServer, connect_client: object) -> None:
    client: Client = await connect_client(token())  # type: ignore[operator]
    await client.request({"type": "ping", "id": 1}, "pong")
    (conn,) = server.node.hub.connections.values()
    ws = conn.ws
    assert isinstance(ws, RtConnection)
    assert ws.protocol.logger is server_module._WS_LOGGER  # type: ignore[comparison-overlap]
    # The quick upgrade left the connection on the compiled frame protocol.
    assert type(ws.protocol) is FrameProtocol
    # Authenticated and idle: no task handles it, nothing is queued.
    assert ws.busy is None and not ws.inbox
    assert not server.connection_tasks


async def test_many_frames_at_once_are_handled_in_order_with_back_pressure(
        server: RtServer, connect_client: object) -> None:
    """More frames at once than server.max_incoming_queue: reading pauses and resumes,
    every frame is answered, in order."""
    client: Client = await connect_client(token())  # type: ignore[operator]
    count = 3 * server.config.server.max_incoming_queue
    paused: list[bool] = []
    (conn,) = server.node.hub.connections.values()
    ws = conn.ws
    original = ws.transport.pause_reading

    def pause() -> None:
        paused.append(True)
        original()

    ws.transport.pause_reading = pause
    # One write holding every frame: they arrive together and queue behind the first.
    frames = b"".join(Frame(Opcode.TEXT, orjson.dumps({"type": "ping", "id": i})).serialize(
        mask=True, extensions=[]) for i in range(count))
    client.ws.transport.write(frames)
    ids = [(await client.recv_type("pong"))["id"] for _ in range(count)]
    assert ids == list(range(count))
    assert paused, "reading never paused"
    assert not ws.reading_paused


async def test_fragmented_text_message_is_assembled(
        server: RtServer, connect_client: object) -> None:
    client: Client = await connect_client(token())  # type: ignore[operator]
    await client.ws.send(['{"type":"ping",', '"id":"frag', 'mented"}'])
    assert (await client.recv_type("pong"))["id"] == "fragmented"


async def test_invalid_utf8_text_closes_1007(server: RtServer, connect_client: object) -> None:
    client: Client = await connect_client(token())  # type: ignore[operator]
    before = INVALID_UTF8.get()
    bad = b'{"type":"ping","id":"' + bytes([0xFF, 0xFE]) + b'"}'
    client.ws.transport.write(Frame(Opcode.TEXT, bad).serialize(mask=True, extensions=[]))
    with pytest.raises(ConnectionClosed):
        while True:
            await client.ws.recv()
    assert client.ws.close_code == 1007
    assert INVALID_UTF8.get() == before + 1


async def test_character_split_across_fragments_is_assembled(
        server: RtServer, connect_client: object) -> None:
    client: Client = await connect_client(token())  # type: ignore[operator]
    euro = "€".encode()
    first = Frame(Opcode.TEXT, b'{"type":"ping","id":"' + euro[:1], fin=False)
    last = Frame(Opcode.CONT, euro[1:] + b'"}')
    client.ws.transport.write(first.serialize(mask=True, extensions=[])
                              + last.serialize(mask=True, extensions=[]))
    assert (await client.recv_type("pong"))["id"] == "€"


async def test_invalid_utf8_across_fragments_closes_1007(
        server: RtServer, connect_client: object) -> None:
    """Each fragment alone may be valid; the assembled message is what is checked."""
    client: Client = await connect_client(token())  # type: ignore[operator]
    euro = "€".encode()  # three bytes: split after the first one, then a bad byte
    first = Frame(Opcode.TEXT, b'{"type":"ping","id":"' + euro[:1], fin=False)
    last = Frame(Opcode.CONT, b"\xff" + euro[1:] + b'"}')
    client.ws.transport.write(first.serialize(mask=True, extensions=[])
                              + last.serialize(mask=True, extensions=[]))
    with pytest.raises(ConnectionClosed):
        while True:
            await client.ws.recv()
    assert client.ws.close_code == 1007


class _WriteSpy:
    """The connection's transport, recording what the connection layer writes through it
    (the fan-out core's direct sends bypass it)."""

    def __init__(self, transport: object) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.transport.write(data)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.transport, name)


async def test_welcome_goes_out_with_the_101_in_one_write(
        server: RtServer, connect_client: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 101 response and the welcome frame are one write (one segment), and the
    client reads them as usual."""
    spies: list[_WriteSpy] = []
    original = RtConnection.connection_made

    def connection_made(self: RtConnection, transport: object) -> None:
        spy = _WriteSpy(transport)
        spies.append(spy)
        original(self, spy)

    monkeypatch.setattr(RtConnection, "connection_made", connection_made)
    client: Client = await connect_client(token())  # type: ignore[operator]
    await client.request({"type": "ping", "id": 1}, "pong")
    (spy,) = spies
    first = spy.writes[0]
    head, sep, frame = first.partition(b"\r\n\r\n")
    assert sep and head.startswith(b"HTTP/1.1 101 "), first
    assert frame[:1] == b"\x81" and b'"type":"connection"' in frame, first


async def test_handshake_not_sent_in_time_is_dropped(make_server: ServerFactory) -> None:
    server = await make_server(make_config(server={"open_timeout": 0.2}))
    before = HANDSHAKE_TIMEOUTS.get()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n")  # never finished
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the server ended it
    writer.close()
    assert HANDSHAKE_TIMEOUTS.get() == before + 1


async def test_one_sweep_drops_every_late_handshake_and_only_those(
        make_server: ServerFactory) -> None:
    """Handshakes arriving at different times share one sweep: each silent one is
    dropped (and counted once), an answered one stays open past every deadline."""
    from websockets.asyncio.client import connect

    server = await make_server(make_config(server={"open_timeout": 0.3}))
    before = HANDSHAKE_TIMEOUTS.get()
    silent = []
    for _ in range(3):
        silent.append(await asyncio.open_connection("127.0.0.1", server.port))
        await asyncio.sleep(0.1)  # staggered: later deadlines than the first sweep's
    ws = await connect(ws_url(server, token()), compression=None)
    client = Client(ws)
    assert (await client.recv())["type"] == "connection"
    assert (await client.recv())["type"] == "authenticated"
    for _ in range(2):
        silent.append(await asyncio.open_connection("127.0.0.1", server.port))
    for reader, writer in silent:
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the server ended it
        writer.close()
    assert HANDSHAKE_TIMEOUTS.get() == before + 5
    # Every deadline has passed: the answered connection was left alone.
    await client.request({"type": "ping", "id": 1}, "pong")
    assert len(server.server.handshakes) == 0  # type: ignore[union-attr]
    await ws.close()


async def test_close_not_answered_in_time_is_dropped(make_server: ServerFactory) -> None:
    """A client that ignores the server's close frame is dropped after close_timeout, and
    the connection is still forgotten by the node (one closed record)."""
    server = await make_server(make_config(server={"close_timeout": 0.2}))
    before = CLOSE_TIMEOUTS.get()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"GET /ws?token={token()} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
    deadline = asyncio.get_running_loop().time() + 5
    while not server.node.hub.connections:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    (conn,) = server.node.hub.connections.values()
    server.node.close_connection(conn, 4000, "test")
    while await asyncio.wait_for(reader.read(65536), 5):
        pass  # frames, then the end of the stream once the server drops it
    writer.close()
    while server.node.hub.connections:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    assert CLOSE_TIMEOUTS.get() == before + 1


async def test_one_sweep_drops_every_unanswered_close_and_only_those(
        make_server: ServerFactory) -> None:
    """Closing handshakes started at different times share one sweep: each client that
    ignores the close frame is dropped (counted once), one that answers it ends cleanly
    with its code, and the queue is empty afterwards."""
    from websockets.asyncio.client import connect

    server = await make_server(make_config(server={"close_timeout": 0.3}))
    before = CLOSE_TIMEOUTS.get()
    hub = server.node.hub
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    known: set[str] = set()

    async def new_connection() -> str:
        while not set(hub.connections) - known:
            assert loop.time() < deadline
            await asyncio.sleep(0.01)
        (conn_id,) = set(hub.connections) - known
        known.add(conn_id)
        return conn_id

    silent = []
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"GET /ws?token={token()} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
        silent.append((await new_connection(), (reader, writer)))
    ws = await connect(ws_url(server, token()), compression=None)
    client = Client(ws)
    assert (await client.recv())["type"] == "connection"
    answering = await new_connection()
    for conn_id, _ in silent:
        server.node.close_connection(hub.connections[conn_id], 4000, "test")
        await asyncio.sleep(0.1)  # staggered: later deadlines than the first sweep's
    server.node.close_connection(hub.connections[answering], 4001, "answered")
    with pytest.raises(ConnectionClosed):
        while True:
            await ws.recv()
    assert ws.close_code == 4001
    for _, (reader, writer) in silent:
        while await asyncio.wait_for(reader.read(65536), 5):
            pass  # the close frame, then the end of the stream once the server drops it
        writer.close()
    while hub.connections:
        assert loop.time() < deadline
        await asyncio.sleep(0.01)
    assert CLOSE_TIMEOUTS.get() == before + 3
    assert len(server.server.closings) == 0  # type: ignore[union-attr]


def test_connection_ids_are_uuid4_text_without_a_uuid_object() -> None:
    """The id of a connection on the frame protocol is a version-4 UUID's text, the one
    its ``id`` gives too; websockets' protocol keeps its own."""
    import uuid

    from rtserver.ws_slim import connection_id

    texts = {FrameProtocol().id_text for _ in range(2000)}
    assert len(texts) == 2000
    for text in list(texts)[:200]:
        u = uuid.UUID(text)
        assert str(u) == text and u.version == 4 and u.variant == uuid.RFC_4122
    protocol = FrameProtocol()
    text = connection_id(protocol)
    assert protocol.id == uuid.UUID(text) and protocol.id_text is text
    made_first = FrameProtocol()
    assert connection_id(made_first) == str(made_first.id)
    sansio = ServerProtocol()
    assert connection_id(sansio) == str(sansio.id)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_connection_logger_skips_chatter_below_debug_only() -> None:
    target = logging.getLogger("rtserver.test.slim")
    records = _Records()
    target.addHandler(records)
    target.setLevel(logging.DEBUG)
    target.propagate = False
    logger = ConnectionLogger("rtserver.test.slim")
    try:
        jsonlog.configure("info")
        logger.info("connection open")
        logger.info("HTTP response sent (%d %s)", 404, "Not Found")
        logger.info("server listening on %s", "127.0.0.1:1")
        logger.error("opening handshake failed")
        assert records.messages == ["server listening on 127.0.0.1:1",
                                    "opening handshake failed"]
        jsonlog.configure("debug")
        logger.info("connection open")
        assert records.messages[-1] == "connection open"
    finally:
        jsonlog.configure("info")
        target.removeHandler(records)


async def test_debug_level_still_writes_connection_open(make_server: ServerFactory) -> None:
    """At debug, websockets' "connection open" line is written as before (JSON, debug)."""
    from websockets.asyncio.client import connect

    server = await make_server(make_config())
    out = io.StringIO()
    jsonlog.configure("debug", stream=out)
    try:
        async with connect(f"ws://127.0.0.1:{server.port}/ws?token={token()}") as ws:
            await ws.recv()
    finally:
        jsonlog.configure("info", stream=sys.stderr)
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert any(line["event"] == "library_log" and line.get("message") == "connection open"
               and line["level"] == "debug" for line in lines)


class _FakeConnection:
    """What AuthTurns uses of a connection."""

    def __init__(self) -> None:
        self.waiting_turn = False
        self.lost = False
        self.started: list[str | None] = []

    def authenticate(self, tok: str | None) -> None:
        self.started.append(tok)


def test_auth_turns_bound_and_order() -> None:
    turns = AuthTurns(2)
    a, b, c, d, e = (_FakeConnection() for _ in range(5))
    for ws, tok in ((a, "ta"), (b, None), (c, "tc"), (d, "td"), (e, "te")):
        turns.submit(ws, tok)  # type: ignore[arg-type]
    assert (a.started, b.started) == (["ta"], [None])
    assert c.waiting_turn and d.waiting_turn and not c.started and not d.started
    assert turns.waiting_max == 3 and AUTH_WAITING.get() == 3
    d.lost = True  # ended while waiting: skipped, its turn goes to the next one
    turns.done()
    assert c.started == ["tc"] and not c.waiting_turn
    turns.done()
    assert d.started == [] and e.started == ["te"] and not d.waiting_turn
    assert turns.running == 2 and not turns.waiting and AUTH_WAITING.get() == 0
    turns.done()
    turns.done()
    assert turns.running == 0


async def test_connections_beyond_max_concurrent_auth_wait_their_turn(
        make_server: ServerFactory) -> None:
    """One authentication at a time: 40 clients connecting at once all authenticate, and a
    frame each sends before its turn is answered after its ``authenticated``."""
    server = await make_server(make_config(server={"max_concurrent_auth": 1}))
    from websockets.asyncio.client import connect

    async def one(i: int) -> list[str]:
        async with connect(f"ws://127.0.0.1:{server.port}/ws?token={token()}") as ws:
            await ws.send(orjson.dumps({"type": "ping", "id": i}).decode())
            kinds = []
            while len(kinds) < 3:
                msg = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                if msg["type"] != "heartbeat":
                    kinds.append(msg["type"])
            return kinds

    results = await asyncio.gather(*(one(i) for i in range(40)))
    assert results == [["connection", "authenticated", "pong"]] * 40
    turns = server.auth_turns
    assert turns.running == 0 and not turns.waiting


def _request(extra: str = "", key: str = "dGhlIHNhbXBsZSBub25jZQ==", version: str = "13",
             upgrade: str = "websocket", connection: str = "keep-alive, Upgrade") -> bytes:
    return (f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: {upgrade}\r\nConnection: {connection}\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n{extra}\r\n"
            ).encode()


def test_quick_request_reads_the_common_request_like_websockets() -> None:
    """Bytes only: the same path and headers as websockets' parser, and the key."""
    data = _request(extra="User-Agent: test/1\r\nX-Empty:\r\n").replace(
        b"GET /ws ", b"GET /ws?token=abc&x=%20 ")
    quick = quick_request(data)
    assert quick is not None
    ours, key = quick
    protocol = ServerProtocol()
    protocol.receive_data(data)
    (theirs,) = protocol.events_received()
    assert isinstance(theirs, Request)
    assert ours.path == theirs.path == "/ws?token=abc&x=%20"
    assert list(ours.headers.raw_items()) == list(theirs.headers.raw_items())
    assert key == b"dGhlIHNhbXBsZSBub25jZQ=="


@pytest.mark.parametrize("data", [
    _request(key="c2hvcnQ="),
    _request(key="not base64!"),
    _request(version="12"),
    _request(upgrade="h2c"),
    _request(connection="keep-alive"),
    _request(extra="Upgrade: websocket\r\n"),
    _request(extra="Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"),
    _request(connection="upgrade", extra="Connection: close\r\n"),
    _request(extra="Transfer-Encoding: chunked\r\n"),
    _request(extra="Content-Length: 0\r\n"),
    _request(extra="Sec-WebSocket-Extensions: permessage-deflate\r\n"),
    _request(extra="Sec-WebSocket-Protocol: chat\r\n"),
    _request(extra="Bad Name: x\r\n"),
    _request(extra="X-Long: " + "a" * 9000 + "\r\n"),
    _request()[:-2],                                         # not finished yet
    _request() + b"\x81\x80abcd",                          # a frame right behind it
    _request().replace(b"GET ", b"POST "),
    _request().replace(b"HTTP/1.1", b"HTTP/1.0"),
])
def test_quick_request_leaves_anything_else_to_websockets(data: bytes) -> None:
    assert quick_request(data) is None


@pytest.mark.parametrize("frames", [None, FrameProtocol])
def test_quick_101_is_websockets_answer_byte_for_byte(frames: type[Any] | None) -> None:
    """Bytes only: the quick 101 equals websockets' accept() + send_response() (Server
    header included, Date aside), and the protocol (websockets' or the compiled frame
    protocol) then reads frames."""
    settings = WsSettings(max_size=1 << 16, max_queue=16, open_timeout=1.0, close_timeout=1.0,
                          compression=False, server_header="rtserver-test", logger=None,
                          frames=frames)
    conn = WsConnection(WsServer(WsConnection, settings))
    ours = conn._quick_101(b"dGhlIHNhbXBsZSBub25jZQ==")
    protocol = ServerProtocol()
    protocol.receive_data(_request())
    (request,) = protocol.events_received()
    assert isinstance(request, Request)
    response = protocol.accept(request)
    response.headers["Server"] = "rtserver-test"
    protocol.send_response(response)
    (theirs,) = protocol.data_to_send()

    def undated(head: bytes) -> list[bytes]:
        return [ln for ln in head.split(b"\r\n") if not ln.startswith(b"Date: ")]

    assert undated(ours) == undated(theirs)
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in ours  # RFC 6455
    assert re.search(rb"\r\nDate: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT\r\n", ours), ours
    assert conn.protocol.state is protocol.state
    frame = Frame(Opcode.TEXT, b"hi").serialize(mask=True, extensions=[])
    conn.protocol.receive_data(frame)
    (event,) = conn.protocol.events_received()
    assert isinstance(event, Frame) and event.data == b"hi"


@pytest.mark.parametrize("path", [
    "/ws", "/ws?", "/ws?token=abc", "/ws?x=1&token=abc&token=def", "/ws?token=&token=b",
    "/ws?token", "/ws?tok=1", "/ws?token=a%2Eb", "/ws?token=a+b", "/ws?%74oken=x",
    "/ws?token=abc#frag", "/ws?token=a=b", "/ws?a=1;token=2", "/ws?&&token=z&",
])
def test_url_token_reads_the_query_like_parse_qs(path: str) -> None:
    tokens = parse_qs(urlsplit(path).query).get("token")
    assert url_token(Request(path, Headers())) == (tokens[0] if tokens else None)
