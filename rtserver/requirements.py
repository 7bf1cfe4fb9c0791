"""The oldest library versions rtserver works with, checked at server start.

:data:`FLOORS` holds, for every runtime dependency of ``pyproject.toml``, the
lowest version the whole test suite passes with (``constraints/floors.txt``
pins exactly these; CI runs the suite on them) and what sets it. pip enforces
the floors at install time; :func:`check_requirements` checks them again at
start, because rtserver reaches into websockets internals
(``Connection.send_in_progress``, ``ws.protocol``, ``ws.transport``) that an
older websockets lacks: without the check the first broadcast would crash
deep inside the fan-out core instead of refusing to start with a message
that names the required version.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import re
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["FLOORS", "Floor", "RequirementError", "check_requirements", "parse_version"]


class Floor(NamedTuple):
    """The oldest working version of one distribution and the reason for it."""

    version: str
    reason: str


FLOORS: dict[str, Floor] = {
    "websockets": Floor(
        "16.1",
        "16.0 added Connection.send_in_progress (the fan-out core skips a connection while a "
        "fragmented send is in progress) and Server.close(code=, reason=) (shutdown close "
        "code); 16.1 added broadcast(text=) (rtserver/bench/fanout_micro.py)"),
    "uvloop": Floor(
        "0.23.0",
        "before 0.23 a write to a reset socket does not mark the transport closing at once, "
        "so the fan-out core keeps writing to a dead peer (tests/fanout/test_delivery.py)"),
    "orjson": Floor("3.7.7", "oldest release with a CPython 3.11 wheel"),
    "msgspec": Floor("0.16.0", "msgspec.convert(strict=False) loads the configuration"),
    "redis": Floor("5.0.1", "Redis.aclose() (5.0.1) and protocol=2 (5.0)"),
    "asyncpg": Floor("0.27.0", "oldest release with a CPython 3.11 wheel"),
    "PyJWT": Floor("2.0.0", "jwt.decode(algorithms=, options={'require': [...]}) of PyJWT 2"),
}
"""Distribution name -> oldest working version (keep equal to pyproject.toml)."""

_RELEASE = re.compile(r"^\s*v?(\d+(?:\.\d+)*)")


class RequirementError(RuntimeError):
    """An installed library is missing, too old, or lacks an API rtserver uses."""


def parse_version(text: str) -> tuple[int, ...]:
    """The numeric release part of a version string (``"16.1rc1"`` -> ``(16, 1)``)."""
    match = _RELEASE.match(text)
    if match is None:
        raise RequirementError(
            f"cannot read the version {text!r}. Required action: reinstall the package "
            "from PyPI so that it reports a PEP 440 version")
    parts = [int(p) for p in match.group(1).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def _check_websockets_api() -> None:
    # The version says the attributes exist; these signatures are the APIs
    # whose absence would only show at shutdown or in a benchmark.
    from websockets.asyncio.server import Server, broadcast

    close = inspect.signature(Server.close).parameters
    if "code" not in close or "reason" not in close:
        raise RequirementError(
            "websockets.asyncio.server.Server.close() takes no code/reason. "
            f"Required action: pip install 'websockets>={FLOORS['websockets'].version}'")
    if "text" not in inspect.signature(broadcast).parameters:
        raise RequirementError(
            "websockets.asyncio.server.broadcast() takes no text argument. "
            f"Required action: pip install 'websockets>={FLOORS['websockets'].version}'")


def check_requirements(
    installed: Callable[[str], str] = importlib.metadata.version,
) -> dict[str, str]:
    """Check every entry of :data:`FLOORS`; return ``{distribution: installed version}``.

    Raises :class:`RequirementError` naming the distribution, the installed
    and the required version and the reason, for the first library that is
    missing or older than its floor. ``installed`` returns the installed
    version of a distribution (tests pass their own).
    """
    found: dict[str, str] = {}
    for dist, floor in FLOORS.items():
        try:
            version = installed(dist)
        except importlib.metadata.PackageNotFoundError as exc:
            raise RequirementError(
                f"{dist} is not installed; rtserver needs {dist}>={floor.version} "
                f"({floor.reason}). Required action: pip install '{dist}>={floor.version}'"
            ) from exc
        if parse_version(version) < parse_version(floor.version):
            raise RequirementError(
                f"{dist} {version} is installed; rtserver needs {dist}>={floor.version} "
                f"({floor.reason}). Required action: pip install '{dist}>={floor.version}'")
        found[dist] = version
    _check_websockets_api()
    return found
