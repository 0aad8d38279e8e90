"""Command line used by the Makefile: run notebooks headlessly, render the reports, run sweeps.

    python -m kvasir_utils run-notebook 02_train --profile smoke --model resnet50 --set train.stage1.epochs=1
    python -m kvasir_utils report --profile smoke
    python -m kvasir_utils makevars --profile smoke
    python -m kvasir_utils sweep smoke-seeds --set paths.runs=/tmp/runs

Every failure ends with one line on stderr that says what went wrong, and a non-zero exit.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import yaml

from kvasir_utils import config, runner
from kvasir_utils.errors import KvasirError
from kvasir_utils.io import disk_full, folder_lock, is_disk_full, write_text_atomic

NOTEBOOKS = ("01_download_and_split", "02_train", "03_finetune", "04_evaluate", "05_compare", "07_audit")
PER_MODEL = {"02_train", "03_finetune", "04_evaluate"}
SWEEP_NOTEBOOK = "06_sweep"
NOTEBOOK_SOURCE_DIR = config.PROJECT_ROOT / "notebooks"


def executed_notebook_path(cfg: config.Config, name: str, model: str | None = None) -> Path:
    """Where the executed copy of a notebook goes; the Makefile uses it as the step's stamp."""
    return cfg.notebook_dir / (f"{name}-{model}.ipynb" if model else f"{name}.ipynb")


def write_settings_stamp(cfg: config.Config) -> Path:
    """``settings.yaml``: what changes results; rewritten only when it changes, so the Makefile
    reruns the steps after a settings change and nothing after a mere rerun. New settings are
    first checked against every model and reading of the profile (on the meta device, before the
    pipeline does anything); unchanged ones were checked when they were written."""
    path = cfg.run_dir / "settings.yaml"
    text = yaml.safe_dump(cfg.science_dict(), sort_keys=False)
    if path.exists() and path.read_text() == text:
        return path
    from kvasir_utils import models

    models.check_profile(cfg)  # before anything is created
    with folder_lock(cfg.run_dir, "checking the settings", wait=False):  # not under a running run
        return write_text_atomic(path, text)


def check_make_path(path: Path) -> None:
    """make cannot have these characters in a file name (it reads them as its own syntax)."""
    bad = sorted({c for c in str(path) if c in ":%#$;*?[]" or c.isspace()})
    if bad:
        raise KvasirError(f"the folder {path} contains {' '.join(repr(c) for c in bad)}, which make cannot handle in "
                          "a file name; choose paths.runs / paths.reports (or a profile file name) without them")


def execute_notebook(name: str, parameters: dict, out: Path, lock_folder: Path, what: str) -> Path:
    """Execute ``notebooks/<name>.ipynb`` with papermill into ``out``, holding ``lock_folder``'s
    lock; the result appears under its name only if every cell succeeded. SIGINT and SIGTERM stop
    the kernel too (``runner.KernelStopper``) and end in ``Interrupted``."""
    import papermill

    out.parent.mkdir(parents=True, exist_ok=True)
    failed = out.with_suffix(".failed.ipynb")
    stopper = runner.KernelStopper()
    try:
        with folder_lock(lock_folder, f"running {out.stem}", wait=False), stopper:
            papermill.execute_notebook(
                str(NOTEBOOK_SOURCE_DIR / f"{name}.ipynb"), str(failed), parameters=parameters,
                cwd=str(NOTEBOOK_SOURCE_DIR), kernel_name="python3", progress_bar=False,
                stdout_file=runner.LineTracker(sys.stdout), stderr_file=runner.LineTracker(sys.stderr),
                kernel_manager_class=stopper.kernel_manager_class(), on_cell_execute=stopper.before_cell,
            )
    except KvasirError:
        raise
    except Exception as exc:  # noqa: BLE001 - a failing cell, a dead kernel, an interrupt: one line each
        if failed.exists():
            runner.print_last(f"the executed notebook up to there: {failed}")
        if stopper.signum is not None:
            how = "killed after it did not stop in time" if stopper.killed else "stopped"
            raise runner.Interrupted(stopper.signum, f"{what} {how}") from None
        raise KvasirError(f"{what} failed: {_reason(exc)}") from None
    os.replace(failed, out)
    return out


def _reason(exc: Exception) -> str:
    """What went wrong, in one line: a study error's own message, else the exception's type and first line."""
    import papermill

    if isinstance(exc, papermill.PapermillExecutionError):
        kind, text = exc.ename, exc.evalue
    elif type(exc).__name__ == "DeadKernelError":
        return "the Jupyter kernel died (killed, or out of memory?); what it finished is kept"
    elif is_disk_full(exc):
        return str(disk_full(Path(exc.filename or "the executed notebook"), None))
    else:
        kind, text = type(exc).__name__, (str(exc).strip().splitlines() or [""])[0]
    return text if kind in {"KvasirError", "ConfigError", "DownloadError", "DiskFullError"} else f"{kind}: {text}"


def run_notebook(name: str, profile: str, overrides: list[str], model: str | None = None) -> Path:
    """Execute one of the study's notebooks (01-05) for a profile (and a model)."""
    if name not in NOTEBOOKS:
        raise KvasirError(f"unknown notebook {name!r}; expected one of {', '.join(NOTEBOOKS)}")
    if (name in PER_MODEL) != (model is not None):
        raise KvasirError(f"notebook {name} {'needs' if name in PER_MODEL else 'takes no'} --model")
    cfg = config.load_profile(profile, overrides)
    if model is not None and model not in cfg.train.models:
        raise KvasirError(f"model {model!r} is not in train.models of profile {cfg.profile}: {cfg.train.models}")
    # the kernel runs in notebooks/: a relative profile path is made absolute
    parameters = {"PROFILE": config.profile_reference(profile), "OVERRIDES": list(overrides)}
    if model is not None:
        parameters["MODEL"] = model
    return execute_notebook(name, parameters, executed_notebook_path(cfg, name, model), cfg.run_dir,
                            f"{name}{f' ({model})' if model else ''}")


def run_sweep_command(name: str, overrides: list[str]) -> int:
    """``make sweep``: validate every run, run the unfinished ones on Ray, then notebook 06 and the
    sweep's report. Returns the exit code: 1 when a run failed (the others still count)."""
    from kvasir_utils import sweep

    spec = sweep.load_sweep(name, overrides)
    print(f"sweep {spec.name}: {len(spec.members)} run(s) of profile {spec.base.profile}, results under {spec.run_dir}")
    with folder_lock(spec.run_dir, f"sweep {spec.name}", wait=False):  # one driver per sweep folder
        outcome = sweep.run_sweep(spec)
        if outcome.skipped:
            print(f"{len(outcome.skipped)} run(s) finished earlier and were not run again")
        print(f"wrote {aggregate_sweep(spec, name, overrides)}")
    if outcome.failed:
        listing = "\n".join(f"  {member}: {error}" for member, error in outcome.failed.items())
        print(f"error: {len(outcome.failed)} of {len(spec.members)} run(s) failed (each run's output is in "
              f"member.log in its folder under {spec.run_dir / 'members'}):\n{listing}", file=sys.stderr)
        return 1
    return 0


def aggregate_sweep(spec, name: str, overrides: list[str]) -> Path:
    """Notebook 06 over the finished runs (skipped when nothing is new), then the sweep's index page."""
    from kvasir_utils import report, sweep

    executed = spec.run_dir / "notebooks" / f"{SWEEP_NOTEBOOK}.ipynb"
    results = sweep.member_results(spec)
    if not (results["status"] == "finished").any():
        return report.render_sweep_report(spec, results, None)  # says that nothing finished; no stale tables
    if sweep.aggregation_is_current(spec, executed):
        print("nothing new since the last aggregation")
        return spec.report_dir / "index.html"
    parameters = {"SWEEP": str(sweep.find_sweep(name)), "OVERRIDES": list(overrides)}
    execute_notebook(SWEEP_NOTEBOOK, parameters, executed, executed.parent, f"{SWEEP_NOTEBOOK} ({spec.name})")
    return report.render_sweep_report(spec, results, executed)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kvasir_utils", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str, profile: bool = True) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_text)
        if profile:
            cmd.add_argument("--profile", default="paper", help="profile name or path to a YAML file")
        cmd.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="dotted override, e.g. train.stage1.epochs=1 (repeatable)")
        return cmd

    run = add("run-notebook", "execute one notebook with papermill")
    run.add_argument("notebook", choices=NOTEBOOKS)
    run.add_argument("--model", default=None)
    add("report", "render the executed notebooks to HTML and write index.html")
    add("makevars", "check the profile and print its folders and models as make variables")
    sweep_cmd = add("sweep", "run a sweep's members on Ray, then aggregate them (notebook 06)", profile=False)
    sweep_cmd.add_argument("sweep", help="sweep name (configs/sweeps/<name>.yaml) or path to a sweep file")
    return parser


def _terminate(signum, _frame):
    raise KeyboardInterrupt  # SIGTERM (a scheduler, a sweep) stops like Ctrl-C: files are closed, temp files removed


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _command(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _command(args) -> int:
    try:
        if args.command == "run-notebook":
            print(f"wrote {run_notebook(args.notebook, args.profile, args.overrides, args.model)}")
        elif args.command == "report":
            from kvasir_utils import report

            cfg = config.load_profile(args.profile, args.overrides)
            print(f"wrote {report.render_reports(cfg)}")
        elif args.command == "makevars":
            cfg = config.load_profile(args.profile, args.overrides)
            check_make_path(cfg.run_dir)
            check_make_path(cfg.report_dir)
            settings = write_settings_stamp(cfg)
            print(f"RUN_DIR := {cfg.run_dir}")
            print(f"REPORT_DIR := {cfg.report_dir}")
            print(f"MODELS := {' '.join(cfg.train.models)}")
            print(f"SETTINGS := {settings}")
            twin = config.masked_twin(cfg)  # notebook 07 shows its Table 1 once it is evaluated
            twin_cfg = config.load_profile(twin, args.overrides) if twin else None
            audit_inputs = [twin_cfg.eval_dir(m) / "metrics.json" for m in cfg.train.models] if twin_cfg else []
            print(f"AUDIT_INPUTS := {' '.join(map(str, audit_inputs))}")
        elif args.command == "sweep":
            return run_sweep_command(args.sweep, args.overrides)
    except KvasirError as exc:
        runner.print_last(f"error: {exc}")
        return 1
    except runner.Interrupted as exc:
        runner.print_last(f"interrupted: {exc}. Finished steps and epochs are kept: {runner.resume_hint()} "
                          "goes on from there.")
        return 130
    except KeyboardInterrupt:
        runner.print_last(f"interrupted: {runner.resume_hint()} goes on where it stopped.")
        return 130
    return 0
