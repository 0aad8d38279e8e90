"""The audit's sign convention, said once (``analysis.audit``) and shown from there."""

import pandas as pd
import pytest

from kvasir_utils.analysis import audit
from kvasir_utils.report import outputs

# two classes, four images each; masking the box turns two right answers of class a wrong
MASKED = pd.DataFrame({"path": [f"{i}.jpg" for i in range(8)], "label": ["a"] * 4 + ["b"] * 4,
                       "true": [0] * 4 + [1] * 4, "pred": [0] * 4 + [1] * 4,
                       "masked_pred": [0, 0, 1, 1, 1, 1, 1, 1]})


def test_a_change_is_masked_minus_unmasked_in_every_table():
    table = audit.masked_table(MASKED, ["a", "b"])
    assert table["change"].tolist() == pytest.approx([-0.5, 0.0, -0.25])  # a, b, all: masking hurts
    headline = audit.audit_headline({"m": {"accuracy": 1.0, "ece": 0.0, "brier": 0.0}}, {"m": MASKED}, {"0.jpg"},
                                    50, 0.95, 0).loc["m"]
    assert headline["masked_change"] == pytest.approx(-0.25) and headline["masked_change_ci_high"] <= 0
    assert audit.masked_change(0.75, 1.0) == -0.25


def test_the_pages_say_the_signs_from_one_place():
    headline = audit.audit_headline({"m": {"accuracy": 1.0, "ece": 0.0, "brier": 0.0}}, {"m": MASKED}, {"0.jpg"},
                                    50, 0.95, 0)
    rates = pd.DataFrame({"label": ["a", "b"], "images": [4, 4], "with_box": [4, 0], "rate": [1.0, 0.0]})
    assert audit.audit_sentences(headline, rates)[-1] == f"Signs: {audit.SIGNS}."
    assert audit.MASKED_CHANGE in audit.SIGNS and audit.NEAR_DUPLICATE_GAP in audit.SIGNS
    shown = outputs.labelled(audit.masked_table(MASKED, ["a", "b"]))
    assert f"change ({audit.MASKED_CHANGE})" in shown.columns
    assert outputs.LABELS["twin_gap"].endswith(f"({audit.NEAR_DUPLICATE_GAP})")
