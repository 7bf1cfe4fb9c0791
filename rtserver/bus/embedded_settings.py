"""Settings of the embedded bus: the supervisor's server and a worker's client."""

from __future__ import annotations

from dataclasses import dataclass

from rtserver.backoff import BackoffPolicy
from rtserver.bus.room_streams import HistorySettings

__all__ = [
    "MAX_SOCKET_PATH",
    "EmbeddedBusServerSettings",
    "EmbeddedBusSettings",
    "check_socket_path",
]

#: Longest Unix socket path the kernel accepts (``sun_path`` minus the NUL).
MAX_SOCKET_PATH = 107


@dataclass(frozen=True, slots=True)
class EmbeddedBusServerSettings:
    """Settings of the supervisor's bus server (config ``[workers]`` / ``[bus]``)."""

    #: Unix socket path (in the runtime dir); at most 107 bytes.
    socket_path: str
    #: Number of workers the supervisor runs (health names the missing ones).
    expected_workers: int
    #: Bytes queued to one worker that it has not read yet; past this the server
    #: closes that worker's connection (it reconnects and re-declares).
    max_worker_buffer: int
    #: Seconds the server waits for every worker's metrics/health on a cluster request.
    collect_timeout: float
    #: Bounds of the room streams (config ``[bus] history_*``, ``idempotency_window``).
    history: HistorySettings


@dataclass(frozen=True, slots=True)
class EmbeddedBusSettings:
    """Settings of a worker's embedded bus client."""

    socket_path: str
    worker_id: int
    #: Seconds a request may wait for the server's answer before BusUnavailable.
    request_timeout: float
    #: Seconds one connection attempt to the server may take.
    connect_timeout: float
    #: Delays between reconnect attempts (config ``[bus] reconnect_*``).
    reconnect: BackoffPolicy


def check_socket_path(path: str) -> None:
    """Raise ValueError (with the action) when ``path`` is too long for a Unix socket."""
    if len(path.encode()) > MAX_SOCKET_PATH:
        raise ValueError(
            f"bus socket path {path!r} is longer than {MAX_SOCKET_PATH} bytes. "
            "Required action: configure a shorter [workers] runtime_dir")
