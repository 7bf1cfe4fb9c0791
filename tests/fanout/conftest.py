"""Fixtures for the fan-out core tests: the implementation under test and a uvloop runner."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import ModuleType

import pytest
import uvloop

from rtserver.fanout import load_fanout

IMPLS = ("python", "compiled")


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """The fan-out implementation under test (both are run)."""
    return load_fanout(request.param)


@pytest.fixture
def uvloop_runner() -> Iterator[asyncio.Runner]:
    """An asyncio runner on a uvloop loop (the loop rtserver runs on)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        yield runner
