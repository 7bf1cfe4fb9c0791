"""Controller: lays out a scenario, drives generator processes against one target, measures."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from rtserver.bench.capacity import GeneratorPlan
from rtserver.bench.procstat import ProcSample, sample
from rtserver.bench.progress import PLAIN_INTERVAL, TTY_INTERVAL, Progress, Snapshot
from rtserver.bench.targets import RUN_STAMP, Target, child_env
from rtserver.bench.tokens import user_id

__all__ = ["OPEN_LOOP", "SCENARIOS", "GeneratorError", "Layout", "RunConfig", "layout",
           "run_target"]

SCENARIOS = ("broadcast", "rooms", "throughput", "users", "connect-storm")
#: Scenarios whose publishers send at a fixed rate from a generator process of their own.
OPEN_LOOP = ("broadcast", "rooms", "users")


class GeneratorError(Exception):
    """A generator process misbehaved or died."""


@dataclass
class RunConfig:
    """Everything a run needs (filled from the command line)."""

    scenario: str
    connections: int
    rate: float
    duration: float
    room_size: int
    per_user: int
    publishers: int
    window: int
    per_generator: int
    generators: int
    connect_window: int
    connect_timeout: float
    drain_timeout: float
    ack_timeout: float
    token_ttl: int
    pad: int
    source_addrs: str
    progress: bool
    gen_cpu_warn: float
    max_messages: int = 10_000_000
    #: Seconds between plain progress lines when stderr is not a terminal.
    progress_interval: float = PLAIN_INTERVAL
    #: Open-loop receivers read their sockets at most once per this many ms (0: on every
    #: wakeup); see Generator._pace.
    recv_batch_ms: float = 0.0


@dataclass
class Layout:
    """Rooms, connections per generator and who publishes."""

    rooms: dict[int, str]
    gen_conns: list[list[tuple[int, str, bool]]]
    open_loop: bool
    pub_rooms: list[int]
    publishers: int
    members: dict[int, int] = field(default_factory=dict)


def layout(cfg: RunConfig, plan: GeneratorPlan) -> Layout:
    """Assign connections to rooms and to the receiver generators of ``plan``."""
    n = cfg.connections
    conns: list[tuple[int, str, bool]] = []
    rooms: dict[int, str] = {}
    open_loop = cfg.scenario in OPEN_LOOP
    if cfg.scenario == "broadcast":
        rooms[0] = "bench:broadcast"
        conns = [(0, user_id(i), False) for i in range(n)]
    elif cfg.scenario in ("rooms", "throughput", "connect-storm"):
        k = max(1, cfg.room_size)
        prefix = {
            "rooms": "bench:room-",
            "throughput": "bench:tp-",
            "connect-storm": "bench:storm-",
        }
        for i in range(n):
            r = i // k
            if r not in rooms:
                rooms[r] = f"{prefix[cfg.scenario]}{r}"
            is_pub = cfg.scenario == "throughput" and i % k == 0
            conns.append((r, user_id(i), is_pub))
    elif cfg.scenario == "users":
        per = max(1, cfg.per_user)
        for i in range(n):
            u = i // per
            uid = user_id(u)
            if u not in rooms:
                rooms[u] = f"bench:user-{uid}"
            conns.append((u, uid, False))
    else:
        raise ValueError(f"unknown scenario {cfg.scenario!r}")
    members: dict[int, int] = {}
    for r, _u, _p in conns:
        members[r] = members.get(r, 0) + 1
    if sum(plan.receivers) != n:
        raise ValueError(
            f"the generator plan holds {sum(plan.receivers)} connections, the run {n}. "
            "Required action: plan the generators for this RunConfig"
        )
    gen_conns = []
    start = 0
    for size in plan.receivers:
        gen_conns.append(conns[start : start + size])
        start += size
    return Layout(rooms, gen_conns, open_loop, sorted(rooms), cfg.publishers, members)


class GenProc:
    """One generator subprocess and its JSON-lines control channel."""

    def __init__(self, index: int, proc: asyncio.subprocess.Process, log: IO[bytes]) -> None:
        self.index = index
        self.proc = proc
        self.log = log
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.progress: dict[str, Any] = {}
        #: The last progress event of the connect phase (connections opened so far).
        self.connect_progress: dict[str, Any] = {}
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, index: int, log_path: Path, env: dict[str, str], cwd: Path) -> GenProc:
        """Start ``python -m rtserver.bench.generator`` in the (absolute) directory ``cwd``."""
        log = open(log_path, "wb")  # noqa: SIM115 - closed in finish()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "rtserver.bench.generator",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            env=env,
            cwd=str(cwd),
            limit=1 << 24,
        )
        g = cls(index, proc, log)
        await g.expect("hello", 30.0)
        return g

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                await self.events.put({"ev": "exit"})
                return
            ev = orjson.loads(line)
            if ev.get("ev") == "progress":
                self.progress = ev
                if ev.get("phase") == "connect":
                    self.connect_progress = ev
            else:
                await self.events.put(ev)

    def send(self, cmd: dict[str, Any]) -> None:
        """Send one command line."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(orjson.dumps(cmd) + b"\n")

    async def expect(self, name: str, timeout: float) -> dict[str, Any]:
        """Wait for event ``name``; a different event or exit raises."""
        try:
            ev = await asyncio.wait_for(self.events.get(), timeout)
        except TimeoutError as exc:
            raise GeneratorError(
                f"generator {self.index}: no {name!r} event within {timeout:.0f} s. "
                f"Required action: read {self.log.name}"
            ) from exc
        if ev.get("ev") != name:
            raise GeneratorError(
                f"generator {self.index}: expected {name!r}, got {ev.get('ev')!r}. "
                f"Required action: read {self.log.name}"
            )
        return ev

    async def finish(self, timeout: float) -> None:
        """Close connections, wait for exit (kill after ``timeout``, said on stderr)."""
        if self.proc.returncode is None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.send({"cmd": "close"})
                await self.proc.stdin.drain()  # type: ignore[union-attr]
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                sys.stderr.write(f"bench: generator {self.index} did not exit; killing it\n")
                self.proc.kill()
                await self.proc.wait()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader
        self.log.close()


class _Watch:
    """Builds the progress :class:`~rtserver.bench.progress.Snapshot` of one target's run."""

    def __init__(self, label: str, gens: list[GenProc], recv: list[GenProc],
                 pub: list[GenProc], asked: int) -> None:
        self.label = label
        self.gens = gens
        self.recv = recv
        self.pub = pub
        self.asked = asked
        self.t0 = time.monotonic()

    def snapshot(self, phase: str) -> Snapshot:
        """Totals over the generators' latest progress events."""
        later = ("publish", "drain")
        return Snapshot(
            target=self.label,
            phase=phase,
            opened=sum(g.connect_progress.get("done", 0) for g in self.gens),
            asked=self.asked,
            published=sum(g.progress.get("sent", 0) for g in self.pub
                          if g.progress.get("phase") in later),
            delivered=sum(g.progress.get("done", 0) for g in self.recv
                          if g.progress.get("phase") in later),
            errors=sum(g.progress.get("errors", 0) for g in self.gens),
            elapsed=time.monotonic() - self.t0,
        )


async def _gather_events(
    gens: list[GenProc],
    name: str,
    timeout: float,
    prog: Progress,
    label: str,
    watch: _Watch,
) -> list[dict[str, Any]]:
    tasks = [asyncio.create_task(g.expect(name, timeout)) for g in gens]
    try:
        while not all(t.done() for t in tasks):
            await asyncio.wait(tasks, timeout=TTY_INTERVAL)
            prog.show(watch.snapshot(label))
        prog.show(watch.snapshot(label), force=True)
        return [t.result() for t in tasks]
    finally:
        for t in tasks:
            t.cancel()


async def run_target(
    target: Target, cfg: RunConfig, plan: GeneratorPlan, report_dir: Path
) -> dict[str, Any]:
    """Run the scenario against ``target`` (configured, not started) with the generators
    of ``plan``; ``report_dir`` is absolute. Returns the metrics."""
    lay = layout(cfg, plan)
    prog = Progress(cfg.progress, plain_interval=cfg.progress_interval)
    res: dict[str, Any] = {"target": target.label, "kind": target.kind}
    await target.start()
    try:
        return await _run_started(target, cfg, plan, lay, prog, res, report_dir)
    finally:
        await target.stop()


async def _run_started(
    target: Target,
    cfg: RunConfig,
    plan: GeneratorPlan,
    lay: Layout,
    prog: Progress,
    res: dict[str, Any],
    report_dir: Path,
) -> dict[str, Any]:
    pids = target.server_pids()
    res["server_pids"] = pids
    if not pids:
        res["server_stats_missing"] = (
            "no server pid known (use --spawn, or --server-pid with --url)"
        )
    base: ProcSample | None = sample(pids) if pids else None
    env = child_env()
    n_recv = len(lay.gen_conns)
    specs = list(lay.gen_conns)
    if lay.open_loop:
        specs.append([(-1, user_id(10_000_000 + i), True) for i in range(lay.publishers)])
    if len(specs) != plan.processes:
        raise GeneratorError(
            f"{len(specs)} generator processes laid out, {plan.processes} planned. "
            "Required action: plan with the publisher connections of this scenario"
        )
    gens: list[GenProc] = []
    tmp = tempfile.mkdtemp(prefix="bench-", dir=str(report_dir))
    try:
        for i in range(len(specs)):
            gens.append(
                await GenProc.start(
                    i,
                    report_dir / f"generator-{target.label}-{i}-{RUN_STAMP}{target.round_tag}.log",
                    env, report_dir)
            )
        t_connect0 = time.monotonic()
        for i, (g, spec) in enumerate(zip(gens, specs, strict=True)):
            room_ids = sorted({r for r, _u, _p in spec if r >= 0}) if i < n_recv else lay.pub_rooms
            g.send(
                {
                    "cmd": "setup",
                    "gen_id": i,
                    "host": target.host,
                    "port": target.port,
                    "path": target.path,
                    "token_ttl": cfg.token_ttl,
                    "window": cfg.connect_window
                    if cfg.scenario != "connect-storm"
                    else max(1, len(spec)),
                    "connect_timeout": cfg.connect_timeout,
                    "recv_batch_ms": cfg.recv_batch_ms if lay.open_loop and i < n_recv else 0.0,
                    "source": plan.sources[i],
                    "rooms": [[r, lay.rooms[r]] for r in room_ids],
                    "conns": [[r, u, p] for r, u, p in spec],
                }
            )
        total_conns = sum(len(s) for s in specs)
        pub_gens = gens[n_recv:] if lay.open_loop else gens[:n_recv]
        watch = _Watch(target.label, gens, gens[:n_recv], pub_gens, total_conns)
        connected = await _gather_events(
            gens, "connected", cfg.connect_timeout + 30, prog, "connect", watch
        )
        res["connect_wall_s"] = time.monotonic() - t_connect0
        recv_conn = connected[:n_recv]
        res["connections"] = sum(len(s) for s in lay.gen_conns)
        res["connected"] = sum(e["ok"] for e in recv_conn)
        res["connect_failed"] = sum(e["failed"] for e in recv_conn)
        res["publisher_connections"] = sum(e["ok"] for e in connected[n_recv:])
        res["publisher_failed"] = sum(e["failed"] for e in connected[n_recv:])
        errors: dict[str, int] = {}
        for e in connected:
            for k, v in e["errors"].items():
                errors[k] = errors.get(k, 0) + v
        res["connect_errors"] = errors
        firsts = [e["t_first_ns"] for e in recv_conn if e["ok"]]
        lasts = [e["t_last_ready_ns"] for e in recv_conn if e["ok"]]
        res["time_to_all_subscribed_s"] = (max(lasts) - min(firsts)) / 1e9 if firsts else None
        if base is not None:
            after = sample(target.server_pids())
            # Every server process's CPU from before the first connect to all subscribed:
            # on shared cores steadier than the wall time, which the generators share.
            res["server_connect_cpu_s"] = after.cpu - base.cpu
            res["server_rss_baseline_bytes"] = base.rss
            res["server_rss_connected_bytes"] = after.rss
            res["server_rss_per_connection_bytes"] = (
                (after.rss - base.rss) / res["connected"] if res["connected"] else None
            )
        if cfg.scenario != "connect-storm":
            await _publish_phase(target, cfg, lay, gens, n_recv, prog, watch, res)
        for g in gens:
            g.send({"cmd": "collect", "dir": tmp})
        stats = [await g.expect("stats", 120.0) for g in gens]
        _merge_stats(cfg, lay, stats, n_recv, res)
    finally:
        for g in gens:
            await g.finish(30.0)
        for f in Path(tmp).iterdir():
            f.unlink()
        Path(tmp).rmdir()
    return res


async def _publish_phase(
    target: Target,
    cfg: RunConfig,
    lay: Layout,
    gens: list[GenProc],
    n_recv: int,
    prog: Progress,
    watch: _Watch,
    res: dict[str, Any],
) -> None:
    pids = target.server_pids()
    s0 = sample(pids) if pids else None
    t0 = time.monotonic_ns()
    for g in gens:
        g.send({"cmd": "mark"})
    start_ns = t0 + 200_000_000
    pub_gens = gens[n_recv:] if lay.open_loop else gens[:n_recv]
    for g in pub_gens:
        cmd: dict[str, Any] = {
            "cmd": "publish",
            "start_ns": start_ns,
            "duration": cfg.duration,
            "ack_timeout": cfg.ack_timeout,
            "pad": cfg.pad,
        }
        if lay.open_loop:
            cmd.update(mode="open", rate=cfg.rate, pub_rooms=lay.pub_rooms)
        else:
            cmd.update(mode="closed", window=cfg.window, max_messages=cfg.max_messages)
        g.send(cmd)

    published = await _gather_events(
        pub_gens, "published", cfg.duration + cfg.ack_timeout + 30, prog, "publish", watch
    )
    final: dict[str, int] = {}
    pub_errors: dict[str, int] = {}
    for e in published:
        for k, v in e["acks"].items():
            final[k] = max(final.get(k, 0), v)
        for k, v in e["errors"].items():
            pub_errors[k] = pub_errors.get(k, 0) + v
    res["published"] = sum(e["sent"] for e in published)
    res["acked"] = sum(e["acked"] for e in published)
    res["publish_errors"] = pub_errors
    res["acks_complete"] = all(e["complete"] for e in published)
    res["publish_send_errors"] = sum(e["send_errors"] for e in published)
    for g in gens[:n_recv]:
        g.send({"cmd": "drain", "final": final, "timeout": cfg.drain_timeout})

    drained = await _gather_events(
        gens[:n_recv], "drained", cfg.drain_timeout + 30, prog, "drain", watch
    )
    res["drain_complete"] = all(e["complete"] for e in drained)
    res["expected_deliveries"] = sum(e["expected"] for e in drained)
    t1 = time.monotonic_ns()
    res["measure_wall_s"] = (t1 - t0) / 1e9
    if s0 is not None:
        s1 = sample(target.server_pids())
        res["server_cpu_s"] = s1.cpu - s0.cpu
        res["server_cpu_pct"] = 100.0 * (s1.cpu - s0.cpu) / ((t1 - t0) / 1e9)
        res["server_processes"] = len(s1.pids)


def _merge_stats(
    cfg: RunConfig, lay: Layout, stats: list[dict[str, Any]], n_recv: int, res: dict[str, Any]
) -> None:
    lat = array("q")
    fo: dict[int, list[int]] = {}
    for st in stats:
        p = st["prefix"]
        part = array("q")
        with open(p + ".lat", "rb") as fh:
            part.frombytes(fh.read())
        lat.extend(part)
        keys = array("q")
        vals = array("q")
        with open(p + ".fo", "rb") as fh:
            keys.frombytes(fh.read())
        with open(p + ".fov", "rb") as fh:
            vals.frombytes(fh.read())
        for i, k in enumerate(keys):
            t, r, n = vals[3 * i], vals[3 * i + 1], vals[3 * i + 2]
            e = fo.get(k)
            if e is None:
                fo[k] = [t, r, n]
            else:
                e[1] = max(e[1], r)
                e[2] += n
    res["deliveries"] = sum(st["deliveries"] for st in stats)
    res["lost"] = sum(st["lost"] for st in stats)
    res["duplicates"] = sum(st["duplicates"] for st in stats)
    res["out_of_order"] = sum(st["out_of_order"] for st in stats)
    res["lost_connections"] = sum(st["lost_connections"] for st in stats)
    res["user_clock_deliveries"] = sum(st["user_clock"] for st in stats)
    res["clock_drift_ns_max"] = max((abs(st["clock_drift_ns"]) for st in stats), default=0)
    se: dict[str, int] = {}
    for st in stats:
        for k, v in st["server_errors"].items():
            se[k] = se.get(k, 0) + v
    res["server_error_frames"] = se
    gen_cpu = []
    for i, st in enumerate(stats):
        if st["wall_s"] > 0:
            gen_cpu.append(
                {
                    "generator": i,
                    "role": "receiver" if i < n_recv else "publisher",
                    "cpu_s": st["cpu_s"],
                    "cpu_pct": 100.0 * st["cpu_s"] / st["wall_s"],
                }
            )
    res["generator_cpu"] = gen_cpu
    res["generator_cpu_max_pct"] = max((g["cpu_pct"] for g in gen_cpu), default=None)
    res["generator_bottleneck"] = bool(gen_cpu) and res["generator_cpu_max_pct"] >= cfg.gen_cpu_warn
    total_gen_cpu = sum(g["cpu_s"] for g in gen_cpu)
    res["generator_cpu_us_per_delivery"] = (
        1e6 * total_gen_cpu / res["deliveries"] if res["deliveries"] else None
    )
    res["latencies_ns"] = lat
    res["fanout"] = fo
    if fo:
        t_first = min(v[0] for v in fo.values())
        r_last = max(v[1] for v in fo.values())
        span = (r_last - t_first) / 1e9
        res["delivery_span_s"] = span
        res["deliveries_per_s"] = res["deliveries"] / span if span > 0 else None
    else:
        res["delivery_span_s"] = None
        res["deliveries_per_s"] = None
    if "server_cpu_s" in res and res["deliveries"]:
        res["server_cpu_us_per_delivery"] = 1e6 * res["server_cpu_s"] / res["deliveries"]
