"""The in-process bus of a single worker without Redis.

It is the sequence authority for the one process: ``publish`` assigns the
next seq and calls the handler in the same step, so order is trivially kept.
It shares the :class:`~rtserver.bus.base.Bus` interface and its tests with the
embedded and Redis buses.
"""

from __future__ import annotations

from rtserver.bus.base import Bus, BusHandler, BusHealth, PresenceMember, PresenceSnapshot

__all__ = ["LocalBus"]


class LocalBus(Bus):
    """One process: interest, seq, presence in memory."""

    kind = "local"

    def __init__(self) -> None:
        self._handler: BusHandler | None = None
        self._seq: dict[str, int] = {}
        self._rooms: set[str] = set()
        self._users: set[str] = set()
        self._presence: dict[str, dict[str, PresenceMember]] = {}

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
        """Deliver ``room``'s publications here."""
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

    async def publish(self, room: str, body: bytes) -> int:
        """Assign the next seq and deliver (when a member is here)."""
        seq = self._seq.get(room, 0) + 1
        self._seq[room] = seq
        if room in self._rooms:
            self._h().on_publication(room, seq, body)
        return seq

    async def last_seq(self, room: str) -> int:
        """The room's last assigned seq."""
        return self._seq.get(room, 0)

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

    def health(self) -> BusHealth:
        """Always healthy: nothing external."""
        return BusHealth(kind=self.kind, ok=True, reason=None)
