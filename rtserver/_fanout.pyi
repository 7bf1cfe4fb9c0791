"""Type stub of the compiled fan-out core (see ``_fanout.pyx`` and ``fanout_reference``)."""

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from websockets.asyncio.connection import Connection

__all__ = ["IOV_BATCH", "STATS_KEYS", "Fanout", "Sink", "frame_text"]

IOV_BATCH: int
STATS_KEYS: tuple[str, ...]

def frame_text(payload: bytes) -> bytes:
    """Return one unmasked RFC 6455 text frame with FIN set carrying ``payload``."""

def direct_fd(transport: Any) -> int:
    """File descriptor the core may ``send()`` to directly, or -1 (TLS, no socket)."""

class Sink:
    """The write side of one websockets connection, owned by the hub."""

    owner: object
    compressed: bool
    closed: bool
    @property
    def connection(self) -> Connection: ...
    @property
    def fd(self) -> int: ...
    @property
    def pending_bytes(self) -> int: ...
    def __init__(self, connection: Connection, owner: object) -> None: ...

class Fanout:
    """Frame once, cork per loop tick, write to many connections."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        outbound_limit: int,
        on_slow_consumer: Callable[[Sink, int], None],
    ) -> None: ...
    def send(self, sink: Sink, payload: bytes) -> None:
        """Queue ``payload`` as one text frame for ``sink``."""
    def send_many(self, sinks: Iterable[Sink], payload: bytes, exclude: Sink | None = None) -> int:
        """Queue ``payload`` framed once for every sink but ``exclude``; return the count."""
    def ping_and_send_many(self, sinks: list[Sink], payload: bytes) -> int:
        """Queue an empty ping followed by ``payload`` as one text frame (both framed once)
        for every sink; return the count. Only for uncompressed sinks: ValueError
        otherwise."""
    def flush(self) -> None:
        """Write every pending frame now, one write per connection."""
    def stats(self) -> dict[str, int]:
        """Counters since start (a copy)."""
