"""The code's layout as ARCHITECTURE.md states it: no module imports one that imports it back
(directly or through others, lazily imported ones included), so a query's walk goes down the
layers; the layer modules named in the diagram exist."""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src"


def _imports() -> dict[str, set[str]]:
    """Each wildreid module (packages as one: ``wildreid.local``) and the others it imports,
    at the top or inside a function."""
    graph: dict[str, set[str]] = {}
    for path in (SOURCE / "wildreid").rglob("*.py"):
        module = ".".join(path.relative_to(SOURCE).with_suffix("").parts[:2])
        found = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                     [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
            found |= {".".join(name.split(".")[:2]) for name in names
                      if name.startswith("wildreid.")} - {module}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or ``None`` (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for other in sorted(graph.get(module, ())):
            if state.get(other) == 1:
                return [*path[path.index(other):], other]
            if other not in state and (found := visit(other)):
                return found
        state[module] = 2
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_module_imports_one_that_imports_it_back():
    graph = _imports()
    assert len(graph) > 20  # the walk reached the package
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_a_cycle_is_found_where_there_is_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_modules_of_the_diagram_exist():
    text = (SOURCE.parent / "ARCHITECTURE.md").read_text()
    named = {word for word in text.split() if word.endswith(".py") and "/" not in word
             and word[:-3].isidentifier()}
    assert {"pipeline.py", "rerank.py", "selection.py", "fusion.py"} <= named
    missing = [name for name in named
               if not (SOURCE / "wildreid" / name).exists()
               and not list((SOURCE / "wildreid").rglob(name))
               and not (SOURCE.parent / "benchmarks" / name).exists()]
    assert not missing, missing
