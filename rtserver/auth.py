"""Authentication (JWT) and room access rules. CPU only: no I/O.

* :class:`TokenVerifier` checks a compact JWS token (HS256 with a secret, or
  RS256 with a public key) the same way on both algorithm paths: canonical
  base64url segments only, the header's ``alg`` pinned to the configured one,
  the signature verified per algorithm, then one claims check (``sub``,
  ``exp``, ``nbf``, ``iat``, ``aud``, ``iss``, lifetime, ``purpose``) returning a
  :class:`Principal`. A token with a ``purpose`` claim (the single-use admin
  login link, :data:`ADMIN_LOGIN_PURPOSE`) is accepted only where that purpose
  is asked for, never as an access token.
* :class:`AccessPolicy` applies the per-namespace rules of the configuration
  to a principal and a room. There is no default access: an unknown namespace
  or an unmatched rule is refused with a code and a required action.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import math
import re
import time
import uuid
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

import jwt
import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from rtserver.config import AccessRule, AuthConfig, NamespaceConfig

__all__ = [
    "ADMIN_LOGIN_PURPOSE",
    "ANONYMOUS",
    "AccessDenied",
    "AccessPolicy",
    "Principal",
    "TokenError",
    "TokenVerifier",
    "b64url_decode_strict",
    "mint_token",
]


#: The ``purpose`` claim of a login link of ``rtserver admin-url``: exchanged once at
#: ``/admin/session/exchange`` for a session token, refused everywhere else.
ADMIN_LOGIN_PURPOSE = "admin_login"

#: Longest ``jti`` claim a purpose token may carry.
_MAX_JTI = 128


class Principal(msgspec.Struct, frozen=True):
    """Who a connection is: user id, permissions, room grants, token expiry; ``token_id``
    is the ``jti`` of a purpose token (None otherwise)."""

    user: str | None
    permissions: frozenset[str]
    grants: tuple[str, ...]
    anonymous: bool
    expires_at: float | None
    token_id: str | None = None

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


def _invalid(message: str) -> TokenError:
    return TokenError("token_invalid", message, _TOKEN_ACTION)


class _Header(msgspec.Struct):
    alg: str
    typ: str | None = None
    crit: list[str] | None = None


class _Claims(msgspec.Struct):
    sub: str | int
    exp: int | float
    # An absent perms / rooms claim is an explicit "none" (not a hidden grant).
    perms: list[str] = []
    rooms: list[str] = []
    nbf: int | float | None = None
    iat: int | float | None = None
    aud: str | list[str] | None = None
    iss: str | None = None
    purpose: str | None = None
    # RFC 7519 makes jti a string; identity providers that send a number are not refused.
    jti: str | int | None = None


_header_decoder = msgspec.json.Decoder(_Header)
_claims_decoder = msgspec.json.Decoder(_Claims)
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: Distinct accepted header segments a verifier remembers (then it starts again).
_ACCEPTED_HEADERS_KEPT = 64


_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_PADDING = ("", "", "==", "=")
_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
#: By ``len(segment) % 4``: the last characters whose unused low bits are all clear (2
#: leaves 4 bits of the last character unused, 3 leaves 2), None when every one is.
_CANONICAL_LAST: tuple[frozenset[str] | None, ...] = (
    None, None, frozenset(_B64_ALPHABET[::16]), frozenset(_B64_ALPHABET[::4]))


def b64url_decode_strict(segment: str) -> bytes:
    """Decode one canonical unpadded base64url segment or raise ``ValueError``.

    Exactly one spelling of each byte string is accepted: no ``=`` padding, no
    character outside ``A-Z a-z 0-9 - _``, no impossible length and no set
    unused trailing bits, so a token string maps to one token (a denylist or a
    cache keyed on the string cannot be bypassed by re-spelling it).
    """
    if not _B64URL.fullmatch(segment):
        raise ValueError("a segment has a character outside the base64url alphabet "
                         "(or padding)")
    rem = len(segment) % 4
    if rem == 1:
        raise ValueError("a segment has an impossible base64url length")
    try:
        raw = binascii.a2b_base64(
            (segment + _PADDING[rem]).encode("ascii").translate(_TO_STANDARD))
    except binascii.Error as exc:
        raise ValueError(f"a segment is not base64url: {exc}") from exc
    # Only the last character can spell its bytes another way (its unused bits set);
    # the same test as encoding the bytes again and comparing.
    allowed = _CANONICAL_LAST[rem]
    if allowed is not None and segment[-1] not in allowed:
        raise ValueError("a segment is not in canonical base64url (unused bits are set)")
    return raw


class _Hs256:
    """HMAC-SHA256 (RFC 2104) with the keyed inner and outer hash states prepared once for
    the current and the previous secret: a token costs two state copies per secret."""

    def __init__(self, secrets: list[str]) -> None:
        self._pads: list[tuple[Any, Any]] = []
        for secret in secrets:
            if not secret:
                continue
            key = secret.encode()
            if len(key) > 64:  # longer than SHA-256's block: its digest is the key
                key = hashlib.sha256(key).digest()
            key = key.ljust(64, b"\0")
            self._pads.append((hashlib.sha256(key.translate(_IPAD)),
                               hashlib.sha256(key.translate(_OPAD))))

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        ok = False
        for inner, outer in self._pads:
            i = inner.copy()
            i.update(signing_input)
            o = outer.copy()
            o.update(i.digest())
            ok |= hmac.compare_digest(o.digest(), signature)
        return ok


_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


class _Rs256:
    """RSASSA-PKCS1-v1_5 with SHA-256 against one PEM public key."""

    def __init__(self, pem: bytes) -> None:
        key = serialization.load_pem_public_key(pem)
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError("auth.jwt_public_key_file is not an RSA public key. Required "
                             "action: give the PEM public key matching the RS256 signing key")
        self._key = key

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        try:
            self._key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return False
        return True


class TokenVerifier:
    """Verify JWTs against the configured key and algorithm.

    Both algorithms share one path: compact JWS with exactly three canonical
    base64url segments; header ``alg`` pinned to the configured algorithm
    (``none`` and every other algorithm refused, no ``crit``, ``typ`` absent
    or ``JWT``); the signature over ``header.payload`` verified (HS256: HMAC
    compared in constant time, against ``auth.jwt_secret`` and, during a
    rotation, ``auth.jwt_previous_secret``; RS256: the public key); then one
    claims check: ``sub`` (a UUID) and ``exp`` required, ``exp``/``nbf``/``iat``
    against the clock with ``auth.leeway``, the lifetime bounded by
    ``auth.max_token_lifetime``, ``aud`` and ``iss`` as configured, and the
    ``purpose`` claim equal to the one asked for (absent for access tokens; a
    purpose token also needs a ``jti``).
    """

    def __init__(self, config: AuthConfig, secret: str) -> None:
        self._algorithm = config.jwt_algorithm
        self._audience = config.jwt_audience
        self._issuer = config.jwt_issuer
        self._leeway = config.leeway
        self._max_lifetime = config.max_token_lifetime
        self._last_permissions: frozenset[str] = frozenset()
        self._last_grants: tuple[str, ...] = ()
        #: Header segments that passed the header checks (a bounded set).
        self._accepted_headers: set[str] = set()
        self._signer: _Hs256 | _Rs256
        if self._algorithm == "HS256":
            self._signer = _Hs256([secret, config.jwt_previous_secret])
        else:
            self._signer = _Rs256(Path(config.jwt_public_key_file).read_bytes())

    def verify(self, token: str, now: float | None = None, *,
               purpose: str | None = None) -> Principal:
        """Return the token's principal or raise :class:`TokenError`.

        ``now`` (seconds since the epoch) defaults to the wall clock. ``purpose``:
        the ``purpose`` claim the token must carry (None: an access token, which
        carries none; a mismatch is ``token_invalid``, or ``not_a_purpose_token``
        when a purpose was asked for and the token has none).
        """
        if not token:
            raise TokenError("token_missing", "no token was given", _TOKEN_ACTION)
        parts = token.split(".")
        if len(parts) != 3:
            raise _invalid("the token is malformed: not three segments")
        head, body, sig = parts
        # A header segment accepted before is accepted again without decoding (its checks
        # depend on nothing else); tokens of one issuer share a handful of headers.
        header_known = head in self._accepted_headers
        try:
            header = None if header_known else _header_decoder.decode(
                b64url_decode_strict(head))
            signature = b64url_decode_strict(sig)
            payload = b64url_decode_strict(body)
        except (ValueError, msgspec.MsgspecError) as exc:
            raise _invalid(f"the token is malformed: {exc}") from exc
        if header is not None:
            self._check_header(header)
            if len(self._accepted_headers) >= _ACCEPTED_HEADERS_KEPT:
                self._accepted_headers.clear()
            self._accepted_headers.add(head)
        if not self._signer.verify(token[:len(head) + 1 + len(body)].encode("ascii"),
                                   signature):
            raise _invalid("the token's signature does not verify")
        try:
            claims = _claims_decoder.decode(payload)
        except (ValueError, msgspec.MsgspecError) as exc:
            raise _invalid(f"the token's claims are invalid: {exc}") from exc
        _check_purpose(claims, purpose)
        return self._check_claims(claims, time.time() if now is None else now)

    def _check_header(self, header: _Header) -> None:
        if header.alg != self._algorithm:
            raise _invalid(f"the token's algorithm {header.alg!r} is not accepted "
                           f"(this server accepts only {self._algorithm})")
        if header.crit is not None:
            raise _invalid(f"unsupported critical header {header.crit}")
        if header.typ is not None and header.typ.upper() != "JWT":
            raise _invalid(f"the token's typ {header.typ!r} is not JWT")

    def _check_claims(self, claims: _Claims, now: float) -> Principal:
        leeway = self._leeway
        for name, value in (("exp", claims.exp), ("nbf", claims.nbf), ("iat", claims.iat)):
            if value is not None and not math.isfinite(value):
                raise _invalid(f"the token's {name} claim is not a finite number")
        if claims.exp <= now - leeway:
            raise TokenError("token_expired", "the token has expired", _TOKEN_ACTION)
        if claims.nbf is not None and claims.nbf > now + leeway:
            raise _invalid("the token is not valid yet (nbf)")
        if claims.iat is not None and claims.iat > now + leeway:
            raise _invalid("the token was issued in the future (iat)")
        start = now if claims.iat is None else claims.iat
        if claims.exp - min(start, now) > self._max_lifetime + leeway:
            raise _invalid(f"the token's lifetime exceeds the accepted maximum of "
                           f"{self._max_lifetime:g} s (auth.max_token_lifetime)")
        if self._audience:
            auds = [claims.aud] if isinstance(claims.aud, str) else (claims.aud or [])
            if self._audience not in auds:
                raise _invalid(f"the token's audience is not {self._audience!r}")
        elif claims.aud is not None:
            raise _invalid("the token carries an aud claim and this server has no "
                           "audience configured (auth.jwt_audience): it was minted for "
                           "another service")
        if self._issuer and claims.iss != self._issuer:
            raise _invalid(f"the token's issuer is not {self._issuer!r}")
        sub = claims.sub
        if isinstance(sub, str) and _CANONICAL_UUID.fullmatch(sub):
            user = sub  # already what str(uuid.UUID(sub)) gives
        else:
            try:
                user = str(uuid.UUID(str(sub)))
            except ValueError as exc:
                raise _invalid(f"the token's sub {str(sub)[:64]!r} is not a UUID") from exc
        # Connections of one storm carry the same permissions and grants: equal values
        # share the previous principal's objects (a one-entry memo: about 300 B per
        # connection less, measured with rtserver.bench.conn_memory).
        permissions = frozenset(claims.perms)
        if permissions == self._last_permissions:
            permissions = self._last_permissions
        else:
            self._last_permissions = permissions
        grants = tuple(claims.rooms)
        if grants == self._last_grants:
            grants = self._last_grants
        else:
            self._last_grants = grants
        return Principal(user=user, permissions=permissions, grants=grants, anonymous=False,
                         expires_at=float(claims.exp),
                         token_id=None if claims.purpose is None else str(claims.jti))


def _check_purpose(claims: _Claims, purpose: str | None) -> None:
    """Raise :class:`TokenError` unless the token's ``purpose`` claim is ``purpose``."""
    if claims.purpose == purpose:
        if purpose is not None and not (isinstance(claims.jti, str)
                                        and 0 < len(claims.jti) <= _MAX_JTI):
            raise _invalid(f"the {purpose} token has no jti claim of 1..{_MAX_JTI} "
                           "characters")
        return
    if claims.purpose is None:
        raise TokenError("not_a_purpose_token",
                         f"the token is an access token, not a single-use {purpose} token",
                         "Required action: use the token itself (Authorization: Bearer); "
                         "only the links of `rtserver admin-url` are exchanged")
    if claims.purpose == ADMIN_LOGIN_PURPOSE:
        raise TokenError("token_invalid",
                         "the token is a single-use admin login link: it is accepted only "
                         "by GET /admin/session/exchange, which gives a session token",
                         "Required action: open the link in a browser (the console "
                         "exchanges it), or use an access token")
    raise _invalid(f"the token's purpose {claims.purpose[:40]!r} is not accepted here")


def mint_token(
    key: str,
    user: str,
    permissions: list[str],
    rooms: list[str],
    ttl: float,
    algorithm: Literal["HS256", "RS256"] = "HS256",
    *,
    audience: str = "",
    issuer: str = "",
    purpose: str | None = None,
    jti: str | None = None,
    expires_at: int | None = None,
) -> str:
    """Sign a token (development, tests, the bench and console sessions); ``key`` is the
    secret or PEM key.

    ``audience`` / ``issuer`` add ``aud`` / ``iss`` claims when not empty; ``purpose``
    and ``jti`` add those claims when given; ``expires_at`` (seconds since the epoch)
    replaces ``now + ttl`` as ``exp``.
    """
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": str(uuid.UUID(user)), "perms": permissions, "rooms": rooms, "iat": now,
        "exp": now + int(ttl) if expires_at is None else expires_at}
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    if purpose is not None:
        claims["purpose"] = purpose
    if jti is not None:
        claims["jti"] = jti
    return jwt.encode(claims, key, algorithm=algorithm)


_NAMESPACE_RE = re.compile(r"[a-z][a-z0-9_]*")
#: Valid room names an :class:`AccessPolicy` remembers split (then it starts again).
_VALID_ROOMS_KEPT = 1024
_KEY_RE = re.compile(r"[A-Za-z0-9_.:@=-]+")


class AccessPolicy:
    """Namespace rules for subscribe and publish."""

    def __init__(self, namespaces: dict[str, NamespaceConfig], max_room_length: int) -> None:
        self.namespaces = namespaces
        self.max_room_length = max_room_length
        #: Valid room names -> their namespace's rules (bounded; the rules are fixed for the
        #: process): a known name is split again (one C call) without the two regexes.
        self._valid: dict[str, NamespaceConfig] = {}

    def namespace(self, room: str) -> tuple[str, str, NamespaceConfig]:
        """Split and validate ``room``; return (namespace, key, rules)."""
        rules = self._valid.get(room)
        if rules is not None:
            ns, _, key = room.partition(":")
            return ns, key, rules
        split = self._split(room)
        if len(self._valid) >= _VALID_ROOMS_KEPT:
            self._valid.clear()
        self._valid[room] = split[2]
        return split

    def _split(self, room: str) -> tuple[str, str, NamespaceConfig]:
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
