"""Shared fixtures: a real rtserver on an ephemeral loopback port, real clients, tokens."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from rtserver.auth import mint_token
from rtserver.config import Config, load_config
from rtserver.server import RtServer

SECRET = "test-secret-0123456789abcdef-0123456789"


def make_config(**sections: dict[str, Any]) -> Config:
    """The shipped configuration on port 0 with the test secret and section overrides."""
    config = load_config(env={}, flags={"port": 0, "jwt_secret": SECRET,
                                        "fanout": os.environ.get("RTSERVER_TEST_FANOUT",
                                                                 "compiled")})
    for name, values in sections.items():
        section = getattr(config, name)
        config = msgspec.structs.replace(config, **{
            name: msgspec.structs.replace(section, **values)})
    return config


def token(user: str | None = None, perms: list[str] | None = None,
          rooms: list[str] | None = None, ttl: float = 3600) -> str:
    """A token signed with the test secret."""
    return mint_token(SECRET, user or str(uuid.uuid4()), perms or [], rooms or [], ttl)


class Client:
    """A websockets client with JSON helpers."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, obj: Any) -> None:
        await self.ws.send(orjson.dumps(obj).decode())

    async def recv(self, timeout: float = 5.0, *, heartbeats: bool = False) -> dict[str, Any]:
        """The next message; ``heartbeat`` frames (sent on the server's sweep schedule)
        are skipped unless ``heartbeats`` is true."""
        import asyncio

        async with asyncio.timeout(timeout):
            while True:
                msg = dict(orjson.loads(await self.ws.recv()))
                if heartbeats or msg["type"] != "heartbeat":
                    return msg

    async def recv_type(self, type_: str, timeout: float = 5.0) -> dict[str, Any]:
        """Receive until a message of ``type_`` (skipping heartbeats and room events)."""
        while True:
            msg = await self.recv(timeout)
            if msg["type"] == type_:
                return msg
            if msg["type"] not in ("heartbeat", "room_event"):
                raise AssertionError(f"expected {type_}, got {msg}")

    async def request(self, obj: Any, reply_type: str) -> dict[str, Any]:
        await self.send(obj)
        return await self.recv_type(reply_type)


ServerFactory = Callable[..., Awaitable[RtServer]]


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    servers: list[RtServer] = []

    async def factory(config: Config | None = None, **kwargs: Any) -> RtServer:
        server = RtServer(config or make_config(), jwt_secret=SECRET, **kwargs)
        await server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.stop(1001, "test over")


@pytest.fixture
async def server(make_server: ServerFactory) -> RtServer:
    return await make_server()


def ws_url(server: RtServer, tok: str | None = None) -> str:
    base = f"ws://127.0.0.1:{server.port}/ws"
    return f"{base}?token={tok}" if tok is not None else base


@pytest.fixture
async def connect_client(server: RtServer) -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    clients: list[ClientConnection] = []

    async def factory(tok: str | None = None, *, srv: RtServer | None = None,
                      expect_auth: bool = True) -> Client:
        ws = await connect(ws_url(srv or server, tok), max_size=None, compression=None)
        clients.append(ws)
        client = Client(ws)
        welcome = await client.recv()
        assert welcome["type"] == "connection"
        if tok is not None and expect_auth:
            auth = await client.recv()
            assert auth["type"] == "authenticated", auth
        return client

    yield factory
    for ws in clients:
        await ws.close()


class ServerProcess:
    """``python -m rtserver serve`` in a subprocess; port read from its "listening" line."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None,
                 listening_lines: int = 1) -> None:
        import subprocess
        import sys

        full_env = dict(os.environ)
        full_env.update({"RTSERVER_JWT_SECRET": SECRET, "RTSERVER_PORT": "0"})
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rtserver", "serve", *args],
            env=full_env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.lines: list[dict[str, Any]] = []
        self.port = 0
        self._listening_lines = listening_lines

    def wait_listening(self, timeout: float = 20.0) -> int:
        """Block until ``listening_lines`` workers listen; return the port."""
        import selectors
        import time as _time

        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        deadline = _time.monotonic() + timeout
        seen = 0
        pending = b""
        while seen < self._listening_lines:
            if _time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"server did not start: {self.lines[-5:]}")
            if not sel.select(timeout=0.5):
                continue
            # Raw reads: a buffered readline() would hide lines already read from the
            # pipe from the next select().
            chunk = os.read(fd, 65536)
            if not chunk:
                continue
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for line in complete:
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    record = {"event": "raw", "text": line.decode(errors="replace")}
                self.lines.append(record)
                if record.get("event") == "listening":
                    seen += 1
                    self.port = int(record["port"])
        sel.close()
        self._pending = pending
        return self.port

    def read_rest(self, timeout: float = 20.0) -> int:
        """Wait for exit, collect the remaining log lines, return the exit status."""
        _, err = self.proc.communicate(timeout=timeout)
        rest = getattr(self, "_pending", b"").decode(errors="replace") + (err or "")
        for line in rest.splitlines():
            if line.startswith("{"):
                self.lines.append(orjson.loads(line))
        return self.proc.returncode

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.lines if r.get("event") == name]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
