"""Configuration layering (shipped < file < env < flags), config show/init/check, --version."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SECRET, ServerProcess
from rtserver.config import (
    DEFAULT_CONFIG_PATH,
    SHIPPED,
    ConfigError,
    load_config,
    load_layers,
    mask_value,
    masked,
)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("RTSERVER_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "rtserver", *args], env=full,
                          capture_output=True, text=True, timeout=60)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mine.toml"
    path.write_text(text)
    return path


def test_layers_file_env_flag_and_sources(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9001\nbacklog = 77\n[heartbeat]\ninterval = 5.0\n")
    env = {"RTSERVER_JWT_SECRET": SECRET, "RTSERVER_PORT": "9002", "RTSERVER_LOG_LEVEL": "debug"}
    loaded = load_layers(path, env=env, flags={"log_level": "error", "workers": None})
    c = loaded.config
    assert (c.server.port, c.server.backlog, c.heartbeat.interval) == (9002, 77, 5.0)
    assert c.server.log_level == "error"
    shipped = load_config(env={"RTSERVER_JWT_SECRET": SECRET})
    assert c.limits == shipped.limits and c.namespaces == shipped.namespaces
    s = loaded.sources
    assert s["server.port"] == "env RTSERVER_PORT"
    assert s["server.backlog"] == f"file {path}"
    assert s["server.log_level"] == "flag --log-level"
    assert s["limits.max_subscriptions"] == SHIPPED
    assert set(loaded.overrides()) == {"server.port", "server.backlog", "heartbeat.interval",
                                       "server.log_level", "auth.jwt_secret"}


def test_unknown_key_did_you_mean_names_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[heartbeat]\nidle_timout = 90.0\n")
    with pytest.raises(ConfigError, match=r"heartbeat\.idle_timout.*mine\.toml.*did you mean "
                       r"heartbeat\.idle_timeout"):
        load_config(path, env={"RTSERVER_JWT_SECRET": SECRET})


def test_key_in_wrong_section_points_to_right_one(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nredis_url = \"redis://127.0.0.1:6379/0\"\n")
    with pytest.raises(ConfigError, match=r"did you mean bus\.redis_url"):
        load_config(path, env={"RTSERVER_JWT_SECRET": SECRET})


def test_unknown_section_and_wrong_type_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key sever .*did you mean server"):
        load_config(write(tmp_path, "[sever]\nport = 1\n"), env={"RTSERVER_JWT_SECRET": SECRET})
    with pytest.raises(ConfigError, match=r"file .*mine\.toml.*server\.port"):
        load_config(write(tmp_path, "[server]\nport = \"x\"\n"),
                    env={"RTSERVER_JWT_SECRET": SECRET})


def test_namespaces_added_and_partly_overridden(tmp_path: Path) -> None:
    path = write(tmp_path, """
[namespaces.quote]
room_events = false
[namespaces.quote.publish]
access = "deny"
[namespaces.team]
subscribe = { permissions = [], access = "grant" }
publish = { permissions = ["publish"], access = "grant" }
room_events = true
presence = false
[domain.editable_fields]
notes = "string"
""")
    c = load_config(path, env={"RTSERVER_JWT_SECRET": SECRET})
    quote = c.namespaces["quote"]
    assert not quote.room_events and quote.publish.access == "deny"
    assert quote.publish.permissions == ["quote:write"] and quote.presence
    assert c.namespaces["team"].publish.permissions == ["publish"]
    assert dict(c.domain.editable_fields) == {"notes": "string"}  # a map is replaced whole
    bad = write(tmp_path, "[namespaces.team]\nsubscibe = { permissions = [], access = 'grant' }\n")
    with pytest.raises(ConfigError, match=r"namespaces\.team\.subscibe.*did you mean"):
        load_config(bad, env={"RTSERVER_JWT_SECRET": SECRET})


@pytest.mark.parametrize(("key", "value", "shown"), [
    ("auth.jwt_secret", SECRET, "***"),
    ("auth.jwt_secret", "", ""),
    ("database.dsn", "postgresql://app:s3cret@db:5432/rt", "postgresql://app:***@db:5432/rt"),
    ("database.dsn", "postgresql://app@db/rt?password=s3cret&sslmode=require",
     "postgresql://app@db/rt?password=***&sslmode=require"),
    ("bus.redis_url", "redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
    ("bus.redis_url", "redis://cache:6379/0", "redis://cache:6379/0"),
    ("server.host", "0.0.0.0", "0.0.0.0"),
])
def test_mask_value(key: str, value: str, shown: str) -> None:
    assert mask_value(key, value) == shown


def test_masked_config_uses_mask_value() -> None:
    c = load_config(env={"RTSERVER_JWT_SECRET": SECRET,
                         "RTSERVER_DATABASE": "postgresql://u:pw1234@h/db",
                         "RTSERVER_REDIS": "redis://:pw5678@h:6379/0"})
    data = masked(c)
    assert data["auth"]["jwt_secret"] == "***"
    assert data["database"]["dsn"] == "postgresql://u:***@h/db"
    assert data["bus"]["redis_url"] == "redis://:***@h:6379/0"


def test_config_show_sources_and_masking(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nbacklog = 99\n[database]\ndsn = "postgresql://u:pw99@h/d"\n')
    out = run_cli("config", "show", "--config", str(path), "--port", "9100",
                  env={"RTSERVER_JWT_SECRET": SECRET, "RTSERVER_LOG_LEVEL": "warning"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert f"server.backlog = 99  # file {path}" in lines
    assert "server.port = 9100  # flag --port" in lines
    assert 'server.log_level = "warning"  # env RTSERVER_LOG_LEVEL' in lines
    assert 'auth.jwt_secret = "***"  # env RTSERVER_JWT_SECRET' in lines
    assert f'database.dsn = "postgresql://u:***@h/d"  # file {path}' in lines
    assert "limits.max_subscriptions = 200  # shipped" in lines
    assert SECRET not in out.stdout and "pw99" not in out.stdout


def test_config_show_prints_then_reports_invalid() -> None:
    out = run_cli("config", "show")  # no JWT secret: printable, but would not start
    assert out.returncode == 2
    assert "server.port = 8765  # shipped" in out.stdout.splitlines()
    assert "RTSERVER_JWT_SECRET" in out.stderr


def test_config_init_then_check(tmp_path: Path) -> None:
    target = tmp_path / "rtserver.toml"
    out = run_cli("config", "init", str(target))
    assert out.returncode == 0, out.stderr
    assert target.read_text() == DEFAULT_CONFIG_PATH.read_text()
    again = run_cli("config", "init", str(target))
    assert again.returncode == 2 and "--force" in again.stderr
    ok = run_cli("config", "check", str(target), env={"RTSERVER_JWT_SECRET": SECRET})
    assert ok.returncode == 0 and "configuration OK" in ok.stdout, ok.stderr
    target.write_text(target.read_text().replace("idle_timeout = 60.0", "idle_timeout = 1.0"))
    bad = run_cli("config", "check", str(target), env={"RTSERVER_JWT_SECRET": SECRET})
    assert bad.returncode == 2 and "heartbeat.idle_timeout" in bad.stderr


def test_startup_config_line_records_sources(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nmax_subscriptions = 7\n")
    proc = ServerProcess(["--config", str(path)], env={"RTSERVER_LOG_LEVEL": "info"})
    try:
        proc.wait_listening()
        (line,) = proc.events("config")
        assert line["sources"]["limits.max_subscriptions"] == f"file {path}"
        assert line["sources"]["server.port"] == "env RTSERVER_PORT"
        assert line["sources"]["auth.jwt_secret"] == "env RTSERVER_JWT_SECRET"
        assert line["effective"]["auth"]["jwt_secret"] == "***"
        assert line["effective"]["limits"]["max_subscriptions"] == 7
    finally:
        proc.stop()


def test_version() -> None:
    import uvloop
    import websockets

    out = run_cli("--version")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("rtserver ") and lines[1].startswith("Python 3.")
    assert f"websockets {websockets.version.version}" in lines
    assert any(line.startswith("uvloop ") and line.split()[1] in uvloop.__version__
               for line in lines)
    assert lines[-1].startswith("fan-out core: compiled, loaded from ")
    assert run_cli("version").stdout == out.stdout


def test_help_explains_itself() -> None:
    top = run_cli("--help")
    assert top.returncode == 0
    assert "Parsing and calling only" not in top.stdout and "``" not in top.stdout
    assert str(DEFAULT_CONFIG_PATH) in top.stdout and "RTSERVER_JWT_SECRET" in top.stdout
    serve = run_cli("serve", "--help").stdout
    for needle in ("RTSERVER_JWT_SECRET", "default 8765", str(DEFAULT_CONFIG_PATH),
                   "RTSERVER_PORT", "RTSERVER_CONFIG", "exit status"):
        assert needle in serve, needle
    token = run_cli("token", "--help").stdout
    assert "RTSERVER_JWT_SECRET" in token and str(DEFAULT_CONFIG_PATH) in token
