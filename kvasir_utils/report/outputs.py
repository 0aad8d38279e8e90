"""What the notebooks show and save: the banner on every page, tables as CSV / Markdown / LaTeX,
figures as PNG / SVG.
"""

from __future__ import annotations

import html
import io
from pathlib import Path

import pandas as pd

from kvasir_utils.config import Config
from kvasir_utils.io import write_bytes_atomic, write_text_atomic
from kvasir_utils.provenance import provenance_line

# Machine names of the study's tables (CSV columns and index entries) -> what a reader sees.
LABELS = {
    "run": "this run", "paper": "paper", "difference": "difference", "accuracy": "accuracy",
    "macro_f1": "macro F1", "macro_auc": "macro ROC-AUC", "weighted_f1": "weighted F1",
    "accuracy_paper": "accuracy (paper)", "accuracy_ci_low": "accuracy CI low", "accuracy_ci_high": "accuracy CI high",
    "macro_f1_paper": "macro F1 (paper)", "macro_f1_ci_low": "macro F1 CI low", "macro_f1_ci_high": "macro F1 CI high",
    "macro_auc_paper": "macro ROC-AUC (paper)", "ece": "ECE", "brier": "Brier", "parameters_m": "parameters (M)",
    "gflops": "GFLOPs per image", "train_seconds": "training time (s)", "inference_images_per_s": "inference images/s",
    "images": "images", "masked_accuracy": "accuracy with the box masked",
    "change": "change (masked - unmasked)", "masked_change": "change with the box masked (masked - unmasked)",
    "twin_share": "validation images with a near-duplicate in training",
    "accuracy_with_twin": "accuracy on those", "accuracy_without_twin": "accuracy on the others",
    "twin_gap": "gap (with - without a near-duplicate)", "with_twin": "with a near-duplicate in training",
    "without_twin": "without", "paper_words": "the paper says", "value": "this run",
    "default": "the protocol's reading", "others": "other readings",
    "only_first_correct": "only the first right", "only_second_correct": "only the second right",
    "p_value": "p-value",
    "f1": "F1", "roc_auc": "ROC-AUC", "box_share": "frames with the guide box",
    "other_region": "predicted as a class of the other region",
}


def labelled(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its machine names (columns, index, MultiIndex levels) shown as ``LABELS`` says."""
    return frame.rename(index=lambda v: LABELS.get(v, v), columns=lambda v: LABELS.get(v, v))


GENERATED_WARNING = (
    "Generated data: these results come from the synthetic Kvasir-shaped archive of the "
    "'{profile}' profile and mean nothing about Kvasir or endoscopy."
)


BANNER_STYLE = (".kvasir-banner{background:#fff3cd;border:2px solid #e0a800;padding:0.8em 1em;"
                "margin:0 0 1em;font-weight:bold}"
                ".kvasir-provenance{font-weight:normal;font-size:0.8em;margin-top:0.4em;word-break:break-all}")


# -- in the notebooks ---------------------------------------------------------------------
def banner_html(cfg: Config, about: str = "") -> str:
    """The box on top of every page: the profile (or what ``about`` says), for generated data the
    warning that the numbers mean nothing about Kvasir, and where the result came from (commit,
    lock, overrides, dataset archive)."""
    text = about or f"Profile '{cfg.profile}'."
    if cfg.generated_data:
        text = f"{about} {GENERATED_WARNING.format(profile=cfg.profile)}".strip()
    return (f'<style>{BANNER_STYLE}</style><div class="kvasir-banner">{html.escape(text)}'
            f'<div class="kvasir-provenance">{html.escape(provenance_line(cfg))}</div></div>')


def show_banner(cfg: Config, about: str = "") -> None:
    """Display the banner at the top of a notebook (the rendered page shows it from there)."""
    from IPython.display import HTML, display

    display(HTML(banner_html(cfg, about)))


def _flat_columns(frame: pd.DataFrame) -> pd.DataFrame:
    if isinstance(frame.columns, pd.MultiIndex):
        frame = frame.copy()
        frame.columns = [" ".join(str(part) for part in col).strip() for col in frame.columns]
    return frame


def _has_labels(frame: pd.DataFrame) -> bool:
    """Whether the index says something (row names), or is just 0, 1, 2, ..."""
    return not isinstance(frame.index, pd.RangeIndex)


def to_markdown(frame: pd.DataFrame) -> str:
    """A table as GitHub Markdown (pandas' ``to_markdown``), four decimals, empty where nothing is known."""
    frame = _flat_columns(frame)
    index = _has_labels(frame)
    cells = labelled(frame).astype(object).where(frame.notna().to_numpy(), None)  # None prints as missingval
    return cells.to_markdown(index=index, floatfmt=".4f", missingval="") + "\n"


def _report_dir(target: Config | Path) -> Path:
    """A profile's report folder, or a folder given as such (a sweep's)."""
    return target.report_dir if isinstance(target, Config) else Path(target)


def save_table(frame: pd.DataFrame, target: Config | Path, name: str) -> Path:
    """Write ``<report folder>/tables/<name>.{csv,md,tex}``; returns the CSV path."""
    folder = _report_dir(target) / "tables"
    flat = _flat_columns(frame)
    write_text_atomic(folder / f"{name}.csv", flat.to_csv(float_format="%.6g", index=_has_labels(flat)))
    write_text_atomic(folder / f"{name}.md", to_markdown(frame))
    write_text_atomic(folder / f"{name}.tex", flat.to_latex(float_format="%.4f", na_rep="", index=_has_labels(flat)))
    return folder / f"{name}.csv"


def save_figure(fig, target: Config | Path, name: str) -> Path:
    """Write ``<report folder>/figures/<name>.png`` (for the reports) and ``.svg`` (for papers)."""
    folder = _report_dir(target) / "figures"
    for ext in ("png", "svg"):
        encoded = io.BytesIO()
        fig.savefig(encoded, format=ext, dpi=150, bbox_inches="tight")
        write_bytes_atomic(folder / f"{name}.{ext}", encoded.getvalue())
    return folder / f"{name}.png"
