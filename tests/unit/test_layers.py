"""The import graph of pgqueue/ (an ast walk, module-level imports only): no cycles, no
import of the repository's example ``handlers``, and no foundation module that reaches the
worker or the CLI.

Imports inside functions are left out on purpose: they are how optional extras and the
entry points load late (``_cli_common.database`` starts ``_embedded`` only without a DSN).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "pgqueue"

# Not foundations: the public surface, the wings and what sits on top of them.
TOP = ("pgqueue", "pgqueue.testing", "pgqueue.admin", "pgqueue._inprocess")
WINGS = ("pgqueue._worker", "pgqueue._cli", "pgqueue._dashboard", "pgqueue._relay")


TREES = {path: ast.parse(path.read_text()) for path in PACKAGE.rglob("*.py")}


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    """Module -> the pgqueue modules it imports at module level (TYPE_CHECKING left out)."""
    found: dict[str, set[str]] = {}
    everything: dict[str, set[str]] = {}
    for path, tree in TREES.items():
        name = _name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - max(node.level - 1, 0)]
                module = ".".join([*base, node.module or ""] if node.level else [node.module or ""])
                module = module.strip(".")
                targets.add(module)
                targets.update(f"{module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        everything[name] = targets
    for name, targets in everything.items():
        found[name] = {t for t in targets if t in everything and t != name}
    return found


GRAPH = _graph()


def _in(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") or name.startswith(p + "_") for p in prefixes)


@cache
def _reach(start: str) -> frozenset[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in GRAPH[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return frozenset(seen)


def test_the_graph_is_read() -> None:
    assert "pgqueue._settings" in GRAPH["pgqueue._api"]
    assert len(GRAPH) > 40


def test_no_module_imports_the_example_handlers() -> None:
    for path, tree in TREES.items():
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            assert not [n for n in names if n.split(".")[0] == "handlers"], path


def test_there_is_no_import_cycle() -> None:
    # A package's __init__ importing its own submodules is not a cycle of ours.
    for name in GRAPH:
        back = {m for m in _reach(name) if name in GRAPH[m]} if name in _reach(name) else set()
        inner = {m for m in back if not m.startswith(name + ".")}
        assert not inner, f"{name} is imported back by {sorted(inner)}"


def test_foundations_never_reach_the_worker_or_the_cli() -> None:
    foundations = [n for n in GRAPH if not _in(n, WINGS) and n not in TOP]
    assert "pgqueue._settings" in foundations and "pgqueue._queries.core" in foundations
    for name in foundations:
        upward = {m for m in _reach(name) if _in(m, ("pgqueue._worker", "pgqueue._cli"))}
        assert not upward, f"{name} imports {sorted(upward)}"


def test_the_dashboard_never_reaches_the_cli() -> None:
    # What both show (ages) and both parse (time bounds, id ranges) lives in pgqueue._parse.
    dashboard = [n for n in GRAPH if _in(n, ("pgqueue._dashboard",))]
    assert "pgqueue._dashboard._actions" in dashboard
    for name in dashboard:
        upward = {m for m in _reach(name) if _in(m, ("pgqueue._cli",))}
        assert not upward, f"{name} imports {sorted(upward)}"
