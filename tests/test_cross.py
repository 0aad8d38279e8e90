"""Cross-dataset evaluation: the mapping, the tables with and without the frames shared with the
training set, hashes compared across datasets, and `cross-evaluate` on the smoke run scored on the
generated HyperKvasir-shaped tree."""

import numpy as np
import pandas as pd
import pytest

from kvasir_utils import profiles
from kvasir_utils.analysis import cross_dataset
from kvasir_utils.data import duplicates, prepare, synthetic, synthetic_hyperkvasir
from kvasir_utils.errors import KvasirError
from kvasir_utils.run import cli
from tests.helpers import SMOKE_CHAIN, fewest_right_beyond_chance, tmp_overrides

SOURCE = ["a", "b", "c"]


def _mapping(tmp_path, text="source: s\ntarget: t\nclasses:\n  a1: a\n  a2: a\n  bee: b\n"):
    path = tmp_path / "t-to-s.yaml"
    path.write_text(text)
    return cross_dataset.read_mapping(path)


def test_the_mapping_lets_through_its_classes_and_lists_the_others(tmp_path):
    mapping = _mapping(tmp_path)
    images = pd.DataFrame({"path": [f"{c}/{i}.jpg" for c in ("a1", "a2", "bee", "zz") for i in range(2)],
                           "label": [c for c in ("a1", "a2", "bee", "zz") for _ in range(2)]})
    mapped, left_out = cross_dataset.map_images(images, mapping, SOURCE)
    assert list(mapped["source_label"]) == ["a", "a", "a", "a", "b", "b"] and list(mapped["true"]) == [0] * 4 + [1] * 2
    assert left_out.to_dict("records") == [{"class": "zz", "images": 2}]
    with pytest.raises(KvasirError, match=r"source class\(es\) the model was not trained on: b; target class\(es\) "
                                          r"not in the target dataset: bee"):
        cross_dataset.check_mapping(mapping, ["a", "c"], ["a1", "a2"])
    with pytest.raises(KvasirError, match="needs `classes:`"):
        _mapping(tmp_path, "source: s\ntarget: t\n")
    with pytest.raises(KvasirError, match="no class mapping .*nope.yaml.*known mappings: hyper-kvasir-to-kvasir-v2"):
        cross_dataset.read_mapping(cross_dataset.MAPPING_DIR / "nope.yaml")


def test_the_summary_scores_with_and_without_the_overlap_beside_the_own_validation():
    frame = pd.DataFrame({"true": [0, 0, 1, 1, 0, 1], "pred": [0, 0, 1, 1, 1, 0],
                          "overlap": [True, True, True, True, False, False]})
    summary = cross_dataset.cross_summary({"m": frame}, {"m": {"accuracy": 0.9, "macro_f1": 0.8}}, SOURCE)
    row = summary.loc["m"]
    assert (row["source_accuracy"], row["target_images"], row["overlap_images"]) == (0.9, 6, 4)
    assert row["target_accuracy"] == pytest.approx(4 / 6) and row["target_without_overlap_accuracy"] == 0
    assert row["target_macro_f1"] == pytest.approx(2 / 3)  # over a and b; c has no image in the target
    assert summary["target_images"].dtype == int
    tables = cross_dataset.cross_tables(frame, SOURCE)
    assert tables["table2"].to_numpy().tolist() == [[2, 1, 0], [1, 2, 0], [0, 0, 0]]
    assert tables["table1_without_overlap"].loc["Macro Avg", "Support"] == 2


def test_hashes_are_compared_across_datasets_not_within():
    first = np.array([0, 0xFF, 0xFFFF << 48], np.uint64)
    second = np.array([1, 2**63 + 0xFFFF, 0xF0], np.uint64)
    pairs = duplicates.cross_pairs(first, second, max_distance=4)
    assert sorted(zip(pairs["i"], pairs["j"], pairs["distance"])) == [(0, 0, 1), (0, 2, 4), (1, 2, 4)]
    assert duplicates.near_duplicate_pairs(first, max_distance=8).to_dict("list") == \
        {"i": [0], "j": [1], "distance": [8]}


def _scored_from_predictions_and_beyond_chance(row: pd.Series, predictions: pd.DataFrame) -> None:
    """The summary's two accuracies are those of predictions.csv, with and without the overlap (exact,
    whatever the model learned); and the model learned: the mapped classes carry the smoke classes' cues,
    so it is right on more target images than a guess of the commonest class could be (binomial bound)."""
    right = predictions["true"] == predictions["pred"]
    for name, kept in (("target", right), ("target_without_overlap", right[~predictions["overlap"]])):
        assert row[f"{name}_accuracy"] == pytest.approx(kept.mean(), abs=1e-6), name  # the CSV keeps 6 digits
        commonest = predictions.loc[kept.index, "true"].value_counts(normalize=True).max()
        assert kept.sum() >= fewest_right_beyond_chance(len(kept), commonest), (name, kept.sum(), len(kept))


@pytest.mark.slow
@pytest.mark.xdist_group("chain")
def test_cross_evaluate_counts_the_shared_frames_and_scores_with_and_without_them(smoke_chain, capsys):
    root = smoke_chain.runs_root.parent
    overrides = tmp_overrides(root) + SMOKE_CHAIN
    assert cli.main(["cross-evaluate", "--profile", "smoke", "--target", "smoke-hyperkvasir",
                     *[a for o in overrides for a in ("--set", o)]]) == 0
    printed = capsys.readouterr().out
    tables = smoke_chain.report_dir / "cross" / "smoke-hyperkvasir" / "tables"
    summary = pd.read_csv(tables / "summary.csv", index_col=0)
    # expected overlap: the tree's copies of a smoke frame in training (shifted by a few pixels: the hash
    # finds each); a tree frame whose smoke frame is in validation but has a planted copy in training may
    # be found too (a rotated or cropped copy is often beyond the hash's reach)
    split = pd.read_csv(smoke_chain.run.split).set_index("path")["split"]
    tree = synthetic_hyperkvasir.plan(40, seed=0)
    plan = tree.dropna(subset=["shared_with"])
    traps = synthetic.planted_traps(synthetic_hyperkvasir.KVASIR_CLASSES, 40, seed=0)
    copies = {o: list(traps.loc[traps["duplicate_of"] == o, "path"]) for o in plan["shared_with"]}
    planted = {path for path, o in zip(plan["path"], plan["shared_with"]) if split[o] == "train"}
    maybe = {path for path, o in zip(plan["path"], plan["shared_with"])
             if split[o] != "train" and (split[copies[o]] == "train").any()}
    assert 0 < len(planted) < len(plan)
    flagged = pd.read_csv(smoke_chain.run_dir / "cross" / "smoke-hyperkvasir" / "resnet50" / "predictions.csv")
    flagged = set(flagged.loc[flagged["overlap"], "path"])
    # every planted copy is found; a generated frame may also be a near-duplicate by chance (same cue,
    # similar layout): each such extra must really be within the distance of a training frame
    assert planted <= flagged and len(flagged - planted - maybe) <= 2, (planted - flagged, flagged - planted)
    if extras := sorted(flagged - planted):
        target = profiles.load_profile("smoke-hyperkvasir", overrides)
        train = prepare.image_hashes(smoke_chain, split.index[split == "train"])
        _, distance = duplicates.nearest(prepare.image_hashes(target, extras), train)
        assert (distance <= smoke_chain.split.near_duplicates.phash_bits).all(), distance
    expected = len(flagged)
    for model in smoke_chain.train.models:
        row = summary.loc[model]
        assert row["overlap_images"] == expected
        assert row["target_images"] == tree["label"].isin(synthetic_hyperkvasir.kvasir_counterparts()).sum()
        assert row["target_without_overlap_images"] == row["target_images"] - expected
        assert f"{model}: validation accuracy on smoke {row['source_accuracy']:.4f}" in printed
        assert pd.read_csv(tables / f"{model}_table2.csv", index_col=0).shape == (8, 8)
        predictions = pd.read_csv(smoke_chain.run_dir / "cross" / "smoke-hyperkvasir" / model / "predictions.csv")
        assert predictions.filter(like="p_").shape == (row["target_images"], 8)
        _scored_from_predictions_and_beyond_chance(row, predictions)
    left_out = pd.read_csv(tables / "left_out.csv")
    assert sorted(left_out["class"]) == sorted(set(synthetic_hyperkvasir.CLASS_NAMES) -
                                               set(synthetic_hyperkvasir.kvasir_counterparts()))
    assert f"{expected} of them with a near-identical frame in its training set" in printed
