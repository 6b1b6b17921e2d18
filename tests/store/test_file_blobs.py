"""The file backend alone: real files under tmp_path, no database, no store."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from kiln.errors import KilnError
from kiln.model.digest import Digest
from kiln.store.file_blobs import FileBlobs


@pytest.fixture
def files(tmp_path: Path) -> FileBlobs:
    root, staging = tmp_path / "cas", tmp_path / "staging"
    staging.mkdir()
    for i in range(256):
        (root / f"{i:02x}").mkdir(parents=True)
    return FileBlobs(root, lambda: staging)


def _put(files: FileBlobs, data: bytes, durable: bool = True) -> Digest:
    digest = Digest.of_bytes(data)
    files.install([(files.stage_bytes(data), digest)], durable)
    return digest


def test_a_staged_blob_is_invisible_until_installed(files: FileBlobs, tmp_path: Path) -> None:
    data = b"file blob\n"
    digest = Digest.of_bytes(data)
    staged = files.stage_bytes(data)
    assert not files.has_hash(digest.hash, digest.size) and files.get(digest) is None
    files.install([(staged, digest)])
    assert files.get(digest) == data and files.has_hash(digest.hash, digest.size)
    assert stat.S_IMODE(files.path(digest).stat().st_mode) == 0o444
    assert list((tmp_path / "staging").iterdir()) == []


def test_unstaged_files_never_become_blobs(files: FileBlobs, tmp_path: Path) -> None:
    digest = Digest.of_bytes(b"dropped")
    files.unstage([files.stage_bytes(b"dropped")])
    assert files.get(digest) is None and list((tmp_path / "staging").iterdir()) == []


def test_a_blob_cut_short_counts_as_missing_and_is_replaced(files: FileBlobs) -> None:
    data = b"the whole content\n" * 100
    digest = _put(files, data, durable=False)
    path = files.path(digest)
    path.chmod(0o644)
    path.write_bytes(data[:10])
    assert not files.has_hash(digest.hash, digest.size)
    assert files.get(digest) is None and not files.touch(digest) and not files.intact(digest)
    _put(files, data)
    assert files.get(digest) == data and files.touch(digest)


def test_a_corrupt_file_is_an_error_on_read(files: FileBlobs) -> None:
    digest = _put(files, b"good content")
    path = files.path(digest)
    path.chmod(0o644)
    path.write_bytes(b"evil content")
    with pytest.raises(KilnError, match="corrupt"):
        files.get(digest)
    assert files.get_by_hash(digest.hash) == b"evil content"  # unverified, for GC


def test_stage_copy_hashes_what_it_copied(files: FileBlobs) -> None:
    data = os.urandom(3 << 20)
    source = io.BytesIO(b"skipped" + data)
    source.seek(len(b"skipped"))
    staged, digest = files.stage_copy(source)
    assert digest == Digest.of_bytes(data)
    files.install([(staged, digest)])
    assert files.path(digest).read_bytes() == data


def test_exec_twin_is_an_executable_copy(files: FileBlobs) -> None:
    digest = _put(files, b"#!/bin/sh\n")
    twin = files.ensure_exec_twin(digest)
    assert twin == files.exec_path(digest) and twin.read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE(twin.stat().st_mode) == 0o555
    assert files.ensure_exec_twin(digest) == twin
