"""Aggregates over ``quotes`` for the analytics dashboards (one statement each)."""

from __future__ import annotations

import msgspec

from rtserver.store.models import ConversionFunnel, QuotesDashboard
from rtserver.store.pool import StorePool

__all__ = ["AnalyticsQueries"]

_QUOTES_DASHBOARD = """
WITH params AS (
    SELECT now() AS t_now, now() - make_interval(hours => $1::int) AS since
), q AS (
    SELECT quotes.* FROM quotes, params
     WHERE created_at >= params.since AND created_at <= params.t_now
       AND ($2::text IS NULL OR state = $2::text)
)
SELECT jsonb_build_object(
    'hours', $1::int,
    'state_filter', $2::text,
    'total_quotes', (SELECT count(*) FROM q),
    'unique_customers', (SELECT count(DISTINCT customer_id) FROM q),
    'average_premium', (SELECT avg(total_premium)::float8 FROM q),
    'by_status', coalesce((
        SELECT jsonb_agg(jsonb_build_object('status', status, 'count', n) ORDER BY n DESC, status)
          FROM (SELECT status, count(*) AS n FROM q GROUP BY status) s), '[]'::jsonb),
    'timeline', (
        SELECT jsonb_agg(jsonb_build_object(
                   'hour', h, 'count', coalesce(c.n, 0), 'premium_total', coalesce(c.p, 0))
                   ORDER BY h)
          FROM params
         CROSS JOIN generate_series(date_trunc('hour', params.since),
                                    date_trunc('hour', params.t_now), interval '1 hour') AS h
          LEFT JOIN (SELECT date_trunc('hour', created_at) AS hh, count(*) AS n,
                            sum(total_premium)::float8 AS p
                       FROM q GROUP BY 1) c ON c.hh = h),
    'top_states', coalesce((
        SELECT jsonb_agg(jsonb_build_object('state', state, 'count', n) ORDER BY n DESC, state)
          FROM (SELECT state, count(*) AS n FROM q WHERE state IS NOT NULL
                 GROUP BY state ORDER BY n DESC, state LIMIT $3) s), '[]'::jsonb),
    'computed_at', (SELECT t_now FROM params)
)
"""

_CONVERSION_FUNNEL = """
WITH params AS (
    SELECT now() AS t_now, now() - make_interval(hours => $1::int) AS since
), q AS (
    SELECT quotes.* FROM quotes, params
     WHERE created_at >= params.since AND created_at <= params.t_now
), c AS (
    SELECT count(*) AS created,
           count(*) FILTER (WHERE total_premium IS NOT NULL) AS priced,
           count(*) FILTER (WHERE status = 'converted') AS converted,
           avg(extract(epoch FROM converted_at - created_at) / 3600.0)
               FILTER (WHERE status = 'converted' AND converted_at IS NOT NULL) AS avg_h
      FROM q
)
SELECT jsonb_build_object(
    'hours', $1::int,
    'created', c.created,
    'priced', c.priced,
    'converted', c.converted,
    'priced_rate', CASE WHEN c.created > 0 THEN c.priced::float8 / c.created END,
    'conversion_rate', CASE WHEN c.created > 0 THEN c.converted::float8 / c.created END,
    'average_hours_to_convert', c.avg_h::float8,
    'computed_at', (SELECT t_now FROM params)
) FROM c
"""


class AnalyticsQueries(StorePool):
    """Quote dashboards and the conversion funnel."""

    async def quotes_dashboard(
        self, *, hours: int, state: str | None, top_states: int
    ) -> QuotesDashboard:
        """Aggregates of quotes created in the last ``hours`` hours (one statement).

        ``state`` narrows to one state (``None``: all); ``top_states`` is how
        many states to list.
        """
        if hours < 1 or top_states < 0:
            raise ValueError(
                f"hours={hours} top_states={top_states} out of range. "
                "Required action: pass hours >= 1 and top_states >= 0"
            )
        async with self.acquire("quotes_dashboard") as conn:
            raw = await conn.fetchval(_QUOTES_DASHBOARD, hours, state, top_states)
        return msgspec.json.decode(raw, type=QuotesDashboard)

    async def conversion_funnel(self, *, hours: int) -> ConversionFunnel:
        """Conversion funnel of quotes created in the last ``hours`` hours (one statement)."""
        if hours < 1:
            raise ValueError(f"hours={hours} out of range. Required action: pass hours >= 1")
        async with self.acquire("conversion_funnel") as conn:
            raw = await conn.fetchval(_CONVERSION_FUNNEL, hours)
        return msgspec.json.decode(raw, type=ConversionFunnel)
