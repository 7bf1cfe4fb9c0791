"""What domains register on a node: message handlers, hooks, ingress kinds, HTTP routes.

The node owns one :class:`Router`. Each enabled domain plugin
(:mod:`rtserver.plugin`) fills it in ``install()``; the codec's one decoder
is then built from the core messages plus every registered message type, the
ingress decoder from the core ingress kinds plus every registered one. Hooks
let domains react to connections and subscriptions without reaching into the
hub or the bus::

    router.register(QuoteSubscribe, quotes.on_subscribe)
    router.on_disconnect(quotes.forget)
    router.register_ingress(QuoteUpdate, quotes.backend_update)
    router.add_http_route("/admin/health", admin.health_route)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from websockets.http11 import Request, Response

from rtserver.connection import Connection
from rtserver.protocol.messages import ClientMessage

__all__ = [
    "AlertSink",
    "ComponentStateListener",
    "ConnectionHook",
    "Handler",
    "HttpRoute",
    "IngressHandler",
    "RoomHook",
    "Router",
    "UserDeliveryHook",
    "UserMessageFilter",
]

Handler = Callable[[Connection, Any], Awaitable[None]]
ConnectionHook = Callable[[Connection], Awaitable[None]]
RoomHook = Callable[[Connection, str], Awaitable[None]]
UserDeliveryHook = Callable[[str, bytes, int], None]
UserMessageFilter = Callable[[Connection, bytes], bool]
IngressHandler = Callable[[Any], Awaitable[None]]
HttpRoute = Callable[[Request], Awaitable[Response]]
#: (component, ok, reason): a backend degraded or recovered.
ComponentStateListener = Callable[[str, bool, "str | None"], None]
#: (alert_type, severity, message, details): a system alert raised by the core.
AlertSink = Callable[[str, str, str, object], Awaitable[None]]


class Router:
    """Message type -> handler, ingress kind -> handler, path -> route, plus hooks."""

    def __init__(self) -> None:
        self._handlers: dict[type[ClientMessage], Handler] = {}
        self._ingress: dict[type[Any], IngressHandler] = {}
        self.http_routes: dict[str, HttpRoute] = {}
        self.connect_hooks: list[ConnectionHook] = []
        self.disconnect_hooks: list[ConnectionHook] = []
        self.subscribe_hooks: list[RoomHook] = []
        self.unsubscribe_hooks: list[RoomHook] = []
        self.user_delivery_hooks: list[UserDeliveryHook] = []
        self.user_message_filters: list[UserMessageFilter] = []
        self.state_listeners: list[ComponentStateListener] = []
        self.alert_sinks: list[AlertSink] = []

    # ------------------------------------------------------------ messages

    def register(self, message_type: type[ClientMessage], handler: Handler) -> None:
        """Route decoded ``message_type`` messages to ``handler(conn, message)``."""
        if message_type in self._handlers:
            raise ValueError(f"{message_type.__name__} already has a handler. Required "
                             "action: register each message type in one domain only")
        self._handlers[message_type] = handler

    def message_types(self) -> tuple[type[ClientMessage], ...]:
        """Every registered client message type (for the codec's union)."""
        return tuple(self._handlers)

    def handler_for(self, message: ClientMessage) -> Handler | None:
        """The handler of ``message``'s type, if any."""
        return self._handlers.get(type(message))

    # ------------------------------------------------------------ ingress, HTTP

    def register_ingress(self, payload_type: type[Any], handler: IngressHandler) -> None:
        """Route ingress payloads of ``payload_type`` (a tagged msgspec Struct) to ``handler``."""
        if payload_type in self._ingress:
            raise ValueError(f"ingress kind {payload_type.__name__} already has a handler. "
                             "Required action: register each ingress kind in one domain only")
        self._ingress[payload_type] = handler

    def ingress_types(self) -> tuple[type[Any], ...]:
        """Every registered ingress payload type (for the ingress decoder's union)."""
        return tuple(self._ingress)

    def ingress_handler_for(self, payload: object) -> IngressHandler | None:
        """The handler of ``payload``'s type, if any."""
        return self._ingress.get(type(payload))

    def add_http_route(self, path: str, route: HttpRoute) -> None:
        """Serve ``GET path`` with ``route(request)`` on the WebSocket port."""
        if path in self.http_routes:
            raise ValueError(f"HTTP route {path} is registered twice. Required action: "
                             "give each domain route its own path")
        self.http_routes[path] = route

    # ------------------------------------------------------------ hooks

    def on_connect(self, hook: ConnectionHook) -> None:
        """Call ``hook(conn)`` once a connection is authenticated (or anonymous)."""
        self.connect_hooks.append(hook)

    def on_disconnect(self, hook: ConnectionHook) -> None:
        """Call ``hook(conn)`` after a connection closed: the one path that drops a
        domain's per-connection state."""
        self.disconnect_hooks.append(hook)

    def on_subscribe(self, hook: RoomHook) -> None:
        """Call ``hook(conn, room)`` after a connection joined a room."""
        self.subscribe_hooks.append(hook)

    def on_unsubscribe(self, hook: RoomHook) -> None:
        """Call ``hook(conn, room)`` after a connection left a room (also on disconnect)."""
        self.unsubscribe_hooks.append(hook)

    def on_user_delivery(self, hook: UserDeliveryHook) -> None:
        """Call ``hook(user, payload, delivered)`` after a user message was fanned out on this
        worker (``delivered`` = local connections reached). Synchronous: spawn any I/O."""
        self.user_delivery_hooks.append(hook)

    def filter_user_messages(self, keep: UserMessageFilter) -> None:
        """Deliver a user message to a connection only when ``keep(conn, payload)``."""
        self.user_message_filters.append(keep)

    def on_component_state(self, listener: ComponentStateListener) -> None:
        """Call ``listener(component, ok, reason)`` when a backend degrades or recovers."""
        self.state_listeners.append(listener)

    def on_alert(self, sink: AlertSink) -> None:
        """Receive the system alerts the core raises (for example ``worker_respawned``)."""
        self.alert_sinks.append(sink)
