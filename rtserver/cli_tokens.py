"""Tokens the command line signs: ``rtserver token`` and ``rtserver admin-url``."""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

from rtserver.auth import ADMIN_LOGIN_PURPOSE, mint_token
from rtserver.config import Config

__all__ = ["admin_url", "signed_token"]


def admin_url(config: Config, args: argparse.Namespace) -> int:
    """``rtserver admin-url``: print the console login link; returns the exit status.

    The link holds a single-use login token (``purpose`` admin_login, a new ``jti``):
    the console exchanges it once at ``/admin/session/exchange`` for a session token."""
    if not 0 < args.ttl <= config.admin.link_ttl_max:
        print(f"rtserver: --ttl {args.ttl:g} is outside 0..{config.admin.link_ttl_max} s "
              "(admin.link_ttl_max). Required action: pass a shorter --ttl", file=sys.stderr)
        return 2
    perms = ["admin:monitor", *(["admin:operate"] if args.operate else []),
             *(["audit:read"] if args.audit else [])]
    token = signed_token(config, args.user, perms, [], args.ttl,
                         purpose=ADMIN_LOGIN_PURPOSE, jti=uuid.uuid4().hex)
    if isinstance(token, int):
        return token
    base = args.base_url
    if base is None:
        host = config.server.host
        if host in ("0.0.0.0", "::", ""):
            print(f"rtserver: server.host is {host!r} (every address): the link uses "
                  "127.0.0.1; pass --base-url for another machine", file=sys.stderr)
            host = "127.0.0.1"
        base = f"http://{'[' + host + ']' if ':' in host else host}:{config.server.port}"
    print(f"{base.rstrip('/')}/admin/#token={token}")
    return 0


def signed_token(config: Config, user: str, perms: list[str], rooms: list[str],
                 ttl: float, *, purpose: str | None = None,
                 jti: str | None = None) -> str | int:
    """A token signed with the configured key, or the exit status after the message
    (``purpose`` / ``jti``: those claims, for a login link)."""
    if config.auth.jwt_algorithm == "HS256":
        key = config.auth.jwt_secret
        if not key:
            print("rtserver: no JWT secret. Required action: set RTSERVER_JWT_SECRET to the "
                  "server's secret", file=sys.stderr)
            return 2
    else:
        if not config.auth.jwt_private_key_file:
            print("rtserver: RS256 needs auth.jwt_private_key_file to sign tokens. Required "
                  "action: set it in the config file", file=sys.stderr)
            return 2
        key = Path(config.auth.jwt_private_key_file).read_text()
    if not 0 < ttl <= config.auth.max_token_lifetime:
        print(f"rtserver: --ttl {ttl:g} is outside 0..{config.auth.max_token_lifetime:g} "
              "s, the lifetime the server accepts (auth.max_token_lifetime). Required action: "
              "pass a shorter --ttl", file=sys.stderr)
        return 2
    try:
        return mint_token(key, user, perms, rooms, ttl, config.auth.jwt_algorithm,
                          audience=config.auth.jwt_audience, issuer=config.auth.jwt_issuer,
                          purpose=purpose, jti=jti)
    except ValueError as exc:
        print(f"rtserver: invalid --user: {exc}. Required action: give a UUID", file=sys.stderr)
        return 2
