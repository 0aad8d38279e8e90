import io
import multiprocessing
import os
import sys
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from kvasir_utils.analysis import labels
from kvasir_utils.data import cache, dataset, extract, images, layout, prepare, synthetic
from kvasir_utils.data.split import make_split
from kvasir_utils.errors import KvasirError


def _jpeg(size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 60, 40)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _zip(path, entries: dict, links=()):
    with zipfile.ZipFile(path, "w") as archive:
        for name, payload in entries.items():
            archive.writestr(name, payload)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            archive.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize("entry", ["../evil.jpg", "/abs/evil.jpg", "kvasir-dataset-v2/../../evil.jpg"])
def test_zip_slip_entries_are_refused_and_nothing_is_extracted(tmp_path, entry):
    archive = _zip(tmp_path / "a.zip", {"kvasir-dataset-v2/polyps/ok.jpg": _jpeg(), entry: b"x"})
    with pytest.raises(KvasirError, match="outside the target folder"):
        extract.extract_archive(archive, tmp_path / "images", progress=False)
    assert not (tmp_path / "images").exists() and not (tmp_path / "evil.jpg").exists()


def test_symbolic_links_are_refused(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"k/polyps/ok.jpg": _jpeg()}, links=["k/polyps/link.jpg"])
    with pytest.raises(KvasirError, match="symbolic link"):
        extract.extract_archive(archive, tmp_path / "images", progress=False)


def test_a_damaged_zip_is_named(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(KvasirError, match="bad.zip is not a readable zip archive"):
        extract.extract_archive(bad, tmp_path / "images", progress=False)


def test_extraction_is_skipped_when_done_and_redone_for_another_archive(small_archive, tmp_path):
    dest = extract.extract_archive(small_archive, tmp_path / "images", progress=False)
    marker = dest / "kvasir-dataset-v2" / "marker"
    marker.write_text("x")
    extract.extract_archive(small_archive, dest, progress=False)
    assert marker.exists()
    other = _zip(tmp_path / "other.zip", {f"kvasir-dataset-v2/{c}/a.jpg": _jpeg() for c in labels.CLASSES})
    extract.extract_archive(other, dest, progress=False)
    assert not marker.exists() and len(list(dest.rglob("*.jpg"))) == 8


def _folder(tmp_path, classes, extra=None):
    root = tmp_path / "root"
    for c in classes:
        (root / "top" / c).mkdir(parents=True)
        (root / "top" / c / "a.jpg").write_bytes(_jpeg())
        (root / "top" / c / "b.jpg").write_bytes(_jpeg((720, 576)))
    for name, payload in (extra or {}).items():
        (root / "top" / name).write_bytes(payload)
    return root


def test_a_missing_class_folder_is_named(tmp_path):
    root = _folder(tmp_path, labels.CLASSES[:-1])
    with pytest.raises(KvasirError, match="missing from the dataset .*: ulcerative-colitis"):
        layout.find_classes(root, labels.CLASSES)


def test_an_archive_of_something_else_is_named(tmp_path):
    (tmp_path / "x" / "cats").mkdir(parents=True)
    (tmp_path / "x" / "cats" / "tom.jpg").write_bytes(_jpeg())
    (tmp_path / "x" / "dogs").mkdir(parents=True)
    (tmp_path / "x" / "dogs" / "rex.jpg").write_bytes(_jpeg())
    with pytest.raises(KvasirError, match="no class folder .* is data.url the dataset this profile describes"):
        layout.find_classes(tmp_path / "x", labels.CLASSES)


def test_corrupt_images_are_reported_by_path_and_other_files_ignored(tmp_path):
    root = _folder(tmp_path, labels.CLASSES, extra={"polyps/notes.txt": b"hi", "polyps/._a.jpg": b"apple",
                                                   "polyps/broken.jpg": _jpeg((640, 480))[:300]})
    found = layout.find_classes(root, labels.CLASSES)
    class_root, images = found.root, found.images
    assert len(images) == 17 and "polyps/notes.txt" not in set(images["path"])
    manifest, _ = cache.build_cache(class_root, images, tmp_path / "cache", 32, workers=1, progress=False)
    check = cache.check_dataset(manifest, labels.CLASSES, expected_per_class=2)
    assert list(check.unreadable["path"]) == ["polyps/broken.jpg"]
    assert check.warnings == []
    with pytest.raises(KvasirError, match="polyps/broken.jpg(.|\n)*data.on_unreadable=skip"):
        cache.usable_images(manifest, "error")
    assert len(cache.usable_images(manifest, "skip")) == 16
    assert set(check.resolutions["resolution"]) == {"64x48", "720x576"}


def test_cache_resizes_short_side_and_is_reused(tmp_path):
    found = layout.find_classes(_folder(tmp_path, labels.CLASSES), labels.CLASSES)
    root, images = found.root, found.images
    first, _ = cache.build_cache(root, images, tmp_path / "cache", 40, workers=1, progress=False)
    with Image.open(tmp_path / "cache" / "polyps" / "b.jpg") as im:
        assert im.size == (50, 40)
    stamp = (tmp_path / "cache" / "polyps" / "b.jpg").stat().st_mtime_ns
    again, rebuilt = cache.build_cache(root, images, tmp_path / "cache", 40, workers=1, progress=False)
    assert (tmp_path / "cache" / "polyps" / "b.jpg").stat().st_mtime_ns == stamp and rebuilt == 0
    pd.testing.assert_frame_equal(first, again)


def _images(per_class=10):
    return pd.DataFrame([(f"{c}/{i}.jpg", c) for c in labels.CLASSES for i in range(per_class)],
                        columns=["path", "label"])


def test_split_is_stratified_and_deterministic_whatever_the_input_order():
    images = _images()
    split = make_split(images, 0.2, seed=42)
    assert list(split.columns) == ["path", "label", "split"]
    assert split.groupby("label")["split"].apply(lambda s: (s == "val").sum()).eq(2).all()
    pd.testing.assert_frame_equal(split, make_split(images.sample(frac=1, random_state=3), 0.2, seed=42))
    other = make_split(images, 0.2, seed=43)
    assert set(other.loc[other.split == "val", "path"]) != set(split.loc[split.split == "val", "path"])


def test_generated_archive_is_deterministic_and_kvasir_shaped(tmp_path):
    a = synthetic.make_archive(tmp_path / "a.zip", labels.CLASSES[:2], 3, seed=5, large_fraction=0.5)
    b = synthetic.make_archive(tmp_path / "b.zip", labels.CLASSES[:2], 3, seed=5, large_fraction=0.5)
    c = synthetic.make_archive(tmp_path / "c.zip", labels.CLASSES[:2], 3, seed=6, large_fraction=0.5)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    with zipfile.ZipFile(a) as archive:
        names = archive.namelist()
        sizes = {Image.open(io.BytesIO(archive.read(n))).size for n in names}
    assert all(n.startswith("kvasir-dataset-v2/") and n.endswith(".jpg") for n in names)
    assert {n.split("/")[1] for n in names} == set(labels.CLASSES[:2])
    assert sizes <= {synthetic.COMMON_SIZE, *synthetic.LARGE_SIZES}


def test_a_rerun_with_skip_after_the_unreadable_image_error_checks_the_dataset(tmp_path):
    # The error message's remedy (data.on_unreadable=skip) reruns on the manifest read back from disk.
    root = _folder(tmp_path, labels.CLASSES, extra={"polyps/broken.jpg": _jpeg((640, 480))[:300]})
    found = layout.find_classes(root, labels.CLASSES)
    class_root, images = found.root, found.images
    first, _ = cache.build_cache(class_root, images, tmp_path / "cache", 32, workers=1, progress=False)
    with pytest.raises(KvasirError, match="data.on_unreadable=skip"):
        cache.usable_images(first, "error")
    again, _ = cache.build_cache(class_root, images, tmp_path / "cache", 32, workers=1, progress=False)
    check = cache.check_dataset(again, labels.CLASSES, expected_per_class=2)
    assert set(check.resolutions["resolution"]) == {"64x48", "720x576"}
    assert list(check.unreadable["path"]) == ["polyps/broken.jpg"] and len(cache.usable_images(again, "skip")) == 16


def _noisy_folder(tmp_path):
    root = tmp_path / "noisy"
    for c in labels.CLASSES:
        (root / c).mkdir(parents=True)
        pixels = np.random.default_rng(len(c)).integers(0, 255, (96, 128, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / c / "x.png")
    return root


def test_the_cache_is_keyed_by_everything_that_changes_its_bytes(tmp_path):
    from kvasir_utils import profiles

    root = _noisy_folder(tmp_path)
    images = layout.find_classes(root, labels.CLASSES).images
    overrides = [f"paths.data={tmp_path / 'data'}"]
    folders = {q: prepare.cache_dir(profiles.load_profile("smoke", [*overrides, f"cache.quality={q}"]))
               for q in (95, 50)}
    assert folders[95] != folders[50]
    manifests = {q: cache.build_cache(root, images, folders[q], 72, q, workers=1, progress=False)[0] for q in folders}
    first = (folders[95] / "polyps" / "x.jpg").read_bytes()
    assert (folders[50] / "polyps" / "x.jpg").read_bytes() != first
    assert len(first) > len((folders[50] / "polyps" / "x.jpg").read_bytes())
    fingerprints = {q: cache.manifest_fingerprint(m, 72, q) for q, m in manifests.items()}
    assert fingerprints[95] != fingerprints[50]
    # the same images unpacked again (new file times) are the same content: same fingerprint
    for file in root.rglob("*.png"):
        os.utime(file, ns=(1, 1))
    again, rebuilt = cache.build_cache(root, images, folders[95], 72, 95, workers=1, progress=False)
    assert rebuilt == len(images) and cache.manifest_fingerprint(again, 72, 95) == fingerprints[95]
    assert (folders[95] / "polyps" / "x.jpg").read_bytes() == first
    # another image under the same name is another content
    Image.new("RGB", (128, 96), (1, 2, 3)).save(root / "polyps" / "x.png")
    changed, _ = cache.build_cache(root, images, folders[95], 72, 95, workers=1, progress=False)
    assert cache.manifest_fingerprint(changed, 72, 95) != fingerprints[95]


def test_a_grouped_split_never_separates_a_group_and_keeps_the_validation_share():
    images = _images(per_class=20)
    groups = np.arange(len(images)) // 4  # groups of four frames of one class
    split = make_split(images, 0.2, seed=3, groups=groups)
    sides = split.assign(group=groups[np.argsort(images["path"].to_numpy(), kind="stable")])
    assert sides.groupby("group")["split"].nunique().eq(1).all()
    assert (split["split"] == "val").mean() == pytest.approx(0.2, abs=0.03)
    assert split.groupby("label")["split"].apply(lambda s: (s == "val").sum()).between(2, 6).all()
    ungrouped = make_split(images, 0.2, seed=3)
    assert not ungrouped.assign(group=sides["group"]).groupby("group")["split"].nunique().eq(1).all()


def test_a_grouped_split_that_cannot_divide_a_class_is_refused():
    images = _images(per_class=10)
    groups = np.where(images["label"] == "polyps", -1, np.arange(len(images)))  # all polyps frames one group
    with pytest.raises(KvasirError, match=r"lopsided .* polyps(.|\n)*group_near_duplicates=false"):
        make_split(images, 0.2, seed=3, groups=groups)
    with pytest.raises(KvasirError, match=r"needs split.val_fraction = 1/k .* got 0.3"):
        make_split(images, 0.3, seed=3, groups=np.arange(len(images)))


def test_a_16_bit_greyscale_frame_is_cached_scaled_to_8_bits_not_clipped_to_white(tmp_path):
    # Pillow's own RGB conversion clips a 16-bit frame at 255: every pixel above 255 of 65,535 came out
    # white, in training's cache and in the predictor (which calls the same function)
    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (48, 1))
    path = tmp_path / "sixteen.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as image:
        assert image.mode == "I;16"  # as Pillow reads a 16-bit greyscale PNG
        cached = np.asarray(Image.open(io.BytesIO(cache.cache_copy(image, 48, 95))).convert("L"), float)
    assert abs(cached.mean() - (ramp / 257).mean()) < 3 and cached.min() < 10 and cached.max() > 245
    as_int = np.asarray(images.as_rgb(Image.fromarray(ramp.astype(np.int32))))[..., 0]  # mode I (a 16-bit TIFF)
    assert np.array_equal(as_int, (ramp / 257).round().astype(np.uint8))
    small = (ramp // 257).astype(np.int32)  # mode I holding 8-bit values: read as they are
    assert np.array_equal(np.asarray(images.as_rgb(Image.fromarray(small)))[..., 0], small)
    eight_bit = tmp_path / "eight.png"
    Image.fromarray((ramp // 257).astype(np.uint8), "L").save(eight_bit)
    with Image.open(eight_bit) as image:  # an 8-bit frame is read as it was
        assert np.array_equal(np.asarray(images.as_rgb(image))[..., 0], (ramp // 257).astype(np.uint8))


# Set in the process that builds the loader; a forked worker inherits it, a spawned one starts without.
_BUILT_HERE = False


class _WhereAmI(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        return int(_BUILT_HERE)


def _loader_workers_see_their_parent():
    global _BUILT_HERE
    _BUILT_HERE = True
    loader = dataset.make_loader(_WhereAmI(), batch_size=2, shuffle=False, workers=1, pin_memory=False)
    return [int(v) for batch in loader for v in batch]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux only")
def test_loader_workers_are_forked_even_in_a_spawned_process():
    """A loader built in a spawned process (gpu-check's concurrent runs, the bench's stages) would
    spawn its workers too, each a new interpreter importing torch every epoch: they are forked."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(_loader_workers_see_their_parent).result() == [1, 1]


@pytest.fixture
def two_drawing_threads(monkeypatch):
    """Any archive drawn in parallel, two classes at a time, as on a 2-core machine."""
    monkeypatch.setattr(synthetic, "PARALLEL_FROM", 0)
    monkeypatch.setattr(synthetic, "usable_cores", lambda: 2)


def _count_drawn_frames(monkeypatch, seconds_a_frame) -> dict:
    """Put a stand-in for ``class_frames`` that takes ``seconds_a_frame(class)`` a frame (empty
    bytes) and counts each class's frames in the dict it returns."""
    drawn = {}

    def frames(seed, stream, name, images_per_class, large_fraction, cue):
        for index in range(images_per_class):
            time.sleep(seconds_a_frame(name))
            drawn[name] = drawn.get(name, 0) + 1
            yield f"{name}/{index}.jpg", b""

    monkeypatch.setattr(synthetic, "class_frames", frames)
    return drawn


def test_generated_classes_drawn_in_parallel_give_the_same_archive(tmp_path, monkeypatch, two_drawing_threads):
    classes = ["a", "b", "c"]
    with monkeypatch.context() as serial_only:
        serial_only.setattr(synthetic, "PARALLEL_FROM", 10**9)
        serial = synthetic.make_archive(tmp_path / "serial.zip", classes, 6)
    parallel = synthetic.make_archive(tmp_path / "parallel.zip", classes, 6)
    assert serial.read_bytes() == parallel.read_bytes()


def test_closing_the_parallel_generation_stops_its_threads_at_their_next_frame(monkeypatch, two_drawing_threads):
    """Ctrl-C (or an error) while an archive is drawn in threads: no class goes on to its end."""
    drawn = _count_drawn_frames(monkeypatch, lambda name: 0.005)
    frames = synthetic.kvasir_frames(["a", "b", "c"], 200, 0, 0.0)
    assert next(frames) == ("a/0.jpg", b"")  # class a drawn whole; b alongside; c started after a
    frames.close()
    assert drawn["a"] == 200 and drawn.get("c", 0) < 50


def test_an_error_while_writing_a_generated_tree_stops_the_drawing_threads(tmp_path, monkeypatch,
                                                                          two_drawing_threads):
    """The folder form (make_folder): a failed write closes the generator, so no class goes on being
    drawn while the error is handled (here held by pytest, as a script's traceback would hold it)."""
    # b is still drawing when a's first file fails
    drawn = _count_drawn_frames(monkeypatch, lambda name: 0.002 if name == "a" else 0.02)

    def full_disk(path, payload):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(synthetic, "write_bytes_atomic", full_disk)
    with pytest.raises(OSError, match="No space left") as error:  # its traceback kept, as a script's
        synthetic.make_folder(tmp_path / "tree", ["a", "b", "c"], 100)
    at_the_error = dict(drawn)
    time.sleep(0.3)  # a thread left running would draw about 15 frames of b meanwhile
    assert drawn == at_the_error and drawn["b"] < 100 and drawn.get("c", 0) <= 1
    assert error.traceback and not (tmp_path / "tree").exists()
