"""Report pieces checked on files written by hand."""

import json

import pandas as pd

from kvasir_utils import profiles
from kvasir_utils.analysis import compare
from kvasir_utils.run import cli
from tests.helpers import metrics_record, tmp_overrides


def _evaluated(cfg, model: str, paths: list[str], correct: list[bool]) -> None:
    folder = cfg.run.eval_dir(model)
    folder.mkdir(parents=True)
    cfg.run.metrics(model).write_text(json.dumps(metrics_record(accuracy=sum(correct) / len(correct))))
    true = [i % 8 for i in range(len(paths))]
    pred = [t if ok else (t + 1) % 8 for t, ok in zip(true, correct)]
    pd.DataFrame({"path": paths, "true": true, "pred": pred}).to_csv(cfg.run.predictions(model), index=False)


def test_the_masked_run_is_compared_only_when_it_matches_in_everything_but_the_mask(tmp_path):
    base = [*tmp_overrides(tmp_path), "train.models=[resnet18]"]
    cfg = profiles.load_profile("smoke", base)
    masked = profiles.load_profile("smoke", [*base, "transforms.mask_overlays=guide_box",
                                             f"paths.runs={tmp_path / 'm'}"])
    paths = [f"img{i}.jpg" for i in range(16)]
    table, reading = compare.masked_run_table1(cfg, masked)
    assert table is None and "make reproduce PROFILE=smoke" in reading
    _evaluated(cfg, "resnet18", paths, [True] * 16)
    _evaluated(masked, "resnet18", paths, [i % 2 == 0 for i in range(16)])
    table, reading = compare.masked_run_table1(cfg, masked)
    assert list(table.columns) == [("resnet18", "smoke"), ("resnet18", "smoke (guide_box masked)")]
    assert table.iloc[:8, 0].tolist() == [1.0] * 8 and table.iloc[:8, 1].max() < 1
    other = profiles.load_profile("smoke", [*base, "transforms.mask_overlays=guide_box", f"paths.runs={tmp_path / 'm'}",
                                          "train.stage1.lr=0.5"])
    table, reading = compare.masked_run_table1(cfg, other)
    assert table is None and "other settings" in reading
    assert profiles.masked_profile(profiles.load_profile("paper")) == "paper-masked"
    assert profiles.masked_profile(profiles.load_profile("paper-masked")) is None
    assert profiles.masked_profile(cfg) is None  # no smoke-masked profile


def test_a_caption_names_the_paper_only_beside_a_run_on_its_classes():
    from kvasir_utils.artefacts import Figure
    from kvasir_utils.datasets import KVASIR_V2_CLASSES
    from kvasir_utils.report import outputs

    def caption(kind, classes):
        return outputs.caption(Figure.of_model("resnet50", kind), classes)

    assert caption("f1_vs_paper", KVASIR_V2_CLASSES).endswith("this run beside the paper's Table 1.")
    assert caption("confusion", KVASIR_V2_CLASSES).startswith("Table 2 (paper) as a heat map")
    own = ["a", "b", "c"]
    assert "paper's Table 1 is of Kvasir v2's eight classes, not this run's" in caption("f1_vs_paper", own)
    assert caption("confusion", own).startswith("Table 2 as a heat map")
    assert caption("figure1_predictions", own).startswith("Figure 1:")


def test_a_vit_gradcam_caption_says_what_its_map_is_and_a_cnns_does_not():
    from kvasir_utils.artefacts import Figure
    from kvasir_utils.report import outputs

    vit = outputs.caption(Figure.of_model("timm:vit_small_patch14_dinov2.lvd142m", "figure3_gradcam"))
    cnn = outputs.caption(Figure.of_model("resnet50", "figure3_gradcam"))
    assert vit.startswith("Figure 3: where") and vit.endswith(outputs.VIT_GRADCAM) and "patch" in outputs.VIT_GRADCAM
    assert cnn.startswith("Figure 3: where") and outputs.VIT_GRADCAM not in cnn


def test_a_failed_refresh_of_the_index_keeps_what_was_written_and_says_how_to_render_it(tmp_path, capsys):
    cfg = profiles.load_profile("smoke", tmp_overrides(tmp_path))
    assert cli.refresh_index(cfg) == 0  # no index yet: nothing to refresh, nothing said
    assert capsys.readouterr() == ("", "")
    cfg.report.index.parent.mkdir(parents=True)
    cfg.report.index.write_text("<html>an index whose run's notebooks are gone</html>")
    assert cli.refresh_index(cfg) == 0  # raises nothing: the export or the split files before it stand
    said = capsys.readouterr().err
    assert "the index was not updated (KvasirError: no executed notebooks" in said
    # the command that renders it, with the run's own settings, quoted for the shell
    assert f"`make report PROFILE=smoke SET='{' '.join(tmp_overrides(tmp_path))}'` renders it again" in said
