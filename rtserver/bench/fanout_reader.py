"""Reader process of :mod:`rtserver.bench.fanout_micro`: opens N WebSocket connections, drains them.

It does the opening handshake by hand on raw asyncio protocols (uvloop) and
then only counts the bytes it receives, so it costs the sending server nothing
but the kernel's work. Control over stdin/stdout, one line each:

* at start it prints ``{"ready": N}`` once every connection got its ``101``;
* ``sync TOTAL`` waits until the bytes received after the handshakes reach
  ``TOTAL`` (or ``--sync-timeout`` passes) and prints
  ``{"received": X, "ok": true|false}``;
* ``quit`` (or end of input) closes everything and exits.

With ``--cafile`` the connections use TLS (``wss://``, the server certificate
verified against that CA) and the counted bytes are the decrypted ones.

Run by ``fanout_micro.py``; not meant to be started by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import resource
import ssl
import sys
from typing import cast

import orjson
import uvloop

__all__ = ["main"]


class _Drain(asyncio.Protocol):
    """One connection: handshake, then count received bytes."""

    def __init__(self, path: str, host: str, port: int, counter: list[int]) -> None:
        self.path = path
        self.host = host
        self.port = port
        self.counter = counter
        self.head = b""
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        if self.upgraded.done():
            self.counter[0] += len(data)
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > 65536:
                self.upgraded.set_exception(RuntimeError("handshake response too long"))
            return
        if not self.head.startswith(b"HTTP/1.1 101"):
            self.upgraded.set_exception(RuntimeError(f"handshake refused: {self.head[:200]!r}"))
            return
        self.counter[0] += len(self.head) - end - 4
        self.upgraded.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(
                RuntimeError(f"connection lost during the handshake: {exc}")
            )


async def _run(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    counter = [0]
    protocols: list[_Drain] = []
    sem = asyncio.Semaphore(args.concurrency)
    context = ssl.create_default_context(cafile=args.cafile) if args.cafile else None

    async def one(i: int) -> None:
        async with sem:
            proto = _Drain(f"/r{i}", args.host, args.port, counter)
            await loop.create_connection(lambda: proto, args.host, args.port, ssl=context)
            await proto.upgraded
            protocols.append(proto)

    async with asyncio.timeout(args.connect_timeout):
        await asyncio.gather(*(one(i) for i in range(args.connections)))
    print(orjson.dumps({"ready": len(protocols)}).decode(), flush=True)

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if not line or line == "quit":
            break
        cmd, _, value = line.partition(" ")
        if cmd != "sync":
            print(orjson.dumps({"error": f"unknown command {cmd!r}"}).decode(), flush=True)
            return 2
        target = int(value)
        deadline = loop.time() + args.sync_timeout
        while counter[0] < target and loop.time() < deadline:
            await asyncio.sleep(0.002)
        print(
            orjson.dumps({"received": counter[0], "ok": counter[0] == target}).decode(), flush=True
        )
    for proto in protocols:
        if proto.transport is not None:
            proto.transport.abort()
    return 0


def main() -> int:
    """Entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument(
        "--cafile", help="connect with TLS, verifying the server against this PEM CA file"
    )
    parser.add_argument(
        "--concurrency", type=int, default=256, help="connection attempts in flight at once"
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=120.0,
        help="seconds allowed for opening every connection",
    )
    parser.add_argument(
        "--sync-timeout",
        type=float,
        default=60.0,
        help="seconds a `sync` waits for the expected bytes",
    )
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return uvloop.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
