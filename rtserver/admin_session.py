"""Single-use admin login links: ``GET /admin/session/exchange``.

``rtserver admin-url`` prints a link whose fragment holds a *login token*: the
``purpose`` claim :data:`~rtserver.auth.ADMIN_LOGIN_PURPOSE` and a unique
``jti``. The verifier refuses such a token everywhere else (WebSocket, every
admin route), so the link is worth nothing until it is exchanged. The console
sends it once, as ``Authorization: Bearer``, to this route, which

1. verifies it (signature, expiry, purpose, ``admin:monitor``);
2. records its ``jti`` in ``admin_login_links`` (PostgreSQL, primary key on
   ``jti``: of any number of uses on any worker or node exactly one wins), with
   an ``admin_activity_logs`` row, in one transaction;
3. answers the winner with a *session token*: the same user, permissions, room
   grants and expiry (never later), no ``purpose`` (so it is not exchangeable),
   signed with the server's key.

Every later use is refused (401 ``link_already_used``, naming when and from
where the link was used), logged (``admin_login_link_reused``) and counted
(``rtserver_admin_login_links_total{outcome}``). The route is a GET because
websockets (16.x) parses GET requests only; the token travels in a header, never
in the URL.
"""

from __future__ import annotations

import http
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from rtserver import jsonlog
from rtserver.auth import ADMIN_LOGIN_PURPOSE, TokenError, TokenVerifier, mint_token
from rtserver.config import Config
from rtserver.metrics import REGISTRY
from rtserver.store import Store, StoreUnavailable

__all__ = ["EXCHANGE_PATH", "LinkRefused", "LoginLinks"]

log = jsonlog.get_logger("rtserver.admin_session")

#: The route that exchanges a login link's token for a session token.
EXCHANGE_PATH = "/admin/session/exchange"

_MONITOR = "admin:monitor"
_NEW_LINK = "Required action: mint a new link with `rtserver admin-url`"

_OUTCOMES = REGISTRY.counter(
    "rtserver_admin_login_links_total",
    "Admin login link exchanges, by outcome (exchanged, already_used, expired, invalid, "
    "not_a_link, forbidden, no_token, unavailable)", ("outcome",))


class LinkRefused(Exception):
    """The exchange is refused: the HTTP status, error code, message and required action."""

    def __init__(self, status: http.HTTPStatus, error: str, message: str, action: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.action = action


def _refused(outcome: str, status: http.HTTPStatus, error: str, message: str, action: str,
             **fields: object) -> LinkRefused:
    _OUTCOMES.inc(outcome)
    log.warning("admin_login_link_refused", outcome=outcome, error=error, message=message,
                **fields)
    return LinkRefused(status, error, message, action)


class LoginLinks:
    """The exchange of login links on one worker."""

    def __init__(self, config: Config, verifier: TokenVerifier, jwt_secret: str,
                 store: Callable[[], Store | None]) -> None:
        self.auth = config.auth
        self.verifier = verifier
        self._secret = jwt_secret
        self._store = store
        self._private_key: str | None = None

    def _signing_key(self) -> str:
        """The key session tokens are signed with (HS256: the secret; RS256: the private key)."""
        if self.auth.jwt_algorithm == "HS256":
            return self._secret
        if self._private_key is None:
            path = self.auth.jwt_private_key_file
            action = ("Required action: set auth.jwt_private_key_file on the server (the key "
                      "`rtserver admin-url` signs with), or paste an access token on the "
                      "login screen")
            if not path:
                raise _refused("unavailable", http.HTTPStatus.SERVICE_UNAVAILABLE,
                               "signing_unavailable", "this server verifies RS256 tokens "
                               "and has no auth.jwt_private_key_file to sign a session "
                               "token", action)
            try:
                self._private_key = Path(path).read_text()
            except OSError as exc:
                raise _refused("unavailable", http.HTTPStatus.SERVICE_UNAVAILABLE,
                               "signing_unavailable",
                               f"auth.jwt_private_key_file {path!r} cannot be read: {exc}",
                               action) from exc
        return self._private_key

    async def exchange(self, authorization: str, remote: str | None,
                       user_agent: str | None) -> dict[str, object]:
        """The session document for the login token in ``authorization`` (``Bearer <JWT>``),
        or :class:`LinkRefused`. ``remote`` / ``user_agent``: who uses the link."""
        if not authorization.startswith("Bearer "):
            raise _refused("no_token", http.HTTPStatus.UNAUTHORIZED, "auth_required",
                           "no bearer token", "Required action: send Authorization: Bearer "
                           "<the token of the login link>", remote=remote)
        try:
            principal = self.verifier.verify(authorization[7:], purpose=ADMIN_LOGIN_PURPOSE)
        except TokenError as exc:
            if exc.code == "token_expired":
                raise _refused("expired", http.HTTPStatus.UNAUTHORIZED, "link_expired",
                               "the login link has expired", _NEW_LINK,
                               remote=remote) from exc
            if exc.code == "not_a_purpose_token":
                raise _refused("not_a_link", http.HTTPStatus.UNAUTHORIZED, "not_a_login_link",
                               f"{exc.message}: a session token is not exchanged again",
                               exc.action, remote=remote) from exc
            raise _refused("invalid", http.HTTPStatus.UNAUTHORIZED, "link_invalid",
                           f"the login link's token is refused: {exc.message}", _NEW_LINK,
                           remote=remote) from exc
        assert principal.user is not None and principal.token_id is not None
        assert principal.expires_at is not None
        who = {"user": principal.user, "jti": principal.token_id, "remote": remote}
        if not principal.has(_MONITOR):
            raise _refused("forbidden", http.HTTPStatus.FORBIDDEN, "forbidden",
                           f"the login link lacks {_MONITOR}",
                           f"{_NEW_LINK} (it always holds {_MONITOR})", **who)
        store = self._store()
        if store is None:
            raise _refused("unavailable", http.HTTPStatus.SERVICE_UNAVAILABLE,
                           "feature_unavailable", "single-use login links are recorded in "
                           "PostgreSQL and this server runs without a database",
                           "Required action: start the server with --database "
                           "postgresql://..., or paste an access token with admin:monitor "
                           "(rtserver token --perm admin:monitor) on the login screen", **who)
        key = self._signing_key()  # before the link is used up: a refusal here keeps it
        expires = datetime.fromtimestamp(principal.expires_at, UTC)
        try:
            first, use = await store.use_login_link(
                jti=principal.token_id, user_id=principal.user, expires_at=expires,
                ip_address=remote, user_agent=user_agent)
        except StoreUnavailable as exc:
            raise _refused("unavailable", http.HTTPStatus.SERVICE_UNAVAILABLE,
                           "store_unavailable", f"the use of the link cannot be recorded: {exc}",
                           "Required action: check the database, then open the link again",
                           **who) from exc
        if not first:
            used_at = use.used_at.isoformat(timespec="seconds")
            raise _refused("already_used", http.HTTPStatus.UNAUTHORIZED, "link_already_used",
                           f"this login link was already used at {used_at} "
                           f"from {use.ip_address or 'an unknown address'}", _NEW_LINK,
                           first_used_at=use.used_at.isoformat(),
                           first_used_from=use.ip_address, **who)
        token = mint_token(key, principal.user, sorted(principal.permissions),
                           list(principal.grants), 0, self.auth.jwt_algorithm,
                           audience=self.auth.jwt_audience, issuer=self.auth.jwt_issuer,
                           expires_at=int(principal.expires_at))
        _OUTCOMES.inc("exchanged")
        log.info("admin_login_link_exchanged", user_agent=user_agent,
                 expires_at=expires.isoformat(), **who)
        return {"token": token, "user": principal.user,
                "permissions": sorted(principal.permissions),
                "expires_at": int(principal.expires_at)}
