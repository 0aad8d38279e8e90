"""The trained model put to use: the predictor and `make predict` on the smoke chain's models (a folder
of the validation images as generated, plus a corrupt JPEG and a text file), its refusals, notebook 08."""

import contextlib
import io
import json
import os
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from kvasir_utils.analysis import audit
from kvasir_utils.data import duplicates, prepare
from kvasir_utils.data.layout import find_classes
from kvasir_utils.errors import KvasirError
from kvasir_utils.files import atomic_folder
from kvasir_utils.run import cli, notebooks
from kvasir_utils.train.predict import ARCHIVE, NOT_UTF8, Predictor, image_files
from tools import chromium

SKIPPED = {"broken.jpg", "notes.txt", "frames.zip", "caf\\xe9.jpg"}  # the last: a Latin-1 name, shown by its bytes


def _sets(cfg) -> list[str]:
    return [a for o in cfg.overrides for a in ("--set", o)]


def _validation_folder(cfg, dest, per_class=None):
    """The validation images as the archive holds them (class folders, original sizes), copied to ``dest``."""
    split = pd.read_csv(cfg.run.split)
    val = split[split["split"] == "val"]
    if per_class is not None:
        val = val.groupby("label").head(per_class)
    root = find_classes(prepare.images_dir(cfg), cfg.data.classes).root
    for path in val["path"]:
        (dest / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / path, dest / path)
    return dest


@pytest.fixture(scope="module")
def predicted(smoke_chain, tmp_path_factory):
    """`python -m kvasir_utils predict` (what `make predict` runs) on the validation images, a JPEG cut
    after 300 bytes and a text file; returns (exit code, stdout, the prediction's folder)."""
    images = _validation_folder(smoke_chain, tmp_path_factory.mktemp("predict") / "my-images")
    first = sorted(images.rglob("*.jpg"))[0]
    (images / "broken.jpg").write_bytes(first.read_bytes()[:300])
    (images / "notes.txt").write_text("not an image\n")
    shutil.make_archive(str(images / "frames"), "zip", images, first.relative_to(images))  # one image, zipped
    (images / os.fsdecode(b"caf\xe9.jpg")).write_bytes(first.read_bytes())  # an image; its name is not UTF-8
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["predict", "--profile", "smoke", *_sets(smoke_chain), "--model", "resnet50",
                         "--images", str(images)])
    return code, out.getvalue(), smoke_chain.report.predict_dir("my-images")


@pytest.mark.slow
@pytest.mark.xdist_group("chain")
def test_predict_skips_and_names_what_is_not_an_image_and_says_so_in_its_exit_status(predicted):
    code, printed, folder = predicted
    assert code == 3
    skipped = pd.read_csv(folder / "skipped.csv")
    assert set(skipped["file"]) == SKIPPED and skipped["reason"].str.len().min() > 10
    assert skipped.set_index("file").loc["caf\\xe9.jpg", "reason"] == NOT_UTF8
    assert skipped.set_index("file").loc["frames.zip", "reason"] == ARCHIVE
    assert all(f"  {name}: " in printed for name in SKIPPED)
    page = (folder / "index.html").read_text()
    assert all(f"<td>{name}</td>" in page for name in SKIPPED)
    assert len(pd.read_csv(folder / "predictions.csv")) == 64


@pytest.mark.slow
@pytest.mark.xdist_group("chain")
def test_predicted_probabilities_equal_the_evaluation_of_the_same_images(predicted, smoke_chain):
    """Same code path as notebook 04: the originals, resized in memory as the cache does, give the
    probabilities of predictions.csv (which were computed from the cache files), at the same precision.

    Equal to float32's rounding, not bit for bit: the two group the images into batches differently
    (the prediction's first batch holds the corrupt JPEG's place), and oneDNN picks its fp32 kernels
    and their order of summation by shape and CPU. On a CI machine 3 of 512 probabilities differed by
    up to 1.3e-6 (on this one by none); 1e-5 is ~80 float32 steps at 1.0, and a model that read other
    pixels or ran in bf16 differs by 1e-3 and more."""
    predictions = pd.read_csv(predicted[2] / "predictions.csv")
    evaluated = pd.read_csv(smoke_chain.run.predictions("resnet50")).set_index("path")
    evaluated = evaluated.loc[predictions["file"]]
    assert predictions.filter(like="p_").to_numpy() == pytest.approx(evaluated.filter(like="p_").to_numpy(), abs=1e-5)
    assert (predictions["predicted"].to_numpy() == np.array(smoke_chain.data.classes)[evaluated["pred"]]).all()
    assert predictions["probability"].to_numpy() == pytest.approx(evaluated["confidence"].to_numpy(), abs=1e-5)
    record = json.loads((predicted[2] / "predict.json").read_text())
    metrics = json.loads((smoke_chain.run.metrics("resnet50")).read_text())
    assert record["runtime"]["precision"] == metrics["runtime"]["precision"]


@pytest.mark.slow
@pytest.mark.xdist_group("chain")
def test_guide_box_and_near_duplicate_columns_agree_with_the_audit(predicted, smoke_chain):
    predictions = pd.read_csv(predicted[2] / "predictions.csv").set_index("file")
    split = pd.read_csv(smoke_chain.run.split)
    flags = prepare.guide_box_flags(smoke_chain, split[split["split"] == "val"]).set_index("path")["has_box"]
    assert (predictions["guide_box"] == flags[predictions.index]).all() and flags.any()
    pairs = duplicates.near_duplicate_pairs(prepare.image_hashes(smoke_chain, split["path"]),
                                            smoke_chain.split.near_duplicates.phash_bits)
    twinned = set(split.loc[audit.train_twins(split, pairs), "path"])
    matched = predictions[predictions["train_near_duplicate"].notna()]
    assert set(matched.index) == twinned and twinned  # notebook 07's "with a near-duplicate in training"
    train = set(split.loc[split["split"] == "train", "path"])
    assert set(matched["train_near_duplicate"]) <= train
    assert (matched["train_near_duplicate_distance"] <= smoke_chain.split.near_duplicates.phash_bits).all()


@pytest.mark.slow
@pytest.mark.xdist_group("chain")
def test_the_near_duplicate_column_follows_the_run_profiles_threshold(smoke_chain, tmp_path):
    # the run's split.near_duplicates.phash_bits, as notebook 07 counts, not a fixed number of bits: at
    # 64 bits every image has a nearest training image, at 0 only an identical hash counts
    images = sorted(_validation_folder(smoke_chain, tmp_path, per_class=2).rglob("*.jpg"))
    predictor = Predictor.from_run(smoke_chain.run_dir, "resnet50")
    flagged = {}
    for bits in (64, 0):
        predictor.cfg.split.near_duplicates.phash_bits = bits
        flagged[bits] = predictor.predict(images)["train_near_duplicate"].notna()
    assert len(images) == 16 and flagged[64].all() and flagged[0].sum() < len(images), flagged


@pytest.mark.slow
@pytest.mark.xdist_group("chain")
def test_the_gallery_shows_every_image_with_its_map_offline(predicted):
    folder = predicted[2]
    page = (folder / "index.html").read_text()
    sources = re.findall(r'src="([^"]+)"', page)
    assert len(sources) == 2 * 64 and all((folder / s).stat().st_size > 500 for s in sources)
    # offline: nothing is loaded from the network (the banner may name the paper's URL as text)
    assert 'name="viewport"' in page and not re.search(r'(src|href)\s*=\s*"(https?:)?//', page)
    assert page.count('data-confidence="') == 64 and "least confident first" in page
    assert "mean nothing about Kvasir" in page and "not for clinical use" in page
    if chromium.chromium_found():  # as a reader opens it: every image loads, nothing too wide, no console error
        with chromium.open_browser() as driver:
            assert chromium.page_problems(driver, folder / "index.html") == []


@pytest.mark.slow
@pytest.mark.xdist_group("chain")
def test_an_unfinished_checkpoint_or_another_format_is_refused_with_the_remedy(smoke_chain, tmp_path):
    run = tmp_path / "smoke"
    with pytest.raises(KvasirError, match="no trained efficientnet_b0"):
        Predictor.from_run(run, "efficientnet_b0")
    saved = torch.load(smoke_chain.run.checkpoint("efficientnet_b0", "stage2"), weights_only=True)
    copy = run / "efficientnet_b0" / "stage2" / "checkpoint.pt"
    copy.parent.mkdir(parents=True)
    torch.save({**saved, "optimizer": {}, "epoch": 1}, copy)
    with pytest.raises(KvasirError, match=r"not finished: stage2 has trained 1 of its 3 epochs.*make reproduce "
                                          r"PROFILE=smoke SET=\"paths.data="):
        Predictor.from_run(run, "efficientnet_b0")
    torch.save({**saved, "optimizer": {}, "format": 1}, copy)
    with pytest.raises(KvasirError, match="checkpoint format 1, this version reads 2.*Retrain it"):
        Predictor.from_run(run, "efficientnet_b0")


@pytest.mark.slow
@pytest.mark.xdist_group("chain")
def test_a_folder_with_no_readable_image_is_refused_and_writes_nothing(smoke_chain, tmp_path):
    from kvasir_utils.run.predict_folder import predict_folder

    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("not an image")
    (folder / "cut.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(KvasirError, match=r"none of the 2 file\(s\) under .*notes could be read as an image "
                                          r"\(.*readme.txt.*\); nothing was written"):
        predict_folder(smoke_chain, "resnet50", folder, "notes", progress=False)
    assert not smoke_chain.report.predict_dir("notes").exists()


@pytest.mark.slow
@pytest.mark.xdist_group("chain")
def test_notebook_08_predicts_a_folder_and_shows_the_gallery_inline(smoke_chain, tmp_path):
    images = _validation_folder(smoke_chain, tmp_path / "few", per_class=1)
    parameters = {"PROFILE": "smoke", "MODEL": "efficientnet_b0", "IMAGES": str(images),
                  "OVERRIDES": list(smoke_chain.overrides)}
    executed = notebooks.execute_notebook("08_predict", parameters, tmp_path / "08_predict.ipynb", tmp_path, "08")
    outputs = json.dumps([cell.get("outputs", []) for cell in json.loads(executed.read_text())["cells"]])
    assert outputs.count("data:image/jpeg;base64,") == 2 * 8 and "kvasir-gallery" in outputs
    assert "8 of 8 file(s)" in outputs and "0 skipped" in outputs  # every file an image: nothing skipped
    assert len(pd.read_csv(smoke_chain.report.predict_dir("few") / "predictions.csv")) == 8


# -- without the chain ----------------------------------------------------------------------
def test_image_files_finds_nested_files_and_leaves_hidden_ones_out(tmp_path):
    for name in ("b/one.jpg", "a.png", ".hidden/x.jpg", "b/.y.jpg", "c/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in image_files(tmp_path)] == ["a.png", "b/one.jpg", "c/notes.txt"]
    assert image_files(tmp_path / "a.png") == [tmp_path / "a.png"]
    with pytest.raises(KvasirError, match="does not exist"):
        image_files(tmp_path / "missing")
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    (elsewhere / "d").mkdir(parents=True)
    (elsewhere / "d" / "linked.jpg").write_bytes(b"x")
    (tmp_path / "d").symlink_to(elsewhere / "d", target_is_directory=True)  # a linked folder is searched
    (tmp_path / "b" / "up").symlink_to(tmp_path, target_is_directory=True)  # once: no endless loop
    assert [p.relative_to(tmp_path).as_posix() for p in image_files(tmp_path)] == [
        "a.png", "b/one.jpg", "c/notes.txt", "d/linked.jpg"]


def test_nearest_finds_the_closest_reference_hash_by_hamming_distance():
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 2**63, size=50, dtype=np.uint64)
    flipped = reference[[7, 30]] ^ np.array([0b1011, 1 << 40], np.uint64)  # 3 bits and 1 bit away
    index, distance = duplicates.nearest(np.array([*flipped, reference[12]]), reference)
    assert index.tolist() == [7, 30, 12] and distance.tolist() == [3, 1, 0]
    assert duplicates.nearest(flipped, np.array([], np.uint64))[1].tolist() == [64, 64]


def test_atomic_folder_replaces_the_whole_folder_or_nothing(tmp_path):
    dest = tmp_path / "out"
    with atomic_folder(dest) as work:
        (work / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(dest) as work:
        (work / "half.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert [p.name for p in dest.iterdir()] == ["old.txt"]
    with atomic_folder(dest) as work:
        (work / "new.txt").write_text("new")
    assert [p.name for p in dest.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize(("command", "said"), [
    (["predict", "--model", "resnet50", "--images", "x"],
     "nothing half-written is left; `make predict` again starts it over"),
    (["sweep", "smoke-leakage"], "`make predict` again goes on where it stopped"),
    (["splits"], "`make predict` again goes on where it stopped"),  # its data stage keeps what it cached
])
def test_ctrl_c_says_whether_the_same_command_goes_on_or_starts_over(command, said, monkeypatch, capsys):
    # a prediction is written whole or not at all, so its rerun starts over; a sweep's keeps its members
    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_dispatch", interrupted)
    assert cli.main([*command, "--go-on", "make predict"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"interrupted: {said}."
