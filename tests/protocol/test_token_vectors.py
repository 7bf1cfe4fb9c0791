"""One table of token vectors, run against HS256 and RS256 alike.

Each vector builds a token from a header, claims and a signing key, optionally
re-spells one segment afterwards, and says what the verifier must answer
under a given audience / issuer configuration.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from rtserver.auth import TokenError, TokenVerifier, b64url_decode_strict
from rtserver.config import load_config

SECRET = "vector-test-secret-0123456789abcdef-0123456789"
PREVIOUS = "vector-previous-secret-0123456789abcdef-01234"
NOW = 1_900_000_000.0
USER = str(uuid.UUID(int=7))
LEEWAY = 1.0
MAX_LIFETIME = 86400.0


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class Keys:
    """Signing material of one algorithm."""

    alg: str
    sign: Callable[[bytes], bytes]
    sign_other: Callable[[bytes], bytes]  # a key this server does not trust
    verifier: Callable[..., TokenVerifier]


def _flip_unused_bits(segment: str) -> str:
    """Same bytes, different spelling: set unused low bits of the last character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    unused = {2: 4, 3: 2}[len(segment) % 4]  # unused bits in the last character
    last = alphabet.index(segment[-1])
    assert last % (1 << unused) == 0
    return segment[:-1] + alphabet[last + 1]


@dataclass
class Vector:
    """One token case: how to build it and the expected result (None = accepted)."""

    name: str
    claims: dict[str, Any] = field(default_factory=dict)
    header: dict[str, Any] = field(default_factory=dict)
    drop: tuple[str, ...] = ()
    expect: str | None = None
    respell: Callable[[list[str]], list[str]] | None = None
    audience: str = ""
    issuer: str = ""
    other_key: bool = False
    previous_key: bool = False  # HS256 only: signed with auth.jwt_previous_secret


def _pad(i: int) -> Callable[[list[str]], list[str]]:
    def f(parts: list[str]) -> list[str]:
        parts[i] += "=" * (-len(parts[i]) % 4 or 4)
        return parts
    return f


def _insert(i: int, char: str) -> Callable[[list[str]], list[str]]:
    def f(parts: list[str]) -> list[str]:
        parts[i] = parts[i][:5] + char + parts[i][5:]
        return parts
    return f


def _unused_bits(i: int) -> Callable[[list[str]], list[str]]:
    def f(parts: list[str]) -> list[str]:
        parts[i] = _flip_unused_bits(parts[i])
        return parts
    return f


VECTORS = [
    Vector("valid"),
    Vector("valid_without_iat", drop=("iat",)),
    Vector("extra_claims_ignored", claims={"jti": "x", "iss": "someone"}),
    Vector("padding_on_signature", respell=_pad(2), expect="token_invalid"),
    Vector("padding_on_header", respell=_pad(0), expect="token_invalid"),
    Vector("padding_on_payload", respell=_pad(1), expect="token_invalid"),
    Vector("unused_bits_in_signature", respell=_unused_bits(2), expect="token_invalid"),
    Vector("unused_bits_in_header", header={"x": "ab"}, respell=_unused_bits(0),
           expect="token_invalid"),
    Vector("unused_bits_in_payload", claims={"x": "a"}, respell=_unused_bits(1),
           expect="token_invalid"),
    Vector("plus_inserted", respell=_insert(2, "+"), expect="token_invalid"),
    Vector("slash_inserted", respell=_insert(1, "/"), expect="token_invalid"),
    Vector("space_inserted", respell=_insert(0, " "), expect="token_invalid"),
    Vector("non_ascii_inserted", respell=_insert(2, "\u00e9"), expect="token_invalid"),
    Vector("four_segments", respell=lambda p: [*p, "e30"], expect="token_invalid"),
    Vector("alg_none", header={"alg": "none"}, expect="token_invalid"),
    Vector("alg_other", header={"alg": "HS512"}, expect="token_invalid"),
    Vector("crit_header", header={"crit": ["b64"]}, expect="token_invalid"),
    Vector("typ_other", header={"typ": "at+jwt+x"}, expect="token_invalid"),
    Vector("forged_key", other_key=True, expect="token_invalid"),
    Vector("no_sub", drop=("sub",), expect="token_invalid"),
    Vector("no_exp", drop=("exp",), expect="token_invalid"),
    Vector("sub_not_uuid", claims={"sub": "alice"}, expect="token_invalid"),
    Vector("perms_not_list", claims={"perms": "admin"}, expect="token_invalid"),
    Vector("exp_string", claims={"exp": "soon"}, expect="token_invalid"),
    Vector("expired", claims={"exp": NOW - LEEWAY - 1}, expect="token_expired"),
    Vector("expired_within_leeway", claims={"exp": NOW - LEEWAY / 2}),
    Vector("exp_huge", claims={"exp": 1e300}, drop=("iat",), expect="token_invalid"),
    Vector("lifetime_too_long", claims={"iat": NOW - 10, "exp": NOW + MAX_LIFETIME},
           expect="token_invalid"),
    Vector("iat_future", claims={"iat": NOW + LEEWAY + 5}, expect="token_invalid"),
    Vector("iat_future_within_leeway", claims={"iat": NOW + LEEWAY / 2}),
    Vector("nbf_future", claims={"nbf": NOW + LEEWAY + 5}, expect="token_invalid"),
    Vector("nbf_past", claims={"nbf": NOW - 5}),
    Vector("aud_without_configured_audience", claims={"aud": "other-service"},
           expect="token_invalid"),
    Vector("aud_matches", claims={"aud": "rtserver"}, audience="rtserver"),
    Vector("aud_list_contains", claims={"aud": ["x", "rtserver"]}, audience="rtserver"),
    Vector("aud_wrong", claims={"aud": "billing"}, audience="rtserver", expect="token_invalid"),
    Vector("aud_missing", audience="rtserver", expect="token_invalid"),
    Vector("iss_matches", claims={"iss": "auth.example"}, issuer="auth.example"),
    Vector("iss_wrong", claims={"iss": "evil.example"}, issuer="auth.example",
           expect="token_invalid"),
    Vector("iss_missing", issuer="auth.example", expect="token_invalid"),
]


def build(keys: Keys, v: Vector) -> str:
    header = {"alg": keys.alg, "typ": "JWT", **v.header}
    claims: dict[str, Any] = {"sub": USER, "iat": NOW, "exp": NOW + 600, "perms": ["p"],
                              **v.claims}
    for name in v.drop:
        claims.pop(name)
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(claims).encode())
    signing_input = f"{head}.{body}".encode()
    sign = keys.sign_other if v.other_key else keys.sign
    if v.previous_key:
        sign = keys_previous_sign
    parts = [head, body, _b64(sign(signing_input))]
    if v.respell is not None:
        parts = v.respell(parts)
    return ".".join(parts)


def _hmac_sha256(data: bytes, key: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def keys_previous_sign(data: bytes) -> bytes:
    return _hmac_sha256(data, PREVIOUS.encode())


def _auth_config(**changes: Any) -> Any:
    config = load_config(env={}, flags={"jwt_secret": SECRET})
    return msgspec.structs.replace(config.auth, leeway=LEEWAY,
                                   max_token_lifetime=MAX_LIFETIME, **changes)


def _hs256() -> Keys:
    return Keys(
        "HS256",
        sign=lambda d: _hmac_sha256(d, SECRET.encode()),
        sign_other=lambda d: _hmac_sha256(d, b"some-other-secret-0123456789abcdef-xyz"),
        verifier=lambda **c: TokenVerifier(_auth_config(**c), SECRET),
    )


@pytest.fixture(scope="module")
def rs256(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = Path(tmp_path_factory.mktemp("rs")) / "pub.pem"
    pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return Keys(
        "RS256",
        sign=lambda d: key.sign(d, padding.PKCS1v15(), hashes.SHA256()),
        sign_other=lambda d: other.sign(d, padding.PKCS1v15(), hashes.SHA256()),
        verifier=lambda **c: TokenVerifier(
            _auth_config(jwt_algorithm="RS256", jwt_public_key_file=str(pub), **c), ""),
    )


@pytest.fixture(params=["HS256", "RS256"])
def keys(request: pytest.FixtureRequest) -> Keys:
    if request.param == "HS256":
        return _hs256()
    return request.getfixturevalue("rs256")  # type: ignore[no-any-return]


@pytest.mark.parametrize("v", VECTORS, ids=[v.name for v in VECTORS])
def test_vector(keys: Keys, v: Vector) -> None:
    token = build(keys, v)
    verifier = keys.verifier(jwt_audience=v.audience, jwt_issuer=v.issuer)
    if v.expect is None:
        principal = verifier.verify(token, now=NOW)
        assert principal.user == USER and principal.permissions == {"p"}
    else:
        with pytest.raises(TokenError) as info:
            verifier.verify(token, now=NOW)
        assert info.value.code == v.expect
        assert info.value.action.startswith("Required action")


_MALFORMED = "the token is malformed: "
_ALPHABET = _MALFORMED + "a segment has a character outside the base64url alphabet (or padding)"
_UNUSED = _MALFORMED + "a segment is not in canonical base64url (unused bits are set)"
_LIFETIME = ("the token's lifetime exceeds the accepted maximum of 86400 s "
             "(auth.max_token_lifetime)")
_CLAIMS = "the token's claims are invalid: "  # then msgspec's words (they vary by release)
#: The exact message of every refused vector ({alg}: the verifier's algorithm).
MESSAGES = {
    "padding_on_signature": _ALPHABET, "padding_on_header": _ALPHABET,
    "padding_on_payload": _ALPHABET, "unused_bits_in_signature": _UNUSED,
    "unused_bits_in_header": _UNUSED, "unused_bits_in_payload": _UNUSED,
    "plus_inserted": _ALPHABET, "slash_inserted": _ALPHABET, "space_inserted": _ALPHABET,
    "non_ascii_inserted": _ALPHABET,
    "four_segments": _MALFORMED + "not three segments",
    "alg_none": "the token's algorithm 'none' is not accepted (this server accepts only {alg})",
    "alg_other": "the token's algorithm 'HS512' is not accepted (this server accepts only {alg})",
    "crit_header": "unsupported critical header ['b64']",
    "typ_other": "the token's typ 'at+jwt+x' is not JWT",
    "forged_key": "the token's signature does not verify",
    "no_sub": _CLAIMS, "no_exp": _CLAIMS, "perms_not_list": _CLAIMS, "exp_string": _CLAIMS,
    "sub_not_uuid": "the token's sub 'alice' is not a UUID",
    "expired": "the token has expired",
    "exp_huge": _LIFETIME, "lifetime_too_long": _LIFETIME,
    "iat_future": "the token was issued in the future (iat)",
    "nbf_future": "the token is not valid yet (nbf)",
    "aud_without_configured_audience": "the token carries an aud claim and this server has no "
    "audience configured (auth.jwt_audience): it was minted for another service",
    "aud_wrong": "the token's audience is not 'rtserver'",
    "aud_missing": "the token's audience is not 'rtserver'",
    "iss_wrong": "the token's issuer is not 'auth.example'",
    "iss_missing": "the token's issuer is not 'auth.example'",
}


@pytest.mark.parametrize("v", [v for v in VECTORS if v.expect is not None],
                         ids=[v.name for v in VECTORS if v.expect is not None])
def test_refusal_message_is_the_same_every_time(keys: Keys, v: Vector) -> None:
    """Each refusal has its own message, the same on a repeat (the verifier remembers
    accepted headers: a repeat must not take another path to another answer)."""
    token = build(keys, v)
    verifier = keys.verifier(jwt_audience=v.audience, jwt_issuer=v.issuer)
    usual = {**({"aud": v.audience} if v.audience else {}),
             **({"iss": v.issuer} if v.issuer else {})}
    verifier.verify(build(keys, Vector("valid", claims=usual)), now=NOW)  # header known
    expected = MESSAGES[v.name].format(alg=keys.alg)
    for _ in range(2):
        with pytest.raises(TokenError) as info:
            verifier.verify(token, now=NOW)
        assert info.value.code == v.expect
        if expected.endswith(": "):
            assert info.value.message.startswith(expected) and len(info.value.message) > len(
                expected)
        else:
            assert info.value.message == expected


def test_a_known_header_does_not_skip_the_signature_or_the_claims(keys: Keys) -> None:
    verifier = keys.verifier()
    assert verifier.verify(build(keys, Vector("valid")), now=NOW).user == USER
    for v in (Vector("forged_key", other_key=True), Vector("expired", claims={"exp": NOW - 5}),
              Vector("sub_not_uuid", claims={"sub": "alice"})):
        with pytest.raises(TokenError):
            verifier.verify(build(keys, v), now=NOW)
    # a refused header stays refused, also after many accepted distinct headers
    alg_none = build(keys, Vector("alg_none", header={"alg": "none"}))
    for i in range(200):
        assert verifier.verify(build(keys, Vector("h", header={"kid": str(i)})),
                               now=NOW).user == USER
        if i % 50 == 0:
            with pytest.raises(TokenError, match="algorithm 'none'"):
                verifier.verify(alg_none, now=NOW)


@pytest.mark.parametrize("sub", [
    USER.upper(), "{" + USER + "}", USER.replace("-", ""), "urn:uuid:" + USER, USER])
def test_sub_spellings_of_a_uuid_give_its_canonical_form(sub: str) -> None:
    keys = _hs256()
    principal = keys.verifier().verify(build(keys, Vector("sub", claims={"sub": sub})), now=NOW)
    assert principal.user == USER


@pytest.mark.parametrize("sub", [7, "", USER[:-1], USER + "0", "g" + USER[1:]])
def test_sub_that_is_not_a_uuid_is_refused(sub: object) -> None:
    keys = _hs256()
    with pytest.raises(TokenError, match="is not a UUID") as info:
        keys.verifier().verify(build(keys, Vector("sub", claims={"sub": sub})), now=NOW)
    assert info.value.code == "token_invalid"


@pytest.mark.parametrize("length", [1, 31, 32, 63, 64, 65, 130])
def test_hs256_matches_hmac_for_every_secret_length(length: int) -> None:
    """The prepared inner and outer states give RFC 2104 HMAC-SHA256 whatever the length
    (a secret over the 64-byte block is hashed first)."""
    secret = ("k" * length)[:length]
    from rtserver.auth import _Hs256

    for data in (b"", b"a.b", b"x" * 1000):
        mac = _hmac_sha256(data, secret.encode())
        assert _Hs256([secret]).verify(data, mac)
        assert _Hs256(["another-secret", secret]).verify(data, mac)
        assert not _Hs256([secret]).verify(data, mac[:-1] + bytes([mac[-1] ^ 1]))
        assert not _Hs256([secret + "x"]).verify(data, mac)


def test_previous_secret_accepted_during_rotation() -> None:
    keys = _hs256()
    token = build(keys, Vector("rotated", previous_key=True))
    with pytest.raises(TokenError):
        keys.verifier().verify(token, now=NOW)
    assert keys.verifier(jwt_previous_secret=PREVIOUS).verify(token, now=NOW).user == USER


@pytest.mark.parametrize("segment", ["", "QQ", "QUI", "QUJD", "_-8"])
def test_canonical_segments_round_trip(segment: str) -> None:
    assert _b64(b64url_decode_strict(segment)) == segment


@pytest.mark.parametrize("segment", ["Q", "QR", "QUJ", "QQ==", "Q+", "Q/", "QQ\n", "ä"])
def test_noncanonical_segments_refused(segment: str) -> None:
    with pytest.raises(ValueError):
        b64url_decode_strict(segment)


def test_secret_length_counts_bytes() -> None:
    from rtserver.config import ConfigError

    with pytest.raises(ConfigError, match="32 bytes"):
        load_config(env={}, flags={"jwt_secret": "x" * 31})
    # 16 characters of two bytes each: 32 bytes, accepted.
    assert load_config(env={}, flags={"jwt_secret": "\u00e9" * 16}).auth.jwt_secret
