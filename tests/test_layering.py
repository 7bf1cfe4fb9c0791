"""The package's shape, enforced: layers import downward only.

Scans every module of ``rtserver/`` with ``ast`` (imports inside functions and
``if TYPE_CHECKING:`` blocks included) and fails on:

* any import cycle between rtserver modules;
* a core module (everything but the domain packages under ``rtserver.domains``,
  the CLI and the load harness ``rtserver.bench``) importing a domain package:
  the core loads domains by name from configuration (rtserver/plugin.py), never
  by import;
* ``rtserver.protocol`` importing asyncio, sockets, websockets, redis, asyncpg or
  uvloop: the protocol layer is sans-I/O;
* a module over 600 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "rtserver"
MAX_LINES = 600
# The load harness is a client tool like the CLI: it may import what it needs.
NOT_CORE = ("rtserver.domains", "rtserver.cli", "rtserver.__main__", "rtserver.bench")
IO_MODULES = {"asyncio", "socket", "websockets", "redis", "asyncpg", "uvloop", "selectors",
              "ssl"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def scan() -> dict[str, tuple[Path, set[str]]]:
    """Module -> (file, every imported module name, absolute).

    ``from package import submodule`` imports the submodule (not the package's
    other contents); ``from module import name`` imports the module.
    """
    paths = sorted(ROOT.rglob("*.py"))
    names = {module_name(p) for p in paths}
    found: dict[str, tuple[Path, set[str]]] = {}
    for path in paths:
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imports: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imports.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                subs = {f"{target}.{alias.name}" for alias in node.names}
                modules = subs & names
                imports.update(modules)
                if len(modules) < len(subs) or target not in names:
                    imports.add(target)
        found[name] = (path, imports)
    return found


def internal_graph(modules: dict[str, tuple[Path, set[str]]]) -> dict[str, set[str]]:
    """Module -> the rtserver modules it imports (a package import means its __init__)."""
    graph: dict[str, set[str]] = {}
    for name, (_, imports) in modules.items():
        graph[name] = {i for i in imports if i in modules and i != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def is_core(name: str) -> bool:
    return not any(name == p or name.startswith(p + ".") for p in NOT_CORE)


def test_no_import_cycle() -> None:
    found = cycles(internal_graph(scan()))
    assert not found, "import cycles (break them by moving code down a layer): " + "; ".join(
        " <-> ".join(c) for c in found)


def test_core_never_imports_a_domain() -> None:
    bad = sorted(f"{name} imports {imp}" for name, (_, imports) in scan().items()
                 if is_core(name) for imp in imports
                 if imp == "rtserver.domains" or imp.startswith("rtserver.domains."))
    assert not bad, "core modules importing a domain package: " + "; ".join(bad)


def test_protocol_is_sans_io() -> None:
    bad = sorted(f"{name} imports {imp}" for name, (_, imports) in scan().items()
                 if name.startswith("rtserver.protocol") for imp in imports
                 if imp.partition(".")[0] in IO_MODULES)
    assert not bad, "I/O imports in rtserver.protocol: " + "; ".join(bad)


def test_modules_are_small() -> None:
    big = sorted(f"{path.relative_to(ROOT.parent)} ({n} lines)"
                 for path, _ in scan().values()
                 if (n := len(path.read_text().splitlines())) > MAX_LINES)
    assert not big, f"modules over {MAX_LINES} lines (split by what they hold): " + "; ".join(big)


def test_the_scanner_sees_a_cycle_and_a_domain_import() -> None:
    """The checks above can fail: a made-up graph with a cycle is found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert not is_core("rtserver.domains.insurance.quotes")
    assert is_core("rtserver.server") and not is_core("rtserver.cli")
