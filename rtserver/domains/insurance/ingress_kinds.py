"""The insurance domain's ingress kinds (registered by the plugin) and ``rtserver notify``.

Backend services send these on the ingress (PostgreSQL ``NOTIFY`` or the Redis
list) next to the core kind ``room_publish``::

    {"type": "user_notify", "user": "…", "title": "…", "body": "…", "data": {...}}
    {"type": "quote_update", "quote_id": "uuid", "update_type": "premium",
     "data": {...}, "version": 7}
    {"type": "calculation_progress", "quote_id": "uuid", "progress": 0.5, "stage": "rating"}
    {"type": "analytics_event", "event": "quote_created", "quote_id": "uuid", "data": {...}}
    {"type": "alert", "alert_type": "rating_engine", "severity": "high",
     "message": "…", "details": {...}}

``LISTEN/NOTIFY`` is at-most-once: durable data lives in tables first.
:func:`send_user_notification` stores the notification and sends its id in the
same transaction, so an offline user still gets it.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

import asyncpg
import msgspec

from rtserver.ingress.payloads import (
    CORE_KINDS,
    EmptyObject,
    IngressDecoder,
    IngressMessage,
    NonEmpty,
)
from rtserver.ingress.postgres_notify import send_ingress_on, validate_channel
from rtserver.store.pool import encode_json

__all__ = [
    "INSURANCE_KINDS",
    "AlertEvent",
    "AnalyticsEvent",
    "CalculationProgress",
    "QuoteUpdate",
    "UserNotify",
    "send_user_notification",
]


class UserNotify(IngressMessage, tag="user_notify", frozen=True):
    """A push notification for every connection of ``user``.

    Without ``notification_id`` the receiver stores it first
    (``Store.create_notification``); with it, it is already stored (see
    :func:`send_user_notification`).
    """

    user: NonEmpty
    title: str
    body: str
    data: msgspec.Raw = EmptyObject
    notification_id: int | None = None


class QuoteUpdate(IngressMessage, tag="quote_update", frozen=True):
    """A backend changed a quote; goes to room ``quote:{quote_id}``."""

    quote_id: uuid.UUID
    update_type: NonEmpty
    data: msgspec.Raw
    version: Annotated[int, msgspec.Meta(ge=1)]


class CalculationProgress(IngressMessage, tag="calculation_progress", frozen=True):
    """Progress (0..1) of a rating calculation; goes to room ``quote:{quote_id}``."""

    quote_id: uuid.UUID
    progress: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
    stage: NonEmpty


class AnalyticsEvent(IngressMessage, tag="analytics_event", frozen=True):
    """A domain event that affects analytics dashboards."""

    event: Literal["quote_created", "quote_converted", "calculation_complete"]
    quote_id: uuid.UUID | None = None
    data: msgspec.Raw = EmptyObject


class AlertEvent(IngressMessage, tag="alert", frozen=True):
    """An alert raised by a backend (stored in ``system_alerts`` by the receiver)."""

    alert_type: NonEmpty
    severity: Literal["low", "medium", "high", "critical"]
    message: NonEmpty
    details: msgspec.Raw = EmptyObject


#: Every ingress kind of the insurance domain.
INSURANCE_KINDS: tuple[type[IngressMessage], ...] = (
    UserNotify, QuoteUpdate, CalculationProgress, AnalyticsEvent, AlertEvent)


async def send_user_notification(
    dsn: str,
    channel: str,
    *,
    user: str,
    title: str,
    body: str,
    data: object,
    connect_timeout: float,
) -> int:
    """Store a notification and announce it on ``channel`` in one transaction.

    Used by ``rtserver notify``. The payload is validated as the core kind plus
    the insurance domain's kinds (what a server with this domain accepts). The
    NOTIFY is delivered only if the row is
    committed, and the row exists even if no listener is connected (the user
    gets it as pending on the next connect). Returns the notification id.
    """
    validate_channel(channel)
    decoder = IngressDecoder((*CORE_KINDS, *INSURANCE_KINDS))
    data_bytes = encode_json(data)
    conn = await asyncpg.connect(dsn, timeout=connect_timeout)
    try:
        async with conn.transaction():
            notification_id = await conn.fetchval(
                "INSERT INTO notifications (user_id, title, body, data) "
                "VALUES ($1, $2, $3, $4::text::jsonb) RETURNING id",
                user, title, body, data_bytes.decode(),
            )
            message = UserNotify(
                user=user, title=title, body=body, data=msgspec.Raw(data_bytes),
                notification_id=int(notification_id),
            )
            await send_ingress_on(conn, channel, msgspec.json.encode(message), decoder)
    finally:
        await conn.close()
    return int(notification_id)
