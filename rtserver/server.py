"""The asyncio/websockets layer: listening socket, HTTP endpoints, connection loop, drain.

Holds no business rules: bytes in go to :meth:`Node.handle_frame`, bytes out
leave through the node's fan-out core.

HTTP on the WebSocket port (``process_request``): ``GET /healthz`` (JSON,
503 when degraded) and ``GET /metrics`` (Prometheus text), both to the client
networks of ``admin.status_allow``; ``/admin/`` (the console and the admin
routes, rtserver/admin_http.py); ``/client/`` (static_files.py). Any other
path is 404; the WebSocket endpoint is ``server.ws_path``.
"""

from __future__ import annotations

import asyncio
import http
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from rtserver import jsonlog
from rtserver.admin_cluster import WorkerIdentity
from rtserver.admin_http import AdminHttp
from rtserver.admin_status import register_process_metrics
from rtserver.admission import Admission
from rtserver.bus.base import Bus, BusHealth, BusUnavailable, InterestSnapshot
from rtserver.bus.embedded_client import EmbeddedBus
from rtserver.bus.local import LocalBus
from rtserver.cluster_feed import ClusterFeed
from rtserver.config import Config, log_writer_settings, masked
from rtserver.connection import ConnState
from rtserver.fanout import load_fanout, load_frames
from rtserver.forwarded import CLIENT_ADDRESS, TrustedProxies
from rtserver.gc_tuning import tune_gc
from rtserver.metrics import REGISTRY
from rtserver.node import Node
from rtserver.plugin import DomainPlugin, load_domain_classes
from rtserver.router import HttpRoute
from rtserver.rt_connection import AuthTurns, RtConnection
from rtserver.startup import bind_failure, resolve_secret
from rtserver.static_files import StaticFiles
from rtserver.tls import server_ssl_context, server_tls_options
from rtserver.ws_server import WsServer, WsSettings
from rtserver.ws_slim import ConnectionLogger

__all__ = ["RtServer", "run_server"]

log = jsonlog.get_logger("rtserver.server")
ADMISSION_REFUSED = REGISTRY.counter(
    "rtserver_handshakes_refused_total", "WebSocket handshakes refused before the upgrade",
    ("reason",))


def _response(status: http.HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store")])
    return Response(status.value, status.phrase, headers, body)


class _HubStateHandler:
    """BusHandler of a hub connection used only for cluster status (Redis mode)."""

    def __init__(self, on_state: Callable[[BusHealth], None]) -> None:
        self._on_state = on_state

    def on_publication(self, room: str, epoch: str, seq: int, body: bytes) -> None:
        """Never called: this connection declares no interest."""

    def on_stream_gap(self, room: str, epoch: str, from_seq: int, to_seq: int,
                      reason: str) -> None:
        """Never called: this connection declares no interest."""

    def on_room_event(self, room: str, payload: bytes) -> None:
        """Never called: this connection declares no interest."""

    def on_user_message(self, user: str, payload: bytes) -> None:
        """Never called: this connection declares no interest."""

    def on_bus_state(self, health: BusHealth) -> None:
        """The hub connection degraded or recovered."""
        self._on_state(health)

    def interest_snapshot(self) -> InterestSnapshot:
        """Nothing to re-declare: this connection carries cluster status only."""
        return InterestSnapshot(rooms=[], users=[], presence=[])


# The logger of every connection's Sans-I/O protocol (rtserver/ws_slim.py).
_WS_LOGGER = ConnectionLogger()


class RtServer:
    """One worker: the node plus its websockets server."""

    def __init__(self, config: Config, *, worker_id: int = 0, bus: Bus | None = None,
                 domains: Sequence[type[DomainPlugin]] | None = None,
                 jwt_secret: str | None = None,
                 sock: socket.socket | None = None,
                 store: Any = None,
                 http_routes: dict[str, HttpRoute] | None = None,
                 cluster_bus: EmbeddedBus | None = None,
                 previous_exit: str | None = None,
                 identity: WorkerIdentity | None = None) -> None:
        """One worker. Under the supervisor, ``cluster_bus`` is the connection to the embedded
        bus server
        (the message bus itself, or only the cluster status channel when ``bus`` is
        Redis): ``/healthz`` and ``/metrics`` then answer for every worker
        (``?scope=worker`` for this one), and ``previous_exit`` (how this worker id's
        previous process ended) raises a ``worker_respawned`` alert at start; ``identity``
        (its node and restarts, from the supervisor; None: a process of its own).

        ``domains``: the domain plugin classes to run (default: the ones named in
        ``[domains] enabled``; ``[]`` runs the real-time core alone)."""
        self.config = config
        self.worker_id = worker_id
        self.sock = sock
        fanout_module = load_fanout(config.fanout.implementation)
        self.frames = load_frames(config.fanout.implementation)
        secret = jwt_secret if jwt_secret is not None else resolve_secret(config)
        if domains is None:
            domains = load_domain_classes(config.domains.enabled)
        self.node = Node(config,
                         bus if bus is not None else LocalBus.from_config(config.bus),
                         fanout_module,
                         domains, worker_id, secret, store=store)
        self.http_routes: dict[str, HttpRoute] = {**self.node.router.http_routes,
                                                  **(http_routes or {})}
        self.ingress: Any = None
        self.redis_ingress: Any = None
        self._owns_store = False
        self.static_files = StaticFiles(dev=config.server.dev)
        self.cluster_bus = cluster_bus
        self.previous_exit = previous_exit
        register_process_metrics()
        if cluster_bus is not None:
            cluster_bus.set_status_providers(
                lambda: REGISTRY.render({"worker": str(self.worker_id)}), self.node.health)
        self.admission = Admission(config.server, time.monotonic())
        # This server's connection class: its admission and admitted table (class-level).
        self._connection_class = type("RtConnection", (RtConnection,), {
            "__slots__": (), "admission": self.admission, "admitted": {}, "rt": self})
        #: Authentications at once (server.max_concurrent_auth).
        self.auth_turns = AuthTurns(config.server.max_concurrent_auth)
        #: The tasks handling connections' frames now (awaited by :meth:`stop`).
        self.connection_tasks: set[asyncio.Task[None]] = set()
        self.admission.register_metrics()
        self.trusted_proxies = TrustedProxies(config.server.trusted_proxies)
        self.ssl_context = server_ssl_context(config.server.certfile, config.server.keyfile)
        self.admin = AdminHttp(config, self.node, worker_id, cluster_bus, self.http_routes,
                               self._origin_admitted, jwt_secret=secret,
                               identity=identity or WorkerIdentity.own_process())
        #: The console's cluster pushes (start_cluster): one collection per interval.
        self.cluster_feed = ClusterFeed(self.node, config.admin.refresh_seconds,
                                        self.admin.collect_cluster)
        self.cluster_feed.install(self.node.router)
        self._refusals = jsonlog.SummaryLog(log, "handshakes_refused")
        for warning in self.admission.origins.warnings:
            log.warning("allowed_origins_any", note=warning)
        self.server: WsServer | None = None
        self.port: int | None = None
        self._stopping: asyncio.Event | None = None

    # ------------------------------------------------------------ HTTP

    def process_request(self, connection: RtConnection,
                        request: Request) -> Response | Awaitable[Response | None] | None:
        """The opening handshake's request: admission (at once) for the WebSocket path,
        an HTTP endpoint (awaited) for any other."""
        path = urlsplit(request.path).path
        if path == self.config.server.ws_path:
            return self._admit(connection, request)
        return self._http_request(connection, request, path)

    async def _http_request(self, connection: RtConnection, request: Request,
                            path: str) -> Response | None:
        remote = connection.remote_address
        address: str | None = None
        if remote:
            address, _ = self.trusted_proxies.client_address(
                str(remote[0]), request.headers.get_all("X-Forwarded-For"))
        if path in ("/healthz", "/metrics") and not self.admin.status_allowed(address):
            return self.admin.status_refused(path, address)
        if self.cluster_bus is not None and parse_qs(urlsplit(request.path).query).get(
                "scope") != ["worker"] and path in ("/healthz", "/metrics"):
            return await self._cluster_status(path)
        if path == "/healthz":
            doc = self.node.health()
            status = http.HTTPStatus.OK if doc["status"] == "ok" else (
                http.HTTPStatus.SERVICE_UNAVAILABLE)
            return _response(status, orjson.dumps(doc), "application/json")
        if path == "/metrics":
            text = REGISTRY.render({"worker": str(self.worker_id)})
            return _response(http.HTTPStatus.OK, text.encode(), "text/plain; version=0.0.4")
        admin = await self.admin.response(path, request, address)
        if admin is not None:
            return admin
        route = self.http_routes.get(path)
        if route is not None:
            return await route(request)
        static = self.static_files.response(path, request.headers)
        if static is not None:
            return static
        body = orjson.dumps({"error": "not_found", "message": f"no endpoint at {path}",
                             "action": f"Required action: connect WebSockets to "
                             f"{self.config.server.ws_path}; HTTP serves /healthz and /metrics"})
        return _response(http.HTTPStatus.NOT_FOUND, body, "application/json")

    def _origin_admitted(self, origin: str, host: str | None) -> bool:
        """Whether a browser page of ``origin`` (served as ``host``) may open a WebSocket."""
        return not self.admission.page_origins([origin], host) or (
            self.admission.origins.allows(origin))

    def _admit(self, connection: RtConnection, request: Request) -> Response | None:
        """Admission before the upgrade (rtserver/admission.py): None admits."""
        remote = connection.remote_address
        peer = str(remote[0]) if remote else "unknown"
        address, outcome = self.trusted_proxies.client_address(
            peer, request.headers.get_all("X-Forwarded-For"))
        CLIENT_ADDRESS.inc(outcome)
        connection.forwarded_client = address if outcome == "forwarded" else None
        if outcome not in ("direct", "forwarded"):
            log.debug("forwarded_for_not_used", peer=peer, outcome=outcome, client=address)
        origins = self.admission.page_origins(request.headers.get_all("Origin"),
                                              request.headers.get("Host"))
        refusal = self.admission.check(
            origins, address, time.monotonic(),
            self.node.hub.state_counts[ConnState.CONNECTING])
        if refusal is None:
            connection.admitted[connection] = address
            connection.handshaking = True
            return None
        ADMISSION_REFUSED.inc(refusal.reason)
        self._refusals.note(refusal.reason, time.monotonic(),
                            self.config.limits.client_error_log_interval)
        response = _response(http.HTTPStatus(refusal.status), orjson.dumps(
            {"error": refusal.reason, "message": refusal.message, "action": refusal.action}),
            "application/json")
        if refusal.retry_after is not None:
            response.headers["Retry-After"] = str(refusal.retry_after)
        return response

    async def _cluster_status(self, path: str) -> Response:
        """/healthz or /metrics for every worker, collected through the bus hub; this
        worker's own view (with the reason) when the hub cannot answer."""
        assert self.cluster_bus is not None
        if path == "/healthz":
            try:
                doc = await self.cluster_bus.cluster_health()
            except BusUnavailable as exc:
                doc = {"status": "degraded",
                       "reasons": [f"cluster status unavailable: {exc}"],
                       "workers": {str(self.worker_id): self.node.health()}}
            doc["answered_by"] = self.worker_id
            status = http.HTTPStatus.OK if doc["status"] == "ok" else (
                http.HTTPStatus.SERVICE_UNAVAILABLE)
            return _response(status, orjson.dumps(doc), "application/json")
        try:
            text = await self.cluster_bus.cluster_metrics()
        except BusUnavailable as exc:
            log.error("cluster_metrics_unavailable", error=str(exc))
            text = REGISTRY.render({"worker": str(self.worker_id)}) + (
                "# HELP rtserver_cluster_metrics_unavailable 1 when only this worker's "
                "metrics could be served\n"
                "# TYPE rtserver_cluster_metrics_unavailable gauge\n"
                "rtserver_cluster_metrics_unavailable 1\n")
        return _response(http.HTTPStatus.OK, text.encode(), "text/plain; version=0.0.4")

    # ------------------------------------------------------------ lifecycle

    async def _start_database(self) -> None:
        """Open the store, check the schema, start connection records and the ingress."""
        from rtserver.ingress.dispatch import IngressDispatcher
        from rtserver.ingress.postgres_notify import IngressListener
        from rtserver.store.postgres import Store
        from rtserver.store.recorder import ConnectionRecorder

        db = self.config.database
        node = self.node
        dispatcher = IngressDispatcher(node, node.router)
        bus_cfg = self.config.bus
        if bus_cfg.redis_url:
            from rtserver.ingress.redis_list import RedisIngress

            self.redis_ingress = RedisIngress(
                bus_cfg.redis_url, bus_cfg.ingress_key, dispatcher.carry_out,
                decoder=dispatcher.decoder, block_timeout=bus_cfg.ingress_block_timeout,
                lock_ttl=bus_cfg.ingress_lock_ttl,
                backoff_base=bus_cfg.reconnect_backoff_base,
                backoff_max=bus_cfg.reconnect_backoff_max, jitter=bus_cfg.reconnect_jitter,
                on_state_change=lambda ok, reason: node.set_degraded("redis_ingress", not ok,
                                                                     reason))
            self.redis_ingress.start()
        if not db.dsn:
            if node.store is not None:
                log.info("features", database=True, note="store given by the embedding code")
                return
            log.warning("features", database=False,
                        inactive=["connection records", "notifications", "quotes",
                                  "analytics", "admin dashboards", "alerts storage",
                                  "ingress (LISTEN/NOTIFY)"],
                        action="Required action: start with --database postgresql://... "
                        "(RTSERVER_DATABASE) to enable them")
            return
        store = Store(dsn=db.dsn, pool_min_size=db.pool_min_size, pool_max_size=db.pool_max_size,
                      pool_acquire_timeout=db.pool_acquire_timeout,
                      pool_max_inactive_lifetime=db.pool_max_inactive_lifetime,
                      connect_timeout=db.connect_timeout, statement_timeout=db.statement_timeout,
                      command_timeout=db.command_timeout,
                      application_name=f"rtserver-worker-{self.worker_id}")
        await store.open()
        try:
            await store.check_schema()
        except Exception:
            await store.close()
            raise
        node.store = store
        self._owns_store = True
        node.recorder = ConnectionRecorder(
            store, worker=self.worker_id, flush_interval=db.record_flush_interval,
            max_queued=db.record_max_queued, batch_max=db.record_batch_max,
            retry_backoff_base=db.retry_backoff_base, retry_backoff_max=db.retry_backoff_max,
            on_state_change=lambda ok, reason: node.set_degraded("database", not ok, reason),
            activity_interval=db.record_activity_interval)
        node.recorder.start()
        self.ingress = IngressListener(
            db.dsn, db.ingress_channel, dispatcher, decoder=dispatcher.decoder,
            connect_timeout=db.connect_timeout, keepalive_interval=db.ingress_keepalive_interval,
            reconnect_backoff_base=db.retry_backoff_base,
            reconnect_backoff_max=db.retry_backoff_max, max_pending=db.ingress_max_pending,
            elect_leader=True, standby_retry_interval=db.ingress_standby_retry_interval,
            on_state_change=lambda ok, reason: node.set_degraded("ingress", not ok, reason))
        self.ingress.start()
        log.info("features", database=True,
                 active=["connection records", "notifications", "quotes", "analytics",
                         "admin dashboards", "alerts storage", "ingress (LISTEN/NOTIFY)"],
                 ingress_channel=db.ingress_channel)

    async def _stop_database(self) -> None:
        node = self.node
        if self.redis_ingress is not None:
            await self.redis_ingress.close()
            self.redis_ingress = None
        if self.ingress is not None:
            await self.ingress.close()
            self.ingress = None
        if node.recorder is not None:
            report = await node.recorder.close()
            log.info("connection_records_closed", report=report)
            node.recorder = None
        if node.store is not None and self._owns_store:
            await node.store.close()
            node.store = None

    async def start(self) -> None:
        """Start the node and the database features, then listen."""
        cfg = self.config
        node = self.node
        if self.cluster_bus is not None and self.cluster_bus is not node.bus:
            await self.cluster_bus.start(_HubStateHandler(
                lambda h: node.set_degraded("bus:hub", not h.ok, h.reason)))
        await self.node.start()
        await self._start_database()
        await self.node.start_domains()
        self.server = WsServer(self._connection_class, WsSettings(
            max_size=cfg.server.max_message_bytes, max_queue=cfg.server.max_incoming_queue,
            open_timeout=cfg.server.open_timeout, close_timeout=cfg.server.close_timeout,
            compression=cfg.server.compression, server_header="rtserver", logger=_WS_LOGGER,
            frames=self.frames))
        # WebSocket pings are sent by the node's heartbeat sweep, not by a timer per
        # connection; the backlog is passed again with a given socket (asyncio calls
        # listen() again, default 100).
        try:
            await self.server.listen(cfg.server.host, cfg.server.port, sock=self.sock,
                                     backlog=cfg.server.backlog,
                                     ssl_options=server_tls_options(self.ssl_context, cfg.server))
        except OSError as exc:
            raise bind_failure(cfg.server.host, cfg.server.port, exc) from exc
        sockets = list(self.server.sockets)
        self.port = sockets[0].getsockname()[1]
        if self.ssl_context is not None:
            log.info("fanout_tls", note="fanout: TLS connections use the transport path")
        log.lifecycle("listening", host=cfg.server.host, port=self.port,
                 ws_path=cfg.server.ws_path, worker=self.worker_id,
                 fanout=self.node.fanout_module.__name__, bus=self.node.bus.kind,
                 tls=self.ssl_context is not None)
        if self.previous_exit is not None:
            await self.node.raise_alert(
                "worker_respawned", "high",
                f"worker {self.worker_id} was restarted after its previous process ended "
                f"({self.previous_exit})",
                {"worker": self.worker_id, "previous_exit": self.previous_exit})

    async def stop(self, code: int = 1012, reason: str = "service restart") -> None:
        """Stop accepting, close every connection with ``code``, wait for the drain."""
        if self.server is None:
            return
        log.lifecycle("draining", connections=len(self.node.hub.connections), close_code=code,
                 grace=self.config.server.shutdown_grace)
        self.node.fanout.flush()
        for conn in list(self.node.hub.connections.values()):
            if conn.state not in (ConnState.CLOSING, ConnState.CLOSED):
                self.node.hub.set_state(conn, ConnState.CLOSING, reason, code)
        self.server.close(code, reason)
        try:
            await asyncio.wait_for(self._drained(), self.config.server.shutdown_grace)
        except TimeoutError:
            left = len(self.node.hub.connections)
            log.error("drain_timeout", connections_left=left,
                      grace=self.config.server.shutdown_grace,
                      action="Required action: raise server.shutdown_grace if clients need "
                      "longer to close")
            for ws in list(self.server.connections):
                ws.transport.abort()
            try:
                # The aborted connections end at once; their handling (each one's
                # connection_closed) gets server.close_timeout more.
                await asyncio.wait_for(self._drained(), self.config.server.close_timeout)
            except TimeoutError:
                log.error("drain_tasks_timeout", tasks_left=len(self.connection_tasks),
                          timeout=self.config.server.close_timeout,
                          action="Required action: report it; a connection's handling did "
                          "not finish (the bus or the database hung)")
        await self.cluster_feed.close()
        await self.node.stop_domains()
        await self.node.close()
        await self._stop_database()
        if self.cluster_bus is not None and self.cluster_bus is not self.node.bus:
            await self.cluster_bus.close()
        self.server = None
        log.lifecycle("stopped")

    async def _drained(self) -> None:
        """Every TCP connection ended and every connection's handling finished."""
        assert self.server is not None
        await self.server.wait_closed()
        while self.connection_tasks:
            await asyncio.gather(*self.connection_tasks, return_exceptions=True)

    async def serve_until_signal(self) -> None:
        """Run until SIGTERM or SIGINT, then drain with 1012."""
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        self._stopping = stopping
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        await self.start()
        tune_gc(self.config.server.gc_young_threshold)
        await stopping.wait()
        await self.stop()

    def _on_signal(self, sig: signal.Signals) -> None:
        log.lifecycle("signal", signal=sig.name)
        if self._stopping is not None:
            self._stopping.set()


def run_server(config: Config, worker_id: int = 0, sock: socket.socket | None = None, *,
               sources: Mapping[str, str]) -> int:
    """Run one worker on uvloop until a signal; returns the exit status.

    ``sources`` (dotted key -> where its value came from, only the keys not
    taken from the shipped file) goes into the ``config`` log line. A failure
    to listen raises :class:`~rtserver.startup.StartupError`.
    """
    import uvloop

    jsonlog.configure(config.server.log_level, writer=config.server.log_writer,
                      loop_settings=log_writer_settings(config))
    jsonlog.set_worker(worker_id)
    log.lifecycle("config", effective=masked(config), sources=dict(sources))
    if config.fanout.implementation == "python":
        log.warning("fanout_python_reference",
                    note="the pure-Python fan-out reference was selected explicitly; it is "
                    "slower than the compiled core")
    server = RtServer(config, worker_id=worker_id, sock=sock)
    uvloop.run(server.serve_until_signal())
    jsonlog.flush()  # the lines the loop buffered last (atexit would too; this is the normal path)
    return 0
