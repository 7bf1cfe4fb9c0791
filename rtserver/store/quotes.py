"""Typed queries on ``quotes``: read one quote, optimistic field updates."""

from __future__ import annotations

import uuid

from rtserver.store.models import Quote, QuoteNotFound, UpdateApplied, UpdateConflict, UpdateResult
from rtserver.store.pool import StorePool, encode_json

__all__ = ["QUOTE_COLS", "QuoteQueries"]

QUOTE_COLS = (
    "id, customer_id, state, status, total_premium::float8 AS total_premium, fields, version, "
    "created_at, updated_at, updated_by, converted_at"
)
"""The columns of ``quotes`` in the order of :class:`~rtserver.store.models.Quote`'s fields."""

_UPDATE_FIELD = """
WITH cur AS (
    SELECT id, version, fields -> $2::text AS value FROM quotes WHERE id = $1 FOR UPDATE
), upd AS (
    UPDATE quotes q
       SET fields = jsonb_set(q.fields, ARRAY[$2::text], $3::jsonb, true),
           version = q.version + 1, updated_at = now(), updated_by = $5
      FROM cur
     WHERE q.id = cur.id AND cur.version = $4
 RETURNING q.version
)
SELECT cur.version AS current_version, cur.value AS current_value, upd.version AS new_version
  FROM cur LEFT JOIN upd ON true
"""


class QuoteQueries(StorePool):
    """Quotes: read one, update one field under optimistic concurrency."""

    async def get_quote(self, quote_id: uuid.UUID) -> Quote | None:
        """One quote with its current version."""
        async with self.acquire("get_quote") as conn:
            rec = await conn.fetchrow(f"SELECT {QUOTE_COLS} FROM quotes WHERE id = $1", quote_id)
        return None if rec is None else Quote(**dict(rec))

    async def update_field(
        self,
        quote_id: uuid.UUID,
        field: str,
        value: object,
        base_version: int,
        updated_by: str,
    ) -> UpdateResult:
        """Set ``fields[field] = value`` if the quote is still at ``base_version``.

        One statement: the row is locked, its version compared and, when equal,
        the field written and the version incremented. Concurrent updates with
        the same ``base_version`` (any worker, any node) see exactly one
        :class:`UpdateApplied`; the others get :class:`UpdateConflict` with
        the value and version written by the winner. ``field`` is a top-level
        key of ``quotes.fields`` (validate it against the editable list before).
        """
        async with self.acquire("update_field") as conn:
            rec = await conn.fetchrow(
                _UPDATE_FIELD, quote_id, field, encode_json(value), base_version, updated_by
            )
        if rec is None:
            return QuoteNotFound(quote_id)
        if rec["new_version"] is not None:
            return UpdateApplied(int(rec["new_version"]))
        return UpdateConflict(rec["current_value"], int(rec["current_version"]))
