"""Per-connection websockets state that rtserver slims (rtserver/ws_slim.py), over a real
server: the shared logger, the list queues, and that frames still flow through them."""

from __future__ import annotations

import asyncio
import collections
import io
import logging
import sys

import orjson
import pytest

from conftest import Client, ServerFactory, make_config, token
from rtserver import jsonlog
from rtserver import server as server_module
from rtserver.server import RtServer
from rtserver.ws_slim import ConnectionLogger, ListQueue


async def test_server_connections_share_one_logger_and_list_queues(
        server: RtServer, connect_client: object) -> None:
    client: Client = await connect_client(token())  # type: ignore[operator]
    (conn,) = server.node.hub.connections.values()
    ws = conn.ws
    assert ws.logger is server_module._WS_LOGGER
    assert ws.protocol.logger is server_module._WS_LOGGER
    assert type(ws.drain_waiters) is ListQueue
    assert type(ws.recv_messages.frames.queue) is ListQueue
    # Many frames queued at once go through the list queue in order (more than
    # server.max_incoming_queue, so reading pauses and resumes on the way).
    count = 3 * server.config.server.max_incoming_queue
    await asyncio.gather(*(client.send({"type": "ping", "id": i}) for i in range(count)))
    ids = [(await client.recv_type("pong"))["id"] for _ in range(count)]
    assert ids == list(range(count))


def test_list_queue_matches_deque() -> None:
    lq, dq = ListQueue(), collections.deque[int]()
    for q in (lq, dq):
        q.append(3)
        q.extendleft(reversed([1, 2]))
        q.extend([4, 5])
    assert list(lq) == list(dq) == [1, 2, 3, 4, 5]
    assert [lq.popleft() for _ in range(5)] == [dq.popleft() for _ in range(5)]
    with pytest.raises(IndexError):
        lq.popleft()
    assert not lq and len(lq) == 0


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
