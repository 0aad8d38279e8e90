"""Command line used by the Makefile: run notebooks headlessly, render the reports, run sweeps.

    python -m kvasir_utils run-notebook 02_train --profile smoke --model resnet50 --set train.stage1.epochs=1
    python -m kvasir_utils report --profile smoke
    python -m kvasir_utils makevars --profile smoke
    python -m kvasir_utils sweep smoke-seeds --set paths.runs=/tmp/runs
    python -m kvasir_utils cross-evaluate --profile paper --target hyperkvasir
    python -m kvasir_utils predict --profile smoke --model resnet50 --images path/to/folder
    python -m kvasir_utils export --profile smoke --model resnet50
    python -m kvasir_utils splits --profile smoke
    python -m kvasir_utils lab --profile smoke
    python -m kvasir_utils bench --scale small
    python -m kvasir_utils gpu-check --scale small --cpu --parts epoch

Every failure ends with one line on stderr that says what went wrong, and a non-zero exit.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path

from kvasir_utils import profiles
from kvasir_utils.artefacts import model_folder
from kvasir_utils.config import PROJECT_ROOT
from kvasir_utils.errors import KvasirError
from kvasir_utils.files import folder_lock, write_text_atomic
from kvasir_utils.run import signals
from kvasir_utils.run.notebooks import (
    NOTEBOOKS,
    check_make_path,
    checkout_environment,
    executed_notebook_path,
    record_failure,
    run_notebook,
    write_settings_stamp,
    write_source_stamp,
)


def run_sweep_command(name: str, overrides: list[str]) -> int:
    """``make sweep``: validate every run, run the unfinished ones on Ray, then notebook 06 and the
    sweep's report. Returns the exit code: 1 when a run failed (the others still count)."""
    # imported here: Ray, torch and torchvision cost every other command seconds to import
    from kvasir_utils.run import sweep_execute, sweep_spec
    from kvasir_utils.run.sweep_aggregate import aggregate_sweep

    spec = sweep_spec.load_sweep(name, overrides)
    print(f"sweep {spec.name}: {len(spec.members)} run(s) of profile {spec.base.profile}, results under {spec.run_dir}")
    with folder_lock(spec.run_dir, f"sweep {spec.name}", wait=False):  # one driver per sweep folder
        outcome = sweep_execute.run_sweep(spec)
        if outcome.skipped:
            print(f"{len(outcome.skipped)} run(s) finished earlier and were not run again")
        print(f"wrote {aggregate_sweep(spec, name, overrides)}")
    if outcome.failed:
        listing = "\n".join(f"  {member}: {error}" for member, error in outcome.failed.items())
        print(f"error: {len(outcome.failed)} of {len(spec.members)} run(s) failed (each run's output is in "
              f"member.log in its folder under {spec.run_dir / 'members'}):\n{listing}", file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kvasir_utils", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str, profile: bool = True) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_text)
        if profile:
            cmd.add_argument("--profile", default="paper", help="profile name or path to a YAML file")
        cmd.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="dotted override, e.g. train.stage1.epochs=1 (repeatable)")
        cmd.add_argument("--go-on", default=None, metavar="COMMAND",
                         help="the command that goes on after an interrupt, as the user typed it (the Makefile's)")
        cmd.add_argument("--failure-file", type=Path, default=None,
                         help="write the failing step, its exit code and its error here as JSON (a sweep member's)")
        return cmd

    run = add("run-notebook", "execute one notebook with papermill")
    run.add_argument("notebook", choices=NOTEBOOKS)
    run.add_argument("--model", default=None)
    add("report", "render the executed notebooks to HTML and write index.html")
    add("makevars", "check the profile and print its folders and models as make variables").add_argument(
        "--no-weights-check", action="store_true", help="skip the offline weights check (make clean)")
    add("docs", "write the tables of docs/ that are made from the code (the paper's readings)", profile=False)
    predict = add("predict", "predict a folder of images with a trained model: predictions.csv and an HTML gallery")
    predict.add_argument("--model", required=True)
    predict.add_argument("--images", required=True, help="a folder of images (searched recursively) or one image")
    predict.add_argument("--name", default=None, help="folder under reports/<profile>/predict/ (default: the images')")
    add("export", "write a trained model as ONNX with preprocessing.json, checked against PyTorch").add_argument(
        "--model", required=True)
    add("splits", "write the dataset's random and near-duplicate-grouped split files with a README")
    lab = add("lab", "open the notebooks in JupyterLab on --profile: a notebook run by hand (Run all) takes it")
    lab.add_argument("--session-only", action="store_true", help="write the session file, do not start JupyterLab")
    sweep_cmd = add("sweep", "run a sweep's members on Ray, then aggregate them (notebook 06)", profile=False)
    sweep_cmd.add_argument("sweep", help="sweep name (configs/sweeps/<name>.yaml) or path to a sweep file")
    cross_cmd = add("cross-evaluate", "score the trained models of --profile on the dataset of --target")
    cross_cmd.add_argument("--target", required=True, help="the profile whose dataset the models are scored on")
    cross_cmd.add_argument("--mapping", default=None, help="class mapping file (default: configs/mappings/"
                           "<target data.dataset>-to-<source data.dataset>.yaml)")
    cross_cmd.add_argument("--model", default=None, help="one model of the run (default: every one)")
    _add_bench_commands(sub)
    return parser


def _add_bench_commands(sub) -> None:
    """``make bench`` and ``make gpu-check``: their options, checked by kvasir_utils.bench (which imports torch)."""
    bench = sub.add_parser("bench", help="measure the stages here and project the paper protocol: bench.json")
    bench.add_argument("--scale", default="paper", help="paper (default), or small: every part on a few tiny "
                       "images with one small model, uncompiled (what the tests run; not the protocol's figures)")
    bench.add_argument("--baseline", action="store_true",
                       help="also measure the stages eager with every validation pass whole (before/after in one run)")
    bench.add_argument("--images-per-class", type=int, default=None,
                       help="generated full-size images per class for the component figures (default: the scale's)")
    bench.add_argument("--steps", type=int, default=None,
                       help="timed training steps per component figure (default: the scale's)")
    bench.add_argument("--stage-images", type=int, default=None,
                       help="generated images per class for the measured stages, 80%% of them train "
                       "(default: the scale's)")
    bench.add_argument("--out", type=Path, default=None, help="the JSON file (default: reports/bench/bench.json; "
                       "with --check, reports/bench/check.json)")
    bench.add_argument("--check", metavar="PROFILE", default=None,
                       help="measure nothing: put bench.json's projection beside PROFILE's finished run (make evaluate "
                       "PROFILE=bench-check, from an empty compile cache: the protocol on a tenth of the images; or "
                       "bench-check-epoch) and write check.json")
    bench.add_argument("--bench", type=Path, default=None, help="with --check: the bench results to compare "
                       "(default: reports/bench/bench.json)")
    gpu = sub.add_parser("gpu-check", help="on a GPU: paper-scale epoch, whole protocol, concurrent runs, a "
                         "sweep's hours: gpu_check.json")
    gpu.add_argument("--scale", default="paper", help="paper (default), or small: a few small images")
    gpu.add_argument("--parts", nargs="+", default=None, metavar="PART",
                     help="some of epoch, protocol, concurrency, sweep (default: all four)")
    gpu.add_argument("--sweep", default=None, help="the sweep the sweep part prices (default: leakage; "
                     "with --scale small, smoke-leakage)")
    gpu.add_argument("--sweep-steps", type=int, default=None, help="timed steps a model and stage in the sweep "
                     "part (default: 20; with --scale small, 2)")
    gpu.add_argument("--cpu", action="store_true", help="measure this machine's CPU (where no GPU is)")
    gpu.add_argument("--out", type=Path, default=None, help="the JSON file (default: reports/bench/gpu_check.json)")
    gpu.add_argument("--work", type=Path, default=None,
                     help="where the generated data and runs go, reused by a second run (default: data/gpu-check)")


def _terminate(signum, _frame):
    raise KeyboardInterrupt  # SIGTERM (a scheduler, a sweep) stops like Ctrl-C: files are closed, temp files removed


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _command(args, signals.Terminal())
    finally:
        signal.signal(signal.SIGTERM, previous)


# The commands that write their files whole or not at all, and whose rerun starts over; the others
# go on from what they finished (epochs, notebooks, sweep members, the data stage's cache).
STARTING_OVER = {"predict", "export", "report"}


def _record_failure(args, error: str, exit_code: int) -> None:
    step = args.notebook + (f" ({args.model})" if args.model else "") if args.command == "run-notebook" \
        else args.command
    record_failure(getattr(args, "failure_file", None), step, error, exit_code)


def _command(args, terminal: signals.Terminal) -> int:
    go_on = signals.resume_hint(getattr(args, "go_on", None))
    try:
        return _dispatch(args, terminal)
    except KvasirError as exc:
        _record_failure(args, str(exc), 1)
        terminal.print_last(f"error: {exc}")
        return 1
    except signals.Interrupted as exc:
        _record_failure(args, f"interrupted: {exc}", 130)
        terminal.print_last(f"interrupted: {exc}. Finished steps and epochs are kept: {go_on} goes on from there.")
        return 130
    except KeyboardInterrupt:
        _record_failure(args, "interrupted", 130)
        if args.command in STARTING_OVER:
            terminal.print_last(f"interrupted: nothing half-written is left; {go_on} starts it over.")
        else:
            terminal.print_last(f"interrupted: {go_on} goes on where it stopped.")
        return 130


def _dispatch(args, terminal: signals.Terminal) -> int:
    if args.command == "run-notebook":
        print(f"wrote {run_notebook(args.notebook, args.profile, args.overrides, args.model, terminal)}")
    elif args.command == "report":
        from kvasir_utils.report import site

        cfg = profiles.load_profile(args.profile, args.overrides)
        print(f"wrote {site.render_reports(cfg)}")
    elif args.command == "makevars":
        cfg = profiles.load_profile(args.profile, args.overrides)
        check_make_path(cfg.run_dir)
        check_make_path(cfg.report_dir)
        if not args.no_weights_check and weights_still_needed(cfg):
            from kvasir_utils.train.weights import check_weights_offline  # imports torch: only here

            check_weights_offline(cfg)
        settings = write_settings_stamp(cfg)
        print(f"RUN_DIR := {cfg.run_dir}")
        print(f"REPORT_DIR := {cfg.report_dir}")
        print(f"MODELS := {' '.join(model_folder(m) for m in cfg.train.models)}")  # no colon in a target
        print(f"SETTINGS := {settings}")
        print(f"SOURCE := {write_source_stamp(cfg)}")
        masked = profiles.masked_profile(cfg)  # notebook 07 shows its Table 1 once it is evaluated
        masked_cfg = profiles.load_profile(masked, args.overrides) if masked else None
        audit_inputs = [masked_cfg.run.metrics(m) for m in cfg.train.models] if masked_cfg else []
        print(f"AUDIT_INPUTS := {' '.join(map(str, audit_inputs))}")
    elif args.command == "predict":  # exit 3 (SKIPPED_EXIT) when a file could not be read
        from kvasir_utils.run.predict_folder import predict_folder

        cfg = profiles.load_profile(args.profile, args.overrides)
        outcome = predict_folder(cfg, args.model, args.images, args.name)
        print(outcome.describe())
        return outcome.exit_code
    elif args.command == "export":
        from kvasir_utils.train.export import export_model

        cfg = profiles.load_profile(args.profile, args.overrides)
        print(export_model(cfg, args.model).describe())
        return refresh_index(cfg)
    elif args.command == "sweep":
        return run_sweep_command(args.sweep, args.overrides)
    elif args.command == "lab":
        return open_lab(args.profile, args.overrides, args.session_only)
    elif args.command == "splits":
        from kvasir_utils.run.splits import write_splits

        cfg = profiles.load_profile(args.profile, args.overrides)
        print(f"wrote {write_splits(cfg)}")
        return refresh_index(cfg)
    elif args.command == "docs":
        print(f"wrote {write_readings_doc()}")
    elif args.command == "cross-evaluate":
        from kvasir_utils.run.cross_report import run_cross_evaluation

        print(f"wrote {run_cross_evaluation(args.profile, args.target, args.overrides, args.mapping, args.model)}")
    elif args.command in ("bench", "gpu-check"):
        _run_bench(args)
    return 0


def refresh_index(cfg) -> int:
    """Render the profile's reports again where its index exists, so that it links what ``make export``
    or ``make splits`` just wrote (else it would still say which command writes it). What was written
    stands whatever happens here: a failure is a warning with the command that renders them (exit 0),
    an interrupt says the same (exit 130)."""
    from kvasir_utils.report import site

    if not cfg.report.index.exists():
        return 0
    sets = f" SET={shlex.quote(' '.join(cfg.overrides))}" if cfg.overrides else ""  # the same run's settings
    hint = f"`make report PROFILE={shlex.quote(cfg.profile_argument)}{sets}` renders it again"
    try:
        print(f"updated {site.render_reports(cfg)}")
    except (KeyboardInterrupt, signals.Interrupted):
        print(f"interrupted while rendering the index again; what was written before stands; {hint}",
              file=sys.stderr)
        return 130
    except Exception as exc:  # nbconvert, Jinja, a file: the export or the split files are written all the same
        print(f"warning: the index was not updated ({type(exc).__name__}: {exc}); {hint}", file=sys.stderr)
    return 0


def open_lab(profile: str, overrides: list[str], session_only: bool = False) -> int:
    """``make lab``: notebooks run by hand take ``profile`` (``profiles.notebook_profile``); say
    whether its run is there to look at, then start JupyterLab on the notebooks."""
    import subprocess

    folder = PROJECT_ROOT / "notebooks"
    print(f"wrote {profiles.write_lab_session(profile, overrides, folder)}: a notebook run by hand takes "
          f"profile {profile}" + (f" with {' '.join(overrides)}" if overrides else ""))
    cfg = profiles.load_profile(profile, overrides)
    if not cfg.run.split.exists():
        print(f"profile {profile} has no run yet ({cfg.run_dir}): run it first (make smoke, or make reproduce "
              f"PROFILE={profile}), or run the notebooks in order from 01")
    if session_only:
        return 0
    return subprocess.call([str(Path(sys.executable).parent / "jupyter"), "lab", str(folder)],
                           env=checkout_environment())  # its kernels import this checkout


def weights_still_needed(cfg) -> bool:
    """Whether a step that loads pretrained weights offline is still to run: notebook 01 (the
    near-duplicate features detector) or a model's 02 (stage 1 starts from them). A finished run
    re-rendered, or a later stage, loads checkpoints only."""
    if not cfg.runtime.offline or (cfg.train.weights is None and not cfg.train.weights_files):
        return False
    stamps = [executed_notebook_path(cfg, "01_download_and_split"),
              *(executed_notebook_path(cfg, "02_train", model) for model in cfg.train.models)]
    return not all(stamp.exists() for stamp in stamps)


def _run_bench(args) -> None:
    # imported here: torch costs every other command seconds to import; each prints "wrote <file>"
    if args.command == "bench" and args.check:
        from kvasir_utils.bench import check

        check.run(profiles.load_profile(args.check, []), args.bench or check.OUT, args.out or check.CHECK_OUT)
    elif args.command == "bench":
        from kvasir_utils.bench import projection

        scale = projection.scale_named(args.scale, images_per_class=args.images_per_class, steps=args.steps,
                                       stage_images=args.stage_images)
        projection.run(scale, args.out or projection.OUT, args.baseline)
    else:
        from kvasir_utils.bench import gpucheck

        parts, work, priced = args.parts or list(gpucheck.PARTS), args.work or gpucheck.WORK, None
        if args.sweep and "sweep" not in parts:
            raise KvasirError(f"--sweep {args.sweep} names the sweep that the sweep part prices: add sweep to --parts")
        if "sweep" in parts:  # read, and its models built on the meta device, before anything is measured
            from kvasir_utils.run.sweep_spec import load_sweep

            overrides = gpucheck.sweep_overrides(gpucheck.check_device(args.cpu), work)
            sweep = load_sweep(args.sweep or gpucheck.scale_named(args.scale).sweep, overrides)
            priced = (sweep.name, [(member.name, member.model, member.cfg) for member in sweep.members])
        gpucheck.run(args.scale, parts, args.out or gpucheck.OUT, work, args.cpu, priced, args.sweep_steps)


READINGS_DOC = PROJECT_ROOT / "docs" / "paper-readings.md"
MARKERS = ("<!-- made from kvasir_utils/analysis/paper.py by `make docs`: start -->",
           "<!-- made from kvasir_utils/analysis/paper.py by `make docs`: end -->")


def readings_doc_text(text: str) -> str:
    """``text`` (docs/paper-readings.md) with the table between its markers made anew from AMBIGUITIES."""
    from kvasir_utils.analysis import paper

    before, _, rest = text.partition(MARKERS[0])
    _, _, after = rest.partition(MARKERS[1])
    return f"{before}{MARKERS[0]}\n{paper.readings_markdown()}\n{MARKERS[1]}{after}"


def write_readings_doc() -> Path:
    return write_text_atomic(READINGS_DOC, readings_doc_text(READINGS_DOC.read_text()))
