"""``make bench BENCH="--check PROFILE"``: the bench's projection beside a real run of the notebooks.

``make bench`` projects the protocol from two short epochs a stage. This puts that projection,
made for the sizes of PROFILE's finished run (``make evaluate PROFILE=bench-check``: the paper's
protocol, every epoch, on a tenth of Kvasir's size in generated full-size frames; or
``bench-check-epoch``, one epoch a stage on 1,000), beside what the run took on the same machine. The
bench compiles each stage from an empty compile cache, as a first run does: the run is made so too
(``TORCHINDUCTOR_CACHE_DIR`` an empty folder), or a warm cache makes it look quicker than projected.
What is compared:
  - each stage: its epochs' seconds from ``history.csv`` (training and the validation pass, what
    the projection models) and the whole notebook's wall time (start-up, model building, saving);
  - the data stage against notebook 01, the evaluation against notebook 04 (wall times; both do
    more than the projection counts: the near-duplicate detectors, Grad-CAM, the bootstrap).
The stages' epochs must agree within ``AGREEMENT`` (15%); the notebook totals are shown with what
the projection leaves out, so a gap there is explained rather than hidden. Writes
``reports/bench/check.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from kvasir_utils.bench.projection import OUT, project_protocol
from kvasir_utils.config import Config
from kvasir_utils.errors import KvasirError
from kvasir_utils.files import write_json_atomic
from kvasir_utils.provenance import describe_cpu, environment

AGREEMENT = 0.15  # the issue's bound on |measured / projected - 1| for the stages' epochs
CHECK_OUT = OUT.with_name("check.json")
STAGE_NOTEBOOKS = {"stage1": "02_train", "stage2": "03_finetune"}


def read_bench(path: Path) -> dict:
    """A paper-scale ``bench.json`` measured on this CPU; anything else is an error with the remedy."""
    if not path.exists():
        raise KvasirError(f"no bench results at {path}: run `make bench` first (it writes them)")
    bench = json.loads(path.read_text())
    if bench.get("scale", {}).get("settings"):
        raise KvasirError(f"{path} was measured at a reduced scale ({' '.join(bench['scale']['settings'])}), whose "
                          "figures are not the protocol's: run `make bench` (paper scale) first")
    machine, measured = environment(), bench.get("machine", {})
    here, there = describe_cpu(machine), describe_cpu(measured)
    if here != there:
        raise KvasirError(f"{path} was measured on another CPU ({there}; this is {here}): run `make bench` here first")
    cores_here, cores_there = machine["usable_cores"], measured.get("usable_cores")
    if cores_there is not None and cores_there != cores_here:
        raise KvasirError(f"{path} was measured on {cores_there} cores and this process may use {cores_here}: "
                          "run `make bench` here first")
    return bench


def notebook_seconds(path: Path) -> float:
    """An executed notebook's wall time as papermill recorded it."""
    if not path.exists():
        raise KvasirError(f"{path} is missing: the run is not finished (`make evaluate PROFILE=<profile>` runs it)")
    return float(json.loads(path.read_text())["metadata"]["papermill"]["duration"])


def compare(cfg: Config, bench: dict) -> pd.DataFrame:
    """One row per part of the run: projected seconds, the measured epochs' seconds (stages only)
    and the notebook's wall time, with their ratios to the projection."""
    measured = bench["measured"]
    projection = project_protocol(cfg, measured)
    images = cfg.data.expected_per_class * len(cfg.data.classes)
    rows = [{"part": "data stage", "notebook": "01_download_and_split",
             "projected_s": images * measured["data_stage_seconds_per_image"], "epochs_s": None,
             "notebook_s": notebook_seconds(cfg.run.executed_notebook("01_download_and_split"))}]
    for row in projection["stages"]:
        model, stage = row["model"], row["stage"]
        if not cfg.run.history(model, stage).exists():
            raise KvasirError(f"{cfg.run.history(model, stage)} is missing: the run is not finished (`make evaluate "
                              f"PROFILE={cfg.profile_argument}` runs it)")
        history = pd.read_csv(cfg.run.history(model, stage))
        if len(history) != cfg.stage_config(stage).epochs:
            raise KvasirError(f"{cfg.run.history(model, stage)} has {len(history)} epochs where the profile trains "
                              f"{cfg.stage_config(stage).epochs}: finish the run first")
        path = cfg.run.executed_notebook(STAGE_NOTEBOOKS[stage], model)
        rows.append({"part": f"{model} {stage}", "notebook": path.stem, "projected_s": row["seconds"],
                     "epochs_s": float(history["seconds"].sum()), "notebook_s": notebook_seconds(path)})
    for model, seconds in projection["evaluation_seconds"].items():
        path = cfg.run.executed_notebook("04_evaluate", model)
        rows.append({"part": f"{model} evaluation", "notebook": path.stem, "projected_s": seconds,
                     "epochs_s": None, "notebook_s": notebook_seconds(path)})
    frame = pd.DataFrame(rows)
    frame["epochs_vs_projected"] = frame["epochs_s"] / frame["projected_s"]
    frame["notebook_vs_projected"] = frame["notebook_s"] / frame["projected_s"]
    return frame


def summarise(frame: pd.DataFrame, generated: bool = False) -> dict:
    """The stages' epochs against their projection (the check), and the whole run's notebooks
    against the whole projection, with the parts the projection leaves out."""
    stages = frame[frame["epochs_s"].notna()]
    ratio = float(stages["epochs_s"].sum() / stages["projected_s"].sum())
    whole = float(frame["notebook_s"].sum() / frame["projected_s"].sum())
    outside = float((stages["notebook_s"] - stages["epochs_s"]).sum())
    return {"stages_epochs_vs_projected": ratio, "agrees": abs(ratio - 1) <= AGREEMENT, "generated_data": generated,
            "notebooks_vs_projected": whole, "stage_notebooks_outside_epochs_s": outside,
            "parts_beyond_agreement": [p for p, r in zip(stages["part"], stages["epochs_vs_projected"])
                                       if abs(r - 1) > AGREEMENT]}


def explain(summary: dict, profile: str) -> list[str]:
    """The check of ``profile``'s run in words, with why where it does not hold and what to do."""
    ratio = summary["stages_epochs_vs_projected"]
    lines = [f"the stages' epochs took {ratio:.2f}x the projection "
             + (f"(within {AGREEMENT:.0%}: the bench's rates hold for a real run)" if summary["agrees"] else
                f"(beyond {AGREEMENT:.0%})")]
    if not summary["agrees"] and ratio < 1:
        lines.append("why, most likely: the bench compiles each stage from an empty compile cache, as a first run "
                     "does; a run whose torch.compile cache was warm from earlier runs skips most of that, and the "
                     "shorter the run the more it shows (docs/performance.md has one epoch a stage measured warm "
                     "and cold). Run it again from an empty cache, then check again: "
                     f"make clean PROFILE={profile} && TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) make evaluate "
                     f"PROFILE={profile}, then make bench BENCH=\"--check {profile}\"")
    elif not summary["agrees"]:
        lines.append("why: the bench times two epochs of a slice of images a stage; a run's first epoch also "
                     "compiles and a run under other load drifts (this machine's speed varies between runs); "
                     "rerun `make bench` and the check beside each other on a quiet machine")
    if summary["parts_beyond_agreement"]:
        lines.append(f"stages beyond {AGREEMENT:.0%}: {', '.join(summary['parts_beyond_agreement'])}")
    lines.append(f"the whole run's notebooks took {summary['notebooks_vs_projected']:.2f}x the projection: the "
                 "projection leaves out notebook start-up and model building "
                 f"({summary['stage_notebooks_outside_epochs_s']:.0f} s in the stage notebooks here), notebook 01's "
                 "near-duplicate detectors" + (" and the making of its generated archive" if summary["generated_data"]
                                               else "") + ", and notebook 04's Grad-CAM, bootstrap and figures")
    if summary["parts_beyond_agreement"] and summary["agrees"]:
        lines.append("a stage's own figure moves more than the sum: the bench takes its rate from one short epoch "
                     "(its slice of images), where what every epoch pays once (the loader's start, the first batch) "
                     "weighs more than in a run's longer epochs")
    return lines


def run(cfg: Config, bench_path: Path = OUT, out: Path = CHECK_OUT) -> dict:
    """Compare, print and write ``out``."""
    frame = compare(cfg, read_bench(bench_path))
    summary = summarise(frame, generated=cfg.data.synthetic is not None)
    words = explain(summary, cfg.profile)
    print(frame.round(2).to_string(index=False))
    print("\n".join(words))
    results = {"profile": cfg.profile, "bench": str(bench_path), "machine": environment(),
               "parts": frame.astype(object).where(frame.notna(), None).to_dict(orient="records"), **summary,
               "explanation": words}
    write_json_atomic(out, results)
    print(f"wrote {out}")
    return results
