"""Rooms on one worker: joining and leaving, the bus interest, publishing, delivery.

The Hub holds the tables (room -> local members, each connection's rooms, the
last delivered seq per room); this module holds the rules of changing them
together with the bus: a connection joins the Hub's room table before any
await (so no publication is missed while the bus interest and the room's seq
are fetched), the first local member declares the bus interest and the last
one drops it, presence and room events follow, and every publication of the
bus is checked against the room's last delivered seq (a duplicate is dropped,
a gap is logged and counted) before it is framed once for all members.

It replies through the node (:class:`Replies`), never imports it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any, Protocol

import orjson

from rtserver.auth import AccessDenied, AccessPolicy
from rtserver.bus.base import (
    Bus,
    BusUnavailable,
    InterestSnapshot,
    PresenceMember,
    StreamPosition,
    with_seq,
)
from rtserver.config import Config, NamespaceConfig
from rtserver.connection import Connection, ConnState
from rtserver.core_metrics import DELIVERIES, ERRORS, PUBLICATIONS, RECOVERIES, STREAM_GAPS
from rtserver.fanout_latency import FanoutLatency
from rtserver.hub import Hub
from rtserver.jsonlog import get_logger
from rtserver.protocol.codec import Codec, ErrorCode
from rtserver.protocol.messages import (
    Ack,
    Gap,
    MessageId,
    PresenceMemberOut,
    PresenceReply,
    RoomEvent,
    ServerMessage,
    Since,
    Subscribed,
)
from rtserver.router import Router

__all__ = ["BROADCAST_ROOM", "Replies", "Rooms"]

log = get_logger("rtserver.rooms")

#: The reserved room every worker is interested in; broadcast() goes through it.
BROADCAST_ROOM = "$broadcast"


class Replies(Protocol):
    """What the room table needs of the node to answer a connection."""

    fanout: Any

    def reply(self, conn: Connection, message: ServerMessage) -> None:
        """Send ``message`` to ``conn``."""

    def error(self, conn: Connection, code: str, message: str, action: str,
              msg_id: MessageId = None, room: str | None = None) -> None:
        """Send an ``error`` frame to ``conn``."""

    async def run_hooks(self, conn: Connection, what: str,
                        coros: list[Awaitable[None]]) -> None:
        """Run domain hooks for ``conn`` through the one error-mapping wrapper."""

    def slow_consumer(self, sink: Any, buffered: int) -> None:
        """Close the connection of ``sink`` with 1013 (logged, counted)."""


class Rooms:
    """Room membership and delivery of one worker (its tables live in the Hub)."""

    def __init__(self, config: Config, hub: Hub, bus: Bus, codec: Codec, policy: AccessPolicy,
                 router: Router, replies: Replies) -> None:
        self.config = config
        self.hub = hub
        self.bus = bus
        self.codec = codec
        self.policy = policy
        self.router = router
        self.out = replies
        self._interest: dict[str, asyncio.Future[None]] = {}
        #: room -> joining sink -> its live publications held until its ``subscribed``.
        self._held: dict[str, dict[Any, _Held]] = {}
        self._excludes: dict[tuple[str, bytes], tuple[Any, float]] = {}
        #: Fan-out latency per publication (rtserver/fanout_latency.py).
        self.latency = FanoutLatency()

    # ------------------------------------------------------------ join / leave

    async def _ensure_interest(self, room: str) -> None:
        fut = self._interest.get(room)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._interest[room] = fut
            try:
                pos = await self.bus.add_interest(room)
            except BusUnavailable as exc:
                del self._interest[room]
                fut.set_exception(exc)
                fut.exception()  # retrieved: every waiter gets it below
                raise
            if pos is not None and self.hub.rooms.get(room):
                # The position when the interest took effect; publications handled since
                # the answer (behind it in the bus's stream) are newer and stay.
                last = self.hub.positions.get(room)
                if last is None or last[0] != pos.epoch or last[1] < pos.seq:
                    self.hub.positions[room] = (pos.epoch, pos.seq)
            fut.set_result(None)
            return
        if fut.done():  # the common case: the room already has the bus's interest
            fut.result()
            return
        await asyncio.shield(fut)

    async def subscribe(self, conn: Connection, rooms: Sequence[str], msg_id: MessageId,
                        *, access_checked: bool = False) -> bool:
        """Join ``rooms`` with access and the subscription limit checked once, here."""
        needed = [r for r in dict.fromkeys(rooms) if r not in conn.rooms]
        limit = self.config.limits.max_subscriptions
        if len(conn.rooms) + len(needed) > limit:
            self.out.error(conn, ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                           f"joining {len(needed)} more rooms would pass the limit of {limit} "
                           "subscriptions",
                           "Required action: unsubscribe from rooms you no longer need", msg_id)
            return False
        principal = conn.principal
        if principal is None:
            self.out.error(conn, ErrorCode.AUTH_REQUIRED,
                           "the connection is not authenticated yet",
                           'Required action: send {"type":"auth","token":JWT} first', msg_id)
            return False
        checked: list[tuple[str, NamespaceConfig]] = []
        try:
            for room in needed:
                rules = (self.policy.namespace(room)[2] if access_checked
                         else self.policy.check(principal, "subscribe", room))
                checked.append((room, rules))
        except AccessDenied as exc:
            self.out.error(conn, exc.code, exc.message, exc.action, msg_id)
            return False
        if not checked:
            return True
        return await self.join_many(conn, [(r, rules, None) for r, rules in checked], msg_id)

    async def join(self, conn: Connection, room: str, rules: NamespaceConfig,
                   msg_id: MessageId = None, since: Since | None = None) -> bool:
        """Join one room (access already checked): :meth:`join_many` with one target, in
        the same steps without the many-room bookkeeping when there is no ``since``."""
        if since is not None:
            return await self.join_many(conn, [(room, rules, since)], msg_id)
        sink = conn.sink
        self.hub.join(conn, room)
        self._held.setdefault(room, {})[sink] = _Held()
        try:
            await self._ensure_interest(room)
            local = self.hub.positions.get(room) if self.bus.ordered_positions(room) else None
            # With ordered positions the last publication handed out here is the room's
            # position (Bus.ordered_positions): no round trip to the bus.
            pos = (StreamPosition(epoch=local[0], seq=local[1]) if local is not None
                   else await self.bus.position(room))
        except BusUnavailable as exc:
            await self._undo_join(conn, [room], sink)
            self.bus_error(conn, exc, msg_id)
            return False
        held = self._release(room, sink)
        if conn.state is ConnState.CLOSING or conn.state is ConnState.CLOSED:
            return False  # connection_closed() leaves the room (it is in conn.rooms)
        self.hub.positions.setdefault(room, (pos.epoch, pos.seq))
        self.out.reply(conn, Subscribed(room=room, seq=pos.seq, epoch=pos.epoch, id=msg_id))
        if held.items:
            fanout = self.out.fanout
            for epoch, seq, payload in held.items:
                if epoch != pos.epoch or seq > pos.seq:
                    fanout.send(sink, payload)
        await self._joined(conn, room, rules)
        return True

    async def _undo_join(self, conn: Connection, rooms: Sequence[str], sink: Any) -> None:
        """A join the bus could not complete: the held publications go, and a room this
        connection was the last local member of gives its bus interest back."""
        for room in rooms:
            self._release(room, sink)
            if self.hub.leave(conn, room):
                self._interest.pop(room, None)
                await self.bus_call(self.bus.remove_interest(room), "remove_interest")

    async def join_many(self, conn: Connection,
                        targets: Sequence[tuple[str, NamespaceConfig, Since | None]],
                        msg_id: MessageId) -> bool:
        """Join rooms (access already checked), each confirmed with ``subscribed``.

        The connection joins each room's local table before any await (so a
        concurrent last leave does not drop the room's bus interest), and the
        room's live publications for it are held until its ``subscribed`` is
        sent. Then, in this order and without any await between: ``subscribed``
        (with the recovery outcome when ``since`` was given), the replayed
        messages after ``since``, and the held live ones not already covered:
        no gap and no duplicate at the replay/live boundary. The interests are
        declared concurrently and every recovery is one bus round trip.
        """
        sink = conn.sink
        rooms = [t[0] for t in targets]
        for room in rooms:
            self.hub.join(conn, room)
            self._held.setdefault(room, {})[sink] = _Held()
        recover = [(r, StreamPosition(epoch=s.epoch, seq=s.seq)) for r, _, s in targets
                   if s is not None]
        plain = [r for r, _, s in targets if s is None]
        try:
            await _all([self._ensure_interest(r) for r in rooms])
            recoveries = await self.bus.recover_many(recover) if recover else []
            positions: list[StreamPosition] = await _all([self.bus.position(r) for r in plain])
        except BusUnavailable as exc:
            await self._undo_join(conn, rooms, sink)
            self.bus_error(conn, exc, msg_id)
            return False
        if conn.state in (ConnState.CLOSING, ConnState.CLOSED):
            for room in rooms:
                self._release(room, sink)
            return False  # connection_closed() leaves the rooms (they are in conn.rooms)
        fanout = self.out.fanout
        by_room = dict(zip((r for r, _ in recover), recoveries, strict=True))
        plain_pos = dict(zip(plain, positions, strict=True))
        for room, _, since in targets:
            held = self._release(room, sink)
            recovery = by_room.get(room)
            if recovery is None:
                pos = plain_pos[room]
                reply = Subscribed(room=room, seq=pos.seq, epoch=pos.epoch, id=msg_id)
                replay: list[tuple[int, bytes]] = []
            else:
                pos = recovery.position
                replay = recovery.publications if recovery.recovered else []
                reply = Subscribed(
                    room=room, seq=pos.seq, epoch=pos.epoch, recovered=recovery.recovered,
                    replayed=len(replay) if recovery.recovered else None,
                    reason=recovery.reason,
                    action=None if recovery.recovered else _reload_action(recovery.reason, since),
                    id=msg_id)
                RECOVERIES.inc("recovered" if recovery.recovered else str(recovery.reason))
            # The room's position here starts at the bus's (unless a publication came first).
            self.hub.positions.setdefault(room, (pos.epoch, pos.seq))
            self.out.reply(conn, reply)
            for seq, body in replay:
                fanout.send(sink, with_seq(body, seq))
            for epoch, seq, payload in held.items:
                if epoch != pos.epoch or seq > pos.seq:
                    fanout.send(sink, payload)
        for room, rules, _ in targets:
            await self._joined(conn, room, rules)
        return True

    def _release(self, room: str, sink: Any) -> _Held:
        """Stop holding ``room``'s live publications for ``sink``; what was held."""
        per_room = self._held.get(room)
        held = per_room.pop(sink, None) if per_room is not None else None
        if per_room is not None and not per_room:
            del self._held[room]
        return held if held is not None else _Held()

    async def _joined(self, conn: Connection, room: str, rules: NamespaceConfig) -> None:
        if rules.presence:
            member = PresenceMember(user=conn.user or "", connection_id=conn.id)
            await self.bus_call(self.bus.presence_join(room, member), "presence_join")
        if rules.room_events:
            event = RoomEvent(event="member_joined", room=room, user=conn.user,
                              connection_id=conn.id)
            await self.bus_call(self.bus.emit_room_event(room, self.codec.encode(event)),
                                "emit_room_event")
        await self.out.run_hooks(conn, "subscribe",
                                 [h(conn, room) for h in self.router.subscribe_hooks])

    async def unsubscribe(self, conn: Connection, room: str) -> None:
        """Leave ``room``."""
        await self.after_leave(conn, room, self.hub.leave(conn, room))

    async def after_leave(self, conn: Connection, room: str, last: bool) -> None:
        """Bus interest, presence, room event and hooks after ``conn`` left ``room``."""
        if self._held:
            self._release(room, conn.sink)  # a connection that closed while joining
        if last:
            self._interest.pop(room, None)
            await self.bus_call(self.bus.remove_interest(room), "remove_interest")
        rules = self.policy.namespace(room)[2]
        if rules.presence:
            member = PresenceMember(user=conn.user or "", connection_id=conn.id)
            await self.bus_call(self.bus.presence_leave(room, member), "presence_leave")
        if rules.room_events:
            event = RoomEvent(event="member_left", room=room, user=conn.user,
                              connection_id=conn.id)
            await self.bus_call(self.bus.emit_room_event(room, self.codec.encode(event)),
                                "emit_room_event")
        await self.out.run_hooks(conn, "unsubscribe",
                                 [h(conn, room) for h in self.router.unsubscribe_hooks])

    # ------------------------------------------------------------ publish / presence

    async def client_publish(self, conn: Connection, room: str, data: bytes,
                             msg_id: MessageId, key: str | None = None) -> None:
        """A client ``publish`` (access already checked by the session): ``ack`` with the seq.

        With the client's ``key``, the bus applies (user, room, key) once within
        ``bus.idempotency_window``; a retry is acknowledged with the original seq.
        """
        body = b'{"type":"message","room":%b,"from":%b,"data":%b}' % (
            orjson.dumps(room), orjson.dumps(conn.user), data)
        bus_key = None if key is None else f"{conn.user or ''}\x00{room}\x00{key}"
        try:
            pos = await self.bus.publish(room, body, bus_key)
        except BusUnavailable as exc:
            self.bus_error(conn, exc, msg_id)
            return
        self.out.reply(conn, Ack(room=room, seq=pos.seq, id=msg_id))

    async def publish(self, room: str, body: bytes, exclude: Connection | None,
                      key: str | None = None) -> int:
        """Publish ``body`` to ``room`` everywhere; ``exclude`` (local) does not receive it;
        ``key`` makes it idempotent (see :meth:`Bus.publish`)."""
        if exclude is None or room not in exclude.rooms:
            return (await self.bus.publish(room, body, key)).seq
        # The publication comes back through on_publication (possibly after
        # publish() returned, with Redis), which takes the exclusion out.
        excluded = (room, body)
        self._excludes[excluded] = (exclude.sink, time.monotonic())
        try:
            return (await self.bus.publish(room, body, key)).seq
        except BusUnavailable:
            self._excludes.pop(excluded, None)
            raise

    async def presence(self, conn: Connection, room: str, msg_id: MessageId) -> None:
        """Answer a client ``presence`` request."""
        limit = self.config.limits.presence_member_limit
        try:
            snap = await self.bus.presence(room, limit)
        except BusUnavailable as exc:
            self.bus_error(conn, exc, msg_id)
            return
        members = [PresenceMemberOut(user=m.user or None, connection_id=m.connection_id)
                   for m in snap.members]
        self.out.reply(conn, PresenceReply(room=room, count=snap.count, members=members,
                                           truncated=snap.count > len(members), id=msg_id))

    def drop_stale_excludes(self, now: float) -> None:
        """An exclusion whose publication never came back (the room lost its last local
        member meanwhile) is dropped after an idle timeout."""
        if not self._excludes:
            return
        idle = self.config.heartbeat.idle_timeout
        for key in [k for k, (_, t) in self._excludes.items() if now - t > idle]:
            del self._excludes[key]

    def bus_error(self, conn: Connection, exc: BusUnavailable, msg_id: MessageId) -> None:
        """Answer ``bus_unavailable`` to ``conn``."""
        self.out.error(conn, ErrorCode.BUS_UNAVAILABLE, f"the message bus is unavailable: {exc}",
                       "Required action: retry with backoff; the server is reconnecting to its "
                       "bus", msg_id)

    async def bus_call(self, coro: Any, what: str) -> None:
        """Await a bus declaration; a failure is logged and counted (the bus re-declares the
        Hub's state after it reconnects)."""
        try:
            await coro
        except BusUnavailable as exc:
            ERRORS.inc(ErrorCode.BUS_UNAVAILABLE)
            log.error("bus_call_failed", operation=what, error=str(exc))

    # ------------------------------------------------------------ delivery (bus handler)

    def on_publication(self, room: str, epoch: str, seq: int, body: bytes) -> None:
        """Fan a room publication out to the local members, once per seq, in order."""
        t0 = self.latency.arrived()
        accepted = self.bus.accepted_at
        PUBLICATIONS.inc()
        exclude = None
        if self._excludes:
            entry = self._excludes.pop((room, body), None)
            if entry is not None:
                exclude = entry[0]
        sinks = self.hub.rooms.get(room)
        if not sinks:
            return
        positions = self.hub.positions
        last = positions.get(room)
        if last is not None and last[0] == epoch and seq != last[1] + 1:
            if seq <= last[1]:
                STREAM_GAPS.inc("duplicate")
                log.warning("stream_duplicate_dropped", room=room, epoch=epoch, seq=seq,
                            last_seq=last[1])
                return
            # The bus fills gaps or reports them (on_stream_gap); this is a bus bug.
            STREAM_GAPS.inc("unannounced")
            log.error("stream_gap_unannounced", room=room, epoch=epoch, last_seq=last[1],
                      seq=seq, missed=seq - last[1] - 1)
        positions[room] = (epoch, seq)
        self.hub.rates.count(room, t0)
        payload = with_seq(body, seq)
        held = self._held.get(room) if self._held else None
        if held:
            # Members still joining get it after their ``subscribed`` (see join_many).
            self._hold(held, epoch, seq, payload)
            n = self.out.fanout.send_many([s for s in sinks if s not in held], payload, exclude)
        else:
            n = self.out.fanout.send_many(sinks, payload, exclude)
        self.latency.queued(t0, accepted)
        DELIVERIES.inc(amount=n)

    def _hold(self, held: dict[Any, _Held], epoch: str, seq: int, payload: bytes) -> None:
        limit = self.config.limits.outbound_buffer_limit
        for sink, h in list(held.items()):
            h.items.append((epoch, seq, payload))
            h.size += len(payload)
            if h.size > limit:
                # A joining connection that cannot keep up is a slow consumer (1013).
                h.items.clear()
                h.size = 0
                self.out.slow_consumer(sink, limit + 1)

    def on_stream_gap(self, room: str, epoch: str, from_seq: int, to_seq: int,
                      reason: str) -> int:
        """Publications ``from_seq..to_seq`` of ``room`` will never be delivered here: every
        local member gets an explicit ``gap`` frame; returns how many did."""
        STREAM_GAPS.inc(reason)
        sinks = self.hub.rooms.get(room)
        log.warning("stream_gap", room=room, epoch=epoch, from_seq=from_seq, to_seq=to_seq,
                    reason=reason, members=len(sinks) if sinks else 0)
        if not sinks:
            return 0
        self.hub.positions[room] = (epoch, to_seq)
        if reason == "epoch_changed":
            lost = (f"the room's stream restarted as epoch {epoch} and the messages after "
                    "your last one may be lost")
        else:
            lost = f"its messages {from_seq}..{to_seq} are lost"
        frame = self.codec.encode(Gap(
            room=room, from_seq=from_seq, to_seq=to_seq, epoch=epoch, reason=reason,
            action=f"Required action: reload this room's state ({lost}); the stream goes on "
            f"from seq {to_seq + 1}"))
        return int(self.out.fanout.send_many(sinks, frame))

    def on_room_event(self, room: str, payload: bytes) -> None:
        """Fan a room event (or a broadcast) out to the local members."""
        sinks = self.hub.all_sinks if room == BROADCAST_ROOM else self.hub.rooms.get(room)
        if sinks:
            self.out.fanout.send_many(sinks, payload)

    def interest_snapshot(self) -> InterestSnapshot:
        """What the bus must re-declare after a reconnect, derived from the Hub."""
        presence: list[tuple[str, PresenceMember]] = []
        for conn in self.hub.connections.values():
            if conn.state is ConnState.CLOSED:
                continue
            for room in conn.rooms:
                if self.policy.namespace(room)[2].presence:
                    presence.append(
                        (room, PresenceMember(user=conn.user or "", connection_id=conn.id)))
        rooms = self.hub.rooms
        return InterestSnapshot(
            rooms=[BROADCAST_ROOM, *rooms], users=list(self.hub.by_user), presence=presence,
            positions={r: StreamPosition(epoch=e, seq=q)
                       for r, (e, q) in self.hub.positions.items() if r in rooms})


class _Held:
    """A joining connection's live publications of one room, until its ``subscribed``."""

    __slots__ = ("items", "size")

    def __init__(self) -> None:
        self.items: list[tuple[str, int, bytes]] = []
        self.size = 0


async def _all(coros: list[Coroutine[Any, Any, Any]]) -> list[Any]:
    """Run ``coros`` concurrently to the end and return their results, raising the first
    error once all are done. One coroutine (a plain subscribe) is awaited directly:
    ``asyncio.gather`` would cost a task and a future per subscribe."""
    if len(coros) == 1:
        return [await coros[0]]
    results = await asyncio.gather(*coros, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def _reload_action(reason: str | None, since: Since | None) -> str:
    after = f" after seq {since.seq} of epoch {since.epoch!r}" if since is not None else ""
    why = {"epoch_changed": "the room's stream restarted (a new epoch)",
           "history_trimmed": "the history no longer holds every message" + after,
           "invalid_position": "that position was never assigned"}.get(reason or "", reason)
    return (f"Required action: reload this room's state ({why}); new messages follow "
            "from the seq of this reply")
