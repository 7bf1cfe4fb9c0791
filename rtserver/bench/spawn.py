"""The servers the harness starts: ``rtserver serve`` (``--spawn``) and reference peers.

Every spawned process is started as ``sys.executable -m ...`` from the installed
package (:data:`rtserver.bench.targets.PACKAGE_ROOT` on its ``PYTHONPATH``), in the
absolute report directory, with absolute paths only: the user's working directory
does not matter to it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from rtserver.bench.targets import PEERS_DIR, Target, TargetError, node_peer_problem
from rtserver.config import DEFAULT_CONFIG_PATH

__all__ = ["BENCH_CONFIG_OVERRIDES", "bench_server_config", "peer_target", "spawn_target"]

# Keys the harness changes in the shipped rtserver.toml for a spawned server (unless
# --server-config is given): per-connection publish rate limits would otherwise throttle
# the bench publishers and the idle timeout would close silent receivers in long runs.
# The log level stays as shipped (info): the harness needs the "listening" line, and the
# per-connection log lines are part of the server's real cost.
BENCH_CONFIG_OVERRIDES: dict[str, str] = {
    "rate_limit_per_second": "1000000.0",
    "rate_limit_burst": "1000000",
    "idle_timeout": "3600.0",
}


def bench_server_config(report_dir: Path) -> Path:
    """Write the shipped rtserver.toml with :data:`BENCH_CONFIG_OVERRIDES` applied.

    The file is ``report_dir/rtserver-bench.toml``; its path is absolute when
    ``report_dir`` is.
    """
    shipped = DEFAULT_CONFIG_PATH
    try:
        text = shipped.read_text()
    except FileNotFoundError as exc:
        raise TargetError(
            f"{shipped} not found: the rtserver installation lacks its shipped config. "
            "Required action: reinstall rtserver or pass --server-config"
        ) from exc
    for key, value in BENCH_CONFIG_OVERRIDES.items():
        text, n = re.subn(rf"(?m)^{re.escape(key)}\s*=.*$", f"{key} = {value}", text)
        if n != 1:
            raise TargetError(
                f"{shipped}: expected exactly one `{key} = ...` line, found {n}. Required "
                "action: update BENCH_CONFIG_OVERRIDES in rtserver/bench/spawn.py or pass "
                "--server-config"
            )
    out = report_dir / "rtserver-bench.toml"
    out.write_text(text)
    return out


def spawn_target(workers: int, args: argparse.Namespace, log_dir: Path, label: str) -> Target:
    """``rtserver serve`` of the installed package with ``workers`` workers, not started.

    ``args.server_config`` (if given) and ``log_dir`` must be absolute: the server runs
    in ``log_dir``, not in the user's directory.
    """
    config = Path(args.server_config) if args.server_config else bench_server_config(log_dir)
    if not (config.is_absolute() and log_dir.is_absolute()):
        raise TargetError(
            f"{config} or {log_dir} is relative. Required action: resolve user paths "
            "before building targets (rtserver.bench.cli does)"
        )
    argv = [
        sys.executable,
        "-m",
        "rtserver",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--workers",
        str(workers),
        "--config",
        str(config),
        *args.server_arg,
    ]
    return Target(
        name=label,
        kind="spawn",
        workers=workers,
        argv=argv,
        log_dir=log_dir,
        start_timeout=args.start_timeout,
        stop_timeout=args.stop_timeout,
    )


def peer_target(name: str, args: argparse.Namespace, log_dir: Path) -> Target | str:
    """The reference peer ``name`` as a target, or why it cannot run."""
    if name == "node-ws":
        problem = node_peer_problem(not args.no_npm_install, 180.0)
        if problem is not None:
            return problem
        argv = ["node", str(PEERS_DIR / "ws_peer.js"), "--port", "0"]
    else:
        mode = "broadcast" if name == "websockets-broadcast" else "naive"
        argv = [sys.executable, "-m", "rtserver.bench.peers.pyserver", "--mode", mode,
                "--port", "0"]
        if name == "naive":
            for spec in args.inject_peer_fault:
                argv += ["--inject", spec]
    return Target(
        name=name,
        kind="peer",
        argv=argv,
        log_dir=log_dir,
        start_timeout=args.start_timeout,
        stop_timeout=args.stop_timeout,
    )
