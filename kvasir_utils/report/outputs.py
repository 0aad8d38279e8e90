"""What the notebooks show and save: the banner on every page, tables as CSV / Markdown / LaTeX,
figures as PNG / SVG.
"""

from __future__ import annotations

import html
import io
import itertools
import re
from pathlib import Path

import pandas as pd
from markupsafe import Markup, escape

from kvasir_utils.analysis import audit, departures, metrics, paper
from kvasir_utils.artefacts import ReportFolder
from kvasir_utils.config import Config
from kvasir_utils.files import write_bytes_atomic, write_text_atomic
from kvasir_utils.provenance import provenance_line
from kvasir_utils.report import formats

# Machine names of the study's tables (CSV columns and index entries) -> what a reader sees.
LABELS = {
    "run": "this run", "paper": "paper", "difference": "difference", "accuracy": "accuracy",
    "macro_f1": "macro F1", "macro_auc": "macro ROC-AUC", "weighted_f1": "weighted F1",
    "accuracy_paper": "accuracy (paper)", "accuracy_ci_low": "accuracy CI low", "accuracy_ci_high": "accuracy CI high",
    "macro_f1_paper": "macro F1 (paper)", "macro_f1_ci_low": "macro F1 CI low", "macro_f1_ci_high": "macro F1 CI high",
    "macro_auc_paper": "macro ROC-AUC (paper)", "ece": "ECE", "brier": "Brier", "parameters_m": "parameters (M)",
    "gflops": "GFLOPs per image", "train_seconds": "training time (s)", "inference_images_per_s": "inference images/s",
    "images": "images", "masked_accuracy": "accuracy with the box masked",
    "change": f"change ({audit.MASKED_CHANGE})", "masked_change": f"change with the box masked ({audit.MASKED_CHANGE})",
    "twin_share": "validation images with a near-duplicate in training",
    "accuracy_with_twin": "accuracy on those", "accuracy_without_twin": "accuracy on the others",
    "twin_gap": f"gap ({audit.NEAR_DUPLICATE_GAP})", "with_twin": "with a near-duplicate in training",
    "without_twin": "without", "paper_words": "the paper says", "value": "this run",
    "default": "the protocol's reading", "others": "other readings",
    "only_first_correct": "only the first right", "only_second_correct": "only the second right",
    "p_value": "p-value",
    "f1": "F1", "roc_auc": "ROC-AUC", "box_share": "frames with the guide box",
    "other_region": "predicted as a class of the other region",
    "train_loss": "training loss", "train_acc": "training accuracy", "val_loss": "validation loss",
    "val_acc": "validation accuracy", "images_per_s": "images/s", "val_images": "validation images",
    "with_train_twin": "with a near-duplicate in training", "with_box": "with the guide box", "label": "class",
}


def labelled(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its machine names (columns, index, MultiIndex levels) shown as ``LABELS`` says."""
    return frame.rename(index=lambda v: LABELS.get(v, v), columns=_label)


def _label(name):
    """A column's words: ``LABELS``', or a snake_case name with spaces for its underscores."""
    return LABELS.get(name, name.replace("_", " ") if isinstance(name, str) else name)


GENERATED_WARNING = (
    "Pipeline check on generated data: these results come from the synthetic Kvasir-shaped archive of the "
    "'{profile}' profile and mean nothing about Kvasir or endoscopy."
)
BANNER_STYLE = (".kvasir-banner{background:#fff3cd;border:2px solid #e0a800;padding:0.8em 1em;margin:0 0 1em}"
                ".kvasir-banner p{margin:0.2em 0}.kvasir-banner strong{font-weight:bold}"
                ".kvasir-provenance{font-size:0.8em;margin-top:0.4em;overflow-wrap:anywhere}")


# -- in the notebooks ---------------------------------------------------------------------
def _departure_text(cfg: Config, page: str | None) -> str:
    """This page's departures from the paper's protocol, in one sentence (empty when none)."""
    found = departures.departures(cfg) if page is None else departures.departures_for(cfg, page)
    if not len(found):
        return ""
    items = [f"{r.setting} = {formats.setting(r.run, r.setting)} (paper: {formats.setting(r.paper, r.setting)})"
             for r in found.itertuples()]
    where = "this run" if page is None else "this step"
    return f"Where {where} departs from the paper's protocol: " + "; ".join(items) + "."


def banner_html(cfg: Config, about: str = "", page: str | None = None) -> str:
    """The box on top of every page: the profile (or what ``about`` says); for generated data, that
    the page is a pipeline check and means nothing about Kvasir; the settings of ``page`` (a
    notebook's name, or every setting for None) that depart from the paper's protocol; and where the
    result came from (commit, lock, overrides, dataset archive)."""
    text = about or f"Profile '{cfg.profile}'."
    lines = [f"<p><strong>{html.escape(text)}</strong></p>"]
    if cfg.generated_data:
        lines.append(f"<p><strong>{html.escape(GENERATED_WARNING.format(profile=cfg.profile))}</strong></p>")
    if departed := _departure_text(cfg, page):
        lines.append(f'<p class="kvasir-departures">{html.escape(departed)}</p>')
    return (f'<style>{BANNER_STYLE}</style><div class="kvasir-banner">{"".join(lines)}'
            f'<div class="kvasir-provenance">{html.escape(provenance_line(cfg))}</div></div>')


def show_banner(cfg: Config, about: str = "", page: str | None = None) -> None:
    """Display the banner at the top of a notebook (the rendered page shows it from there)."""
    from IPython.display import HTML, display

    display(HTML(banner_html(cfg, about, page)))


def table_html(frame: pd.DataFrame, kinds: dict[str, str] | None = None, caption: str = "",
               missing: str = "") -> str:
    """A table in the house style (``formats``): labels for machine names, numbers formatted by
    kind, ``missing`` where there is no value; see ``html_table``. Wrapped so a wide table scrolls
    inside the page instead of widening it."""
    shown = labelled(formats.formatted(frame, kinds, missing))
    return f'<div class="kvasir-scroll">{html_table(shown, caption)}</div>'


# A cell that is a number in the house style (with its interval or count): right-aligned
NUMERIC = re.compile(r"[+\u2212-]?[\d,]+(\.\d+)?(%| points| M| s| images/s)?( \[[^\]]*\])?( \([\d,]+\))?")


def _cell(value, tag: str = "td", scope: str = "") -> str:
    text = "" if value is None else value if isinstance(value, Markup) else escape(str(value))
    numeric = tag == "td" and NUMERIC.fullmatch(str(value) if value is not None else "")
    attributes = (f' scope="{scope}"' if scope else "") + (' class="num"' if numeric else "")
    return f"<{tag}{attributes}>{text}</{tag}>"


def _header_rows(columns: list) -> list[str]:
    """One row of column headers, or two for two-level columns (the top one spanning its group)."""
    if not any(isinstance(c, tuple) for c in columns):
        return ["<tr>" + "".join(_cell(c, "th", "col") for c in columns) + "</tr>"]
    levels = [c if isinstance(c, tuple) else (c, "") for c in columns]
    top, bottom = [], []
    for key, group in itertools.groupby(levels, key=lambda c: c[0]):
        group = list(group)
        if len(group) == 1 and not str(group[0][1]):
            top.append(f'<th scope="col" rowspan="2">{escape(str(key))}</th>')
            continue
        top.append(f'<th scope="colgroup" colspan="{len(group)}">{escape(str(key))}</th>')
        bottom += [_cell(c[1], "th", "col") for c in group]
    return ["<tr>" + "".join(top) + "</tr>", "<tr>" + "".join(bottom) + "</tr>"]


def html_table(frame: pd.DataFrame, caption: str = "") -> str:
    """``frame`` (its cells text or ``Markup``) as an accessible HTML table: a ``<caption>``,
    column headers, its row labels (the index, or else the first column) as ``<th scope="row">``,
    numbers right-aligned (class ``num``). No row numbers, no empty header row of the index's name."""
    if _has_labels(frame):
        frame = frame.reset_index(names=frame.index.names if any(frame.index.names) else [""])
    columns = list(frame.columns)
    head = "".join(_header_rows(columns))
    body = "".join("<tr>" + _cell(row[0], "th", "row") + "".join(_cell(v) for v in row[1:]) + "</tr>"
                   for row in frame.itertuples(index=False))
    title = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f'<table class="kvasir-table">{title}<thead>{head}</thead><tbody>{body}</tbody></table>'


def show_table(frame: pd.DataFrame, caption: str = "", kinds: dict[str, str] | None = None,
               missing: str = "") -> None:
    from IPython.display import HTML, display

    display(HTML(table_html(frame, kinds, caption, missing)))


def show_prose(text: str | list[str]) -> None:
    """Sentences (a list: one bullet each) or a paragraph, as prose on the page, not console output."""
    from IPython.display import Markdown, display

    display(Markdown("\n".join(f"- {line}" for line in text) if isinstance(text, list) else text))


def _flat_columns(frame: pd.DataFrame) -> pd.DataFrame:
    if isinstance(frame.columns, pd.MultiIndex):
        frame = frame.copy()
        frame.columns = [" ".join(str(part) for part in col).strip() for col in frame.columns]
    return frame


def _has_labels(frame: pd.DataFrame) -> bool:
    """Whether the index says something (row names), or is just 0, 1, 2, ..."""
    index = frame.index
    default = isinstance(index, pd.RangeIndex) or (index.dtype.kind == "i" and list(index) == list(range(len(index))))
    return not default


def to_markdown(frame: pd.DataFrame, styled: bool = False) -> str:
    """A table as GitHub Markdown (pandas' ``to_markdown``): four decimals, empty where nothing is
    known; or, ``styled``, every number in the house style (``formats``) and "none" where there is none."""
    if styled:
        frame = formats.formatted(frame, missing="none")
    frame = _flat_columns(frame)
    index = _has_labels(frame)
    cells = labelled(frame).astype(object).where(frame.notna().to_numpy(), None)  # None prints as missingval
    return cells.to_markdown(index=index, floatfmt=".4f", missingval="", disable_numparse=styled) + "\n"


def _report_dir(target: Config | Path) -> Path:
    """A profile's report folder, or a folder given as such (a sweep's)."""
    return target.report_dir if isinstance(target, Config) else Path(target)


def save_table(frame: pd.DataFrame, target: Config | Path, name: str) -> Path:
    """Write ``<report folder>/tables/<name>.{csv,md,tex}``; returns the CSV path."""
    folder = ReportFolder(_report_dir(target)).tables
    flat = _flat_columns(frame)
    write_text_atomic(folder / f"{name}.csv", flat.to_csv(float_format="%.6g", index=_has_labels(flat)))
    write_text_atomic(folder / f"{name}.md", to_markdown(frame))
    write_text_atomic(folder / f"{name}.tex", flat.to_latex(float_format="%.4f", na_rep="", index=_has_labels(flat)))
    return folder / f"{name}.csv"


def save_figure(fig, target: Config | Path, name: str) -> Path:
    """Write ``<report folder>/figures/<name>.png`` (for the reports) and ``.svg`` (for papers)."""
    folder = ReportFolder(_report_dir(target)).figures
    for ext in ("png", "svg"):
        encoded = io.BytesIO()
        fig.savefig(encoded, format=ext, dpi=150, bbox_inches="tight")
        write_bytes_atomic(folder / f"{name}.{ext}", encoded.getvalue())
    return folder / f"{name}.png"


# What every figure shows, by its file name (``{model}`` is filled in): the notebooks and the index
# caption them from here.
CAPTIONS = {
    "dataset_resolutions": "Images per resolution (width x height) in the dataset.",
    "dataset_samples": "A few cached images of each class, as training reads them.",
    "{model}_figure1_predictions": "Figure 1{paper}: {name}'s correct (top row, ✓) and incorrect (bottom row, ✗) "
                                   "validation predictions, each with its true class, predicted class and confidence.",
    "{model}_figure2_curves": "Figure 2{paper}: {name}'s training and validation loss and accuracy per epoch, "
                              "numbered across both stages; the dotted line marks where fine-tuning (stage 2) begins.",
    "{model}_stage1_curves": "{name}'s training and validation loss and accuracy per epoch of stage 1, as "
                             "history.csv records them.",
    "{model}_stage2_curves": "{name}'s training and validation loss and accuracy per epoch, numbered across both "
                             "stages; the dotted line marks where fine-tuning (stage 2) begins.",
    "{model}_figure3_gradcam": "Figure 3: where {name} looks: each validation example of a class as the model saw it "
                               "(left) beside the Grad-CAM of the predicted class laid over it (right), a correct (✓) "
                               "and an incorrect (✗) one per class (viridis: yellow is most weight); an empty cell "
                               "means the class has no such example.",
    "{model}_confusion": "Table 2{paper} as a heat map for {name}: rows are the true class, columns the predicted "
                         "one; counts in the cells.",
    "{model}_roc": "ROC curve of each class against the rest for {name}, each class in its own colour and line style "
                   "(curves with the same area can lie on top of each other), its area (ROC-AUC) in the legend.",
    "{model}_f1_vs_paper": "Per-class F1 of {name}: this run{beside}.",
    "{model}_reliability": "Reliability of {name}'s confidence: accuracy against top-1 confidence in "
                           f"{metrics.CALIBRATION_BINS} bins; bars below the diagonal are over-confident, above it "
                           "under-confident.",
    "audit_guide_box_rates": "Share of each class's frames that carry the teal position-guide box.",
    "accuracy_per_run": "Every finished run of the sweep as a point, the mean as a black bar, the paper's value "
                        "dashed.",
}


def caption(name: str, classes: list[str] | None = None) -> str:
    """The caption of figure ``name`` (``resnet50_figure2_curves``...), or "" for one without.
    ``classes``: the run's, so that the paper is named only beside a run its numbers can stand
    beside (``paper.comparable``); None where the figure is not a run's (a sweep's, the tests')."""
    for pattern, text in CAPTIONS.items():
        if "{model}" not in pattern:
            if name == pattern:
                return text
            continue
        prefix, suffix = pattern.split("{model}")
        if name.startswith(prefix) and name.endswith(suffix) and len(name) > len(prefix) + len(suffix):
            model = name[len(prefix):len(name) - len(suffix)]
            return text.format(name=formats.model_name(model), **_paper_words(model, classes)) + (
                VIT_GRADCAM if _is_vit_gradcam(model, suffix) else "")
    return ""


def _paper_words(model: str, classes: list[str] | None) -> dict[str, str]:
    """A caption's words about the paper: "(paper)" only on a table or figure the paper has for
    ``model`` and a run on its classes (``classes``; None: the model alone decides)."""
    has = paper.REPORTED.get(model) if classes is None else paper.reported(model, classes)
    if has:
        return {"paper": " (paper)", "beside": " beside the paper's Table 1"}
    if paper.REPORTED.get(model):
        return {"paper": "", "beside": " (the paper's Table 1 is of Kvasir v2's eight classes, not this run's)"}
    return {"paper": "", "beside": f" (the paper reports no per-class table for {formats.model_name(model)})"}


# What a ViT's Grad-CAM is (train.explain maps its last block's tokens back onto the patch grid)
VIT_GRADCAM = (" For a vision transformer the map is coarse by construction: one value per image patch (14 px for "
               "DINOv2), the gradient-weighted activations of the last block's patch tokens, so it says which patches "
               "the decision leaned on, not which pixels.")


def _is_vit_gradcam(model: str, suffix: str) -> bool:
    """A Grad-CAM figure of a timm vision transformer (timm names them vit_*, as DINOv2's)."""
    return suffix == "_figure3_gradcam" and model.removeprefix("timm-").startswith("vit")


def show_figure(fig, target: Config | Path, name: str) -> Path:
    """Save the figure (``save_figure``), show it once with its caption, and close it."""
    path = save_figure(fig, target, name)
    display_figure(fig, name, known_classes(target) if isinstance(target, Config) else None)
    return path


def known_classes(cfg: Config) -> list[str] | None:
    """The run's classes where they are known yet (notebook 01 draws figures before it records the
    class folders it found, when ``data.classes`` leaves them to it); None before."""
    return list(cfg.data.classes) or (cfg.classes if cfg.run.dataset_record.exists() else None)


def display_figure(fig, name: str, classes: list[str] | None = None) -> None:
    """Show ``fig`` once, its caption (``caption(name, classes)``) below it and as its alt text (the
    notebook pages' template reads it from the output's metadata), and close it."""
    import matplotlib.pyplot as plt
    from IPython.display import Markdown, display

    text = caption(name, classes)
    display(fig, metadata={"image/png": {"alt": text or name.replace("_", " ")}})
    plt.close(fig)
    if text:
        display(Markdown(f"*{text}*"))
