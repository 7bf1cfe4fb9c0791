"""Selection of the compiled cores or the Python reference (``fanout.implementation``).

``compiled`` (the default): the fan-out core :mod:`rtserver._fanout` and the frame
protocol of an open connection :mod:`rtserver._wsframes`; ``python``: the reference
fan-out :mod:`rtserver.fanout_reference` and websockets' own ``ServerProtocol`` for
every connection. There is no silent fallback: a server that cannot import a compiled
core refuses to start (:class:`FanoutUnavailable` says how to build it). The Python
reference is used only when asked for explicitly.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Literal

__all__ = ["BUILD_HINT", "FanoutKind", "FanoutUnavailable", "load_fanout", "load_frames"]

FanoutKind = Literal["compiled", "python"]

BUILD_HINT = (
    "Required action: build the extension with `pip install .` (or "
    "`python setup.py build_ext --inplace` in a checkout), or select the Python "
    "reference explicitly with `--fanout python` / RTSERVER_FANOUT=python."
)


class FanoutUnavailable(RuntimeError):
    """The compiled fan-out core cannot be imported."""


def load_fanout(kind: FanoutKind) -> ModuleType:
    """Return the module implementing ``Fanout``, ``Sink`` and ``frame_text``."""
    if kind == "python":
        from rtserver import fanout_reference

        return fanout_reference
    try:
        from rtserver import _fanout  # type: ignore[attr-defined, unused-ignore]
    except ImportError as exc:
        raise FanoutUnavailable(
            f"the compiled fan-out core rtserver._fanout cannot be imported ({exc}). {BUILD_HINT}"
        ) from exc
    return _fanout  # type: ignore[no-any-return, unused-ignore]


def load_frames(kind: FanoutKind) -> type[Any] | None:
    """The frame protocol class of an open connection (``compiled``), or None: websockets'
    ``ServerProtocol`` for every connection (``python``)."""
    if kind == "python":
        return None
    try:
        from rtserver._wsframes import FrameProtocol  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        raise FanoutUnavailable(
            f"the compiled frame protocol rtserver._wsframes cannot be imported ({exc}). "
            f"{BUILD_HINT}") from exc
    return FrameProtocol  # type: ignore[no-any-return, unused-ignore]
