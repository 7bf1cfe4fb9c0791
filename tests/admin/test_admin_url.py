"""``rtserver admin-url``: a single-use login link, exchanged once for a session token."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import orjson

from conftest import SECRET
from tests.admin.conftest import get

OPERATOR = "6f1c2a9e-8d4b-4b0e-9a57-3f5d2c1b7e10"


def _admin_url(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RTSERVER_JWT_SECRET": SECRET}
    return subprocess.run([sys.executable, "-m", "rtserver", "admin-url", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


async def test_admin_url_logs_in(domain_server: Any) -> None:
    server = await domain_server()
    done = _admin_url("--user", OPERATOR, "--operate", "--ttl", "600",
                      "--base-url", f"http://127.0.0.1:{server.port}")
    assert done.returncode == 0, done.stderr
    url = done.stdout.strip()
    prefix = f"http://127.0.0.1:{server.port}/admin/#token="
    assert url.startswith(prefix)
    link = url[len(prefix):]
    # Single-use: the link's token is exchanged for a session token, not used as one.
    status, _, body = await get(server.port, "/admin/session", link)
    assert status == 401 and orjson.loads(body)["error"] == "token_invalid"
    status, _, body = await get(server.port, "/admin/session/exchange", link)
    assert status == 200, body
    status, _, body = await get(server.port, "/admin/session", orjson.loads(body)["token"])
    session = orjson.loads(body)
    assert status == 200 and session["user"] == OPERATOR and session["can_operate"] is True
    assert session["expires_at"] > 0
    status, _, body = await get(server.port, "/admin/session/exchange", link)
    assert status == 401 and orjson.loads(body)["error"] == "link_already_used"


async def test_admin_url_read_only_and_limits() -> None:
    done = _admin_url("--user", OPERATOR, "--ttl", "60")
    assert done.returncode == 0 and "/admin/#token=" in done.stdout
    too_long = _admin_url("--user", OPERATOR, "--ttl", "86401")
    assert too_long.returncode == 2 and "admin.link_ttl_max" in too_long.stderr
    bad_user = _admin_url("--user", "root", "--ttl", "60")
    assert bad_user.returncode == 2 and "Required action" in bad_user.stderr
