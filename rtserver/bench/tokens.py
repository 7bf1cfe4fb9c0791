"""JWT minting for the ``bench`` namespace (HS256, secret from ``RTSERVER_JWT_SECRET``)."""

from __future__ import annotations

import os
import time

import jwt

__all__ = ["SECRET_ENV", "mint", "require_secret", "user_id"]

SECRET_ENV = "RTSERVER_JWT_SECRET"


def require_secret() -> str:
    """Return the HS256 secret or raise with the required action."""
    secret = os.environ.get(SECRET_ENV)
    if not secret:
        raise SystemExit(
            f"{SECRET_ENV} is not set. Required action: export the server's HS256 secret "
            "(with --spawn the harness generates one when it is unset)"
        )
    return secret


def user_id(n: int) -> str:
    """A deterministic UUID-shaped user id for bench user number ``n``."""
    return f"00000000-0000-4000-8000-{n:012d}"


def mint(secret: str, sub: str, ttl_s: int) -> str:
    """Token with ``sub``, ``perms ["publish"]``, ``rooms ["bench:*"]`` and ``exp`` = now + ttl."""
    claims = {
        "sub": sub,
        "perms": ["publish"],
        "rooms": ["bench:*"],
        "exp": int(time.time()) + ttl_s,
    }
    return jwt.encode(claims, secret, algorithm="HS256")
