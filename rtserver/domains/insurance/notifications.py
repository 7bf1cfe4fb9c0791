"""Per-user push notifications (stored in PostgreSQL, delivered across workers), at least once.

* Live: the ingress (``rtserver notify`` / a backend's NOTIFY, kind
  ``user_notify``) stores the row and :meth:`Notifications.deliver` sends
  ``notification`` to every connection of the user on every worker through
  the bus.
* A notification counts as delivered only when a client acknowledges it:
  ``notification_received {notification_ids}`` (or ``notification_ack``,
  which also marks it read) sets ``delivered_at``. Queued to a connection is
  not delivered: a connection closed before the acknowledgement (slow
  consumer 1013, network loss, restart) leaves it pending.
* On every authenticated connect, the user's pending notifications (not yet
  acknowledged, at most ``notifications.pending_batch``, oldest first) are
  sent, merged in id order with live ones arriving meanwhile; when the batch
  was full, the next one follows once the client acknowledges the last id of
  the batch. Every connection of the user gets them until one acknowledges
  them, so a client may see a notification more than once and de-duplicates
  by ``id`` (at-least-once).
* ``notification_ack {notification_id}`` marks one read;
  ``notifications_list {unread_only, limit, before_id}`` pages through them.

The client field is ``notification_id(s)`` (not ``id``) because ``id`` is the
correlation id every client message may carry.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import msgspec

from rtserver.context import Connection, HandlerContext
from rtserver.ingress.dispatch import IngressRejected
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY
from rtserver.protocol.messages import ClientMessage, MessageId, ServerMessage
from rtserver.router import Router

from .ingress_kinds import UserNotify

if TYPE_CHECKING:
    from rtserver.store.models import Notification as StoredNotification
    from rtserver.store.postgres import Store

__all__ = [
    "NotificationAck",
    "NotificationAcked",
    "NotificationItem",
    "NotificationOut",
    "NotificationReceived",
    "Notifications",
    "NotificationsList",
    "NotificationsPage",
    "NotificationsReceived",
    "notification_payload",
]

log = get_logger("rtserver.notifications")
DUPLICATES = REGISTRY.counter("rtserver_notifications_duplicates_skipped_total",
                              "Live notifications not sent again to a connection that had it")
DELIVERED = REGISTRY.counter("rtserver_notifications_delivered_total",
                             "Notifications sent to connections (live or pending)", ("path",))
RECEIVED = REGISTRY.counter("rtserver_notifications_received_total",
                            "Notification receipts acknowledged by clients")
PREFIX = b'{"type":"notification",'


class NotificationAck(ClientMessage, tag="notification_ack", frozen=True):
    """Mark a notification read."""

    notification_id: int
    id: MessageId = None


class NotificationReceived(ClientMessage, tag="notification_received", frozen=True):
    """The client has these notifications (stored or shown): they are delivered."""

    notification_ids: list[int]
    id: MessageId = None


class NotificationsList(ClientMessage, tag="notifications_list", frozen=True):
    """Page through the user's notifications, newest first."""

    unread_only: bool
    limit: int
    before_id: int | None = None
    id: MessageId = None


class NotificationOut(ServerMessage, tag="notification", frozen=True):
    """A push notification (``id`` is the notification's id)."""

    id: int
    title: str
    body: str
    data: msgspec.Raw
    created_at: datetime


class NotificationItem(msgspec.Struct, frozen=True):
    """One notification in a page."""

    notification_id: int
    title: str
    body: str
    data: msgspec.Raw
    created_at: datetime
    delivered_at: datetime | None
    read_at: datetime | None


class NotificationsPage(ServerMessage, tag="notifications", frozen=True):
    """Reply to ``notifications_list``; pass ``next_before_id`` as ``before_id`` for more."""

    items: list[NotificationItem]
    next_before_id: int | None
    id: MessageId = None


class NotificationAcked(ServerMessage, tag="notification_acked", frozen=True):
    """Reply to ``notification_ack``."""

    notification_id: int
    read_at: datetime | None
    id: MessageId = None


class NotificationsReceived(ServerMessage, tag="notifications_received", frozen=True):
    """Reply to ``notification_received``: the ids recorded (the user's) and those not found."""

    notification_ids: list[int]
    unknown_ids: list[int]
    id: MessageId = None


_ENCODER = msgspec.json.Encoder()


def notification_payload(n: StoredNotification) -> bytes:
    """The ``notification`` frame payload of a stored notification."""
    return _ENCODER.encode(NotificationOut(id=n.id, title=n.title, body=n.body, data=n.data,
                                           created_at=n.created_at))


class _IdOnly(msgspec.Struct):
    id: int


class Notifications:
    """Notification delivery state of one node.

    Around a connection's connect-time read of its pending notifications,
    live notifications for it are held until the read is done; then pending
    and held ones are sent together in id order, each once on this
    connection. Afterwards live copies of the pending ones are skipped. When
    the pending batch was full, ``_next`` keeps the last id sent: its
    acknowledgement asks for the next batch. Every table is keyed by
    connection and dropped by the one disconnect hook.
    """

    def __init__(self, ctx: HandlerContext) -> None:
        self.ctx = ctx
        self._held: dict[str, dict[int, bytes]] = {}
        self._sent: dict[str, set[int]] = {}
        self._next: dict[str, int] = {}

    def install(self, router: Router) -> None:
        """Register the messages, the on-connect pending delivery, the live filter."""
        router.register(NotificationAck, self.ack)
        router.register(NotificationReceived, self.received)
        router.register(NotificationsList, self.list)
        router.on_connect(self.on_connect)
        router.on_disconnect(self.on_disconnect)
        router.filter_user_messages(self.keep_live)
        router.on_user_delivery(self.on_user_delivery)
        router.register_ingress(UserNotify, self.backend_notify)

    async def deliver(self, user: str, payload: bytes) -> None:
        """Send a stored notification's payload to every connection of ``user``."""
        await self.ctx.send_to_user(user, payload)

    async def backend_notify(self, message: UserNotify) -> None:
        """A ``user_notify`` ingress payload: store (or look up) and deliver it."""
        store = self.ctx.store
        if store is None:
            raise IngressRejected("no_database", "notifications need the database")
        if message.notification_id is None:
            stored = await store.create_notification(message.user, message.title,
                                                     message.body, message.data)
        else:
            found = await store.get_notification(message.notification_id)
            if found is None:
                raise IngressRejected("unknown_notification",
                                      f"notification {message.notification_id} is not stored")
            stored = found
        await self.deliver(message.user, notification_payload(stored))

    def keep_live(self, conn: Connection, payload: bytes) -> bool:
        """User-message filter: hold or skip live notifications around the pending read."""
        if not payload.startswith(PREFIX) or self.ctx.store is None:
            return True
        notification_id = msgspec.json.decode(payload, type=_IdOnly).id
        sent = self._sent.get(conn.id)
        if sent is None:
            self._held.setdefault(conn.id, {})[notification_id] = payload
            return False
        if notification_id in sent:
            DUPLICATES.inc()
            return False
        return True

    def on_user_delivery(self, user: str, payload: bytes, delivered: int) -> None:
        """Count live notifications queued to this worker's connections of the user.

        Queued is not delivered: ``delivered_at`` is set by the client's
        acknowledgement (:meth:`received`, :meth:`ack`).
        """
        if delivered and payload.startswith(PREFIX) and self.ctx.store is not None:
            DELIVERED.inc("live", amount=delivered)

    async def on_connect(self, conn: Connection) -> None:
        """Send the user's pending notifications, merged with held live ones, in id order."""
        user = conn.user
        store = self.ctx.store
        if user is None or store is None:
            return
        batch = self.ctx.config.notifications.pending_batch
        pending: list[StoredNotification] = []
        try:
            pending = await store.pending_notifications(user, limit=batch)
        finally:
            # Also when the read failed: the held live ones are sent, in id order.
            out = {n.id: notification_payload(n) for n in pending}
            held = self._held.pop(conn.id, {})
            DUPLICATES.inc(amount=len(out.keys() & held.keys()))
            out.update(held)
            self._sent[conn.id] = {n.id for n in pending}
            for notification_id in sorted(out):
                self.ctx.send_to_connection(conn.id, out[notification_id])
        self._sent_pending(conn, pending, batch)

    def _sent_pending(self, conn: Connection, pending: list[StoredNotification],
                      batch: int) -> None:
        if not pending:
            return
        DELIVERED.inc("pending", amount=len(pending))
        if len(pending) >= batch:
            self._next[conn.id] = pending[-1].id
        log.info("notifications_pending_sent", connection_id=conn.id, user=conn.user,
                 count=len(pending), first_id=pending[0].id, last_id=pending[-1].id,
                 more=len(pending) >= batch)

    def _users_store(self, conn: Connection, msg_id: MessageId) -> Store | None:
        """The store for a request about the connection's own notifications, or None after
        answering ``feature_unavailable`` (no database) or ``forbidden`` (anonymous)."""
        store = self.ctx.require_store(conn, "notifications", msg_id)
        if store is not None and conn.user is None:
            self.ctx.error(conn, "forbidden", "anonymous connections have no notifications",
                           "Required action: authenticate with a token", msg_id)
            return None
        return store

    async def received(self, conn: Connection, msg: NotificationReceived) -> None:
        """``notification_received``: the client has these; mark them delivered."""
        ctx = self.ctx
        store = self._users_store(conn, msg.id)
        if store is None or conn.user is None:
            return
        most = ctx.config.notifications.pending_batch
        if not 1 <= len(msg.notification_ids) <= most:
            ctx.error(conn, "invalid_field",
                      f"field `notification_ids` must list 1..{most} ids",
                      f"Required action: acknowledge at most {most} notifications per message",
                      msg.id)
            return
        found = await store.mark_received(conn.user, msg.notification_ids)
        RECEIVED.inc(amount=len(found))
        unknown = sorted(set(msg.notification_ids) - set(found))
        ctx.reply(conn, NotificationsReceived(notification_ids=found, unknown_ids=unknown,
                                              id=msg.id))
        after = self._next.get(conn.id)
        if after is not None and after in found:
            # The batch sent at connect is acknowledged: send the next one.
            del self._next[conn.id]
            batch = ctx.config.notifications.pending_batch
            pending = await store.pending_notifications(conn.user, limit=batch, after_id=after)
            sent = self._sent.setdefault(conn.id, set())
            for n in pending:
                if n.id not in sent:
                    sent.add(n.id)
                    ctx.send_to_connection(conn.id, notification_payload(n))
            self._sent_pending(conn, pending, batch)

    async def ack(self, conn: Connection, msg: NotificationAck) -> None:
        """``notification_ack``: mark one notification read."""
        ctx = self.ctx
        store = self._users_store(conn, msg.id)
        if store is None or conn.user is None:
            return
        n = await store.mark_read(conn.user, msg.notification_id)
        if n is None:
            ctx.error(conn, "not_found", f"no notification {msg.notification_id} for this user",
                      "Required action: acknowledge ids received in notification messages",
                      msg.id)
            return
        ctx.reply(conn, NotificationAcked(notification_id=n.id, read_at=n.read_at, id=msg.id))

    async def list(self, conn: Connection, msg: NotificationsList) -> None:
        """``notifications_list``: one page, newest first."""
        ctx = self.ctx
        store = self._users_store(conn, msg.id)
        if store is None or conn.user is None:
            return
        page_max = ctx.config.notifications.page_max
        if not 1 <= msg.limit <= page_max:
            ctx.error(conn, "invalid_field", f"field `limit` must be 1..{page_max}",
                      f"Required action: ask for 1 to {page_max} notifications per page", msg.id)
            return
        page = await store.list_notifications(conn.user, unread_only=msg.unread_only,
                                              limit=msg.limit, before_id=msg.before_id)
        items = [NotificationItem(notification_id=n.id, title=n.title, body=n.body, data=n.data,
                                  created_at=n.created_at, delivered_at=n.delivered_at,
                                  read_at=n.read_at) for n in page.items]
        ctx.reply(conn, NotificationsPage(items=items, next_before_id=page.next_before_id,
                                          id=msg.id))

    async def on_disconnect(self, conn: Connection) -> None:
        """Drop the connection's hold, sent and next-batch tables."""
        self._held.pop(conn.id, None)
        self._sent.pop(conn.id, None)
        self._next.pop(conn.id, None)
