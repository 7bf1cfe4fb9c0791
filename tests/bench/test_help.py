"""``rtserver bench --help`` groups its options and names the secret variable."""

from __future__ import annotations

import argparse

from rtserver.bench.cli import build_parser


def test_bench_help_is_grouped() -> None:
    parser = build_parser()
    text = parser.format_help()
    groups = {g.title: g for g in parser._action_groups}
    for title in ("scenario", "targets", "workload", "generator", "output"):
        assert title in groups and groups[title]._group_actions, title
    assert any(t and t.startswith("checks") for t in groups)
    # every visible option is in a named group, none left in the generic "options" list
    generic = [a.dest for a in groups["options"]._group_actions
               if a.dest != "help" and a.help != argparse.SUPPRESS]
    assert generic == [], generic
    assert "RTSERVER_JWT_SECRET" in text and "exit status" in text
