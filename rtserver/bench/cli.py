"""Command line of the load harness: ``python -m rtserver.bench SCENARIO [options]``.

The rtserver CLI delegates ``rtserver bench ...`` to :func:`main`.
Exit status: 0 all good; 1 integrity failure (loss, duplicates, out-of-order, dropped
connections, publish errors) or a failed ``--check``; 2 usage error or a target that could
not be started.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import uvloop

from rtserver.bench import __version__, chaos, storm
from rtserver.bench.capacity import GeneratorPlan, HostLimits, host_limits, server_fd_problem
from rtserver.bench.peers import PEER_NAMES
from rtserver.bench.progress import PLAIN_INTERVAL
from rtserver.bench.report import (
    CLOCK_NOTE,
    Check,
    Thresholds,
    evaluate_checks,
    format_table,
    machine_info,
    plot,
    plot_series,
    ratio_table,
    summarize,
    write_report,
)
from rtserver.bench.rounds import in_round, ratio_rounds, round_order, round_summary, rounds_table
from rtserver.bench.runner import SCENARIOS, GeneratorError, RunConfig, run_target
from rtserver.bench.spawn import BENCH_CONFIG_OVERRIDES, peer_target, spawn_target
from rtserver.bench.targets import Target, TargetError, parse_url
from rtserver.bench.tokens import SECRET_ENV
from rtserver.bench.workload import generator_plan, run_config

__all__ = ["build_parser", "main"]

def build_parser() -> argparse.ArgumentParser:
    """The argparse parser (also used by docs and tests)."""
    p = argparse.ArgumentParser(
        prog="rtserver bench",
        usage="rtserver bench SCENARIO [options]   (rtserver bench --help lists them by group)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Load-test rtserver (and reference peers) over WebSocket on loopback.",
        epilog=f"environment:\n  {SECRET_ENV}  the server's JWT secret (required with --url; "
        "generated for --spawn when unset)\n\n"
        "exit status: 0 all good; 1 integrity failure or a failed --check; 2 usage error or "
        "a target that could not be started\n"
        "docs/bench.md describes every scenario and figure.",
    )
    s = p.add_argument_group("scenario")
    s.add_argument("scenario", choices=[*SCENARIOS, "sweep", "chaos", "storm"],
                   help="what to measure (sweep: one scenario for each --workers value; "
                   "chaos: real faults and the stream invariant; storm: reconnect storms "
                   "with recovery; see their groups)")
    t = p.add_argument_group("targets")
    t.add_argument("--spawn", action="store_true", help="start `python -m rtserver serve --port 0`")
    t.add_argument(
        "--workers", default="1", help="worker count for --spawn; comma list for sweep (default 1)"
    )
    t.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra argument passed to `rtserver serve` (repeatable)",
    )
    t.add_argument(
        "--server-config",
        help="config file for --spawn (default: the shipped rtserver.toml with the "
        "bench overrides, written to the report directory)",
    )
    t.add_argument("--url", help="target a running server: ws://127.0.0.1:PORT/ws")
    t.add_argument(
        "--server-pid", type=int, help="with --url: the server's pid (CPU/RSS from /proc)"
    )
    t.add_argument(
        "--peer",
        action="append",
        default=[],
        choices=PEER_NAMES,
        help="also run against a reference peer (repeatable)",
    )
    t.add_argument(
        "--vs", action="store_true", help="print rtserver's figures as ratios to each peer"
    )
    t.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with --vs: run every target this many times, in an order that rotates each "
        "round, and print each ratio per round with its median (default 1)",
    )
    t.add_argument(
        "--sweep-scenario",
        default="broadcast",
        choices=SCENARIOS,
        help="scenario that sweep runs for each worker count (default broadcast)",
    )
    t.add_argument(
        "--start-timeout", type=float, default=60.0, help="seconds for a server to listen"
    )
    t.add_argument(
        "--stop-timeout", type=float, default=15.0, help="seconds from SIGTERM to SIGKILL"
    )
    t.add_argument(
        "--no-npm-install",
        action="store_true",
        help="do not run `npm install` for the node-ws peer",
    )
    w = p.add_argument_group("workload")
    w.add_argument("--connections", "-n", type=int, help="connections (receivers)")
    w.add_argument("--rate", "-r", type=float, help="publishes per second (aggregate, open loop)")
    w.add_argument("--duration", "-d", type=float, help="publishing seconds")
    w.add_argument(
        "--room-size", type=int, help="members per room (rooms, throughput, connect-storm)"
    )
    w.add_argument("--per-user", type=int, default=3, help="connections per user (users scenario)")
    w.add_argument(
        "--publishers",
        type=int,
        default=4,
        help="publisher connections for open-loop scenarios (broadcast uses 1)",
    )
    w.add_argument(
        "--window",
        type=int,
        default=4,
        help="throughput: messages in flight per room (closed loop)",
    )
    w.add_argument(
        "--max-messages",
        type=int,
        default=10_000_000,
        help="throughput: cap on publishes per generator process (closed loop)",
    )
    w.add_argument("--payload-bytes", type=int, default=0, help="extra padding bytes per message")
    g = p.add_argument_group("generator")
    g.add_argument(
        "--per-generator", type=int, default=15000,
        help="max sockets per generator process (also bounded by the fd hard limit - 64)",
    )
    g.add_argument(
        "--generators",
        type=int,
        default=0,
        help="receiver generator processes (0 = as few as the per-process limit allows)",
    )
    g.add_argument(
        "--connect-window",
        type=int,
        default=100,
        help="connects in flight per generator (connect-storm: all at once)",
    )
    g.add_argument(
        "--connect-timeout", type=float, default=60.0, help="seconds for the connect phase"
    )
    g.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for outstanding deliveries after publishing",
    )
    g.add_argument(
        "--ack-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for outstanding acks after publishing",
    )
    g.add_argument("--token-ttl", type=int, default=3600, help="lifetime of minted tokens (s)")
    g.add_argument(
        "--source-addrs",
        choices=["auto", "on", "off"],
        default="auto",
        help="bind generator i to 127.0.0.(2+i) (auto: when the connections exceed 90%% of "
        "the ephemeral port range)",
    )
    g.add_argument(
        "--recv-batch-ms",
        type=float,
        default=2.0,
        help="open-loop scenarios: a receiver generator reads its sockets at most once per "
        "this many ms (0: on every wakeup); latency is the kernel's receive timestamp, so "
        "only the generators' wakeups change (docs/bench.md)",
    )
    g.add_argument(
        "--gen-cpu-warn",
        type=float,
        default=90.0,
        help="warn when a generator's CPU %% reaches this",
    )
    o = p.add_argument_group("output")
    o.add_argument(
        "--report", default="bench-reports", help="directory for the JSON report, plots, logs"
    )
    o.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    o.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress on stderr (default: a live line on a terminal, else plain lines)",
    )
    o.add_argument(
        "--progress-interval",
        type=float,
        default=PLAIN_INTERVAL,
        help=f"seconds between plain progress lines when stderr is not a terminal "
        f"(default {PLAIN_INTERVAL:g})",
    )
    c = p.add_argument_group("checks (thresholds; --check makes a missed one exit 1)")
    c.add_argument("--check", action="store_true", help="exit non-zero when a threshold is missed")
    c.add_argument(
        "--check-connected",
        type=float,
        default=1.0,
        help="fraction of connections that must succeed (default 1.0)",
    )
    c.add_argument("--check-p99-ms", type=float, default=50.0, help="per-delivery p99 limit (ms)")
    c.add_argument("--check-fanout-p99-ms", type=float, help="fan-out completion p99 limit (ms)")
    c.add_argument("--check-connect-s", type=float, help="time-to-all-subscribed limit (s)")
    c.add_argument("--check-rss-kb", type=float, help="server RSS per connection limit (KiB)")
    c.add_argument("--check-min-deliveries", type=float, help="minimum deliveries per second")
    chaos.add_arguments(p)
    storm.add_arguments(p)
    # Test-only fault injection, deliberately absent from --help and docs/bench.md:
    # passes `--inject SPEC` (drop-every=N | duplicate-every=N) to the `naive` peer so the
    # smoke tests can prove that loss and duplicates are detected.
    p.add_argument("--inject-peer-fault", action="append", default=[], help=argparse.SUPPRESS)
    return p


async def _run_all(targets: list[Target], cfg: RunConfig, plan: GeneratorPlan,
                   report_dir: Path) -> list[dict[str, Any]]:
    results = []
    for t in targets:
        sys.stderr.write(
            f"bench: {cfg.scenario} against {t.label} ({cfg.connections} connections)\n"
        )
        results.append(await run_target(t, cfg, plan, report_dir))
    return results


def _sweep_advice(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    rt = [s for s in summaries if s.get("kind") == "spawn"]

    def lat_key(s: dict[str, Any]) -> float:
        v = s["fanout_completion_ms"].get("p99") or s["latency_ms"].get("p99")
        return float("inf") if v is None else float(v)

    best_lat = min(rt, key=lat_key) if rt else None
    best_tp = max(rt, key=lambda s: s.get("deliveries_per_s") or 0.0) if rt else None
    return {
        "best_latency": None
        if best_lat is None
        else {
            "target": best_lat["target"],
            "workers": best_lat.get("workers"),
            "p99_ms": lat_key(best_lat),
        },
        "best_throughput": None
        if best_tp is None
        else {
            "target": best_tp["target"],
            "workers": best_tp.get("workers"),
            "deliveries_per_s": best_tp.get("deliveries_per_s"),
        },
    }


def _peer_fd_problem(name: str, connections: int, limits: HostLimits) -> str | None:
    """Why the one-process peer ``name`` cannot hold the run's connections (None: it can)."""
    return server_fd_problem(name, connections, 1, limits)


def main(argv: list[str]) -> int:
    """Run the harness; returns the exit status (see module docstring)."""
    parser = build_parser()
    # `--vs NAME` is `--vs --peer NAME`.
    argv = [x for i, a in enumerate(argv) for x in (
        ["--peer", a] if i and argv[i - 1] == "--vs" and a in PEER_NAMES else [a])]
    args = parser.parse_args(argv)
    if args.rounds != 1 and args.scenario in ("chaos", "storm"):
        sys.stderr.write(f"bench: {args.scenario} does not take --rounds. Required action: "
                         "run it again for another sample\n")
        return 2
    if args.scenario == "chaos":
        return chaos.run(args)
    if args.scenario == "storm":
        return storm.run(args)
    scenario = args.sweep_scenario if args.scenario == "sweep" else args.scenario
    try:
        cfg = run_config(args, scenario)
        worker_counts = [int(x) for x in str(args.workers).split(",") if x.strip()]
        limits = host_limits()
        plan = generator_plan(cfg, limits)
    except ValueError as exc:  # CapacityError included
        sys.stderr.write(f"bench: {exc}\n")
        return 2
    if not worker_counts or min(worker_counts) < 1:
        sys.stderr.write(
            "bench: --workers needs positive integers. Required action: e.g. --workers 1,2\n"
        )
        return 2
    if args.scenario == "sweep" and not args.spawn:
        sys.stderr.write("bench: sweep starts servers itself. Required action: add --spawn\n")
        return 2
    if args.scenario != "sweep" and len(worker_counts) > 1:
        sys.stderr.write(
            "bench: several --workers values need the sweep scenario. "
            "Required action: use `sweep` or one value\n"
        )
        return 2
    if args.spawn and args.url:
        sys.stderr.write("bench: --spawn and --url are exclusive. Required action: pick one\n")
        return 2
    if not (args.spawn or args.url or args.peer):
        sys.stderr.write("bench: no target. Required action: give --spawn, --url or --peer NAME\n")
        return 2
    if args.vs and not ((args.spawn or args.url) and args.peer):
        sys.stderr.write(
            "bench: --vs compares rtserver to peers. Required action: give --spawn or "
            "--url and at least one --peer\n"
        )
        return 2
    if args.rounds < 1 or (args.rounds > 1 and (not args.vs or args.scenario == "sweep")):
        sys.stderr.write(
            "bench: --rounds needs a positive count, and more than one round compares "
            "rtserver to peers. Required action: give --rounds N with --vs and --peer "
            "(not with sweep)\n"
        )
        return 2
    if args.inject_peer_fault and "naive" not in args.peer:
        sys.stderr.write("bench: fault injection needs --peer naive. Required action: add it\n")
        return 2
    if not os.environ.get(SECRET_ENV):
        if args.url:
            sys.stderr.write(
                f"bench: {SECRET_ENV} is not set. Required action: export the secret "
                "of the server behind --url\n"
            )
            return 2
        os.environ[SECRET_ENV] = secrets.token_urlsafe(32)
        sys.stderr.write(
            f"bench: {SECRET_ENV} unset; generated a random secret for spawned servers\n"
        )
    if any(a == "--config" or a.startswith("--config=") for a in args.server_arg):
        sys.stderr.write("bench: --server-arg --config: the spawned server's config file is "
                         "--server-config. Required action: pass --server-config FILE\n")
        return 2
    # Every user path is made absolute against the user's directory here, before any
    # process starts: spawned processes run in the report directory.
    report_dir = Path(args.report).resolve()
    if args.server_config:
        server_config = Path(args.server_config).resolve()
        if not server_config.is_file():
            sys.stderr.write(f"bench: --server-config {server_config} does not exist. "
                             "Required action: give an existing TOML file\n")
            return 2
        args.server_config = str(server_config)
    sys.stderr.write(f"bench: generators: {plan.describe()}\n")
    total = cfg.connections + plan.publisher_connections
    for w in worker_counts if args.spawn else []:
        problem = server_fd_problem(f"rtserver --workers {w}", total, w, limits)
        if problem is not None:
            sys.stderr.write(f"bench: {problem}\n")
            return 2
    report_dir.mkdir(parents=True, exist_ok=True)

    targets: list[Target] = []
    skipped: dict[str, str] = {}
    if args.spawn:
        try:
            for w in worker_counts:
                label = f"rtserver-w{w}" if args.scenario == "sweep" else "rtserver"
                targets.append(spawn_target(w, args, report_dir, label))
        except TargetError as exc:
            sys.stderr.write(f"bench: {exc}\n")
            return 2
    elif args.url:
        try:
            host, port, path = parse_url(args.url)
        except TargetError as exc:
            sys.stderr.write(f"bench: {exc}\n")
            return 2
        targets.append(
            Target(
                name="rtserver",
                kind="url",
                host=host,
                port=port,
                path=path,
                server_pid=args.server_pid,
                start_timeout=args.start_timeout,
            )
        )
    for name in dict.fromkeys(args.peer):
        pt = _peer_fd_problem(name, total, limits) or peer_target(name, args, report_dir)
        if isinstance(pt, str):
            skipped[name] = pt
            sys.stderr.write(f"bench: NOTICE: skipping peer {name}: {pt}\n")
        else:
            targets.append(pt)
    if not targets:
        sys.stderr.write(
            "bench: every target was skipped. Required action: see the notices above\n"
        )
        return 2

    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rounds: list[list[dict[str, Any]]] = []  # per round, the summaries in target order
    series = {}
    try:
        for k in range(args.rounds):
            order = round_order(len(targets), k)
            if args.rounds > 1:
                sys.stderr.write(f"bench: round {k + 1} of {args.rounds}\n")
            for i in order:
                targets[i].round_tag = f"-r{k + 1}" if args.rounds > 1 else ""
            ran = uvloop.run(_run_all([targets[i] for i in order], cfg, plan, report_dir))
            results = [ran[order.index(i)] for i in range(len(targets))]
            pairs = list(zip(targets, results, strict=True))
            if k == 0:
                series = {t.label: plot_series(r) for t, r in pairs}
            rounds.append([round_summary(summarize(r), t, k) for t, r in pairs])
    except (TargetError, GeneratorError, RuntimeError) as exc:
        sys.stderr.write(f"\nbench: run aborted: {exc}\n")
        return 2
    summaries = rounds[0]
    th = Thresholds(
        args.check_connected,
        args.check_p99_ms,
        args.check_fanout_p99_ms,
        args.check_connect_s,
        args.check_rss_kb,
        args.check_min_deliveries,
    )
    checks: list[Check] = []
    peer_integrity: list[Check] = []
    for k, round_summaries in enumerate(rounds):
        for s in round_summaries:
            if s["kind"] in ("spawn", "url") or not any(
                    x["kind"] in ("spawn", "url") for x in round_summaries):
                found = evaluate_checks(s, th, args.check)
                checks.extend(in_round(found, k, len(rounds)))
            else:
                found = [c for c in evaluate_checks(s, th, False) if not c.ok]
                peer_integrity.extend(in_round(found, k, len(rounds)))

    print(
        f"rtserver bench {__version__}  scenario={scenario}  connections={cfg.connections}  "
        f"rate={cfg.rate:g}/s  duration={cfg.duration:g}s  started={started}"
    )
    print(f"clock: {CLOCK_NOTE}")
    if len(rounds) > 1:
        print(f"round 1 of {len(rounds)} (every round's figures are in the report):")
    print(format_table(summaries))
    ratios: dict[str, Any] = {}
    per_round: list[dict[str, Any]] = []
    if args.vs:
        for k, round_summaries in enumerate(rounds):
            peers = [s for s in round_summaries if s["kind"] == "peer"]
            got: dict[str, Any] = {}
            for m in [s for s in round_summaries if s["kind"] != "peer"]:
                text, got[m["target"]] = ratio_table(m, peers)
                if k == 0:
                    print()
                    print(text if len(rounds) == 1 else f"round 1 of {len(rounds)}:\n{text}")
            per_round.append(got)
        ratios = per_round[0]
    folded = ratio_rounds(per_round) if len(rounds) > 1 else {}
    for main_label, by_peer in folded.items():
        for peer_label, metrics in by_peer.items():
            print()
            print(rounds_table(main_label, peer_label, metrics))
    advice = None
    if args.scenario == "sweep":
        advice = _sweep_advice(summaries)
        print()
        if advice["best_latency"]:
            print(
                f"sweep advice: best latency with --workers {advice['best_latency']['workers']} "
                f"(p99 {advice['best_latency']['p99_ms']:.2f} ms); best throughput with "
                f"--workers {advice['best_throughput']['workers']} "
                f"({(advice['best_throughput']['deliveries_per_s'] or 0):,.0f} deliveries/s)"
            )
    for name, why in skipped.items():
        print(f"peer {name} skipped: {why}")
    for s in [x for round_summaries in rounds for x in round_summaries]:
        if s.get("generator_bottleneck"):
            print(
                f"WARNING: a generator process ran at {s['generator_cpu_max_pct']:.0f}% CPU "
                f"against {s['target']}: the generator may be the bottleneck (add --generators)"
            )
        if s.get("user_clock_deliveries"):
            print(
                f"WARNING: {s['user_clock_deliveries']} deliveries against {s['target']} had "
                "no kernel timestamp and were timed with the user-space clock"
            )
        if s.get("kind") == "spawn" and s.get("workers", 1) > 1:
            nproc = len(s.get("server_pids") or [])
            if nproc < s["workers"]:
                print(
                    f"WARNING: {s['target']} was started with --workers {s['workers']} but only "
                    f"{nproc} server process(es) were found: the server did not start its workers"
                )
        if s.get("server_stats_missing"):
            print(f"NOTE: {s['target']}: server CPU/RSS not measured: {s['server_stats_missing']}")
    if any(s.get("server_rss_note") for round_summaries in rounds for s in round_summaries):
        print("NOTE: a --url server's RSS per connection is left out after round 1 (not restarted)")
    failed = [c for c in checks if not c.ok] + peer_integrity
    print()
    for c in checks:
        print(f"{'PASS' if c.ok else 'FAIL'}  {c.target:<22} {c.name:<20} {c.detail}")
    for c in peer_integrity:
        print(f"FAIL  {c.target:<22} {c.name:<20} {c.detail}")

    plot_paths: list[Path] = []
    plot_skip: str | None = "disabled with --no-plots" if args.no_plots else None
    if not args.no_plots:
        plot_paths, plot_skip = plot(report_dir, args.scenario, series)
    if plot_skip:
        print(f"plots skipped: {plot_skip}")
    doc = {
        "harness": "rtserver bench",
        "version": __version__,
        "started": started,
        "argv": argv,
        "scenario": scenario,
        "sweep": args.scenario == "sweep",
        "config": vars(cfg),
        "generator_plan": plan.as_dict(),
        "report_dir": str(report_dir),
        "spawned_server_config": None
        if not args.spawn
        else (args.server_config or {"shipped rtserver.toml with": BENCH_CONFIG_OVERRIDES}),
        "clock": CLOCK_NOTE,
        "machine": machine_info(),
        "targets": summaries,
        "skipped_peers": skipped,
        "ratios": ratios,
        "rounds": [
            {"order": [targets[i].label for i in round_order(len(targets), k)],
             "targets": round_summaries, "ratios": per_round[k] if per_round else {}}
            for k, round_summaries in enumerate(rounds)
        ] if len(rounds) > 1 else None,
        "ratio_rounds": folded or None,
        "sweep_advice": advice,
        "checks": [c.as_dict() for c in checks + peer_integrity],
        "ok": not failed,
        "plots": [str(p) for p in plot_paths],
        "plots_skipped": plot_skip,
    }
    report_path = write_report(report_dir, args.scenario, doc)
    one = {
        "scenario": scenario,
        "ok": not failed,
        "report": str(report_path),
        "targets": {
            s["target"]: {
                "connected": s.get("connected"),
                "connections": s.get("connections"),
                "p50_ms": s["latency_ms"].get("p50"),
                "p99_ms": s["latency_ms"].get("p99"),
                "p999_ms": s["latency_ms"].get("p99.9"),
                "max_ms": s["latency_ms"].get("max"),
                "fanout_p99_ms": s["fanout_completion_ms"].get("p99"),
                "deliveries_per_s": s.get("deliveries_per_s"),
                "lost": s.get("lost"),
                "duplicates": s.get("duplicates"),
                "out_of_order": s.get("out_of_order"),
                "server_cpu_us_per_delivery": s.get("server_cpu_us_per_delivery"),
                "server_rss_per_conn_bytes": s.get("server_rss_per_connection_bytes"),
                "time_to_all_subscribed_s": s.get("time_to_all_subscribed_s"),
            }
            for s in summaries
        },
        "failed_checks": [c.as_dict() for c in failed],
    }
    if folded:
        one["ratio_medians"] = {
            main_label: {peer_label: {m: e["median"] for m, e in metrics.items()}
                         for peer_label, metrics in by_peer.items()}
            for main_label, by_peer in folded.items()
        }
    print(f"report: {report_path}")
    for pp in plot_paths:
        print(f"plot: {pp}")
    print(orjson.dumps(one).decode())
    return 1 if failed else 0
