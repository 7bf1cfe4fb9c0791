"""The SQL of the admin HTTP routes beyond :class:`rtserver.store.Store`'s methods.

Everything goes through :meth:`Store.acquire` (pool, timeouts,
:class:`~rtserver.store.StoreUnavailable`).
"""

from __future__ import annotations

from typing import Any

from rtserver.store import Store

__all__ = ["connection_history"]

_COLS = ("connection_id, user_id, host(ip_address) AS ip_address, user_agent, worker, "
         "connected_at, disconnected_at, last_activity, close_code, close_reason, "
         "state_history")


async def connection_history(store: Store, *, user: str | None, connection_id: str | None,
                             limit: int) -> list[dict[str, Any]]:
    """The recorded connections (every worker and node) of ``user`` or the one with
    ``connection_id``, newest first: connect, last activity, close code and reason."""
    async with store.acquire("connection_history") as conn:
        rows = await conn.fetch(
            f"SELECT {_COLS} FROM websocket_connections "
            "WHERE ($1::text IS NOT NULL AND user_id = $1) "
            "OR ($2::text IS NOT NULL AND connection_id = $2) "
            "ORDER BY connected_at DESC NULLS LAST LIMIT $3", user, connection_id, limit)
    return [dict(r) for r in rows]
