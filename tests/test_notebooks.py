"""The whole smoke chain (conftest.smoke_chain): notebooks 01-07 and the report, by papermill."""

import json
import subprocess
import sys

import nbformat
import pandas as pd
import pytest

from kvasir_utils import artefacts, profiles
from kvasir_utils.data import prepare, synthetic
from kvasir_utils.run import notebooks
from tests.helpers import fewest_right_beyond_chance, tmp_overrides

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("chain")]


def test_notebook_01_writes_the_split_and_its_report_items(smoke_chain):
    split = pd.read_csv(smoke_chain.run.split)
    assert list(split.columns) == ["path", "label", "split"]
    assert set(split["split"]) == {"train", "val"} and split["label"].nunique() == 8
    for name in ("class_counts.csv", "class_counts.md", "class_counts.tex"):
        assert (smoke_chain.report.tables / name).stat().st_size > 0
    executed = nbformat.read(notebooks.executed_notebook_path(smoke_chain, "01_download_and_split"), as_version=4)
    outputs = json.dumps([c.get("outputs", []) for c in executed.cells])
    assert "dyed-lifted-polyps" in outputs and "Pipeline check on generated data" in outputs


def test_training_notebooks_leave_checkpoints_histories_and_event_files(smoke_chain):
    for model in smoke_chain.train.models:
        for stage in artefacts.STAGES:
            folder = smoke_chain.run.stage_dir(model, stage)
            history = pd.read_csv(folder / "history.csv")
            assert {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds",
                    "images_per_s"} <= set(history.columns) and len(history) == smoke_chain.stage_config(stage).epochs
            assert (folder / "checkpoint.pt").exists() and list((folder / "tensorboard").glob("events.*"))


def test_evaluation_writes_predictions_and_metrics(smoke_chain):
    for model in smoke_chain.train.models:
        record = json.loads((smoke_chain.run.metrics(model)).read_text())
        assert {"accuracy", "macro_f1", "macro_auc", "parameters", "gflops"} <= set(record)
        predictions = pd.read_csv(smoke_chain.run.predictions(model))
        probs = predictions.filter(like="p_")
        assert probs.shape[1] == 8 and probs.sum(axis=1).to_numpy() == pytest.approx(1, abs=1e-4)
        assert record["accuracy"] == pytest.approx((predictions["true"] == predictions["pred"]).mean())


def test_every_table_and_figure_of_the_paper_is_in_the_report(smoke_chain):
    tables, figures = smoke_chain.report.tables, smoke_chain.report.figures
    for model in smoke_chain.train.models:
        for name in ("table1", "table2", "roc_auc"):
            assert (tables / f"{model}_{name}.csv").stat().st_size > 0
        for name in ("figure1_predictions", "figure2_curves", "confusion", "roc"):
            assert (figures / f"{model}_{name}.png").stat().st_size > 1000
    comparison = pd.read_csv(tables / "comparison.csv", index_col=0)
    assert list(comparison.index) == smoke_chain.train.models and "accuracy_paper" in comparison.columns
    index = (smoke_chain.report_dir / "index.html").read_text()
    for model in smoke_chain.train.models:
        assert f"figures/{model}_figure1_predictions.png" in index and f"html/04_evaluate-{model}.html" in index
    assert "Did this run reproduce the paper?" in index and "train.stage2.trainable" in index
    assert "92.6%" in index  # the paper's accuracy, in the house style


def test_every_report_page_says_once_that_the_data_is_generated(smoke_chain):
    pages = [smoke_chain.report_dir / "index.html", *(smoke_chain.report_dir / "html").glob("*.html"),
             *smoke_chain.report_dir.glob("browser-*.html")]
    assert len(pages) == 12
    for page in pages:
        text = page.read_text()
        assert text.count('<div class="kvasir-banner">') == 1 and "mean nothing about Kvasir" in text, page


def test_every_link_and_image_of_every_report_page_resolves_to_a_file(smoke_chain):
    import re
    from urllib.parse import unquote

    pages = [smoke_chain.report_dir / "index.html", *(smoke_chain.report_dir / "html").glob("*.html"),
             *smoke_chain.report_dir.glob("browser-*.html")]
    checked = 0
    for page in pages:
        for target in re.findall(r"""(?:href|src)=['"]([^'"#]+)['"]""", page.read_text()):
            if target.startswith(("http://", "https://", "data:", "mailto:")):
                continue
            assert (page.parent / unquote(target)).is_file(), f"{page.name} links to missing {target}"
            checked += 1
    assert checked > 20


def test_the_smoke_models_learn_well_above_chance(smoke_chain):
    for model in smoke_chain.train.models:
        predictions = pd.read_csv(smoke_chain.run.predictions(model))  # metrics.json's accuracy (test above)
        right = (predictions["true"] == predictions["pred"]).sum()
        # the validation set is balanced (stratified): a model that learned nothing is right on 1 in 8, and
        # reaches 20 of 64 with a chance under 1e-4. EfficientNet-B0 at 32 px, from random weights in 3 + 3
        # epochs, has been right on 22 to 26 of 64 (its stage 1 predicts one class), so a stricter bar
        # (1e-6: 24) would test the CPU's rounding rather than whether it learned.
        assert right >= fewest_right_beyond_chance(len(predictions), 1 / 8, p_value=1e-4), (model, right,
                                                                                               len(predictions))


def test_a_failing_notebook_exits_non_zero_with_the_reason_and_leaves_no_stamp(tmp_path):
    overrides = [*tmp_overrides(tmp_path), "paths.runs=" + str(tmp_path / "empty")]
    result = subprocess.run([sys.executable, "-m", "kvasir_utils", "run-notebook", "02_train", "--profile", "smoke",
                             "--model", "resnet50", *[a for o in overrides for a in ("--set", o)]],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "split.csv does not exist: run notebook 01 first" in result.stderr.splitlines()[-1]
    cfg = profiles.load_profile("smoke", overrides)
    assert not notebooks.executed_notebook_path(cfg, "02_train", "resnet50").exists()


def test_the_audit_recovers_the_planted_traps_and_reaches_the_index(smoke_chain):

    tables = smoke_chain.report.tables
    rates = pd.read_csv(tables / "guide_box_rates.csv").set_index("label")["rate"]
    for label, planted in synthetic.GUIDE_BOX_RATES.items():
        assert rates[label] == pytest.approx(planted, abs=0.1), label  # found in the cache by colour and place
    headline = pd.read_csv(tables / "audit_headline.csv", index_col=0)
    assert list(headline.index) == smoke_chain.train.models
    assert ((headline["twin_share"] > 0) & (headline["twin_share"] < 0.5)).all()
    for model in smoke_chain.train.models:
        record = json.loads((smoke_chain.run.metrics(model)).read_text())
        assert 0 <= record["ece"] <= 1 and 0 <= record["brier"] <= 2
        assert headline.loc[model, "ece"] == pytest.approx(record["ece"], abs=1e-5)
        masked = pd.read_csv(tables / f"{model}_guide_box_masked.csv", index_col=0)
        assert list(masked.index) == [*smoke_chain.data.classes, "all"]
        # the table's arithmetic, exact whatever the model learned (8 images a class cannot bound a trained
        # model's change: one image is 0.125): accuracy from predictions.csv, change = masked - unmasked,
        # "all" weighted by images
        predictions = pd.read_csv(smoke_chain.run.predictions(model))
        right = (predictions["true"] == predictions["pred"]).groupby(predictions["label"]).mean()
        masked_accuracy = masked["masked_accuracy"]
        assert masked["accuracy"].drop("all").to_numpy() == pytest.approx(right[smoke_chain.data.classes].to_numpy())
        assert masked["change"].to_numpy() == pytest.approx((masked_accuracy - masked["accuracy"]).to_numpy())
        counts = predictions["label"].value_counts()[smoke_chain.data.classes].to_numpy()
        assert masked_accuracy["all"] == pytest.approx((masked_accuracy.drop("all") * counts).sum() / counts.sum())
        assert (smoke_chain.report.figure(f"{model}_figure3_gradcam")).stat().st_size > 10_000
        assert (smoke_chain.report.figure(f"{model}_reliability")).exists()
    index = (smoke_chain.report_dir / "index.html").read_text()
    assert "Audit: what inflates the score" in index and "position-guide box appears in 5 of 8 classes" in index
    comparison = pd.read_csv(tables / "comparison.csv", index_col=0)
    assert {"ece", "brier"} <= set(comparison.columns)


def test_every_result_says_which_code_environment_and_data_made_it(smoke_chain):
    import hashlib

    from kvasir_utils.provenance import LOCK_FILE, study_version

    archive = prepare.archive_path(smoke_chain)
    for model in smoke_chain.train.models:
        record = json.loads((smoke_chain.run.metrics(model)).read_text())["provenance"]
        assert record["commit"] == study_version()["commit"] and len(record["commit"]) == 40
        assert isinstance(record["dirty"], bool)
        assert record["lock_sha256"] == hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()
        assert record["archive"]["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
        assert record["archive"]["bytes"] == archive.stat().st_size and record["weights"] is None
        assert record["overrides"] == smoke_chain.overrides and record["profile"] == "smoke"
    for page in [smoke_chain.report_dir / "index.html", *(smoke_chain.report_dir / "html").glob("*.html")]:
        text = page.read_text()
        assert f"Study commit {record['commit'][:12]}" in text and record["archive"]["sha256"] in text, page
    index = (smoke_chain.report_dir / "index.html").read_text()
    assert "compare it with yours" in index and "Pogorelov" in index and "research and educational" in index

