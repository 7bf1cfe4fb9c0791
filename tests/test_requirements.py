"""rtserver.requirements: the dependency floors and their start-up check."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest

from rtserver.requirements import FLOORS, RequirementError, check_requirements, parse_version

ROOT = Path(__file__).resolve().parents[1]


def test_installed_libraries_meet_the_floors() -> None:
    found = check_requirements()
    assert set(found) == set(FLOORS)
    for dist, version in found.items():
        assert parse_version(version) >= parse_version(FLOORS[dist].version), dist


def test_too_old_websockets_is_refused_with_the_required_version() -> None:
    def installed(dist: str) -> str:
        return "15.0.1" if dist == "websockets" else importlib.metadata.version(dist)

    with pytest.raises(RequirementError) as info:
        check_requirements(installed)
    message = str(info.value)
    assert "websockets 15.0.1 is installed" in message
    assert "websockets>=16.1" in message and "send_in_progress" in message
    assert "Required action: pip install 'websockets>=16.1'" in message


def test_missing_library_is_refused() -> None:
    def installed(dist: str) -> str:
        if dist == "redis":
            raise importlib.metadata.PackageNotFoundError(dist)
        return importlib.metadata.version(dist)

    with pytest.raises(RequirementError, match=r"redis is not installed.*redis>=5\.0\.1"):
        check_requirements(installed)


def test_parse_version() -> None:
    assert parse_version("16.1") == (16, 1)
    assert parse_version("16.1.0") == parse_version("16.1")
    assert parse_version("0.23.0") > parse_version("0.22.1")
    assert parse_version("3.10.0") > parse_version("3.7.7")
    assert parse_version("16.1rc1") == (16, 1)
    with pytest.raises(RequirementError, match="Required action"):
        parse_version("unknown")


def test_floors_match_pyproject_and_the_constraints_file() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {}
    for spec in project["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?>=([0-9.]+)", spec)
        assert match is not None, f"dependency {spec!r} has no plain >= floor"
        declared[match.group(1)] = match.group(2)
    floors = {dist: floor.version for dist, floor in FLOORS.items()}
    assert declared == floors
    pinned = {}
    for line in (ROOT / "constraints" / "floors.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            dist, _, version = line.partition("==")
            pinned[dist] = version
    assert pinned == floors
