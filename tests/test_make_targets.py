"""Every target that `make help` lists is run by a test as a user runs it.

Tests run make through ``tests.processes.run_make("<target>", ...)`` (or ``make_command``), or with a
command list that starts with ``"make"``; the check below reads the test files and collects the
targets named there: a literal argument of ``run_make``/``make_command`` or of a function whose name
ends in ``make`` (``_make(...)``, ``interrupted["make"](...)`` in tests/test_interrupts.py), the default
of such a function's ``target`` parameter, a ``target`` that a test's ``pytest.mark.parametrize``
gives (where that test calls ``run_make``), or a literal in a ``["make", ...]`` list. A target that
only a dry run (``make -n``) reaches must be listed in DRY_RUN_ONLY with the reason it cannot run in a
test; the dry runs below assert the commands it would run, each one parsed by the command line.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
from pathlib import Path

import pandas as pd
import pytest

from kvasir_utils import files, profiles
from kvasir_utils.config import PROJECT_ROOT
from kvasir_utils.run import cli
from tests.helpers import tmp_overrides
from tests.processes import run_make

TESTS = Path(__file__).parent
DRY_RUN_ONLY = {
    "setup": "what CI runs before the tests; it reinstalls the environment the tests run in",
    "lock": "needs PyPI (the tests are offline)",
    "test": "runs this suite itself",
    "test-fast": "runs this suite itself",
    "test-long": "runs this suite's long tier itself",
    "lab": "starts a JupyterLab server that runs until stopped",
    "data": "a notebook run; make evaluate (tests/test_interrupts.py) runs the same rule",
    "reproduce": "the whole study (minutes); tests/conftest.py's smoke chain runs its notebooks",
    "smoke": "make reproduce on the smoke profile, as above",
    "sweep": "many runs on Ray (minutes); tests/test_sweep.py runs the command it runs",
    "cross-evaluate": "needs a second dataset and trained models; tests/test_cross.py runs its functions",
    "predict": "needs the smoke chain's trained models; tests/test_predict.py runs the command it runs",
    "export": "needs the smoke chain's trained models; tests/test_export.py runs the command it runs",
    "screenshots": "writes into docs/images and needs chromium; tests/test_report_pages.py drives the browser",
}


def documented_targets(makefile: str) -> list[str]:
    """The targets with a ``## `` description: those `make help` lists."""
    return re.findall(r"^([a-z][a-z-]*):.*## ", makefile, flags=re.M)


def _callee(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Subscript) and isinstance(func.slice, ast.Constant):
        return str(func.slice.value)
    return ""


def _runs_make(name: str) -> bool:
    return name == "make" or name.endswith("_make") or name == "make_command"


def _strings(nodes) -> list[str]:
    return [n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _is_dry(call: ast.Call) -> bool:
    return any(k.arg == "dry_run" and isinstance(k.value, ast.Constant) and k.value.value for k in call.keywords)


def _parametrized_targets(test: ast.FunctionDef) -> list[str]:
    """The values a ``pytest.mark.parametrize`` decorator gives the test's ``target`` argument."""
    found = []
    for decorator in test.decorator_list:
        if not (isinstance(decorator, ast.Call) and _callee(decorator) == "parametrize" and decorator.args):
            continue
        names = _strings(decorator.args[:1])[0].replace(" ", "").split(",") if _strings(decorator.args[:1]) \
            else _strings(getattr(decorator.args[0], "elts", []))
        if "target" in names and isinstance(decorator.args[1], ast.List):
            where = names.index("target")
            found += _strings(v.elts[where] if isinstance(v, ast.Tuple) else v for v in decorator.args[1].elts)
    return found


def targets_run(source: str) -> tuple[set[str], set[str]]:
    """(targets run for real, targets run only with ``make -n``) by one test file's source."""
    real, dry = set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and _runs_make(_callee(node)):
            named = _strings(node.args) + _strings(k.value for k in node.keywords if k.arg == "target")
            (dry if _is_dry(node) else real).update(named)
        elif isinstance(node, ast.List) and _strings(node.elts[:1]) == ["make"]:
            (dry if "-n" in _strings(node.elts) else real).update(_strings(node.elts))
        elif isinstance(node, (ast.FunctionDef, ast.Lambda)):
            arguments = node.args
            defaults = dict(zip([a.arg for a in arguments.args][::-1], arguments.defaults[::-1]))
            if "target" in defaults and (isinstance(node, ast.Lambda) or _runs_make(node.name)):
                real.update(_strings([defaults["target"]]))
            calls = [c for c in ast.walk(node) if isinstance(c, ast.Call) and _callee(c) == "run_make"]
            if isinstance(node, ast.FunctionDef) and calls:
                (dry if all(_is_dry(c) for c in calls) else real).update(_parametrized_targets(node))
    return real, dry


def unrun_targets(makefile: str, sources: list[str]) -> dict[str, str]:
    """Each documented target no test runs, with what is wrong: not run at all, or only dry without a reason."""
    real, dry = set(), set()
    for source in sources:
        found = targets_run(source)
        real |= found[0]
        dry |= found[1]
    problems = {}
    for target in documented_targets(makefile):
        if target in real:
            continue
        if target not in dry:
            problems[target] = "no test runs it: run it with tests.processes.run_make"
        elif target not in DRY_RUN_ONLY:
            problems[target] = "only a dry run (make -n) reaches it: run it, or say why not in DRY_RUN_ONLY"
    return problems


def _test_sources() -> list[str]:
    return [path.read_text() for path in sorted(TESTS.glob("test_*.py"))]


def test_every_target_make_help_lists_is_run_by_a_test():
    assert unrun_targets((PROJECT_ROOT / "Makefile").read_text(), _test_sources()) == {}


def test_the_check_finds_a_target_that_no_test_runs_and_the_ways_tests_run_make():
    makefile = "a: ## run\nb: ## dry\nc: ## lambda\nd: ## nothing\ne: ## list\nf: ## reason-less dry\n"
    sources = ['run_make("a", "X=1")\nrun_make("b", dry_run=True)\nrun_make("f", dry_run=True)\n',
               'go = {"make": lambda target="c": None}\nRun(["make", "--no-print-directory", "e"])\n']
    problems = unrun_targets(makefile, sources)
    assert set(problems) == {"b", "d", "f"}  # b and f: dry only, and neither is in DRY_RUN_ONLY
    assert "no test runs it" in problems["d"] and "DRY_RUN_ONLY" in problems["f"]
    assert targets_run('def _make(study, target: str = "evaluate"): pass\nx["make"]("report")\n')[0] == \
        {"evaluate", "report"}
    parametrized = '@pytest.mark.parametrize(("target", "v"), [("g", 1), ("h", 2)])\n' \
                   'def test_x(target, v):\n    run_make(target, dry_run=True)\n'
    assert targets_run(parametrized) == (set(), {"g", "h"})


def test_every_dry_run_only_target_is_a_documented_target():
    assert set(DRY_RUN_ONLY) <= set(documented_targets((PROJECT_ROOT / "Makefile").read_text()))


# ---- the targets that run in a test here, as a user runs them ---------------------------------------


def test_make_help_lists_every_target_with_its_description():
    done = run_make("help")
    assert done.returncode == 0, done.stdout
    listed = dict(re.findall(r"^  ([a-z-]+)\s+(.+)$", done.stdout, flags=re.M))
    assert list(listed) == documented_targets((PROJECT_ROOT / "Makefile").read_text())
    assert "reports/bench/bench.json" in listed["bench"]


def test_make_docs_leaves_the_readings_table_as_it_is_when_it_is_current():
    before = cli.READINGS_DOC.read_text()
    done = run_make("docs")
    after = cli.READINGS_DOC.read_text()
    if after != before:  # put the file back: the test must not edit the repository
        cli.READINGS_DOC.write_text(before)
    assert done.returncode == 0, done.stdout[-3000:]
    assert f"wrote {cli.READINGS_DOC}" in done.stdout
    assert after == before, "docs/paper-readings.md is stale: run `make docs` and commit it"


@pytest.mark.slow  # whole processes or several trainings: make test runs it, make test-fast not
def test_make_clean_deletes_the_runs_and_reports_of_the_profile_and_keeps_its_data(tmp_path):
    overrides = tmp_overrides(tmp_path)
    cfg = profiles.load_profile("smoke", overrides)
    kept = Path(cfg.paths.data) / "kept.txt"
    for path in (cfg.run_dir / "split.csv", cfg.report_dir / "index.html", kept):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    done = run_make("clean", "PROFILE=smoke", f"SET={' '.join(overrides)}")
    assert done.returncode == 0, done.stdout[-3000:]
    assert not cfg.run_dir.exists() and not cfg.report_dir.exists()
    assert kept.read_text() == "x"


def _stub_path(folder: Path, programs: list[str]) -> dict:
    """A PATH with only make, bash and ``programs`` (scripts that note their arguments in calls.txt)."""
    folder.mkdir()
    for real in ("make", "bash"):
        os.symlink(f"/usr/bin/{real}", folder / real)
    for name in programs:
        (folder / name).write_text(f'#!/usr/bin/bash\necho "{name} $*" >> {folder / "calls.txt"}\n')
        (folder / name).chmod(0o755)
    return {"PATH": str(folder)}


def test_make_chromium_installs_nothing_when_chromium_is_there(tmp_path):
    done = run_make("chromium", env=_stub_path(tmp_path / "bin", ["chromium", "chromedriver", "apt-get"]))
    assert done.returncode == 0 and done.stdout == "", done.stdout
    assert not (tmp_path / "bin" / "calls.txt").exists()


def test_make_chromium_installs_debians_chromium_when_it_is_missing(tmp_path):
    done = run_make("chromium", env=_stub_path(tmp_path / "bin", ["apt-get"]))
    assert done.returncode == 0, done.stdout
    assert (tmp_path / "bin" / "calls.txt").read_text() == "apt-get install -y -q chromium chromium-driver\n"


def test_make_lint_passes_on_the_code_and_the_stored_notebooks():
    done = run_make("lint")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "ruff check kvasir_utils tests" in done.stdout and "nbstripout --verify" in done.stdout


# ---- the targets only a dry run reaches (DRY_RUN_ONLY says why): the commands they would run ----------


def _commands(output: str) -> list[list[str]]:
    """The ``python -m kvasir_utils ...`` commands in make's output, as arguments, each checked by the CLI."""
    found = []
    for line in output.splitlines():
        if " -m kvasir_utils " in line:
            arguments = shlex.split(line.split(" -m kvasir_utils ", 1)[1])
            cli._parser().parse_args(arguments)  # exits (fails the test) on a command the CLI does not take
            found.append(arguments)
    return found


@pytest.mark.parametrize(("target", "variables", "expected"), [
    ("setup", ["-W", "pyproject.toml"], ["pip install --quiet --disable-pip-version-check -r requirements.lock",
                                         "touch .venv/.installed"]),
    ("lock", [], ["pip-compile", "--output-file requirements.lock pyproject.toml"]),
    ("test", [], ['.venv/bin/python -m pytest -m "not long"']),
    ("test-fast", [], ['.venv/bin/python -m pytest -m "not slow and not long"']),
    ("test-long", [], [".venv/bin/python -m pytest -m long"]),
    ("lab", ["PROFILE=smoke"], [".venv/bin/python -m kvasir_utils lab --profile 'smoke'"]),
    ("screenshots", ["PROFILE=smoke"], [".venv/bin/python -m tools.chromium reports/smoke docs/images",
                                        ".venv/bin/python -m tools.jupyterlab docs/images --profile 'smoke'"]),
])
def test_a_target_that_cannot_run_here_would_run_its_command(target, variables, expected):
    done = run_make(target, *variables, dry_run=True)
    assert done.returncode == 0, done.stdout[-3000:]
    assert all(text in done.stdout for text in expected), done.stdout


@pytest.mark.parametrize(("target", "variables", "command"), [
    ("sweep", ["SWEEP=seeds", "SET=train.stage1.epochs=1"], ["sweep", "seeds", "--set", "train.stage1.epochs=1"]),
    ("cross-evaluate", ["PROFILE=smoke", "TARGET=smoke-hyperkvasir"],
     ["cross-evaluate", "--profile", "smoke", "--target", "smoke-hyperkvasir"]),
    ("predict", ["PROFILE=smoke", "IMAGES=my images/", "NAME=mine"],
     ["predict", "--profile", "smoke", "--go-on", 'make predict PROFILE=smoke IMAGES="my images/" NAME=mine', "--model",
      "resnet50", "--images", "my images/", "--name", "mine"]),
    # a single quote in a value (a folder named by a person) stays one word through the shell
    ("predict", ["PROFILE=smoke", "IMAGES=patient's images/"],
     ["predict", "--profile", "smoke", "--go-on", 'make predict PROFILE=smoke IMAGES="patient\'s images/"', "--model",
      "resnet50", "--images", "patient's images/"]),
    ("export", ["PROFILE=smoke", "MODEL=efficientnet_b0"],
     ["export", "--profile", "smoke", "--go-on", "make export PROFILE=smoke MODEL=efficientnet_b0", "--model",
      "efficientnet_b0"]),
])
def test_a_command_target_hands_its_variables_to_the_command_line(target, variables, command):
    done = run_make(target, *variables, dry_run=True)
    assert done.returncode == 0, done.stdout[-3000:]
    assert _commands(done.stdout) == [command]


@pytest.mark.parametrize("target", ["data", "reproduce", "smoke"])
def test_a_pipeline_target_would_run_its_notebooks_in_order(target, tmp_path):
    overrides = tmp_overrides(tmp_path)
    done = run_make(target, "PROFILE=smoke", f"SET={' '.join(overrides)}", dry_run=True)
    assert done.returncode == 0, done.stdout[-3000:]
    # make -n prints the sub-make line (make runs the pipeline in a sub-make) without running it: its dry run
    make, *arguments, pipeline = shlex.split(done.stdout.splitlines()[-1])
    assert make == "make" and "PROFILE=smoke" in arguments and pipeline.startswith("pipeline-"), done.stdout
    done = run_make(pipeline, *arguments, dry_run=True)
    assert done.returncode == 0, done.stdout[-3000:]
    steps = [(c[1], c[c.index("--model") + 1] if "--model" in c else None) if c[0] == "run-notebook" else (c[0], None)
             for c in _commands(done.stdout)]
    models = profiles.load_profile("smoke", overrides).train.models
    chain = [("01_download_and_split", None),
             *[(notebook, m) for m in models for notebook in ("02_train", "03_finetune", "04_evaluate")],
             ("05_compare", None), ("07_audit", None), ("report", None)]
    if target == "data":
        assert steps == chain[:1]
    else:  # make's order within a model is fixed by the rules; between models it may interleave
        assert sorted(steps, key=chain.index) == chain and steps[0] == chain[0] and steps[-3:] == chain[-3:]


@pytest.mark.slow  # whole processes or several trainings: make test runs it, make test-fast not
def test_make_reruns_notebook_01_when_the_local_archive_is_replaced_at_the_same_path(tmp_path):
    archive = tmp_path / "mine.zip"
    archive.write_bytes(b"first archive")
    overrides = [*tmp_overrides(tmp_path), "data.synthetic=null", f"data.url={archive}"]
    variables = ["PROFILE=smoke", f"SET={' '.join(overrides)}"]
    executed = profiles.load_profile("smoke", overrides).run.executed_notebook("01_download_and_split")

    def would_run_01() -> bool:
        done = run_make("pipeline-data", *variables, dry_run=True)
        assert done.returncode == 0, done.stdout[-3000:]
        return [c[:2] for c in _commands(done.stdout)] == [["run-notebook", "01_download_and_split"]]

    def finish_01() -> None:  # the executed notebook is the step's stamp: written when notebook 01 finishes
        executed.parent.mkdir(parents=True, exist_ok=True)
        executed.write_text("{}")

    assert would_run_01()
    finish_01()
    assert not would_run_01()  # the same settings and the same file: nothing to do
    archive.write_bytes(b"other archive")  # the same size, and a later time
    os.utime(archive, ns=(archive.stat().st_atime_ns, executed.stat().st_mtime_ns + 10**9))
    assert would_run_01()
    finish_01()
    archive.unlink()  # gone: notebook 01 reads the copy it made under paths.data, which has not changed
    assert not would_run_01()


@pytest.mark.slow  # whole processes or several trainings: make test runs it, make test-fast not
def test_make_splits_writes_both_split_files_and_a_readme_with_their_hashes(tmp_path):
    overrides = [*tmp_overrides(tmp_path), "data.synthetic.images_per_class=16", "data.expected_per_class=16",
                 "split.near_duplicates.calibration_copies=16"]
    done = run_make("splits", "PROFILE=smoke", f"SET={' '.join(overrides)}")
    assert done.returncode == 0, done.stdout[-3000:]
    folder = profiles.load_profile("smoke", overrides).report.splits
    readme = (folder / "README.md").read_text()
    for name in ("random.csv", "grouped.csv"):
        split = (folder / name).read_text()
        assert split.splitlines()[0] == "file,class,side" and len(split.splitlines()) == 1 + 8 * 16
        assert files.sha256_file(folder / name) in readme
    assert "make splits PROFILE=smoke" in readme and "| `grouped.csv` |" in readme
    # the grouped split keeps every pair the detectors found on one side, counted from the files themselves
    from kvasir_utils.data import duplicates

    found = duplicates.NearDuplicates.read(folder / "near_duplicates.csv", folder / "near_duplicates.json")
    assert len(found.pairs) > 0
    for name in ("grouped", "random"):  # the README's count of pairs across each split is the files' own
        side = pd.read_csv(folder / f"{name}.csv").set_index("file")["side"]
        across = sum(side[a.rsplit("/", 1)[-1]] != side[b.rsplit("/", 1)[-1]]
                     for a, b in zip(found.pairs["path_a"], found.pairs["path_b"]))
        assert re.search(rf"\| `{name}.csv` \| [^|]+ \| {across} \|", readme), (name, across)
        assert across == 0 or name == "random"


def test_every_sub_make_takes_the_environment_as_its_caller_made_it():
    # GNU make does not pass a caller's -o on: a sub-make without --old-file on the setup stamp would
    # reinstall the environment mid-run wherever pyproject.toml is newer than the stamp (a test's
    # `make -o .venv/.installed smoke` once did). The targets that need the environment depend on the stamp.
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    calls = [line for line in makefile.splitlines() if line.startswith("\t") and "$(MAKE)" in line]
    assert calls, "the Makefile has no sub-make call: this test has nothing to check"
    for line in calls:
        assert "--old-file=$(SETUP_STAMP)" in line, line
    submake = next(line for line in makefile.splitlines() if line.startswith("SUBMAKE :="))
    assert "--old-file=$(SETUP_STAMP)" in submake
