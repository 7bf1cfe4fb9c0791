"""Settings of the Redis bus (config ``[bus]``), the node id of a worker, the clock id of
its machine."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field

from rtserver.backoff import BackoffPolicy

__all__ = ["RedisBusSettings", "default_node_id", "machine_clock_id", "node_name", "safe_url"]

_BOOT_ID = "/proc/sys/kernel/random/boot_id"


def machine_clock_id() -> str:
    """The identity of this machine's CLOCK_MONOTONIC: Linux's boot id (every process of one
    boot, containers included, reads the same monotonic clock). Where it cannot be read,
    ``pid:<pid>``: only this process's own publications are then timed."""
    try:
        with open(_BOOT_ID, encoding="ascii") as f:
            return "boot:" + f.read().strip()
    except OSError:
        return f"pid:{os.getpid()}"


def node_name(pid: int) -> str:
    """The name of a node (one ``rtserver serve``: its supervisor, or a process of its own):
    ``host:pid`` of that process. Every worker of the node carries it."""
    return f"{socket.gethostname()}:{pid}"


def default_node_id(worker_id: int) -> str:
    """A node id unique per worker process: ``host:pid:worker:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{worker_id}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class RedisBusSettings:
    """Settings of the Redis bus (config ``[bus]``)."""

    #: redis://host:port/db (or rediss://, unix://).
    url: str
    #: Prefix of every key and channel; servers sharing a prefix act as one.
    key_prefix: str
    #: This worker's identity in messages and logs (see :func:`default_node_id`).
    node_id: str
    #: Messages kept per room history list (0 = no history).
    history_size: int
    #: Seconds a history message is kept; a room unused (and unwatched) this long
    #: loses its seq, history and epoch keys (TTL) and comes back with a new epoch.
    history_ttl: float
    #: Body bytes kept per room history (oldest evicted first).
    history_max_bytes: int
    #: Seconds a publish key is remembered (> request_timeout).
    idempotency_window: float
    #: Seconds a presence entry lives without being refreshed.
    presence_ttl: float
    #: Seconds between refreshes of this worker's presence entries (< presence_ttl).
    presence_refresh_interval: float
    #: Seconds one Redis command (or pipeline) may take.
    request_timeout: float
    #: Seconds one connection attempt may take.
    connect_timeout: float
    #: Connections of the command pool (the pub/sub connection is extra).
    max_connections: int
    #: Most publishes sent in one pipeline.
    publish_batch_max: int
    #: Delays between reconnect attempts (config ``[bus] reconnect_*``).
    reconnect: BackoffPolicy
    #: The machine's monotonic clock (:func:`machine_clock_id`, never configured): a
    #: publication carries its accepted time with this id and only a worker of the same
    #: clock observes publish -> delivered (rtserver/fanout_latency.py).
    clock_id: str = field(default_factory=machine_clock_id)
    #: The node this worker belongs to (:func:`node_name`: the supervisor sets its own;
    #: a bus made elsewhere is a node of its own process), registered next to the node id
    #: so that an admin answer names the node of a worker that did not answer.
    node_name: str = field(default_factory=lambda: node_name(os.getpid()))

    def __post_init__(self) -> None:
        if not 0 < self.presence_refresh_interval < self.presence_ttl:
            raise ValueError(
                f"presence_refresh_interval {self.presence_refresh_interval} must be > 0 and "
                f"< presence_ttl {self.presence_ttl}. Required action: fix [bus]")
        if self.publish_batch_max < 1 or self.max_connections < 2 or self.history_size < 0:
            raise ValueError(
                "publish_batch_max >= 1, max_connections >= 2 and history_size >= 0 are required. "
                "Required action: fix [bus]")
        if not (self.history_ttl > self.presence_refresh_interval and self.history_max_bytes > 0
                and self.idempotency_window > self.request_timeout):
            raise ValueError(
                "history_ttl > presence_refresh_interval (watched rooms are kept alive at "
                "every refresh), history_max_bytes > 0 and idempotency_window > "
                "request_timeout are required. Required action: fix [bus]")
        if not self.key_prefix:
            raise ValueError("key_prefix must not be empty. Required action: fix [bus]")


def safe_url(url: str) -> str:
    """``url`` without its password (for logs and error messages)."""
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
