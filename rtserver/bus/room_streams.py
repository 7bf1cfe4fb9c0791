"""Room streams of a seq authority: epoch, seq, bounded history, publish keys.

Used by the two buses that are their own seq authority, :class:`~rtserver.bus.local.LocalBus`
(one process) and :class:`~rtserver.bus.embedded_server.EmbeddedBusServer` (the
supervisor); the Redis bus keeps the same state in Redis.

* **Epoch**: every room stream is created with a new epoch
  ``"<instance>.<n>"`` (``instance`` is random per :class:`RoomStreams`, ``n``
  counts the streams it created), so seqs of a restarted authority or of a room
  that expired are never confused with the old ones.
* **History**: the last ``history_size`` publications per room, also bounded by
  age (``history_ttl``) and by body bytes per room (``history_max_bytes``,
  oldest evicted first: counted, and logged once per room until its history
  drains).
* **Expiry**: a room without publications for ``history_ttl`` seconds whose
  interest check says nobody is interested releases its seq and history; it
  comes back with a new epoch. Rooms are swept lazily, at most every
  ``history_ttl / 4`` seconds, from the calls that create state (publish,
  position, recover), so state only grows with calls and always shrinks back.
* **Publish keys**: a key seen within ``idempotency_window`` seconds answers
  its original position without publishing again. A key a bus client generated
  for its own retry (the caller gave none) is kept only until that retry ends
  (twice the time left to the publish's deadline), so the memory of keys scales
  with the callers' keys, not with every publication.
"""

from __future__ import annotations

import itertools
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from rtserver.bus.base import HistoryInfo, HistoryReport, Recovery, StreamPosition
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY

__all__ = ["HistorySettings", "RoomStreams"]

_log = get_logger("rtserver.bus.history")

_M_EVICTED = REGISTRY.counter(
    "rtserver_bus_history_evicted_total",
    "History messages evicted before history_size because a room exceeded history_max_bytes",
    ("bus",))
_M_EXPIRED = REGISTRY.counter(
    "rtserver_bus_rooms_expired_total",
    "Rooms that released their seq and history after history_ttl without use", ("bus",))
_M_DUPLICATES = REGISTRY.counter(
    "rtserver_bus_publish_duplicates_total",
    "Publishes answered with the original position of their key (not applied again)", ("bus",))


@dataclass(frozen=True, slots=True)
class HistorySettings:
    """Bounds of the room streams (config ``[bus] history_*``, ``idempotency_window``)."""

    history_size: int
    history_ttl: float
    history_max_bytes: int
    idempotency_window: float

    def __post_init__(self) -> None:
        if (self.history_size < 0 or self.history_ttl <= 0 or self.history_max_bytes <= 0
                or self.idempotency_window <= 0):
            raise ValueError(
                "history_size >= 0, history_ttl > 0, history_max_bytes > 0 and "
                "idempotency_window > 0 are required. Required action: fix [bus]")


class _Stream:
    __slots__ = ("epoch", "last_used", "n", "pressured", "ring", "ring_bytes", "seq")

    def __init__(self, n: int, epoch: str, now: float) -> None:
        self.n = n
        self.epoch = epoch
        self.seq = 0
        # (seq, body, published at); seqs are consecutive, oldest first.
        self.ring: deque[tuple[int, bytes, float]] = deque()
        self.ring_bytes = 0
        self.last_used = now
        self.pressured = False


class RoomStreams:
    """The streams of every room known to one seq authority (one event loop, no locks)."""

    def __init__(self, settings: HistorySettings, bus: str) -> None:
        """``bus`` labels metrics and logs (``local`` or ``embedded``)."""
        self.settings = settings
        self.bus = bus
        #: Random per authority instance: the prefix of every epoch it names.
        self.instance = uuid.uuid4().hex[:12]
        self._streams: dict[str, _Stream] = {}
        self._created = 0
        # key -> (epoch n, seq, expires at), insertion order = expiry order: callers'
        # keys (the idempotency window) and keys kept only for a client's retry.
        self._keys: dict[str, tuple[int, int, float]] = {}
        self._retry_keys: dict[str, tuple[int, int, float]] = {}
        self._next_sweep = 0.0

    def epoch_name(self, n: int) -> str:
        """The epoch string of stream number ``n`` of this instance."""
        return f"{self.instance}.{n}"

    def __len__(self) -> int:
        return len(self._streams)

    def _stream(self, room: str, now: float) -> _Stream:
        st = self._streams.get(room)
        if st is None:
            self._created = (self._created + 1) & 0xFFFFFFFF or 1
            st = _Stream(self._created, self.epoch_name(self._created), now)
            self._streams[room] = st
        return st

    def publish(self, room: str, body: bytes, key: str | None, now: float,
                remember: float | None = None) -> tuple[int, int, bool]:
        """Sequence ``body``: ``(epoch n, seq, applied)``; ``applied`` is False for a
        key already seen within the window (its original position is returned).

        ``remember`` is how long the key is kept (seconds, at most the
        idempotency window; None = the window): a key generated for a bus
        client's own retry needs keeping only until that retry's deadline.
        """
        if key is not None:
            seen = self._keys.get(key) or self._retry_keys.get(key)
            if seen is not None and seen[2] > now:
                _M_DUPLICATES.inc(self.bus)
                return seen[0], seen[1], False
        st = self._stream(room, now)
        seq = st.seq = st.seq + 1
        st.last_used = now
        s = self.settings
        if s.history_size:
            ring = st.ring
            ring.append((seq, body, now))
            st.ring_bytes += len(body)
            if len(ring) > s.history_size:
                st.ring_bytes -= len(ring.popleft()[1])
            while st.ring_bytes > s.history_max_bytes and ring:
                old_seq, old_body, _ = ring.popleft()
                st.ring_bytes -= len(old_body)
                _M_EVICTED.inc(self.bus)
                if not st.pressured:
                    st.pressured = True
                    _log.warning("bus_history_evicted", bus=self.bus, room=room, seq=old_seq,
                                 kept=len(ring), limit_bytes=s.history_max_bytes,
                                 note="older messages of this room are evicted before "
                                 "history_size; further evictions are counted "
                                 "(rtserver_bus_history_evicted_total), logged again once "
                                 "its history drained. Required action: raise "
                                 "bus.history_max_bytes if clients must recover further back")
        if key is not None:
            if remember is None:
                self._keys.pop(key, None)
                self._keys[key] = (st.n, seq, now + s.idempotency_window)
            else:
                self._retry_keys.pop(key, None)
                self._retry_keys[key] = (st.n, seq,
                                         now + min(remember, s.idempotency_window))
        return st.n, seq, True

    def lookup(self, key: str, now: float) -> tuple[int, int] | None:
        """``(epoch n, seq)`` of a key applied within the window, else None."""
        seen = self._keys.get(key) or self._retry_keys.get(key)
        if seen is not None and seen[2] > now:
            return seen[0], seen[1]
        return None

    def position(self, room: str, now: float) -> StreamPosition:
        """The room's current position (a new stream at seq 0 when it had none)."""
        st = self._stream(room, now)
        return StreamPosition(epoch=st.epoch, seq=st.seq)

    def position_n(self, room: str, now: float) -> tuple[int, int]:
        """``(epoch n, seq)`` of the room (creating its stream)."""
        st = self._stream(room, now)
        return st.n, st.seq

    def _trim_age(self, st: _Stream, now: float) -> None:
        ring = st.ring
        horizon = now - self.settings.history_ttl
        while ring and ring[0][2] <= horizon:
            st.ring_bytes -= len(ring.popleft()[1])
        if not ring:
            st.pressured = False

    def recover(self, room: str, since: StreamPosition, now: float) -> Recovery:
        """What ``room`` published after ``since`` (see :class:`~rtserver.bus.base.Recovery`)."""
        st = self._stream(room, now)
        self._trim_age(st, now)
        pos = StreamPosition(epoch=st.epoch, seq=st.seq)
        if since.epoch != st.epoch:
            return Recovery(position=pos, publications=[], recovered=False,
                            reason="epoch_changed")
        if since.seq > st.seq or since.seq < 0:
            return Recovery(position=pos, publications=[], recovered=False,
                            reason="invalid_position")
        if since.seq == st.seq:
            return Recovery(position=pos, publications=[], recovered=True, reason=None)
        ring = st.ring
        first = ring[0][0] if ring else st.seq + 1
        start = max(0, since.seq + 1 - first)
        pubs = [(seq, body) for seq, body, _ in itertools.islice(ring, start, None)]
        if since.seq + 1 >= first:
            return Recovery(position=pos, publications=pubs, recovered=True, reason=None)
        return Recovery(position=pos, publications=pubs, recovered=False,
                        reason="history_trimmed")

    def history_info(self, rooms: list[str], now: float) -> HistoryReport:
        """The history depth of ``rooms`` (age-trimmed first; no stream is created)."""
        out: list[HistoryInfo | None] = []
        for room in rooms:
            st = self._streams.get(room)
            if st is None:
                out.append(None)
                continue
            self._trim_age(st, now)
            ring = st.ring
            out.append(HistoryInfo(room=room, epoch=st.epoch, held=len(ring),
                                   bytes=st.ring_bytes,
                                   first_seq=ring[0][0] if ring else None,
                                   last_seq=ring[-1][0] if ring else None))
        s = self.settings
        return HistoryReport(history_size=s.history_size, history_max_bytes=s.history_max_bytes,
                             history_ttl=s.history_ttl, rooms=out)

    def maybe_sweep(self, now: float, interested: Callable[[str], bool]) -> None:
        """Sweep when the last sweep is ``history_ttl / 4`` seconds old (cheap otherwise)."""
        if now >= self._next_sweep:
            self._next_sweep = now + self.settings.history_ttl / 4
            self.sweep(now, interested)

    def sweep(self, now: float, interested: Callable[[str], bool]) -> None:
        """Drop expired publish keys, history older than history_ttl, and the streams of
        rooms unused for history_ttl that nobody is interested in."""
        for keys in (self._keys, self._retry_keys):
            expired_keys = []
            for key, (_, _, expires) in keys.items():
                if expires > now:
                    break
                expired_keys.append(key)
            for key in expired_keys:
                del keys[key]
        ttl = self.settings.history_ttl
        released = []
        for room, st in self._streams.items():
            self._trim_age(st, now)
            if now - st.last_used >= ttl and not interested(room):
                released.append(room)
        for room in released:
            del self._streams[room]
        if released:
            _M_EXPIRED.inc(self.bus, amount=len(released))
            _log.info("bus_rooms_expired", bus=self.bus, rooms=len(released),
                      remaining=len(self._streams), history_ttl=ttl,
                      note="their seq and history are released; they come back with a new "
                      "epoch")
