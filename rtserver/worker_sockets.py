"""Sockets and the runtime directory of a supervisor: SO_REUSEPORT listeners, the port
placeholder, and the cleanup of what supervisors that died left behind."""

from __future__ import annotations

import os
import re
import shutil
import socket

from rtserver.jsonlog import get_logger
from rtserver.startup import bind_failure

__all__ = ["make_reuseport_socket", "remove_stale_runtime", "reserve_port"]

_log = get_logger("rtserver.supervisor")


def make_reuseport_socket(host: str, port: int, backlog: int | None = None) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT`` (and ``SO_REUSEADDR``).

    With ``backlog`` it is listening and non-blocking, ready for
    ``websockets.asyncio.server.serve(handler, sock=sock)``; without, it is
    only bound (the supervisor's port placeholder).
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, type_, proto, _, address = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if backlog is not None:
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def reserve_port(host: str, port: int) -> socket.socket:
    """The supervisor's port placeholder; :class:`StartupError` when the port is taken.

    A socket with ``SO_REUSEPORT`` binds even while another server of the same
    user listens with ``SO_REUSEPORT`` on that port (the two would silently
    share it), so a fixed port is first bound once without it.
    """
    try:
        if port != 0:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
            family, type_, proto, _, address = infos[0]
            with socket.socket(family, type_, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        return make_reuseport_socket(host, port)
    except OSError as exc:
        raise bind_failure(host, port, exc) from exc


_HUB_SOCKET = re.compile(r"rtserver-(\d+)\.sock")
_TEMP_DIR = re.compile(r"rtserver-(\d+)-")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_runtime(parent: str, temporary: bool) -> list[str]:
    """Remove what supervisors that died without cleaning up left behind; return the paths.

    ``temporary``: ``parent`` is the system temp folder and the candidates are
    this user's ``rtserver-*`` directories whose supervisor pids (in the name
    ``rtserver-<pid>-*`` or in a ``rtserver-<pid>.sock`` inside) are all gone.
    Otherwise ``parent`` is the configured runtime directory and the candidates
    are its ``rtserver-<pid>.sock`` files of dead pids. Each removal is logged
    (``runtime_stale_removed``); one that fails is logged as an error with the
    required action, and start-up continues (the new socket has its own name).
    """
    removed: list[str] = []
    try:
        entries = list(os.scandir(parent))
    except FileNotFoundError:
        return removed
    for entry in entries:
        pids: list[int] = []
        if temporary:
            if not entry.name.startswith("rtserver-") or not entry.is_dir(follow_symlinks=False):
                continue
            named = _TEMP_DIR.match(entry.name)
            if named:
                pids.append(int(named.group(1)))
            try:
                if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                    continue
                pids += [int(m.group(1)) for m in map(_HUB_SOCKET.fullmatch, os.listdir(entry))
                         if m]
            except FileNotFoundError:
                # Gone between the scan and now: its supervisor (or another
                # starting one) removed it, which is what we came to do.
                _log.debug("runtime_stale_vanished", path=entry.path)
                continue
            except OSError as exc:
                _log.warning("runtime_stale_unreadable", path=entry.path, error=str(exc),
                             action="Required action: remove it by hand if no rtserver uses it")
                continue
        else:
            match = _HUB_SOCKET.fullmatch(entry.name)
            if match is None:
                continue
            pids.append(int(match.group(1)))
        if not pids or any(_pid_alive(pid) for pid in pids):
            continue
        try:
            if temporary:
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except FileNotFoundError:
            _log.debug("runtime_stale_vanished", path=entry.path)
            continue
        except OSError as exc:
            _log.error("runtime_stale_unremovable", path=entry.path, error=str(exc),
                       action="Required action: remove it by hand (its supervisor is gone)")
            continue
        removed.append(entry.path)
        _log.info("runtime_stale_removed", path=entry.path, dead_pids=sorted(set(pids)))
    return removed
