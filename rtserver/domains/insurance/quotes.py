"""Live quotes (room ``quote:{uuid}``): state, backend updates, collaborative editing.

Access to a quote: permission ``quote:read`` plus either a token room grant
matching ``quote:{id}`` or ownership (the quote's ``customer_id`` equals the
token's ``sub``). Editing needs ``quote:write`` and a subscription to the
quote (made with that access check). Fields are edited one at a time with
optimistic concurrency (:meth:`Store.update_field`, one guarded statement:
racing editors on any worker, exactly one wins).

Ordering: ``quote_subscribe`` joins the room first and reads the state
second, so no update is missed; an update published while the state is being
read can reach the client just before ``quote_state``. Clients apply
``quote_state`` and then only updates whose ``version`` is greater than its
``version`` (docs/domain.md).
"""

from __future__ import annotations

import math
import uuid
from datetime import date
from fnmatch import fnmatchcase
from typing import Any

import msgspec

from rtserver.auth import AccessDenied
from rtserver.context import BusUnavailable, Connection
from rtserver.domain_settings import FieldType
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY
from rtserver.protocol.codec import ErrorCode
from rtserver.store import (
    QuoteNotFound,
    StoreUnavailable,
    UpdateApplied,
    UpdateConflict,
)

from .domain import NOT_FOUND, Domain
from .ingress_kinds import CalculationProgress, QuoteUpdate
from .messages import (
    CalculationProgressOut,
    ConflictError,
    EditAck,
    FieldBlur,
    FieldBlurred,
    FieldFocus,
    FieldFocused,
    FieldUpdate,
    QuoteEdit,
    QuoteState,
    QuoteSubscribe,
    QuoteUpdateOut,
)
from .quote_activity import announce

__all__ = ["Quotes", "check_value", "quote_room"]

log = get_logger("rtserver.domains.insurance.quotes")

EDITS = REGISTRY.counter("rtserver_quote_edits_total", "quote_edit outcomes", ("outcome",))
QUOTE_PUBLISH_FAILURES = REGISTRY.counter(
    "rtserver_quote_publish_failures_total",
    "Quote events stored or received but not published because the bus was unavailable",
    ("type",))


def quote_room(quote_id: uuid.UUID) -> str:
    """The room of one quote."""
    return f"quote:{quote_id}"


def check_value(ftype: FieldType, value: Any, max_length: int) -> str | None:
    """None when ``value`` (decoded JSON) fits ``ftype``, else what is wrong."""
    if ftype == "string":
        if not isinstance(value, str):
            return "must be a string"
        if len(value) > max_length:
            return f"is {len(value)} characters, over the limit of {max_length}"
        return None
    if ftype == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number"
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        return None
    if ftype == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            return "must be an integer"
        return None
    if ftype == "boolean":
        return None if isinstance(value, bool) else "must be true or false"
    # date
    if not isinstance(value, str):
        return "must be an ISO date string (YYYY-MM-DD)"
    try:
        date.fromisoformat(value)
    except ValueError:
        return "must be an ISO date string (YYYY-MM-DD)"
    if len(value) != 10:
        return "must be an ISO date string (YYYY-MM-DD)"
    return None


class Quotes:
    """Quote handlers' state on one node: which fields each connection focuses."""

    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        # connection id -> quote id -> focused fields
        self.focus: dict[str, dict[uuid.UUID, set[str]]] = {}

    # ------------------------------------------------------------ subscribe

    async def subscribe(self, conn: Connection, msg: QuoteSubscribe) -> None:
        """``quote_subscribe``: access check, join, then ``quote_state``."""
        d = self.domain
        ctx = d.ctx
        if not d.require_permission(conn, "quote:read", "quote_subscribe", msg.id):
            return
        store = ctx.require_store(conn, "quote_subscribe", msg.id)
        if store is None:
            return
        room = quote_room(msg.quote_id)
        try:
            ctx.room_rules(room)
        except AccessDenied as exc:
            d.error(conn, exc.code, exc.message, exc.action, msg.id)
            return
        if room in conn.rooms:
            d.error(conn, ErrorCode.ALREADY_SUBSCRIBED, f"already subscribed to {room!r}",
                    "Required action: none; the quote_state was sent with the first "
                    "subscription", msg.id)
            return
        principal = conn.principal
        assert principal is not None
        quote = await d.timed_query(store.get_quote(msg.quote_id))
        if quote is None:
            d.error(conn, NOT_FOUND, f"quote {msg.quote_id} does not exist",
                    "Required action: subscribe to an existing quote id", msg.id)
            return
        granted = any(fnmatchcase(room, pattern) for pattern in principal.grants)
        owner = quote.customer_id is not None and str(quote.customer_id) == principal.user
        if not granted and not owner:
            d.error(conn, ErrorCode.FORBIDDEN,
                    f"the token grants no access to {room!r} and its user does not own the "
                    "quote",
                    f"Required action: use a token whose rooms claim matches {room!r} (or "
                    "the quote's customer's token)", msg.id)
            return
        if not await ctx.subscribe(conn, [room], msg.id, access_checked=True):
            return  # ctx.subscribe answered (limit, bus unavailable) or the connection closes
        try:
            quote = await d.timed_query(store.get_quote(msg.quote_id))
        except StoreUnavailable:
            await ctx.unsubscribe(conn, room)
            raise
        if quote is None:
            await ctx.unsubscribe(conn, room)
            d.error(conn, NOT_FOUND, f"quote {msg.quote_id} was deleted",
                    "Required action: subscribe to an existing quote id", msg.id)
            return
        d.reply(conn, QuoteState(quote_id=quote.id, quote=quote, version=quote.version,
                                 editable_fields=dict(d.settings.editable_fields), id=msg.id))

    # ------------------------------------------------------------ editing

    def _editable(self, conn: Connection, quote_id: uuid.UUID, field: str,
                  what: str, msg_id: Any) -> FieldType | None:
        d = self.domain
        room = quote_room(quote_id)
        if room not in conn.rooms:
            d.error(conn, ErrorCode.NOT_SUBSCRIBED, f"{what} needs a subscription to {room!r}",
                    "Required action: send quote_subscribe for this quote first", msg_id)
            return None
        ftype = d.settings.editable_fields.get(field)
        if ftype is None:
            names = ", ".join(sorted(d.settings.editable_fields)) or "(none)"
            d.validation_error(conn, field, f"field {field!r} is not editable",
                               f"Required action: edit one of the editable fields: {names}",
                               msg_id)
            return None
        return ftype

    async def edit(self, conn: Connection, msg: QuoteEdit) -> None:
        """``quote_edit``: validate, write guarded by version, ack and fan out."""
        d = self.domain
        if not d.require_permission(conn, "quote:write", "quote_edit", msg.id):
            return
        store = d.ctx.require_store(conn, "quote_edit", msg.id)
        if store is None:
            return
        ftype = self._editable(conn, msg.quote_id, msg.field, "quote_edit", msg.id)
        if ftype is None:
            EDITS.inc("invalid")
            return
        value = msgspec.json.decode(msg.value)
        problem = check_value(ftype, value, d.settings.edit_max_string_length)
        if problem is not None:
            EDITS.inc("invalid")
            d.validation_error(conn, msg.field, f"value of field {msg.field!r} {problem}",
                               f"Required action: send a {ftype} value for {msg.field}",
                               msg.id)
            return
        canonical = msgspec.json.encode(value)
        user = conn.user or ""
        result = await d.timed_query(
            store.update_field(msg.quote_id, msg.field, canonical, msg.base_version, user))
        room = quote_room(msg.quote_id)
        match result:
            case UpdateApplied(version=version):
                EDITS.inc("applied")
                update = FieldUpdate(quote_id=msg.quote_id, field=msg.field,
                                     value=msgspec.Raw(canonical), version=version,
                                     updated_by=conn.user)
                try:
                    seq: int | None = await d.publish(room, update, exclude=conn)
                except BusUnavailable as exc:
                    QUOTE_PUBLISH_FAILURES.inc("field_update")
                    log.error("field_update_not_published", quote_id=str(msg.quote_id),
                              version=version, error=str(exc))
                    d.reply(conn, EditAck(room=room, quote_id=msg.quote_id, field=msg.field,
                                          version=version, seq=None, id=msg.id))
                    d.error(conn, ErrorCode.BUS_UNAVAILABLE,
                            f"the edit was saved at version {version} but could not be sent "
                            f"to the other editors: {exc}",
                            "Required action: none for the edit; others see it when they "
                            "resubscribe", msg.id)
                    return
                d.reply(conn, EditAck(room=room, quote_id=msg.quote_id, field=msg.field,
                                      version=version, seq=seq, id=msg.id))
                await announce(d, "field_update", msg.quote_id, version, field=msg.field,
                               user=conn.user)
            case UpdateConflict(current_value=current, current_version=current_version):
                EDITS.inc("conflict")
                d.ctx.error_frame(conn, ConflictError(
                    code="conflict", quote_id=msg.quote_id, field=msg.field,
                    current_value=current, current_version=current_version,
                    message=f"quote {msg.quote_id} is at version {current_version}, not "
                    f"{msg.base_version}",
                    action="Required action: merge with current_value and retry with "
                    f"base_version {current_version}", id=msg.id), "conflict")
            case QuoteNotFound():
                EDITS.inc("not_found")
                d.error(conn, NOT_FOUND, f"quote {msg.quote_id} does not exist",
                        "Required action: edit an existing quote", msg.id)

    # ------------------------------------------------------------ focus

    async def focus_changed(self, conn: Connection, msg: FieldFocus | FieldBlur) -> None:
        """``field_focus`` / ``field_blur``: tell the other members of the quote's room."""
        d = self.domain
        what = "field_focus" if isinstance(msg, FieldFocus) else "field_blur"
        if not d.require_permission(conn, "quote:write", what, msg.id):
            return
        if self._editable(conn, msg.quote_id, msg.field, what, msg.id) is None:
            return
        per_quote = self.focus.setdefault(conn.id, {})
        fields = per_quote.setdefault(msg.quote_id, set())
        event: FieldFocused | FieldBlurred
        if isinstance(msg, FieldFocus):
            fields.add(msg.field)
            event = FieldFocused(quote_id=msg.quote_id, field=msg.field, user=conn.user,
                                 connection_id=conn.id)
        else:
            fields.discard(msg.field)
            event = FieldBlurred(quote_id=msg.quote_id, field=msg.field, user=conn.user,
                                 connection_id=conn.id)
            if not fields:
                del per_quote[msg.quote_id]
                if not per_quote:
                    del self.focus[conn.id]
        await d.publish(quote_room(msg.quote_id), event, exclude=conn)

    async def left_room(self, conn: Connection, room: str) -> None:
        """Blur the fields ``conn`` focused in ``room`` (unsubscribe or disconnect)."""
        per_quote = self.focus.get(conn.id)
        if not per_quote or not room.startswith("quote:"):
            return
        for quote_id in list(per_quote):
            if quote_room(quote_id) != room:
                continue
            fields = per_quote.pop(quote_id)
            for field in sorted(fields):
                event = FieldBlurred(quote_id=quote_id, field=field, user=conn.user,
                                     connection_id=conn.id)
                try:
                    await self.domain.publish(room, event)
                except BusUnavailable as exc:
                    QUOTE_PUBLISH_FAILURES.inc("field_blur")
                    log.error("field_blur_not_published", room=room, error=str(exc))
        if not per_quote:
            self.focus.pop(conn.id, None)

    # ------------------------------------------------------------ ingress

    async def backend_update(self, message: QuoteUpdate | CalculationProgress) -> None:
        """Publish a backend quote update or calculation progress to the quote's room (an
        update also to the admins' quote activity)."""
        out: QuoteUpdateOut | CalculationProgressOut
        if isinstance(message, QuoteUpdate):
            out = QuoteUpdateOut(quote_id=message.quote_id, update_type=message.update_type,
                                 data=message.data, version=message.version)
        else:
            out = CalculationProgressOut(quote_id=message.quote_id, progress=message.progress,
                                         stage=message.stage)
        await self.domain.publish(quote_room(message.quote_id), out)
        if isinstance(message, QuoteUpdate):
            await announce(self.domain, "quote_update", message.quote_id, message.version,
                           update_type=message.update_type)
