"""Command line used by the Makefile: run a notebook headlessly, render the reports, print paths.

    python -m kvasir_utils run-notebook 02_train --profile smoke --model resnet50 --set train.stage1.epochs=1
    python -m kvasir_utils report --profile smoke
    python -m kvasir_utils makevars --profile smoke

Every failure ends with one line on stderr that says what went wrong, and a non-zero exit.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from kvasir_utils import config
from kvasir_utils.errors import KvasirError
from kvasir_utils.io import folder_lock, write_text_atomic

NOTEBOOKS = ("01_download_and_split", "02_train", "03_finetune", "04_evaluate", "05_compare")
PER_MODEL = {"02_train", "03_finetune", "04_evaluate"}
NOTEBOOK_SOURCE_DIR = config.PROJECT_ROOT / "notebooks"


def executed_notebook_path(cfg: config.Config, name: str, model: str | None = None) -> Path:
    """Where the executed copy of a notebook goes; the Makefile uses it as the step's stamp."""
    return cfg.notebook_dir / (f"{name}-{model}.ipynb" if model else f"{name}.ipynb")


def write_settings_stamp(cfg: config.Config) -> Path:
    """``settings.yaml``: what changes results; rewritten only when it changes, so the Makefile
    reruns the steps after a settings change and nothing after a mere rerun."""
    path = cfg.run_dir / "settings.yaml"
    text = yaml.safe_dump(cfg.science_dict(), sort_keys=False)
    if not path.exists() or path.read_text() != text:
        write_text_atomic(path, text)
    return path


def run_notebook(name: str, profile: str, overrides: list[str], model: str | None = None) -> Path:
    """Execute ``notebooks/<name>.ipynb`` with papermill; the result appears only if it succeeded."""
    import papermill

    if name not in NOTEBOOKS:
        raise KvasirError(f"unknown notebook {name!r}; expected one of {', '.join(NOTEBOOKS)}")
    if (name in PER_MODEL) != (model is not None):
        raise KvasirError(f"notebook {name} {'needs' if name in PER_MODEL else 'takes no'} --model")
    cfg = config.load_profile(profile, overrides)
    profile = config.profile_reference(profile)  # the kernel runs in notebooks/: a relative path would break
    if model is not None and model not in cfg.train.models:
        raise KvasirError(f"model {model!r} is not in train.models of profile {cfg.profile}: {cfg.train.models}")
    out = executed_notebook_path(cfg, name, model)
    out.parent.mkdir(parents=True, exist_ok=True)
    failed = out.with_suffix(".failed.ipynb")
    parameters = {"PROFILE": str(profile), "OVERRIDES": list(overrides)}
    if model is not None:
        parameters["MODEL"] = model
    try:
        with folder_lock(cfg.run_dir, f"running {out.stem}", wait=False):
            papermill.execute_notebook(
                str(NOTEBOOK_SOURCE_DIR / f"{name}.ipynb"), str(failed), parameters=parameters,
                cwd=str(NOTEBOOK_SOURCE_DIR), kernel_name="python3", progress_bar=False,
                stdout_file=sys.stdout, stderr_file=sys.stderr,
            )
    except papermill.PapermillExecutionError as exc:
        raise KvasirError(f"{name}{f' ({model})' if model else ''} failed: {exc.ename}: {exc.evalue}\n"
                          f"  the executed notebook, up to the failing cell, is {failed}") from None
    os.replace(failed, out)
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kvasir_utils", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--profile", default="paper", help="profile name or path to a YAML file")
        cmd.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="dotted override, e.g. train.stage1.epochs=1 (repeatable)")
        return cmd

    run = add("run-notebook", "execute one notebook with papermill")
    run.add_argument("notebook", choices=NOTEBOOKS)
    run.add_argument("--model", default=None)
    add("report", "render the executed notebooks to HTML and write index.html")
    add("makevars", "print the profile's folders and models as make variables")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run-notebook":
            print(f"wrote {run_notebook(args.notebook, args.profile, args.overrides, args.model)}")
        elif args.command == "report":
            from kvasir_utils import report

            cfg = config.load_profile(args.profile, args.overrides)
            print(f"wrote {report.render_reports(cfg)}")
        elif args.command == "makevars":
            from kvasir_utils import models

            cfg = config.load_profile(args.profile, args.overrides)
            models.check_profile(cfg)  # every model x reading, before the pipeline does anything
            print(f"RUN_DIR := {cfg.run_dir}")
            print(f"REPORT_DIR := {cfg.report_dir}")
            print(f"MODELS := {' '.join(cfg.train.models)}")
            print(f"SETTINGS := {write_settings_stamp(cfg)}")
    except KvasirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
