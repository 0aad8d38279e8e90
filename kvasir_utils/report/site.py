"""The HTML site: every executed notebook as a page (code hidden), the profile's index page and the
sweep's.
"""

from __future__ import annotations

import html
import os
import shutil
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import yaml

from kvasir_utils.analysis import paper
from kvasir_utils.analysis.audit import audit_sentences
from kvasir_utils.analysis.compare import headline_table
from kvasir_utils.analysis.runs import read_evaluations
from kvasir_utils.config import Config
from kvasir_utils.errors import KvasirError
from kvasir_utils.io import write_text_atomic
from kvasir_utils.provenance import describe_commit, describe_runtime, environment, provenance
from kvasir_utils.report.outputs import _flat_columns, banner_html

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}
pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:0.85em}
"""


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
        *_audit_section(cfg, rel),
        "<h2>Where the paper disagrees with itself</h2><ul>",
        *[f"<li>{html.escape(note)}</li>" for note in paper.consistency_notes()],
        "</ul><h2>Notebook reports</h2><ul>",
        *[f"<li><a href='{rel(p)}'>{html.escape(p.stem)}</a></li>" for p in pages],
        "</ul><h2>Figures</h2>",
        *[f"<h3>{html.escape(f.stem)}</h3><img src='{rel(f)}' alt='{html.escape(f.stem)}'>" for f in figures],
        "<h2>Tables</h2><ul>",
        *[f"<li>{html.escape(t.stem)}: <a href='{rel(t)}'>CSV</a>, <a href='{rel(t.with_suffix('.md'))}'>Markdown"
          f"</a>, <a href='{rel(t.with_suffix('.tex'))}'>LaTeX</a></li>" for t in tables],
        "</ul>",
        *_provenance_section(cfg, evaluations),
        "<h2>Readings of the paper's ambiguous choices</h2>",
        _table_html(paper.readings_table(cfg.to_dict())),
        "<h2>Settings</h2><pre>", html.escape(yaml.safe_dump(cfg.to_dict(), sort_keys=False)), "</pre>",
        "<h2>Versions and hardware</h2>", _table_html(_environments(evaluations)),
        "</body></html>",
    ]
    return "\n".join(parts)


def _audit_section(cfg: Config, rel) -> list[str]:
    """The index page's Audit section, from notebook 07's tables (nothing before 07 has run)."""
    tables = cfg.report_dir / "tables"
    if not (tables / "audit_headline.csv").exists():
        return []
    headline = pd.read_csv(tables / "audit_headline.csv", index_col=0)
    box_rates = pd.read_csv(tables / "guide_box_rates.csv")
    figure = cfg.report_dir / "figures" / "audit_guide_box_rates.png"
    return ["<h2>Audit: what inflates the score</h2>",
            "<p>Beyond the paper (notebook 07): the position-guide box, near-duplicate frames across the split, "
            "and calibration.</p><ul>",
            *[f"<li>{html.escape(sentence)}</li>" for sentence in audit_sentences(headline, box_rates)],
            "</ul>", _table_html(headline),
            f"<img src='{rel(figure)}' alt='guide box rate per class'>" if figure.exists() else ""]


def _provenance_section(cfg: Config, evaluations: dict) -> list[str]:
    """Where these results came from (as each model's metrics.json recorded it when it was
    evaluated; the page's own rendering may be later), and what to cite."""
    record = provenance(cfg)
    archive = record["archive"]
    made = {model: rec.get("provenance", {}) for model, (rec, _) in evaluations.items()}
    weights = {model: found.get("weights") for model, found in made.items()}
    rows = {**{f"study commit of the {model} results": describe_commit(found) for model, found in made.items()},
            **{f"requirements.lock SHA-256 of the {model} results": found.get("lock_sha256") or "none"
               for model, found in made.items()},
            "study commit this page was rendered at": describe_commit(record),
            "requirements.lock SHA-256 now": record["lock_sha256"] or "none",
            "profile": record["profile"], "overrides (SET)": " ".join(record["overrides"]) or "none",
            "dataset archive": f"{archive['archive']}, {archive['bytes']:,} bytes" if archive else "not recorded",
            "dataset archive SHA-256": archive["sha256"] if archive else "not recorded",
            **{f"{model} weights": f"{w['file']} (SHA-256 {w['sha256']})" if w else "none (random initialisation)"
               for model, w in weights.items()}}
    table = pd.DataFrame({"value": rows})
    return [
        "<h2>Provenance</h2>",
        "<p>Kvasir v2 publishes no checksum. The SHA-256 below is the archive this run used, computed when it was "
        "downloaded or first used: compare it with yours (<code>sha256sum kvasir-dataset-v2.zip</code>) to know "
        "whether two labs trained on the same data.</p>",
        _flat_columns(table).to_html(border=0),
        "<h2>Citation and terms</h2><ul>",
        *[f"<li>{html.escape(citation)}</li>" for citation in paper.CITATIONS],
        f"</ul><p>{html.escape(paper.DATASET_TERMS)}</p><p>This study: see <code>CITATION.cff</code>.</p>",
    ]


def _environments(evaluations: dict) -> pd.DataFrame:
    """Where each model was evaluated (recorded by notebook 04), and where this page was rendered."""
    columns = {"this report": environment()}
    for model, (record, _) in evaluations.items():
        columns[model] = {**record["environment"], "runtime": describe_runtime(record["runtime"])}
    return pd.DataFrame(columns).fillna("")


# -- a sweep's report ---------------------------------------------------------------------
def sweep_about(sweep) -> str:
    spec = sweep.spec
    return (f"Sweep '{sweep.name}' of profile '{sweep.base.profile}': {len(sweep.members)} runs "
            f"({len(spec.seeds)} seed(s) varying {spec.seed_setting}).")


def render_sweep_report(sweep, results: pd.DataFrame, executed: Path | None) -> Path:
    """Notebook 06 as HTML, and the sweep's ``index.html``: its tables, figure and every run's
    report (``results``: ``sweep.member_results``). Without ``executed`` (no run finished) the
    tables and figures of an earlier aggregation are removed, so none outlives its runs."""
    if executed is None:
        for folder in ("tables", "figures", "html"):
            shutil.rmtree(sweep.report_dir / folder, ignore_errors=True)
        page = None
    else:
        page = render_notebook(executed, sweep.report_dir / "html" / f"{executed.stem}.html")
    index = sweep.report_dir / "index.html"
    write_text_atomic(index, sweep_index_html(sweep, results, page))
    return index


def _csv_table(path: Path, empty: str) -> str:
    frame = pd.read_csv(path) if path.exists() else pd.DataFrame()
    return _table_html(frame) if len(frame) else f"<p>({html.escape(empty)})</p>"


def sweep_index_html(sweep, results: pd.DataFrame, page: Path) -> str:
    root = sweep.report_dir
    rel = lambda p: html.escape(os.path.relpath(p, root))  # noqa: E731
    tables, figures = root / "tables", sorted((root / "figures").glob("*.png"))
    finished = int((results["status"] == "finished").sum())
    members = []
    for member, row in zip(sweep.members, results.itertuples()):
        href = quote(os.path.relpath(member.report_index, root), safe="/=,+@()")
        link = (f"<a href='{href}'>{html.escape(member.name)}</a>" if member.report_index.exists()
                else html.escape(member.name))
        error = f" ({html.escape(row.error)})" if row.error else ""
        members.append(f"<li>{link}: {html.escape(row.status)}{error}</li>")
    grid = ", ".join(f"{k} in {v}" for k, v in sweep.spec.grid.items()) or "none"
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Sweep {html.escape(sweep.name)}</title>"
        f"<style>{STYLE}</style></head><body>",
        banner_html(sweep.base, sweep_about(sweep)),
        f"<h1>Sweep {html.escape(sweep.name)}: many runs, one answer</h1>",
        f"<p>Profile <b>{html.escape(sweep.base.profile)}</b>; "
        f"models {html.escape(', '.join(dict.fromkeys(results['model'])))}; seeds {sweep.spec.seeds} "
        f"(varying {html.escape(sweep.spec.seed_setting)}); grid: {html.escape(grid)}. "
        f"<b>{finished} of {len(results)} runs finished</b>; every number below is over the finished runs "
        f"(n per row), with a {sweep.base.eval.confidence:.0%} Student-t interval across runs.</p>",
        "<h2>Mean and interval per model and reading</h2>",
        _csv_table(tables / "summary.csv", "no finished run"),
        "<h2>Paired comparison of the models (same seed, same validation images)</h2>",
        _csv_table(tables / "paired.csv", "needs two models with runs of the same seed"),
        "<h2>Each reading against the paper's default reading</h2>",
        _csv_table(tables / "ablation.csv", "no finished run"),
        "<h2>Figures</h2>",
        *[f"<h3>{html.escape(f.stem)}</h3><img src='{rel(f)}' alt='{html.escape(f.stem)}'>" for f in figures],
        f"<h2>The full analysis</h2><p><a href='{rel(page)}'>{html.escape(page.stem)}</a> (per-class F1, "
        f"every run).</p>" if page else "<p>No run has finished: nothing to aggregate yet.</p>",
        "<h2>Tables</h2><ul>",
        *[f"<li>{html.escape(t.stem)}: <a href='{rel(t)}'>CSV</a>, <a href='{rel(t.with_suffix('.md'))}'>Markdown"
          f"</a>, <a href='{rel(t.with_suffix('.tex'))}'>LaTeX</a></li>" for t in sorted(tables.glob("*.csv"))],
        "</ul><h2>Every run's own report</h2><ul>", *members, "</ul>",
        "</body></html>",
    ]
    return "\n".join(parts)
