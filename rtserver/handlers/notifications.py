"""Per-user push notifications (stored in PostgreSQL, delivered across workers).

* Live: the ingress (``rtserver notify`` / a backend's NOTIFY) stores the row
  and calls :func:`deliver_notification`, which sends ``notification`` to every
  connection of the user on every worker through the bus. Each worker that
  had a connection of the user marks the row delivered (see
  :func:`on_user_delivery`).
* Offline: on the next authenticated connect, the user's undelivered
  notifications are claimed atomically (marked delivered) and sent in id
  order, so each is delivered once.
* ``notification_ack {notification_id}`` marks one read;
  ``notifications_list {unread_only, limit, before_id}`` pages through them.

The client field is ``notification_id`` (not ``id``) because ``id`` is the
correlation id every client message may carry.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import msgspec

from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY
from rtserver.protocol.messages import ClientMessage, MessageId, ServerMessage
from rtserver.router import Router

if TYPE_CHECKING:
    from rtserver.hub import Connection
    from rtserver.node import Node
    from rtserver.store.models import Notification as StoredNotification

__all__ = [
    "NotificationAck",
    "NotificationAcked",
    "NotificationItem",
    "NotificationOut",
    "NotificationsList",
    "NotificationsPage",
    "deliver_notification",
    "install_notifications",
    "notification_payload",
]

log = get_logger("rtserver.notifications")
DUPLICATES = REGISTRY.counter("rtserver_notifications_duplicates_skipped_total",
                              "Live notifications not sent again to a connection that had it")
DELIVERED = REGISTRY.counter("rtserver_notifications_delivered_total",
                             "Notifications sent to connections", ("path",))
PREFIX = b'{"type":"notification",'


class NotificationAck(ClientMessage, tag="notification_ack", frozen=True):
    """Mark a notification read."""

    notification_id: int
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


_ENCODER = msgspec.json.Encoder()


def notification_payload(n: StoredNotification) -> bytes:
    """The ``notification`` frame payload of a stored notification."""
    return _ENCODER.encode(NotificationOut(id=n.id, title=n.title, body=n.body, data=n.data,
                                           created_at=n.created_at))


async def deliver_notification(node: Node, user: str, payload: bytes) -> None:
    """Send a stored notification's payload to every connection of ``user`` (all workers)."""
    await node.send_to_user(user, payload)


# Around a connection's connect-time claim of its pending notifications, live
# notifications for it are held until the claim is done; then claimed and held
# ones are sent together in id order, each once. Afterwards live copies of the
# claimed ones are skipped.
_held: dict[str, dict[int, bytes]] = {}
_claimed: dict[str, set[int]] = {}


def _keep_live(node: Node, conn: Connection, payload: bytes) -> bool:
    if not payload.startswith(PREFIX) or node.store is None:
        return True
    notification_id = msgspec.json.decode(payload, type=_IdOnly).id
    claimed = _claimed.get(conn.id)
    if claimed is None:
        _held.setdefault(conn.id, {})[notification_id] = payload
        return False
    if notification_id in claimed:
        DUPLICATES.inc()
        return False
    return True


def on_user_delivery(node: Node, user: str, payload: bytes, delivered: int) -> None:
    """Mark a live notification delivered when this worker had a connection of the user."""
    if delivered == 0 or not payload.startswith(PREFIX) or node.store is None:
        return
    notification_id = msgspec.json.decode(payload, type=_IdOnly).id
    DELIVERED.inc("live", amount=delivered)
    node.spawn(node.store.mark_delivered([notification_id]), f"notification-{notification_id}")


class _IdOnly(msgspec.Struct):
    id: int


async def _on_connect(node: Node, conn: Connection) -> None:
    user = conn.user
    store = node.store
    if user is None or store is None:
        return
    batch = node.config.notifications.pending_batch
    pending: list[StoredNotification] = []
    try:
        pending = await store.claim_pending_notifications(user, batch)
    finally:
        # Also when the claim failed: the held live ones are sent, in id order.
        out = {n.id: notification_payload(n) for n in pending}
        held = _held.pop(conn.id, {})
        DUPLICATES.inc(amount=len(out.keys() & held.keys()))
        out.update(held)
        _claimed[conn.id] = {n.id for n in pending}
        for notification_id in sorted(out):
            node.send_to_connection(conn.id, out[notification_id])
        if held:
            node.spawn(store.mark_delivered(list(held)), f"notifications-held-{conn.id}")
    if pending:
        DELIVERED.inc("pending", amount=len(pending))
        log.info("notifications_pending_delivered", connection_id=conn.id, user=user,
                 count=len(pending), first_id=pending[0].id, last_id=pending[-1].id)


async def _ack(node: Node, conn: Connection, msg: NotificationAck) -> None:
    store = node.require_store(conn, "notifications", msg.id)
    if store is None or conn.user is None:
        if conn.user is None:
            node.error(conn, "forbidden", "anonymous connections have no notifications",
                       "Required action: authenticate with a token", msg.id)
        return
    n = await store.mark_read(conn.user, msg.notification_id)
    if n is None:
        node.error(conn, "not_found", f"no notification {msg.notification_id} for this user",
                   "Required action: acknowledge ids received in notification messages", msg.id)
        return
    node.reply(conn, NotificationAcked(notification_id=n.id, read_at=n.read_at, id=msg.id))


async def _list(node: Node, conn: Connection, msg: NotificationsList) -> None:
    store = node.require_store(conn, "notifications", msg.id)
    if store is None:
        return
    if conn.user is None:
        node.error(conn, "forbidden", "anonymous connections have no notifications",
                   "Required action: authenticate with a token", msg.id)
        return
    page_max = node.config.notifications.page_max
    if not 1 <= msg.limit <= page_max:
        node.error(conn, "invalid_field", f"field `limit` must be 1..{page_max}",
                   f"Required action: ask for 1 to {page_max} notifications per page", msg.id)
        return
    page = await store.list_notifications(conn.user, unread_only=msg.unread_only,
                                          limit=msg.limit, before_id=msg.before_id)
    items = [NotificationItem(notification_id=n.id, title=n.title, body=n.body, data=n.data,
                              created_at=n.created_at, delivered_at=n.delivered_at,
                              read_at=n.read_at) for n in page.items]
    node.reply(conn, NotificationsPage(items=items, next_before_id=page.next_before_id,
                                       id=msg.id))


async def _on_disconnect(node: Node, conn: Connection) -> None:
    _held.pop(conn.id, None)
    _claimed.pop(conn.id, None)


def install_notifications(router: Router) -> None:
    """Register the notification messages, the on-connect pending delivery, the live filter."""
    router.register(NotificationAck, _ack)
    router.register(NotificationsList, _list)
    router.on_connect(_on_connect)
    router.on_disconnect(_on_disconnect)
    router.filter_user_messages(_keep_live)
    router.on_user_delivery(on_user_delivery)
