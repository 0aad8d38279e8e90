"""``make cross-evaluate RUN=paper TARGET=hyperkvasir``: a run's trained models scored on another
dataset (``train.cross``), its tables saved under ``reports/<run>/cross/<target>/tables/`` and the
headline printed: the overlap count and the score with and without those images, beside the
models' validation numbers on their own dataset.
"""

from __future__ import annotations

from pathlib import Path

from kvasir_utils import profiles
from kvasir_utils.artefacts import model_folder, model_named
from kvasir_utils.errors import KvasirError
from kvasir_utils.report import outputs


def cross_report_dir(source, target) -> Path:
    return source.report.cross_dir(target.profile)


def run_cross_evaluation(run: str, target: str, overrides: list[str], mapping: str | None = None,
                         model: str | None = None) -> Path:
    """Cross-evaluate and save every table; returns the folder of the tables. ``overrides`` (SET)
    apply to both profiles (the folders they share, a smaller test run)."""
    from kvasir_utils.train.cross import cross_evaluate

    source, goal = profiles.load_profile(run, overrides), profiles.load_profile(target, overrides)
    if model is not None and (model := model_named(source.train.models, model)) is None:
        raise KvasirError(f"--model is not a model of profile {source.profile}: {', '.join(source.train.models)}")
    found = cross_evaluate(source, goal, Path(mapping) if mapping else None, [model] if model else None)
    folder = cross_report_dir(source, goal)
    outputs.save_table(found.summary, folder, "summary")
    outputs.save_table(found.mapping_table, folder, "mapping")
    outputs.save_table(found.left_out, folder, "left_out")
    for name, tables in found.tables.items():
        for kind, table in tables.items():
            outputs.save_table(table, folder, f"{model_folder(name)}_{kind}")
    print(f"{source.profile} ({', '.join(found.summary.index)}) on {goal.profile}, through {found.mapping.path.name}")
    if len(found.left_out):
        print("left out (no counterpart): " + ", ".join(f"{r['class']} ({r['images']})"
                                                         for r in found.left_out.to_dict("records")))
    for name, row in found.summary.iterrows():
        own = "not evaluated (notebook 04)" if row.isna()["source_accuracy"] else f"{row['source_accuracy']:.4f}"
        print(f"{name}: validation accuracy on {source.profile} {own}; on {goal.profile} {row['target_accuracy']:.4f} "
              f"({int(row['target_images'])} images), {int(row['overlap_images'])} of them with a near-identical "
              f"frame in its training set; without them {row['target_without_overlap_accuracy']:.4f}")
    return folder / "tables"
