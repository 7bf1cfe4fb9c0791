"""Coverage-guided fuzzing of one target with atheris (optional; not run by pytest).

    pip install atheris
    PYTHONPATH=. python tests/fuzz/atheris_main.py TARGET [libFuzzer flags]
    # e.g.: ... frame_decoder -max_total_time=60 /tmp/new-corpus tests/fuzz/corpus/frame_decoder
    # (libFuzzer writes new inputs into the FIRST directory: keep it outside the repo)

TARGET is a name of ``tests.fuzz.targets.TARGETS``. Known issues are tolerated
the same way as in the hypothesis run; any other exception is a crash, written
by libFuzzer as ``crash-<sha1>``: copy it into ``tests/fuzz/corpus/TARGET/`` and
add a regression test to ``test_regressions.py``.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Run atheris on the target named by the first argument."""
    import atheris

    if len(sys.argv) < 2:
        raise SystemExit("usage: atheris_main.py TARGET [libFuzzer flags]. Required action: "
                         "name a target of tests/fuzz/targets.py")
    target = sys.argv.pop(1)
    with atheris.instrument_imports():
        import rtserver.auth
        import rtserver.bus.wire
        import rtserver.protocol.codec
        import rtserver.protocol.session
        import rtserver.store.ingress  # noqa: F401
    from tests.fuzz.targets import TARGETS, run

    if target not in TARGETS:
        raise SystemExit(f"unknown target {target!r}. Required action: use one of "
                         f"{', '.join(TARGETS)}")
    atheris.Setup(sys.argv, lambda data: run(target, data))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
