import hashlib
import io
import socket
import zipfile

import pytest
import yaml

from kvasir_utils.data import sources
from kvasir_utils.data.sources import fetch_archive
from kvasir_utils.errors import KvasirError


def _serve(server, small_archive):
    (server.root / "kvasir.zip").write_bytes(small_archive.read_bytes())
    return f"{server.url}/kvasir.zip", small_archive.stat().st_size


def test_download_verifies_and_renames_into_place(http_server, small_archive, tmp_path):
    url, size = _serve(http_server, small_archive)
    sha = hashlib.sha256(small_archive.read_bytes()).hexdigest()
    dest = fetch_archive([url], tmp_path / "out" / "kvasir.zip", size=size, sha256=sha, progress=False)
    assert dest.read_bytes() == small_archive.read_bytes()
    assert not dest.with_name("kvasir.zip.part").exists()


def test_a_cut_download_resumes_with_a_range_request(http_server, small_archive, tmp_path):
    url, size = _serve(http_server, small_archive)
    http_server.cut_after = size // 3
    dest = fetch_archive([url], tmp_path / "kvasir.zip", size=size, retries=2, progress=False)
    assert dest.read_bytes() == small_archive.read_bytes()
    assert http_server.requests[-1]["Range"] == f"bytes={size // 3}-"


def test_an_interrupted_download_keeps_only_a_part_file_and_the_next_run_resumes(http_server, small_archive,
                                                                                 tmp_path):
    url, size = _serve(http_server, small_archive)
    http_server.cut_after = 1000
    dest = tmp_path / "kvasir.zip"
    with pytest.raises(KvasirError, match="partial file .* is kept and the next run resumes it"):
        fetch_archive([url], dest, size=size, retries=0, progress=False)
    assert not dest.exists() and dest.with_name("kvasir.zip.part").stat().st_size == 1000
    fetch_archive([url], dest, size=size, retries=0, progress=False)
    assert dest.read_bytes() == small_archive.read_bytes()
    assert http_server.requests[-1]["Range"] == "bytes=1000-"


@pytest.mark.parametrize(("size", "sha", "message"), [
    (123, None, r"is [\d,]+ bytes, expected 123"),
    (None, "0" * 64, "has SHA-256 .* expected 0000"),
])
def test_a_wrong_archive_is_an_error_and_leaves_nothing_finished(http_server, small_archive, tmp_path, size, sha,
                                                                 message):
    url, _ = _serve(http_server, small_archive)
    dest = tmp_path / "out" / "kvasir.zip"
    with pytest.raises(KvasirError, match=message):
        fetch_archive([url], dest, size=size, sha256=sha, progress=False)
    assert list(dest.parent.iterdir()) == []


def test_404_is_reported_with_the_manual_remedy(http_server, tmp_path):
    dest = tmp_path / "out" / "kvasir.zip"
    with pytest.raises(KvasirError, match=r"HTTP 404(.|\n)*copy it to .*kvasir.zip(.|\n)*make smoke"):
        fetch_archive([f"{http_server.url}/missing.zip"], dest, progress=False)
    assert list(dest.parent.iterdir()) == []


def test_connection_refused_is_reported(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(KvasirError, match="Connection refused"):
        fetch_archive([f"http://127.0.0.1:{port}/x.zip"], tmp_path / "x.zip", retries=1, progress=False)
    assert not (tmp_path / "x.zip").exists()


def test_the_mirror_is_tried_after_the_first_address_fails(http_server, small_archive, tmp_path):
    url, size = _serve(http_server, small_archive)
    dest = fetch_archive([f"{http_server.url}/gone.zip", url], tmp_path / "k.zip", size=size, progress=False)
    assert dest.stat().st_size == size


def test_an_archive_already_in_place_is_used_without_network(small_archive, tmp_path):
    dest = tmp_path / "kvasir.zip"
    dest.write_bytes(small_archive.read_bytes())
    assert fetch_archive(["http://127.0.0.1:9/never"], dest, size=dest.stat().st_size, offline=True) == dest


def test_an_archive_in_place_with_the_wrong_size_is_kept_and_named(tmp_path):
    dest = tmp_path / "kvasir.zip"
    dest.write_bytes(b"not the archive")
    with pytest.raises(KvasirError, match="already at .* does not match the profile"):
        fetch_archive(["http://127.0.0.1:9/never"], dest, size=10**9)
    assert dest.read_bytes() == b"not the archive"


def test_offline_says_where_to_put_the_zip(tmp_path):
    with pytest.raises(KvasirError, match="runtime.offline is true(.|\n)*copy it to"):
        fetch_archive(["https://datasets.simula.no/x.zip"], tmp_path / "x.zip", offline=True)


def test_a_local_file_address_is_copied(small_archive, tmp_path):
    dest = fetch_archive([small_archive.as_uri()], tmp_path / "k.zip", size=small_archive.stat().st_size)
    assert dest.read_bytes() == small_archive.read_bytes()


def test_a_server_that_ignores_range_sends_it_all_again_and_the_file_is_whole(http_server, small_archive, tmp_path):
    url, size = _serve(http_server, small_archive)
    http_server.ignore_range = True
    http_server.cut_after = size // 2
    dest = fetch_archive([url], tmp_path / "kvasir.zip", size=size, retries=2, progress=False)
    assert dest.read_bytes() == small_archive.read_bytes()
    assert http_server.requests[-1]["Range"] == f"bytes={size // 2}-"  # asked to resume, got everything


def test_a_stale_partial_file_answered_with_416_is_downloaded_afresh(http_server, small_archive, tmp_path):
    url, size = _serve(http_server, small_archive)
    dest = tmp_path / "kvasir.zip"
    dest.with_name("kvasir.zip.part").write_bytes(b"x" * (size + 10))  # longer than the file: not a prefix
    fetch_archive([url], dest, size=size, retries=1, progress=False)
    assert dest.read_bytes() == small_archive.read_bytes()
    assert [r.get("Range") for r in http_server.requests] == [f"bytes={size + 10}-", None]


def test_the_archive_is_hashed_once_and_a_change_is_noticed(http_server, small_archive, tmp_path, monkeypatch):

    url, size = _serve(http_server, small_archive)
    dest = fetch_archive([url], tmp_path / "kvasir.zip", size=size, progress=False)
    record = sources.read_archive_record(dest)
    assert record["sha256"] == hashlib.sha256(small_archive.read_bytes()).hexdigest() and record["source"] == url
    calls = []
    monkeypatch.setattr(sources, "sha256_file", lambda path: calls.append(path) or "0" * 64)
    fetch_archive([url], dest, size=size, progress=False)
    assert calls == []  # the second run reads the recorded value
    dest.write_bytes(dest.read_bytes()[:-1] + b"!")  # same size, other content, newer file
    fetch_archive([url], dest, progress=False)
    assert calls == [dest] and sources.read_archive_record(dest)["sha256"] == "0" * 64


def test_an_archive_fetched_from_another_address_under_the_same_name_is_not_reused(http_server, small_archive,
                                                                                     tmp_path):
    url, size = _serve(http_server, small_archive)
    dest = fetch_archive([url], tmp_path / "kvasir.zip", size=size, progress=False)
    with pytest.raises(KvasirError, match=r"was fetched from .*kvasir.zip, but this profile asks for "
                                          r"http://mirror.example/kvasir.zip(.|\n)*paths.data"):
        fetch_archive(["http://mirror.example/kvasir.zip"], dest, progress=False)
    copied = tmp_path / "by-hand" / "kvasir.zip"
    copied.parent.mkdir()
    copied.write_bytes(small_archive.read_bytes())  # copied in by hand: used as is, whatever the address
    assert fetch_archive(["http://mirror.example/kvasir.zip"], copied, offline=True) == copied


def test_a_local_file_replaced_at_the_same_address_is_copied_again_and_an_unchanged_one_is_not(
        small_archive, tmp_path, capsys):
    source = tmp_path / "mine.zip"
    source.write_bytes(small_archive.read_bytes())
    dest = fetch_archive([str(source)], tmp_path / "data" / "k.zip", progress=False)
    copied = dest.stat().st_mtime_ns
    assert fetch_archive([str(source)], dest, progress=False).stat().st_mtime_ns == copied  # unchanged: kept
    assert "changed" not in capsys.readouterr().out
    source.write_bytes(small_archive.read_bytes()[: small_archive.stat().st_size // 2])  # another file, same path
    fetch_archive([str(source)], dest, progress=False)
    assert f"note: {source} changed since it was copied to {dest}: copying it again" in capsys.readouterr().out
    assert dest.read_bytes() == source.read_bytes()
    assert sources.read_archive_record(dest)["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()


def test_a_replaced_local_file_that_fails_its_check_leaves_the_verified_copy_in_place(small_archive, tmp_path):
    source = tmp_path / "mine.zip"
    source.write_bytes(small_archive.read_bytes())
    sha = hashlib.sha256(small_archive.read_bytes()).hexdigest()
    dest = fetch_archive([str(source)], tmp_path / "data" / "k.zip", sha256=sha, progress=False)
    source.write_bytes(b"something else")
    with pytest.raises(KvasirError, match="could not get the dataset archive"):
        fetch_archive([str(source)], dest, sha256=sha, progress=False)
    assert dest.read_bytes() == small_archive.read_bytes() and not dest.with_name("k.zip.part").exists()


def test_an_archive_replaced_by_one_of_the_same_size_is_extracted_again(tmp_path):
    from kvasir_utils.data import extract

    def archive(fill: bytes) -> bytes:  # stored, same names and dates: the same size, other content
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as made:
            made.writestr(zipfile.ZipInfo("top/x/a.jpg", (2017, 1, 1, 0, 0, 0)), fill * 64)
        return buffer.getvalue()

    source = tmp_path / "mine.zip"
    source.write_bytes(archive(b"A"))
    dest = fetch_archive([str(source)], tmp_path / "data" / "k.zip", progress=False)
    images = extract.extract_archive(dest, tmp_path / "images", progress=False)
    assert (images / "top" / "x" / "a.jpg").read_bytes() == b"A" * 64
    source.write_bytes(archive(b"B"))
    assert source.stat().st_size == dest.stat().st_size
    dest = fetch_archive([str(source)], dest, progress=False)
    assert (extract.extract_archive(dest, tmp_path / "images", progress=False) / "top" / "x" / "a.jpg"
            ).read_bytes() == b"B" * 64


def test_a_local_folders_identity_changes_with_its_files_and_not_otherwise(tmp_path):
    folder = tmp_path / "mine"
    (folder / "polyps").mkdir(parents=True)
    (folder / "polyps" / "a.jpg").write_bytes(b"12345")
    first = sources.local_identity(str(folder))
    assert first == sources.local_identity(f"file://{folder}")  # a path and a file:// address name the same
    assert first["images"] == 1 and first["bytes"] == 5
    (folder / "polyps" / ".DS_Store").write_bytes(b"finder")  # files the reader leaves out change nothing
    (folder / "notes.txt").write_text("mine")
    assert sources.local_identity(str(folder)) == first
    (folder / "polyps" / "b\tc.jpg").write_bytes(b"6789")  # a tab in a name is a name
    second = sources.local_identity(str(folder))
    assert second["images"] == 2 and second["bytes"] == 9 and second["listing_sha256"] != first["listing_sha256"]
    assert sources.local_identity(str(folder)) == second  # read again, unchanged
    (folder / "polyps" / "b\tc.jpg").write_bytes(b"67890")  # one file rewritten
    assert sources.local_identity(str(folder))["listing_sha256"] != second["listing_sha256"]
    assert sources.local_identity("https://example.org/kvasir.zip") is None  # a network address: a setting
    assert sources.local_identity(str(tmp_path / "gone.zip")) is None


def test_a_source_stamp_without_local_sources_never_makes_a_step_rerun(tmp_path):
    # generated data (and network addresses) are settings: its stamp is dated 1970, so writing it the
    # first time in a run folder made before it existed reruns nothing; a local archive has an entry
    from kvasir_utils import profiles
    from kvasir_utils.run import notebooks
    from tests.helpers import tmp_overrides

    stamp = notebooks.write_source_stamp(profiles.load_profile("smoke", tmp_overrides(tmp_path)))
    assert stamp.read_text() == "{}\n" and stamp.stat().st_mtime_ns == 0
    archive = tmp_path / "mine.zip"
    archive.write_bytes(b"archive")
    local = profiles.load_profile("smoke", [*tmp_overrides(tmp_path), "data.synthetic=null", f"data.url={archive}"])
    assert notebooks.write_source_stamp(local) == stamp and stamp.stat().st_mtime_ns > 0
    assert yaml.safe_load(stamp.read_text())[str(archive)]["bytes"] == 7
