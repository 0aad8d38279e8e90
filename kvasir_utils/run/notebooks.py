"""Notebooks run headlessly (papermill) as the Makefile's steps: the executed copy is the step's stamp,
written only when every cell succeeded; a failure leaves ``<name>.failed.ipynb`` and one line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from kvasir_utils import config, profiles
from kvasir_utils.artefacts import model_named
from kvasir_utils.data import sources
from kvasir_utils.errors import KvasirError
from kvasir_utils.files import disk_full, folder_lock, is_disk_full, write_json_atomic, write_text_atomic
from kvasir_utils.run import signals

NOTEBOOKS = ("01_download_and_split", "02_train", "03_finetune", "04_evaluate", "05_compare", "07_audit")
PER_MODEL = {"02_train", "03_finetune", "04_evaluate"}
SWEEP_NOTEBOOK = "06_sweep"
NOTEBOOK_SOURCE_DIR = config.PROJECT_ROOT / "notebooks"


def checkout_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (this process's where None) with this checkout first on ``PYTHONPATH``: a kernel starts
    in ``notebooks/``, where ``import kvasir_utils`` would otherwise find whichever checkout the
    environment was installed from (``pip install -e``), so a second clone sharing one environment
    (``VENV=``) would run the first clone's code and write into its folders."""
    env = dict(os.environ if env is None else env)
    paths = [str(config.PROJECT_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))  # this checkout first, each path once
    return env


def record_failure(path: Path | None, step: str, error: str, exit_code: int) -> None:
    """The failing step, its exit code and its error, as fields in ``path`` (``--failure-file``: a
    sweep member's runner asks for them so; nothing is written without one)."""
    if path is not None:
        write_json_atomic(Path(path), {"step": step, "exit_code": exit_code, "error": error})


def executed_notebook_path(cfg: config.Config, name: str, model: str | None = None) -> Path:
    """Where the executed copy of a notebook goes; the Makefile uses it as the step's stamp."""
    return cfg.run.executed_notebook(name, model)


def write_settings_stamp(cfg: config.Config) -> Path:
    """``settings.yaml``: what changes results; rewritten only when it changes, so the Makefile
    reruns the steps after a settings change and nothing after a mere rerun. New settings are
    first checked against every model and reading of the profile (on the meta device, before the
    pipeline does anything); unchanged ones were checked when they were written."""
    path = cfg.run.settings_stamp
    text = yaml.safe_dump(cfg.science_dict(), sort_keys=False)
    if path.exists() and path.read_text() == text:
        return path
    from kvasir_utils.train import models

    models.check_profile(cfg)  # before anything is created
    with folder_lock(cfg.run_dir, "checking the settings", wait=False):  # not under a running run
        return write_text_atomic(path, text)


def source_addresses(cfg: config.Config) -> list[str]:
    """Where the dataset is read from (``data.url``, ``data.mirrors``, ``split.file``); none for
    generated data (the settings make it)."""
    if cfg.generated_data:
        return []
    return [cfg.data.url, *cfg.data.mirrors, *([str(cfg.split_file)] if cfg.split_file is not None else [])]


def source_entries(cfg: config.Config) -> dict:
    """``{address: sources.local_identity}`` for each of ``source_addresses`` that is a local file or
    folder there now. Network addresses have none: they are settings."""
    return {url: identity for url in source_addresses(cfg) if (identity := sources.local_identity(url)) is not None}


def write_source_stamp(cfg: config.Config) -> Path:
    """``source.yaml``: the local sources' identities (``source_entries``), rewritten only when one
    changed, so that make reruns notebook 01, and every step after it, when a file is replaced at the
    same path or a folder's images change; the settings alone cannot see that. A source that has gone
    since keeps its entry: what notebook 01 copied from it under ``paths.data`` is still read. A stamp
    without entries is dated 1970: it then never makes a step older than itself (a first stamp in a
    run made before it existed reruns nothing; a change of address is a change of settings)."""
    path = cfg.run.source_stamp
    recorded = yaml.safe_load(path.read_text()) if path.exists() else None
    recorded = recorded if isinstance(recorded, dict) else {}
    entries = {url: recorded[url] for url in source_addresses(cfg) if url in recorded} | source_entries(cfg)
    text = yaml.safe_dump(entries, sort_keys=False)
    if path.exists() and path.read_text() == text:
        return path
    with folder_lock(cfg.run_dir, "checking the dataset's source", wait=False):  # not under a running run
        write_text_atomic(path, text)
        if not entries:
            os.utime(path, ns=(0, 0))
        return path


def check_make_path(path: Path) -> None:
    """make cannot have these characters in a file name (it reads them as its own syntax)."""
    bad = sorted({c for c in str(path) if c in ":%#$;*?[]" or c.isspace()})
    if bad:
        raise KvasirError(f"the folder {path} contains {' '.join(repr(c) for c in bad)}, which make cannot handle in "
                          "a file name; choose paths.runs / paths.reports (or a profile file name) without them")


def execute_notebook(name: str, parameters: dict, out: Path, lock_folder: Path, what: str,
                     terminal: signals.Terminal | None = None) -> Path:
    """Execute ``notebooks/<name>.ipynb`` with papermill into ``out``, holding ``lock_folder``'s
    lock; the result appears under its name only if every cell succeeded. SIGINT and SIGTERM stop
    the kernel too (``signals.KernelStopper``) and end in ``Interrupted``. The kernel's output goes to
    ``terminal`` (this process's stdout and stderr unless given)."""
    import papermill

    terminal = terminal or signals.Terminal()
    out.parent.mkdir(parents=True, exist_ok=True)
    failed = out.with_suffix(".failed.ipynb")
    stopper = signals.KernelStopper()
    try:
        with folder_lock(lock_folder, f"running {out.stem}", wait=False), stopper:
            papermill.execute_notebook(
                str(NOTEBOOK_SOURCE_DIR / f"{name}.ipynb"), str(failed), parameters=parameters,
                cwd=str(NOTEBOOK_SOURCE_DIR), kernel_name="python3", progress_bar=False,
                stdout_file=terminal.out, stderr_file=terminal.err,
                kernel_manager_class=stopper.kernel_manager_class(checkout_environment()),
                on_cell_execute=stopper.before_cell,
                # the kernel is stopped as soon as its last cell has finished, not asked to exit: every
                # file a cell writes is complete when the cell returns (atomic writes; the stage closes
                # its TensorBoard writer), and a kernel holding torch takes 1-3 s to exit by itself
                shutdown_kernel="immediate",
            )
    except KvasirError:
        raise
    except Exception as exc:  # noqa: BLE001 - a failing cell, a dead kernel, an interrupt: one line each
        if failed.exists():
            terminal.print_last(f"the executed notebook up to there: {failed}")
        if stopper.signum is not None:
            how = "killed after it did not stop in time" if stopper.killed else "stopped"
            raise signals.Interrupted(stopper.signum, f"{what} {how}") from None
        raise KvasirError(f"{what} failed: {_reason(exc)}") from None
    drop_progress_bars(failed)
    os.replace(failed, out)
    return out


PROGRESS = re.compile(r"\r|\d+%\|")  # a tqdm bar redraws its line (carriage return) and shows "42%|"


def drop_progress_bars(path: Path) -> None:
    """Remove the progress bars from an executed notebook: they went to the terminal as the notebook
    ran, and in the saved notebook (and its HTML page) they would only be noise."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr"
                                                              and (PROGRESS.search(o.text) or not o.text.strip()))]
    write_text_atomic(path, nbformat.writes(notebook))


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


def run_notebook(name: str, profile: str, overrides: list[str], model: str | None = None,
                 terminal: signals.Terminal | None = None) -> Path:
    """Execute one of the study's notebooks (01-05) for a profile (and a model)."""
    if name not in NOTEBOOKS:
        raise KvasirError(f"unknown notebook {name!r}; expected one of {', '.join(NOTEBOOKS)}")
    if (name in PER_MODEL) != (model is not None):
        raise KvasirError(f"notebook {name} {'needs' if name in PER_MODEL else 'takes no'} --model")
    cfg = profiles.load_profile(profile, overrides)
    if model is not None:  # the Makefile names a model by its folder (make targets take no colon)
        if (found := model_named(cfg.train.models, model)) is None:
            raise KvasirError(f"model {model!r} is not in train.models of profile {cfg.profile}: {cfg.train.models}")
        model = found
    # the kernel runs in notebooks/: a relative profile path is made absolute
    parameters = {"PROFILE": profiles.profile_reference(profile), "OVERRIDES": list(overrides)}
    if model is not None:
        parameters["MODEL"] = model
    return execute_notebook(name, parameters, executed_notebook_path(cfg, name, model), cfg.run_dir,
                            f"{name}{f' ({model})' if model else ''}", terminal)
