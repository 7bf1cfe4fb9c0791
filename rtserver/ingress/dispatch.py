"""Backend ingress → node: what each validated ingress message does.

The listeners (PostgreSQL LISTEN/NOTIFY, one leader over all workers and
nodes; the Redis ingress list) hand every valid message here. The core kind
``room_publish`` is carried out here (through the bus, so it reaches every
worker); every other kind goes to the handler a domain registered for it
(``router.register_ingress``). A domain handler refuses a payload explicitly
by raising :class:`IngressRejected`.
"""

from __future__ import annotations

import orjson

from rtserver.auth import AccessDenied
from rtserver.bus.base import BusUnavailable
from rtserver.context import HandlerContext
from rtserver.ingress.payloads import CORE_KINDS, IngressDecoder, IngressMessage, RoomPublish
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY
from rtserver.router import Router

__all__ = ["IngressDispatcher", "IngressRejected"]

log = get_logger("rtserver.ingress")
REJECTED = REGISTRY.counter("rtserver_ingress_rejected_total",
                            "Valid ingress messages that could not be carried out", ("reason",))
DELIVERED = REGISTRY.counter("rtserver_ingress_delivered_total",
                             "Ingress messages carried out", ("type",))

class IngressRejected(Exception):
    """A domain's ingress handler refuses a valid payload (logged and counted by reason)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class IngressDispatcher:
    """Carries out ingress messages on a node."""

    def __init__(self, ctx: HandlerContext, router: Router) -> None:
        self.ctx = ctx
        self.router = router
        #: Decodes the core kinds and every kind a domain registered (built once).
        self.decoder = IngressDecoder((*CORE_KINDS, *router.ingress_types()))

    async def __call__(self, message: IngressMessage) -> None:
        """Handle one message, at most once (the NOTIFY listener): a refusal or a bus
        failure is logged and counted, never raised."""
        try:
            await self.carry_out(message)
        except IngressRejected as exc:
            self._reject(exc.reason, message, exc.detail)
        except BusUnavailable as exc:
            self._reject("bus_unavailable", message, str(exc))

    async def carry_out(self, message: IngressMessage) -> None:
        """Carry out one message (called one at a time, in arrival order).

        Raises :class:`IngressRejected` when it can never be carried out
        (invalid room, no handler, refused by a domain) and ``BusUnavailable``
        / ``StoreUnavailable`` when a backend is down (the Redis ingress retries
        those, :mod:`rtserver.ingress.redis_list`).
        """
        match message:
            case RoomPublish(room=room, data=data, key=key):
                try:
                    self.ctx.room_rules(room)
                except AccessDenied as exc:
                    raise IngressRejected("invalid_room", exc.message) from exc
                body = b'{"type":"message","room":%b,"from":null,"data":%b}' % (
                    orjson.dumps(room), bytes(data))
                await self.ctx.send_to_room(
                    room, body, key=None if key is None else f"ingress\x00{room}\x00{key}")
            case _:
                handler = self.router.ingress_handler_for(message)
                if handler is None:
                    raise IngressRejected("no_handler",
                                          f"no enabled domain handles ingress type "
                                          f"{type(message).__name__}")
                await handler(message)
        DELIVERED.inc(type(message).__name__)

    def _reject(self, reason: str, message: IngressMessage, detail: str) -> None:
        REJECTED.inc(reason)
        log.error("ingress_rejected", reason=reason, detail=detail,
                  message_type=type(message).__name__,
                  action="Required action: fix the backend's payload or the server's "
                  "configuration as the detail says")
