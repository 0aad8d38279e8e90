import io
import zipfile

import pandas as pd
import pytest
from PIL import Image

from kvasir_utils import data, paper, synthetic
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
        data.extract_archive(archive, tmp_path / "images", progress=False)
    assert not (tmp_path / "images").exists() and not (tmp_path / "evil.jpg").exists()


def test_symbolic_links_are_refused(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"k/polyps/ok.jpg": _jpeg()}, links=["k/polyps/link.jpg"])
    with pytest.raises(KvasirError, match="symbolic link"):
        data.extract_archive(archive, tmp_path / "images", progress=False)


def test_a_damaged_zip_is_named(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(KvasirError, match="bad.zip is not a readable zip archive"):
        data.extract_archive(bad, tmp_path / "images", progress=False)


def test_extraction_is_skipped_when_done_and_redone_for_another_archive(small_archive, tmp_path):
    dest = data.extract_archive(small_archive, tmp_path / "images", progress=False)
    marker = dest / "kvasir-dataset-v2" / "marker"
    marker.write_text("x")
    data.extract_archive(small_archive, dest, progress=False)
    assert marker.exists()
    other = _zip(tmp_path / "other.zip", {f"kvasir-dataset-v2/{c}/a.jpg": _jpeg() for c in paper.CLASSES})
    data.extract_archive(other, dest, progress=False)
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
    root = _folder(tmp_path, paper.CLASSES[:-1])
    with pytest.raises(KvasirError, match="missing from the dataset .*: ulcerative-colitis"):
        data.find_class_root(root, paper.CLASSES)


def test_an_archive_of_something_else_is_named(tmp_path):
    (tmp_path / "x" / "cats").mkdir(parents=True)
    with pytest.raises(KvasirError, match="no class folder .* is this a Kvasir v2 archive"):
        data.find_class_root(tmp_path / "x", paper.CLASSES)


def test_corrupt_images_are_reported_by_path_and_other_files_ignored(tmp_path):
    root = _folder(tmp_path, paper.CLASSES, extra={"polyps/notes.txt": b"hi", "polyps/._a.jpg": b"apple",
                                                   "polyps/broken.jpg": _jpeg((640, 480))[:300]})
    class_root = data.find_class_root(root, paper.CLASSES)
    images = data.scan_images(class_root, paper.CLASSES)
    assert len(images) == 17 and "polyps/notes.txt" not in set(images["path"])
    manifest = data.build_cache(class_root, images, tmp_path / "cache", 32, workers=1, progress=False)
    check = data.check_dataset(manifest, paper.CLASSES, expected_per_class=2)
    assert list(check.unreadable["path"]) == ["polyps/broken.jpg"]
    assert check.warnings == []
    with pytest.raises(KvasirError, match="polyps/broken.jpg(.|\n)*data.on_unreadable=skip"):
        data.usable_images(manifest, "error")
    assert len(data.usable_images(manifest, "skip")) == 16
    assert set(check.resolutions["resolution"]) == {"64x48", "720x576"}


def test_cache_resizes_short_side_and_is_reused(tmp_path):
    root = data.find_class_root(_folder(tmp_path, paper.CLASSES), paper.CLASSES)
    images = data.scan_images(root, paper.CLASSES)
    first = data.build_cache(root, images, tmp_path / "cache", 40, workers=1, progress=False)
    with Image.open(tmp_path / "cache" / "polyps" / "b.jpg") as im:
        assert im.size == (50, 40)
    stamp = (tmp_path / "cache" / "polyps" / "b.jpg").stat().st_mtime_ns
    again = data.build_cache(root, images, tmp_path / "cache", 40, workers=1, progress=False)
    assert (tmp_path / "cache" / "polyps" / "b.jpg").stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(first, again)


def _images(per_class=10):
    return pd.DataFrame([(f"{c}/{i}.jpg", c) for c in paper.CLASSES for i in range(per_class)],
                        columns=["path", "label"])


def test_split_is_stratified_deterministic_and_disjoint():
    images = _images()
    split = data.make_split(images, 0.2, seed=42)
    assert list(split.columns) == ["path", "label", "split"]
    assert split.groupby("label")["split"].apply(lambda s: (s == "val").sum()).eq(2).all()
    pd.testing.assert_frame_equal(split, data.make_split(images.sample(frac=1, random_state=3), 0.2, seed=42))
    other = data.make_split(images, 0.2, seed=43)
    assert set(other.loc[other.split == "val", "path"]) != set(split.loc[split.split == "val", "path"])
    assert split["path"].is_unique


def test_generated_archive_is_deterministic_and_kvasir_shaped(tmp_path):
    a = synthetic.make_archive(tmp_path / "a.zip", paper.CLASSES[:2], 3, seed=5, large_fraction=0.5)
    b = synthetic.make_archive(tmp_path / "b.zip", paper.CLASSES[:2], 3, seed=5, large_fraction=0.5)
    c = synthetic.make_archive(tmp_path / "c.zip", paper.CLASSES[:2], 3, seed=6, large_fraction=0.5)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    with zipfile.ZipFile(a) as archive:
        names = archive.namelist()
        sizes = {Image.open(io.BytesIO(archive.read(n))).size for n in names}
    assert all(n.startswith("kvasir-dataset-v2/") and n.endswith(".jpg") for n in names)
    assert {n.split("/")[1] for n in names} == set(paper.CLASSES[:2])
    assert sizes <= {synthetic.COMMON_SIZE, *synthetic.LARGE_SIZES}
