"""Supervisor: run N SO_REUSEPORT worker processes plus the embedded bus hub.

``rtserver serve --workers N`` (N > 1) calls :func:`run_supervisor`. The
supervisor process

1. reserves the listening port: it binds one placeholder socket with
   ``SO_REUSEPORT`` and never calls ``listen()`` on it. With ``port = 0`` the
   kernel picks a free port here, once, and every worker binds that same port
   (a non-listening socket receives no connections, so the kernel spreads
   connections over the workers' listening sockets only). Holding the
   placeholder also keeps the port reserved while a worker restarts.
2. runs the :class:`~rtserver.bus.embedded_server.EmbeddedBusServer` on a Unix socket in the
   runtime dir (``rtserver-<supervisor pid>.sock``, so several servers may
   share one runtime dir),
3. starts the workers with ``multiprocessing`` in *spawn* mode (a fresh
   interpreter: no inherited event loop, sockets or threads of the
   supervisor; the worker gets the validated config object pickled instead of
   re-parsing flags and environment), with worker ids ``0..N-1`` (in
   :class:`WorkerContext` and in the ``RTSERVER_WORKER_ID`` environment
   variable),
4. restarts a worker that exits (its exit status is logged), unless more than
   ``max_restarts`` restarts happened within ``restart_window`` seconds: then
   it stops every worker and returns exit code 2 with a clear message,
5. on SIGTERM or SIGINT passes SIGTERM to every worker (each drains: closes
   its connections with 1012 and exits), waits up to ``shutdown_grace``
   seconds, SIGKILLs the workers still running (logged as an error, exit code
   1), else returns 0. A second signal during the drain kills at once.
6. makes the kernel send SIGTERM to every worker if the supervisor itself dies
   (``PR_SET_PDEATHSIG``), so workers never outlive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any

from rtserver import jsonlog
from rtserver.backoff import BackoffPolicy
from rtserver.bus.base import Bus
from rtserver.bus.embedded_client import EmbeddedBus
from rtserver.bus.embedded_server import EmbeddedBusServer
from rtserver.bus.embedded_settings import EmbeddedBusServerSettings, EmbeddedBusSettings
from rtserver.bus.redis_bus import RedisBus
from rtserver.bus.redis_settings import RedisBusSettings, default_node_id, node_name
from rtserver.bus.room_streams import HistorySettings
from rtserver.config import Config, log_writer_settings, masked
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY
from rtserver.startup import EXIT_RUNTIME_DIR, StartupError
from rtserver.worker_sockets import make_reuseport_socket, remove_stale_runtime, reserve_port

__all__ = [
    "EXIT_CRASH_LOOP",
    "EXIT_DRAIN_INCOMPLETE",
    "EXIT_OK",
    "SUPERVISOR_LOG_ID",
    "SupervisorSettings",
    "WorkerBusPlan",
    "WorkerContext",
    "build_worker_bus",
    "plan_from_config",
    "run_supervisor",
    "run_worker_server",
    "serve_workers",
]

EXIT_OK = 0
#: Some worker did not exit within ``shutdown_grace`` and was killed.
EXIT_DRAIN_INCOMPLETE = 1
#: Workers kept dying: more than ``max_restarts`` restarts in ``restart_window``.
EXIT_CRASH_LOOP = 2

#: Reaping a worker whose sentinel closed: poll interval (s) and attempts (fixed,
#: not configuration: a process past its last fd close is gone within microseconds).
REAP_INTERVAL = 0.01
REAP_ATTEMPTS = 200
#: Worker id stamped on the supervisor's own log lines.
SUPERVISOR_LOG_ID = -1

_log = get_logger("rtserver.supervisor")
_M_EXITS = REGISTRY.counter(
    "rtserver_supervisor_worker_exits_total", "Worker process exits", ("worker_id", "status"))
_M_RESTARTS = REGISTRY.counter(
    "rtserver_supervisor_worker_restarts_total", "Worker processes restarted", ("worker_id",))


@dataclass(frozen=True, slots=True)
class SupervisorSettings:
    """What the supervisor needs (from config ``[server]``, ``[workers]``, ``[bus]``)."""

    host: str
    #: 0 = the supervisor picks one free port for all workers.
    port: int
    workers: int
    #: Directory of the hub's Unix socket (created 0700 if missing); "" = a fresh
    #: temporary directory, removed at exit.
    runtime_dir: str
    #: Seconds to wait for the workers to drain after SIGTERM before SIGKILL.
    shutdown_grace: float
    #: Restarts allowed within ``restart_window`` seconds before giving up (exit 2).
    max_restarts: int
    restart_window: float
    #: Seconds between a worker's exit and its restart.
    restart_delay: float
    #: Hub: bytes queued to one worker before the hub drops its connection.
    hub_max_worker_buffer: int
    #: Hub: seconds to wait for the workers' metrics/health on a cluster request.
    collect_timeout: float
    #: Listen backlog of every worker's socket (passed on in WorkerContext).
    backlog: int
    #: Bounds of the bus server's room streams ([bus] history_*, idempotency_window).
    history: HistorySettings

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers = {self.workers}. Required action: set workers >= 1")
        if self.max_restarts < 0 or self.restart_window <= 0 or self.restart_delay < 0:
            raise ValueError(
                "invalid restart limits "
                f"(max_restarts {self.max_restarts}, window {self.restart_window}, "
                f"delay {self.restart_delay}). Required action: max_restarts >= 0, "
                "restart_window > 0, restart_delay >= 0")
        if self.shutdown_grace <= 0:
            raise ValueError("shutdown_grace must be > 0. Required action: fix [workers]")


@dataclass(frozen=True, slots=True)
class WorkerContext:
    """Given to ``worker_main`` in each worker process."""

    worker_id: int
    workers: int
    host: str
    #: The resolved port (never 0): bind it with :func:`make_reuseport_socket`.
    port: int
    backlog: int
    #: Unix socket of the supervisor's bus hub (for ``EmbeddedBusSettings.socket_path``).
    hub_socket: str
    supervisor_pid: int
    #: How this worker id's previous process ended ("exit code 1", "signal SIGKILL"),
    #: None on the first start: a respawned worker raises a worker_respawned alert.
    previous_exit: str | None = None
    #: How many times the supervisor restarted this worker id before this process (the
    #: cluster document's ``restarts`` of this worker, also when asked through Redis).
    restarts: int = 0


_PR_SET_PDEATHSIG = 1


def _die_with_supervisor(ctx: WorkerContext) -> None:
    """Ask the kernel for SIGTERM (a graceful drain) when the supervisor dies.

    Without it, workers of a SIGKILLed supervisor would keep serving forever with
    no hub and nobody to stop them.
    """
    import ctypes
    import ctypes.util

    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        _log.error("pdeathsig_unavailable", message="libc not found; this worker will not "
                   "stop by itself if the supervisor is killed. Required action: stop "
                   "orphaned workers by hand after a supervisor crash")
        return
    libc = ctypes.CDLL(libc_name, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        _log.error("pdeathsig_unavailable", errno=ctypes.get_errno(),
                   message="prctl(PR_SET_PDEATHSIG) failed; this worker will not stop by "
                   "itself if the supervisor is killed. Required action: stop orphaned "
                   "workers by hand after a supervisor crash")
        return
    if os.getppid() != ctx.supervisor_pid:
        # The supervisor died before prctl took effect.
        _log.error("supervisor_gone", supervisor_pid=ctx.supervisor_pid)
        raise SystemExit(EXIT_DRAIN_INCOMPLETE)


def _child_entry(worker_main: Callable[[WorkerContext], None], ctx: WorkerContext) -> None:
    """Body of a worker process (spawned): stamp the id, run ``worker_main``."""
    os.environ["RTSERVER_WORKER_ID"] = str(ctx.worker_id)
    jsonlog.set_worker(ctx.worker_id)
    _die_with_supervisor(ctx)
    worker_main(ctx)


def _status_text(code: int | None) -> str:
    if code is None:
        return "unknown"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


class _Supervisor:
    def __init__(self, settings: SupervisorSettings,
                 worker_main: Callable[[WorkerContext], None]) -> None:
        self.s = settings
        self.worker_main = worker_main
        self.mp = multiprocessing.get_context("spawn")
        self.procs: dict[int, BaseProcess] = {}
        self.restarts: deque[float] = deque()
        self.last_exit: dict[int, str] = {}
        self.restart_counts: dict[int, int] = {}
        self.stopping = False
        self.exit_code = EXIT_OK
        self.done: asyncio.Event
        self.loop: asyncio.AbstractEventLoop
        self.port = 0
        self.hub_socket = ""
        self.restart_handles: dict[int, asyncio.TimerHandle] = {}
        self.hub: EmbeddedBusServer | None = None

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        self.done = asyncio.Event()
        placeholder = reserve_port(self.s.host, self.s.port)
        self.port = placeholder.getsockname()[1]
        runtime_dir = self.s.runtime_dir
        temporary = not runtime_dir
        try:
            remove_stale_runtime(runtime_dir or tempfile.gettempdir(), temporary)
            if temporary:
                runtime_dir = tempfile.mkdtemp(prefix=f"rtserver-{os.getpid()}-")
            else:
                os.makedirs(runtime_dir, mode=0o700, exist_ok=True)
            self.hub_socket = os.path.join(runtime_dir, f"rtserver-{os.getpid()}.sock")
            hub = EmbeddedBusServer(
                EmbeddedBusServerSettings(
                    socket_path=self.hub_socket, expected_workers=self.s.workers,
                    max_worker_buffer=self.s.hub_max_worker_buffer,
                    collect_timeout=self.s.collect_timeout, history=self.s.history),
                local_metrics=lambda: REGISTRY.render({"worker": "supervisor"}))
            await hub.start()
        except OSError as exc:
            placeholder.close()
            shown = runtime_dir or tempfile.gettempdir()
            raise StartupError(
                EXIT_RUNTIME_DIR,
                f"runtime directory {shown} is not usable ({type(exc).__name__}: {exc})",
                "make it a directory this user can write (workers.runtime_dir in the config "
                "file; empty = a fresh directory in the system temp folder, TMPDIR)") from exc
        self.hub = hub
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.on_signal, sig)
        _log.info("supervisor_started", pid=os.getpid(), host=self.s.host, port=self.port,
                  workers=self.s.workers, hub_socket=self.hub_socket)
        try:
            for wid in range(self.s.workers):
                self.spawn(wid)
            await self.done.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.loop.remove_signal_handler(sig)
            for handle in self.restart_handles.values():
                handle.cancel()
            await hub.close()
            placeholder.close()
            if temporary:
                shutil.rmtree(runtime_dir, ignore_errors=True)
        _log.info("supervisor_exit", exit_code=self.exit_code)
        return self.exit_code

    def spawn(self, wid: int) -> None:
        self.restart_handles.pop(wid, None)
        if self.stopping:
            return
        ctx = WorkerContext(worker_id=wid, workers=self.s.workers, host=self.s.host,
                            port=self.port, backlog=self.s.backlog, hub_socket=self.hub_socket,
                            supervisor_pid=os.getpid(), previous_exit=self.last_exit.get(wid),
                            restarts=self.restart_counts.get(wid, 0))
        proc = self.mp.Process(target=_child_entry, args=(self.worker_main, ctx),
                               name=f"rtserver-worker-{wid}", daemon=False)
        proc.start()
        self.procs[wid] = proc
        self.loop.add_reader(proc.sentinel, self.on_exit, wid, proc)
        _log.info("worker_started", worker_id=wid, pid=proc.pid)

    def on_exit(self, wid: int, proc: BaseProcess) -> None:
        self.loop.remove_reader(proc.sentinel)
        self.reap(wid, proc, 0)

    def reap(self, wid: int, proc: BaseProcess, attempt: int) -> None:
        # The sentinel closes as the child exits, slightly before the kernel
        # lets us reap it: poll every REAP_INTERVAL, at most REAP_ATTEMPTS times.
        proc.join(0)
        if proc.exitcode is None:
            if attempt < REAP_ATTEMPTS:
                self.loop.call_later(REAP_INTERVAL, self.reap, wid, proc, attempt + 1)
                return
            _log.error("worker_unreapable", worker_id=wid, pid=proc.pid,
                       message="the worker closed its sentinel but did not exit; killing it")
            if proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
            proc.join(REAP_INTERVAL * REAP_ATTEMPTS)
        code = proc.exitcode
        status = _status_text(code)
        _M_EXITS.inc(str(wid), status)
        if self.procs.get(wid) is proc:
            del self.procs[wid]
        if proc.exitcode is not None:
            proc.close()
        if self.stopping:
            _log.info("worker_stopped", worker_id=wid, status=status)
            if not self.procs:
                self.done.set()
            return
        _log.error("worker_exited", worker_id=wid, status=status, exit_code=code,
                   action="restarting it; check the worker's log lines above")
        self.last_exit[wid] = status
        now = time.monotonic()
        self.restarts.append(now)
        while self.restarts and now - self.restarts[0] > self.s.restart_window:
            self.restarts.popleft()
        if len(self.restarts) > self.s.max_restarts:
            _log.error(
                "crash_loop",
                message=(f"workers exited {len(self.restarts)} times within "
                         f"{self.s.restart_window}s (limit max_restarts={self.s.max_restarts}); "
                         "stopping the server. Required action: read the worker_exited lines and "
                         "the workers' errors, fix the cause, then start again"),
                last_worker=wid, last_status=status)
            self.exit_code = EXIT_CRASH_LOOP
            self.begin_shutdown("crash_loop")
            return
        _M_RESTARTS.inc(str(wid))
        self.restart_counts[wid] = self.restart_counts.get(wid, 0) + 1
        _log.warning("worker_restarting", worker_id=wid, delay=self.s.restart_delay,
                     restarts_in_window=len(self.restarts))
        self.restart_handles[wid] = self.loop.call_later(self.s.restart_delay, self.spawn, wid)

    def on_signal(self, sig: signal.Signals) -> None:
        if self.stopping:
            _log.warning("supervisor_second_signal", signal=sig.name,
                         action="killing the remaining workers now")
            self.kill_remaining()
            return
        _log.info("supervisor_signal", signal=sig.name, workers=len(self.procs),
                  grace=self.s.shutdown_grace)
        self.begin_shutdown(sig.name)

    def begin_shutdown(self, reason: str) -> None:
        self.stopping = True
        if self.hub is not None:
            self.hub.expect_disconnects()
        for handle in self.restart_handles.values():
            handle.cancel()
        self.restart_handles.clear()
        for wid, proc in self.procs.items():
            if proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                _log.info("worker_drain_requested", worker_id=wid, pid=proc.pid, reason=reason)
        if not self.procs:
            self.done.set()
            return
        self.loop.call_later(self.s.shutdown_grace, self.grace_expired)

    def grace_expired(self) -> None:
        if self.procs:
            _log.error("drain_timeout",
                       message=(f"{len(self.procs)} worker(s) still running after shutdown_grace="
                                f"{self.s.shutdown_grace}s; killing them. Required action: raise "
                                "shutdown_grace or find what blocks the drain"),
                       workers=sorted(self.procs))
            if self.exit_code == EXIT_OK:
                self.exit_code = EXIT_DRAIN_INCOMPLETE
            self.kill_remaining()
            # SIGKILLed processes are reaped within REAP_INTERVAL * REAP_ATTEMPTS; past
            # that (and one more second), stop waiting for them.
            self.loop.call_later(REAP_INTERVAL * REAP_ATTEMPTS + 1.0, self.force_done)

    def force_done(self) -> None:
        if not self.done.is_set():
            _log.error("supervisor_forced_exit", workers=sorted(self.procs),
                       message="workers still not reaped after SIGKILL; exiting anyway. "
                       "Required action: check for processes stuck in the kernel (state D)")
            self.exit_code = EXIT_DRAIN_INCOMPLETE
            self.done.set()

    def kill_remaining(self) -> None:
        for proc in self.procs.values():
            if proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
        if self.exit_code == EXIT_OK:
            self.exit_code = EXIT_DRAIN_INCOMPLETE


def run_supervisor(settings: SupervisorSettings,
                   worker_main: Callable[[WorkerContext], None],
                   loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> int:
    """Run the workers until SIGTERM/SIGINT or a crash loop; return the exit code.

    ``worker_main`` must be picklable (a module-level function, or a
    ``functools.partial`` of one with picklable arguments such as the frozen
    config): it runs in each spawned worker with its :class:`WorkerContext`.
    ``loop_factory`` selects the supervisor's loop (e.g. ``uvloop.new_event_loop``).
    """
    jsonlog.set_worker(SUPERVISOR_LOG_ID)
    sup = _Supervisor(settings, worker_main)
    runner_kwargs: dict[str, Any] = {}
    if loop_factory is not None:
        runner_kwargs["loop_factory"] = loop_factory
    with asyncio.Runner(**runner_kwargs) as runner:
        return runner.run(sup.run())


# --------------------------------------------------------------------------- server glue


@dataclass(frozen=True, slots=True)
class WorkerBusPlan:
    """How every worker builds its bus (picklable; made once from the config).

    The embedded hub connection always exists: it carries the messages when
    ``redis`` is None and the cluster ``/healthz`` and ``/metrics`` in both
    modes. With ``redis`` set, messages go through Redis (``node_id`` is
    replaced by :func:`~rtserver.bus.redis_settings.default_node_id` per worker).
    """

    #: Seconds a hub request may wait ([bus] request_timeout).
    request_timeout: float
    #: Seconds one hub connection attempt may take ([bus] connect_timeout).
    connect_timeout: float
    reconnect: BackoffPolicy
    redis: RedisBusSettings | None


def build_worker_bus(ctx: WorkerContext, plan: WorkerBusPlan) -> tuple[Bus, EmbeddedBus]:
    """``(message bus, hub client)``; the same object in embedded mode."""
    hub = EmbeddedBus(EmbeddedBusSettings(
        socket_path=ctx.hub_socket, worker_id=ctx.worker_id,
        request_timeout=plan.request_timeout, connect_timeout=plan.connect_timeout,
        reconnect=plan.reconnect))
    if plan.redis is None:
        return hub, hub
    settings = dataclasses.replace(plan.redis, node_id=default_node_id(ctx.worker_id),
                                   node_name=node_name(ctx.supervisor_pid))
    return RedisBus(settings), hub


def run_worker_server(config: Config, plan: WorkerBusPlan, jwt_secret: str,
                      sources: dict[str, str], ctx: WorkerContext) -> None:
    """Body of one worker process: the lead's RtServer on the shared port, cluster HTTP.

    ``sources``: the non-shipped keys and where they came from (``config`` log line).
    """
    import uvloop

    jsonlog.configure(config.server.log_level, writer=config.server.log_writer,
                      loop_settings=log_writer_settings(config))
    jsonlog.set_worker(ctx.worker_id)
    _log.info("config", effective=masked(config), sources=sources)
    bus, hub = build_worker_bus(ctx, plan)
    # Bound, not listening: a listening SO_REUSEPORT socket gets its share of new
    # connections at once, and they would wait in its backlog while this worker imports,
    # starts its node and joins the hub (a respawned worker: ~0.5 s of a reconnect
    # storm). The server calls listen() (server.backlog) when it starts accepting.
    sock = make_reuseport_socket(ctx.host, ctx.port)
    sock.setblocking(False)
    from rtserver.admin_cluster import WorkerIdentity
    from rtserver.server import RtServer

    server = RtServer(config, worker_id=ctx.worker_id, bus=bus, sock=sock,
                      jwt_secret=jwt_secret, cluster_bus=hub, previous_exit=ctx.previous_exit,
                      identity=WorkerIdentity(node_name(ctx.supervisor_pid), ctx.restarts))
    uvloop.run(server.serve_until_signal())
    jsonlog.flush()  # the lines the loop buffered last (atexit would too; this is the normal path)


def plan_from_config(config: Config) -> tuple[SupervisorSettings, WorkerBusPlan]:
    """The supervisor settings and the workers' bus plan from the configuration."""
    w, b, s = config.workers, config.bus, config.server
    rc = BackoffPolicy(initial_delay=b.reconnect_backoff_base,
                         max_delay=b.reconnect_backoff_max, jitter=b.reconnect_jitter)
    redis = RedisBusSettings(
        url=b.redis_url, key_prefix=b.redis_key_prefix, node_id="", history_size=b.history_size,
        history_ttl=b.history_ttl, history_max_bytes=b.history_max_bytes,
        idempotency_window=b.idempotency_window,
        presence_ttl=b.presence_ttl, presence_refresh_interval=b.presence_refresh_interval,
        request_timeout=b.request_timeout, connect_timeout=b.connect_timeout,
        max_connections=b.redis_max_connections, publish_batch_max=b.publish_batch_max,
        reconnect=rc) if b.redis_url else None
    plan = WorkerBusPlan(request_timeout=b.request_timeout, connect_timeout=b.connect_timeout,
                         reconnect=rc, redis=redis)
    settings = SupervisorSettings(
        host=s.host, port=s.port, workers=w.count, runtime_dir=w.runtime_dir,
        shutdown_grace=w.shutdown_grace, max_restarts=w.max_restarts,
        restart_window=w.restart_window, restart_delay=w.restart_delay,
        hub_max_worker_buffer=w.hub_max_worker_buffer, collect_timeout=w.collect_timeout,
        backlog=s.backlog, history=HistorySettings(
            history_size=b.history_size, history_ttl=b.history_ttl,
            history_max_bytes=b.history_max_bytes, idempotency_window=b.idempotency_window))
    return settings, plan


def serve_workers(config: Config, settings: SupervisorSettings, plan: WorkerBusPlan, *,
                  sources: dict[str, str]) -> int:
    """``rtserver serve --workers N``: run the supervisor with real server workers.

    The JWT secret is resolved once here (``--dev`` generates one throw-away
    secret shared by every worker, so a token is valid on all of them).
    """
    import uvloop

    from rtserver.startup import resolve_secret

    jsonlog.set_worker(SUPERVISOR_LOG_ID)  # its first lines too (log_seq counts per process)
    jsonlog.configure(config.server.log_level, writer=config.server.log_writer,
                      loop_settings=log_writer_settings(config))
    secret = resolve_secret(config)
    main = functools.partial(run_worker_server, config, plan, secret, sources)
    status = run_supervisor(settings, main, loop_factory=uvloop.new_event_loop)
    jsonlog.flush()
    return status
