"""A stand-in server for the supervisor tests (run as a script, not collected by pytest).

``python tests/bus/supervisor_app.py MODE RUNTIME_DIR [WORKERS]``

Each worker binds the shared port with SO_REUSEPORT, connects an EmbeddedBus
to the hub and answers every TCP connection with one JSON line: its worker
id and pid (request line ``health``: the cluster health; ``metrics``: the
cluster metrics). On SIGTERM it stops accepting, logs ``worker_drained``
and exits 0. MODE ``crash``: every worker exits with status 3 at once.
MODE ``stuck``: workers ignore SIGTERM (drain never completes).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import sys

from rtserver.backoff import BackoffPolicy
from rtserver.bus.base import InterestSnapshot
from rtserver.bus.embedded_client import EmbeddedBus
from rtserver.bus.embedded_settings import EmbeddedBusSettings
from rtserver.bus.room_streams import HistorySettings
from rtserver.jsonlog import get_logger
from rtserver.supervisor import (
    SupervisorSettings,
    WorkerContext,
    run_supervisor,
)
from rtserver.worker_sockets import make_reuseport_socket

log = get_logger("test.worker")


class _Null:
    def on_publication(self, room: str, epoch: str, seq: int, body: bytes) -> None: ...
    def on_stream_gap(self, room: str, epoch: str, a: int, b: int, reason: str) -> None: ...
    def on_room_event(self, room: str, payload: bytes) -> None: ...
    def on_user_message(self, user: str, payload: bytes) -> None: ...
    def on_bus_state(self, health: object) -> None: ...
    def interest_snapshot(self) -> InterestSnapshot:
        return InterestSnapshot(rooms=[], users=[], presence=[])


async def _serve(mode: str, ctx: WorkerContext) -> None:
    bus = EmbeddedBus(
        EmbeddedBusSettings(socket_path=ctx.hub_socket, worker_id=ctx.worker_id,
                            request_timeout=5.0, connect_timeout=2.0,
                            reconnect=BackoffPolicy(0.05, 0.5, 0.2)),
        health_provider=lambda: {"ok": True, "pid": os.getpid()})
    await bus.start(_Null())

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readline()).strip()
        if line == b"health":
            out = json.dumps(await bus.cluster_health())
        elif line == b"metrics":
            out = json.dumps(await bus.cluster_metrics())
        else:
            out = json.dumps({"worker": ctx.worker_id, "pid": os.getpid()})
        writer.write(out.encode() + b"\n")
        await writer.drain()
        writer.close()

    sock = make_reuseport_socket(ctx.host, ctx.port, ctx.backlog)
    server = await asyncio.start_server(handle, sock=sock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if mode == "stuck":
        loop.add_signal_handler(signal.SIGTERM, lambda: log.info("ignoring_sigterm"))
    else:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    log.info("listening", port=ctx.port, pid=os.getpid())
    await stop.wait()
    server.close()
    await bus.close()
    log.info("worker_drained", pid=os.getpid())


def worker_main(mode: str, ctx: WorkerContext) -> None:
    if mode == "crash":
        log.error("worker_crashing_on_purpose")
        sys.exit(3)
    asyncio.run(_serve(mode, ctx))


if __name__ == "__main__":
    mode, runtime_dir = sys.argv[1], sys.argv[2]
    runtime_dir = "" if runtime_dir == "-" else runtime_dir
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    settings = SupervisorSettings(
        host="127.0.0.1", port=0, workers=workers, runtime_dir=runtime_dir,
        shutdown_grace=3.0, max_restarts=3, restart_window=30.0, restart_delay=0.1,
        hub_max_worker_buffer=16 * 1024 * 1024, collect_timeout=2.0, backlog=128,
        history=HistorySettings(history_size=100, history_ttl=300.0,
                                history_max_bytes=1 << 20, idempotency_window=60.0))
    sys.exit(run_supervisor(settings, functools.partial(worker_main, mode)))
