"""A client that stops reading, and the room flood that makes the server close it with 1013.

The client socket has a small receive buffer and the websockets client a
one-frame queue, so once the test stops calling ``recv()`` the kernel buffers
fill and the server's outbound buffer grows past ``limits.outbound_buffer_limit``.
"""

from __future__ import annotations

import asyncio
import socket

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import Client
from rtserver.connection import ConnState
from rtserver.server import RtServer

__all__ = ["SLOW_LIMITS", "connect_slow", "drain_close_code", "flood_until_closed"]

#: ``[limits]`` of servers in slow-consumer tests: a small outbound buffer, and no rate
#: limit in the way of the publisher's flood.
SLOW_LIMITS: dict[str, object] = {"outbound_buffer_limit": 64 * 1024,
                                  "rate_limit_per_second": 1e6, "rate_limit_burst": 1_000_000}


async def connect_slow(server: RtServer, tok: str) -> tuple[Client, str]:
    """A client with a 16 KiB receive buffer, authenticated by URL token; returns it and
    its connection id (after the ``connection`` and ``authenticated`` frames)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    ws = await connect(f"ws://127.0.0.1:{server.port}/ws?token={tok}", sock=sock,
                       max_queue=1, max_size=None, compression=None)
    client = Client(ws)
    welcome = await client.recv()
    assert welcome["type"] == "connection"
    assert (await client.recv())["type"] == "authenticated"
    return client, str(welcome["connection_id"])


async def flood_until_closed(server: RtServer, connection_id: str, publisher: Client,
                             room: str, *, size: int = 48 * 1024, most: int = 2000) -> int:
    """Publish ``size``-byte messages to ``room`` (each acknowledged) until the server
    closes ``connection_id``; returns how many were published (fails after ``most``)."""
    data = "x" * size
    for n in range(1, most + 1):
        await publisher.request({"type": "publish", "room": room, "data": data, "id": n},
                                "ack")
        conn = server.node.connection(connection_id)
        if conn is None or conn.state in (ConnState.CLOSING, ConnState.CLOSED):
            return n
    raise AssertionError(f"{most} publications never made connection {connection_id} slow")


async def drain_close_code(client: Client, timeout: float = 10.0) -> int | None:
    """Read everything the server sent until its close frame; return the close code."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await client.ws.recv()
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None
