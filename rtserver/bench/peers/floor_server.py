"""Connect-storm floors: how little a Python server on uvloop can do per connect.

Not a server to use: it answers the bench harness's connect path with canned frames
(``connection`` and ``authenticated`` after the upgrade, ``subscribed`` for any text
frame), checks no token, logs nothing. Three modes measure what the WebSocket layer
alone costs, with the same harness and in the same run as the Node ``ws`` peer::

    python -m rtserver.bench.peers.floor_server --mode sansio --processes 2
    # prints {"port": N}; then, from another shell:
    rtserver bench connect-storm --url ws://127.0.0.1:N/ws --connections 10000 \\
        --peer node-ws --vs --no-plots

- ``bare``: the upgrade parsed with one regular expression and answered by hand;
- ``sansio``: websockets' Sans-I/O ``ServerProtocol`` under a bare ``asyncio.Protocol``
  (what rtserver/ws_server.py does);
- ``asyncio``: websockets' asyncio ``serve`` with a handler coroutine (what rtserver
  used before rtserver/ws_server.py).

``--processes N`` forks N processes accepting on one listening socket (loopback only).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import re
import socket
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]

_KEY = re.compile(rb"\r\nsec-websocket-key:\s*([A-Za-z0-9+/=]+)", re.IGNORECASE)
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WELCOME = (b'{"type":"connection","status":"connected","connection_id":"floor","worker":0,'
           b'"server_time":"1970-01-01T00:00:00Z"}')
AUTHENTICATED = b'{"type":"authenticated","user":"floor","permissions":[],"anonymous":false}'
SUBSCRIBED = b'{"type":"subscribed","room":"floor","seq":0,"epoch":"floor","id":1}'


def _frame(payload: bytes) -> bytes:
    n = len(payload)
    head = bytes([0x81, n]) if n < 126 else bytes([0x81, 126]) + n.to_bytes(2, "big")
    return head + payload


class _Bare(asyncio.Protocol):
    __slots__ = ("buf", "open", "transport")

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.open = False
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        if self.open:
            if data[0] & 0x0F == 1:
                self.transport.write(_frame(SUBSCRIBED))
            elif data[0] & 0x0F == 8:
                self.transport.close()
            return
        data = self.buf + data
        end = data.find(b"\r\n\r\n")
        if end < 0:
            self.buf = data
            return
        match = _KEY.search(data, 0, end + 2)
        if match is None:
            self.transport.close()
            return
        accept = base64.b64encode(hashlib.sha1(match.group(1) + _GUID).digest())
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept
                             + b"\r\n\r\n" + _frame(WELCOME) + _frame(AUTHENTICATED))
        self.open = True
        self.buf = b""


class _SansIO(asyncio.Protocol):
    __slots__ = ("protocol", "transport")

    def connection_made(self, transport: Any) -> None:
        from websockets.server import ServerProtocol

        self.transport = transport
        self.protocol = ServerProtocol(max_size=65536)

    def data_received(self, data: bytes) -> None:
        from websockets.frames import Opcode
        from websockets.http11 import Request
        from websockets.protocol import CONNECTING

        p = self.protocol
        p.receive_data(data)
        for event in p.events_received():
            if isinstance(event, Request) and p.state is CONNECTING:
                p.send_response(p.accept(event))
                p.send_text(WELCOME)
                p.send_text(AUTHENTICATED)
            elif getattr(event, "opcode", None) is Opcode.TEXT:
                p.send_text(SUBSCRIBED)
        for chunk in p.data_to_send():
            if chunk:
                self.transport.write(chunk)
            else:
                self.transport.close()


async def _handler(ws: Any) -> None:
    await ws.send(WELCOME.decode())
    await ws.send(AUTHENTICATED.decode())
    async for _message in ws:
        await ws.send(SUBSCRIBED.decode())


async def _serve(mode: str, sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    if mode == "bare":
        await loop.create_server(_Bare, sock=sock, backlog=4096)
    elif mode == "sansio":
        await loop.create_server(_SansIO, sock=sock, backlog=4096)
    else:
        from websockets.asyncio.server import serve

        await serve(_handler, sock=sock, ping_interval=None, compression=None, backlog=4096)
    await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Listen on 127.0.0.1 (``--port``, 0: any), print ``{"port": N}``, serve until killed."""
    parser = argparse.ArgumentParser(prog="python -m rtserver.bench.peers.floor_server",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--mode", choices=("bare", "sansio", "asyncio"), required=True)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if not 1 <= args.processes <= 16:
        parser.error("--processes must be 1..16")
    import uvloop

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(4096)
    print(json.dumps({"port": sock.getsockname()[1], "mode": args.mode,
                      "processes": args.processes}), flush=True)
    for _ in range(args.processes - 1):
        if os.fork() == 0:
            break
    uvloop.run(_serve(args.mode, sock))
    return 0


if __name__ == "__main__":
    sys.exit(main())
