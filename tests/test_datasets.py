"""Any class-folder dataset under the same protocol: folders read in place, tar archives, classes at
any depth (found or selected), a split from a file, k folds, HyperKvasir's profile and its shipped
split files, and the one clear message of each bad input."""

import io
import json
import os
import shutil
import tarfile
import zipfile

import pandas as pd
import pytest
from PIL import Image

from kvasir_utils import artefacts, config, datasets, profiles
from kvasir_utils.analysis import cross_dataset, labels, paper
from kvasir_utils.config import CONFIG_DIR, ConfigError
from kvasir_utils.data import extract, layout, prepare, split_file, synthetic, synthetic_hyperkvasir
from kvasir_utils.data.split import make_split
from kvasir_utils.errors import KvasirError
from kvasir_utils.files import sha256_file
from kvasir_utils.run import sweep_spec
from tests.helpers import tmp_overrides

SMALL = ["cache.short_side=40", "transforms.image_size=32", "cache.workers=1"]
HYPER = "smoke-hyperkvasir"
pytestmark = pytest.mark.xdist_group("hyper")  # one worker makes the generated tree once for all


def _jpeg(color=(120, 60, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def _tree(root, folders: dict[str, int]):
    """``{relative class folder: images}`` under ``root``, each image a distinct colour."""
    for n, (folder, count) in enumerate(folders.items()):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (root / folder / f"{n}-{i}.jpg").write_bytes(_jpeg((n * 20, i * 30, 90)))
    return root


def _one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    return text


@pytest.fixture(scope="module")
def hyper_root(tmp_path_factory):
    """A prepared smoke-hyperkvasir data folder (4 to 8 images a class), shared by this module."""
    root = tmp_path_factory.mktemp("hyper")
    cfg = profiles.load_profile(HYPER, tmp_overrides(root) + SMALL + ["data.synthetic.images_per_class=8"])
    prepare.prepare_dataset(cfg, progress=False)
    return root


def _hyper(root, runs: str, extra=()):
    return profiles.load_profile(HYPER, [*tmp_overrides(root), *SMALL, "data.synthetic.images_per_class=8",
                                         f"paths.runs={root / runs}", *extra])


# -- sources: a folder in place, zip and tar.gz give the same dataset -----------------------
def test_a_folder_is_read_in_place_and_is_the_same_dataset_as_its_zip_and_tar(tmp_path):
    folder = synthetic.make_folder(tmp_path / "my kvasir", labels.CLASSES, 5, seed=2)
    zipped = synthetic.make_archive(tmp_path / "k.zip", labels.CLASSES, 5, seed=2)
    with tarfile.open(tmp_path / "k.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="kvasir-dataset-v2")
    records, fingerprints = {}, {}
    for name, url in (("folder", folder), ("zip", zipped), ("tar", tmp_path / "k.tar.gz")):
        cfg = profiles.load_profile("smoke", [*tmp_overrides(tmp_path / name), *SMALL, f"data.url={url}",
                                              "data.synthetic=null", "data.expected_per_class=5"])
        prepared = prepare.prepare_dataset(cfg, progress=False)
        prepare.prepare_split(cfg, prepared)
        records[name] = json.loads(cfg.run.dataset_record.read_text())["archive"]
        fingerprints[name] = prepare.input_fingerprints(cfg)["cache manifest"]
        assert prepared.classes == labels.CLASSES and len(prepared.manifest) == 40
    assert len(set(fingerprints.values())) == 1  # same images, same labels, same paths: the same data
    assert records["folder"]["kind"] == "folder" and records["folder"]["source"] == str(folder)
    assert records["folder"]["images"] == 40 and records["zip"]["kind"] == records["tar"]["kind"] == "archive"
    assert records["zip"]["sha256"] == sha256_file(zipped)
    # the folder was read where it is: nothing copied or extracted, only the cache written
    kept = (tmp_path / "folder" / "data" / "kvasir-smoke").iterdir()
    assert sorted(p.name for p in kept if not p.name.startswith(".")) == ["cache"]  # and the lock
    moved = shutil.move(folder, tmp_path / "elsewhere")
    again = profiles.load_profile("smoke", [*tmp_overrides(tmp_path / "moved"), *SMALL, f"data.url={moved}",
                                            "data.synthetic=null", "data.expected_per_class=5"])
    prepared = prepare.prepare_dataset(again, progress=False)
    assert prepare.archive_record(prepared)["sha256"] == records["folder"]["sha256"]  # content, not place


def test_tar_entries_outside_the_folder_or_links_are_refused(tmp_path):
    for name, entry in (("evil", "../evil.jpg"), ("link", "k/polyps/link.jpg")):
        path = tmp_path / f"{name}.tar"
        with tarfile.open(path, "w") as tar:
            info = tarfile.TarInfo(entry)
            if name == "link":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info, io.BytesIO(b""))
        with pytest.raises(KvasirError, match="outside the target folder|is a link"):
            extract.extract_archive(path, tmp_path / name / "images", progress=False)
        assert not (tmp_path / name).exists() and not (tmp_path / "evil.jpg").exists()


# -- the five bad inputs: one clear message each --------------------------------------------
def test_a_folder_that_does_not_exist_is_named_with_the_remedy(tmp_path):
    cfg = profiles.load_profile("smoke", [*tmp_overrides(tmp_path), f"data.url={tmp_path / 'nowhere'}",
                                          "data.synthetic=null"])
    with pytest.raises(KvasirError) as error:
        prepare.prepare_dataset(cfg, progress=False)
    assert f"{tmp_path / 'nowhere'} does not exist" in _one_line(error) and ".tar.gz" in str(error.value)
    assert not (tmp_path / "data").exists()


def test_a_renamed_class_folder_is_named_with_the_folder_it_probably_became(tmp_path):
    root = _tree(tmp_path / "d", {c if c != "polyps" else "polyp": 2 for c in labels.CLASSES})
    with pytest.raises(KvasirError) as error:
        layout.find_classes(root, labels.CLASSES)
    assert "missing from the dataset" in _one_line(error) and "polyps (did you mean polyp?)" in str(error.value)


def test_an_empty_class_folder_is_named_whether_classes_are_named_or_found(tmp_path):
    root = _tree(tmp_path / "d", {"a/x": 2, "a/y": 2, "b/z": 2})
    (root / "b" / "empty").mkdir()
    for classes in (["x", "y", "empty"], []):
        with pytest.raises(KvasirError) as error:
            layout.find_classes(root, classes)
        text = _one_line(error)
        assert "b/empty" in text and ("hold no image" in text or "without any image" in text)
    assert layout.find_classes(root, ["x", "z"]).classes == ["x", "z"]  # not selected: no matter


def test_a_stray_image_at_the_top_is_refused_unless_skipped(tmp_path):
    root = _tree(tmp_path / "d", {"top/x": 2, "top/y": 3})
    (root / "top" / "stray.jpg").write_bytes(_jpeg())
    (root / "top" / "notes.csv").write_text("not an image\n")
    with pytest.raises(KvasirError) as error:
        layout.find_classes(root, [])
    assert "top/stray.jpg" in _one_line(error) and "data.on_stray=skip" in str(error.value)
    found = layout.find_classes(root, [], on_stray="skip")
    assert found.classes == ["x", "y"] and found.strays == ["top/stray.jpg"]
    assert found.ignored_files == ["top/notes.csv"]
    assert list(found.images["path"]) == ["x/0-0.jpg", "x/0-1.jpg", "y/1-0.jpg", "y/1-1.jpg", "y/1-2.jpg"]


def test_a_split_file_row_without_an_image_is_refused_with_counts_examples_and_the_remedy(tmp_path, hyper_root):
    cfg = _hyper(hyper_root, "runs-strict", ["split.on_unmatched=error"])
    with pytest.raises(KvasirError) as error:
        prepare.prepare_split(cfg, prepare.prepare_dataset(cfg, progress=False))
    text = _one_line(error)
    assert "does not match the dataset: 3 image(s) have no row" in text and "split.on_unmatched=skip" in text
    listed = pd.read_csv(prepare.split_file(cfg), sep=";")
    extra = tmp_path / "split.csv"
    pd.concat([listed, pd.DataFrame([["gone.jpg", "polyp", 0]], columns=listed.columns)]).to_csv(extra, sep=";",
                                                                                                 index=False)
    cfg = _hyper(hyper_root, "runs-extra", [f"split.file={extra}", "split.on_unmatched=error"])
    with pytest.raises(KvasirError) as error:
        prepare.prepare_split(cfg, prepare.prepare_dataset(cfg, progress=False))
    assert "1 row(s) name no image in it (e.g. gone.jpg); 3 image(s) have no row" in _one_line(error)
    assert not cfg.run.split.exists()


# -- HyperKvasir-shaped: classes at depth four, found or named; the split from its file -------
def test_the_generated_hyperkvasir_tree_gives_23_classes_and_its_split_file_decides_the_sides(hyper_root):
    cfg = _hyper(hyper_root, "runs")
    prepared = prepare.prepare_dataset(cfg, progress=False)
    assert prepared.classes == cfg.classes == synthetic_hyperkvasir.CLASS_NAMES and len(prepared.classes) == 23
    assert prepared.in_place and prepared.image_root.name == "labeled-images" and prepared.check.warnings == []
    run_split = prepare.prepare_split(cfg, prepared)
    plan = synthetic_hyperkvasir.plan(8, seed=0)
    expected = plan[plan["listed"]].assign(split=lambda f: f["fold"].map({1: "val", 0: "train"}))
    assert run_split.set_index("path")["split"].sort_index().equals(expected.set_index("path")["split"].sort_index())
    record = json.loads(cfg.run.dataset_record.read_text())
    assert record["classes"] == prepared.classes and record["split_file"]["images_without_row"] == 3
    assert record["split_file"]["class_names"]["polyp"] == ["polyps"]  # joined on file names, not class names
    found = _hyper(hyper_root, "runs-found", ["data.classes=[]", "data.synthetic.images_per_class=8"])
    with pytest.raises(ConfigError, match="data.classes is empty.* run `make data PROFILE=smoke-hyperkvasir`"):
        _ = found.classes
    prepare.prepare_split(found, prepare.prepare_dataset(found, progress=False))
    assert found.classes == prepared.classes  # discovered in path order, as the profile lists them
    other = _hyper(hyper_root, "runs-fold0", ["split.validation_fold=0"])
    flipped = prepare.prepare_split(other, prepare.prepare_dataset(other, progress=False))
    assert (flipped.set_index("path")["split"] != run_split.set_index("path")["split"]).all()


def test_a_profile_can_select_some_classes_and_the_rest_of_the_split_file_is_no_error(hyper_root):
    cfg = _hyper(hyper_root, "runs-some", ["data.classes=[polyps,cecum,z-line]"])
    run_split = prepare.prepare_split(cfg, prepare.prepare_dataset(cfg, progress=False))
    assert list(dict.fromkeys(run_split.sort_values("path")["label"])) == ["cecum", "polyps", "z-line"]
    assert json.loads(cfg.run.dataset_record.read_text())["split_file"]["rows_of_other_classes"] > 50


def test_stratified_k_folds_cover_every_image_once_and_a_fold_out_of_range_is_named():
    images = pd.DataFrame([(f"{c}/{i}.jpg", c) for c in "abc" for i in range(10)], columns=["path", "label"])
    folds = [make_split(images, 0.2, seed=1, fold=k) for k in range(5)]
    val = pd.concat(f[f["split"] == "val"] for f in folds)
    assert sorted(val["path"]) == sorted(images["path"]) and val.groupby("label").size().eq(10).all()
    assert all(f[f["split"] == "val"].groupby("label").size().eq(2).all() for f in folds)
    with pytest.raises(KvasirError, match="validation_fold is 5, .* makes 5 folds: choose 0 to 4"):
        make_split(images, 0.2, seed=1, fold=5)
    assert not make_split(images, 0.2, seed=1).equals(folds[0])  # null: the paper's single split


@pytest.mark.parametrize(("override", "message"), [
    ("split.source=file", "'split.file' is not valid: expected the path of the split file"),
    ("split.file=x.csv", "'split.file' is not valid: expected null unless split.source is file"),
    ("data.classes=[polyps]", "at least two class folder names, or [] for every one found"),
    ("split.delimiter=;;", "'split.delimiter' = ';;' is not valid"),
])
def test_split_and_class_settings_that_cannot_work_are_refused_when_loaded(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        profiles.load_profile("paper", [override])


# -- what ships with the study ---------------------------------------------------------------
def test_the_shipped_official_split_files_are_hyperkvasirs_and_match_the_profile():
    folder = CONFIG_DIR / "splits" / "hyper-kvasir"
    source = (folder / "SOURCE.md").read_text()
    cfg = profiles.load_profile("hyperkvasir")
    renames = {c.file_class: c.folder for c in datasets.HYPER_KVASIR}
    for name, folds in (("2_fold_split.csv", {0: 5324, 1: 5338}), ("5_fold_split.csv", None)):
        table = split_file.read_split_file(folder / name, ";")
        assert len(table) == 10662 and table["file"].is_unique and sha256_file(folder / name) in source
        assert folds is None or table["fold"].value_counts().to_dict() == folds
        assert table["file_class"].map(renames).notna().all()  # every class name of the file is a known one
        assert set(table["file_class"].map(renames)) == set(cfg.classes)
    assert cfg.split_file == folder / "2_fold_split.csv" and "5ae933bb612b25046b10e86b01660d2d7909ab65" in source
    members = sweep_spec.load_sweep("hyperkvasir-folds").members
    assert sorted({(m.model, m.cfg.split.validation_fold) for m in members}) == \
        [("efficientnet_b0", 0), ("efficientnet_b0", 1), ("resnet50", 0), ("resnet50", 1)]


def test_the_datasets_classes_are_the_ones_their_profiles_select():
    assert profiles.load_profile("paper").classes == datasets.KVASIR_V2_CLASSES
    assert profiles.load_profile("hyperkvasir").classes == datasets.HYPER_KVASIR_CLASSES


def test_the_generator_reads_the_mapping_cross_evaluate_scores_with_and_it_fits_both_profiles():
    assert cross_dataset.mapping_path("kvasir-v2", "hyper-kvasir") == synthetic_hyperkvasir.MAPPING_FILE
    mapping = cross_dataset.read_mapping(synthetic_hyperkvasir.MAPPING_FILE)
    assert synthetic_hyperkvasir.kvasir_counterparts() == mapping.classes
    cross_dataset.check_mapping(mapping, datasets.KVASIR_V2_CLASSES, datasets.HYPER_KVASIR_CLASSES)


def test_the_generated_tree_copies_frames_of_the_classes_the_mapping_file_names(tmp_path, monkeypatch):
    planted = tmp_path / "mapping.yaml"
    planted.write_text("classes:\n  ileum: polyps\n  cecum: polyps\n")
    monkeypatch.setattr(synthetic_hyperkvasir, "MAPPING_FILE", planted)
    shared = synthetic_hyperkvasir.plan(8).dropna(subset=["shared_with"])
    traps = synthetic.planted_traps(datasets.KVASIR_V2_CLASSES, 8)
    polyps = traps.loc[(traps["label"] == "polyps") & traps["duplicate_of"].isna(), "path"].tolist()
    # one original frame each, given in path order (cecum before ileum), whatever the file's order
    assert dict(zip(shared["label"], shared["shared_with"])) == {"cecum": polyps[0], "ileum": polyps[1]}
    planted.write_text("classes:\n  cecum: caecum\n")
    with pytest.raises(KvasirError, match="maps to caecum, not Kvasir v2 classes: map each"):
        synthetic_hyperkvasir.plan(8)
    monkeypatch.setattr(synthetic_hyperkvasir, "MAPPING_FILE", tmp_path / "gone.yaml")
    with pytest.raises(KvasirError, match="gone.yaml is missing"):
        synthetic_hyperkvasir.plan(8)


def test_each_dataset_has_its_citation_and_terms():
    assert datasets.DATASETS == config.DATASETS and set(datasets.TERMS) == set(config.DATASETS)
    assert "CC BY 4.0" in datasets.terms("hyper-kvasir") and "Borgli" in datasets.terms("hyper-kvasir")
    assert paper.citations("hyper-kvasir")[1].startswith("Borgli") and len(paper.citations()) == 2
    assert paper.citations("other") == [paper.PAPER_CITATION] and datasets.citation("other") is None
    from kvasir_utils.report import model_card  # a card cites the dataset its model was trained on, as the index

    assert datasets.dataset_title("other", "my-hospital") == "my-hospital"  # the pages' title of one's own data
    assert datasets.dataset_title("hyper-kvasir", "hyper-kvasir") == "HyperKvasir"
    own, hyper = model_card.citation_line("other"), model_card.citation_line("hyper-kvasir")
    assert "KVASIR" not in own and paper.PAPER_CITATION in own
    assert "Borgli" in hyper and "KVASIR" not in hyper
    with pytest.raises(ValueError, match="unknown dataset 'kvasir': data.dataset is one of kvasir-v2, hyper-kvasir"):
        datasets.terms("kvasir")
    assert paper.reported("resnet50", labels.CLASSES) and paper.reported("resnet50", ["a", "b"]) == {}


def test_the_generated_tree_is_its_plan_and_shaped_like_hyperkvasir(hyper_root):
    a = prepare.generate_folder(_hyper(hyper_root, "runs"))
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    plan = synthetic_hyperkvasir.plan(8, seed=0)
    assert [f for f in files if f.endswith(".jpg")] == sorted(f"labeled-images/{p}" for p in plan["path"])
    assert {f.split("/")[1] for f in files if f.startswith("labeled-images/") and f.count("/") == 4} == \
        {"lower-gi-tract", "upper-gi-tract"}
    split = pd.read_csv(a / synthetic_hyperkvasir.SPLIT_FILE, sep=";")
    assert list(split.columns) == ["file-name", "class-name", "split-index"] and "polyp" in set(split["class-name"])
    assert len(split) == len([f for f in files if f.endswith(".jpg")]) - synthetic_hyperkvasir.MISSING_ROWS
    counts = synthetic_hyperkvasir.class_counts(1148)
    assert counts["bbps-2-3"] == 1148 and counts["hemorrhoids"] == 6 and sum(counts.values()) == 10662


def test_a_class_name_used_by_two_folders_is_named(tmp_path):
    root = _tree(tmp_path / "d", {"upper/polyps": 2, "lower/polyps": 2, "lower/cecum": 2})
    with pytest.raises(KvasirError, match=r"two class folders are named 'polyps': lower/polyps and upper/polyps"):
        layout.find_classes(root, [])


def test_a_tree_split_already_into_train_and_val_is_named_with_the_remedy_for_it(tmp_path):
    root = _tree(tmp_path / "d", {"train/polyps": 2, "val/polyps": 2, "train/cecum": 2, "val/cecum": 2})
    with pytest.raises(KvasirError) as error:
        layout.find_classes(root, [])
    text = _one_line(error)
    assert "two class folders are named 'cecum': train/cecum and val/cecum" in text and "rename one" not in text
    assert "looks split already (train/ and val/): merge each class's folders into one" in text
    assert "split.source: file" in text
    nested = _tree(tmp_path / "n", {"kvasir/train/polyps": 2, "kvasir/val/polyps": 2})  # an archive's one top folder
    with pytest.raises(KvasirError, match=r"looks split already \(train/ and val/\)"):
        layout.find_classes(nested, [])
    within = _tree(tmp_path / "w", {"train/upper/polyps": 2, "train/lower/polyps": 2})  # parted below train/
    with pytest.raises(KvasirError) as error:
        layout.find_classes(within, [])
    assert _one_line(error).endswith("rename one")


def test_a_linked_class_folder_is_read_and_a_link_within_the_tree_is_not_followed(tmp_path):
    root = _tree(tmp_path / "d", {"x": 2, "z/polyps": 2})
    elsewhere = _tree(tmp_path / "elsewhere", {"y": 3})
    (root / "y").symlink_to(elsewhere / "y", target_is_directory=True)  # outside the tree: read
    (root / "x" / "loop").symlink_to(root, target_is_directory=True)  # back up the tree: would walk forever
    (root / "a").symlink_to(root / "z" / "polyps", target_is_directory=True)  # a second name, sorted first
    found = layout.find_classes(root, [])
    assert found.classes == ["x", "y", "polyps"]
    assert list(found.images["label"]) == ["x"] * 2 + ["y"] * 3 + ["polyps"] * 2


def test_files_in_a_class_folder_that_are_not_read_are_a_warning_and_other_files_are_not(tmp_path):
    root = _tree(tmp_path / "d", {"x": 2, "y": 2})
    (root / "x" / "frame.gif").write_bytes(b"GIF89a")
    (root / "x" / "Thumbs.db").write_bytes(b"")  # Windows' own: not data
    (root / "notes.csv").write_text("not an image\n")
    Image.new("RGB", (8, 8)).save(root / "y" / "frame.webp")
    found = layout.find_classes(root, [])
    assert found.unread == ["x/frame.gif"] and found.ignored_files == ["notes.csv", "x/frame.gif"]
    assert "y/frame.webp" in set(found.images["path"])
    cfg = profiles.load_profile("smoke", [*tmp_overrides(tmp_path), f"data.url={root}", "data.synthetic=null",
                                          "data.expected_per_class=null", "data.classes=[]", "cache.workers=1"])
    warnings = prepare.prepare_dataset(cfg, progress=False).check.warnings
    assert any(w.startswith("1 file(s) in class folders are not images this study reads, left out: x/frame.gif; "
                            "it reads .bmp, .jpeg, .jpg, .png, .tif, .tiff, .webp") for w in warnings), warnings


def test_a_class_folder_of_unread_files_says_what_they_are_and_what_is_read(tmp_path):
    root = _tree(tmp_path / "d", {"x": 2, "y": 2})
    (root / "z").mkdir()
    (root / "z" / "frame.gif").write_bytes(b"GIF89a")  # a class of GIFs: no image the study reads
    for classes, start in (([], "folder(s) without any image in"), (["x", "z"], "class folder(s) named in data.")):
        with pytest.raises(KvasirError) as error:
            layout.find_classes(root, classes)
        text = _one_line(error)
        assert text.startswith(start) and "z (1 file(s) there are not images this study reads: z/frame.gif; it " \
            "reads .bmp, .jpeg, .jpg, .png, .tif, .tiff, .webp)" in text, text


def test_a_zip_of_a_folder_tree_finds_the_same_classes(tmp_path):
    root = _tree(tmp_path / "d", {"g/a/x": 2, "g/b/y": 2})
    with zipfile.ZipFile(tmp_path / "t.zip", "w") as archive:
        for path in root.rglob("*.jpg"):
            archive.write(path, path.relative_to(root).as_posix())
    found = layout.find_classes(extract.extract_archive(tmp_path / "t.zip", tmp_path / "out", progress=False), [])
    assert found.classes == ["x", "y"] and found.root.name == "g" and list(found.images["path"])[0] == "a/x/0-0.jpg"


@pytest.mark.slow
def test_the_study_runs_on_the_hyperkvasir_shaped_tree_and_every_table_has_its_23_classes(hyper_root):
    """Notebooks 01 and 04 (and 02 and 03's calls) on the generated tree, split by its file."""
    from kvasir_utils.run import notebooks
    from kvasir_utils.train import stages

    overrides = [*tmp_overrides(hyper_root), *SMALL, "data.synthetic.images_per_class=8",
                 f"paths.runs={hyper_root / 'runs-e2e'}", "train.models=[resnet18]", "train.stage1.epochs=1",
                 "train.stage2.epochs=1", "runtime.precision=fp32", "runtime.memory_format=contiguous",
                 "eval.bootstrap_samples=20",
                 "eval.figure1_correct=2", "eval.figure1_incorrect=2"]
    cfg = profiles.load_profile(HYPER, overrides)
    notebooks.run_notebook("01_download_and_split", HYPER, overrides)
    for stage in artefacts.STAGES:  # notebooks 02 and 03's calls, in this process: two kernels fewer
        stages.start_stage(cfg, "resnet18", stage).fit()
    notebooks.run_notebook("04_evaluate", HYPER, overrides, "resnet18")
    classes = synthetic_hyperkvasir.CLASS_NAMES
    predictions = pd.read_csv(cfg.run.predictions("resnet18"))
    assert [c.removeprefix("p_") for c in predictions.filter(like="p_").columns] == classes
    assert set(predictions["label"]) == set(classes)  # every class has validation images
    tables = cfg.report.tables
    table1 = pd.read_csv(tables / "resnet18_table1.csv", index_col=0)
    assert list(table1.index) == [labels.display_name(c) for c in classes] + ["Macro Avg", "Weighted Avg"]
    table2 = pd.read_csv(tables / "resnet18_table2.csv", index_col=0)
    assert table2.shape == (23, 23) and table2.to_numpy().sum() == len(predictions)
    assert list(table2.columns) == list(labels.abbreviations(classes).values())
    assert len(pd.read_csv(tables / "class_counts.csv", index_col=0)) == 24  # and the total
    record = json.loads((cfg.run.metrics("resnet18")).read_text())
    assert {"mcc", "micro_f1", "macro_mcc"} <= set(record) and record["provenance"]["archive"]["kind"] == "folder"
    kept = sorted(p.name for p in cfg.dataset_dir.iterdir() if not p.name.startswith("."))
    assert kept == ["cache", "generated"]  # the generated tree is read where it is: no copy, no extraction


def test_a_class_lies_where_its_folder_says_and_where_its_counterpart_lies():
    kvasir = {c.name: c.region for c in datasets.KVASIR_V2}
    counterpart = cross_dataset.read_mapping(cross_dataset.mapping_path("kvasir-v2", "hyper-kvasir")).classes
    assert all(datasets.REGION_OF[name] == region for name, region in kvasir.items())
    for c in datasets.HYPER_KVASIR:
        region = datasets.REGION_OF[c.folder]
        assert region == (datasets.UPPER_GI if c.tract == "upper-gi-tract" else datasets.LOWER_GI), c.folder
        assert region == kvasir.get(counterpart.get(c.folder, c.folder), region), c.folder  # same class, same place
    assert set(datasets.REGIONS[datasets.UPPER_GI]).isdisjoint(datasets.REGIONS[datasets.LOWER_GI])


def test_the_generated_guide_box_is_in_lower_gi_classes_only():
    boxed = {name for name, rate in synthetic.GUIDE_BOX_RATES.items() if rate > 0}
    assert boxed == set(datasets.KVASIR_V2_CLASSES) & set(datasets.REGIONS[datasets.LOWER_GI])


@pytest.mark.filterwarnings("ignore:The least populated class")  # scikit-learn says it too; ours names the remedy
def test_a_class_too_small_for_the_folds_is_named_with_the_remedy():
    from kvasir_utils.data import split

    images = pd.DataFrame({"path": [f"{c}/{i}.jpg" for c, n in (("big", 20), ("tiny", 3)) for i in range(n)],
                           "label": ["big"] * 20 + ["tiny"] * 3})
    with pytest.raises(KvasirError) as error:
        split.make_split(images, 0.2, seed=0, fold=4)
    message = str(error.value)
    assert "tiny with 3" in message and "data.classes" in message and "group_near_duplicates" not in message


def test_an_archive_path_that_is_gone_is_no_folder_error():
    from kvasir_utils.data import sources

    assert sources.local_folder("/nowhere/kvasir-dataset-v2.zip") is None  # fetch_archive names it, or a copy is used
    with pytest.raises(KvasirError, match="does not exist"):
        sources.local_folder("/nowhere/my-folder")


def test_an_image_whose_name_is_not_utf8_is_named_by_its_bytes_with_the_remedy(tmp_path):
    root = _tree(tmp_path / "d", {"x": 2, "y": 2})
    (root / "x" / os.fsdecode(b"caf\xe9.jpg")).write_bytes(_jpeg())  # a Latin-1 name, as old cameras write
    with pytest.raises(KvasirError) as error:
        layout.find_classes(root, [])
    text = _one_line(error)
    assert text.startswith(f"1 image file name(s) under {root} are not valid UTF-8: x/caf\\xe9.jpg; ") and \
        "convmv" in text
