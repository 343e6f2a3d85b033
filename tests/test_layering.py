"""The imports follow the layout: arrows point down, none loops, no package imports
`orchestration`, and no first-party module is imported by name at run time (importlib)."""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import click

from core.versioning import FIRST_PARTY, imported_modules, module_file, module_name
from orchestration.cli.main import COMMANDS, main
from tests.conftest import REPO

# What each package may import of the others (docs/layout.md).
ALLOWED = {
    "core": set(),
    "perception": {"core"},
    "assets": {"core", "perception"},
    "training": {"core", "perception"},
    "serving": {"core", "perception", "training"},
    "orchestration": {"core", "perception", "assets", "training", "serving"},
}
MAX_LINES = 500  # longer modules say why in their docstring
SOURCE_PACKAGES = (*FIRST_PARTY, "bench")
LAZY_COMMANDS = REPO / "orchestration" / "cli" / "main.py"  # COMMANDS: module names


def first_party_imports(path) -> set[str]:
    """Top-level first-party packages a module imports, at module level or inside functions."""
    return {module.split(".")[0] for module in imported_modules(path, REPO)}


def test_imports_point_down_the_layout():
    assert set(ALLOWED) == set(FIRST_PARTY)
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((REPO / package).rglob("*.py")):
            for imported in first_party_imports(path) - allowed - {package}:
                wrong.append(f"{path.relative_to(REPO)} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_no_first_party_module_is_imported_by_name():
    """Code versions and DVC deps follow import statements. The one exception: the `cameo`
    group imports each command's module by name when the command runs, and
    tests/test_dvc_deps.py counts that module as an entry of what the command runs."""
    for package in ALLOWED:
        for path in sorted((REPO / package).rglob("*.py")):
            if path != LAZY_COMMANDS:
                assert "import_module(" not in path.read_text(), path
    group = click.Context(main)
    for name, target in COMMANDS.items():
        assert module_file(target.partition(":")[0], REPO), target
        assert main.get_command(group, name).name == name, target


def test_modules_stay_readable_in_length():
    for package in [*ALLOWED, "bench"]:
        for path in sorted((REPO / package).rglob("*.py")):
            lines = path.read_text().count("\n")
            reason = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert lines <= MAX_LINES or "longer than" in reason, (path, lines)


def imported_sources(path: Path) -> set[str]:
    """The modules of the first-party packages and of bench/ that a source file imports, at
    module level, inside functions or for annotations only: `from a import b` names a.b where
    b is a module, else a. Unlike `imported_modules`, without the packages above each (a
    package's __init__ importing its own modules is no circle), and with bench/."""
    name = module_name(path, REPO)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            above = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*above, node.module] if node.level else [node.module])
            found |= {
                f"{base}.{alias.name}" if module_file(f"{base}.{alias.name}", REPO) else base
                for alias in node.names
            }
    return {m for m in found if m.split(".")[0] in SOURCE_PACKAGES and m != name}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle through each group of modules that import each other, directly or
    not, starting at the group's first module in sorted order."""
    cycles, placed = [], set()
    for start in sorted(graph):
        if start in placed or start not in reachable(graph, start):
            continue
        placed |= {m for m in reachable(graph, start) if start in reachable(graph, m)}
        cycles.append(shortest_cycle(graph, start))
    return cycles


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """The modules `start` imports, directly or not."""
    seen, pending = set(), [start]
    while pending:
        for imported in graph.get(pending.pop(), ()):
            if imported not in seen:
                seen.add(imported)
                pending.append(imported)
    return seen


def shortest_cycle(graph: dict[str, set[str]], start: str) -> list[str]:
    """The modules of a shortest import path from `start` back to itself (breadth first)."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while start not in came_from:
        module = queue.popleft()
        for imported in sorted(graph.get(module, ())):
            if imported not in came_from:
                came_from[imported] = module
                queue.append(imported)
    path = [came_from[start]]
    while path[-1] != start:
        path.append(came_from[path[-1]])
    return [start, *reversed(path[:-1])]


def test_import_cycles_are_found_and_named():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": {"e"}}
    assert import_cycles(graph) == [["a", "b", "c"], ["e", "e2"]]


def test_no_module_imports_itself_through_others():
    """No import circle between modules, through imports inside functions or for annotations
    too: what two modules share has one home, which both import."""
    graph = {
        module_name(path, REPO): imported_sources(path)
        for package in SOURCE_PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
    }
    cycles = import_cycles(graph)
    assert not cycles, "import circles:\n" + "\n".join(
        " -> ".join([*cycle, cycle[0]]) for cycle in cycles
    )
