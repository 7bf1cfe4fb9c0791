"""``rtserver bench storm``: reconnect storms with recovery, full jitter against none.

A spawned ``rtserver serve --workers W`` (embedded bus) holds ``--connections``
receivers in rooms of ``--room-size`` (spread over generator processes by the
capacity plan) while a publisher process publishes ``--room-rate`` acknowledged
messages per second to every room (``data.n``: the room's payload counter). Then,
for each ``--jitter`` mode and each ``--fault``, one storm:

* ``drain``: SIGTERM to the supervisor (every client gets close 1012), and when it
  has exited a new server on the same port (the embedded bus restarts: new epochs,
  so every resubscribe is answered ``recovered: false`` ``epoch_changed``);
* ``kill-worker``: SIGKILL of the worker holding the most receivers (the supervisor
  respawns it; its clients reconnect to either worker by SO_REUSEPORT and recover
  from the hub's history with ``since``).

Every client reconnects with the SDK's backoff (:mod:`rtserver.bench.storm_clients`)
and resubscribes with ``since``. A storm ends when every client it disconnected is
back (subscribed, replay received); then publishing pauses, the final acknowledged
seq of every room is handed to the receivers, and each stream must reach it with no
silent gap, duplicate or reordering. Figures per storm: time from the fault until
99 % and 100 % of the disconnected receivers are back, reconnect attempts, failed
attempts by reason, recovered / not recovered (by reason), messages lost inside the
history window, server CPU over the storm (supervisor and workers, reaped workers
included), and the peak of handshakes in progress (``rtserver_handshakes_in_progress``
scraped from ``/metrics``, and each worker's own ``..._max``). Output: a table with
the jitter modes side by side and their ratios, and ``REPORT/bench-storm-STAMP.json``.
``--vs --peer node-ws`` (or ``--vs node-ws``) also runs the connect part, every client
connecting at once (``connect-storm``), against rtserver and the Node ``ws`` peer.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import re
import resource
import secrets
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import uvloop

from rtserver.bench.capacity import CapacityError, host_limits, plan_generators, server_fd_problem
from rtserver.bench.chaos_faults import pid_alive, worker_pids
from rtserver.bench.procstat import children_cpu_seconds, cpu_seconds, descendants
from rtserver.bench.progress import Progress, Snapshot
from rtserver.bench.report import machine_info, write_report
from rtserver.bench.runner import GeneratorError, GenProc, run_target
from rtserver.bench.spawn import bench_server_config, peer_target, spawn_target
from rtserver.bench.storm_report import add_ratios, print_storms, storm_summary
from rtserver.bench.targets import RUN_STAMP, Target, TargetError, child_env
from rtserver.bench.tokens import SECRET_ENV, user_id
from rtserver.bench.workload import generator_plan, run_config

__all__ = ["FAULTS", "JITTERS", "StormError", "add_arguments", "run"]

FAULTS = ("drain", "kill-worker")
JITTERS = ("full", "none")


class StormError(Exception):
    """A storm could not be run (a fault not injected, a phase that never ended)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``storm`` argument group of ``rtserver bench``."""
    g = p.add_argument_group("storm scenario (with --connections 10000, --room-size 10, "
                             "--seed, --report, --vs --peer node-ws)")
    g.add_argument("--fault", choices=[*FAULTS, "both"], default="both",
                   help="drain: SIGTERM + restart on the same port; kill-worker: SIGKILL of "
                   "one worker (default both)")
    g.add_argument("--jitter", choices=[*JITTERS, "both"], default="both",
                   help="full: the SDK's full jitter; none: the same delays without "
                   "randomness (default both, side by side)")
    g.add_argument("--storm-workers", type=int, default=2, help="workers of the server (2)")
    g.add_argument("--room-rate", type=float, default=1.0,
                   help="acknowledged publishes per second per room (default 1)")
    g.add_argument("--storm-publishers", type=int, default=4,
                   help="publisher connections (default 4)")
    g.add_argument("--history-size", type=int, default=100,
                   help="bus.history_size of the server (default 100, the shipped value: "
                   "100 s at 1 msg/s); small values make recovered:false history_trimmed")
    g.add_argument("--max-unauthenticated", type=int,
                   help="server.max_unauthenticated of the server (default: the shipped value)")
    g.add_argument("--backoff-min", type=float, default=0.5,
                   help="reconnect delay cap of attempt 0 in s (the SDK's minDelay, 0.5)")
    g.add_argument("--backoff-max", type=float, default=20.0,
                   help="largest reconnect delay cap in s (the SDK's maxDelay, 20)")
    g.add_argument("--backoff-stable", type=float, default=10.0,
                   help="a connection that lived this long resets the attempt counter "
                   "(the SDK's stableAfter, 10 s)")
    g.add_argument("--handshake-timeout", type=float, default=10.0,
                   help="seconds one connection attempt may take until subscribed (10)")
    g.add_argument("--settle", type=float, default=3.0,
                   help="seconds of publishing before each fault and after each storm (3)")
    g.add_argument("--recover-timeout", type=float, default=120.0,
                   help="seconds for every disconnected client to be back (120)")
    g.add_argument("--scrape-interval", type=float, default=0.1,
                   help="seconds between /metrics scrapes during a storm (0.1)")


def _config(report_dir: Path, history_size: int,
            max_unauthenticated: int | None) -> tuple[Path, dict[str, str]]:
    """The bench config with the storm's overrides; the file and the overrides."""
    text = bench_server_config(report_dir).read_text()
    over = {"history_size": str(history_size), "max_restarts": "1000"}
    if max_unauthenticated is not None:
        over["max_unauthenticated"] = str(max_unauthenticated)
    for key, value in over.items():
        text, n = re.subn(rf"(?m)^{re.escape(key)}\s*=.*$", f"{key} = {value}", text)
        if n != 1:
            raise TargetError(f"rtserver.toml: expected one `{key} = ...` line, found {n}. "
                              "Required action: update rtserver/bench/storm.py")
    out = report_dir / "rtserver-storm.toml"
    out.write_text(text)
    return out, over


def _events(log_path: Path, names: tuple[str, ...]) -> list[dict[str, Any]]:
    out = []
    with open(log_path, "rb") as fh:
        for line in fh:
            if not line.startswith(b"{") or not any(n.encode() in line for n in names):
                continue
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("event") in names:
                out.append(rec)
    return out


#: Kernel TCP counters (/proc/net/netstat, machine-wide) read at the fault and the end.
NETSTAT_KEYS = ("ListenOverflows", "ListenDrops", "TCPSynRetrans", "TCPTimeouts")


def _netstat() -> dict[str, int]:
    """The :data:`NETSTAT_KEYS` of ``TcpExt`` in /proc/net/netstat."""
    with open("/proc/net/netstat") as fh:
        lines = fh.read().splitlines()
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            d = dict(zip(head.split()[1:], values.split()[1:], strict=True))
            return {k: int(d[k]) for k in NETSTAT_KEYS if k in d}
    raise StormError("/proc/net/netstat has no TcpExt line. Required action: run on Linux")


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _tree_cpu(root: int) -> float:
    """CPU seconds of ``root``, its live descendants and the children it reaped."""
    for _ in range(5):
        try:
            return children_cpu_seconds(root) + sum(cpu_seconds(p) for p in descendants(root))
        except FileNotFoundError:
            continue  # a process exited between the scan and the read: scan again
    raise StormError(f"CPU of server {root} could not be read (processes kept exiting). "
                     "Required action: read the server log")


def _scrape(port: int, timeout: float) -> tuple[float, dict[str, float]]:
    """(handshakes in progress over every worker, each worker's most at once)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        text = r.read().decode()
    now = 0.0
    peak: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("rtserver_handshakes_in_progress"):
            continue
        name, value = line.rsplit(" ", 1)
        m = re.search(r'worker="(\d+)"', name)
        if name.startswith("rtserver_handshakes_in_progress_max"):
            peak[m.group(1) if m else "?"] = float(value)
        else:
            now += float(value)
    return now, peak


async def _next_event(g: GenProc, name: str, deadline: float) -> dict[str, Any]:
    """The next event of ``g`` before ``deadline`` (monotonic), else GeneratorError."""
    try:
        return await asyncio.wait_for(g.events.get(), max(0.0, deadline - time.monotonic()))
    except TimeoutError as exc:
        raise GeneratorError(f"generator {g.index}: no {name!r} event in time. Required "
                             f"action: read {g.log.name}") from exc


class StormRun:
    """The server, the generator processes and the storms of one run."""

    def __init__(self, args: argparse.Namespace, report_dir: Path, config: Path) -> None:
        self.a = args
        self.report_dir = report_dir
        self.config = config
        self.rng = random.Random(args.seed)
        self.workers = args.storm_workers
        self.servers = 0
        self.target: Target | None = None
        self.gens: list[GenProc] = []
        self.prog = Progress(not args.no_progress, plain_interval=args.progress_interval)
        self.t0 = time.monotonic()

    # ------------------------------------------------------------ server
    def log_path(self, t: Target) -> Path:
        """The server log of ``t``."""
        return self.report_dir / f"server-{t.name}-{RUN_STAMP}.log"

    async def start_server(self, port: int) -> Target:
        """``rtserver serve`` on ``port`` (0: any), returned once every worker listens."""
        self.servers += 1
        argv = [sys.executable, "-m", "rtserver", "serve", "--host", "127.0.0.1", "--port",
                str(port), "--workers", str(self.workers), "--config", str(self.config)]
        t = Target(f"storm-{self.servers}", "spawn", workers=self.workers, argv=argv,
                   log_dir=self.report_dir, start_timeout=self.a.start_timeout,
                   stop_timeout=self.a.stop_timeout)
        await t.start()
        self.target = t
        await self.wait_workers(t)
        return t

    def workers_up(self, t: Target) -> bool:
        """Every worker's latest process alive and listening."""
        path = self.log_path(t)
        pids = worker_pids(path)
        listening = sum(1 for e in _events(path, ("listening",)) if "worker" in e)
        return (len(pids) == self.workers and all(pid_alive(p) for p in pids.values())
                and listening >= len(_events(path, ("worker_started",))))

    async def wait_workers(self, t: Target) -> None:
        """Until :meth:`workers_up` (``--start-timeout``)."""
        deadline = time.monotonic() + self.a.start_timeout
        while not self.workers_up(t):
            if time.monotonic() > deadline:
                raise StormError(f"{t.name}: not every worker listens after "
                                 f"{self.a.start_timeout:g} s. Required action: read "
                                 f"{self.log_path(t)}")
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------ generators
    async def start_gens(self) -> dict[str, Any]:
        """Start the receiver and publisher processes and connect every client."""
        a = self.a
        n = a.connections if a.connections is not None else 10_000
        k = a.room_size if a.room_size is not None else 10
        rooms = [f"bench:storm-{i}" for i in range(math.ceil(n / k))]
        plan = plan_generators(n, publisher_connections=a.storm_publishers,
                               per_generator=a.per_generator, generators=a.generators,
                               source_addrs=a.source_addrs, limits=host_limits())
        sys.stderr.write(f"bench storm: generators: {plan.describe()}\n")
        specs: list[tuple[str, list[Any]]] = []
        start = 0
        for size in plan.receivers:
            specs.append(("recv", [[rooms[i // k], user_id(i)] for i in range(start,
                                                                               start + size)]))
            start += size
        p = a.storm_publishers
        specs.append(("pub", [[rooms[j::p], user_id(10_000_000 + j)] for j in range(p)]))
        env = child_env()
        assert self.target is not None
        for i, (role, clients) in enumerate(specs):
            log = open(self.report_dir / f"generator-storm-{i}-{RUN_STAMP}.log", "wb")  # noqa: SIM115
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "rtserver.bench.storm_clients", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=log, env=env, cwd=str(self.report_dir),
                limit=1 << 24)
            g = GenProc(i, proc, log)
            self.gens.append(g)
            await g.expect("hello", 30.0)
            g.send({"cmd": "setup", "role": role, "clients": clients, "host": "127.0.0.1",
                    "port": self.target.port, "path": "/ws", "source": plan.sources[i],
                    "token_ttl": a.token_ttl, "connect_window": a.connect_window,
                    "handshake_timeout": a.handshake_timeout, "min_delay": a.backoff_min,
                    "max_delay": a.backoff_max, "stable_after": a.backoff_stable,
                    "seed": self.rng.randrange(1 << 30), "jitter": "full",
                    "rate": a.room_rate, "progress_interval": 0.25})
        await self.gather(self.gens, "ready", a.connect_timeout, "connect")
        self.n_clients = n
        return {"connections": n, "room_size": k, "rooms": len(rooms),
                "publishers": p, "generator_plan": plan.as_dict()}

    def snapshot(self, phase: str) -> Snapshot:
        """The progress line over every generator's latest progress event."""
        pr = [g.progress for g in self.gens]
        return Snapshot(target=f"storm {phase}", phase="back" if "/" in phase else phase,
                        opened=sum(x.get("ready", 0) for x in pr),
                        asked=sum(x.get("total", 0) for x in pr),
                        published=sum(x.get("sent", 0) for x in pr),
                        delivered=sum(x.get("deliveries", 0) for x in pr),
                        errors=sum(x.get("errors", 0) for x in pr),
                        elapsed=time.monotonic() - self.t0)

    async def gather(self, gens: list[GenProc], name: str, timeout: float,
                     phase: str) -> list[dict[str, Any]]:
        """Event ``name`` from every one of ``gens``, with progress lines meanwhile."""
        tasks = [asyncio.create_task(self.expect(g, name, timeout)) for g in gens]
        try:
            while not all(t.done() for t in tasks):
                await asyncio.wait(tasks, timeout=0.2)
                self.prog.show(self.snapshot(phase))
            self.prog.show(self.snapshot(phase), force=True)
            return [t.result() for t in tasks]
        finally:
            for t in tasks:
                t.cancel()

    @staticmethod
    async def expect(g: GenProc, name: str, timeout: float) -> dict[str, Any]:
        """Event ``name`` of ``g``; a ``back`` that comes after its storm timed out is
        skipped, any other event raises :class:`GeneratorError`."""
        deadline = time.monotonic() + timeout
        while True:
            ev = await _next_event(g, name, deadline)
            if ev.get("ev") == name:
                return ev
            if ev.get("ev") != "back":
                raise GeneratorError(f"generator {g.index}: expected {name!r}, got "
                                     f"{ev.get('ev')!r}. Required action: read {g.log.name}")

    def send_all(self, cmd: dict[str, Any], gens: list[GenProc] | None = None) -> None:
        """One command to every generator (or ``gens``)."""
        for g in gens if gens is not None else self.gens:
            g.send(cmd)

    # ------------------------------------------------------------ storms
    async def scrape_loop(self, out: dict[str, Any], stop: asyncio.Event) -> None:
        """Sample the handshakes in progress until ``stop``."""
        while not stop.is_set():
            t = self.target
            if t is not None and t.port:
                try:
                    now, peak = await asyncio.to_thread(_scrape, t.port, 1.0)
                except OSError as exc:
                    key = type(exc).__name__
                    out["scrape_failures"][key] = out["scrape_failures"].get(key, 0) + 1
                else:
                    out["scrapes"] += 1
                    out["peak_sampled"] = max(out["peak_sampled"], now)
                    out["worker_max"] = peak
            try:
                await asyncio.wait_for(stop.wait(), self.a.scrape_interval)
            except TimeoutError:
                continue

    def per_worker(self, gens: list[GenProc]) -> dict[int, int]:
        """Ready clients per worker id, from the latest progress events of ``gens``."""
        per: dict[int, int] = {}
        for g in gens:
            for w, c in g.progress.get("workers", {}).items():
                per[int(w)] = per.get(int(w), 0) + int(c)
        return per

    async def spread_publishers(self, pub: list[GenProc], label: str) -> list[int]:
        """Put the publisher's connections on more than one worker (when it has several),
        so that a killed worker leaves rooms publishing: its clients then miss what the
        others published. At most 10 reconnections of the publisher's clients (paced,
        outside the storm); returns the workers they ended on."""
        per = self.per_worker(pub)
        workers = sorted(per)
        want = min(self.workers, sum(per.values()))
        for _ in range(10):
            if len(workers) >= want:
                break
            self.send_all({"cmd": "rebalance", "workers": self.workers}, pub)
            (ready,) = await self.gather(pub, "ready", self.a.connect_timeout, label)
            workers = [int(w) for w in ready["workers"]]
        if len(workers) < want:
            sys.stderr.write(
                f"bench storm: {label}: WARNING: the publisher's connections stayed on worker(s) "
                f"{workers} after 10 reconnections: the killed worker may take every "
                "publisher with it, and its clients then miss nothing (publisher_workers "
                "in the report)\n")
        return workers

    async def storm(self, fault: str, jitter: str) -> dict[str, Any]:
        """One fault with one jitter mode; its figures."""
        a = self.a
        label = f"{fault}/{jitter}"
        recv, pub = self.gens[:-1], self.gens[-1:]
        self.send_all({"cmd": "policy", "jitter": jitter})
        await self.gather(self.gens, "policy", 30.0, label)
        t = self.target
        assert t is not None and t.proc is not None
        await self.wait_workers(t)
        res: dict[str, Any] = {"fault": fault, "jitter": jitter}
        per = self.per_worker(recv)
        if max(per.values(), default=0) > 0.6 * sum(per.values()):
            # A killed worker's clients all went to the others: spread them again, so
            # that every storm starts from the same layout.
            self.send_all({"cmd": "rebalance", "workers": self.workers}, recv)
            await self.gather(recv, "ready", a.connect_timeout, label)
            res["rebalanced_from"] = per
        await asyncio.sleep(a.settle)  # publishing, every client subscribed
        if fault == "kill-worker":
            res["publisher_workers"] = await self.spread_publishers(pub, label)
        res["workers_at_fault"] = per = self.per_worker(recv)
        try:
            before_max: dict[str, float] | str = (await asyncio.to_thread(_scrape, t.port,
                                                                          5.0))[1]
        except OSError as exc:
            before_max = f"not read: {exc}"
        worker = None
        if fault == "kill-worker":
            worker = max(range(self.workers), key=lambda w: (per.get(w, 0), -w))
        self.send_all({"cmd": "fault", "kind": fault, "worker": worker})
        acks = await self.gather(self.gens, "fault_ack", 30.0, label)
        res["expected"] = sum(e["expected"] for e in acks[:-1])
        scrape: dict[str, Any] = {"scrapes": 0, "scrape_failures": {}, "peak_sampled": 0.0,
                                  "worker_max": {}}
        stop = asyncio.Event()
        sup = t.proc.pid
        cpu0 = _tree_cpu(sup)
        rc0 = _children_cpu()
        net0 = _netstat()
        t_f = time.monotonic_ns()
        scraper = asyncio.create_task(self.scrape_loop(scrape, stop))
        old_cpu = 0.0
        try:
            if fault == "drain":
                os.kill(sup, signal.SIGTERM)
                try:
                    await asyncio.wait_for(t.proc.wait(), a.stop_timeout + 30)
                except TimeoutError as exc:
                    raise StormError(f"the server did not exit {a.stop_timeout + 30:g} s after "
                                     f"SIGTERM. Required action: read {self.log_path(t)}") from exc
                res["server_exit_s"] = (time.monotonic_ns() - t_f) / 1e9
                old_cpu = (_children_cpu() - rc0) - cpu0
                await t.stop()  # closes its log
                self.send_all({"cmd": "generation"}, pub)
                await self.gather(pub, "generation", 30.0, label)
                await self.start_server(t.port)
                res["server_listening_s"] = (time.monotonic_ns() - t_f) / 1e9
                res["killed"] = {"supervisor": sup}
            else:
                assert worker is not None
                pid = worker_pids(self.log_path(t))[worker]
                os.kill(pid, signal.SIGKILL)
                res["killed"] = {"worker": worker, "pid": pid}
            try:
                await self.gather(self.gens, "back", a.recover_timeout, label)
                res["all_back"] = True
            except GeneratorError as exc:  # reported; the check below says who is missing
                sys.stderr.write(f"bench storm: {label}: {exc}\n")
                res["all_back"] = False
            res["storm_s"] = (time.monotonic_ns() - t_f) / 1e9
            t_end = time.monotonic_ns()
            cur = self.target
            assert cur is not None and cur.proc is not None
            new_cpu = _tree_cpu(cur.proc.pid)
            net1 = _netstat()
        finally:
            stop.set()
            await scraper
        # One read after the storm: a storm shorter than the scrape interval still
        # reports each worker's exact maximum (the _max gauge counts since its start).
        try:
            scrape["worker_max"] = (await asyncio.to_thread(_scrape, cur.port, 5.0))[1]
            scrape["scrapes"] += 1
        except OSError as exc:
            key = type(exc).__name__
            scrape["scrape_failures"][key] = scrape["scrape_failures"].get(key, 0) + 1
        res["server_cpu_s"] = old_cpu + new_cpu if fault == "drain" else new_cpu - cpu0
        res["server_cpu_pct"] = 100.0 * res["server_cpu_s"] / ((t_end - t_f) / 1e9)
        res["handshakes"] = {**scrape, "worker_max_before": before_max}
        res["kernel_tcp"] = {k: net1[k] - net0[k] for k in net0 if k in net1}
        await asyncio.sleep(a.settle)
        self.send_all({"cmd": "publish", "on": False}, pub)
        paused = (await self.gather(pub, "paused", a.ack_timeout + 30, label))[0]
        self.send_all({"cmd": "check", "finals": paused["finals"],
                       "before": paused["before"] if fault == "drain" else None,
                       "timeout": a.drain_timeout, "t_fault_ns": t_f}, recv)
        checked = await self.gather(recv, "checked", a.drain_timeout + 30, label)
        res["publisher"] = {k: paused[k] for k in ("sent", "acked", "skipped", "errors")}
        res.update(storm_summary(checked))
        res["ok"] = bool(res["all_back"] and res["back"] == res["affected"] and not (
            res["lost"] or res["duplicates"] or res["out_of_order"] or res["behind_at_check"]))
        self.send_all({"cmd": "publish", "on": True}, pub)
        return res

    async def vs_connect(self) -> dict[str, Any]:
        """Every client connecting at once against rtserver and each ``--peer``."""
        a = self.a
        cfg = run_config(a, "connect-storm")
        plan = generator_plan(cfg, host_limits())
        out: dict[str, Any] = {"connections": cfg.connections}
        targets = [spawn_target(self.workers, a, self.report_dir, "rtserver-connect")]
        for name in dict.fromkeys(a.peer):
            pt = peer_target(name, a, self.report_dir)
            if isinstance(pt, str):
                out.setdefault("skipped", {})[name] = pt
                sys.stderr.write(f"bench storm: NOTICE: skipping peer {name}: {pt}\n")
            else:
                targets.append(pt)
        for tg in targets:
            sys.stderr.write(f"bench storm: connect-storm against {tg.label}\n")
            r = await run_target(tg, cfg, plan, self.report_dir)
            out[tg.name] = {k: r.get(k) for k in ("connected", "connect_failed",
                                                  "time_to_all_subscribed_s", "connect_errors")}
        return out

    async def run(self) -> dict[str, Any]:
        """The whole run; the report fields."""
        a = self.a
        faults = list(FAULTS) if a.fault == "both" else [a.fault]
        jitters = list(JITTERS) if a.jitter == "both" else [a.jitter]
        await self.start_server(0)
        storms: list[dict[str, Any]] = []
        try:
            layout = await self.start_gens()
            self.send_all({"cmd": "publish", "on": True}, self.gens[-1:])
            for jitter in jitters:
                for fault in faults:
                    storms.append(await self.storm(fault, jitter))
        finally:
            for g in self.gens:
                await g.finish(30.0)
            if self.target is not None:
                await self.target.stop()
        vs = await self.vs_connect() if a.vs else None
        return {**layout, "storms": storms, "vs": vs}


def run(args: argparse.Namespace) -> int:
    """Run the storm scenario from parsed ``rtserver bench`` arguments; exit status."""
    if args.spawn or args.url or args.server_config or args.server_arg:
        sys.stderr.write("bench storm: the scenario starts its own server. Required action: "
                         "drop --spawn/--url/--server-config/--server-arg\n")
        return 2
    if args.vs and not args.peer:
        sys.stderr.write("bench storm: --vs needs a peer. Required action: --vs node-ws\n")
        return 2
    if (args.storm_workers < 2 or args.room_rate <= 0 or args.storm_publishers < 1
            or args.history_size < 1 or args.settle < 0):
        sys.stderr.write("bench storm: --storm-workers >= 2 (a worker is killed), --room-rate, "
                         "--storm-publishers and --history-size > 0, --settle >= 0. Required "
                         "action: fix them\n")
        return 2
    n = args.connections if args.connections is not None else 10_000
    problem = server_fd_problem(f"rtserver --workers {args.storm_workers - 1} (one killed)",
                                n + args.storm_publishers, args.storm_workers - 1, host_limits())
    if problem is not None:
        sys.stderr.write(f"bench storm: {problem}\n")
        return 2
    if not os.environ.get(SECRET_ENV):
        os.environ[SECRET_ENV] = secrets.token_urlsafe(32)
        sys.stderr.write(f"bench storm: {SECRET_ENV} unset; generated a random secret\n")
    report_dir = Path(args.report).resolve()
    report_dir.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        config, overrides = _config(report_dir, args.history_size, args.max_unauthenticated)
        result = uvloop.run(StormRun(args, report_dir, config).run())
    except (TargetError, StormError, GeneratorError, CapacityError, OSError,
            RuntimeError) as exc:
        sys.stderr.write(f"\nbench storm: run aborted: {exc}\n")
        return 2
    doc = {"harness": "rtserver bench", "scenario": "storm", "started": started,
           "argv": sys.argv[1:], "workers": args.storm_workers, "room_rate": args.room_rate,
           "history_size": args.history_size,
           "backoff": {"min": args.backoff_min, "max": args.backoff_max,
                       "stable": args.backoff_stable},
           "config_overrides": overrides, "machine": machine_info(), **result}
    doc["ok"] = all(s["ok"] for s in doc["storms"])
    add_ratios(doc)
    path = write_report(report_dir, "storm", doc)
    print_storms(doc)
    print(f"report: {path}")
    return 0 if doc["ok"] else 1
