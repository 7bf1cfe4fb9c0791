"""The single-use login link and the quote activity panel in real Chromium
(tests/admin/console_chromium.mjs, SCENARIO "link"): the link of `rtserver admin-url` logs
in, a test client's quote edit appears in the quote activity panel, a reload keeps the
session, and the same link opened in a new page shows the "already used" screen."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

import asyncpg
import pytest

from conftest import SECRET
from tests.admin.test_console_chromium import ARTIFACTS, _drive
from tests.domains.insurance.helpers import recv_until
from tests.domains.insurance.test_quotes import editor, new_quote, subscribed
from tests.store.pgutil import free_port

pytestmark = pytest.mark.timeout(240)

OPERATOR = "7b6a5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c2d"


async def test_link_logs_in_once_and_quote_activity_is_live(
        domain_server: Any, ws: Any, fresh_dsn: str) -> None:
    port = free_port()
    server = await domain_server(dsn=fresh_dsn, config={"server": {
        "port": port, "allowed_origins": [f"http://127.0.0.1:{port}"]}})
    done = subprocess.run(
        [sys.executable, "-m", "rtserver", "admin-url", "--user", OPERATOR, "--ttl", "600",
         "--base-url", f"http://127.0.0.1:{port}"],
        env={**os.environ, "RTSERVER_JWT_SECRET": SECRET}, capture_output=True, text=True,
        timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    quote = await new_quote(server)
    user = str(uuid.uuid4())
    client = await ws(server, editor(quote, user))
    await subscribed(client, quote)

    async def handle(message: dict[str, Any]) -> dict[str, Any]:
        assert message["step"] == "edit_quote", message
        await client.send({"type": "quote_edit", "quote_id": str(quote.id),
                           "field": "driver_name", "value": "Bea", "base_version": 1,
                           "id": "e1"})
        ack = await recv_until(client, "ack")
        return {"quote_id": str(quote.id), "version": ack["version"], "user": user}

    await _drive({"CONSOLE_URL": f"http://127.0.0.1:{port}", "ARTIFACTS": str(ARTIFACTS),
                  "OPERATOR_TOKEN": "unused-in-this-scenario", "SCENARIO": "link",
                  "LINK_URL": done.stdout.strip()}, handle)
    pg = await asyncpg.connect(fresh_dsn)
    try:
        links = await pg.fetch("SELECT user_id, user_agent FROM admin_login_links")
        audit = await pg.fetch("SELECT status FROM admin_activity_logs "
                               "WHERE action = 'admin_login_link' ORDER BY id")
    finally:
        await pg.close()
    assert [r["user_id"] for r in links] == [OPERATOR]
    assert "Chrome" in links[0]["user_agent"]
    assert [r["status"] for r in audit] == ["exchanged", "link_already_used"]
    for name in ("quote-activity", "link-already-used"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 0
