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


def to_markdown(frame: pd.DataFrame, floatfmt: str = "{:.4f}") -> str:
    frame = _flat_columns(frame)
    if not _has_labels(frame) and len(frame.columns):
        frame = frame.set_index(frame.columns[0])

    def cell(value) -> str:
        if isinstance(value, float):
            return "" if pd.isna(value) else floatfmt.format(value)
        return str(value)

    header = ["", *map(str, frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([str(index), *map(cell, row)]) + " |" for index, row in zip(frame.index, frame.values)]
    return "\n".join(lines) + "\n"


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
