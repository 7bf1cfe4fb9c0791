"""Typed queries on ``admin_activity_logs`` and ``admin_dashboards``."""

from __future__ import annotations

from datetime import datetime

from rtserver.store.models import AdminActivity, Dashboard
from rtserver.store.pool import StorePool, check_ip, encode_json

__all__ = ["AdminQueries"]

_ACTIVITY_COLS = (
    "id, admin_user_id, action, resource_type, resource_id, status, details, "
    "host(ip_address) AS ip_address, user_agent, created_at"
)
_DASHBOARD_COLS = (
    "id, admin_user_id, dashboard_name, configuration, is_default, created_at, updated_at"
)


class AdminQueries(StorePool):
    """Admin activity (append, query) and saved admin dashboards."""

    async def log_admin_activity(
        self,
        *,
        admin_user_id: str,
        action: str,
        resource_type: str | None,
        resource_id: str | None,
        status: str,
        details: object,
        ip_address: str | None,
        user_agent: str | None,
    ) -> AdminActivity:
        """Append one admin activity record."""
        check_ip(ip_address)
        async with self.acquire("log_admin_activity") as conn:
            rec = await conn.fetchrow(
                "INSERT INTO admin_activity_logs (admin_user_id, action, resource_type, "
                "resource_id, status, details, ip_address, user_agent) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7::inet, $8) "
                f"RETURNING {_ACTIVITY_COLS}",
                admin_user_id, action, resource_type, resource_id, status,
                encode_json(details), ip_address, user_agent,
            )
        assert rec is not None
        return AdminActivity(**dict(rec))

    async def query_admin_activity(
        self,
        *,
        admin_user_id: str | None,
        action: str | None,
        resource_type: str | None,
        status: str | None,
        since: datetime | None,
        until: datetime | None,
        before_id: int | None,
        limit: int,
    ) -> list[AdminActivity]:
        """Admin activity matching every given filter (``None`` = any), newest first."""
        async with self.acquire("query_admin_activity") as conn:
            rows = await conn.fetch(
                f"SELECT {_ACTIVITY_COLS} FROM admin_activity_logs "
                "WHERE ($1::text IS NULL OR admin_user_id = $1) "
                "AND ($2::text IS NULL OR action = $2) "
                "AND ($3::text IS NULL OR resource_type = $3) "
                "AND ($4::text IS NULL OR status = $4) "
                "AND ($5::timestamptz IS NULL OR created_at >= $5) "
                "AND ($6::timestamptz IS NULL OR created_at < $6) "
                "AND ($7::bigint IS NULL OR id < $7) "
                "ORDER BY id DESC LIMIT $8",
                admin_user_id, action, resource_type, status, since, until, before_id, limit,
            )
        return [AdminActivity(**dict(r)) for r in rows]

    async def save_dashboard(
        self, *, admin_user_id: str, dashboard_name: str, configuration: object,
        is_default: bool,
    ) -> Dashboard:
        """Create or replace ``admin_user_id``'s dashboard ``dashboard_name``.

        With ``is_default`` the admin's other dashboards stop being default
        (same transaction).
        """
        async with self.acquire("save_dashboard") as conn, conn.transaction():
            if is_default:
                await conn.execute(
                    "UPDATE admin_dashboards SET is_default = false, updated_at = now() "
                    "WHERE admin_user_id = $1 AND is_default AND dashboard_name <> $2",
                    admin_user_id, dashboard_name,
                )
            rec = await conn.fetchrow(
                "INSERT INTO admin_dashboards (admin_user_id, dashboard_name, configuration, "
                "is_default) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (admin_user_id, dashboard_name) DO UPDATE SET "
                "configuration = EXCLUDED.configuration, is_default = EXCLUDED.is_default, "
                f"updated_at = now() RETURNING {_DASHBOARD_COLS}",
                admin_user_id, dashboard_name, encode_json(configuration), is_default,
            )
        assert rec is not None
        return Dashboard(**dict(rec))

    async def list_dashboards(self, admin_user_id: str) -> list[Dashboard]:
        """``admin_user_id``'s saved dashboards, default first then by name."""
        async with self.acquire("list_dashboards") as conn:
            rows = await conn.fetch(
                f"SELECT {_DASHBOARD_COLS} FROM admin_dashboards WHERE admin_user_id = $1 "
                "ORDER BY is_default DESC, dashboard_name",
                admin_user_id,
            )
        return [Dashboard(**dict(r)) for r in rows]
