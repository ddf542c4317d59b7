"""The import structure: no cycle between the project's modules, one name for each of them.

Read from the source with ``ast`` (imports inside functions included), so a cycle dodged by an
import inside a function is found too. The folders are those pyproject.toml maps into the
installed packages.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Repository folder -> the import package it is installed as (pyproject's package-dir).
PACKAGES = {
    "proxstudy": "proxstudy",
    "study": "proxstudy.study",
    "workers": "proxstudy.workers",
    "dashboards": "proxstudy.dashboards",
    "proxprop": "proxprop",
}
#: Folder names that must never be imported as top-level packages: installed, they do not exist.
BARE = ("study", "workers", "dashboards")


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).glob("*.py")):
            out[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return out


MODULES = _modules()


def _imports(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """(imported module name, line) for every import in the file, relative ones resolved."""
    package = module if path.stem == "__init__" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            for alias in node.names:  # `from pkg import module` imports the module
                candidate = f"{name}.{alias.name}"
                yield (candidate if candidate in MODULES else name), node.lineno


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for name, _ in _imports(module, path):
            if name in MODULES and name != module:
                graph[module].add(name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_the_project_modules_are_found():
    assert {"proxstudy.errors", "proxstudy.study.records", "proxstudy.study.reader", "proxstudy.workers.config",
            "proxstudy.dashboards.data", "proxprop.modes"} <= set(MODULES)


def test_cycle_detection_works():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_the_project_modules():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (imports inside functions count too): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_project_modules_are_imported_by_their_installed_names():
    """``study``, ``workers`` and ``dashboards`` are folders of the repository, installed under
    ``proxstudy``: an import of the bare name works only from a checkout, never once installed."""
    bad = [f"{path.relative_to(REPO)}:{line}: import {name}"
           for module, path in MODULES.items()
           for name, line in _imports(module, path)
           if name.split(".")[0] in BARE]
    assert not bad, "\n".join(bad)


def test_the_error_base_and_the_vocabulary_import_nothing_of_the_project():
    for module in ("proxstudy.errors", "proxstudy.files", "proxstudy.workers.vocabulary",
                   "proxstudy.workers.datasets"):
        assert not _graph()[module], f"{module} must stay at the bottom of the import graph"


def test_the_record_schema_sits_below_storage_reading():
    graph = _graph()
    assert "proxstudy.study.records_sql" not in graph["proxstudy.study.records"]
    assert "proxstudy.study.reader" not in graph["proxstudy.study.records"]
    assert not any(name.startswith(("ray", "optuna.storages")) for name, _ in
                   _imports("proxstudy.study.records", MODULES["proxstudy.study.records"]))


def test_proxprop_imports_neither_ray_nor_optuna_nor_the_product():
    bad = [f"{module}: {name}" for module, path in MODULES.items() if module.startswith("proxprop")
           for name, _ in _imports(module, path)
           if name.split(".")[0] in ("ray", "optuna", "proxstudy")]
    assert not bad, bad


def test_no_test_module_imports_another():
    """Shared helpers live in tests/support and fixtures in conftest.py, never in a test module."""
    bad = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        for name, line in _imports(module, path):
            if name.startswith("tests.") and name.rpartition(".")[2].startswith("test_"):
                bad.append(f"{path.relative_to(REPO)}:{line}: {name}")
    assert not bad, "\n".join(bad)
