"""The systemd recipe in deploy/: verified by systemd-analyze and consistent with the config."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import SECRET
from rtserver.config import load_config
from rtserver.supervisor import REAP_ATTEMPTS, REAP_INTERVAL

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "rtserver.service"
SHIPPED_EXEC = "/opt/rtserver/venv/bin/rtserver"


def unit_settings() -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings[key] = value
    return settings


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze missing. Required action: apt-get install systemd (.ci/run)"
    # verify also checks that ExecStart's binary exists: point it at this installation's.
    here = shutil.which("rtserver") or str(Path(sys.executable).with_name("rtserver"))
    assert Path(here).exists(), "the rtserver script is not installed: pip install -e ."
    text = UNIT.read_text()
    assert SHIPPED_EXEC in text
    unit = tmp_path / "rtserver.service"
    unit.write_text(text.replace(SHIPPED_EXEC, here))
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                         timeout=60)
    # Unknown or unparsable settings are only warnings (exit 0): none may appear.
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), (
        out.stdout + out.stderr)


def test_unit_matches_the_configuration() -> None:
    unit = unit_settings()
    shipped = load_config(env={"RTSERVER_JWT_SECRET": SECRET})
    assert unit["Restart"] == "always" and unit["KillSignal"] == "SIGTERM"
    assert unit["User"] not in ("", "root") and int(unit["LimitNOFILE"]) >= 65536
    # The supervisor drains for workers.shutdown_grace, then reaps killed workers.
    stop_budget = shipped.workers.shutdown_grace + REAP_INTERVAL * REAP_ATTEMPTS + 1.0
    assert float(unit["TimeoutStopSec"]) > stop_budget
    deployed = load_config(ROOT / "deploy" / "rtserver.toml",
                           env={"RTSERVER_JWT_SECRET": SECRET})
    assert deployed.workers.runtime_dir == "/run/" + unit["RuntimeDirectory"]
    assert "--config /etc/rtserver/rtserver.toml" in unit["ExecStart"]


def test_deploy_config_checks() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTSERVER_")}
    env["RTSERVER_JWT_SECRET"] = SECRET
    out = subprocess.run([sys.executable, "-m", "rtserver", "config", "check",
                          str(ROOT / "deploy" / "rtserver.toml")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "configuration OK" in out.stdout, out.stderr
