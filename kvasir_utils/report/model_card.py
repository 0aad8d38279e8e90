"""Model cards: one per trained model, ``reports/<profile>/models/<model>/model_card.md``, in the
sections of Mitchell et al. 2019 (Model Cards for Model Reporting), made from the run's files
only: its settings (``runs/<profile>/config.yaml``), ``metrics.json`` and ``predictions.csv``, and
the tables of notebooks 04, 05 and 07. Every number in a card is one of those files' (or of the
region table written beside them, or an interval over the validation images of predictions.csv), in
the reports' number style (``formats``); a table not made yet is named, not guessed.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from markupsafe import Markup

from kvasir_utils import artefacts, profiles
from kvasir_utils.analysis import audit, departures, factors, intervals, metrics, paper
from kvasir_utils.artefacts import Table
from kvasir_utils.config import Config
from kvasir_utils.files import sha256_file, write_text_atomic
from kvasir_utils.provenance import describe_commit, describe_data, describe_runtime, describe_weights
from kvasir_utils.report import formats, pages, tables
from kvasir_utils.report.outputs import banner_html, html_table, save_table, to_markdown

NOT_YET = "not made yet: `make reproduce PROFILE={profile}` writes it ({what})"


@dataclass
class CardInputs:
    """What a card is made from."""

    cfg: Config  # the run's settings as notebook 01 saved them
    model: str
    record: dict  # metrics.json
    predictions: pd.DataFrame
    tables: dict  # name -> the table under reports/<profile>/tables/, or None where it is not made yet

    def table(self, name: str) -> pd.DataFrame | None:
        return self.tables.get(name)

    @property
    def regions(self) -> pd.DataFrame:
        return factors.region_table(self.predictions, self.cfg.classes)


def _f(value, kind: str = "score") -> str:
    """A number of the card in the reports' style (``formats``)."""
    return formats.number(value, kind, "none")


def _table(frame: pd.DataFrame) -> str:
    """A table of the card as Markdown, its numbers in the reports' style."""
    return to_markdown(frame, styled=True)


def run_settings(cfg: Config) -> Config:
    """The settings the run was made with (``runs/<profile>/config.yaml``), else ``cfg``."""
    path = cfg.run.settings
    return profiles.with_protocol(profiles.read_yaml(path, "saved config"), cfg.profile_argument) \
        if path.exists() else cfg


def read_inputs(cfg: Config, model: str) -> CardInputs:
    """metrics.json, predictions.csv and every table a card uses (those not made yet are None)."""
    names = [*(Table.of_model(model, kind) for kind in ("table1", "roc_auc", "guide_box_masked")),
             Table.GUIDE_BOX_RATES, Table.NEAR_DUPLICATES, Table.VALIDATION_IMAGES, Table.AUDIT_HEADLINE,
             Table.CLASS_COUNTS]
    found = {name: pd.read_csv(cfg.report.table(name), index_col=None if name in Table.UNINDEXED else 0,
                               keep_default_na=name != Table.VALIDATION_IMAGES)
             for name in names if cfg.report.table(name).exists()}
    predictions = pd.read_csv(cfg.run.predictions(model))
    if (flags := found.get(Table.VALIDATION_IMAGES)) is not None:  # notebook 07's near-duplicate flags
        found[Table.of_model(model, "accuracy_by_near_duplicate")] = audit.accuracy_by_twin(
            predictions, set(flags.loc[flags["twin"] != "", "path"]))
    record = artefacts.read_metrics(cfg.run.metrics(model))
    return CardInputs(model_settings(run_settings(cfg), record), model, record, predictions, found)


def model_settings(cfg: Config, record: dict) -> Config:
    """The run's settings as this model was trained with them: its own input size and normalisation
    (where the profile leaves them null) and its own stage readings, as metrics.json recorded them."""
    own = record.get("model_settings") or {}
    return profiles.with_model_settings(cfg, own.get("transforms", {}), own.get("trainable", {}))


def _checkpoint(cfg: Config, model: str) -> Path:
    """The checkpoint of the stage that delivers the model."""
    return cfg.run.checkpoint(model, artefacts.final_stage(cfg.train.stage2.epochs))


def _started_from(weights: dict | None) -> str:
    if weights is None:
        return "random initialisation (no pretrained weights)."
    return f"pretrained weights: {describe_weights(weights)}."


def _details(i: CardInputs) -> list[str]:
    cfg, record, made = i.cfg, i.record, i.record["provenance"]
    checkpoint = _checkpoint(cfg, i.model)
    t, s1, s2 = cfg.transforms, cfg.train.stage1, cfg.train.stage2
    return [
        "## Model details",
        f"- **Model:** {'timm' if i.model.startswith(artefacts.TIMM_PREFIX) else 'torchvision'} `{i.model}`, an "
        f"image classifier with a new "
        f"{len(cfg.classes)}-class head; {record['parameters']:,} parameters, {record['gflops']:.2f} GFLOPs per "
        f"{t.image_size} px image.",
        f"- **Developed by:** this study, which reproduces Cruz (2025) on Kvasir v2; this model: profile "
        f"`{cfg.profile}` on {cfg.data.name}; evaluated on "
        f"{datetime.date.fromtimestamp((cfg.run.metrics(i.model)).stat().st_mtime)}.",
        f"- **Started from:** {_started_from(made.get('weights'))}",
        f"- **Protocol:** Adam, batch {cfg.train.batch_size}; stage 1: {formats.counted(s1.epochs, 'epoch')} "
        f"training `{s1.trainable}` at learning rate {s1.lr:g}; stage 2: {formats.counted(s2.epochs, 'epoch')} "
        f"training `{s2.trainable}` at {s2.lr:g} "
        f"({cfg.train.stage2_init}, frozen BatchNorm layers in {cfg.train.frozen_batchnorm} mode); input "
        f"{t.image_size} px ({t.eval_resize} at evaluation), overlays masked: {t.mask_overlays}. The readings of what "
        "the paper leaves open are in the table below.",
        f"- **Checkpoint:** `{checkpoint}`" + (f", SHA-256 {sha256_file(checkpoint)}" if checkpoint.exists() else ""),
        f"- **Code:** study commit {describe_commit(made)}; requirements.lock SHA-256 {made.get('lock_sha256')}; "
        f"evaluated with torch {record['environment']['torch']} on {describe_runtime(record['runtime'])}.",
        f"- **Data:** {describe_data(made.get('archive'))}; split.csv SHA-256 "
        f"{sha256_file(cfg.run.split) if cfg.run.split.exists() else 'not found'}.",
        f"- **Use it:** `make predict PROFILE={cfg.profile_argument} MODEL={i.model} IMAGES=<folder>`; ONNX with "
        f"`make export PROFILE={cfg.profile_argument} MODEL={i.model}` (into `export/` beside this card; see "
        "docs/using-the-model.md).",
        citation_line(cfg.data.dataset),
        "", "Readings of the paper's ambiguous choices:", "",
        _table(tables.readings(paper.readings_table(cfg.to_dict()), cfg)),
    ]


def citation_line(dataset: str) -> str:
    """The card's citation: the paper, and the dataset the model was trained on where it is a public
    one (``paper.citations``, as the index); a user's own data is theirs to cite."""
    cited = " ".join(paper.citations(dataset))
    return f"- **Citation and licence:** {cited} The study's code is under the MIT licence."


def _intended_use(i: CardInputs) -> list[str]:
    return [
        "## Intended use",
        "- **Primary use:** research and education: reproducing and studying the paper's transfer-learning "
        f"protocol on {i.cfg.data.name}, and what inflates Kvasir scores.",
        "- **Out of scope:** clinical use of any kind (diagnosis, triage, screening, decision support). The model "
        f"is not a medical device, was never validated clinically, and has seen only the images of {i.cfg.data.name}.",
        f"- **The dataset's terms:** {paper.dataset_terms(i.cfg.data.dataset)}",
    ]


def _factors(i: CardInputs) -> list[str]:
    upper, lower = ([c for c in factors.REGIONS[region] if c in i.cfg.classes] for region in ("upper GI", "lower GI"))
    return [
        "## Factors",
        "Results are broken down by the factors known to matter on Kvasir v2: the class; the region of the "
        "GI tract of this model's classes (upper GI: " + (", ".join(upper) or "none") + "; lower GI: "
        + (", ".join(lower) or "none") + "); the teal position-guide box of colonoscopy frames (the "
        "same frames as they are and with the box blacked out at test time); and whether a validation image has "
        "a near-duplicate frame in training. Kvasir records no patient, device or demographic attributes, so "
        "no other factor can be evaluated.",
    ]


def _metrics(i: CardInputs) -> list[str]:
    r, cfg = i.record, i.cfg
    probs = i.predictions[artefacts.probability_columns(cfg.classes)].to_numpy()
    found = intervals.card_intervals(i.predictions["true"], probs, cfg.eval.bootstrap_samples, cfg.eval.confidence,
                                     cfg.eval.seed)
    reported = paper.reported_metrics(i.model, cfg.classes)
    names = {"accuracy": "accuracy", "macro_f1": "macro F1", "weighted_f1": "weighted F1",
             "macro_auc": "macro ROC-AUC (one-vs-rest)",
             "ece": f"expected calibration error ({metrics.CALIBRATION_BINS} bins)",
             "brier": "Brier score (multi-class)"}
    lines = []
    for key, name in names.items():
        kind = formats.kind_of(key)
        theirs = formats.number(reported.get(key), kind, formats.NOT_REPORTED)
        lines.append(f"| {name} | {_f(r[key], kind)} | {formats.interval(*found[key], kind)} | {theirs} |")
    return [
        "## Metrics",
        f"On the {r['images']} validation images; the predicted class is the most probable one (no threshold). "
        f"Intervals: {cfg.eval.confidence:.0%} percentile bootstrap over these validation images "
        f"({cfg.eval.bootstrap_samples} resamples) of this one training run: the variance from one training run "
        "(seed) to the next is not in them.", "",
        f"| metric | value | {cfg.eval.confidence:.0%} interval | the paper |", "|---|---|---|---|", *lines,
    ]


# Where each public dataset's frames come from, for the card's caveats
SOURCES = {
    "kvasir-v2": "The images are de-identified endoscopy frames of one health trust in Norway (Vestre Viken), from "
                 "one centre's equipment and practice.",
    "hyper-kvasir": "The images are de-identified endoscopy frames from Bærum Hospital (Vestre Viken, Norway), from "
                    "one centre's equipment and practice.",
    "other": "Where the images come from is the dataset owner's to state (data.dataset: other).",
}


def _split_words(cfg: Config, grouped: str) -> str:
    """How the run's images were split, in words."""
    if cfg.split.source == "file":
        where = f"`{cfg.split.file}`" if cfg.split.file else "the generated tree's own split file"
        return f"the split read from {where} (validation fold {cfg.split.validation_fold}, matched by file name)"
    fold = f", fold {cfg.split.validation_fold}" if cfg.split.validation_fold is not None else ""
    return f"a stratified split of the dataset ({cfg.split.val_fraction:.0%}, seed {cfg.split.seed}{fold}, {grouped})"


def _data(i: CardInputs) -> list[str]:
    cfg, counts = i.cfg, i.table(Table.CLASS_COUNTS)
    t = cfg.transforms
    sizes = (f"{int(counts.loc['total', 'train'])} training and {int(counts.loc['total', 'val'])} validation images"
             if counts is not None else f"{i.record['images']} validation images")
    grouped = "near-duplicate groups kept on one side" if cfg.split.group_near_duplicates else "image by image"
    return [
        "## Evaluation data",
        f"The validation part of {_split_words(cfg, grouped)}: {sizes}. Each image is resized once into the "
        f"study's cache (short side "
        f"{cfg.cache.short_side} px, JPEG quality {cfg.cache.quality}), then to {t.image_size}x{t.image_size} "
        f"({t.eval_resize}) and normalised with ImageNet's statistics.",
        "", "## Training data",
        f"The training part of the same split (per class below). Augmentation: random resized crop to {t.image_size} "
        f"px (scale {t.crop_scale}, ratio {t.crop_ratio}), flips (p {t.hflip_p} and {t.vflip_p}), rotation up to "
        f"{t.rotation_degrees:g} degrees, brightness and contrast {t.brightness} and {t.contrast}.",
        *(["", _table(counts)] if counts is not None else []),
    ]


def _analyses(i: CardInputs) -> list[str]:
    masked, by_twin = (i.table(Table.of_model(i.model, kind)) for kind in ("guide_box_masked",
                                                                           "accuracy_by_near_duplicate"))
    table = factors.disaggregated_table(i.record, i.regions, masked, by_twin)
    lines = ["## Quantitative analyses", "Accuracy by factor:", "", _table(table.reset_index()),
             "Regions:", "", _table(i.regions)]
    needed = [Table.of_model(i.model, "table1"), Table.of_model(i.model, "roc_auc"), Table.GUIDE_BOX_RATES,
              Table.of_model(i.model, "guide_box_masked"), Table.NEAR_DUPLICATES]
    if all(i.table(n) is not None for n in needed):
        per_class = factors.class_factors(i.cfg.classes, *[i.table(n) for n in needed])
        lines += ["Per class:", "", _table(per_class)]
    else:
        lines.append("Per class: " + NOT_YET.format(profile=i.cfg.profile_argument, what="notebooks 04 and 07") + ".")
    return lines


def _ethics(i: CardInputs) -> list[str]:
    headline = i.table(Table.AUDIT_HEADLINE)
    row = headline.loc[i.model] if headline is not None and i.model in headline.index else None
    audit = [] if row is None else [
        f"- **Near-duplicate frames:** Kvasir has no patient ids, so the split is by image and near-identical "
        f"frames of one examination can fall on both sides: {_f(row['twin_share'], 'percent')} of the validation "
        f"images have one in training; accuracy on those {_f(row['accuracy_with_twin'], 'percent')}, on the others "
        f"{_f(row['accuracy_without_twin'], 'percent')}. The validation score overstates accuracy on new patients.",
        f"- **A shortcut:** blacking out the guide box at test time changes accuracy by "
        f"{_f(row['masked_change'], 'points')}; "
        "the box appears in some lower-GI classes only, and a model can learn it instead of tissue.",
        f"- **Calibration:** the expected calibration error is {_f(row['ece'])}: a predicted probability is not the "
        "chance of being right.",
    ]
    return [
        "## Ethical considerations",
        f"- {SOURCES.get(i.cfg.data.dataset, SOURCES['other'])} Nothing is known of the patients (no ids, age, sex "
        "or ethnicity), so fairness across patient groups cannot be assessed.",
        *audit, *([] if audit else ["- The audit (notebook 07) has not run: " + NOT_YET.format(
            profile=i.cfg.profile_argument, what="notebook 07") + "."]),
        "", "## Caveats and recommendations",
        "- The split is by image, not by patient or examination, and the data come from one centre: expect lower "
        "accuracy on other hospitals' images. Validate on your own data before drawing any conclusion.",
        "- Predictions are the model's softmax output on one image; they are not calibrated risks.",
    ]


def model_card_markdown(cfg: Config, model: str) -> str:
    """The model card of ``model`` in profile ``cfg`` as Markdown (made from the run's files)."""
    return card_text(read_inputs(cfg, model))


def card_text(i: CardInputs) -> str:
    """A model card as Markdown from what it is made of."""
    title = [f"# Model card: {i.model} (profile `{i.cfg.profile}`)", ""]
    if i.cfg.generated_data:
        title += ["> **This card describes a pipeline check on generated data.** The model was trained and "
                  f"evaluated on the synthetic images of profile `{i.cfg.profile}` "
                  f"(`make smoke PROFILE={i.cfg.profile_argument}`); its "
                  "numbers show that the pipeline runs, and say nothing about Kvasir, endoscopy or any patient.", ""]
    sections = [_details(i), _intended_use(i), _factors(i), _metrics(i), _data(i), _analyses(i), _ethics(i)]
    return "\n".join(title + ["\n".join(section) + "\n" for section in sections])


def write_model_cards(cfg: Config) -> list[Path]:
    """``model_card.md`` for every evaluated model of the profile (and the region table it uses,
    ``tables/<model>_accuracy_by_region``); returns the cards' paths."""
    written = []
    for model in cfg.train.models:
        if (cfg.run.metrics(model)).exists():
            inputs = read_inputs(cfg, model)  # read once for the region table and the card
            save_table(inputs.regions, cfg, Table.of_model(model, "accuracy_by_region"))
            written.append(write_text_atomic(cfg.report.model_dir(model) / "model_card.md", card_text(inputs)))
    return written


def model_cards_table(cfg: Config) -> pd.DataFrame:
    """For the index page: per model with a card, the card and the ONNX export (paths relative to
    ``reports/<profile>/``; empty where not exported)."""
    rows = {}
    for model in cfg.train.models:
        folder = cfg.report.model_dir(model)
        if (folder / "model_card.md").exists():
            onnx = folder / "export" / "model.onnx"
            rows[model] = {"card": str((folder / "model_card.md").relative_to(cfg.report_dir)),
                           "onnx": str(onnx.relative_to(cfg.report_dir)) if onnx.exists() else ""}
    return pd.DataFrame.from_dict(rows, orient="index", columns=["card", "onnx"]).rename_axis("model")


def _banner_words(cfg: Config) -> str:
    """The card page's banner: the profile and how many settings depart from the paper (the index's
    appendix lists them: a long list would fill the screen before the card's title)."""
    found = len(departures.departures(cfg))
    return f"Profile '{cfg.profile}'." + (f" This run departs from the paper's protocol in {found} setting(s): the "
                                          "index's appendix lists them." if found else "")


def render_model_cards(cfg: Config) -> Markup | None:
    """``model_card.md`` and its HTML page for every evaluated model; the index's table of them."""
    import mistune

    root = cfg.report_dir
    for card in write_model_cards(cfg):
        pages.write_page("model_card.html.j2", card.with_suffix(".html"), title=f"Model card: {card.parent.name}",
                         root=pages.rel(root, card.parent) + "/",
                         banner=Markup(banner_html(cfg, _banner_words(cfg), page="model_card")),
                         body=Markup(mistune.html(card.read_text())))
    rows = []
    for model, found in model_cards_table(cfg).iterrows():
        card = root / found["card"]
        rows.append({"model": formats.model_name(model),
                     "card": f'<a href="{pages.rel(card.with_suffix(".html"), root)}">model card</a> '
                     f'(<a href="{pages.rel(card, root)}">Markdown</a>)',
                     "ONNX": f'<a href="{pages.rel(root / found["onnx"], root)}">model.onnx</a>' if found["onnx"]
                     else f"<code>make export PROFILE={cfg.profile_argument} MODEL={model}</code> writes it"})
    if not rows:
        return None
    shown = pd.DataFrame(rows).assign(card=lambda f: f["card"].map(Markup), ONNX=lambda f: f["ONNX"].map(Markup))
    return Markup(f'<div class="kvasir-scroll">{html_table(shown, "Each trained model: its card and export")}</div>')
