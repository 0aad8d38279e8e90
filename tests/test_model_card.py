"""The model cards of the smoke chain's two models: the sections of Mitchell et al. 2019, and every number
one of metrics.json's or of a table the run wrote."""

import json
import re

import pandas as pd
import pytest

from kvasir_utils.analysis import factors
from kvasir_utils.report import model_card

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("chain")]
SECTIONS = ["Model details", "Intended use", "Factors", "Metrics", "Evaluation data", "Training data",
            "Quantitative analyses", "Ethical considerations", "Caveats and recommendations"]


@pytest.fixture(scope="module")
def cards(smoke_chain):
    paths = model_card.write_model_cards(smoke_chain)
    return {path.parent.name: path.read_text() for path in paths}


def _numbers(value) -> list[float]:
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    return [value] if isinstance(value, int | float) and not isinstance(value, bool) else []


def _four_decimals(values) -> set[str]:
    return {f"{abs(v):.4f}" for v in values if pd.notna(v)}


def test_a_card_per_model_in_the_sections_of_mitchell_et_al(cards, smoke_chain):
    assert sorted(cards) == sorted(smoke_chain.train.models)
    for model, text in cards.items():
        headings = re.findall(r"^## (.+)$", text, flags=re.M)
        assert headings == SECTIONS, model
        assert "pipeline check on generated data" in text.split("## Model details")[0]  # on top
        assert "not a medical device" in text and "research and educational purposes only" in text
    assert list(model_card.model_cards_table(smoke_chain).index) == smoke_chain.train.models


def test_every_number_in_a_card_is_one_of_metrics_json_or_a_table(cards, smoke_chain):
    tables = smoke_chain.report.tables
    found = [v for csv in tables.glob("*.csv") for v in pd.read_csv(csv).select_dtypes("number").to_numpy().ravel()]
    for model, text in cards.items():
        record = json.loads((smoke_chain.run.metrics(model)).read_text())
        allowed = _four_decimals(_numbers(record) + found)
        numbers = re.findall(r"(?<![\w./])\d+\.\d{4}(?![\w./])", text)  # not a DOI, version, path
        assert len(numbers) > 60 and set(numbers) <= allowed, (model, set(numbers) - allowed)
        for key in ("accuracy", "macro_f1", "weighted_f1", "macro_auc", "ece", "brier"):
            assert f"| {record[key]:.4f} |" in text, (model, key)
        comparison = pd.read_csv(tables / "comparison.csv", index_col=0).loc[model]
        assert f"{comparison['accuracy_ci_low']:.4f} to {comparison['accuracy_ci_high']:.4f}" in text
        headline = pd.read_csv(tables / "audit_headline.csv", index_col=0).loc[model]
        assert f"accuracy on those {headline['accuracy_with_twin']:.4f}, on the others" in text
        assert f"changes accuracy by {headline['masked_change']:.4f}" in text


def test_the_regions_of_the_gi_tract_are_counted_from_predictions_csv(cards, smoke_chain):
    for model, text in cards.items():
        predictions = pd.read_csv(smoke_chain.run.predictions(model))
        upper = predictions["label"].isin(factors.REGIONS["upper GI"])
        for name, part in (("upper GI", predictions[upper]), ("lower GI", predictions[~upper])):
            accuracy = (part["true"] == part["pred"]).mean()
            assert re.search(rf"\| region +\| {name} +\| +{len(part)} \| +{accuracy:.4f} \|", text), (model, name)
        region = pd.read_csv(smoke_chain.report.table(f"{model}_accuracy_by_region"), index_col=0)
        assert region["images"].sum() == 64
