"""Room presence of the Redis bus: one sorted set per room, scored by expiry.

``P:pres:<room>`` holds msgpack ``[user, connection_id]`` members scored with
their expiry (ms, Redis clock). Every worker refreshes the members of its own
connections (taken from the node's interest snapshot, never from a copy kept
here) every ``presence_refresh_interval``; a dead worker's members expire
after ``presence_ttl``. The caller (:class:`~rtserver.bus.redis_bus.RedisBus`)
handles connection failures.
"""

from __future__ import annotations

from typing import Any

import msgspec
import redis.asyncio as aioredis

from rtserver.bus.base import PresenceMember, PresenceSnapshot

__all__ = ["RedisPresence"]

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()


def _encode(member: PresenceMember) -> bytes:
    return _enc.encode((member.user, member.connection_id))


class RedisPresence:
    """Presence commands on the ``P:pres:<room>`` sorted sets."""

    def __init__(self, key_prefix: str, presence_ttl: float, sha: dict[str, str]) -> None:
        """``sha`` is the bus's script name -> SHA table (filled at every (re)connect)."""
        self._k_pres = f"{key_prefix}:pres:"
        self._ttl_ms = int(presence_ttl * 1000)
        self._sha = sha
        # Leaves seen while a refresh pipeline is in flight (None when none is).
        self._left_during_refresh: list[tuple[str, bytes]] | None = None

    def join(self, client: aioredis.Redis, room: str, member: PresenceMember) -> Any:
        """The command adding ``member`` with expiry now + presence_ttl (to be awaited)."""
        return client.evalsha(self._sha["presence_add"], 1, self._k_pres + room, self._ttl_ms,
                              _encode(member))

    def note_leave(self, room: str, member: PresenceMember) -> None:
        """Remember a leave happening during a refresh (which could re-add it)."""
        if self._left_during_refresh is not None:
            self._left_during_refresh.append((room, _encode(member)))

    def leave(self, client: aioredis.Redis, room: str, member: PresenceMember) -> Any:
        """The command removing ``member`` (to be awaited)."""
        return client.zrem(self._k_pres + room, _encode(member))

    async def query(self, client: aioredis.Redis, room: str, limit: int) -> PresenceSnapshot:
        """Count and up to ``limit`` members over every node (expired entries dropped)."""
        count, raw = await client.evalsha(self._sha["presence_query"], 1, self._k_pres + room,
                                          limit)
        members = []
        for item in raw:
            user, cid = _dec.decode(item)
            members.append(PresenceMember(user=user, connection_id=cid))
        return PresenceSnapshot(count=int(count), members=members)

    @staticmethod
    def by_room(presence: list[tuple[str, PresenceMember]]) -> dict[str, list[bytes]]:
        """Members per room, encoded as stored."""
        out: dict[str, list[bytes]] = {}
        for room, member in presence:
            out.setdefault(room, []).append(_encode(member))
        return out

    async def refresh(self, client: aioredis.Redis,
                      presence: list[tuple[str, PresenceMember]]) -> None:
        """Re-add every member of ``presence`` with a fresh expiry (one pipeline)."""
        if not presence:
            return
        pipe = client.pipeline(transaction=False)
        for room, listed in self.by_room(presence).items():
            for i in range(0, len(listed), 1000):
                pipe.evalsha(self._sha["presence_add"], 1, self._k_pres + room, self._ttl_ms,
                             *listed[i:i + 1000])
        # A member leaving while this pipeline is in flight could be re-added by it
        # after its ZREM: remember such leaves and remove them again afterwards.
        left: list[tuple[str, bytes]] = []
        self._left_during_refresh = left
        try:
            await pipe.execute()
        finally:
            self._left_during_refresh = None
        if left:
            cleanup = client.pipeline(transaction=False)
            for room, encoded in left:
                cleanup.zrem(self._k_pres + room, encoded)
            await cleanup.execute()

    async def remove_all(self, client: aioredis.Redis,
                         presence: list[tuple[str, PresenceMember]]) -> None:
        """Remove every member of ``presence`` (a clean close)."""
        by_room = self.by_room(presence)
        if not by_room:
            return
        pipe = client.pipeline(transaction=False)
        for room, members in by_room.items():
            pipe.zrem(self._k_pres + room, *members)
        await pipe.execute()
