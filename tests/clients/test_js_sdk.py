"""The JavaScript SDK's own tests (``node --test`` in clients/js), run by pytest.

They spawn real rtserver processes (``python -m rtserver serve --workers 2``)
with this interpreter and this checkout on ``PYTHONPATH``. A failure shows the
node test runner's output. The browser tests drive Debian's Chromium
(``RTSERVER_CHROMIUM``, default ``/usr/bin/chromium``) with playwright-core
against a server with a private PostgreSQL database; screenshots are written
to ``clients/js/artifacts/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

JS = Path(__file__).resolve().parents[2] / "clients" / "js"
REPO = JS.parents[1]


def _node_env() -> dict[str, str]:
    env = dict(os.environ)
    env["RTSERVER_PYTHON"] = sys.executable
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.pop("RTSERVER_PORT", None)
    return env


def _require_node_modules() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed. "
                    "Required action: install nodejs (>= 20), as .ci/run does")
    if not (JS / "node_modules" / "ws").is_dir():
        pytest.fail("clients/js/node_modules is missing. "
                    "Required action: npm ci --prefix clients/js")
    return node


def _run(args: list[str], timeout: float) -> None:
    proc = subprocess.run(args, cwd=JS, env=_node_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-20000:]}"
                    f"\n--- stderr\n{proc.stderr[-5000:]}", pytrace=False)
    assert "# fail 0" in proc.stdout, proc.stdout[-5000:]


@pytest.mark.timeout(300)
def test_node_sdk_tests() -> None:
    """clients/js/test/*.test.js: real servers, fake timers, the leak test."""
    node = _require_node_modules()
    _run([node, "--expose-gc", "--test", "--test-concurrency=1", "--test-timeout=120000",
          "test/"], timeout=280)


@pytest.mark.timeout(300)
def test_examples_in_chromium() -> None:
    """clients/js/test-browser: the examples in real Chromium (two editors, notifications,
    a server restart under an open page); fails on any console error."""
    node = _require_node_modules()
    chromium = os.environ.get("RTSERVER_CHROMIUM", "/usr/bin/chromium")
    if not Path(chromium).exists():
        pytest.fail(f"{chromium} does not exist. Required action: apt-get install chromium "
                    "(as .ci/run does) or set RTSERVER_CHROMIUM")
    if shutil.which("psql") is None:
        pytest.fail("psql is not installed. Required action: install postgresql-client")
    _run([node, "--test", "--test-concurrency=1", "--test-timeout=120000", "test-browser/"],
         timeout=280)
