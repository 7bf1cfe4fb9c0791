"""Message schemas of the rtserver protocol (JSON text frames).

Client messages form one tagged union on ``type`` (see :mod:`rtserver.protocol.codec`,
which builds the one decoder). Unknown fields are rejected (``unknown_field``):
a typo in a field name must not be silently ignored.

Every client message may carry ``id`` (string or integer), echoed in the reply
that answers it so the client can correlate.

Server messages are Structs tagged the same way and encoded with one reused
encoder; room publications (``message``) are built from bytes by the node so
that their ``data`` is never decoded and re-encoded.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = [
    "CLIENT_MESSAGES",
    "Ack",
    "Auth",
    "Authenticated",
    "ClientMessage",
    "ConnectionWelcome",
    "Error",
    "Gap",
    "Heartbeat",
    "Ping",
    "Pong",
    "Presence",
    "PresenceMemberOut",
    "PresenceReply",
    "Publish",
    "RoomEvent",
    "ServerMessage",
    "Since",
    "StartCluster",
    "StopCluster",
    "Subscribe",
    "SubscribeItem",
    "Subscribed",
    "Unsubscribe",
    "Unsubscribed",
    "message_tag",
]

MessageId = str | int | None


class ClientMessage(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, frozen=True):
    """Base of every client message; subclasses set ``tag``."""


# ---------------------------------------------------------------- client -> server


class Auth(ClientMessage, tag="auth", frozen=True):
    """Authenticate with a JWT when no ``token`` query parameter was given."""

    token: str
    id: MessageId = None


class Ping(ClientMessage, tag="ping", frozen=True):
    """Application-level ping, answered with ``pong``."""

    id: MessageId = None


class Since(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A stream position the client already has: recover what followed it."""

    epoch: str
    seq: Annotated[int, msgspec.Meta(ge=0)]


class SubscribeItem(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One room of a many-room ``subscribe``."""

    room: str
    since: Since | None = None


class Subscribe(ClientMessage, tag="subscribe", frozen=True):
    """Join a room (``namespace:key``), or many rooms in one frame (``rooms``).

    With ``since`` the messages published after that position are replayed
    (``recovered: true``) or the reply says why they cannot be
    (``recovered: false`` with ``reason``).
    """

    room: str | None = None
    since: Since | None = None
    rooms: list[SubscribeItem] | None = None
    id: MessageId = None


class Unsubscribe(ClientMessage, tag="unsubscribe", frozen=True):
    """Leave a room."""

    room: str
    id: MessageId = None


class Publish(ClientMessage, tag="publish", frozen=True):
    """Publish ``data`` (any JSON value, passed through untouched) to a room.

    ``key``: the same (user, room, key) within ``bus.idempotency_window`` is
    applied once; a retry gets the original ``ack`` (same seq).
    """

    room: str
    data: msgspec.Raw
    key: str | None = None
    id: MessageId = None


class Presence(ClientMessage, tag="presence", frozen=True):
    """Ask who is in a room (the asker must be subscribed to it)."""

    room: str
    id: MessageId = None


class StartCluster(ClientMessage, tag="start_cluster", frozen=True):
    """Push the cluster document (every worker's status, counters and latency buckets)
    every ``admin.refresh_seconds`` (needs ``admin:monitor``; rtserver/cluster_feed.py)."""

    id: MessageId = None


class StopCluster(ClientMessage, tag="stop_cluster", frozen=True):
    """Stop the ``start_cluster`` pushes of this connection."""

    id: MessageId = None


CLIENT_MESSAGES: tuple[type[ClientMessage], ...] = (
    Auth, Ping, Subscribe, Unsubscribe, Publish, Presence, StartCluster, StopCluster,
)


# ---------------------------------------------------------------- server -> client


class ServerMessage(msgspec.Struct, tag_field="type", frozen=True, omit_defaults=True):
    """Base of every server message; subclasses set ``tag``."""


class ConnectionWelcome(ServerMessage, tag="connection", frozen=True):
    """First frame on every accepted connection."""

    status: Literal["connected"]
    connection_id: str
    worker: int
    server_time: str


class Authenticated(ServerMessage, tag="authenticated", frozen=True):
    """The connection is authenticated (after a token in the URL or an ``auth`` frame)."""

    user: str | None
    permissions: list[str]
    anonymous: bool
    id: MessageId = None


class Pong(ServerMessage, tag="pong", frozen=True):
    """Reply to ``ping``."""

    server_time: str
    id: MessageId = None


class Subscribed(ServerMessage, tag="subscribed", frozen=True):
    """The subscription is made; ``(epoch, seq)`` is the room's stream position then.

    Answering a ``since``: ``recovered`` true with ``replayed`` (that many
    ``message`` frames follow, before any live one), or false with ``reason``
    (``epoch_changed``, ``history_trimmed``, ``invalid_position``) and ``action``.
    """

    room: str
    seq: int
    epoch: str
    recovered: bool | None = None
    replayed: int | None = None
    reason: str | None = None
    action: str | None = None
    id: MessageId = None


class Gap(ServerMessage, tag="gap", frozen=True):
    """Messages ``from_seq..to_seq`` of ``room`` (in ``epoch``) will never arrive."""

    room: str
    from_seq: int
    to_seq: int
    epoch: str
    reason: str
    action: str


class Unsubscribed(ServerMessage, tag="unsubscribed", frozen=True):
    """The subscription is removed."""

    room: str
    id: MessageId = None


class Ack(ServerMessage, tag="ack", frozen=True):
    """The publication was accepted and got ``seq``."""

    room: str
    seq: int
    id: MessageId = None


class PresenceMemberOut(msgspec.Struct, frozen=True):
    """One present connection."""

    user: str | None
    connection_id: str


class PresenceReply(ServerMessage, tag="presence", frozen=True):
    """Who is in a room: total ``count`` and up to the configured limit of ``members``."""

    room: str
    count: int
    members: list[PresenceMemberOut]
    truncated: bool
    id: MessageId = None


class RoomEvent(ServerMessage, tag="room_event", frozen=True):
    """A member joined or left a room (per-namespace switch ``room_events``)."""

    event: Literal["member_joined", "member_left"]
    room: str
    user: str | None
    connection_id: str


class Heartbeat(ServerMessage, tag="heartbeat", frozen=True):
    """Sent every ``heartbeat.interval`` seconds."""

    server_time: str


class Error(ServerMessage, tag="error", frozen=True):
    """Something the client sent, or asked for, failed: ``action`` says what to do.

    ``room`` names the room of a many-room ``subscribe`` that failed.
    """

    code: str
    message: str
    action: str
    id: MessageId = None
    room: str | None = None


def message_tag(message: object) -> str:
    """The ``type`` tag of a message Struct instance (``"subscribe"``, ``"quote_edit"``...)."""
    return str(type(message).__struct_config__.tag)  # type: ignore[attr-defined]
