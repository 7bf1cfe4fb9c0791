"""The real server under the supervisor, for the end-to-end worker tests (run as a script).

``python tests/bus/e2e_app.py RUNTIME_DIR WORKERS [REDIS_URL KEY_PREFIX]``

Same wiring as :func:`rtserver.supervisor.serve_workers` (the shipped config
on port 0, the test JWT secret) plus one test-only HTTP route per worker:
``GET /test/poke`` calls ``node.send_to_user(E2E_POKE_USER, {"type":"poke"})``
so a test can trigger a cross-worker user message from outside.
"""

from __future__ import annotations

import functools
import os
import sys

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from rtserver.backoff import BackoffPolicy
from rtserver.bus.redis_settings import RedisBusSettings
from rtserver.bus.room_streams import HistorySettings
from rtserver.config import Config, load_config
from rtserver.supervisor import (
    SupervisorSettings,
    WorkerBusPlan,
    WorkerContext,
    build_worker_bus,
    run_supervisor,
)
from rtserver.worker_sockets import make_reuseport_socket

SECRET = "test-secret-0123456789abcdef-0123456789"


def e2e_worker(config: Config, plan: WorkerBusPlan, ctx: WorkerContext) -> None:
    import uvloop

    from rtserver import jsonlog

    jsonlog.configure(config.server.log_level)
    bus, hub = build_worker_bus(ctx, plan)
    sock = make_reuseport_socket(ctx.host, ctx.port, ctx.backlog)
    from rtserver.server import RtServer

    server = RtServer(config, worker_id=ctx.worker_id, bus=bus, sock=sock,
                      jwt_secret=SECRET, cluster_bus=hub)

    async def poke(request: Request) -> Response:
        await server.node.send_to_user(os.environ["E2E_POKE_USER"], b'{"type":"poke"}')
        body = b'{"poked":true,"worker":%d}' % ctx.worker_id
        return Response(200, "OK", Headers([("Content-Type", "application/json"),
                                            ("Content-Length", str(len(body)))]), body)

    server.http_routes["/test/poke"] = poke
    uvloop.run(server.serve_until_signal())


def main() -> int:
    runtime_dir, workers = sys.argv[1], int(sys.argv[2])
    redis_url = sys.argv[3] if len(sys.argv) > 3 else ""
    prefix = sys.argv[4] if len(sys.argv) > 4 else ""
    config = load_config(env={}, flags={
        "port": 0, "jwt_secret": SECRET,
        "fanout": os.environ.get("RTSERVER_TEST_FANOUT", "compiled")})
    reconnect = BackoffPolicy(initial_delay=config.bus.reconnect_backoff_base,
                                max_delay=config.bus.reconnect_backoff_max, jitter=0.5)
    redis = None
    if redis_url:
        redis = RedisBusSettings(
            url=redis_url, key_prefix=prefix, node_id="", history_size=config.bus.history_size,
            history_ttl=config.bus.history_ttl, history_max_bytes=config.bus.history_max_bytes,
            idempotency_window=config.bus.idempotency_window,
            presence_ttl=config.bus.presence_ttl,
            presence_refresh_interval=config.bus.presence_ttl / 3,
            request_timeout=config.bus.request_timeout, connect_timeout=2.0, max_connections=16,
            publish_batch_max=256, reconnect=reconnect)
    plan = WorkerBusPlan(request_timeout=config.bus.request_timeout, connect_timeout=2.0,
                         reconnect=reconnect, redis=redis)
    settings = SupervisorSettings(
        host="127.0.0.1", port=0, workers=workers, runtime_dir=runtime_dir,
        shutdown_grace=config.server.shutdown_grace, max_restarts=config.workers.max_restarts,
        restart_window=config.workers.restart_window, restart_delay=0.2,
        hub_max_worker_buffer=64 * 1024 * 1024, collect_timeout=2.0, backlog=1024,
        history=HistorySettings(
            history_size=config.bus.history_size, history_ttl=config.bus.history_ttl,
            history_max_bytes=config.bus.history_max_bytes,
            idempotency_window=config.bus.idempotency_window))
    return run_supervisor(settings, functools.partial(e2e_worker, config, plan))


if __name__ == "__main__":
    sys.exit(main())
