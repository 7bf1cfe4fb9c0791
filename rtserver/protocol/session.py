"""Per-connection protocol logic, sans I/O.

A :class:`Session` takes one client frame (and the current monotonic time)
and returns the actions the node must carry out: replies, subscriptions,
publications, closes. It never touches sockets, the bus or the database,
so it is tested with bytes and Structs only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sized
from collections.abc import Set as AbstractSet

import msgspec

from rtserver.admission import user_limit_refusal
from rtserver.auth import AccessDenied, AccessPolicy, Principal, TokenError, TokenVerifier
from rtserver.config import LimitsConfig, NamespaceConfig
from rtserver.jsonlog import utc_timestamp
from rtserver.protocol.close_codes import CloseCode
from rtserver.protocol.codec import Codec, DecodeFailure, ErrorCode
from rtserver.protocol.messages import (
    Auth,
    ClientMessage,
    MessageId,
    Ping,
    Pong,
    Presence,
    Publish,
    ServerMessage,
    Since,
    Subscribe,
    SubscribeItem,
    Unsubscribe,
)

__all__ = [
    "Action",
    "Authenticate",
    "CloseConnection",
    "Dispatch",
    "DoPresence",
    "DoPublish",
    "DoSubscribe",
    "DoSubscribeMany",
    "DoUnsubscribe",
    "Fail",
    "Reply",
    "Session",
    "utc_now",
]

#: Rooms whose publish permission a session remembers (a fixed bound per connection).
PUBLISH_DECISIONS_KEPT = 16


#: ISO-8601 UTC timestamp with milliseconds and a Z suffix (the log lines' ``ts``, formatted
#: once per millisecond).
utc_now = utc_timestamp


class Reply(msgspec.Struct, frozen=True):
    """Send ``message`` to this connection."""

    message: ServerMessage


class Fail(msgspec.Struct, frozen=True):
    """Send an ``error`` frame to this connection (and count it by code)."""

    code: str
    message: str
    action: str
    id: MessageId
    #: The room of a many-room ``subscribe`` the error is about.
    room: str | None = None


class CloseConnection(msgspec.Struct, frozen=True):
    """Close this connection with ``code``."""

    code: int
    reason: str


class Authenticate(msgspec.Struct, frozen=True):
    """The connection proved who it is."""

    principal: Principal
    id: MessageId


class DoSubscribe(msgspec.Struct, frozen=True):
    """Subscribe the connection to ``room`` (access already checked); with ``since``,
    recover what was published after that position."""

    room: str
    rules: NamespaceConfig
    id: MessageId
    since: Since | None = None


class DoSubscribeMany(msgspec.Struct, frozen=True):
    """Subscribe the connection to several rooms in one step (one bus round trip)."""

    targets: list[DoSubscribe]
    id: MessageId


class DoUnsubscribe(msgspec.Struct, frozen=True):
    """Remove the connection from ``room``."""

    room: str
    id: MessageId


class DoPublish(msgspec.Struct, frozen=True):
    """Publish ``data`` (raw JSON bytes) to ``room`` (access already checked); ``key`` makes
    it idempotent."""

    room: str
    data: bytes
    id: MessageId
    key: str | None = None


class DoPresence(msgspec.Struct, frozen=True):
    """Answer a presence request for ``room``."""

    room: str
    id: MessageId


class Dispatch(msgspec.Struct, frozen=True):
    """Hand a domain message to the handler registered for its type."""

    message: ClientMessage


Action = (Reply | Fail | CloseConnection | Authenticate | DoSubscribe | DoSubscribeMany
          | DoUnsubscribe | DoPublish | DoPresence | Dispatch)


class Session:
    """Protocol state of one connection: identity, rooms, rate and error budgets."""

    __slots__ = ("_closed", "_errors", "_publish_allowed", "_tokens", "_updated", "codec",
                 "connection_id", "last_activity", "limits", "policy", "principal", "rooms",
                 "user_connections", "verifier")

    def __init__(
        self,
        connection_id: str,
        codec: Codec,
        verifier: TokenVerifier,
        policy: AccessPolicy,
        limits: LimitsConfig,
        now: float,
        rooms: AbstractSet[str],
        user_connections: Mapping[str, Sized],
    ) -> None:
        self.connection_id = connection_id
        self.codec = codec
        self.verifier = verifier
        self.policy = policy
        self.limits = limits
        self.principal: Principal | None = None
        #: The connection's rooms, owned (and mutated) by the worker's Hub; read here.
        self.rooms = rooms
        #: This worker's authenticated connections by user, owned by the Hub; read here
        #: for ``limits.max_connections_per_user``.
        self.user_connections = user_connections
        self.last_activity = now
        self._tokens = float(limits.rate_limit_burst)
        self._updated = now
        self._errors: deque[float] | None = None  # allocated on the first error
        self._publish_allowed: set[str] | None = None  # allocated on the first publish
        #: Set once the session asked for a close: later frames produce no action.
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether the session asked for the connection to be closed."""
        return self._closed

    # ------------------------------------------------------------ helpers

    def set_principal(self, principal: Principal) -> None:
        """Set who the connection is (forgets decisions made for a previous identity)."""
        self.principal = principal
        self._publish_allowed = None

    def error(self, code: str, message: str, action: str, msg_id: MessageId,
              now: float, room: str | None = None) -> list[Action]:
        """An error reply, plus a 1008 close when the error budget is spent."""
        out: list[Action] = [Fail(code, message, action, msg_id, room)]
        window = self._errors
        if window is None:
            window = self._errors = deque()
        window.append(now)
        while window and now - window[0] > 60.0:
            window.popleft()
        if len(window) > self.limits.max_errors_per_minute:
            out.append(Fail(
                ErrorCode.TOO_MANY_ERRORS,
                f"more than {self.limits.max_errors_per_minute} errors within a minute",
                "Required action: fix the client's messages before reconnecting",
                None,
            ))
            out.append(CloseConnection(CloseCode.POLICY, "too many errors"))
            self._closed = True
        return out

    def _subscribe(self, principal: Principal, room: str | None, since: Since | None,
                   items: list[SubscribeItem] | None, msg_id: MessageId,
                   now: float) -> list[Action]:
        """``subscribe``: one ``room`` (with its ``since``) or many ``rooms``, each with access
        checked; the subscription limit counts every room of the request."""
        if (room is None) == (items is None) or (items is not None and since is not None):
            return self.error(
                ErrorCode.INVALID_FIELD, "subscribe takes either `room` (and `since`) or `rooms`",
                'Required action: send {"type":"subscribe","room":R} or '
                '{"type":"subscribe","rooms":[{"room":R,"since":{...}}, ...]}', msg_id, now)
        if items is None:
            assert room is not None
            return self._subscribe_one(principal, room, since, msg_id, now)
        wanted = [(i.room, i.since) for i in items]
        out: list[Action] = []
        targets: list[DoSubscribe] = []
        seen: set[str] = set()
        for name, position in wanted:
            assert name is not None
            problem: tuple[str, str, str] | None = None
            if name in seen:
                problem = (ErrorCode.INVALID_FIELD, f"room {name!r} is listed twice",
                           "Required action: list each room once")
            else:
                seen.add(name)
                try:
                    rules = self.policy.check(principal, "subscribe", name)
                except AccessDenied as exc:
                    problem = (exc.code, exc.message, exc.action)
                else:
                    if name in self.rooms:
                        problem = (ErrorCode.ALREADY_SUBSCRIBED, f"already subscribed to {name!r}",
                                   "Required action: none; do not subscribe twice")
            if problem is not None:
                out += self.error(*problem, msg_id, now, name)
                if self._closed:
                    return out
                continue
            targets.append(DoSubscribe(name, rules, msg_id, position))
        if len(self.rooms) + len(targets) > self.limits.max_subscriptions:
            return self._too_many_subscriptions(out, len(targets), msg_id, now)
        if targets:
            out.append(DoSubscribeMany(targets, msg_id))
        return out

    def _subscribe_one(self, principal: Principal, room: str, since: Since | None,
                       msg_id: MessageId, now: float) -> list[Action]:
        """``subscribe`` of one ``room``: the checks of :meth:`_subscribe` for one target."""
        try:
            rules = self.policy.check(principal, "subscribe", room)
        except AccessDenied as exc:
            problem = (exc.code, exc.message, exc.action)
        else:
            if room not in self.rooms:
                if len(self.rooms) + 1 > self.limits.max_subscriptions:
                    return self._too_many_subscriptions([], 1, msg_id, now)
                return [DoSubscribe(room, rules, msg_id, since)]
            problem = (ErrorCode.ALREADY_SUBSCRIBED, f"already subscribed to {room!r}",
                       "Required action: none; do not subscribe twice")
        out = self.error(*problem, msg_id, now)
        if self._closed or len(self.rooms) <= self.limits.max_subscriptions:
            return out
        return self._too_many_subscriptions(out, 0, msg_id, now)

    def _too_many_subscriptions(self, out: list[Action], more: int, msg_id: MessageId,
                                now: float) -> list[Action]:
        return out + self.error(
            ErrorCode.TOO_MANY_SUBSCRIPTIONS,
            f"{more} more rooms would pass the limit of "
            f"{self.limits.max_subscriptions} subscriptions",
            "Required action: unsubscribe from rooms you no longer need", msg_id, now)

    def _take_token(self, now: float) -> bool:
        rate = self.limits.rate_limit_per_second
        self._tokens = min(float(self.limits.rate_limit_burst),
                           self._tokens + (now - self._updated) * rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def authenticate_with(self, token: str, msg_id: MessageId, now: float) -> list[Action]:
        """Verify ``token`` (from the URL or an ``auth`` frame), then the user's
        connection limit on this worker (error, close 4029)."""
        try:
            principal = self.verifier.verify(token)
        except TokenError as exc:
            self._closed = True
            return [Fail(exc.code, exc.message, exc.action, msg_id),
                    CloseConnection(CloseCode.AUTH_FAILED, exc.code)]
        user = principal.user
        held = None if user is None else self.user_connections.get(user)
        refusal = None if user is None else user_limit_refusal(
            user, 0 if held is None else len(held), self.limits.max_connections_per_user)
        if refusal is not None:
            self._closed = True
            return [Fail(ErrorCode.TOO_MANY_USER_CONNECTIONS, *refusal, msg_id),
                    CloseConnection(CloseCode.USER_LIMIT, "too many connections for this user")]
        return [Authenticate(principal, msg_id)]

    # ------------------------------------------------------------ entry point

    def on_frame(self, frame: str | bytes, now: float) -> list[Action]:
        """Turn one client frame into actions.

        After the session asked for a close (error budget spent, failed
        authentication) every later frame yields no action: the error frame
        is sent once and nothing more from that client is carried out while
        the close handshake completes.
        """
        if self._closed:
            return []
        self.last_activity = now
        if not self._take_token(now):
            retry = 1.0 / self.limits.rate_limit_per_second
            return self.error(
                ErrorCode.RATE_LIMITED,
                f"more than {self.limits.rate_limit_per_second:g} messages per second "
                f"(burst {self.limits.rate_limit_burst})",
                f"Required action: slow down; retry after {retry:.3f} s", None, now)
        if isinstance(frame, bytes):
            return self.error(
                ErrorCode.BINARY_NOT_SUPPORTED, "binary frames are not part of the protocol",
                "Required action: send JSON in text frames", None, now)
        try:
            message = self.codec.decode(frame, self.limits.max_json_depth,
                                        self.limits.client_error_log_interval)
        except DecodeFailure as exc:
            return self.error(exc.code, exc.message, exc.action, exc.msg_id, now)
        return self.on_message(message, now)

    def on_message(self, message: ClientMessage, now: float) -> list[Action]:
        """Turn one decoded client message into actions."""
        principal = self.principal
        match message:
            case Ping(id=msg_id):
                return [Reply(Pong(server_time=utc_now(), id=msg_id))]
            case Auth(token=token, id=msg_id):
                if principal is not None and not principal.anonymous:
                    return self.error(
                        ErrorCode.ALREADY_AUTHENTICATED, "this connection is already authenticated",
                        "Required action: open a new connection to change identity", msg_id, now)
                return self.authenticate_with(token, msg_id, now)
        if principal is None:
            msg_id = getattr(message, "id", None)
            return self.error(
                ErrorCode.AUTH_REQUIRED, "the connection is not authenticated yet",
                'Required action: send {"type":"auth","token":JWT} first', msg_id, now)
        match message:
            case Subscribe(room=room, since=since, rooms=items, id=msg_id):
                return self._subscribe(principal, room, since, items, msg_id, now)
            case Unsubscribe(room=room, id=msg_id):
                if room not in self.rooms:
                    return self.error(
                        ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {room!r}",
                        "Required action: unsubscribe only from rooms you subscribed to",
                        msg_id, now)
                return [DoUnsubscribe(room, msg_id)]
            case Publish(room=room, data=data, key=key, id=msg_id):
                if key is not None and not 0 < len(key) <= self.limits.max_publish_key_length:
                    return self.error(
                        ErrorCode.INVALID_FIELD,
                        f"field `key` must be 1..{self.limits.max_publish_key_length} characters",
                        "Required action: send a shorter idempotency key (or none)", msg_id, now)
                allowed = self._publish_allowed
                if allowed is None or room not in allowed:
                    try:
                        self.policy.check(principal, "publish", room)
                    except AccessDenied as exc:
                        return self.error(exc.code, exc.message, exc.action, msg_id, now)
                    # The principal is fixed for the connection's life (an expired
                    # token closes it), so the decision is remembered for a few rooms.
                    if allowed is None:
                        allowed = self._publish_allowed = set()
                    if len(allowed) < PUBLISH_DECISIONS_KEPT:
                        allowed.add(room)
                return [DoPublish(room, bytes(data), msg_id, key)]
            case Presence(room=room, id=msg_id):
                try:
                    _, _, rules = self.policy.namespace(room)
                except AccessDenied as exc:
                    return self.error(exc.code, exc.message, exc.action, msg_id, now)
                if not rules.presence:
                    return self.error(
                        ErrorCode.PRESENCE_DISABLED,
                        f"presence is not kept for room {room!r}'s namespace",
                        "Required action: do not ask for presence in this namespace", msg_id, now)
                if room not in self.rooms:
                    return self.error(
                        ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {room!r}",
                        "Required action: subscribe to the room before asking who is in it",
                        msg_id, now)
                return [DoPresence(room, msg_id)]
            case _:
                return [Dispatch(message)]
