"""The extension point for domain handlers (quotes, analytics, admin, notifications).

A domain module registers its client message Structs with a handler each;
the codec's one decoder is built from the core messages plus every registered
type, and the node dispatches decoded domain messages here. Hooks let
handlers react to connections and subscriptions without reaching into the
hub or the bus::

    router = Router()
    router.register(QuoteSubscribe, handle_quote_subscribe)
    router.on_disconnect(forget_editor)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from rtserver.protocol.messages import ClientMessage

if TYPE_CHECKING:
    from rtserver.hub import Connection
    from rtserver.node import Node

__all__ = ["ConnectionHook", "Handler", "RoomHook", "Router", "UserDeliveryHook",
           "UserMessageFilter"]

Handler = Callable[["Node", "Connection", Any], Awaitable[None]]
ConnectionHook = Callable[["Node", "Connection"], Awaitable[None]]
RoomHook = Callable[["Node", "Connection", str], Awaitable[None]]
UserDeliveryHook = Callable[["Node", str, bytes, int], None]
UserMessageFilter = Callable[["Node", "Connection", bytes], bool]


class Router:
    """Message type -> handler, plus connection and room hooks."""

    def __init__(self) -> None:
        self._handlers: dict[type[ClientMessage], Handler] = {}
        self.connect_hooks: list[ConnectionHook] = []
        self.disconnect_hooks: list[ConnectionHook] = []
        self.subscribe_hooks: list[RoomHook] = []
        self.unsubscribe_hooks: list[RoomHook] = []
        self.user_delivery_hooks: list[UserDeliveryHook] = []
        self.user_message_filters: list[UserMessageFilter] = []

    def register(self, message_type: type[ClientMessage], handler: Handler) -> None:
        """Route decoded ``message_type`` messages to ``handler``."""
        if message_type in self._handlers:
            raise ValueError(f"{message_type.__name__} already has a handler")
        self._handlers[message_type] = handler

    def message_types(self) -> tuple[type[ClientMessage], ...]:
        """Every registered client message type (for the codec's union)."""
        return tuple(self._handlers)

    def handler_for(self, message: ClientMessage) -> Handler | None:
        """The handler of ``message``'s type, if any."""
        return self._handlers.get(type(message))

    def on_connect(self, hook: ConnectionHook) -> None:
        """Call ``hook`` once a connection is authenticated (or anonymous)."""
        self.connect_hooks.append(hook)

    def on_disconnect(self, hook: ConnectionHook) -> None:
        """Call ``hook`` after a connection closed."""
        self.disconnect_hooks.append(hook)

    def on_subscribe(self, hook: RoomHook) -> None:
        """Call ``hook`` after a connection joined a room."""
        self.subscribe_hooks.append(hook)

    def on_unsubscribe(self, hook: RoomHook) -> None:
        """Call ``hook`` after a connection left a room (also on disconnect)."""
        self.unsubscribe_hooks.append(hook)

    def on_user_delivery(self, hook: UserDeliveryHook) -> None:
        """Call ``hook(node, user, payload, delivered)`` after a user message was fanned out
        on this worker (``delivered`` = local connections reached). Synchronous: spawn
        any I/O with ``node.spawn``."""
        self.user_delivery_hooks.append(hook)

    def filter_user_messages(self, keep: UserMessageFilter) -> None:
        """Deliver a user message to a connection only when ``keep(node, conn, payload)``."""
        self.user_message_filters.append(keep)
