"""The package's shape: no import cycles inside cola, no module past about 400 lines, tests that mirror it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
TESTS = Path(__file__).resolve().parent
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted((SRC / "cola").rglob("*.py")):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The cola modules `name` imports anywhere in its code (function-level imports count: deferring an import
    hides a cycle, it does not remove it), except under `if TYPE_CHECKING:`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                         for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    targets = set()
    for target in found:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target.startswith("cola") and target != name and not name.startswith(target + "."):
            targets.add(target)  # a module importing its own package's __init__ is not a cycle of design
    return targets


def import_cycles() -> list[list[str]]:
    """The strongly connected groups of cola's import graph with more than one module (Tarjan)."""
    modules = _modules()
    graph = {name: _imported(name, path, modules) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def strong(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                strong(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in graph:
        if node not in index:
            strong(node)
    return cycles


def test_no_import_cycle_inside_cola():
    assert import_cycles() == []


def test_the_cycle_finder_sees_a_planted_cycle(tmp_path, monkeypatch):
    package = tmp_path / "cola"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from cola.sub.b import thing\n")
    (package / "sub" / "b.py").write_text("def thing():\n    from cola import a\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cola import a\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    assert import_cycles() == [["cola.a", "cola.sub.b"]]


def test_no_module_is_longer_than_about_400_lines():
    lines = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in _modules().values()}
    assert {name: n for name, n in lines.items() if n > MAX_LINES} == {}


def test_tests_mirror_the_package():
    """Every test folder is a package folder of cola (tests/compress/ for cola/compress/, ...)."""
    folders = {p.relative_to(TESTS) for p in TESTS.rglob("*") if p.is_dir() and p.name != "__pycache__"}
    packages = {p.relative_to(SRC / "cola") for p in (SRC / "cola").rglob("*")
                if p.is_dir() and p.name != "__pycache__"}
    assert folders <= packages
