"""Authentication (JWT) and room access rules. CPU only: no I/O.

* :class:`TokenVerifier` checks a JWT (HS256 with a secret, or RS256 with a
  public key), requires ``sub`` and ``exp``, rejects ``alg: none`` and any
  algorithm but the configured one, and returns a :class:`Principal`.
* :class:`AccessPolicy` applies the per-namespace rules of the configuration
  to a principal and a room. There is no default access: an unknown namespace
  or an unmatched rule is refused with a code and a required action.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
import uuid
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

import jwt
import msgspec

from rtserver.config import AccessRule, AuthConfig, NamespaceConfig

__all__ = [
    "ANONYMOUS",
    "AccessDenied",
    "AccessPolicy",
    "Principal",
    "TokenError",
    "TokenVerifier",
    "mint_token",
]


class Principal(msgspec.Struct, frozen=True):
    """Who a connection is: user id, permissions, room grants, token expiry."""

    user: str | None
    permissions: frozenset[str]
    grants: tuple[str, ...]
    anonymous: bool
    expires_at: float | None

    def has(self, permission: str) -> bool:
        """Whether the principal holds ``permission``."""
        return permission in self.permissions


ANONYMOUS = Principal(user=None, permissions=frozenset(), grants=(), anonymous=True,
                      expires_at=None)


class TokenError(Exception):
    """A token was missing, expired, forged or malformed."""

    def __init__(self, code: str, message: str, action: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.action = action


class AccessDenied(Exception):
    """A room action is not allowed (or the room name is invalid)."""

    def __init__(self, code: str, message: str, action: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.action = action


_TOKEN_ACTION = (
    "Required action: reconnect with a valid, unexpired token signed by this server's key "
    "(?token=JWT or {\"type\":\"auth\",\"token\":JWT}); mint one with `rtserver token`"
)


class _Header(msgspec.Struct):
    alg: str
    crit: list[str] | None = None


class _Claims(msgspec.Struct):
    sub: str | int
    exp: int | float
    # An absent perms / rooms claim is an explicit "none" (not a hidden grant).
    perms: list[str] = []
    rooms: list[str] = []
    nbf: int | float | None = None


_header_decoder = msgspec.json.Decoder(_Header)
_claims_decoder = msgspec.json.Decoder(_Claims)


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


class TokenVerifier:
    """Verify JWTs against the configured key and algorithm.

    HS256 (the hot case: every connection of a connect storm presents one) is
    verified here directly: compact JWS with exactly three segments, header
    ``alg`` pinned to HS256 (``none`` and every other algorithm refused, no
    ``crit``), HMAC-SHA256 over ``header.payload`` compared in constant time
    with a key schedule prepared once, then ``sub`` and ``exp`` required and
    ``exp``/``nbf`` checked. RS256 goes through PyJWT.
    """

    def __init__(self, config: AuthConfig, secret: str) -> None:
        self._algorithm = config.jwt_algorithm
        self._key: Any
        if self._algorithm == "HS256":
            self._key = secret
            self._mac = hmac.new(secret.encode(), digestmod=hashlib.sha256)
        else:
            self._key = Path(config.jwt_public_key_file).read_text()

    def verify(self, token: str) -> Principal:
        """Return the token's principal or raise :class:`TokenError`."""
        if not token:
            raise TokenError("token_missing", "no token was given", _TOKEN_ACTION)
        if self._algorithm == "HS256":
            return self._verify_hs256(token)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise TokenError("token_invalid", f"the token is malformed: {exc}",
                             _TOKEN_ACTION) from exc
        if header.get("alg") != self._algorithm:
            raise TokenError(
                "token_invalid",
                f"the token's algorithm {header.get('alg')!r} is not accepted "
                f"(this server accepts only {self._algorithm})",
                _TOKEN_ACTION,
            )
        try:
            claims = jwt.decode(
                token, self._key, algorithms=[self._algorithm],
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("token_expired", "the token has expired", _TOKEN_ACTION) from exc
        except jwt.InvalidSignatureError as exc:
            raise TokenError("token_invalid", "the token's signature does not verify",
                             _TOKEN_ACTION) from exc
        except jwt.InvalidTokenError as exc:
            raise TokenError("token_invalid", f"the token is invalid: {exc}",
                             _TOKEN_ACTION) from exc
        return self._principal(claims)

    def _verify_hs256(self, token: str) -> Principal:
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError("token_invalid", "the token is malformed: not three segments",
                             _TOKEN_ACTION)
        head, body, sig = parts
        try:
            header = _header_decoder.decode(_b64url(head))
            signature = _b64url(sig)
        except (ValueError, msgspec.MsgspecError) as exc:
            raise TokenError("token_invalid", f"the token is malformed: {exc}",
                             _TOKEN_ACTION) from exc
        if header.alg != "HS256":
            raise TokenError(
                "token_invalid",
                f"the token's algorithm {header.alg!r} is not accepted "
                "(this server accepts only HS256)", _TOKEN_ACTION)
        if header.crit:
            raise TokenError("token_invalid", f"unsupported critical header {header.crit}",
                             _TOKEN_ACTION)
        mac = self._mac.copy()
        mac.update(f"{head}.{body}".encode("ascii", "replace"))
        if not hmac.compare_digest(mac.digest(), signature):
            raise TokenError("token_invalid", "the token's signature does not verify",
                             _TOKEN_ACTION)
        try:
            claims = _claims_decoder.decode(_b64url(body))
        except (ValueError, msgspec.MsgspecError) as exc:
            raise TokenError("token_invalid", f"the token is invalid: {exc}",
                             _TOKEN_ACTION) from exc
        now = time.time()
        if claims.exp <= now:
            raise TokenError("token_expired", "the token has expired", _TOKEN_ACTION)
        if claims.nbf is not None and claims.nbf > now:
            raise TokenError("token_invalid", "the token is not valid yet (nbf)", _TOKEN_ACTION)
        return self._principal({"sub": claims.sub, "exp": claims.exp, "perms": claims.perms,
                                "rooms": claims.rooms})

    @staticmethod
    def _principal(claims: dict[str, Any]) -> Principal:
        sub = claims["sub"]
        try:
            user = str(uuid.UUID(str(sub)))
        except ValueError as exc:
            raise TokenError("token_invalid", f"the token's sub {sub!r} is not a UUID",
                             _TOKEN_ACTION) from exc
        perms = claims.get("perms", [])
        rooms = claims.get("rooms", [])
        if not isinstance(perms, list) or not all(isinstance(p, str) for p in perms):
            raise TokenError("token_invalid", "the token's perms claim is not a list of strings",
                             _TOKEN_ACTION)
        if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
            raise TokenError("token_invalid", "the token's rooms claim is not a list of strings",
                             _TOKEN_ACTION)
        return Principal(user=user, permissions=frozenset(perms), grants=tuple(rooms),
                         anonymous=False, expires_at=float(claims["exp"]))


def mint_token(
    key: str,
    user: str,
    permissions: list[str],
    rooms: list[str],
    ttl: float,
    algorithm: Literal["HS256", "RS256"] = "HS256",
) -> str:
    """Sign a token (development, tests and the bench); ``key`` is the secret or PEM key."""
    now = int(time.time())
    claims = {"sub": str(uuid.UUID(user)), "perms": permissions, "rooms": rooms,
              "iat": now, "exp": now + int(ttl)}
    return jwt.encode(claims, key, algorithm=algorithm)


_NAMESPACE_RE = re.compile(r"[a-z][a-z0-9_]*")
_KEY_RE = re.compile(r"[A-Za-z0-9_.:@=-]+")


class AccessPolicy:
    """Namespace rules for subscribe and publish."""

    def __init__(self, namespaces: dict[str, NamespaceConfig], max_room_length: int) -> None:
        self.namespaces = namespaces
        self.max_room_length = max_room_length

    def namespace(self, room: str) -> tuple[str, str, NamespaceConfig]:
        """Split and validate ``room``; return (namespace, key, rules)."""
        if len(room) > self.max_room_length:
            raise AccessDenied(
                "invalid_room",
                f"room name is {len(room)} characters, over the limit of {self.max_room_length}",
                f"Required action: use a room name of at most {self.max_room_length} characters",
            )
        ns, sep, key = room.partition(":")
        if not sep or not _NAMESPACE_RE.fullmatch(ns) or not _KEY_RE.fullmatch(key):
            raise AccessDenied(
                "invalid_room",
                f"room name {room!r} is not 'namespace:key' (namespace [a-z0-9_], key "
                "[A-Za-z0-9_.:@=-])",
                "Required action: name rooms like quote:3f1c... or bench:room-1",
            )
        rules = self.namespaces.get(ns)
        if rules is None:
            raise AccessDenied(
                "unknown_namespace",
                f"namespace {ns!r} is not declared on this server",
                "Required action: use one of the namespaces "
                f"{', '.join(sorted(self.namespaces))}",
            )
        return ns, key, rules

    def check(self, principal: Principal, action: Literal["subscribe", "publish"],
              room: str) -> NamespaceConfig:
        """Raise :class:`AccessDenied` unless ``principal`` may ``action`` ``room``."""
        ns, key, rules = self.namespace(room)
        rule: AccessRule = rules.subscribe if action == "subscribe" else rules.publish
        if rule.access == "deny":
            raise AccessDenied(
                "forbidden",
                f"clients may not {action} in namespace {ns!r}",
                f"Required action: {action} in {ns!r} rooms happens server-side only; "
                "use the server API or the ingress",
            )
        missing = [p for p in rule.permissions if p not in principal.permissions]
        if missing:
            raise AccessDenied(
                "forbidden",
                f"{action} on {room!r} needs permission {', '.join(missing)}",
                f"Required action: use a token whose perms include {', '.join(missing)}",
            )
        if rule.access == "grant":
            if not any(fnmatchcase(room, pattern) for pattern in principal.grants):
                raise AccessDenied(
                    "forbidden",
                    f"the token grants no access to room {room!r}",
                    f"Required action: use a token whose rooms claim matches {room!r}",
                )
        elif rule.access == "owner" and (principal.user is None or key != principal.user):
            raise AccessDenied(
                "forbidden",
                f"room {room!r} belongs to another user",
                f"Required action: subscribe only to {ns}:<your user id>",
            )
        return rules
