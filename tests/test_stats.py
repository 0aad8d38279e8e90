"""Statistics across runs, against values worked out by hand."""

import math

import numpy as np
import pandas as pd
import pytest

from kvasir_utils.analysis import stats


def test_t_interval_by_hand():
    # values 0.90, 0.92, 0.94: mean 0.92, sd 0.02, t(0.975, 2) = 4.302653
    result = stats.t_interval([0.90, 0.92, 0.94])
    assert result["mean"] == pytest.approx(0.92) and result["sd"] == pytest.approx(0.02)
    half = 4.302653 * 0.02 / math.sqrt(3)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((0.92 - half, 0.92 + half), abs=1e-6)
    assert result["n"] == 3


def test_one_run_has_no_spread_and_no_interval():
    result = stats.t_interval([0.9])
    assert result["mean"] == 0.9 and result["n"] == 1
    assert all(math.isnan(result[k]) for k in ("sd", "ci_low", "ci_high"))


def test_summarize_groups_and_counts_runs():
    runs = pd.DataFrame({"model": ["a", "a", "a", "b", "b"], "reading": ["r"] * 5,
                         "accuracy": [0.90, 0.92, 0.94, 0.80, 0.82]})
    table = stats.summarize(runs, ["model", "reading"], ["accuracy"]).set_index("model")
    assert list(table.columns) == ["reading", "metric", "mean", "sd", "ci_low", "ci_high", "n"]
    assert table.loc["a", "n"] == 3 and table.loc["b", "n"] == 2
    assert table.loc["b", "mean"] == pytest.approx(0.81) and table.loc["b", "sd"] == pytest.approx(math.sqrt(2e-4))
    # n = 2: t(0.975, 1) = 12.7062
    assert table.loc["b", "ci_high"] - 0.81 == pytest.approx(12.7062 * math.sqrt(2e-4) / math.sqrt(2), rel=1e-4)


def test_paired_difference_by_hand():
    first = [0.93, 0.91, 0.92, 0.94, 0.90]
    second = [0.91, 0.90, 0.92, 0.91, 0.91]
    result = stats.paired_difference(first, second)
    differences = np.array([0.02, 0.01, 0.0, 0.03, -0.01])
    assert result["mean_difference"] == pytest.approx(0.01) and result["n"] == 5
    sd = differences.std(ddof=1)  # 0.0158114
    assert result["sd"] == pytest.approx(0.0158114, abs=1e-6) == pytest.approx(sd)
    # t = 0.01 / (sd / sqrt 5) = 1.41421, two-sided p with 4 degrees of freedom = 0.2302
    assert result["paired_t_p"] == pytest.approx(0.2302, abs=1e-4)
    # sign test: 3 positive, 1 negative, 1 tie left out: 2 * P(X >= 3 | n=4) = 2 * 5/16 = 0.625
    assert result["sign_test_p"] == pytest.approx(0.625)


def test_sign_test_extremes():
    assert stats.sign_test([0.1] * 5) == pytest.approx(2 / 32)
    assert stats.sign_test([0, 0]) == 1.0


def test_an_interval_is_kept_inside_the_bounds_of_what_it_estimates():
    assert stats.clip_interval(0.85, 1.05) == (0.85, 1.0)
    assert stats.clip_interval(-1.3, 0.2, stats.DIFFERENCE_BOUNDS) == (-1.0, 0.2)
    assert stats.clip_interval(-0.2, 0.3) == (0.0, 0.3)  # a difference would keep -0.2; a share cannot
    low, high = stats.clip_interval(math.nan, math.nan)
    assert math.isnan(low) and math.isnan(high)
