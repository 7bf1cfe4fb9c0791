"""Typed queries on ``admin_login_links``: the single use of an admin login link."""

from __future__ import annotations

from datetime import datetime

import msgspec

from rtserver.store.pool import StorePool, check_ip, encode_json

__all__ = ["LoginLinkQueries", "LoginLinkUse"]


class LoginLinkUse(msgspec.Struct, frozen=True):
    """The recorded (first) use of a login link: who and when."""

    jti: str
    user_id: str
    used_at: datetime
    expires_at: datetime
    ip_address: str | None
    user_agent: str | None


_COLS = "jti, user_id, used_at, expires_at, host(ip_address) AS ip_address, user_agent"


class LoginLinkQueries(StorePool):
    """Login links: record the one use of a link, atomically, with an audit row."""

    async def use_login_link(
        self,
        *,
        jti: str,
        user_id: str,
        expires_at: datetime,
        ip_address: str | None,
        user_agent: str | None,
    ) -> tuple[bool, LoginLinkUse]:
        """Record the use of link ``jti``: ``(True, this use)`` for the first use,
        ``(False, the first use)`` for any later one.

        One transaction: the insert (``ON CONFLICT (jti) DO NOTHING``: of concurrent
        uses on any worker or node exactly one inserts) and one ``admin_activity_logs``
        row (action ``admin_login_link``, status ``exchanged`` or ``link_already_used``).
        """
        check_ip(ip_address)
        async with self.acquire("use_login_link") as conn, conn.transaction():
            rec = await conn.fetchrow(
                "INSERT INTO admin_login_links (jti, user_id, expires_at, ip_address, "
                "user_agent) VALUES ($1, $2, $3, $4::inet, $5) ON CONFLICT (jti) DO NOTHING "
                f"RETURNING {_COLS}", jti, user_id, expires_at, ip_address, user_agent)
            used_before = rec is None
            if used_before:
                # Read committed: this statement sees the row the winning insert committed.
                rec = await conn.fetchrow(
                    f"SELECT {_COLS} FROM admin_login_links WHERE jti = $1", jti)
            assert rec is not None
            use = LoginLinkUse(**dict(rec))
            details: dict[str, object] = {"expires_at": expires_at.isoformat()}
            if used_before:
                details.update(first_used_at=use.used_at.isoformat(),
                               first_used_from=use.ip_address)
            await conn.execute(
                "INSERT INTO admin_activity_logs (admin_user_id, action, resource_type, "
                "resource_id, status, details, ip_address, user_agent) "
                "VALUES ($1, 'admin_login_link', 'login_link', $2, $3, $4, $5::inet, $6)",
                user_id, jti, "link_already_used" if used_before else "exchanged",
                encode_json(details), ip_address, user_agent)
        return not used_before, use
