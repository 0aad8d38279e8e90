"""The direction of dependencies (docs/architecture.md): from what runs the study down to pure
computation, held transitively, and the report layer free of torch, torchvision, kornia and ray."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import kvasir_utils

PACKAGE = Path(kvasir_utils.__file__).parent
BASE = {"datasets", "errors", "files", "artefacts", "config", "profiles", "provenance"}
# Which part of the package may import which (closed under "imports what it imports"). A part is a
# subpackage or a top-level module; the run layer is the top and may import everything.
ALLOWED = {
    "datasets": set(),  # the datasets' facts: every part may read them, and they read nothing of ours
    "errors": set(),
    "files": {"errors"},
    "artefacts": {"errors"},
    "config": {"datasets", "errors", "files", "artefacts"},
    "profiles": {"datasets", "errors", "files", "artefacts", "config"},
    "provenance": {"datasets", "errors", "files", "artefacts", "config"},
    "analysis": BASE,
    "report": BASE | {"analysis"},
    "data": BASE,
    "train": BASE | {"data", "analysis"},
    "bench": BASE | {"data", "analysis", "train"},
    "run": BASE | {"data", "analysis", "train", "report", "bench"},
}
HEAVY = ("torch", "torchvision", "kornia", "ray")


def module_imports(root: Path = PACKAGE) -> dict[str, set[str]]:
    """``kvasir_utils.x.y`` -> the package's modules it imports, at the top or inside functions."""
    graph = {}
    for path in root.rglob("*.py"):
        name = ".".join(("kvasir_utils", *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kvasir_utils"):
                for alias in node.names:  # `from kvasir_utils.data import prepare` imports a module
                    candidate = f"{node.module}.{alias.name}"
                    found.add(candidate if _is_module(root, candidate) else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("kvasir_utils.")}
        graph[name] = found - {name}
    return graph


def _is_module(root: Path, dotted: str) -> bool:
    parts = dotted.split(".")[1:]
    return root.joinpath(*parts).with_suffix(".py").is_file() or root.joinpath(*parts, "__init__.py").is_file()


def part(module: str) -> str:
    """``kvasir_utils.train.loop`` -> ``train``; ``kvasir_utils.config`` -> ``config``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "kvasir_utils"


def reached(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module in graph:
        if part(module) in ("kvasir_utils", "__main__"):
            continue
        for other in reached(graph, module):
            if part(other) != part(module) and part(other) not in ALLOWED[part(module)]:
                problems.append(f"{module} reaches {other} ({part(module)} may not import {part(other)})")
    return problems


def test_every_part_of_the_package_is_in_the_table():
    parts = {part(m) for m in module_imports()} - {"kvasir_utils", "__main__"}
    assert parts == set(ALLOWED)


def test_imports_point_one_way_even_through_other_modules():
    assert layering_violations(module_imports()) == []


def test_the_layering_check_fails_on_a_planted_violation(tmp_path):
    import shutil

    copy = tmp_path / "kvasir_utils"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    # analysis -> report is against the direction; planted two steps away, so only a transitive check sees it
    (copy / "analysis" / "planted.py").write_text("from kvasir_utils.report import outputs\n")
    runs = copy / "analysis" / "runs.py"
    runs.write_text(runs.read_text() + "\nfrom kvasir_utils.analysis import planted  # noqa\n")
    problems = layering_violations(module_imports(copy))
    assert any(p.startswith("kvasir_utils.analysis.runs reaches kvasir_utils.report") for p in problems), problems


def test_no_import_circle_between_modules():
    graph = module_imports()
    for module in graph:
        assert module not in reached(graph, module), f"import circle through {module}"


def _loaded(modules: list[str], packages: tuple[str, ...]) -> str:
    """Which of ``packages`` a fresh Python holds after importing ``modules``, as it prints the list."""
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted(m for m in {packages!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


@pytest.mark.parametrize("layer", ["analysis", "report"])
def test_the_analysis_and_report_layers_load_no_torch_torchvision_kornia_or_ray(layer):
    modules = sorted(m for m in module_imports() if part(m) == layer)
    assert _loaded(modules, HEAVY) == "[]"


def test_importing_the_notebooks_helpers_leaves_scoring_and_statistics_libraries_to_first_use():
    # scikit-learn, scipy and seaborn cost every notebook kernel about 1.6 CPU-seconds to import, and the
    # training notebooks use none of them (docs/development.md: where the processor time goes)
    modules = sorted(m for m in module_imports() if part(m) in ("analysis", "report"))
    assert _loaded(modules, ("sklearn", "scipy", "seaborn")) == "[]"
