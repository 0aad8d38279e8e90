"""Tables to CSV / Markdown / LaTeX, figures to PNG / SVG, notebooks to HTML, and the index page."""

from __future__ import annotations

import html
import os
from pathlib import Path

import pandas as pd
import yaml

from kvasir_utils import metrics, paper
from kvasir_utils.config import Config
from kvasir_utils.environment import environment
from kvasir_utils.errors import KvasirError
from kvasir_utils.evaluation import read_evaluations
from kvasir_utils.io import atomic_path, write_text_atomic

GENERATED_WARNING = (
    "Generated data: these results come from the synthetic Kvasir-shaped archive of the "
    "'{profile}' profile and mean nothing about Kvasir or endoscopy."
)
BANNER_STYLE = (".kvasir-banner{background:#fff3cd;border:2px solid #e0a800;padding:0.8em 1em;"
                "margin:0 0 1em;font-weight:bold}")
STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}
pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:0.85em}
"""


# -- in the notebooks ---------------------------------------------------------------------
def banner_html(cfg: Config) -> str:
    text = f"Profile '{cfg.profile}'."
    if cfg.generated_data:
        text = GENERATED_WARNING.format(profile=cfg.profile)
    return f'<style>{BANNER_STYLE}</style><div class="kvasir-banner">{html.escape(text)}</div>'


def show_banner(cfg: Config) -> None:
    """Display the profile (and, for generated data, the warning) at the top of a notebook."""
    from IPython.display import HTML, display

    display(HTML(banner_html(cfg)))


def _flat_columns(frame: pd.DataFrame) -> pd.DataFrame:
    if isinstance(frame.columns, pd.MultiIndex):
        frame = frame.copy()
        frame.columns = [" ".join(str(part) for part in col).strip() for col in frame.columns]
    return frame


def to_markdown(frame: pd.DataFrame, floatfmt: str = "{:.4f}") -> str:
    frame = _flat_columns(frame)

    def cell(value) -> str:
        if isinstance(value, float):
            return "" if pd.isna(value) else floatfmt.format(value)
        return str(value)

    header = ["", *map(str, frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([str(index), *map(cell, row)]) + " |" for index, row in zip(frame.index, frame.values)]
    return "\n".join(lines) + "\n"


def save_table(frame: pd.DataFrame, cfg: Config, name: str) -> Path:
    """Write ``reports/<profile>/tables/<name>.{csv,md,tex}``; returns the CSV path."""
    folder = cfg.report_dir / "tables"
    flat = _flat_columns(frame)
    with atomic_path(folder / f"{name}.csv", ".csv") as tmp:
        flat.to_csv(tmp, float_format="%.6g")
    write_text_atomic(folder / f"{name}.md", to_markdown(frame))
    write_text_atomic(folder / f"{name}.tex", flat.to_latex(float_format="%.4f", na_rep=""))
    return folder / f"{name}.csv"


def save_figure(fig, cfg: Config, name: str) -> Path:
    """Write ``reports/<profile>/figures/<name>.png`` (for the reports) and ``.svg`` (for papers)."""
    folder = cfg.report_dir / "figures"
    for ext in ("png", "svg"):
        with atomic_path(folder / f"{name}.{ext}", f".{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")
    return folder / f"{name}.png"


# -- HTML ---------------------------------------------------------------------------------
def render_notebook(executed: Path, dest: Path) -> Path:
    """An executed notebook as a reader's HTML page: outputs only, code hidden (its banner is the
    notebook's own first output)."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.read(executed, as_version=4))
    return write_text_atomic(dest, body)


def _table_html(frame: pd.DataFrame) -> str:
    return _flat_columns(frame).to_html(float_format=lambda v: f"{v:.4f}", na_rep="", border=0)


def headline_table(evaluations: dict) -> pd.DataFrame:
    """Accuracy, macro F1 and macro ROC-AUC per model: paper, this run, difference."""
    rows = {}
    for model, (ours, _) in evaluations.items():
        reported = paper.MODELS.get(model, {})
        for key in ("accuracy", "macro_f1", "macro_auc"):
            mine, theirs = ours[key], reported.get(key, float("nan"))
            rows[(model, key)] = {"paper": theirs, "this run": mine, "difference": mine - theirs}
    return pd.DataFrame.from_dict(rows, orient="index")


def comparison_table(cfg: Config) -> pd.DataFrame:
    """Every model against the paper: accuracy and macro F1 with bootstrap CIs, macro ROC-AUC,
    parameters, GFLOPs, training time and inference throughput."""
    rows = {}
    for model, (record, predictions) in read_evaluations(cfg).items():
        ci = metrics.bootstrap_ci(predictions["true"], predictions["pred"], len(cfg.data.classes),
                                  cfg.eval.bootstrap_samples, cfg.eval.confidence, cfg.eval.seed)
        reported = paper.MODELS.get(model, {})
        level = f"{cfg.eval.confidence:.0%}"
        rows[model] = {
            "accuracy (paper)": reported.get("accuracy", float("nan")),
            "accuracy": record["accuracy"],
            f"accuracy {level} CI": f"[{ci['accuracy'][0]:.4f}, {ci['accuracy'][1]:.4f}]",
            "macro F1 (paper)": reported.get("macro_f1", float("nan")),
            "macro F1": record["macro_f1"],
            f"macro F1 {level} CI": f"[{ci['macro_f1'][0]:.4f}, {ci['macro_f1'][1]:.4f}]",
            "macro ROC-AUC (paper)": reported.get("macro_auc", float("nan")),
            "macro ROC-AUC": record["macro_auc"],
            "parameters (M)": record["parameters"] / 1e6,
            "GFLOPs / image": record["gflops"],
            "training time (s)": record["train_seconds"],
            "inference images/s": record["inference_images_per_s"],
            "validation images": record["images"],
        }
    return pd.DataFrame(rows).T


def paired_tests(cfg: Config) -> pd.DataFrame:
    """Exact McNemar test for each pair of evaluated models, on the same validation images."""
    evaluations = read_evaluations(cfg)
    names = list(evaluations)
    rows = []
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            a, b = evaluations[first][1], evaluations[second][1]
            if list(a["path"]) != list(b["path"]):
                raise KvasirError(f"{first} and {second} were evaluated on different images; rerun notebook 04")
            test = metrics.mcnemar(a["true"] == a["pred"], b["true"] == b["pred"])
            rows.append({"first": first, "second": second, **test})
    return pd.DataFrame(rows)


def render_reports(cfg: Config) -> Path:
    """Render every executed notebook of the profile and write ``reports/<profile>/index.html``."""
    executed = sorted(p for p in cfg.notebook_dir.glob("*.ipynb") if not p.name.endswith(".failed.ipynb"))
    if not executed:
        raise KvasirError(f"no executed notebooks in {cfg.notebook_dir}; run `make reproduce PROFILE={cfg.profile}`")
    pages = [render_notebook(nb, cfg.report_dir / "html" / f"{nb.stem}.html") for nb in executed]
    index = cfg.report_dir / "index.html"
    write_text_atomic(index, index_html(cfg, pages))
    return index


def index_html(cfg: Config, pages: list[Path]) -> str:
    root = cfg.report_dir
    rel = lambda p: html.escape(os.path.relpath(p, root))  # noqa: E731
    figures = sorted((root / "figures").glob("*.png"))
    tables = sorted((root / "tables").glob("*.csv"))
    evaluations = read_evaluations(cfg, required=False)
    headline = headline_table(evaluations)
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Kvasir v2 study: {html.escape(cfg.profile)}"
        f"</title><style>{STYLE}</style></head><body>",
        banner_html(cfg),
        "<h1>Transfer learning on Kvasir v2: reproduction report</h1>",
        "<p>Paper: <i>Advanced Classification of Gastrointestinal Endoscopy Images Using Transfer Learning with "
        "ResNet50 on the Kvasir v2 Dataset</i> (Cruz, 2025). Each number below is from this run, beside the "
        "paper's.</p>",
        "<h2>Headline numbers</h2>",
        _table_html(headline) if len(headline) else "<p>No evaluated model yet (notebook 04).</p>",
        "<h2>Where the paper disagrees with itself</h2><ul>",
        *[f"<li>{html.escape(note)}</li>" for note in paper.consistency_notes()],
        "</ul><h2>Notebook reports</h2><ul>",
        *[f"<li><a href='{rel(p)}'>{html.escape(p.stem)}</a></li>" for p in pages],
        "</ul><h2>Figures</h2>",
        *[f"<h3>{html.escape(f.stem)}</h3><img src='{rel(f)}' alt='{html.escape(f.stem)}'>" for f in figures],
        "<h2>Tables</h2><ul>",
        *[f"<li>{html.escape(t.stem)}: <a href='{rel(t)}'>CSV</a>, <a href='{rel(t.with_suffix('.md'))}'>Markdown"
          f"</a>, <a href='{rel(t.with_suffix('.tex'))}'>LaTeX</a></li>" for t in tables],
        "</ul><h2>Readings of the paper's ambiguous choices</h2>",
        _table_html(paper.readings_table(cfg.to_dict())),
        "<h2>Settings</h2><pre>", html.escape(yaml.safe_dump(cfg.to_dict(), sort_keys=False)), "</pre>",
        "<h2>Versions and hardware</h2>", _table_html(_environments(evaluations)),
        "</body></html>",
    ]
    return "\n".join(parts)


def _environments(evaluations: dict) -> pd.DataFrame:
    """Where each model was evaluated (recorded by notebook 04), and where this page was rendered."""
    columns = {"this report": environment()}
    for model, (record, _) in evaluations.items():
        columns[model] = {**record["environment"], "runtime": record["runtime"]}
    return pd.DataFrame(columns).fillna("")
