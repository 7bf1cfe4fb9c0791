"""Start-up failures: one exit status per cause and the one line that reports each.

A failure while starting is never a traceback: the code that finds it raises
:class:`StartupError` (the problem, the required action, the exit status) and
the command line reports it with :func:`report_startup_failure` as one JSON
log line (``event: startup_failed``) and one plain line on stderr. The exit
statuses are documented in docs/deploy.md.
"""

from __future__ import annotations

import errno
import sys

from rtserver import jsonlog
from rtserver.jsonlog import get_logger

__all__ = [
    "EXIT_ADDRESS",
    "EXIT_CONFIG",
    "EXIT_DATABASE",
    "EXIT_REDIS",
    "EXIT_RUNTIME_DIR",
    "EXIT_SCHEMA",
    "StartupError",
    "bind_failure",
    "report_startup_failure",
]

#: The configuration (file, environment, flags) is unreadable or invalid, or the
#: installation cannot serve it (compiled fan-out core missing).
EXIT_CONFIG = 2
#: The listening address cannot be bound (port in use, address not local, privileged port).
EXIT_ADDRESS = 3
#: The runtime directory (the embedded bus's Unix socket) cannot be created or written.
EXIT_RUNTIME_DIR = 4
#: ``database.dsn`` is set but PostgreSQL cannot be reached or refuses the login.
EXIT_DATABASE = 5
#: The database schema is not the version this rtserver needs (run ``rtserver migrate``).
EXIT_SCHEMA = 6
#: ``bus.redis_url`` is set but Redis cannot be reached.
EXIT_REDIS = 7

_log = get_logger("rtserver.startup")


class StartupError(Exception):
    """The server cannot start: ``problem``, the ``action`` that fixes it, the exit ``status``."""

    def __init__(self, status: int, problem: str, action: str) -> None:
        super().__init__(f"{problem}. Required action: {action}")
        self.status = status
        self.problem = problem
        self.action = action


def report_startup_failure(error: StartupError) -> int:
    """Write the JSON log line and the plain stderr line for ``error``; return its status."""
    _log.error("startup_failed", exit_status=error.status, problem=error.problem,
               action=f"Required action: {error.action}")
    jsonlog.flush()  # the JSON line first, then the plain one (the last line of the run)
    print(f"rtserver: cannot start: {error}", file=sys.stderr, flush=True)
    return error.status


def bind_failure(host: str, port: int, exc: OSError) -> StartupError:
    """The :class:`StartupError` for a listening socket that cannot be bound."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        action = (f"stop the process that listens on port {port} (`ss -ltnp 'sport = :{port}'` "
                  "shows it) or choose another port with --port / RTSERVER_PORT / server.port")
    elif exc.errno == errno.EADDRNOTAVAIL:
        action = (f"{host} is not an address of this machine: use one of its addresses (or "
                  "0.0.0.0) with --host / RTSERVER_HOST / server.host")
    elif exc.errno == errno.EACCES:
        action = ("ports below 1024 need privileges: use a port >= 1024 or grant "
                  "CAP_NET_BIND_SERVICE (AmbientCapabilities= in the systemd unit)")
    else:
        action = "fix server.host / server.port (--host, --port)"
    return StartupError(EXIT_ADDRESS, f"cannot listen on {host}:{port} ({reason})", action)
