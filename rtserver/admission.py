"""Who may open a WebSocket, decided before the upgrade (pure logic, no I/O).

:class:`Admission` holds one worker's admission state: the origin allow-list
(``server.allowed_origins``), open connections per worker and per client
address, a connect-rate token bucket and the unauthenticated-connection cap.
:meth:`Admission.check` returns ``None`` (admit) or a :class:`Refusal` that the
server turns into an HTTP response before any WebSocket state exists; the
server reports every admitted connection's end with :meth:`Admission.release`.

:func:`user_limit_refusal` is the one decision taken after the upgrade, when a
connection authenticates: the per-user connection limit of one worker.

Origin patterns (case-insensitive, matched against the whole ``Origin``):

* ``https://app.example.com`` / ``http://localhost:3000``: that exact origin;
* ``https://*.example.com``: ``*`` stands for one or more host characters
  (letters, digits, ``-`` and ``.``), so it matches ``https://a.example.com``
  and ``https://a.b.example.com`` but never ``https://example.com``,
  ``https://evil-example.com``, another scheme or another port;
* ``null``: the opaque origin (sandboxed frames, ``file:``), refused unless listed;
* ``*``: every origin (logged as a warning at start).

A request without ``Origin`` (a non-browser client) is always admitted by the
origin check; with an empty list, the shipped default, only such requests are.
A request with more than one ``Origin`` header is refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import msgspec

from rtserver.metrics import REGISTRY

if TYPE_CHECKING:
    from rtserver.config_sections import ServerConfig

__all__ = ["REFUSAL_REASONS", "Admission", "OriginPolicy", "Refusal", "user_limit_refusal"]

RefusalReason = Literal["origin", "connect_rate", "max_connections", "per_address",
                        "unauthenticated"]
#: Every refusal reason (the bounded label set of the refusal metric).
REFUSAL_REASONS: tuple[str, ...] = ("origin", "connect_rate", "max_connections",
                                    "per_address", "unauthenticated")

_PATTERN = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>[a-z0-9.*\[\]:-]+)")


class Refusal(msgspec.Struct, frozen=True):
    """Why a handshake is refused: HTTP ``status``, ``reason`` (a metric label),
    a message and required action for the body, ``retry_after`` seconds or None."""

    status: int
    reason: str
    message: str
    action: str
    retry_after: int | None


class OriginPolicy:
    """The compiled ``server.allowed_origins`` list."""

    def __init__(self, patterns: Sequence[str]) -> None:
        """Compile ``patterns``; raise ``ValueError`` naming a malformed one."""
        self.any = False
        self.null = False
        self._exact: set[str] = set()
        self._globs: list[re.Pattern[str]] = []
        for raw in patterns:
            pattern = raw.strip().lower()
            if pattern == "*":
                self.any = True
                continue
            if pattern == "null":
                self.null = True
                continue
            m = _PATTERN.fullmatch(pattern)
            if m is None or pattern.endswith("/"):
                raise ValueError(
                    f"allowed origin {raw!r} is not '*', 'null' or scheme://host[:port] "
                    "(no path, no trailing slash)")
            if "*" not in pattern:
                self._exact.add(pattern)
                continue
            host = m["host"]
            if not host.startswith("*.") or "*" in host[1:]:
                raise ValueError(
                    f"allowed origin {raw!r}: '*' may only be the first label of the host, "
                    "as in https://*.example.com")
            self._globs.append(re.compile(
                re.escape(f"{m['scheme']}://") + r"[a-z0-9-]+(?:\.[a-z0-9-]+)*"
                + re.escape(host[1:])))

    @property
    def warnings(self) -> list[str]:
        """Start-up warnings about the policy (``*`` admits every site)."""
        if self.any:
            return ["server.allowed_origins contains '*': any web page may open WebSockets "
                    "to this server with its visitors' credentials (cross-site WebSocket "
                    "hijacking). Required action: list the exact origins of your web apps"]
        return []

    def allows(self, origin: str) -> bool:
        """Whether one ``Origin`` header value is allowed."""
        value = origin.strip().lower()
        if value == "null":
            return self.null
        if self.any or value in self._exact:
            return True
        return any(g.fullmatch(value) for g in self._globs)


class Admission:
    """One worker's admission decisions and connection counts."""

    __slots__ = ("_dev", "_per_address", "_tokens", "_updated", "burst", "handshakes",
                 "handshakes_max", "max_connections", "max_per_address", "max_unauthenticated",
                 "open", "origins", "rate", "retry_after")

    def __init__(self, config: ServerConfig, now: float) -> None:
        self.origins = OriginPolicy(config.allowed_origins)
        self._dev = config.dev
        self.max_connections = config.max_connections
        self.max_per_address = config.max_connections_per_address
        self.max_unauthenticated = config.max_unauthenticated
        self.rate = config.connect_rate_per_second
        self.burst = float(config.connect_rate_burst)
        self.retry_after = max(1, math.ceil(config.admission_retry_after))
        self._tokens = self.burst
        self._updated = now
        #: Admitted connections not released yet (handshakes in flight included).
        self.open = 0
        #: Admitted connections whose client has not authenticated yet (upgrade and
        #: token check in flight), and the most of them at once since the worker started.
        self.handshakes = 0
        self.handshakes_max = 0
        self._per_address: dict[str, int] = {}

    def per_address(self, address: str) -> int:
        """Admitted, unreleased connections from ``address``."""
        return self._per_address.get(address, 0)

    def page_origins(self, origins: Sequence[str], host: str | None) -> Sequence[str]:
        """The ``Origin`` values to check: with ``--dev`` the server's own pages (an origin
        equal to ``http(s)://`` + the request's ``Host``) count as no origin."""
        if (self._dev and len(origins) == 1 and host is not None
                and origins[0] in (f"http://{host}", f"https://{host}")):
            return ()
        return origins

    def check(self, origins: Sequence[str], address: str, now: float,
              unauthenticated: int) -> Refusal | None:
        """Admit (and count) one WebSocket handshake, or say why not.

        ``origins``: every ``Origin`` header value of the request; ``address``:
        the client's IP address; ``now``: monotonic seconds; ``unauthenticated``:
        this worker's open connections that have not authenticated yet.
        An admitted connection must be given back with :meth:`release`; it counts as a
        handshake in progress until :meth:`handshake_ended`.
        """
        if len(origins) > 1:
            return Refusal(403, "origin", "the request has more than one Origin header",
                           "Required action: send exactly one Origin header", None)
        if origins and not self.origins.allows(origins[0]):
            return Refusal(
                403, "origin", f"origin {origins[0][:200]!r} is not allowed",
                "Required action: the server operator must add this web app's origin to "
                "server.allowed_origins", None)
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens < 1.0:
            wait = math.ceil((1.0 - self._tokens) / self.rate)
            return Refusal(
                503, "connect_rate",
                f"more than {self.rate:g} connection attempts per second on this worker "
                f"(burst {self.burst:g})",
                f"Required action: reconnect after {wait} s with jittered backoff", max(1, wait))
        self._tokens -= 1.0
        if self.open >= self.max_connections:
            return Refusal(
                503, "max_connections",
                f"this worker holds its maximum of {self.max_connections} connections",
                f"Required action: reconnect after {self.retry_after} s with jittered backoff "
                "(the operator may add workers or raise server.max_connections)",
                self.retry_after)
        held = self._per_address.get(address, 0)
        if held >= self.max_per_address:
            return Refusal(
                429, "per_address",
                f"address {address} holds the maximum of {self.max_per_address} connections "
                "on this worker",
                "Required action: close unused connections before opening more "
                "(server.max_connections_per_address)", self.retry_after)
        # Handshakes admitted and not authenticated yet, the upgrade in flight included
        # (``unauthenticated`` counts only the upgraded ones).
        unauthenticated = max(unauthenticated, self.handshakes)
        if unauthenticated >= self.max_unauthenticated:
            return Refusal(
                503, "unauthenticated",
                f"{unauthenticated} connections on this worker have not authenticated yet "
                f"(limit {self.max_unauthenticated})",
                f"Required action: reconnect after {self.retry_after} s and authenticate at "
                "once (?token=JWT)", self.retry_after)
        self.open += 1
        self._per_address[address] = held + 1
        self.handshakes += 1
        if self.handshakes > self.handshakes_max:
            self.handshakes_max = self.handshakes
        return None

    def register_metrics(self) -> None:
        """Export the handshakes in progress (and their most at once) on ``/metrics``."""
        REGISTRY.gauge("rtserver_handshakes_in_progress", "Admitted WebSocket connections whose "
                       "client has not authenticated yet",
                       collect=lambda: {(): float(self.handshakes)})
        REGISTRY.gauge("rtserver_handshakes_in_progress_max", "The most handshakes in progress "
                       "at once since this worker started",
                       collect=lambda: {(): float(self.handshakes_max)})

    def handshake_ended(self) -> None:
        """An admitted connection authenticated, or ended before it did (called once each)."""
        if self.handshakes <= 0:
            raise RuntimeError("handshake_ended without a handshake in progress (a bug in the "
                               "caller)")
        self.handshakes -= 1

    def release(self, address: str) -> None:
        """An admitted connection from ``address`` ended (handshake failed or closed)."""
        held = self._per_address.get(address, 0)
        if held <= 0:
            raise RuntimeError(f"admission release for {address} without an admitted "
                               "connection (a bug in the caller)")
        self.open -= 1
        if held == 1:
            del self._per_address[address]
        else:
            self._per_address[address] = held - 1


def user_limit_refusal(user: str, held: int, limit: int) -> tuple[str, str] | None:
    """``(message, required action)`` when ``user``, who already holds ``held``
    authenticated connections on this worker, may not authenticate one more
    (``limits.max_connections_per_user`` = ``limit``); None admits it."""
    if held < limit:
        return None
    return (f"user {user} already holds the maximum of {limit} connections on this server "
            "worker (limits.max_connections_per_user)",
            "Required action: close connections of this user that are no longer used before "
            "opening another; do not reconnect automatically")
