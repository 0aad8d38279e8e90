"""The model cards of the smoke chain's two models: the sections of Mitchell et al. 2019, and every number
one of metrics.json's or of a table the run wrote."""

import json
import re

import pandas as pd
import pytest

from kvasir_utils import profiles
from kvasir_utils.analysis import factors
from kvasir_utils.report import formats, model_card

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("chain")]
SECTIONS = ["Model details", "Intended use", "Factors", "Metrics", "Evaluation data", "Training data",
            "Quantitative analyses", "Ethical considerations", "Caveats and recommendations"]


@pytest.fixture(scope="module")
def cards(smoke_chain):
    paths = model_card.write_model_cards(smoke_chain)
    return {path.parent.name: path.read_text() for path in paths}


def test_a_card_per_model_in_the_sections_of_mitchell_et_al(cards, smoke_chain):
    assert sorted(cards) == sorted(smoke_chain.train.models)
    for model, text in cards.items():
        headings = re.findall(r"^## (.+)$", text, flags=re.M)
        assert headings == SECTIONS, model
        assert "pipeline check on generated data" in text.split("## Model details")[0]  # on top
        assert "not a medical device" in text and "research and educational purposes only" in text
        assert model_card.citation_line(smoke_chain.data.dataset) in text and "KVASIR" in text  # the data's own
    assert list(model_card.model_cards_table(smoke_chain).index) == smoke_chain.train.models


def test_every_number_in_a_card_is_metrics_json_or_a_tables_in_the_reports_style(cards, smoke_chain):
    tables = smoke_chain.report.tables
    for model, text in cards.items():
        record = json.loads((smoke_chain.run.metrics(model)).read_text())
        assert not re.findall(r"(?<![\w./])\d+\.\d{4}(?![\w./])", text)  # no four-decimal fractions left
        for key, name in (("accuracy", "accuracy"), ("macro_f1", "macro F1"), ("weighted_f1", "weighted F1"),
                          ("macro_auc", "macro ROC-AUC (one-vs-rest)"), ("brier", "Brier score (multi-class)")):
            kind = formats.kind_of(key)
            row = re.search(rf"^\| {re.escape(name)} \| {re.escape(formats.number(record[key], kind))} \| "
                            r"\[([^\]]+)\] \|", text, flags=re.M)
            assert row, (model, key)  # the value of metrics.json, and an interval for every metric
        headline = pd.read_csv(tables / "audit_headline.csv", index_col=0).loc[model]
        assert f"accuracy on those {formats.number(headline['accuracy_with_twin'], 'percent')}, on the others" in text
        assert f"changes accuracy by {formats.number(headline['masked_change'], 'points')}" in text
        assert "None" not in text
        regions = re.search(r"upper GI: ([^;]*); lower GI: ([^)]*)\)", text)
        named = [c.strip() for part in regions.groups() for c in part.split(",")]
        assert sorted(named) == sorted(c for c in smoke_chain.classes if c in factors.REGION_OF), model  # its own


def test_the_regions_of_the_gi_tract_are_counted_from_predictions_csv(cards, smoke_chain):
    for model, text in cards.items():
        predictions = pd.read_csv(smoke_chain.run.predictions(model))
        upper = predictions["label"].isin(factors.REGIONS["upper GI"])
        for name, part in (("upper GI", predictions[upper]), ("lower GI", predictions[~upper])):
            accuracy = (part["true"] == part["pred"]).mean()
            shown = re.escape(formats.number(accuracy, "percent"))
            assert re.search(rf"\| region +\| {name} +\| +{len(part)} +\| +{shown} +\|", text), (model, name)
        region = pd.read_csv(smoke_chain.report.table(f"{model}_accuracy_by_region"), index_col=0)
        assert region["images"].sum() == 64


def test_a_card_describes_the_model_as_it_was_trained_not_the_profiles_nulls():
    cfg = profiles.load_profile("backbones")  # image_size 224 for all; mean and std each model's own (null here)
    assert cfg.transforms.mean is None and cfg.train.stage2.trainable == "last_tensors:10"
    record = {"model_settings": {"transforms": {"image_size": 224, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
                                 "trainable": {"stage1": "head", "stage2": "lora"}}}
    own = model_card.model_settings(cfg, record)
    assert own.transforms.mean == [0.5, 0.5, 0.5] and own.train.stage2.trainable == "lora"
    assert model_card.model_settings(cfg, {}) is cfg  # a metrics.json from before the record: the run's settings
