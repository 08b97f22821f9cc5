"""The storage module on the local filesystem and on S3 (moto's server over HTTP), through the same calls."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from mlsteps.data import storage
from mlsteps.errors import StorageError


class StorageContract:
    """Behaviour every backend shares; subclasses provide ``base``, a folder URI of their backend."""

    def test_bytes_text_and_json_round_trip(self, base: str) -> None:
        storage.write_bytes(storage.join(base, "raw.bin"), b"\x00\x01binary")
        storage.write_text(storage.join(base, "note.txt"), "grüße\n")
        storage.write_json(storage.join(base, "doc.json"), {"b": [1, 2.5], "a": {"nested": None}})

        assert storage.read_bytes(storage.join(base, "raw.bin")) == b"\x00\x01binary"
        assert storage.read_text(storage.join(base, "note.txt")) == "grüße\n"
        assert storage.read_json(storage.join(base, "doc.json")) == {"a": {"nested": None}, "b": [1, 2.5]}

    def test_write_json_gives_equal_bytes_for_equal_content(self, base: str) -> None:
        storage.write_json(storage.join(base, "one.json"), {"b": 1, "a": 2})
        storage.write_json(storage.join(base, "two.json"), {"a": 2, "b": 1})

        assert storage.read_bytes(storage.join(base, "one.json")) == storage.read_bytes(storage.join(base, "two.json"))

    def test_overwrite_replaces_content(self, base: str) -> None:
        uri = storage.join(base, "file.txt")
        storage.write_text(uri, "old")
        storage.write_text(uri, "new")

        assert storage.read_text(uri) == "new"

    def test_parquet_round_trip_keeps_dtypes(self, base: str) -> None:
        frame = pd.DataFrame(
            {
                "id": ["a", "b", None],
                "value": [1.5, None, 3.0],
                "count": [1, 2, 3],
                "time": pd.to_datetime(["2025-01-01", "2025-01-02", "2025-01-03"], utc=True),
            }
        )
        uri = storage.join(base, "frame.parquet")
        storage.write_parquet(frame, uri)

        pd.testing.assert_frame_equal(storage.read_parquet(uri), frame)

    def test_exists(self, base: str) -> None:
        uri = storage.join(base, "there.txt")
        storage.write_text(uri, "x")

        assert storage.exists(uri)
        assert not storage.exists(storage.join(base, "absent.txt"))
        assert not storage.exists(base), "a folder is not a file"

    def test_list_files_is_recursive_sorted_and_stops_at_the_prefix(self, base: str) -> None:
        for name in ["b.txt", "a/2.txt", "a/1.txt"]:
            storage.write_text(storage.join(base, "root", name), name)
        storage.write_text(storage.join(base, "root-sibling", "x.txt"), "not under root/")

        assert storage.list_files(storage.join(base, "root")) == [
            storage.join(base, "root", "a/1.txt"),
            storage.join(base, "root", "a/2.txt"),
            storage.join(base, "root", "b.txt"),
        ]
        assert storage.list_files(storage.join(base, "nothing-here")) == []

    def test_missing_file_raises_file_not_found_naming_the_uri(self, base: str) -> None:
        uri = storage.join(base, "missing.json")

        with pytest.raises(FileNotFoundError, match=f"no such (file|object): {uri}$"):
            storage.read_json(uri)

    def test_upload_and_download(self, base: str, tmp_path: Path) -> None:
        source = tmp_path / "source.bin"
        source.write_bytes(b"payload")
        uri = storage.join(base, "uploaded.bin")

        storage.upload_file(source, uri)
        downloaded = storage.download_file(uri, tmp_path / "copy" / "downloaded.bin")

        assert storage.read_bytes(uri) == b"payload"
        assert downloaded.read_bytes() == b"payload"
        with pytest.raises(FileNotFoundError, match="missing.bin"):
            storage.download_file(storage.join(base, "missing.bin"), tmp_path / "never.bin")


class TestLocalStorage(StorageContract):
    @pytest.fixture
    def base(self, tmp_path: Path) -> str:
        return str(tmp_path / "data")


class TestS3Storage(StorageContract):
    @pytest.fixture
    def base(self, s3_bucket: str, tmp_path: Path) -> str:
        # A per-test prefix keeps tests apart even if two of them share a bucket name.
        return f"{s3_bucket}/{tmp_path.name}"


# Local files only: atomic writes, permissions and file:// URIs.


def test_atomic_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "out" / "artifact.json"
    for version in range(3):
        storage.write_json(str(target), {"version": version})

    assert sorted(p.name for p in target.parent.iterdir()) == ["artifact.json"]
    assert storage.read_json(str(target)) == {"version": 2}


def test_failed_write_keeps_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "artifact.txt"
    storage.write_text(str(target), "good")

    with pytest.raises(TypeError):
        storage.write_bytes(str(target), "text is not bytes")  # type: ignore[arg-type]

    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["artifact.txt"]


def test_written_files_get_the_umask_mode_not_the_private_temp_file_mode(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    target = tmp_path / "shared.txt"
    storage.write_text(str(target), "readable by the serving process")

    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_file_uris_and_plain_paths_name_the_same_file(tmp_path: Path) -> None:
    folder = tmp_path / "with space"
    storage.write_text(folder.as_uri() + "/x.txt", "via file://")

    assert folder.as_uri().endswith("with%20space")
    assert (folder / "x.txt").read_text() == "via file://"
    assert storage.exists(str(folder / "x.txt"))
    assert storage.local_path(folder.as_uri()) == folder


def test_local_path_rejects_s3_uris() -> None:
    with pytest.raises(ValueError, match="s3://bucket/key is an S3 URI"):
        storage.local_path("s3://bucket/key")


@pytest.mark.parametrize(
    ("base", "parts", "expected"),
    [
        ("s3://bucket/runs", ("r1", "step/result.json"), "s3://bucket/runs/r1/step/result.json"),
        ("/data/", ("/abs/file.csv",), "/abs/file.csv"),
        ("config/pipeline.yaml", ("s3://other/x",), "s3://other/x"),
        ("file:///tmp/a", ("b",), "file:///tmp/a/b"),
        ("relative", ("x/",), "relative/x/"),
    ],
)
def test_join(base: str, parts: tuple[str, ...], expected: str) -> None:
    assert storage.join(base, *parts) == expected


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/a/b.yaml", "s3://bucket/a"),
        ("/etc/pipeline.yaml", "/etc"),
        ("/pipeline.yaml", "/"),
        ("file:///tmp/x/", "file:///tmp"),
        ("pipeline.yaml", "."),
    ],
)
def test_parent(uri: str, expected: str) -> None:
    assert storage.parent(uri) == expected


# S3 only: missing buckets.


def test_missing_bucket_is_a_storage_error_naming_the_store_and_the_fix(s3_bucket: str, moto_server: str) -> None:
    uri = "s3://no-such-bucket-for-storage-tests/key.json"
    store = f"S3 store {moto_server}, bucket no-such-bucket-for-storage-tests"

    refused = rf"^{store} refused {uri} \(NoSuchBucket\): bucket \S+ does not exist: create"
    with pytest.raises(StorageError, match=refused):
        storage.read_bytes(uri)
    with pytest.raises(StorageError, match="NoSuchBucket"):
        storage.write_text(uri, "x")
    assert not storage.exists(uri), "a HEAD request cannot tell a missing bucket from a missing key"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_open_input_reads_only_what_a_reader_asks_for(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    import pyarrow.parquet as pq

    base = f"{request.getfixturevalue('s3_bucket')}/in" if where == "s3" else str(tmp_path)
    frame = pd.DataFrame({"a": range(50_000), "b": [f"text {i}" for i in range(50_000)]})
    uri = storage.join(base, "table.parquet")
    storage.write_parquet(frame, uri)
    with storage.open_input(uri) as source:
        assert pq.read_schema(source).names == ["a", "b"]  # the footer, by seeking to the end
        assert source.seek(0) == 0 and source.read(4) == b"PAR1"
    with pytest.raises(FileNotFoundError, match="table.csv"):
        storage.open_input(storage.join(base, "table.csv"))
