"""Real faults for the chaos scenario: processes killed, connections cut, Redis restarted.

* :func:`worker_pids` reads the supervisor's ``worker_started`` log lines (the
  latest pid per worker id, so respawned workers are found too);
* :func:`cut_hub_connections` cuts every worker's embedded-bus connection for
  real: it takes a duplicate of each connection's socket from the supervisor
  (``pidfd_getfd(2)``: the supervisor is our child, so we may) and calls
  ``shutdown(SHUT_RDWR)`` on it. Both ends see an ordinary connection loss (the
  workers read EOF, reconnect with backoff and recover their rooms from the hub's
  history); the hub keeps its state, so the epochs stay;
* :class:`RedisServer` is a private ``redis-server`` (no persistence) that can be
  SIGKILLed and started again on the same port (all data lost: new epochs);
  :func:`redis_cut_clients` drops every client connection of the nodes
  (``CLIENT KILL``), their subscriber connections included.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import orjson

__all__ = [
    "ChaosError",
    "RedisServer",
    "cut_hub_connections",
    "free_port",
    "hub_connection_fds",
    "listening_workers",
    "pid_alive",
    "redis_cut_clients",
    "worker_pids",
]

_SYS_PIDFD_GETFD = 438  # x86-64 and the asm-generic table alike
_UNIX_CONNECTED = "03"


class ChaosError(Exception):
    """A fault could not be injected (or a helper process not started)."""


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _log_events(log_path: Path, event: str) -> list[dict[str, object]]:
    """The JSON log lines of ``event`` in a server log, in order."""
    out = []
    needle = f'"{event}"'.encode()
    with open(log_path, "rb") as fh:
        for line in fh:
            if needle not in line:
                continue
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("event") == event:
                out.append(rec)
    return out


def worker_pids(log_path: Path) -> dict[int, int]:
    """worker id -> pid of its latest ``worker_started`` line in a supervisor log."""
    return {int(str(r["worker_id"])): int(str(r["pid"]))
            for r in _log_events(log_path, "worker_started")}


def listening_workers(log_path: Path) -> set[int]:
    """Ids of the workers that logged ``listening`` (at least once) in a server log."""
    return {int(str(r["worker"])) for r in _log_events(log_path, "listening")}


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (and is not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != b"Z"


def _socket_inodes(pid: int) -> dict[int, int]:
    """socket inode -> fd number in process ``pid``."""
    out: dict[int, int] = {}
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            target = os.readlink(f"{fd_dir}/{name}")
            if target.startswith("socket:["):
                out[int(target[8:-1])] = int(name)
    return out


def _connected_unix_inodes(path: str) -> set[int]:
    """Inodes of connected Unix sockets bound to ``path`` (accepted server sides)."""
    out: set[int] = set()
    with open("/proc/net/unix") as fh:
        next(fh)
        for line in fh:
            parts = line.split()
            if len(parts) >= 8 and parts[7] == path and parts[5] == _UNIX_CONNECTED:
                out.add(int(parts[6]))
    return out


def hub_connection_fds(supervisor_pid: int, sock_path: str) -> list[int]:
    """The supervisor's fds of accepted (connected) hub connections on ``sock_path``."""
    fds = _socket_inodes(supervisor_pid)
    return sorted(fds[i] for i in _connected_unix_inodes(sock_path) if i in fds)


def cut_hub_connections(supervisor_pid: int, sock_path: str) -> int:
    """Shut down every accepted hub connection of the supervisor; returns how many."""
    libc = ctypes.CDLL(None, use_errno=True)
    targets = hub_connection_fds(supervisor_pid, sock_path)
    if not targets:
        raise ChaosError(
            f"no connected hub socket {sock_path} in supervisor {supervisor_pid}. Required "
            "action: check that the server runs the embedded bus with workers")
    pidfd = os.pidfd_open(supervisor_pid)
    try:
        for fd in targets:
            dup = libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
            if dup < 0:
                err = ctypes.get_errno()
                raise ChaosError(
                    f"pidfd_getfd({supervisor_pid}, {fd}): {os.strerror(err)}. Required "
                    "action: run the scenario as the server's parent (it spawns it) on "
                    "Linux >= 5.6 without a seccomp filter that forbids pidfd_getfd")
            s = socket.socket(fileno=dup)
            try:
                s.shutdown(socket.SHUT_RDWR)
            finally:
                s.close()
    finally:
        os.close(pidfd)
    return len(targets)


class RedisServer:
    """A private ``redis-server`` on a loopback port, without persistence."""

    def __init__(self, port: int, workdir: Path, start_timeout: float) -> None:
        """``workdir``: its working directory and log; ``start_timeout``: seconds to PONG."""
        self.port = port
        self.workdir = workdir
        self.start_timeout = start_timeout
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Start it and wait until it answers PING."""
        exe = shutil.which("redis-server")
        if exe is None:
            raise ChaosError("redis-server is not on PATH. Required action: install Redis "
                             "(apt-get install redis-server) or use --topology embedded")
        self.starts += 1
        log = open(self.workdir / "redis-server.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            self.proc = await asyncio.create_subprocess_exec(
                exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            log.close()
        deadline = time.monotonic() + self.start_timeout
        while True:
            if await self._ping():
                return
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise ChaosError(
                    f"redis-server on port {self.port} did not answer PING within "
                    f"{self.start_timeout:.0f} s. Required action: read "
                    f"{self.workdir / 'redis-server.log'}")
            await asyncio.sleep(0.05)

    async def _ping(self) -> bool:
        try:
            r, w = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            w.write(b"*1\r\n$4\r\nPING\r\n")
            await w.drain()
            return (await r.readline()).startswith(b"+PONG")
        except OSError:
            return False
        finally:
            w.close()

    async def kill(self) -> None:
        """SIGKILL (no shutdown: every key is lost with the process)."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def restart(self) -> None:
        """SIGKILL, then start again on the same port (an empty dataset)."""
        await self.kill()
        await self.start()


async def redis_cut_clients(port: int) -> int:
    """``CLIENT KILL`` every other client (commands and pub/sub); returns how many."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        killed = 0
        for cmd in ([b"CLIENT", b"KILL", b"TYPE", b"pubsub"],
                    [b"CLIENT", b"KILL", b"TYPE", b"normal", b"SKIPME", b"yes"]):
            w.write(b"*%d\r\n" % len(cmd) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a)
                                                     for a in cmd))
            await w.drain()
            line = await r.readline()
            if not line.startswith(b":"):
                raise ChaosError(f"CLIENT KILL answered {line!r}. Required action: use "
                                 "Redis >= 2.8.12")
            killed += int(line[1:])
        return killed
    finally:
        w.close()
