"""Workload of a run: per-scenario defaults, checked ranges and the generator plan."""

from __future__ import annotations

import argparse

from rtserver.bench.capacity import GeneratorPlan, HostLimits, plan_generators
from rtserver.bench.runner import OPEN_LOOP, RunConfig

__all__ = ["DEFAULTS", "MAX_DURATION", "MAX_RATE", "generator_plan", "run_config"]

# Per-scenario defaults: connections, rate (publishes/s), duration (s), room size.
DEFAULTS: dict[str, dict[str, float]] = {
    "broadcast": {"connections": 10000, "rate": 5, "duration": 10, "room_size": 10000},
    "rooms": {"connections": 10000, "rate": 2000, "duration": 10, "room_size": 5},
    "throughput": {"connections": 2000, "rate": 0, "duration": 10, "room_size": 10},
    "users": {"connections": 6000, "rate": 1000, "duration": 10, "room_size": 3},
    "connect-storm": {"connections": 10000, "rate": 0, "duration": 0, "room_size": 10},
}
MAX_DURATION = 600.0
#: The longest read batching of a receiver generator (--recv-batch-ms).
MAX_RECV_BATCH_MS = 50.0
MAX_RATE = 200000.0


def run_config(args: argparse.Namespace, scenario: str) -> RunConfig:
    """The checked :class:`RunConfig` of ``scenario`` from the parsed command line.

    Raises ValueError (with the required action) for a value out of range. The upper
    bound of ``--connections`` is the machine's, checked by :func:`generator_plan`.
    """
    d = DEFAULTS[scenario]
    n = int(args.connections if args.connections is not None else d["connections"])
    rate = float(args.rate if args.rate is not None else d["rate"])
    duration = float(args.duration if args.duration is not None else d["duration"])
    room_size = int(args.room_size if args.room_size is not None else d["room_size"])
    if scenario == "users":
        room_size = args.per_user
    if n < 1:
        raise ValueError(f"--connections {n} must be >= 1. Required action: fix it")
    if args.progress_interval <= 0:
        raise ValueError(
            f"--progress-interval {args.progress_interval} must be > 0. Required action: fix it"
        )
    if not 0 <= args.recv_batch_ms <= MAX_RECV_BATCH_MS:
        raise ValueError(
            f"--recv-batch-ms {args.recv_batch_ms} outside 0..{MAX_RECV_BATCH_MS}. "
            "Required action: fix it"
        )
    if duration > MAX_DURATION or duration < 0:
        raise ValueError(
            f"--duration {duration} outside 0..{MAX_DURATION}. Required action: fix it"
        )
    if scenario in ("broadcast", "rooms", "users") and not 0 < rate <= MAX_RATE:
        raise ValueError(f"--rate {rate} outside (0, {MAX_RATE}]. Required action: fix it")
    if scenario in ("broadcast", "rooms", "users", "throughput") and duration <= 0:
        raise ValueError("--duration must be > 0 for this scenario. Required action: fix it")
    return RunConfig(
        scenario=scenario,
        connections=n,
        rate=rate,
        duration=duration,
        room_size=room_size,
        per_user=args.per_user,
        publishers=1 if scenario == "broadcast" else max(1, args.publishers),
        window=max(1, args.window),
        per_generator=args.per_generator,
        generators=args.generators,
        connect_window=max(1, args.connect_window),
        connect_timeout=args.connect_timeout,
        drain_timeout=args.drain_timeout,
        ack_timeout=args.ack_timeout,
        token_ttl=args.token_ttl,
        pad=max(0, args.payload_bytes),
        source_addrs=args.source_addrs,
        progress=not args.no_progress,
        progress_interval=args.progress_interval,
        max_messages=args.max_messages,
        gen_cpu_warn=args.gen_cpu_warn,
        recv_batch_ms=args.recv_batch_ms,
    )


def generator_plan(cfg: RunConfig, limits: HostLimits) -> GeneratorPlan:
    """Generator processes and source addresses for ``cfg`` on a machine with ``limits``.

    Open-loop scenarios (broadcast, rooms, users) put their publishers in a process of
    their own; throughput's publishers are receivers too. Raises
    :class:`~rtserver.bench.capacity.CapacityError` when the run does not fit.
    """
    return plan_generators(
        cfg.connections,
        publisher_connections=cfg.publishers if cfg.scenario in OPEN_LOOP else 0,
        per_generator=cfg.per_generator,
        generators=cfg.generators,
        source_addrs=cfg.source_addrs,
        limits=limits,
    )
