"""Typed queries on ``system_alerts``: create, resolve once, list unresolved."""

from __future__ import annotations

from typing import Literal

from rtserver.store.models import AlertResolution, SystemAlert
from rtserver.store.pool import StorePool, encode_json

__all__ = ["ALERT_COLS", "ALERT_SEVERITIES", "AlertQueries"]

ALERT_SEVERITIES: tuple[str, ...] = ("low", "medium", "high", "critical")
"""The severities ``system_alerts`` accepts (a CHECK constraint in the table)."""

ALERT_COLS = (
    "id, alert_type, severity, message, details, resolved, resolved_at, resolved_by, created_at"
)
"""The columns of ``system_alerts`` in the order of :class:`~rtserver.store.models.SystemAlert`."""

_RESOLVE_ALERT = f"""
WITH cur AS (
    SELECT {ALERT_COLS} FROM system_alerts WHERE id = $1 FOR UPDATE
), upd AS (
    UPDATE system_alerts a SET resolved = true, resolved_at = now(), resolved_by = $2
      FROM cur WHERE a.id = cur.id AND NOT cur.resolved
 RETURNING {', '.join('a.' + c.strip() for c in ALERT_COLS.split(','))}
)
SELECT 'resolved' AS outcome, upd.* FROM upd
UNION ALL
SELECT 'already_resolved' AS outcome, cur.* FROM cur WHERE NOT EXISTS (SELECT 1 FROM upd)
"""


class AlertQueries(StorePool):
    """System alerts."""

    async def create_alert(
        self, *, alert_type: str, severity: str, message: str, details: object
    ) -> SystemAlert:
        """Store a new (unresolved) alert; ``severity`` is one of :data:`ALERT_SEVERITIES`."""
        if severity not in ALERT_SEVERITIES:
            raise ValueError(
                f"alert severity {severity!r} is not one of {ALERT_SEVERITIES}. "
                "Required action: use low, medium, high or critical"
            )
        async with self.acquire("create_alert") as conn:
            rec = await conn.fetchrow(
                "INSERT INTO system_alerts (alert_type, severity, message, details) "
                f"VALUES ($1, $2, $3, $4) RETURNING {ALERT_COLS}",
                alert_type, severity, message, encode_json(details),
            )
        assert rec is not None
        return SystemAlert(**dict(rec))

    async def resolve_alert(self, alert_id: int, resolved_by: str) -> AlertResolution:
        """Resolve an alert once (one statement; concurrent resolvers: exactly one wins)."""
        async with self.acquire("resolve_alert") as conn:
            rec = await conn.fetchrow(_RESOLVE_ALERT, alert_id, resolved_by)
        if rec is None:
            return AlertResolution("not_found", None)
        fields = dict(rec)
        outcome: Literal["resolved", "already_resolved"] = fields.pop("outcome")
        return AlertResolution(outcome, SystemAlert(**fields))

    async def list_unresolved_alerts(self, limit: int) -> list[SystemAlert]:
        """Unresolved alerts, newest first."""
        async with self.acquire("list_unresolved_alerts") as conn:
            rows = await conn.fetch(
                f"SELECT {ALERT_COLS} FROM system_alerts WHERE NOT resolved "
                "ORDER BY created_at DESC, id DESC LIMIT $1",
                limit,
            )
        return [SystemAlert(**dict(r)) for r in rows]
