"""Fixtures of the bus tests: a recording handler, a hub on a private socket, settings."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from rtserver.backoff import BackoffPolicy
from rtserver.bus.base import BusHealth, InterestSnapshot, PresenceMember, StreamPosition
from rtserver.bus.embedded_client import EmbeddedBus
from rtserver.bus.embedded_server import EmbeddedBusServer
from rtserver.bus.embedded_settings import EmbeddedBusServerSettings, EmbeddedBusSettings
from rtserver.bus.redis_bus import RedisBus
from rtserver.bus.redis_settings import RedisBusSettings, default_node_id
from rtserver.bus.room_streams import HistorySettings

HISTORY = HistorySettings(history_size=100, history_ttl=300.0, history_max_bytes=1 << 20,
                          idempotency_window=60.0)
RECONNECT = BackoffPolicy(initial_delay=0.05, max_delay=0.2, jitter=0.2)


class Recorder:
    """A BusHandler that records everything it is given."""

    def __init__(self) -> None:
        self.publications: list[tuple[str, int, bytes]] = []
        self.events: list[tuple[str, bytes]] = []
        self.user_messages: list[tuple[str, bytes]] = []
        self.states: list[BusHealth] = []
        self.epochs: list[str] = []  # the epoch of each publication, in order
        self.gaps: list[tuple[str, str, int, int, str]] = []
        self.changed = asyncio.Event()
        # What the worker holds (set by a test, as the node sets its Hub before calling
        # the bus): the bus re-declares exactly this after a reconnect.
        self.rooms: set[str] = set()
        self.users: set[str] = set()
        self.presence: set[tuple[str, PresenceMember]] = set()
        # Positions at subscribe time (before any publication was delivered).
        self.subscribed: dict[str, StreamPosition] = {}

    def on_publication(self, room: str, epoch: str, seq: int, body: bytes) -> None:
        self.publications.append((room, seq, body))
        self.epochs.append(epoch)
        self.changed.set()

    def on_stream_gap(self, room: str, epoch: str, from_seq: int, to_seq: int,
                      reason: str) -> None:
        self.gaps.append((room, epoch, from_seq, to_seq, reason))
        self.changed.set()

    def on_room_event(self, room: str, payload: bytes) -> None:
        self.events.append((room, payload))
        self.changed.set()

    def on_user_message(self, user: str, payload: bytes) -> None:
        self.user_messages.append((user, payload))
        self.changed.set()

    def on_bus_state(self, health: BusHealth) -> None:
        self.states.append(health)
        self.changed.set()

    def interest_snapshot(self) -> InterestSnapshot:
        positions: dict[str, StreamPosition] = dict(self.subscribed)
        for (room, seq, _), epoch in zip(self.publications, self.epochs, strict=True):
            if room in self.rooms:
                positions[room] = StreamPosition(epoch=epoch, seq=seq)
        for room, epoch, _, to_seq, _ in self.gaps:
            positions[room] = StreamPosition(epoch=epoch, seq=to_seq)
        return InterestSnapshot(rooms=sorted(self.rooms), users=sorted(self.users),
                                presence=list(self.presence), positions=positions)

    def seqs(self, room: str) -> list[int]:
        return [seq for r, seq, _ in self.publications if r == room]

    async def wait_for(self, predicate: object, timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` is true (bounded by ``timeout``)."""
        assert callable(predicate)
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
def runtime_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="rtbus")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def hub_settings(runtime_dir: str, workers: int = 2) -> EmbeddedBusServerSettings:
    return EmbeddedBusServerSettings(socket_path=f"{runtime_dir}/bus.sock",
                                     expected_workers=workers,
                                     max_worker_buffer=64 * 1024 * 1024, collect_timeout=2.0,
                                     history=HISTORY)


def bus_settings(runtime_dir: str, worker: int) -> EmbeddedBusSettings:
    return EmbeddedBusSettings(socket_path=f"{runtime_dir}/bus.sock", worker_id=worker,
                               request_timeout=5.0, connect_timeout=2.0, reconnect=RECONNECT)


@pytest.fixture
async def hub(runtime_dir: str) -> AsyncIterator[EmbeddedBusServer]:
    h = EmbeddedBusServer(hub_settings(runtime_dir))
    await h.start()
    yield h
    await h.close()


@pytest.fixture
async def pair(hub: EmbeddedBusServer, runtime_dir: str) -> AsyncIterator[
        tuple[tuple[EmbeddedBus, Recorder], tuple[EmbeddedBus, Recorder]]]:
    out = []
    for worker in (0, 1):
        rec = Recorder()
        bus = EmbeddedBus(bus_settings(runtime_dir, worker))
        await bus.start(rec)
        out.append((bus, rec))
    yield out[0], out[1]
    for bus, _ in out:
        await bus.close()


class App:
    """A running supervisor process (a test app script) with its JSON log lines collected."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            text = raw.decode().strip()
            if text.startswith("{"):
                self.lines.append(json.loads(text))
            else:
                self.lines.append({"event": "raw", "text": text})
            self.changed.set()

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]

    async def wait_events(self, name: str, count: int,
                          timeout: float = 20.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while len(self.events(name)) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.events(name)

    async def finish(self) -> None:
        """Kill the process if still running and read its output to the end (bounded)."""
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        # Workers may outlive a killed supervisor briefly (they drain on PDEATHSIG):
        # their end of the pipe closes when they exit.
        async with asyncio.timeout(20):
            await self.reader

    @property
    def port(self) -> int:
        return int(self.events("supervisor_started")[0]["port"])

    async def ask(self, line: bytes = b"who") -> Any:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(line + b"\n")
        await writer.drain()
        data = await reader.readline()
        writer.close()
        return json.loads(data)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of our own (no persistence) that a test may kill and restart."""

    def __init__(self, password: str = "") -> None:
        self.port = _free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe is not None, "redis-server not installed"
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no",
             *(["--requirepass", self.password] if self.password else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.1):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"redis-server exited with {self.proc.returncode}") from None
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start listening")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    yield server
    server.kill()


SHARED_URL = "redis://127.0.0.1:6379/0"


def make_settings(url: str, prefix: str, worker: int = 0, *, presence_ttl: float = 30.0,
                  refresh: float = 10.0) -> RedisBusSettings:
    return RedisBusSettings(
        url=url, key_prefix=prefix, node_id=default_node_id(worker), history_size=50,
        history_ttl=300.0, history_max_bytes=1 << 20, idempotency_window=60.0,
        presence_ttl=presence_ttl, presence_refresh_interval=refresh, request_timeout=2.0,
        connect_timeout=1.0, max_connections=8, publish_batch_max=64,
        reconnect=BackoffPolicy(initial_delay=0.05, max_delay=0.3, jitter=0.2))


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    value = f"rtbt-{uuid.uuid4().hex[:10]}"
    yield value
    client = aioredis.from_url(SHARED_URL)
    keys = [k async for k in client.scan_iter(match=f"{value}:*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def make_bus(prefix: str) -> AsyncIterator[Callable[..., object]]:
    buses: list[RedisBus] = []

    async def make(worker: int = 0, url: str = SHARED_URL, presence_ttl: float = 30.0,
                   refresh: float = 10.0, **overrides: Any) -> tuple[RedisBus, Recorder]:
        settings = make_settings(url, prefix, worker, presence_ttl=presence_ttl,
                                 refresh=refresh)
        bus = RedisBus(dataclasses.replace(settings, **overrides))
        rec = Recorder()
        await bus.start(rec)
        buses.append(bus)
        return bus, rec

    yield make
    for bus in buses:
        await bus.close()
