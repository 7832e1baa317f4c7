"""Imports run one way: volumes <- models <- workers <- service, and never in a circle inside a package.

Modules are found by walking the packages, not listed by hand. Two checks:

- each module, imported in a fresh interpreter, brings along nothing its package may not depend on
  (``service`` never imports torch; ``volumes`` never imports torch, Dask or the packages above it);
- the imports written in the source (at module level and inside functions, ``TYPE_CHECKING`` blocks
  aside) form no cycle between modules of one package, and never point up the ladder.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LADDER = ("volumes", "models", "workers", "service")
FORBIDDEN = {
    "volumes": ["torch", "models", "workers", "service", "distributed", "fastapi"],
    "models": ["workers", "service", "distributed", "fastapi"],
    "workers": ["service", "fastapi"],
    "service": ["torch"],
}
# What the control plane takes from the engines must not bring torch along either.
TORCH_FREE = [
    "models.ref",
    "models.checkpoint_keys",
    "models.training_config",
    "workers.inference.job",
    "workers.inference.tasks",
    "workers.inference.checks",
    "workers.training.job",
    "workers.training.checkpoint_dir",
    "workers.training.tasks",
    "workers.training.checks",
    "workers.runtime.state",
]


def module_files(package: str) -> dict[str, Path]:
    """Every module of ``package`` by dotted name (``__init__`` files name their package)."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def test_every_package_has_modules() -> None:
    for package in LADDER:
        assert len(module_files(package)) > 3, package


@pytest.mark.parametrize("package", LADDER)
def test_package_imports_nothing_forbidden(package: str) -> None:
    names = sorted(n for n in module_files(package) if not n.endswith("__main__"))
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = [m for m in {FORBIDDEN[package]!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"{package} imported {result.stdout.strip()}"


def test_what_the_control_plane_takes_from_the_engines_imports_no_torch() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {TORCH_FREE!r}:\n"
        "    importlib.import_module(name)\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def _type_checking_block(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, ast.Name | ast.Attribute) and ast.unparse(test).endswith("TYPE_CHECKING")


def imported_modules(path: Path, name: str, known: set[str]) -> Iterator[str]:
    """The modules of ``known`` that ``path`` (module ``name``) imports, wherever in its source."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if _type_checking_block(node):
            stack.extend(node.orelse)  # type: ignore[attr-defined]
            continue
        stack.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    [*package.split(".")[: len(package.split(".")) - node.level + 1], base]
                ).strip(".")
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def import_graph() -> dict[str, set[str]]:
    modules = {n: p for package in LADDER for n, p in module_files(package).items()}
    return {n: set(imported_modules(p, n, set(modules))) for n, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _is_package_init_of(importer: str, imported: str) -> bool:
    # ``from workers.inference import readahead`` names the package, then its module; a package's
    # own ``__init__`` is the module's parent, not a dependency in the import-cycle sense.
    return importer.startswith(imported + ".")


def test_no_import_cycle_inside_any_package() -> None:
    graph = {n: {m for m in deps if not _is_package_init_of(n, m)} for n, deps in import_graph().items()}
    assert cycles(graph) == []


def test_imports_never_point_up_the_ladder() -> None:
    upward = []
    for name, deps in import_graph().items():
        rank = LADDER.index(name.split(".")[0])
        upward += [f"{name} -> {d}" for d in deps if LADDER.index(d.split(".")[0]) > rank]
    assert upward == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}, "a.w": {"a.x"}}) == [["a.x", "a.y", "a.z"]]
    assert cycles({"a.x": {"a.y"}, "a.y": set()}) == []
