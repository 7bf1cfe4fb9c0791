"""The load harness works from a non-editable install, run from any directory.

A fresh venv gets ``pip install <copy of this checkout>`` (a real build of the Cython
extension, pip's cache reused; dependencies from the package index), then
``<venv>/bin/rtserver bench broadcast --spawn ...`` runs from another temporary
directory with no PYTHONPATH: the spawned server and generators must come from the
installed package and every report file must land in that directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Build products and caches of a working checkout: the copy is built from source only.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", "*.so", "node_modules",
    ".mypy_cache", ".ruff_cache", ".pytest_cache", "bench-reports", "_fanout.c",
    "_fanout.html", "_wsframes.c", "_wsframes.html",
)


def clean_env(home: str) -> dict[str, str]:
    """The test's environment without PYTHONPATH and without RTSERVER_* settings."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("RTSERVER_")}
    env["HOME"] = home  # pip's cache (~/.cache/pip) stays the user's
    return env


def run(argv: list[str | Path], cwd: Path, env: dict[str, str],
        timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, (
        f"{argv} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
        f"stderr:\n{proc.stderr[-3000:]}")
    return proc


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_installed_harness_runs_from_another_directory(tmp_path: Path) -> None:
    env = clean_env(os.environ.get("HOME", str(tmp_path)))
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCE)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], tmp_path, env, 120)
    py = venv / "bin" / "python"
    run([py, "-m", "pip", "install", "--quiet", src], tmp_path, env, 240)
    shutil.rmtree(src)  # nothing may still point into the source copy

    work = tmp_path / "work"
    work.mkdir()
    where = run([py, "-c", "import rtserver, rtserver._fanout, rtserver._wsframes, "
                 "rtserver.bench.peers as p; "
                 "print(rtserver.__file__); print(p.__file__)"], work, env, 60)
    site = venv / "lib"
    for line in where.stdout.split():
        assert Path(line).is_relative_to(site), where.stdout
    assert (Path(where.stdout.split()[1]).parent / "ws_peer.js").is_file()
    assert "rtserver bench" in run([py, "-m", "rtserver.bench", "--help"], work, env,
                                   60).stdout

    proc = run([venv / "bin" / "rtserver", "bench", "broadcast", "--spawn", "--workers", "2",
                "--connections", "200", "--rate", "2", "--duration", "3"], work, env, 120)
    summary = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    assert summary["ok"] is True, summary
    t = summary["targets"]["rtserver"]
    assert t["connected"] == 200 and t["connections"] == 200
    assert t["lost"] == 0 and t["duplicates"] == 0 and t["out_of_order"] == 0

    reports = work / "bench-reports"
    report = Path(summary["report"])
    assert report.parent == reports and report.is_file()
    doc = json.loads(report.read_text())
    assert doc["report_dir"] == str(reports)
    assert doc["targets"][0]["deliveries"] == 200 * doc["targets"][0]["acked"] > 0
    assert (reports / "rtserver-bench.toml").is_file()
    assert len(list(reports.glob("server-rtserver-*.log"))) == 1
    assert len(list(reports.glob("generator-rtserver-*.log"))) == 2  # receivers + publisher
    # Nothing was written next to the installed package.
    assert not list(venv.rglob("bench-reports")) and not list(venv.rglob("rtserver-bench.toml"))
