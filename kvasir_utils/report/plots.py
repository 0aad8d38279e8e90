"""Figures: dataset overview, training curves (from TensorBoard), confusion matrix, ROC, Figure 1."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from kvasir_utils.analysis import metrics
from kvasir_utils.analysis.labels import display_name
from kvasir_utils.analysis.runs import SCALAR_TAGS

# seaborn is imported in the functions that use it, not with the module
# (docs/architecture.md: the direction of imports).

CURVE_TAGS = tuple(SCALAR_TAGS)
LINE_STYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2, 2, 2)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def resolution_histogram(resolutions: pd.DataFrame):
    """Images per resolution (``resolution``, ``images`` columns)."""
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(7, 3.2))
    sns.barplot(data=resolutions, x="resolution", y="images", color="#4C72B0", ax=ax)
    ax.set(xlabel="width x height (pixels)", ylabel="images", title="Image resolutions")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def sample_grid(samples: list, classes: list[str], per_class: int):
    """A row per class of example images: ``samples`` is a list of (label, PIL image)."""
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 1.6, len(classes) * 1.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    placed = dict.fromkeys(classes, 0)
    for label, image in samples:
        row, col = classes.index(label), placed[label]
        if col < per_class:
            axes[row, col].imshow(image)
            placed[label] += 1
    for row, label in enumerate(classes):
        axes[row, 0].set_title(label, loc="left", fontsize=8)
    fig.tight_layout()
    return fig


def training_curves(scalars: pd.DataFrame, title: str = ""):
    """Figure 2: training and validation loss and accuracy per epoch, numbered across both stages
    (as history.csv's ``global_epoch``), whole-number ticks, the start of fine-tuning marked."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, kind in zip(axes, ("loss", "accuracy")):
        for split, style in (("train", "-o"), ("val", "--s")):
            part = scalars[scalars["tag"] == f"{kind}/{split}"]
            ax.plot(part["step"], part["value"], style, label=split, markersize=4)
        ax.set(xlabel="epoch (both stages)", ylabel=kind, title=f"{title} {kind}".strip())
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    stage1 = scalars.loc[scalars["stage"] == "stage1", "step"]
    if len(stage1) and (scalars["stage"] != "stage1").any():
        for ax in axes:
            ax.axvline(stage1.max() + 0.5, color="grey", linestyle=":", linewidth=1.2)
            ax.text(stage1.max() + 0.55, 0.97, "fine-tuning", transform=ax.get_xaxis_transform(), ha="left",
                    va="top", fontsize=9, color="dimgrey")
    axes[0].legend(fontsize=9)
    fig.tight_layout()
    return fig


def confusion_heatmap(confusion: pd.DataFrame, title: str = "Confusion matrix"):
    """Table 2 as a heatmap (rows true, columns predicted), sized by the number of classes, with the
    abbreviations spelled out beside it."""
    import seaborn as sns

    size = len(confusion)
    fig, ax = plt.subplots(figsize=(max(5.4, 0.55 * size + 2.4) + 3.2, max(4.6, 0.5 * size + 1.8)))
    sns.heatmap(confusion, annot=size <= 12, fmt="d", cmap="viridis", cbar=True, ax=ax, square=True,
                annot_kws={"fontsize": 9})
    ax.set(xlabel="predicted", ylabel="true", title=title)
    spelled = [f"{short} = {long}" for short, long in getattr(confusion, "attrs", {}).get("names", {}).items()]
    if spelled:
        ax.text(1.28, 1.0, "\n".join(spelled), transform=ax.transAxes, va="top", fontsize=8)
    fig.tight_layout()
    return fig


def roc_curves(y_true: np.ndarray, probs: np.ndarray, classes: list[str], auc: pd.Series, title: str = "ROC"):
    """One-vs-rest ROC curve per class, with its AUC (``auc``, indexed by display name) in the legend."""
    from sklearn.metrics import roc_curve

    many = len(classes) > 10  # the legend goes beside the axes, one column of names
    fig, ax = plt.subplots(figsize=(6.4 + 3.0 * many, max(5.4, 0.2 * len(classes) + 1.2)))
    colours = plt.get_cmap("tab20" if many else "tab10")
    for i, name in enumerate(classes):
        if 0 < (y_true == i).sum() < len(y_true):
            fpr, tpr, _ = roc_curve(y_true == i, probs[:, i])
            # a line style and a marker per class as well as a colour; later curves drawn thinner, so
            # curves with the same area (four at 1.000) all show where they lie on top of each other
            ax.plot(fpr, tpr, label=f"{name}: AUC {auc[display_name(name)]:.3f}", color=colours(i % colours.N),
                    linestyle=LINE_STYLES[i % len(LINE_STYLES)], marker=MARKERS[i % len(MARKERS)], markevery=0.2,
                    markersize=5, linewidth=max(1.0, 3.2 - 0.3 * i), alpha=0.9)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    if many:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def prediction_grid(images: list, rows: pd.DataFrame, classes: list[str], title: str = ""):
    """Figure 1: images with true class, predicted class and confidence; correct on top, wrong below,
    marked ✓ / ✗ as well as green / red.

    ``rows`` has ``true``, ``pred``, ``confidence``, ``correct``; ``images`` are PIL images in that order.
    """
    groups = [rows[rows["correct"]], rows[~rows["correct"]]]
    cols = max(1, max(len(g) for g in groups))
    fig, axes = plt.subplots(2, cols, figsize=(cols * 2.1, 5.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, group in enumerate(groups):
        if not len(group):
            axes[r, 0].text(0.5, 0.5, "no incorrect prediction" if r else "no correct prediction",
                            ha="center", va="center", fontsize=9, transform=axes[r, 0].transAxes)
        for c, (index, row) in enumerate(group.iterrows()):
            ax = axes[r, c]
            ax.imshow(images[rows.index.get_loc(index)])
            mark = "✓" if row["correct"] else "✗"
            ax.set_title(f"{mark} true: {classes[row['true']]}\npred: {classes[row['pred']]} ({row['confidence']:.2f})",
                         fontsize=8, color="darkgreen" if row["correct"] else "firebrick")
    axes[0, 0].text(-0.1, 0.5, "correct", transform=axes[0, 0].transAxes, rotation=90, va="center", ha="right")
    axes[1, 0].text(-0.1, 0.5, "incorrect", transform=axes[1, 0].transAxes, rotation=90, va="center", ha="right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def guide_box_rate_chart(rates: pd.DataFrame, title: str = "Frames with the guide box"):
    """Share of frames per class that carry the teal guide box (``label``, ``images``, ``with_box``, ``rate``)."""
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(max(7, 0.45 * len(rates) + 1.5), 3.4))
    sns.barplot(data=rates, x="label", y="rate", color="#13A488", ax=ax)
    for x, row in enumerate(rates.itertuples()):
        ax.text(x, row.rate, f"{row.with_box}/{row.images}", ha="center", va="bottom", fontsize=7)
    ax.set(xlabel="", ylabel="share of frames", ylim=(0, 1.08), title=title)
    ax.tick_params(axis="x", rotation=30)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    fig.tight_layout()
    return fig


def reliability_diagram(table: pd.DataFrame, title: str = "Reliability"):
    """Accuracy against top-1 confidence per bin (``lower``, ``upper``, ``count``, ``confidence``,
    ``accuracy``): the gap to the diagonal is red (over-confident) or blue (under-confident), and
    hatched differently; below, how many images each bin holds."""
    from matplotlib.patches import Patch

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.2, 5.6), sharex=True, height_ratios=(3, 1))
    width = (table["upper"] - table["lower"]).to_numpy()
    filled = (table["count"] > 0).to_numpy()
    lower, accuracy, confidence = (table[c].to_numpy() for c in ("lower", "accuracy", "confidence"))
    top.bar(lower[filled], accuracy[filled], width=width[filled], align="edge", color="#4C72B0", edgecolor="white")
    over = filled & (confidence > accuracy)
    under = filled & (confidence < accuracy)
    top.bar(lower[over], (confidence - accuracy)[over], bottom=accuracy[over], width=width[over], align="edge",
            color="#C44E52", alpha=0.5, hatch="//", edgecolor="#C44E52")
    top.bar(lower[under], (accuracy - confidence)[under], bottom=confidence[under], width=width[under],
            align="edge", color="#55A8D8", alpha=0.5, hatch="..", edgecolor="#2F6F9F")
    top.plot([0, 1], [0, 1], color="grey", linestyle=":")
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    top.legend(handles=[Patch(color="#4C72B0", label="accuracy"),
                        Patch(facecolor="#C44E52", alpha=0.5, hatch="//", label="over-confident (gap)"),
                        Patch(facecolor="#55A8D8", alpha=0.5, hatch="..", label="under-confident (gap)")],
               fontsize=8, loc="upper left")
    bottom.bar(table["lower"], table["count"], width=width, align="edge", color="grey", edgecolor="white")
    bottom.set(xlabel="top-1 confidence", ylabel="images")
    fig.tight_layout()
    return fig


def beside(frame, overlay, gap: int = 4) -> np.ndarray:
    """The raw ``frame`` and its ``overlay`` side by side (RGB uint8), a white strip between them."""
    left = np.asarray(frame.convert("RGB") if hasattr(frame, "convert") else frame, np.uint8)
    right = np.asarray(overlay, np.uint8)
    height = max(left.shape[0], right.shape[0])
    pad = [np.pad(part, ((0, height - part.shape[0]), (0, 0), (0, 0)), constant_values=255) for part in (left, right)]
    return np.hstack([pad[0], np.full((height, gap, 3), 255, np.uint8), pad[1]])


def gradcam_grid(overlays: list, rows: pd.DataFrame, classes: list[str], title: str = "",
                 map_size: tuple[int, int] | None = None, frames: list | None = None):
    """Figure 3: a row per true class, Grad-CAM overlays (viridis) of correct predictions on the left,
    wrong ones on the right, each beside its raw frame when ``frames`` are given, a placeholder where
    a class has no such example, a colour bar, and a note when the explained feature map is 4x4 or
    coarser (its maps are then a few blobs). ``rows`` has ``true``, ``pred``, ``confidence``,
    ``correct``; ``overlays`` (and ``frames``) are RGB arrays or images in that order."""
    if frames is not None:
        overlays = [beside(frame, overlay) for frame, overlay in zip(frames, overlays, strict=True)]
    cell = 4.2 if frames is not None else 2.2
    from matplotlib import cm
    from matplotlib.colors import Normalize

    per_class = pd.crosstab(rows["true"], rows["correct"]).reindex(columns=[True, False], fill_value=0)
    present = list(per_class.index)
    right, wrong = (max(1, int(per_class[kind].to_numpy().max(initial=0))) for kind in (True, False))
    n_rows = max(len(present), 1)
    fig, axes = plt.subplots(n_rows, right + wrong, figsize=((right + wrong) * cell + 1.2, n_rows * 2.3 + 0.9),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, true in enumerate(present):
        of_class = rows[rows["true"] == true]
        for offset, part in ((0, of_class[of_class["correct"]]), (right, of_class[~of_class["correct"]])):
            if not len(part):
                axes[r, offset].text(0.5, 0.5, "no example", ha="center", va="center", fontsize=9, color="grey",
                                     transform=axes[r, offset].transAxes)
            for c, (index, row) in enumerate(part.iterrows()):
                ax = axes[r, offset + c]
                ax.imshow(overlays[rows.index.get_loc(index)])
                mark = "✓" if row["correct"] else "✗"
                ax.set_title(f"{mark} pred: {classes[row['pred']]} ({row['confidence']:.2f})", fontsize=8,
                             color="darkgreen" if row["correct"] else "firebrick")
        axes[r, 0].text(-0.08, 0.5, classes[true], transform=axes[r, 0].transAxes, rotation=90, va="center",
                        ha="right", fontsize=9)
    fig.text(0.02, 0.995, "correct (✓)", fontsize=10, weight="bold", va="top")
    fig.text(0.02 + right / (right + wrong), 0.995, "incorrect (✗)", fontsize=10, weight="bold", va="top")
    note = ""
    if map_size is not None and min(map_size) <= 4:
        note = f"the explained feature map is {map_size[0]}x{map_size[1]}: each map is a few blobs"
    fig.suptitle("\n".join(t for t in (title, note) if t), y=0.965, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.93, 0.93))
    bar = fig.add_axes((0.94, 0.15, 0.015, 0.6))
    fig.colorbar(cm.ScalarMappable(norm=Normalize(0, 1), cmap="viridis"), cax=bar, label="Grad-CAM weight")
    return fig


def sweep_runs_figure(results: pd.DataFrame, paper_values: dict[str, float], metric: str = "accuracy"):
    """Every finished run of a sweep as a point, per model and reading, with the mean (black bar)
    and the paper's number (dashed) marked; ``paper_values`` maps model to the paper's ``metric``."""
    finished = results[results["status"] == "finished"]
    model_names = list(dict.fromkeys(finished["model"])) or ["(no finished run)"]
    fig, axes = plt.subplots(1, len(model_names), figsize=(1.5 + 3.2 * len(model_names), 4.2), squeeze=False,
                             sharey=True)
    offsets = np.random.default_rng(0).uniform(-0.08, 0.08, len(finished))
    for ax, model in zip(axes[0], model_names):
        part = finished[finished["model"] == model]
        readings = list(dict.fromkeys(part["reading"]))
        x = np.array([readings.index(r) for r in part["reading"]], float)
        ax.scatter(x + offsets[: len(part)], part[metric], color="#4C72B0", s=28, zorder=2, label="a run")
        means = part.groupby("reading", sort=False)[metric].mean().reindex(readings)
        ax.hlines(means.to_numpy(), np.arange(len(readings)) - 0.25, np.arange(len(readings)) + 0.25,
                  color="black", linewidth=2, zorder=3, label="mean")
        if not np.isnan(paper_values.get(model, np.nan)):
            ax.axhline(paper_values[model], color="#C44E52", linestyle="--", linewidth=1, label="paper")
        ax.set_xticks(range(len(readings)), readings, rotation=20, ha="right", fontsize=7)
        ax.set(title=model, ylabel=metric, xlim=(-0.6, len(readings) - 0.4))
        ax.grid(alpha=0.3, axis="y")
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def f1_vs_paper(table1: pd.DataFrame, reported: pd.DataFrame | None, title: str = ""):
    """Per-class F1 of this run beside the paper's Table 1 (where the paper reports one)."""
    classes = [c for c in table1.index if c not in metrics.AVERAGE_ROWS]
    y = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(7, 0.42 * len(classes) + 1.4))
    ax.barh(y - 0.2, table1.loc[classes, "F1-Score"], height=0.38, color="#4C72B0", label="this run")
    if reported is not None:
        paper_f1 = reported["F1-Score"].reindex(classes)
        ax.barh(y + 0.2, paper_f1, height=0.38, color="#DD8452", hatch="//", edgecolor="white", label="paper")
    ax.set_yticks(y, classes, fontsize=9)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="F1", title=title)
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # beside the bars
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig
