"""The package's shape, read from its source: no import cycles, no private names across modules,
and the torch-free modules stay torch-free (DESIGN.md, "the house after consolidation").

Imports are read with :mod:`ast`, so every import counts -- at module level and inside
functions alike (a lazy import still ties two modules together). ``from a import b`` is an
edge to ``a.b`` when that is a module of the package, else to ``a``. Importing a module does not
add an edge to its parent packages (every ``fusioncli.models.*`` import would otherwise loop
through ``fusioncli/models/__init__.py``). A cycle not yet fixed is listed, with its reason, in
:data:`KNOWN_CYCLES`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import fusioncli

PACKAGE = "fusioncli"
ROOT = Path(fusioncli.__file__).resolve().parent
# DESIGN.md: these never import torch at module level (a `--help` or a `report` starts fast).
TORCH_FREE = ("fusioncli.cli", "fusioncli.config", "fusioncli.record", "fusioncli.results")
# Cycles that are known and not yet fixed, each with the reason. Any other cycle fails the test,
# and so does a listed one that is gone (delete its entry then): the list cannot go stale.
KNOWN_CYCLES: dict[frozenset[str], str] = {
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    """Every module of the package by dotted name (packages by their ``__init__``)."""
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


MODULES = package_modules()


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


@dataclass
class ModuleImports:
    """What one module imports (edges to package modules) and which private names it takes."""

    name: str
    is_package: bool
    edges: dict[str, int] = field(default_factory=dict)  # imported module -> first line
    private_uses: list[str] = field(default_factory=list)  # "line N: what"

    def add_edge(self, target: str, line: int) -> None:
        if target != self.name:
            self.edges.setdefault(target, line)


def _absolute(module: ModuleImports, node: ast.ImportFrom) -> str:
    """The absolute module name of a ``from ... import`` (relative levels resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.name.split(".")
    # A package's own name is its first level; a module's first level is its package.
    base = base if module.is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _owning_module(name: str) -> str | None:
    """The longest prefix of ``name`` that is a module of the package."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            return candidate
    return None


def _private_module_allowed(importer: str, target: str) -> bool:
    """``_``-modules (``cli/_common.py``) are shared by the modules of their own package only."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if _is_private(part):
            package = ".".join(parts[:i])
            if not (importer == package or importer.startswith(package + ".")):
                return False
    return True


def read_imports(name: str, path: Path) -> ModuleImports:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = ModuleImports(name, path.name == "__init__.py")
    # Local names bound to package modules (``import a.b as c``, ``from a import b``), for
    # ``c._private`` attribute uses. Scopes are flattened: a name is rarely rebound.
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _owning_module(alias.name)
                if target is None:
                    continue
                found.add_edge(target, node.lineno)
                if not _private_module_allowed(name, target):
                    found.private_uses.append(f"line {node.lineno}: import {alias.name}")
                if alias.asname:
                    bound[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    bound[top] = top
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(found, node)
            if _owning_module(source) is None:
                continue
            for alias in node.names:
                full = f"{source}.{alias.name}"
                target = full if full in MODULES else _owning_module(source)
                assert target is not None
                found.add_edge(target, node.lineno)
                if full in MODULES:
                    bound[alias.asname or alias.name] = full
                    if not _private_module_allowed(name, full):
                        found.private_uses.append(f"line {node.lineno}: from {source} import {alias.name}")
                elif _is_private(alias.name) and target != name:
                    found.private_uses.append(f"line {node.lineno}: from {source} import {alias.name}")
                elif not _private_module_allowed(name, target):
                    found.private_uses.append(f"line {node.lineno}: from {source} import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            owner = _dotted(node.value, bound)
            if owner is not None and owner in MODULES and owner != name:
                found.private_uses.append(f"line {node.lineno}: {owner}.{node.attr}")
    return found


def _dotted(node: ast.expr, bound: dict[str, str]) -> str | None:
    """The module an expression such as ``loop`` or ``fusioncli.train.loop`` names, if any."""
    if isinstance(node, ast.Name):
        return bound.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _dotted(node.value, bound)
        if owner is not None and f"{owner}.{node.attr}" in MODULES:
            return f"{owner}.{node.attr}"
    return None


def import_graph() -> dict[str, ModuleImports]:
    return {name: read_imports(name, path) for name, path in MODULES.items()}


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_a_cycle(graph, set(c)) for c in components]


def _a_cycle(graph: dict[str, dict[str, int]], component: set[str]) -> list[str]:
    """A concrete cycle through the component's first module (breadth first: a shortest one)."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph.get(v, {})):
            if w == start:
                return paths[v] + [start]
            if w in component and w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    raise AssertionError(f"no cycle found in component {sorted(component)}")


def _describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    steps = [f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(steps + [cycle[-1]])


# --------------------------------------------------------------------------- the checker itself


def _graph_of(edges: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    return {a: {b: 1 for b in bs} for a, bs in edges.items()}


def test_find_cycles_names_each_cycle_once() -> None:
    graph = _graph_of({"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": [], "e": ["e2"], "e2": ["e"]})
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["e", "e2", "e"]]
    assert find_cycles(_graph_of({"a": ["b"], "b": ["c"], "c": []})) == []


def test_reader_sees_function_level_imports_submodules_and_private_attributes(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text(
        "from fusioncli.train import loop as L\n"
        "from fusioncli.errors import BadInputError\n"
        "def f():\n"
        "    from fusioncli.eval.robustness import _ratio\n"
        "    import fusioncli.train.loop\n"
        "    return L._evaluate, fusioncli.train.loop._private, L.train_run\n"
    )
    found = read_imports("fusioncli.probe", source)
    assert set(found.edges) == {"fusioncli.train.loop", "fusioncli.errors", "fusioncli.eval.robustness"}
    assert found.private_uses == [
        "line 4: from fusioncli.eval.robustness import _ratio",
        "line 6: fusioncli.train.loop._evaluate",
        "line 6: fusioncli.train.loop._private",
    ]


# --------------------------------------------------------------------------- the package


def test_no_import_cycles() -> None:
    graph = {name: found.edges for name, found in import_graph().items()}
    cycles = find_cycles(graph)
    new = [_describe(c, graph) for c in cycles if frozenset(c) not in KNOWN_CYCLES]
    assert not new, "import cycles among fusioncli modules:\n" + "\n".join(new)
    gone = set(KNOWN_CYCLES) - {frozenset(c) for c in cycles}
    assert not gone, f"no longer cycles, delete them from KNOWN_CYCLES: {[sorted(c) for c in gone]}"


def test_no_module_uses_another_modules_private_names() -> None:
    uses = [f"{found.name}: {use}" for found in import_graph().values() for use in found.private_uses]
    assert not uses, "private names used across modules:\n" + "\n".join(uses)


def torch_free_modules() -> Iterator[str]:
    for name in MODULES:
        if any(name == prefix or name.startswith(prefix + ".") for prefix in TORCH_FREE):
            yield name


def test_torch_free_modules_do_not_import_torch() -> None:
    names = sorted(torch_free_modules())
    assert {"fusioncli.cli.train", "fusioncli.config", "fusioncli.results.store"} <= set(names)
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "    if 'torch' in sys.modules:\n"
        "        sys.exit(f'importing {name} imported torch')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr.strip() or done.stdout.strip()
