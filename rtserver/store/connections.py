"""Typed queries on ``websocket_connections`` (written by the connection recorder)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rtserver.store.models import ConnectionRow
from rtserver.store.pool import StorePool

__all__ = ["UPSERT_CONNECTIONS", "ConnectionQueries"]

UPSERT_CONNECTIONS = """
INSERT INTO websocket_connections AS w (
    connection_id, worker, user_id, admin_user_id, ip_address, user_agent,
    connected_at, disconnected_at, last_activity, close_code, close_reason, state_history)
SELECT * FROM unnest(
    $1::text[], $2::int[], $3::text[], $4::text[], $5::inet[], $6::text[],
    $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::int[], $11::text[],
    $12::jsonb[])
ON CONFLICT (connection_id) DO UPDATE SET
    user_id = coalesce(EXCLUDED.user_id, w.user_id),
    admin_user_id = coalesce(EXCLUDED.admin_user_id, w.admin_user_id),
    ip_address = coalesce(EXCLUDED.ip_address, w.ip_address),
    user_agent = coalesce(EXCLUDED.user_agent, w.user_agent),
    connected_at = coalesce(w.connected_at, EXCLUDED.connected_at),
    disconnected_at = coalesce(EXCLUDED.disconnected_at, w.disconnected_at),
    last_activity = greatest(EXCLUDED.last_activity, w.last_activity),
    close_code = coalesce(EXCLUDED.close_code, w.close_code),
    close_reason = coalesce(EXCLUDED.close_reason, w.close_reason),
    state_history = coalesce(EXCLUDED.state_history, w.state_history)
"""
"""The batched upsert of connection rows: one array parameter per column."""


class ConnectionQueries(StorePool):
    """Connection records: batched upserts and open-connection counts."""

    async def write_connection_rows(self, rows: Sequence[ConnectionRow]) -> None:
        """Upsert connection records on ``connection_id`` in one statement.

        ``rows`` must not repeat a ``connection_id``. ``None`` fields keep the
        stored value; ``connected_at`` keeps the first one; ``last_activity``
        keeps the latest.
        """
        if not rows:
            return
        cols: list[list[Any]] = [[] for _ in range(12)]
        for r in rows:
            for i, v in enumerate((
                r.connection_id, r.worker, r.user_id, r.admin_user_id, r.ip_address,
                r.user_agent, r.connected_at, r.disconnected_at, r.last_activity,
                r.close_code, r.close_reason, r.state_history,
            )):
                cols[i].append(v)
        async with self.acquire("write_connections") as conn:
            await conn.execute(UPSERT_CONNECTIONS, *cols)

    async def open_connection_counts(self) -> dict[int, int]:
        """Connections without a disconnect record, by worker."""
        async with self.acquire("open_connection_counts") as conn:
            rows = await conn.fetch(
                "SELECT worker, count(*) AS n FROM websocket_connections "
                "WHERE disconnected_at IS NULL GROUP BY worker"
            )
        return {int(r["worker"]): int(r["n"]) for r in rows}
