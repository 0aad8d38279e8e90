"""Gathering a sweep: one row per member with its status and headline numbers, and notebook 06 with
the sweep's page once something new has finished.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kvasir_utils import artefacts, config
from kvasir_utils.analysis import paper
from kvasir_utils.analysis.sweeps import METRICS
from kvasir_utils.data import duplicates
from kvasir_utils.run.notebooks import SWEEP_NOTEBOOK, execute_notebook
from kvasir_utils.run.sweep_execute import read_record
from kvasir_utils.run.sweep_spec import Sweep


# -- gathering the results ----------------------------------------------------------------
def member_results(sweep: Sweep) -> pd.DataFrame:
    """One row per member: its record and, when finished, its headline metrics."""
    rows = []
    for member in sweep.members:
        record = read_record(member) or {"status": "not run", "error": "", "node": None}
        row = {"member": member.name, "model": member.model, "seed": member.seed, "reading": member.reading,
               "default_reading": all(paper.setting_value(member.cfg.to_dict(), k) == v
                                      for k, v in sweep.default_settings.items()),
               "status": record["status"], "error": record.get("error", ""),
               "node": (record.get("node") or {}).get("hostname", ""), "seconds": record.get("seconds"),
               "predictions": str(member.cfg.run.predictions(member.model))}
        metrics_path = member.cfg.run.metrics(member.model)
        if row["status"] == "finished" and not metrics_path.exists():
            row |= {"status": "failed", "error": f"finished, but {metrics_path} is not there (is paths.runs on "
                                                  "storage the driver shares with the nodes?)"}
        elif row["status"] == "finished":
            found = artefacts.read_metrics(metrics_path)
            row |= {metric: found[metric] for metric in METRICS}
            trained = found["trainable_parameters"].get(artefacts.final_stage(member.cfg.train.stage2.epochs))
            row |= {"trainable_parameters": float("nan") if trained is None else trained,
                    "train_seconds": found["train_seconds"], "pairs_across_split": pairs_across_split(member.cfg)}
        rows.append(row)
    return pd.DataFrame(rows)


def pairs_across_split(cfg) -> float:
    """How many of the run's near-duplicate pairs (notebook 01's) straddle its split; NaN for a run
    made before the pairs were written."""
    pairs, record = cfg.run.near_duplicates
    if not (pairs.exists() and record.exists() and cfg.run.split.exists()):
        return float("nan")
    return float(len(duplicates.NearDuplicates.read(pairs, record).across(pd.read_csv(cfg.run.split))))


def aggregation_is_current(sweep: Sweep, executed: Path) -> bool:
    """Whether notebook 06's executed copy is newer than every member record, the sweep file and
    the notebook itself, i.e. there is nothing new to aggregate (a rerun after all finished)."""
    if not executed.exists():
        return False
    inputs = [m.record_path for m in sweep.members if m.record_path.exists()]
    inputs += [sweep.source, config.PROJECT_ROOT / "notebooks" / executed.name]
    return all(p.exists() and p.stat().st_mtime_ns < executed.stat().st_mtime_ns for p in inputs)


def aggregate_sweep(spec, name: str, overrides: list[str]) -> Path:
    """Notebook 06 over the finished runs (skipped when nothing is new), then the sweep's index page."""
    from kvasir_utils.report import site

    executed = spec.run_dir / "notebooks" / f"{SWEEP_NOTEBOOK}.ipynb"
    results = member_results(spec)
    if not (results["status"] == "finished").any():
        return site.render_sweep_report(spec, results, None)  # says that nothing finished; no stale tables
    if aggregation_is_current(spec, executed):
        print("nothing new since the last aggregation")
        return spec.report_dir / "index.html"
    parameters = {"SWEEP": str(spec.source), "OVERRIDES": list(overrides)}
    execute_notebook(SWEEP_NOTEBOOK, parameters, executed, executed.parent, f"{SWEEP_NOTEBOOK} ({spec.name})")
    return site.render_sweep_report(spec, results, executed)
