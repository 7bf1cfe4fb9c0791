"""Backend ingress → node: what each validated ingress message does.

The listener (:class:`rtserver.store.ingress.IngressListener`, one leader over
all workers and nodes) hands every valid message here; publications go through
the bus so they reach every worker. Domain messages (quote updates, analytics
events, alerts) go to the domain handlers' ingress function.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson

from rtserver.auth import AccessDenied
from rtserver.bus.base import BusUnavailable
from rtserver.handlers.notifications import deliver_notification, notification_payload
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY
from rtserver.store.ingress import IngressPayload, RoomPublish, UserNotify

if TYPE_CHECKING:
    from rtserver.node import Node

__all__ = ["DomainIngress", "IngressDispatcher"]

log = get_logger("rtserver.ingress")
REJECTED = REGISTRY.counter("rtserver_ingress_rejected_total",
                            "Valid ingress messages that could not be carried out", ("reason",))
DELIVERED = REGISTRY.counter("rtserver_ingress_delivered_total",
                             "Ingress messages carried out", ("type",))

#: Domain handlers' ingress entry: returns True when it handled the message.
DomainIngress = Callable[["Node", IngressPayload], Awaitable[bool]]


class IngressDispatcher:
    """Carries out ingress messages on a node."""

    def __init__(self, node: Node, domain: DomainIngress | None) -> None:
        self.node = node
        self.domain = domain

    async def __call__(self, message: IngressPayload) -> None:
        """Handle one ingress message (called one at a time, in arrival order)."""
        node = self.node
        try:
            match message:
                case RoomPublish(room=room, data=data):
                    try:
                        node.policy.namespace(room)
                    except AccessDenied as exc:
                        self._reject("invalid_room", message, exc.message)
                        return
                    body = b'{"type":"message","room":%b,"from":null,"data":%b}' % (
                        orjson.dumps(room), bytes(data))
                    await node.send_to_room(room, body)
                case UserNotify(user=user, title=title, body=text, data=data,
                                notification_id=nid):
                    store = node.store
                    if store is None:
                        self._reject("no_database", message, "notifications need the database")
                        return
                    if nid is None:
                        stored = await store.create_notification(user, title, text, data)
                    else:
                        found = await store.get_notification(nid)
                        if found is None:
                            self._reject("unknown_notification", message,
                                         f"notification {nid} is not stored")
                            return
                        stored = found
                    await deliver_notification(node, user, notification_payload(stored))
                case _:
                    if self.domain is None or not await self.domain(node, message):
                        self._reject("no_handler", message,
                                     f"no handler for ingress type {type(message).__name__}")
                        return
        except BusUnavailable as exc:
            self._reject("bus_unavailable", message, str(exc))
            return
        DELIVERED.inc(type(message).__name__)

    def _reject(self, reason: str, message: IngressPayload, detail: str) -> None:
        REJECTED.inc(reason)
        log.error("ingress_rejected", reason=reason, detail=detail,
                  message_type=type(message).__name__,
                  action="Required action: fix the backend's payload or the server's "
                  "configuration as the detail says")
