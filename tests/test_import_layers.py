"""The import graph of src/: every import points down the layers, and no modules import each
other in a circle (docs/ARCHITECTURE.md, "Layers"). Read from the source with ``ast``, so imports
inside functions and under ``TYPE_CHECKING`` count too."""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
# bottom to top: a package may import only from packages listed before it (and from itself)
LAYERS = ("errors", "utils", "visualization", "models", "data", "engine", "memory", "distillation",
          "config", "rundirs", "deploy", "evidence", "pipeline", "cli")
# The guards' import surface (the names users import) re-exports seven guards from their homes in
# the layers above utils; nothing in src imports it, so it is a facade on top of the graph that
# happens to live in utils/.
FACADES = {"src.utils.training_guards"}


def _module(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the src modules it imports (``from src.x import y`` names module ``src.x``)."""
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "src":
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names if a.name.split(".")[0] == "src")
        graph[_module(path)] = imported
    return graph


def layer(module: str) -> int:
    parts = module.split(".")
    return -1 if len(parts) == 1 else LAYERS.index(parts[1])  # src/__init__: the package itself


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{source} -> {target}" for source, targets in graph.items() if source not in FACADES
                  for target in targets if layer(target) > layer(source))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> Iterator[None]:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                yield from visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = stack[stack.index(node):]
            del stack[stack.index(node):]
            if len(component) > 1:
                found.append(sorted(component))
        yield

    for node in graph:
        if node not in index:
            list(visit(node))
    return found


def test_every_package_is_in_a_layer() -> None:
    packages = {_module(path).split(".")[1] for path in SRC.rglob("*.py") if path.parent != SRC}
    packages |= {path.stem for path in SRC.glob("*.py") if path.stem != "__init__"}
    assert packages <= set(LAYERS), f"add {sorted(packages - set(LAYERS))} to LAYERS and the docs"


def test_imports_point_down() -> None:
    assert upward_imports(import_graph()) == []


def test_no_modules_import_each_other_in_a_circle() -> None:
    assert cycles(import_graph()) == []


def test_nothing_in_src_imports_the_facade() -> None:
    importers = [source for source, targets in import_graph().items() if targets & FACADES]
    assert importers == []


def test_the_checks_catch_an_upward_import_and_a_circle() -> None:
    graph = {"src.utils.a": {"src.engine.b"}, "src.engine.b": {"src.engine.c"},
             "src.engine.c": {"src.engine.b"}}
    assert upward_imports(graph) == ["src.utils.a -> src.engine.b"]
    assert cycles(graph) == [["src.engine.b", "src.engine.c"]]
