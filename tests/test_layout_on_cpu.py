"""The shape of the source tree: no import cycles in ``entrolab``, no file over 600 lines, one native library.

The import graph is read from the source (``ast``), not by importing: an edge ``a -> b`` for every module-level
``import`` of an ``entrolab`` module (``from entrolab.x import y`` imports ``entrolab.x``, and ``entrolab.x.y`` when
that is a module; a module's own parent packages, always initialised before it, are not edges).  Imports inside
functions are deliberate lazy imports and are not edges; imports under
``if TYPE_CHECKING:`` never run and are not edges either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "entrolab"
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is imported (not in functions, not under TYPE_CHECKING)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.append(node)
            elif isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if "TYPE_CHECKING" not in test:
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.ClassDef):
                visit(node.body)

    visit(tree.body)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _top_level_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            # a module's own parent packages are initialised before it in any case: not an edge
            graph[name].update(t for t in targets if t in modules and t != name and not name.startswith(t + "."))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules (first repeated at the end), or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_real_edges():
    graph = import_graph()
    assert "entrolab.batch_stats" in graph["entrolab.losses.cov"]
    assert "entrolab.batch_stats" in graph["entrolab.dynamics"]


def test_no_import_cycles_in_entrolab():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_shared_statistics_are_a_leaf_of_losses_and_dynamics():
    graph = import_graph()
    for leaf in ("entrolab.batch_stats", "entrolab._validation", "entrolab._dist"):
        inside = {m for m in graph[leaf] if m.startswith("entrolab.")}
        assert inside <= {"entrolab._dist", "entrolab._validation", "entrolab"}, (leaf, inside)
    assert not any(m.startswith("entrolab.dynamics") for m in _reachable(graph, "entrolab.losses"))


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.mark.parametrize(
    "path",
    sorted(str(p.relative_to(SRC)) for p in PACKAGE.rglob("*") if p.suffix in (".py", ".c", ".h")),
)
def test_no_source_file_over_600_lines(path):
    lines = len((SRC / path).read_text().splitlines())
    assert lines <= MAX_LINES, f"{path} has {lines} lines (at most {MAX_LINES})"


MAX_FUNCTION_LINES = 80
# Known long functions, each still to be split; the test fails for any other, and for one of these once it is short.
LONG_FUNCTIONS: set[str] = set()


def _function_lengths() -> dict[str, int]:
    """Lines of every function in ``src/entrolab``, its docstring excluded."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = str(path.relative_to(SRC))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                first = node.body[0]
                if (
                    isinstance(first, ast.Expr)
                    and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)
                ):
                    n -= first.end_lineno - first.lineno + 1  # type: ignore[operator]
                out[f"{rel}:{node.name}"] = max(n, out.get(f"{rel}:{node.name}", 0))
    return out


def test_no_function_over_80_lines_excluding_its_docstring():
    lengths = _function_lengths()
    long = {name for name, n in lengths.items() if n > MAX_FUNCTION_LINES}
    assert long - LONG_FUNCTIONS == set(), {name: lengths[name] for name in long - LONG_FUNCTIONS}
    assert LONG_FUNCTIONS - long == set(), f"now short enough, remove from LONG_FUNCTIONS: {LONG_FUNCTIONS - long}"
    assert lengths["entrolab/lab/trainer.py:train_one"] <= MAX_FUNCTION_LINES  # the recipe reads top to bottom


def test_the_only_native_code_is_the_entropy_kernels():
    native = sorted(p.name for p in (PACKAGE / "_native").iterdir() if p.suffix in (".c", ".h"))
    assert native == ["kernels.c", "vmath.h"]
    assert not (PACKAGE / "losses" / "_fast.py").exists()
