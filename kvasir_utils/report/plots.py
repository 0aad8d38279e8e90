"""Figures: dataset overview, training curves (from TensorBoard), confusion matrix, ROC, Figure 1."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from kvasir_utils.analysis.labels import display_name
from kvasir_utils.analysis.runs import SCALAR_TAGS

CURVE_TAGS = tuple(SCALAR_TAGS)


def resolution_histogram(resolutions: pd.DataFrame):
    """Images per resolution (``resolution``, ``images`` columns)."""
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
    """Figure 2: training and validation loss and accuracy per epoch, stage boundary marked."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, kind in zip(axes, ("loss", "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            part = scalars[scalars["tag"] == f"{kind}/{split}"]
            ax.plot(part["step"], part["value"], style, label=split, markersize=4)
        ax.set(xlabel="epoch", ylabel=kind, title=f"{title} {kind}".strip())
        ax.grid(alpha=0.3)
    stage1 = scalars.loc[scalars["stage"] == "stage1", "step"]
    if len(stage1) and (scalars["stage"] != "stage1").any():
        for ax in axes:
            ax.axvline(stage1.max() + 0.5, color="grey", linestyle="--", linewidth=1)
            ax.text(stage1.max() + 0.6, ax.get_ylim()[1], "fine-tuning", va="top", fontsize=8, color="grey")
    axes[0].legend()
    fig.tight_layout()
    return fig


def confusion_heatmap(confusion: pd.DataFrame, title: str = "Confusion matrix"):
    """Table 2 as a heatmap: rows are true classes, columns predicted."""
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    sns.heatmap(confusion, annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    return fig


def roc_curves(y_true: np.ndarray, probs: np.ndarray, classes: list[str], auc: pd.Series, title: str = "ROC"):
    """One-vs-rest ROC curve per class, with its AUC (``auc``, indexed by display name) in the legend."""
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    for i, name in enumerate(classes):
        if 0 < (y_true == i).sum() < len(y_true):
            fpr, tpr, _ = roc_curve(y_true == i, probs[:, i])
            ax.plot(fpr, tpr, label=f"{name} ({auc[display_name(name)]:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def prediction_grid(images: list, rows: pd.DataFrame, classes: list[str], title: str = ""):
    """Figure 1: images with true class, predicted class and confidence; correct on top, wrong below.

    ``rows`` has ``true``, ``pred``, ``confidence``, ``correct``; ``images`` are PIL images in that order.
    """
    groups = [rows[rows["correct"]], rows[~rows["correct"]]]
    cols = max(1, max(len(g) for g in groups))
    fig, axes = plt.subplots(2, cols, figsize=(cols * 2.0, 5.0), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, group in enumerate(groups):
        for c, (index, row) in enumerate(group.iterrows()):
            ax = axes[r, c]
            ax.imshow(images[rows.index.get_loc(index)])
            ax.set_title(f"true: {classes[row['true']]}\npred: {classes[row['pred']]} ({row['confidence']:.2f})",
                         fontsize=6.5, color="green" if row["correct"] else "red")
    axes[0, 0].text(-0.1, 0.5, "correct", transform=axes[0, 0].transAxes, rotation=90, va="center", ha="right")
    axes[1, 0].text(-0.1, 0.5, "incorrect", transform=axes[1, 0].transAxes, rotation=90, va="center", ha="right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def guide_box_rate_chart(rates: pd.DataFrame, title: str = "Frames with the guide box"):
    """Share of frames per class that carry the teal guide box (``label``, ``images``, ``with_box``, ``rate``)."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
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
    ``accuracy``): bars under the diagonal are over-confident; below, how many images each bin holds."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.8, 5.4), sharex=True, height_ratios=(3, 1))
    width = table["upper"] - table["lower"]
    filled = table["count"] > 0
    top.bar(table["lower"][filled], table["accuracy"][filled], width=width[filled], align="edge",
            color="#4C72B0", edgecolor="white", label="accuracy")
    top.bar(table["lower"][filled], table["confidence"][filled] - table["accuracy"][filled],
            bottom=table["accuracy"][filled], width=width[filled], align="edge", color="#C44E52", alpha=0.35,
            label="gap to confidence")
    top.plot([0, 1], [0, 1], color="grey", linestyle=":")
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    top.legend(fontsize=7, loc="upper left")
    bottom.bar(table["lower"], table["count"], width=width, align="edge", color="grey", edgecolor="white")
    bottom.set(xlabel="top-1 confidence", ylabel="images")
    fig.tight_layout()
    return fig


def gradcam_grid(overlays: list, rows: pd.DataFrame, classes: list[str], title: str = ""):
    """Figure 3: a row per true class, Grad-CAM overlays of correct predictions on the left, wrong ones on the
    right (where they exist). ``rows`` has ``true``, ``pred``, ``confidence``, ``correct``; ``overlays`` are
    RGB arrays in that order."""
    per_class = pd.crosstab(rows["true"], rows["correct"]).reindex(columns=[True, False], fill_value=0)
    present = list(per_class.index)
    right, wrong = (max(1, int(per_class[kind].to_numpy().max(initial=0))) for kind in (True, False))
    fig, axes = plt.subplots(max(len(present), 1), right + wrong, figsize=((right + wrong) * 1.9,
                             max(len(present), 1) * 1.9), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, true in enumerate(present):
        of_class = rows[rows["true"] == true]
        for offset, part in ((0, of_class[of_class["correct"]]), (right, of_class[~of_class["correct"]])):
            for c, (index, row) in enumerate(part.iterrows()):
                ax = axes[r, offset + c]
                ax.imshow(overlays[rows.index.get_loc(index)])
                ax.set_title(f"pred: {classes[row['pred']]} ({row['confidence']:.2f})", fontsize=6.5,
                             color="green" if row["correct"] else "red")
        axes[r, 0].text(-0.08, 0.5, classes[true], transform=axes[r, 0].transAxes, rotation=90, va="center",
                        ha="right", fontsize=7)
    axes[0, 0].text(0.0, 1.25, "correct", transform=axes[0, 0].transAxes, fontsize=8, weight="bold")
    axes[0, right].text(0.0, 1.25, "incorrect", transform=axes[0, right].transAxes, fontsize=8, weight="bold")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
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
