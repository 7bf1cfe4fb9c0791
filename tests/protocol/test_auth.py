"""Token verification: valid, expired, forged, alg none, missing claims, RS256."""

from __future__ import annotations

import time
import uuid

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from rtserver.auth import Principal, TokenError, TokenVerifier, mint_token
from rtserver.config import ConfigError, load_config

SECRET = "auth-test-secret-0123456789abcdef-0123456789abcdef-0123456789abcdef"


def verifier() -> TokenVerifier:
    config = load_config(env={}, flags={"jwt_secret": SECRET})
    return TokenVerifier(config.auth, SECRET)


def test_valid_token() -> None:
    user = str(uuid.uuid4())
    p = verifier().verify(mint_token(SECRET, user, ["quote:read"], ["quote:*"], 60))
    assert p.user == user and p.permissions == {"quote:read"} and p.grants == ("quote:*",)
    assert not p.anonymous



def test_equal_permissions_and_grants_share_objects() -> None:
    """Consecutive principals with equal permissions/grants share them (memory per
    connection); different values are kept apart."""
    v = verifier()

    def principal(perms: list[str], rooms: list[str]) -> Principal:
        return v.verify(mint_token(SECRET, str(uuid.uuid4()), perms, rooms, 60))

    a = principal(["publish"], ["bench:*"])
    b = principal(["publish"], ["bench:*"])
    assert a.permissions is b.permissions and a.grants is b.grants
    c = principal(["publish", "presence"], ["quote:*"])
    assert c.permissions == {"publish", "presence"} and c.grants == ("quote:*",)
    d = principal(["publish"], ["bench:*"])
    assert d.permissions == {"publish"} and d.grants == ("bench:*",)

@pytest.mark.parametrize(("make", "code"), [
    (lambda: "", "token_missing"),
    (lambda: "garbage", "token_invalid"),
    (lambda: mint_token(SECRET, str(uuid.uuid4()), [], [], -10), "token_expired"),
    (lambda: mint_token("another-secret-0123456789abcdef-xyz", str(uuid.uuid4()), [], [], 60),
     "token_invalid"),
    (lambda: jwt.encode({"sub": str(uuid.uuid4()), "exp": int(time.time()) + 60}, None,
                        algorithm="none"), "token_invalid"),
    (lambda: jwt.encode({"sub": str(uuid.uuid4())}, SECRET, algorithm="HS256"), "token_invalid"),
    (lambda: jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256"),
     "token_invalid"),
    (lambda: jwt.encode({"sub": "not-a-uuid", "exp": int(time.time()) + 60}, SECRET,
                        algorithm="HS256"), "token_invalid"),
    (lambda: jwt.encode({"sub": str(uuid.uuid4()), "exp": int(time.time()) + 60,
                         "perms": "admin"}, SECRET, algorithm="HS256"), "token_invalid"),
    (lambda: jwt.encode({"sub": str(uuid.uuid4()), "exp": int(time.time()) + 60}, SECRET,
                        algorithm="HS512"), "token_invalid"),  # wrong alg
])
def test_rejected_tokens(make: object, code: str) -> None:
    with pytest.raises(TokenError) as info:
        verifier().verify(make())  # type: ignore[operator]
    assert info.value.code == code
    assert info.value.action.startswith("Required action")


def test_rs256(tmp_path: object) -> None:
    from pathlib import Path

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = Path(str(tmp_path)) / "pub.pem"
    pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()
    config = load_config(env={}, flags={"dev": True})
    auth = msgspec.structs.replace(config.auth, jwt_algorithm="RS256",
                                   jwt_public_key_file=str(pub))
    v = TokenVerifier(auth, "")
    user = str(uuid.uuid4())
    assert v.verify(mint_token(priv, user, [], [], 60, "RS256")).user == user
    with pytest.raises(TokenError):
        v.verify(mint_token(SECRET, user, [], [], 60))  # HS256 against an RS256 server


def test_config_requires_secret() -> None:
    with pytest.raises(ConfigError, match="RTSERVER_JWT_SECRET"):
        load_config(env={}, flags={})
    assert load_config(env={}, flags={"dev": True}).server.dev


def test_config_env_and_flags_override() -> None:
    c = load_config(env={"RTSERVER_PORT": "9001", "RTSERVER_JWT_SECRET": SECRET,
                         "RTSERVER_WORKERS": "2"}, flags={"port": 9002})
    assert c.server.port == 9002 and c.workers.count == 2
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_config(env={"RTSERVER_JWT_SECRET": SECRET}, flags={"port": 70000})


def test_config_missing_key_comes_from_shipped_file(tmp_path: object) -> None:
    # A user file holds only what it changes (issue 16): the rest is the shipped base.
    from pathlib import Path

    from rtserver.config import DEFAULT_CONFIG_PATH

    text = DEFAULT_CONFIG_PATH.read_text().replace("auth_timeout = 5.0\n", "auth_timeout = 7.0\n")
    text = text.replace("backlog = ", "# backlog = ")
    path = Path(str(tmp_path)) / "c.toml"
    path.write_text(text)
    config = load_config(path, env={"RTSERVER_JWT_SECRET": SECRET})
    shipped = load_config(env={"RTSERVER_JWT_SECRET": SECRET})
    assert config.auth.auth_timeout == 7.0 and config.server.backlog == shipped.server.backlog


@pytest.mark.parametrize(("make", "code"), [
    (lambda: jwt.encode({"sub": str(uuid.uuid4()), "exp": int(time.time()) + 60,
                         "nbf": int(time.time()) + 600}, SECRET, algorithm="HS256"),
     "token_invalid"),
    (lambda: jwt.encode({"sub": str(uuid.uuid4()), "exp": int(time.time()) + 60}, SECRET,
                        algorithm="HS256", headers={"crit": ["b64"]}), "token_invalid"),
    (lambda: "a.b", "token_invalid"),
    (lambda: "a.b.c.d", "token_invalid"),
    (lambda: "!!!.@@@.###", "token_invalid"),
    (lambda: jwt.encode({"sub": str(uuid.uuid4()), "exp": "soon"}, SECRET, algorithm="HS256"),
     "token_invalid"),
    (lambda: _tamper(mint_token(SECRET, str(uuid.uuid4()), [], [], 60)), "token_invalid"),
])
def test_hs256_fast_path_rejects(make: object, code: str) -> None:
    with pytest.raises(TokenError) as info:
        verifier().verify(make())  # type: ignore[operator]
    assert info.value.code == code


def _tamper(token: str) -> str:
    import base64

    head, _, sig = token.split(".")
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    claims["perms"] = ["admin:monitor"]
    import json

    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{sig}"


def test_hs256_fast_path_accepts_extra_claims() -> None:
    user = str(uuid.uuid4())
    tok = jwt.encode({"sub": user, "exp": int(time.time()) + 60, "iat": int(time.time()),
                      "iss": "quote-service", "perms": ["quote:read"]}, SECRET, algorithm="HS256")
    p = verifier().verify(tok)
    assert p.user == user and p.permissions == {"quote:read"} and p.grants == ()


def test_policy_answers_the_same_for_a_room_seen_before() -> None:
    """Valid room names are remembered split (bounded); refusals are never remembered."""
    from rtserver.auth import _VALID_ROOMS_KEPT, AccessDenied, AccessPolicy

    config = load_config(env={}, flags={"jwt_secret": SECRET})
    policy = AccessPolicy(config.namespaces, config.limits.max_room_name_length)
    first = policy.namespace("bench:room-1")
    assert policy.namespace("bench:room-1") == first == ("bench", "room-1", first[2])
    for bad, code in (("bench:bad key", "invalid_room"), ("nope:x", "unknown_namespace"),
                      ("bench:" + "x" * config.limits.max_room_name_length, "invalid_room")):
        for _ in range(2):
            with pytest.raises(AccessDenied) as info:
                policy.namespace(bad)
            assert info.value.code == code
    for i in range(_VALID_ROOMS_KEPT * 2 + 1):  # past the bound: it starts again
        assert policy.namespace(f"bench:r-{i}")[1] == f"r-{i}"
    assert policy.namespace("bench:room-1") == first
