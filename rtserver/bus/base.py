"""The bus interface: how rooms, users and presence span workers and nodes.

A worker's :class:`~rtserver.node.Node` talks to exactly one :class:`Bus`.
The bus is the sequence authority for rooms: ``publish`` assigns the room's
next ``seq`` and hands the publication to every interested worker in one
atomic step, so every subscriber sees a room's messages in ``seq`` order.

Publications come back through one handler (:class:`BusHandler`), also in the
worker that published: the node never delivers a publication locally by
itself, so local and remote subscribers see the same order.

Payload conventions (bytes, never re-encoded per hop):

* A room publication ``body`` is the UTF-8 JSON object of the server message
  *without* its ``seq`` member, for example
  ``{"type":"message","room":"quote:1","from":"u","data":{...}}``. The
  receiving node adds ``seq`` with :func:`with_seq` and frames it once.
* A user payload and a room event payload are complete server messages.

Implementations: :mod:`rtserver.bus.local` (one process, in memory),
:mod:`rtserver.bus.embedded_client` (workers of one machine through the
supervisor's :mod:`rtserver.bus.embedded_server`),
:mod:`rtserver.bus.redis_bus` (several machines through Redis).
"""

from __future__ import annotations

import abc
from typing import Protocol

import msgspec

from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY

__all__ = [
    "RECOVERY_REASONS",
    "Bus",
    "BusHandler",
    "BusHealth",
    "BusUnavailable",
    "HistoryInfo",
    "HistoryReport",
    "InterestSnapshot",
    "PresenceMember",
    "PresenceSnapshot",
    "Recovery",
    "StreamPosition",
    "announce_health",
    "with_seq",
]

HANDLER_ERRORS = REGISTRY.counter(
    "rtserver_bus_handler_errors_total", "Exceptions raised by the node's bus handler", ("bus",))
_log = get_logger("rtserver.bus")


class BusUnavailable(Exception):
    """A bus operation could not be carried out (backend down or restarting).

    The message says what happened; callers answer the client with an error
    whose action tells it to retry, and count it.
    """


class PresenceMember(msgspec.Struct, frozen=True):
    """One connection present in a room."""

    user: str
    connection_id: str


class PresenceSnapshot(msgspec.Struct, frozen=True):
    """Presence of a room across every worker and node."""

    count: int
    members: list[PresenceMember]


class StreamPosition(msgspec.Struct, frozen=True):
    """A place in a room's stream: ``seq`` within the lineage named ``epoch``.

    ``seq`` values are only comparable within one epoch; the epoch changes
    whenever the seq authority may have lost the room's state.
    """

    epoch: str
    seq: int


#: Why a :class:`Recovery` could not fill the gap: the room's lineage changed
#: (the seq authority lost its state), the history no longer holds the oldest
#: missed publication, or the position is ahead of the room (never assigned).
RECOVERY_REASONS = ("epoch_changed", "history_trimmed", "invalid_position")


class Recovery(msgspec.Struct, frozen=True):
    """The answer to :meth:`Bus.recover`: what a room published after a position.

    ``position`` is the room's current position. ``publications`` are
    ``(seq, body)`` of ``position.epoch`` in seq order: every one after the
    asked position when ``recovered``; else (``reason`` set) those still in the
    history after the hole (``history_trimmed``) or none.
    """

    position: StreamPosition
    publications: list[tuple[int, bytes]]
    recovered: bool
    reason: str | None


class HistoryInfo(msgspec.Struct, frozen=True):
    """One room's history as its seq authority holds it (:meth:`Bus.history_info`):
    ``held`` messages of ``bytes`` body bytes, seqs ``first_seq..last_seq`` (None when
    empty) of epoch ``epoch``."""

    room: str
    epoch: str | None
    held: int
    bytes: int
    first_seq: int | None
    last_seq: int | None


class HistoryReport(msgspec.Struct, frozen=True):
    """The retention bounds of the bus's histories and the state of the asked rooms
    (``None`` for a room the authority holds no stream of)."""

    history_size: int
    history_max_bytes: int
    history_ttl: float
    rooms: list[HistoryInfo | None]


class InterestSnapshot(msgspec.Struct, frozen=True):
    """What a worker must (re)declare to its bus, derived from the node's Hub.

    A bus keeps no copy of the worker's rooms, users or presence: after a
    reconnect it asks :meth:`BusHandler.interest_snapshot` and re-declares
    exactly this.
    """

    rooms: list[str]
    users: list[str]
    presence: list[tuple[str, PresenceMember]]
    #: The last position the node delivered per local room (rooms absent when
    #: nothing was delivered yet).
    positions: dict[str, StreamPosition] = msgspec.field(default_factory=dict)


class BusHealth(msgspec.Struct, frozen=True):
    """State of the bus as shown on ``/healthz`` and in metrics."""

    kind: str
    ok: bool
    reason: str | None


class BusHandler(Protocol):
    """What a bus calls back into (implemented by the node)."""

    def on_publication(self, room: str, epoch: str, seq: int, body: bytes) -> None:
        """A room publication with its assigned position for local members.

        After a reconnect the bus delivers the missed publications of every
        room in :attr:`InterestSnapshot.positions` first, in seq order, then the
        live ones (never twice).
        """

    def on_stream_gap(self, room: str, epoch: str, from_seq: int, to_seq: int,
                      reason: str) -> None:
        """Publications ``from_seq..to_seq`` of ``room`` in ``epoch`` cannot be delivered.

        ``reason`` is one of :data:`RECOVERY_REASONS`. For ``epoch_changed``,
        ``epoch`` is the new lineage and ``1..to_seq`` of it were not delivered
        (whatever followed the old position is lost); the next publication is
        ``to_seq + 1`` of ``epoch``. For ``invalid_position``, ``from_seq..to_seq``
        is the range the node claimed but the room never assigned.
        """

    def on_room_event(self, room: str, payload: bytes) -> None:
        """A room event (join/leave) without ``seq`` for local members."""

    def on_user_message(self, user: str, payload: bytes) -> None:
        """A complete server message for every local connection of ``user``."""

    def on_bus_state(self, health: BusHealth) -> None:
        """The bus became degraded or recovered (log, alert, health)."""

    def interest_snapshot(self) -> InterestSnapshot:
        """Rooms, users and presence this worker holds now (from its Hub)."""


def announce_health(handler: BusHandler | None, health: BusHealth) -> None:
    """Tell ``handler`` the bus state changed; a handler that raises is logged and
    counted (the bus must go on)."""
    if handler is None:
        return
    try:
        handler.on_bus_state(health)
    except Exception as exc:  # noqa: BLE001 - logged and counted; the bus must go on
        HANDLER_ERRORS.inc(health.kind)
        _log.error("bus_handler_failed", bus=health.kind, callback="on_bus_state",
                   error=repr(exc))


def with_seq(body: bytes, seq: int) -> bytes:
    """Return the publication ``body`` (a JSON object) with ``"seq": seq`` added."""
    return body[:-1] + b',"seq":%d}' % seq


class Bus(abc.ABC):
    """One interface for the local, embedded and Redis buses."""

    kind: str
    #: While the bus hands a live publication to :meth:`BusHandler.on_publication`: the
    #: ``time.monotonic()`` (CLOCK_MONOTONIC: one clock for every process of a machine) at
    #: which a worker of this node handed it to its bus (publish accepted), for the
    #: publish → delivered histogram (rtserver/fanout_latency.py). 0.0 when there is none:
    #: a publication replayed after a reconnect or published on another node.
    accepted_at: float = 0.0

    @abc.abstractmethod
    async def start(self, handler: BusHandler) -> None:
        """Connect and start delivering to ``handler``."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop delivering and release every resource."""

    @abc.abstractmethod
    async def add_interest(self, room: str) -> StreamPosition | None:
        """This worker has its first local member in ``room``: deliver its publications here.

        Returns the room's position when the interest took effect if this bus keeps
        :meth:`ordered_positions` (every later publication of the room reaches
        :meth:`BusHandler.on_publication` after this answer, in order), else None.
        """

    def ordered_positions(self, room: str) -> bool:
        """Whether the position of the last publication of ``room`` handed to
        :meth:`BusHandler.on_publication` (or the one :meth:`add_interest` returned, when
        none came after it) is the room's position now, for a room whose interest this
        worker holds: true when the room's publications and the answers to this worker's
        requests come in one ordered stream and nothing is being recovered. A joining
        connection then gets that position without asking (rtserver/rooms.py). False by
        default: the bus is asked (:meth:`position`)."""
        return False

    @abc.abstractmethod
    async def remove_interest(self, room: str) -> None:
        """This worker's last local member left ``room``: stop delivering it here."""

    @abc.abstractmethod
    async def add_user_interest(self, user: str) -> None:
        """This worker has its first local connection of ``user``."""

    @abc.abstractmethod
    async def remove_user_interest(self, user: str) -> None:
        """This worker's last local connection of ``user`` closed."""

    @abc.abstractmethod
    async def publish(self, room: str, body: bytes, key: str | None = None) -> StreamPosition:
        """Assign the room's next seq and deliver ``body`` to every interested worker.

        Returns the assigned position. ``key`` (already scoped by the caller)
        makes the publish idempotent: the same key within ``bus.idempotency_window``
        seconds is applied once and answered with its original position. A
        publish interrupted by a connection loss is retried with its key (one
        is generated when the caller gave none) until ``bus.request_timeout``;
        then it raises :class:`BusUnavailable`, and it is not applied later.
        """

    @abc.abstractmethod
    async def position(self, room: str) -> StreamPosition:
        """The room's current position (seq 0 of a new epoch when it has no state)."""

    @abc.abstractmethod
    async def recover(self, room: str, since: StreamPosition) -> Recovery:
        """What ``room`` published after ``since`` (from the bounded history)."""

    @abc.abstractmethod
    async def recover_many(self, since: list[tuple[str, StreamPosition]]) -> list[Recovery]:
        """:meth:`recover` for many rooms in one round trip (answers in the same order)."""

    @abc.abstractmethod
    async def emit_room_event(self, room: str, payload: bytes) -> None:
        """Deliver a room event (no seq) to every interested worker."""

    @abc.abstractmethod
    async def send_to_user(self, user: str, payload: bytes) -> None:
        """Deliver ``payload`` to every connection of ``user`` on every worker."""

    @abc.abstractmethod
    async def presence_join(self, room: str, member: PresenceMember) -> None:
        """Record ``member`` as present in ``room``."""

    @abc.abstractmethod
    async def presence_leave(self, room: str, member: PresenceMember) -> None:
        """Remove ``member`` from ``room``'s presence."""

    @abc.abstractmethod
    async def presence(self, room: str, limit: int) -> PresenceSnapshot:
        """Count and up to ``limit`` members of ``room`` over every worker."""

    @abc.abstractmethod
    async def history_info(self, rooms: list[str]) -> HistoryReport:
        """The history depth of ``rooms`` and the retention bounds (one round trip; no
        state is created for a room without one). Raises :class:`BusUnavailable`."""

    @abc.abstractmethod
    def health(self) -> BusHealth:
        """Current state, cheap to call (no I/O)."""
