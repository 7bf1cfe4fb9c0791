"""Servers under test: a spawned rtserver, a running one (``--url``) or a reference peer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import orjson

import rtserver
from rtserver.bench.procstat import descendants

__all__ = [
    "PACKAGE_ROOT",
    "PEERS_DIR",
    "Target",
    "TargetError",
    "child_env",
    "node_peer_problem",
    "parse_url",
]

#: Stamp of this harness run, in the names of the server and generator log files
#: so that runs sharing a report directory keep their own logs.
RUN_STAMP = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())

PEERS_DIR = Path(__file__).resolve().parent / "peers"
#: The directory holding the ``rtserver`` package this harness runs from (site-packages
#: when installed, the checkout otherwise).
PACKAGE_ROOT = Path(rtserver.__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
    """Environment of every process the harness starts (servers, peers, generators).

    ``PACKAGE_ROOT`` goes first on ``PYTHONPATH`` so that ``python -m rtserver ...`` in
    the child imports the same rtserver as the harness, whatever its working directory.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PACKAGE_ROOT) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    return env


class TargetError(Exception):
    """The server under test could not be started or reached."""


def parse_url(url: str) -> tuple[str, int, str]:
    """``ws://127.x.y.z:PORT/path`` -> (host, port, path); only loopback is allowed."""
    parts = urlsplit(url)
    if parts.scheme != "ws" or parts.hostname is None or parts.port is None:
        raise TargetError(f"--url {url!r} is not ws://HOST:PORT/PATH. Required action: fix --url")
    if not parts.hostname.startswith("127."):
        raise TargetError(
            f"--url host {parts.hostname!r} is not in 127.0.0.0/8. Required action: the harness "
            "only talks to loopback; run it on the server's machine"
        )
    path = parts.path or "/ws"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, parts.port, path


def node_peer_problem(install: bool, npm_timeout: float) -> str | None:
    """Why the node-ws peer cannot run (None when it can); may run ``npm install``."""
    node = shutil.which("node")
    if node is None:
        return "node is not on PATH"
    if (PEERS_DIR / "node_modules" / "ws" / "package.json").exists():
        return None
    npm = shutil.which("npm")
    if npm is None or not install:
        return f"the ws package is not installed in {PEERS_DIR}/node_modules and npm is unavailable"
    sys.stderr.write(f"bench: installing the ws package with npm into {PEERS_DIR}/node_modules\n")
    import subprocess

    try:
        proc = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund"],
            cwd=PEERS_DIR,
            capture_output=True,
            timeout=npm_timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"npm install did not finish within {npm_timeout:.0f} s"
    if proc.returncode != 0:
        return "npm install failed: " + proc.stderr.decode(errors="replace")[-300:]
    return None


@dataclass
class Target:
    """One server under test."""

    name: str
    kind: str  # "spawn", "url" or "peer"
    host: str = "127.0.0.1"
    port: int = 0
    path: str = "/ws"
    workers: int = 1
    argv: list[str] = field(default_factory=list)
    server_pid: int | None = None
    #: Absolute directory for the log file; also the process's working directory.
    log_dir: Path | None = None
    start_timeout: float = 30.0
    stop_timeout: float = 10.0
    #: Appended to the run's stamp in this target's log names ("-r2": round 2 of --rounds).
    round_tag: str = ""
    proc: asyncio.subprocess.Process | None = None
    _log: IO[bytes] | None = None

    @property
    def label(self) -> str:
        """Human label (name plus worker count for rtserver)."""
        return self.name

    def server_pids(self) -> list[int]:
        """The server's processes (spawned root + descendants, or --server-pid + descendants)."""
        if self.proc is not None:
            return descendants(self.proc.pid)
        if self.server_pid is not None:
            return descendants(self.server_pid)
        return []

    async def start(self) -> None:
        """Spawn the process (if any), learn its port and wait until it accepts TCP."""
        if self.kind == "url":
            await self._wait_tcp(time.monotonic() + self.start_timeout)
            return
        if self.log_dir is None or not self.log_dir.is_absolute():
            raise TargetError(
                f"{self.name}: log directory {self.log_dir} is not absolute. Required action: "
                "resolve it before starting the target (rtserver.bench.cli does)"
            )
        log_path = self.log_dir / f"server-{self.name}-{RUN_STAMP}{self.round_tag}.log"
        # stdout and stderr go straight to the log file: the server never waits on a pipe
        # that the harness has to drain, and the log is complete even if the harness dies.
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env=child_env(),
            cwd=str(self.log_dir),
            start_new_session=True,
        )
        deadline = time.monotonic() + self.start_timeout
        pending = b""
        with open(log_path, "rb") as reader:
            while True:
                chunk = reader.read()
                if chunk:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    port = next((p for p in map(_listening_port, lines) if p is not None), None)
                    if port is not None:
                        self.port = port
                        break
                    continue
                if self.proc.returncode is not None:
                    raise TargetError(
                        f"{self.name}: exited with status {self.proc.returncode} before listening "
                        f"(command: {' '.join(self.argv)}). Required action: read {log_path}"
                    )
                if time.monotonic() >= deadline:
                    await self.stop()
                    raise TargetError(
                        f"{self.name}: no 'listening' log line within {self.start_timeout:.0f} s. "
                        f"Required action: read {log_path}"
                    )
                await asyncio.sleep(0.05)
        await self._wait_tcp(deadline)

    async def _wait_tcp(self, deadline: float) -> None:
        last = ""
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0):
                    return
            except OSError as exc:
                last = str(exc)
            await asyncio.sleep(0.05)
        raise TargetError(
            f"{self.name}: {self.host}:{self.port} does not accept TCP ({last}). "
            "Required action: start the server or check --url"
        )

    async def stop(self) -> None:
        """SIGTERM the process group, SIGKILL after ``stop_timeout`` (said on stderr)."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.stop_timeout)
            except TimeoutError:
                sys.stderr.write(
                    f"bench: {self.name} did not exit {self.stop_timeout:.0f} s after SIGTERM; "
                    "sending SIGKILL\n"
                )
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def _listening_port(line: bytes) -> int | None:
    line = line.strip()
    if not line.startswith(b"{"):
        return None
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if (
        isinstance(rec, dict)
        and rec.get("event") == "listening"
        and isinstance(rec.get("port"), int)
    ):
        port: int = rec["port"]
        return port
    return None
