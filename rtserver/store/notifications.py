"""Typed queries on ``notifications`` (stored push notifications and their delivery)."""

from __future__ import annotations

from collections.abc import Sequence

from rtserver.store.models import Notification, NotificationPage
from rtserver.store.pool import StorePool, encode_json

__all__ = ["NotificationQueries"]

_NOTIFICATION_COLS = "id, user_id, title, body, data, created_at, delivered_at, read_at"


class NotificationQueries(StorePool):
    """Notifications: create, pending (not yet received), mark received or read, list."""

    async def create_notification(
        self, user_id: str, title: str, body: str, data: object
    ) -> Notification:
        """Store a notification for ``user_id`` (pending until a client acknowledges it)."""
        async with self.acquire("create_notification") as conn:
            rec = await conn.fetchrow(
                "INSERT INTO notifications (user_id, title, body, data) VALUES ($1, $2, $3, $4) "
                f"RETURNING {_NOTIFICATION_COLS}",
                user_id, title, body, encode_json(data),
            )
        assert rec is not None
        return Notification(**dict(rec))

    async def get_notification(self, notification_id: int) -> Notification | None:
        """One notification by id (not scoped to a user: for server-side use only)."""
        async with self.acquire("get_notification") as conn:
            rec = await conn.fetchrow(
                f"SELECT {_NOTIFICATION_COLS} FROM notifications WHERE id = $1", notification_id
            )
        return None if rec is None else Notification(**dict(rec))

    async def pending_notifications(self, user_id: str, *, limit: int,
                                    after_id: int | None = None) -> list[Notification]:
        """Up to ``limit`` of ``user_id``'s notifications no client acknowledged yet
        (``delivered_at IS NULL``), oldest first, with ids above ``after_id``.

        Nothing is marked: every connection of the user gets them until one
        acknowledges them with :meth:`mark_received` (at-least-once).
        """
        async with self.acquire("pending_notifications") as conn:
            rows = await conn.fetch(
                f"SELECT {_NOTIFICATION_COLS} FROM notifications "
                "WHERE user_id = $1 AND delivered_at IS NULL "
                "AND ($3::bigint IS NULL OR id > $3) ORDER BY id LIMIT $2",
                user_id, limit, after_id,
            )
        return [Notification(**dict(r)) for r in rows]

    async def mark_received(self, user_id: str, ids: Sequence[int]) -> list[int]:
        """Record that a client of ``user_id`` received ``ids`` (sets ``delivered_at`` once).

        Returns the ids among ``ids`` that are ``user_id``'s (newly marked or
        marked before), in id order; another user's ids are not found.
        """
        if not ids:
            return []
        async with self.acquire("mark_received") as conn:
            rows = await conn.fetch(
                "UPDATE notifications SET delivered_at = coalesce(delivered_at, now()) "
                "WHERE user_id = $1 AND id = ANY($2::bigint[]) RETURNING id",
                user_id, list(ids),
            )
        return sorted(int(r["id"]) for r in rows)

    async def mark_read(self, user_id: str, notification_id: int) -> Notification | None:
        """Mark one of ``user_id``'s notifications read (and received).

        Returns the notification, or ``None`` when ``user_id`` has no
        notification with this id (another user's id is not found, not an
        authorization leak). Marking twice keeps the first ``read_at``.
        """
        async with self.acquire("mark_read") as conn:
            rec = await conn.fetchrow(
                "UPDATE notifications SET read_at = coalesce(read_at, now()), "
                "delivered_at = coalesce(delivered_at, now()) "
                f"WHERE id = $2 AND user_id = $1 RETURNING {_NOTIFICATION_COLS}",
                user_id, notification_id,
            )
        return None if rec is None else Notification(**dict(rec))

    async def list_notifications(
        self, user_id: str, *, unread_only: bool, limit: int, before_id: int | None
    ) -> NotificationPage:
        """A page of ``user_id``'s notifications, newest first.

        ``before_id`` continues after a previous page (its ``next_before_id``);
        ``None`` starts at the newest.
        """
        async with self.acquire("list_notifications") as conn:
            rows = await conn.fetch(
                f"SELECT {_NOTIFICATION_COLS} FROM notifications "
                "WHERE user_id = $1 AND ($2::bool IS FALSE OR read_at IS NULL) "
                "AND ($3::bigint IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
                user_id, unread_only, before_id, limit + 1,
            )
        items = [Notification(**dict(r)) for r in rows[:limit]]
        more = len(rows) > limit
        return NotificationPage(items, items[-1].id if more and items else None)
