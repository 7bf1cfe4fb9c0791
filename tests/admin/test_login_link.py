"""Single-use login links (``rtserver admin-url``): exchanged once at /admin/session/exchange
for a session token with the same permissions and expiry; any second use refused on any
worker (PostgreSQL records the jti); the link's token is no access token anywhere else."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import jwt
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import SECRET, make_config, token
from rtserver.admin_session import EXCHANGE_PATH
from rtserver.auth import ADMIN_LOGIN_PURPOSE, TokenError, TokenVerifier, mint_token
from rtserver.metrics import REGISTRY
from tests.admin.conftest import get

pytestmark = pytest.mark.timeout(60)

OPERATOR = "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d"


def link_token(perms: list[str] | None = None, ttl: float = 600, *,
               expires_at: int | None = None, user: str = OPERATOR) -> str:
    """A login link's token, as ``rtserver admin-url`` mints it."""
    return mint_token(SECRET, user, perms or ["admin:monitor", "admin:operate"], [], ttl,
                      purpose=ADMIN_LOGIN_PURPOSE, jti=uuid.uuid4().hex, expires_at=expires_at)


def outcomes(outcome: str) -> float:
    return REGISTRY.counter("rtserver_admin_login_links_total", "", ("outcome",)).get(outcome)


def test_verifier_keeps_purpose_tokens_apart() -> None:
    verifier = TokenVerifier(make_config().auth, SECRET)
    link = link_token()
    with pytest.raises(TokenError) as refused:
        verifier.verify(link)  # an access token is asked for
    assert refused.value.code == "token_invalid"
    assert "/admin/session/exchange" in refused.value.message
    principal = verifier.verify(link, purpose=ADMIN_LOGIN_PURPOSE)
    assert principal.user == OPERATOR and principal.token_id is not None
    with pytest.raises(TokenError) as refused:
        verifier.verify(token(OPERATOR), purpose=ADMIN_LOGIN_PURPOSE)
    assert refused.value.code == "not_a_purpose_token"
    no_jti = mint_token(SECRET, OPERATOR, [], [], 60, purpose=ADMIN_LOGIN_PURPOSE)
    with pytest.raises(TokenError) as refused:
        verifier.verify(no_jti, purpose=ADMIN_LOGIN_PURPOSE)
    assert refused.value.code == "token_invalid" and "jti" in refused.value.message
    # An access token from an identity provider with a numeric jti still works.
    now = int(time.time())
    idp = jwt.encode({"sub": OPERATOR, "exp": now + 60, "iat": now, "jti": 12345}, SECRET,
                     algorithm="HS256")
    assert verifier.verify(idp).token_id is None


async def exchange(port: int, tok: str | None) -> tuple[int, dict[str, Any]]:
    status, headers, body = await get(port, EXCHANGE_PATH, tok)
    assert headers["Cache-Control"] == "no-store"
    return status, orjson.loads(body)


async def test_link_is_exchanged_once_then_refused_on_the_other_worker(
        domain_server: Any, db_dsn: str) -> None:
    first = await domain_server(worker_id=0)
    second = await domain_server(worker_id=1)
    link = link_token()
    exchanged, reused = outcomes("exchanged"), outcomes("already_used")
    # The link's token is no access token: refused by the admin routes and the WebSocket.
    status, _, body = await get(first.port, "/admin/session", link)
    refused = orjson.loads(body)
    assert status == 401 and refused["error"] == "token_invalid"
    assert "/admin/session/exchange" in refused["message"]
    async with connect(f"ws://127.0.0.1:{first.port}/ws?token={link}") as conn:
        frames = []
        with pytest.raises(ConnectionClosed):
            while True:
                frames.append(orjson.loads(await asyncio.wait_for(conn.recv(), 10)))
        assert conn.close_code == 4001
    assert [f.get("code") for f in frames if f["type"] == "error"] == ["token_invalid"]

    status, doc = await exchange(first.port, link)
    assert status == 200, doc
    assert doc["user"] == OPERATOR and doc["permissions"] == ["admin:monitor", "admin:operate"]
    session_token = doc["token"]
    status, _, body = await get(second.port, "/admin/session", session_token)
    session = orjson.loads(body)
    assert status == 200 and session["user"] == OPERATOR and session["can_operate"] is True
    link_exp = first.node.verifier.verify(link, purpose=ADMIN_LOGIN_PURPOSE).expires_at
    assert session["expires_at"] == link_exp == doc["expires_at"]  # the same expiry, not later

    # Opened again, on the other worker (another process, node: the row is in PostgreSQL).
    status, again = await exchange(second.port, link)
    assert status == 401 and again["error"] == "link_already_used"
    assert again["action"] == "Required action: mint a new link with `rtserver admin-url`"
    assert "127.0.0.1" in again["message"]
    status, again = await exchange(first.port, link)
    assert status == 401 and again["error"] == "link_already_used"
    assert outcomes("exchanged") == exchanged + 1
    assert outcomes("already_used") == reused + 2

    jti = first.node.verifier.verify(link, purpose=ADMIN_LOGIN_PURPOSE).token_id
    pg = await asyncpg.connect(db_dsn)
    try:
        row = await pg.fetchrow("SELECT user_id, host(ip_address) AS ip, used_at, expires_at "
                                "FROM admin_login_links WHERE jti = $1", jti)
        audit = await pg.fetch("SELECT admin_user_id, status FROM admin_activity_logs "
                               "WHERE action = 'admin_login_link' AND resource_id = $1 "
                               "ORDER BY id", jti)
    finally:
        await pg.close()
    assert row["user_id"] == OPERATOR and row["ip"] == "127.0.0.1"
    assert row["expires_at"].timestamp() == link_exp
    assert [tuple(r) for r in audit] == [(OPERATOR, "exchanged"),
                                        (OPERATOR, "link_already_used"),
                                        (OPERATOR, "link_already_used")]


async def test_concurrent_uses_on_two_workers_one_wins(domain_server: Any) -> None:
    servers = [await domain_server(worker_id=0), await domain_server(worker_id=1)]
    link = link_token()
    results = await asyncio.gather(*(exchange(servers[i % 2].port, link) for i in range(8)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] + [401] * 7, results
    assert {doc["error"] for status, doc in results if status == 401} == {"link_already_used"}


async def test_expired_link_session_token_and_wrong_tokens_are_refused(
        domain_server: Any) -> None:
    server = await domain_server()
    port = server.port
    status, doc = await exchange(port, link_token(expires_at=int(time.time()) - 60))
    assert status == 401 and doc["error"] == "link_expired"
    assert doc["action"] == "Required action: mint a new link with `rtserver admin-url`"

    status, doc = await exchange(port, link_token())
    assert status == 200
    # The session token is not exchangeable (no purpose claim), nor is any access token.
    for tok in (doc["token"], token(OPERATOR, ["admin:monitor"])):
        status, refused = await exchange(port, tok)
        assert status == 401 and refused["error"] == "not_a_login_link", refused
        assert refused["action"].startswith("Required action:")
    status, refused = await exchange(port, None)
    assert status == 401 and refused["error"] == "auth_required"
    forged = link_token()[:-4] + "AAAA"
    status, refused = await exchange(port, forged)
    assert status == 401 and refused["error"] == "link_invalid"
    status, refused = await exchange(port, link_token(perms=["audit:read"]))
    assert status == 403 and refused["error"] == "forbidden"
    # Another purpose than a login link is no access token either.
    other = mint_token(SECRET, OPERATOR, ["admin:monitor"], [], 600, purpose="other",
                       jti="x1")
    status, _, body = await get(port, "/admin/session", other)
    assert status == 401 and orjson.loads(body)["error"] == "token_invalid"


async def test_without_a_database_the_link_cannot_be_used(domain_server: Any) -> None:
    server = await domain_server(store=False)
    status, doc = await exchange(server.port, link_token())
    assert status == 503 and doc["error"] == "feature_unavailable"
    assert "--database" in doc["action"]
