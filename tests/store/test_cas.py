"""The local CAS: put/get/has/find-missing, read-only blobs, atomic staging."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.errors import KilnError
from kiln.model.digest import Digest
from kiln.store import file_blobs
from kiln.system.libc import libc


def test_put_get_has(store) -> None:
    d = store.cas.put_bytes(b"payload")
    assert d == Digest.of_bytes(b"payload")
    assert store.cas.has(d)
    assert store.cas.get_bytes(d) == b"payload"
    missing = Digest.of_bytes(b"absent")
    assert not store.cas.has(missing)
    assert store.cas.get_bytes(missing) is None


def test_find_missing_keeps_order_and_drops_duplicates(store) -> None:
    present = store.cas.put_bytes(b"p")
    a, b = Digest.of_bytes(b"a"), Digest.of_bytes(b"b")
    assert store.cas.find_missing([b, present, a, b]) == [b, a]


def test_blobs_are_read_only_and_fanned_out(store) -> None:
    d = store.cas.put_bytes(b"ro")
    path = store.cas.path(d)
    assert path.parent.name == d.hash[:2]
    assert stat.S_IMODE(path.stat().st_mode) == 0o444


def test_put_file_streams_large_files(store, tmp_path: Path) -> None:
    big = tmp_path / "big"
    data = os.urandom(3 << 20)
    big.write_bytes(data)
    d = store.cas.put_file(big)
    assert d == Digest.of_bytes(data)
    assert store.cas.path(d).read_bytes() == data


def test_nothing_visible_before_commit_and_discard_cleans_up(store) -> None:
    batch = store.cas.batch()
    d = batch.add_bytes(b"staged only")
    assert not store.cas.has(d)
    staged = list(store.session.staging.iterdir())
    assert len(staged) == 1
    batch.discard()
    assert not store.cas.has(d)
    assert list(store.session.staging.iterdir()) == []


def test_corrupt_blob_is_detected_on_read(store) -> None:
    d = store.cas.put_bytes(b"good content")
    path = store.cas.path(d)
    path.chmod(0o644)
    path.write_bytes(b"evil content")
    with pytest.raises(KilnError, match="corrupt"):
        store.cas.get_bytes(d)


def test_a_blob_cut_short_is_replaced_by_the_next_write(store) -> None:
    """A blob cut short (written without sync before a power loss) counts as
    missing, and the next write of it puts the whole blob in its place."""
    data = b"the whole content\n" * 100
    d = store.cas.put_bytes(data)
    path = store.cas.path(d)
    path.chmod(0o644)
    path.write_bytes(data[:10])
    path.chmod(0o444)
    assert not store.cas.has(d) and store.cas.get_bytes(d) is None
    assert store.cas.put_bytes(data) == d
    assert path.read_bytes() == data and stat.S_IMODE(path.stat().st_mode) == 0o444
    assert store.cas.has(d) and store.cas.get_bytes(d) == data


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="syncfs is Linux's")
def test_store_sync_finds_syncfs_without_starting_a_process(store, monkeypatch) -> None:
    # ctypes.util.find_library would run `ldconfig -p`: milliseconds on every build.
    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    libc.cache_clear()
    assert callable(file_blobs._load_syncfs())
    store.cas.sync()
    assert callable(store.cas.files._syncfs)
