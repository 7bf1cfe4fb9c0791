"""Quote activity for admins: room ``admin:quote_activity``.

Every quote change is announced there as one ``quote_activity`` frame: an
editor's applied ``quote_edit`` (kind ``field_update``: the field, the new
version, the editor) and a backend's ``quote_update`` from the ingress (kind
``quote_update``: its ``update_type`` and version). The frame carries no field
value, so it reveals no more than an ``admin:monitor`` token already sees (which
users are in which ``quote:…`` rooms, ``/admin/connections``): the room is in
the ``admin`` namespace, subscribed with a plain ``subscribe`` and
``admin:monitor``, with the namespace's history and recovery after a reconnect.

The announcement follows the quote room's publication (and an editor's ack). A
bus that cannot take it is logged (``quote_activity_not_published``) and counted
(``rtserver_quote_publish_failures_total{type="quote_activity"}``); the edit or
update itself stands.
"""

from __future__ import annotations

import uuid

from rtserver.context import BusUnavailable
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY
from rtserver.protocol.messages import ServerMessage
from rtserver.protocol.session import utc_now

from .domain import Domain

__all__ = ["QUOTE_ACTIVITY_ROOM", "QuoteActivityOut", "announce"]

log = get_logger("rtserver.domains.insurance.quote_activity")

#: The room of the quote activity stream.
QUOTE_ACTIVITY_ROOM = "admin:quote_activity"

_FAILURES = REGISTRY.counter(
    "rtserver_quote_publish_failures_total",
    "Quote events stored or received but not published because the bus was unavailable",
    ("type",))


class QuoteActivityOut(ServerMessage, tag="quote_activity", frozen=True):
    """One change of a quote, for the admins in ``admin:quote_activity``."""

    room: str
    kind: str
    quote_id: uuid.UUID
    version: int
    field: str | None
    update_type: str | None
    user: str | None
    worker: int
    at: str


async def announce(domain: Domain, kind: str, quote_id: uuid.UUID, version: int, *,
                   field: str | None = None, update_type: str | None = None,
                   user: str | None = None) -> None:
    """Publish one ``quote_activity`` frame (a bus failure is logged and counted)."""
    event = QuoteActivityOut(room=QUOTE_ACTIVITY_ROOM, kind=kind, quote_id=quote_id,
                             version=version, field=field, update_type=update_type,
                             user=user, worker=domain.ctx.worker_id, at=utc_now())
    try:
        await domain.publish(QUOTE_ACTIVITY_ROOM, event)
    except BusUnavailable as exc:
        _FAILURES.inc("quote_activity")
        log.error("quote_activity_not_published", kind=kind, quote_id=str(quote_id),
                  version=version, error=str(exc),
                  action_required="check the bus; the admins' quote activity misses it")
