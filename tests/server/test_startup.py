"""Start-up failures of the real ``python -m rtserver serve``: exit status + one clear line.

Each refusal must end with a plain ``rtserver: cannot start: ... Required action: ...``
line and a ``startup_failed`` JSON line carrying the same exit status, never a traceback.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from conftest import SECRET
from rtserver.startup import (
    EXIT_ADDRESS,
    EXIT_CONFIG,
    EXIT_DATABASE,
    EXIT_REDIS,
    EXIT_RUNTIME_DIR,
    EXIT_SCHEMA,
)
from rtserver.worker_sockets import remove_stale_runtime
from tests.store.pgutil import TempDatabase, free_port


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("RTSERVER_")}
    full["RTSERVER_JWT_SECRET"] = SECRET
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "rtserver", "serve", *args], env=full,
                          capture_output=True, text=True, timeout=60)


def assert_refused(out: subprocess.CompletedProcess[str], status: int, *needles: str) -> None:
    """Exit ``status``, no traceback, a plain last line and a matching JSON line."""
    assert out.returncode == status, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    last = lines[-1]
    assert last.startswith("rtserver: cannot start: ") and "Required action: " in last, last
    for needle in needles:
        assert needle in last, (needle, last)
    records = [orjson.loads(line) for line in lines if line.startswith("{")]
    failed = [r for r in records if r.get("event") == "startup_failed"]
    assert len(failed) == 1 and failed[0]["exit_status"] == status, records[-3:]
    assert failed[0]["action"].startswith("Required action: ")


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_port_in_use_one_worker(busy_port: int) -> None:
    out = serve("--host", "127.0.0.1", "--port", str(busy_port))
    assert_refused(out, EXIT_ADDRESS, f"127.0.0.1:{busy_port}", "--port")


def test_port_in_use_two_workers(busy_port: int) -> None:
    out = serve("--host", "127.0.0.1", "--port", str(busy_port), "--workers", "2")
    assert_refused(out, EXIT_ADDRESS, f"127.0.0.1:{busy_port}", "--port")


def test_port_held_by_reuseport_listener_refused_with_two_workers() -> None:
    # Another server's SO_REUSEPORT socket would otherwise silently share the port.
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        out = serve("--host", "127.0.0.1", "--port", str(port), "--workers", "2")
    assert_refused(out, EXIT_ADDRESS, f"127.0.0.1:{port}")


def test_invalid_config_unknown_key(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text("[server]\nbaklog = 10\n")
    out = serve("--port", "0", "--config", str(path))
    assert_refused(out, EXIT_CONFIG, "server.baklog", str(path), "did you mean server.backlog")


def test_unreadable_config(tmp_path: Path) -> None:
    out = serve("--port", "0", "--config", str(tmp_path))  # a directory
    assert_refused(out, EXIT_CONFIG, str(tmp_path), "cannot be read")


def test_missing_config_says_where_the_shipped_one_is(tmp_path: Path) -> None:
    from rtserver.config import DEFAULT_CONFIG_PATH

    out = serve("--port", "0", "--config", str(tmp_path / "nope.toml"))
    assert_refused(out, EXIT_CONFIG, "does not exist", "rtserver config init",
                   str(DEFAULT_CONFIG_PATH))


def test_unreachable_database_password_masked() -> None:
    dsn = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/nothing"
    out = serve("--port", "0", "--database", dsn)
    assert_refused(out, EXIT_DATABASE, "PostgreSQL", "postgres:***@")
    assert "hunter2" not in out.stderr


def test_unreachable_redis() -> None:
    out = serve("--port", "0", "--redis", f"redis://127.0.0.1:{free_port()}/0")
    assert_refused(out, EXIT_REDIS, "Redis", "--redis")


def test_old_schema_names_migrate() -> None:
    with TempDatabase(migrated=False) as dsn:
        out = serve("--port", "0", "--database", dsn)
    assert_refused(out, EXIT_SCHEMA, "schema is at version 0", "rtserver migrate")


def test_runtime_dir_not_usable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = tmp_path / "rt.toml"
    config.write_text(f'[workers]\nruntime_dir = "{blocker}/sub"\n')
    out = serve("--port", "0", "--workers", "2", "--config", str(config))
    assert_refused(out, EXIT_RUNTIME_DIR, f"{blocker}/sub", "workers.runtime_dir")


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_stale_runtime_dirs_removed(tmp_path: Path) -> None:
    dead, alive = _dead_pid(), os.getpid()
    stale_named = tmp_path / f"rtserver-{dead}-abc"
    stale_named.mkdir()
    stale_old = tmp_path / "rtserver-q1w2e3"
    stale_old.mkdir()
    (stale_old / f"rtserver-{dead}.sock").write_text("")
    live = tmp_path / f"rtserver-{alive}-def"
    live.mkdir()
    (live / f"rtserver-{alive}.sock").write_text("")
    unrelated = tmp_path / "rtserver-pg-xyz"  # a private PostgreSQL of the store tests
    unrelated.mkdir()
    removed = remove_stale_runtime(str(tmp_path), temporary=True)
    assert sorted(removed) == sorted([str(stale_named), str(stale_old)])
    assert live.exists() and unrelated.exists()
    assert not stale_named.exists() and not stale_old.exists()


def test_stale_scan_skips_entries_removed_while_it_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another supervisor removing its own directory mid-scan must not stop a start."""
    dead = _dead_pid()
    vanishing = tmp_path / f"rtserver-{dead}-abc"
    vanishing.mkdir()
    (vanishing / f"rtserver-{dead}.sock").write_text("")
    stale = tmp_path / f"rtserver-{dead}-def"
    stale.mkdir()
    real_scandir = os.scandir

    def scandir_then_remove(path: str) -> list[os.DirEntry[str]]:
        entries = sorted(real_scandir(path), key=lambda e: e.name)
        if path == str(tmp_path):  # the scan under test (rmtree below scans too)
            monkeypatch.setattr(os, "scandir", real_scandir)
            shutil.rmtree(vanishing)  # removed after the listing, before its entry is read
        return entries

    monkeypatch.setattr(os, "scandir", scandir_then_remove)
    removed = remove_stale_runtime(str(tmp_path), temporary=True)
    assert removed == [str(stale)]
    assert not stale.exists()


def test_stale_sockets_removed_from_configured_runtime_dir(tmp_path: Path) -> None:
    dead, alive = _dead_pid(), os.getpid()
    (tmp_path / f"rtserver-{dead}.sock").write_text("")
    (tmp_path / f"rtserver-{alive}.sock").write_text("")
    (tmp_path / "other.sock").write_text("")
    removed = remove_stale_runtime(str(tmp_path), temporary=False)
    assert removed == [str(tmp_path / f"rtserver-{dead}.sock")]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"rtserver-{alive}.sock", "other.sock"])


def migrate(dsn: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTSERVER_")}
    return subprocess.run([sys.executable, "-m", "rtserver", "migrate", "--database", dsn],
                          env=env, capture_output=True, text=True, timeout=60)


def test_migrate_names_each_migration_it_applies() -> None:
    from rtserver.store.migrations import latest_version, load_migrations

    with TempDatabase(migrated=False) as dsn:
        first = migrate(dsn)
        again = migrate(dsn)
    assert first.returncode == 0, first.stderr
    applying = [ln for ln in first.stdout.splitlines() if ln.startswith("applying migration ")]
    assert "@" in dsn and ":" not in dsn.split("//")[1].split("@")[0]  # no password to mask
    assert applying == [f"applying migration {m.version} ({m.name}) to {dsn} ..."
                        for m in load_migrations()]
    assert again.returncode == 0 and again.stdout.strip() == (
        f"nothing to do; schema is at version {latest_version()}")


def test_migrate_unreachable_database() -> None:
    out = migrate(f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")
    assert out.returncode == EXIT_DATABASE and "Traceback" not in out.stderr
    assert "Required action:" in out.stderr
