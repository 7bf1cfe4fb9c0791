"""The in-process bus of a single worker without Redis.

It is the sequence authority for the one process: ``publish`` assigns the
next seq and calls the handler in the same step, so order is trivially kept.
Epochs, the bounded history, recovery and publish keys are those of
:class:`~rtserver.bus.room_streams.RoomStreams`. It never disconnects, so it
never has a gap to fill. It shares the :class:`~rtserver.bus.base.Bus`
interface and its tests with the embedded and Redis buses.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rtserver.bus.base import (
    Bus,
    BusHandler,
    BusHealth,
    HistoryReport,
    PresenceMember,
    PresenceSnapshot,
    Recovery,
    StreamPosition,
)
from rtserver.bus.room_streams import HistorySettings, RoomStreams

if TYPE_CHECKING:
    from rtserver.config import BusConfig

__all__ = ["LocalBus"]


class LocalBus(Bus):
    """One process: interest, seq, presence in memory."""

    kind = "local"

    def __init__(self, history: HistorySettings) -> None:
        """``history`` bounds the room streams (config ``[bus] history_*``)."""
        self._handler: BusHandler | None = None
        self._streams = RoomStreams(history, self.kind)
        self._rooms: set[str] = set()
        self._users: set[str] = set()
        self._presence: dict[str, dict[str, PresenceMember]] = {}

    @classmethod
    def from_config(cls, bus: BusConfig) -> LocalBus:
        """A LocalBus bounded by the ``[bus]`` history keys."""
        return cls(HistorySettings(
            history_size=bus.history_size, history_ttl=bus.history_ttl,
            history_max_bytes=bus.history_max_bytes,
            idempotency_window=bus.idempotency_window))

    def _h(self) -> BusHandler:
        if self._handler is None:
            raise RuntimeError("LocalBus used before start(). Required action: await bus.start()")
        return self._handler

    async def start(self, handler: BusHandler) -> None:
        """Start delivering to ``handler``."""
        self._handler = handler

    async def close(self) -> None:
        """Stop delivering."""
        self._handler = None

    async def add_interest(self, room: str) -> None:
        """Deliver ``room``'s publications here (no position: :meth:`position` is asked)."""
        self._rooms.add(room)

    async def remove_interest(self, room: str) -> None:
        """Stop delivering ``room``."""
        self._rooms.discard(room)

    async def add_user_interest(self, user: str) -> None:
        """Deliver ``user``'s messages here."""
        self._users.add(user)

    async def remove_user_interest(self, user: str) -> None:
        """Stop delivering ``user``'s messages."""
        self._users.discard(user)

    async def publish(self, room: str, body: bytes, key: str | None = None) -> StreamPosition:
        """Assign the next seq and deliver (when a member is here); a known key is
        answered with its original position."""
        now = time.monotonic()
        streams = self._streams
        streams.maybe_sweep(now, self._rooms.__contains__)
        n, seq, applied = streams.publish(room, body, key, now)
        epoch = streams.epoch_name(n)
        if applied and room in self._rooms:
            self.accepted_at = now  # accepted here, delivered here (same process)
            try:
                self._h().on_publication(room, epoch, seq, body)
            finally:
                self.accepted_at = 0.0
        return StreamPosition(epoch=epoch, seq=seq)

    async def position(self, room: str) -> StreamPosition:
        """The room's current position."""
        now = time.monotonic()
        self._streams.maybe_sweep(now, self._rooms.__contains__)
        return self._streams.position(room, now)

    async def recover(self, room: str, since: StreamPosition) -> Recovery:
        """What ``room`` published after ``since`` (from the bounded history)."""
        return self._streams.recover(room, since, time.monotonic())

    async def recover_many(self, since: list[tuple[str, StreamPosition]]) -> list[Recovery]:
        """:meth:`recover` for many rooms."""
        now = time.monotonic()
        return [self._streams.recover(room, pos, now) for room, pos in since]

    async def emit_room_event(self, room: str, payload: bytes) -> None:
        """Deliver a room event here."""
        if room in self._rooms:
            self._h().on_room_event(room, payload)

    async def send_to_user(self, user: str, payload: bytes) -> None:
        """Deliver a user message here."""
        if user in self._users:
            self._h().on_user_message(user, payload)

    async def presence_join(self, room: str, member: PresenceMember) -> None:
        """Record ``member`` in ``room``."""
        self._presence.setdefault(room, {})[member.connection_id] = member

    async def presence_leave(self, room: str, member: PresenceMember) -> None:
        """Remove ``member`` from ``room``."""
        members = self._presence.get(room)
        if members is not None:
            members.pop(member.connection_id, None)
            if not members:
                del self._presence[room]

    async def presence(self, room: str, limit: int) -> PresenceSnapshot:
        """Count and up to ``limit`` members."""
        members = self._presence.get(room, {})
        listed = [m for _, m in zip(range(limit), members.values(), strict=False)]
        return PresenceSnapshot(count=len(members), members=listed)

    async def history_info(self, rooms: list[str]) -> HistoryReport:
        """The history depth of ``rooms`` in this process's room streams."""
        return self._streams.history_info(rooms, time.monotonic())

    def health(self) -> BusHealth:
        """Always healthy: nothing external."""
        return BusHealth(kind=self.kind, ok=True, reason=None)
