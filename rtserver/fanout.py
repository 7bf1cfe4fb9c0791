"""Selection of the fan-out core: compiled (:mod:`rtserver._fanout`) or the Python reference.

There is no silent fallback: the compiled core is the default and a server
that cannot import it refuses to start (:class:`FanoutUnavailable` says how to
build it). The Python reference is used only when asked for explicitly.
"""

from __future__ import annotations

from types import ModuleType
from typing import Literal

__all__ = ["BUILD_HINT", "FanoutKind", "FanoutUnavailable", "load_fanout"]

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
