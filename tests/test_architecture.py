"""The library's layers stay true: imports go only downward, and no modules import each other in a circle.

Imports are read with `ast` (nothing is executed), module-level and inside functions alike. LAYERS is the
declared order, bottom first (docs/architecture.md draws it); a package's modules share its layer unless named.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parent.parent / "nextpoi_lib"

LAYERS = [
    ["nextpoi_lib", "errors", "config", "metrics", "results", "progress", "devices"],
    ["layers"],
    ["data", "embeddings", "windows", "folds"],
    ["features", "transition_embeddings", "preparation"],
    ["heads", "losses", "baselines", "trees", "blend"],
    ["training"],
    ["runfolder"],
    ["experiment"],
    ["analysis", "tuning", "mlflow_export"],
    ["notebook_parameters", "live_bars", "batch"],
    ["cli", "widgets"],
]


def module_name(path: Path, root: Path = LIBRARY) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def library_modules(root: Path = LIBRARY) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The library modules `name` imports (relative and absolute, at any depth of the file)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                # `from . import x` may name a module; `from .x import y` names module x.
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {module for module in found if module in known and module != name and not name.startswith(module + ".")}


def import_graph(root: Path = LIBRARY) -> dict[str, set[str]]:
    modules = library_modules(root)
    return {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}


def layer_of(name: str) -> int:
    """Index in LAYERS of a module: its own name, else its top-level package under nextpoi_lib."""
    parts = name.split(".")
    for candidate in (".".join(parts[1:]), parts[1] if len(parts) > 1 else "nextpoi_lib"):
        for index, layer in enumerate(LAYERS):
            if candidate in layer:
                return index
    raise KeyError(name)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
                  for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each as a sorted list."""
    index, low, stack, on_stack, groups, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_every_module_has_a_declared_layer():
    unplaced = [name for name in library_modules() if not _placed(name)]
    assert not unplaced, f"modules with no layer in LAYERS (add them, and to docs/architecture.md): {unplaced}"


def _placed(name: str) -> bool:
    try:
        layer_of(name)
    except KeyError:
        return False
    return True


def test_imports_only_go_down_the_layers():
    upward = upward_imports(import_graph())
    assert not upward, "imports that go up the layer order:\n" + "\n".join(upward)


def test_no_import_circles():
    found = circles(import_graph())
    assert not found, "modules that import each other in a circle:\n" + "\n".join(", ".join(c) for c in found)


def test_the_checks_catch_an_upward_import_and_a_circle(tmp_path):
    # A tiny library with one upward edge (config -> cli) and a circle (data <-> windows) inside a function.
    root = tmp_path / "nextpoi_lib"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "config.py").write_text("from .cli import main\n")
    (root / "cli.py").write_text("from . import config\n")
    (root / "data.py").write_text("def load():\n    from .windows import cut\n")
    (root / "windows.py").write_text("from nextpoi_lib.data import load\n")
    graph = import_graph(root)
    assert graph["nextpoi_lib.config"] == {"nextpoi_lib.cli"}
    assert upward_imports(graph) == ["nextpoi_lib.config (layer 0) imports nextpoi_lib.cli (layer 10)"]
    assert sorted(circles(graph)) == [["nextpoi_lib.cli", "nextpoi_lib.config"],
                                      ["nextpoi_lib.data", "nextpoi_lib.windows"]]


@pytest.mark.parametrize("name", ["nextpoi_lib.training.loop", "nextpoi_lib.analysis.tables"])
def test_package_modules_take_their_package_layer(name):
    assert layer_of(name) == layer_of(name.rsplit(".", 1)[0])
