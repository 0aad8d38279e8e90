"""The direction of dependencies (DESIGN.md): from what runs the study down to pure computation."""

import ast
from pathlib import Path

import kvasir_utils

PACKAGE = Path(kvasir_utils.__file__).parent


def _imports() -> dict[str, set[str]]:
    """module -> the kvasir_utils modules it imports (at the top or inside functions)."""
    graph = {}
    for path in PACKAGE.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kvasir_utils"):
                found |= {node.module.removeprefix("kvasir_utils.")} if node.module != "kvasir_utils" else \
                    {alias.name for alias in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name.removeprefix("kvasir_utils.") for a in node.names
                          if a.name.startswith("kvasir_utils.")}
        graph[path.stem] = found - {path.stem}
    return graph


def test_no_import_circle_in_the_package():
    graph = _imports()

    def reach(start, node, seen):
        for nxt in graph.get(node, ()):
            assert nxt != start, f"import circle through {start} and {node}"
            if nxt not in seen:
                seen.add(nxt)
                reach(start, nxt, seen)

    for module in graph:
        reach(module, module, set())


def test_pure_computation_imports_nothing_that_runs_or_reports():
    graph = _imports()
    assert graph["metrics"] <= {"labels"}
    for low in ("metrics", "labels", "config", "io", "errors", "transforms", "models", "split", "cache"):
        assert not graph[low] & {"engine", "report", "plots", "paper", "cli", "sweep", "evaluation"}, low
    importers_of_report = {m for m, deps in graph.items() if "report" in deps}
    assert importers_of_report <= {"cli", "sweep"}, importers_of_report
    assert "engine" not in graph["plots"] and "report" not in graph["engine"]
