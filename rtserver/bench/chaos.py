"""``rtserver bench chaos``: real faults against a running cluster, and the stream invariant.

Topologies: ``embedded`` (one ``rtserver serve --workers 2``) or ``redis`` (two
``rtserver serve`` nodes sharing a private ``redis-server`` on a free loopback port,
``--save "" --appendonly no``). Reconnecting, stream-tracking clients
(:mod:`rtserver.bench.chaos_clients`) subscribe to rooms; publishers publish with keys
at ``--publish-rate``; a seeded schedule injects faults (:mod:`rtserver.bench.chaos_faults`):

* ``worker_kill``: SIGKILL of a worker (the supervisor respawns it);
* ``bus_cut``: embedded: every worker's hub connection shut down from outside;
  redis: ``CLIENT KILL`` of every node connection (pub/sub included);
* ``redis_restart`` (redis only): SIGKILL of redis-server and a new one on the same
  port (all data lost: new epochs);
* ``client_abort``: some clients' TCP connections reset (RST), they reconnect with since;
* ``slow_consumer``: a client stops reading while its room gets a burst, until the
  server closes it with 1013 (seen in ``rtserver_slow_consumers_total``); it reads
  again, sees the close and reconnects with since.

After ``--duration`` the faults stop, every client is waited for, every publication
is acknowledged, each room gets a final publication that every stream must reach, and
:mod:`rtserver.bench.chaos_check` checks the invariant. ``--check``: exit 1 on any
silent gap, duplicate, reordering or inconsistency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import uvloop

from rtserver.bench.chaos_check import check_streams
from rtserver.bench.chaos_clients import ChaosClients, Client, Endpoint
from rtserver.bench.chaos_faults import (
    ChaosError,
    RedisServer,
    cut_hub_connections,
    free_port,
    hub_connection_fds,
    listening_workers,
    pid_alive,
    redis_cut_clients,
    worker_pids,
)
from rtserver.bench.connection import STATE_NAMES
from rtserver.bench.report import machine_info, write_report
from rtserver.bench.spawn import bench_server_config
from rtserver.bench.streams import FullJitterBackoff, StreamTracker
from rtserver.bench.targets import RUN_STAMP, Target, TargetError
from rtserver.bench.tokens import SECRET_ENV, mint, user_id

__all__ = ["CHAOS_CONFIG_OVERRIDES", "FAULT_KINDS", "add_arguments", "run"]

FAULT_KINDS = {
    "embedded": ["worker_kill", "bus_cut", "client_abort", "slow_consumer"],
    "redis": ["worker_kill", "bus_cut", "redis_restart", "client_abort", "slow_consumer"],
}

#: Keys changed (on top of the bench overrides) in the spawned servers' config:
#: a small outbound buffer so one burst makes a slow consumer, and a history whose
#: bytes fit in that buffer (a replay larger than the buffer would close the
#: recovering client with 1013 on every reconnect); restarts are the point of the
#: run, so the crash-loop guard must not stop the server.
CHAOS_CONFIG_OVERRIDES: dict[str, str] = {
    "outbound_buffer_limit": "262144",
    "history_max_bytes": "131072",
    "max_restarts": "1000",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``chaos`` argument group of ``rtserver bench``."""
    g = p.add_argument_group("chaos scenario (with --duration, --drain-timeout, --report, "
                             "--check)")
    g.add_argument("--seed", type=int, default=1, help="seed of every random choice (default 1)")
    g.add_argument("--topology", choices=sorted(FAULT_KINDS), default="embedded",
                   help="embedded: serve --workers 2; redis: two nodes and a private "
                   "redis-server (default embedded)")
    g.add_argument("--clients", type=int, default=20, help="receiving clients (default 20)")
    g.add_argument("--rooms", type=int, default=5, help="rooms (default 5)")
    g.add_argument("--rooms-per-client", type=int, default=2,
                   help="rooms each client subscribes to (default 2)")
    g.add_argument("--chaos-publishers", type=int, default=3,
                   help="publisher clients, each subscribed to every room (default 3)")
    g.add_argument("--publish-rate", type=float, default=20.0,
                   help="publications per second over all rooms (default 20)")
    g.add_argument("--fault-interval", type=float, default=3.0,
                   help="mean seconds between faults (default 3)")
    g.add_argument("--reconnect-min", type=float, default=0.05,
                   help="reconnect backoff: first cap in seconds (default 0.05)")
    g.add_argument("--reconnect-max", type=float, default=2.0,
                   help="reconnect backoff: largest cap in seconds (default 2)")
    g.add_argument("--slow-burst-bytes", type=int, default=6 << 20,
                   help="bytes published to the slow consumer's room in a burst (default "
                   "6 MiB: more than the kernel socket buffers hold)")
    g.add_argument("--fault-timeout", type=float, default=15.0,
                   help="seconds a fault may take to show (slow consumer closed, default 15)")


def _config(report_dir: Path, runtime_dir: str) -> Path:
    """The bench config with :data:`CHAOS_CONFIG_OVERRIDES` and the runtime dir."""
    text = bench_server_config(report_dir).read_text()
    for key, value in {**CHAOS_CONFIG_OVERRIDES, "runtime_dir": f'"{runtime_dir}"'}.items():
        text, n = re.subn(rf"(?m)^{re.escape(key)}\s*=.*$", f"{key} = {value}", text)
        if n != 1:
            raise TargetError(f"rtserver.toml: expected one `{key} = ...` line, found {n}. "
                              "Required action: update CHAOS_CONFIG_OVERRIDES in "
                              "rtserver/bench/chaos.py")
    out = report_dir / "rtserver-chaos.toml"
    out.write_text(text)
    return out


class ChaosRun:
    """One run: servers, clients, the fault schedule and the final check."""

    def __init__(self, args: argparse.Namespace, report_dir: Path) -> None:
        """``args``: the parsed ``rtserver bench`` options; ``report_dir``: absolute."""
        self.a = args
        self.report_dir = report_dir
        self.rng = random.Random(args.seed)
        self.duration = 120.0 if args.duration is None else float(args.duration)
        self.targets: list[Target] = []
        self.redis: RedisServer | None = None
        self.runtime_dir = tempfile.mkdtemp(prefix="rtchaos-")
        self.faults: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        self.fault_log: list[dict[str, Any]] = []
        self.rooms = [f"bench:chaos-{i}" for i in range(args.rooms)]
        self.slow_room = "bench:chaos-slow"
        self.clients: ChaosClients | None = None

    # ------------------------------------------------------------ topology
    async def start_servers(self) -> list[Endpoint]:
        """Start redis-server (redis topology) and the rtserver processes; their endpoints."""
        cfg = _config(self.report_dir, self.runtime_dir)
        base = [sys.executable, "-m", "rtserver", "serve", "--host", "127.0.0.1", "--port",
                "0", "--config", str(cfg)]
        if self.a.topology == "embedded":
            self.targets = [Target("chaos-embedded", "spawn", workers=2,
                                   argv=[*base, "--workers", "2"], log_dir=self.report_dir,
                                   start_timeout=self.a.start_timeout,
                                   stop_timeout=self.a.stop_timeout)]
        else:
            self.redis = RedisServer(free_port(), self.report_dir, self.a.start_timeout)
            await self.redis.start()
            self.targets = [Target(f"chaos-node{i}", "spawn", workers=1,
                                   argv=[*base, "--workers", "1", "--redis", self.redis.url],
                                   log_dir=self.report_dir, start_timeout=self.a.start_timeout,
                                   stop_timeout=self.a.stop_timeout) for i in range(2)]
        for t in self.targets:
            await t.start()
            # The port is known from the first worker's line; clients go to every worker
            # only once all of them listen.
            deadline = time.monotonic() + self.a.start_timeout
            while len(listening_workers(self._log_path(t))) < t.workers:
                if time.monotonic() > deadline:
                    raise TargetError(f"{t.name}: not every worker logged 'listening' within "
                                      f"{self.a.start_timeout:g} s. Required action: read "
                                      f"{self._log_path(t)}")
                await asyncio.sleep(0.05)
        return [Endpoint("127.0.0.1", t.port, t.name) for t in self.targets]

    def _log_path(self, t: Target) -> Path:
        assert t.log_dir is not None
        return t.log_dir / f"server-{t.name}-{RUN_STAMP}.log"

    async def stop_servers(self) -> None:
        """SIGTERM (then SIGKILL) the servers, kill redis-server, remove the runtime dir."""
        for t in self.targets:
            await t.stop()
        if self.redis is not None:
            await self.redis.kill()
        shutil.rmtree(self.runtime_dir)

    # ------------------------------------------------------------ clients
    def make_clients(self, loop: asyncio.AbstractEventLoop, eps: list[Endpoint]) -> ChaosClients:
        """Receivers, publishers and the slow client, spread over ``eps`` round-robin."""
        backoff = FullJitterBackoff(self.a.reconnect_min, self.a.reconnect_max,
                                    random.Random(self.rng.random()))
        retry = FullJitterBackoff(self.a.reconnect_min, self.a.reconnect_max,
                                  random.Random(self.rng.random()))
        cc = ChaosClients(loop, backoff, retry, random.Random(self.rng.random()))
        secret = os.environ[SECRET_ENV]
        n = 0

        def add(rooms: list[str], is_pub: bool, rcvbuf: int = 0) -> Client:
            nonlocal n
            tok = mint(secret, user_id(n), self.a.token_ttl)
            cl = Client(n, eps[n % len(eps)], f"/ws?token={tok}", StreamTracker(rooms),
                        is_pub=is_pub, rcvbuf=rcvbuf)
            n += 1
            cc.add(cl)
            return cl

        k = min(self.a.rooms_per_client, len(self.rooms))
        for _ in range(self.a.clients):
            add(self.rng.sample(self.rooms, k), False)
        # The first publisher also takes the slow room (its bursts and final publication).
        for i in range(self.a.chaos_publishers):
            add([*self.rooms, self.slow_room] if i == 0 else list(self.rooms), True)
        self.slow = add([self.slow_room], False, rcvbuf=4096)
        return cc

    async def wait(self, what: str, cond: Any, timeout: float) -> bool:
        """Wait (on client events, bounded) until ``cond()``; False on timeout."""
        cc = self.clients
        assert cc is not None
        deadline = time.monotonic() + timeout
        while not cond():
            left = deadline - time.monotonic()
            if left <= 0:
                sys.stderr.write(f"bench chaos: timed out after {timeout:g} s waiting for "
                                 f"{what}\n")
                return False
            cc.changed.clear()
            # Woken by any client event, or after at most 0.5 s to re-check the time.
            waiter = asyncio.ensure_future(cc.changed.wait())
            _, pending = await asyncio.wait({waiter}, timeout=min(left, 0.5))
            for w in pending:
                w.cancel()
        return True

    # ------------------------------------------------------------ faults
    def _fault(self, kind: str, **detail: Any) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1
        rec = {"t": round(time.monotonic() - self.t0, 3), "kind": kind, **detail}
        self.fault_log.append(rec)
        sys.stderr.write(f"bench chaos: fault {orjson.dumps(rec).decode()}\n")

    async def inject(self, kind: str) -> None:
        """Inject one fault of ``kind`` (counted when it happened, else as skipped)."""
        cc = self.clients
        assert cc is not None
        if kind == "worker_kill":
            t = self.rng.choice(self.targets)
            wid = self.rng.randrange(t.workers)
            # A worker killed by the previous fault may not be back yet: wait for its
            # new pid (the supervisor logs worker_started when it spawns it).
            pid = await self._poll(f"worker {wid} of {t.name} to run", lambda: _live_worker(
                self._log_path(t), wid))
            if pid is None:
                return self._skipped(kind)
            os.kill(pid, signal.SIGKILL)
            self._fault(kind, node=t.name, worker=wid, pid=pid)
        elif kind == "bus_cut":
            if self.redis is not None:
                self._fault(kind, redis_clients_killed=await redis_cut_clients(self.redis.port))
            else:
                t = self.targets[0]
                assert t.proc is not None
                sup = t.proc.pid
                sock = os.path.join(self.runtime_dir, f"rtserver-{sup}.sock")
                # Every worker back on the hub (after a previous cut or a respawn) first.
                if await self._poll("every worker on the hub", lambda: len(
                        hub_connection_fds(sup, sock)) >= t.workers or None) is None:
                    return self._skipped(kind)
                self._fault(kind, hub_connections_cut=cut_hub_connections(sup, sock))
        elif kind == "redis_restart":
            assert self.redis is not None
            await self.redis.restart()
            self._fault(kind, port=self.redis.port)
        elif kind == "client_abort":
            cand = [cl for cl in cc.clients if cl.conn is not None and cl is not self.slow]
            picked = self.rng.sample(cand, min(len(cand), max(1, len(cc.clients) // 5)))
            self._fault(kind, clients=sum(cc.abort(cl) for cl in picked))
        elif kind == "slow_consumer":
            await self._slow_consumer()
        else:
            raise ChaosError(f"unknown fault {kind!r}. Required action: fix FAULT_KINDS")

    async def _poll(self, what: str, probe: Any) -> Any:
        """``probe()`` every 0.1 s until it is not None, at most ``--fault-timeout`` s."""
        deadline = time.monotonic() + self.a.fault_timeout
        while True:
            got = probe()
            if got is not None:
                return got
            if time.monotonic() > deadline:
                sys.stderr.write(f"bench chaos: gave up waiting for {what}\n")
                return None
            await asyncio.sleep(0.1)

    def _skipped(self, kind: str) -> None:
        self.skipped[kind] = self.skipped.get(kind, 0) + 1
        sys.stderr.write(f"bench chaos: fault {kind} not injected (see above)\n")

    async def _slow_consumer(self) -> None:
        cc = self.clients
        assert cc is not None
        slow = self.slow
        if not await self.wait("the slow client to be subscribed", lambda: cc.ready(slow),
                               self.a.fault_timeout):
            return self._skipped("slow_consumer")
        ep = slow.endpoint
        before = await asyncio.to_thread(_slow_total, ep)
        if before < 0:
            return self._skipped("slow_consumer")
        assert slow.conn is not None
        conn = slow.conn
        conn.pause_reading()
        connects = slow.connects
        burster = next(cl for cl in cc.clients if cl.is_pub)
        pad = 32768
        # One burst message at a time (each acknowledged before the next): the other
        # members of the room read on, only the stalled client's buffer grows.
        closed = False
        deadline = time.monotonic() + self.a.fault_timeout
        for _ in range(max(1, self.a.slow_burst_bytes // pad)):
            pid = cc.publish(burster, self.slow_room, pad)
            if not await self.wait("a burst publication's ack", lambda p=pid: p in cc.acks,
                                   self.a.fault_timeout):
                break
        while time.monotonic() < deadline:
            if await asyncio.to_thread(_slow_total, ep) > before:
                closed = True
                break
            await asyncio.sleep(0.2)
        conn.resume_reading()
        if not closed:
            sys.stderr.write("bench chaos: the server did not count a slow consumer within "
                             f"{self.a.fault_timeout:g} s\n")
            return self._skipped("slow_consumer")
        # The close frame is behind everything buffered: the client reads it all first.
        await self.wait("the slow client's close", lambda: slow.connects > connects
                        or slow.conn is not conn, self.a.fault_timeout)
        self._fault("slow_consumer", node=ep.label, close=slow.last_close)

    async def fault_loop(self, end: float) -> None:
        """Faults until ``end`` (monotonic): shuffled rounds of every kind of the topology."""
        kinds = FAULT_KINDS[self.a.topology]
        order: list[str] = []
        await asyncio.sleep(min(2.0, self.a.fault_interval))
        while time.monotonic() < end:
            if not order:
                order = list(kinds)
                self.rng.shuffle(order)
            await self.inject(order.pop(0))
            await asyncio.sleep(self.a.fault_interval * self.rng.uniform(0.5, 1.5))

    async def publish_loop(self, end: float) -> None:
        """``--publish-rate`` publications per second until ``end`` (monotonic)."""
        cc = self.clients
        assert cc is not None
        interval = 1.0 / self.a.publish_rate
        nxt = time.monotonic()
        while time.monotonic() < end:
            cc.publish_random(self.rooms)
            nxt += interval
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))

    # ------------------------------------------------------------ run
    async def run(self) -> dict[str, Any]:
        """The whole run; returns the report fields (faults, counters, invariant)."""
        loop = asyncio.get_running_loop()
        try:
            eps = await self.start_servers()
        except BaseException:
            await self.stop_servers()  # whatever did start (redis, a first node)
            raise
        cc = self.clients = self.make_clients(loop, eps)
        self.t0 = time.monotonic()
        phases: dict[str, bool] = {}
        try:
            for cl in cc.clients:
                cc.connect(cl)
            phases["connected"] = await self.wait("every client to subscribe", cc.all_ready,
                                                  self.a.connect_timeout)
            workers = {f"{cl.endpoint.label}/w{cl.worker}" for cl in cc.clients}
            end = time.monotonic() + self.duration
            await asyncio.gather(self.publish_loop(end), self.fault_loop(end))
            drain = self.a.drain_timeout
            phases["recovered"] = await self.wait("every client to reconnect", cc.all_ready,
                                                  drain)
            phases["acked"] = await self.wait("every publication to be acknowledged",
                                              lambda: cc.unacked() == 0, drain)
            pubs = [cl for cl in cc.clients if cl.is_pub]
            finals_pid = {room: cc.publish(pubs[0], room)
                          for room in [*self.rooms, self.slow_room]}
            phases["finals_acked"] = await self.wait(
                "the final publications", lambda: all(
                    p in cc.acks and p in cc.own_positions for p in finals_pid.values()), drain)
            finals = {room: cc.own_positions[p] for room, p in finals_pid.items()
                      if p in cc.own_positions}
            phases["finals_delivered"] = await self.wait(
                "every stream to reach its room's final publication",
                lambda: _all_reached(cc, finals), drain)
        finally:
            not_ready = [cl for cl in cc.clients if not cc.ready(cl)]
            self.not_ready = [_describe(cl, cc.ready(cl)) for cl in not_ready]
            cc.close_all()
            await self.stop_servers()
        streams = {f"c{cl.index}/{room}": (room, events)
                   for cl in cc.clients for room, events in cl.tracker.log.items()}
        res = check_streams(streams, cc.acks, set(cc.sent), finals)
        if res.failed_streams:
            dump = self.report_dir / f"chaos-streams-{RUN_STAMP}.json"
            dump.write_bytes(orjson.dumps(
                {"finals": finals, "acks": cc.acks,
                 "streams": {n: streams[n][1] for n in res.failed_streams}}))
            sys.stderr.write(f"bench chaos: event logs of the failed streams: {dump}\n")
        return {
            "faults": self.faults, "faults_skipped": self.skipped,
            "fault_log": self.fault_log,
            "published": len(cc.sent), "acked": len(cc.acks),
            "publish_attempts": cc.publish_attempts, "publish_errors": cc.publish_errors,
            "skipped_publishes": cc.skipped_publishes,
            "reconnect_attempts": cc.backoff.attempts, "retry_attempts": cc.retry.attempts,
            "connects": sum(cl.connects for cl in cc.clients),
            "closes": cc.closes, "server_errors": cc.errors, "unexpected": cc.unexpected,
            "workers_seen_at_start": sorted(workers) if phases.get("connected") else [],
            "phases": phases, "invariant": res.as_dict(),
            "clients_not_ready_at_end": self.not_ready,
        }


def _live_worker(log_path: Path, wid: int) -> int | None:
    """The pid of worker ``wid`` when it is alive, else None."""
    pid = worker_pids(log_path).get(wid)
    return pid if pid is not None and pid_alive(pid) else None


def _describe(cl: Client, ready: bool) -> dict[str, Any]:
    """A client's state, for the report when it did not get ready."""
    c = cl.conn
    return {"client": cl.index, "ready": ready, "node": cl.endpoint.label,
            "worker": cl.worker, "state": None if c is None else STATE_NAMES[c.state],
            "subscribed": sorted(cl.tracker.subscribed), "pending": sorted(cl.tracker.pending),
            "connects": cl.connects, "last_close": cl.last_close,
            "positions": cl.tracker.positions}


def _all_reached(cc: ChaosClients, finals: dict[str, tuple[str, int]]) -> bool:
    for cl in cc.clients:
        for room in cl.tracker.rooms:
            f = finals.get(room)
            pos = cl.tracker.position(room)
            if f is not None and (pos is None or pos[0] != f[0] or pos[1] < f[1]):
                return False
    return True


def _slow_total(ep: Endpoint) -> float:
    """Sum of ``rtserver_slow_consumers_total`` over the cluster behind ``ep`` (-1: no answer)."""
    url = f"http://{ep.host}:{ep.port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5.0) as resp:
            text = resp.read().decode()
    except OSError as exc:
        sys.stderr.write(f"bench chaos: GET {url}: {exc} (asked again)\n")
        return -1.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("rtserver_slow_consumers_total"))


def _print(doc: dict[str, Any]) -> None:
    inv = doc["invariant"]
    faults = ", ".join(f"{k} {v}" for k, v in sorted(doc["faults"].items())) or "none"
    print(f"rtserver bench chaos  topology={doc['topology']}  seed={doc['seed']}  "
          f"duration={doc['duration']:g}s")
    print(f"faults injected: {faults}")
    print(f"published {doc['published']} (acked {doc['acked']}, publish attempts "
          f"{doc['publish_attempts']}); reconnect attempts {doc['reconnect_attempts']}, "
          f"subscribe/publish retries {doc['retry_attempts']}")
    print(f"delivered {inv['delivered']}  recovered {inv['recovered']} (replayed "
          f"{inv['replayed']})  explicit gaps {inv['explicit_gaps']} (recovered:false "
          f"{inv['not_recovered']}, gap frames {inv['gap_frames']})")
    print(f"silent gaps {inv['silent_gaps']}  duplicates {inv['duplicates']}  out of order "
          f"{inv['out_of_order']}  ack mismatch {inv['ack_mismatch']}  protocol errors "
          f"{inv['protocol_errors']}")
    for p in inv["problems"][:20]:
        print(f"  problem: {p}")
    for k, ok in doc["phases"].items():
        if not ok:
            print(f"  phase not reached: {k}")


def run(args: argparse.Namespace) -> int:
    """Run the chaos scenario from parsed ``rtserver bench`` arguments; exit status."""
    if args.clients < 1 or args.rooms < 1 or args.publish_rate <= 0 or args.chaos_publishers < 1:
        sys.stderr.write("bench chaos: --clients, --rooms, --chaos-publishers and "
                         "--publish-rate must be positive. Required action: fix them\n")
        return 2
    if args.spawn or args.url or args.peer or args.server_config or args.server_arg:
        sys.stderr.write("bench chaos: the scenario starts its own servers (--topology). "
                         "Required action: drop --spawn/--url/--peer/--server-config/"
                         "--server-arg\n")
        return 2
    if not os.environ.get(SECRET_ENV):
        os.environ[SECRET_ENV] = secrets.token_urlsafe(32)
        sys.stderr.write(f"bench chaos: {SECRET_ENV} unset; generated a random secret for "
                         "the spawned servers\n")
    report_dir = Path(args.report).resolve()
    report_dir.mkdir(parents=True, exist_ok=True)
    chaos = ChaosRun(args, report_dir)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        result = uvloop.run(chaos.run())
    except (TargetError, ChaosError, OSError) as exc:
        sys.stderr.write(f"bench chaos: run aborted: {exc}\n")
        return 2
    doc = {"harness": "rtserver bench", "scenario": "chaos", "started": started,
           "topology": args.topology, "seed": args.seed, "duration": chaos.duration,
           "clients": args.clients, "rooms": args.rooms, "publish_rate": args.publish_rate,
           "config_overrides": CHAOS_CONFIG_OVERRIDES, "machine": machine_info(), **result}
    ok = doc["invariant"]["ok"] and all(doc["phases"].values())
    doc["ok"] = ok
    path = write_report(report_dir, "chaos", doc)
    _print(doc)
    print(f"report: {path}")
    return 1 if args.check and not ok else 0
