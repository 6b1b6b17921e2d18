"""Metadata blobs (Action, Command, Directory, Tree messages of builds) are
rows of the database, not files; every reader, GC and verify handle them."""

from __future__ import annotations

from pathlib import Path

from kiln.engine.inputs import input_root
from kiln.engine.values import File
from kiln.model.digest import Digest


def _tree(store, text: bytes) -> tuple[Digest, Digest]:
    blob = store.cas.put_bytes(text)
    root = input_root(store.cas, [File("sub/dir/file.txt", blob)], "test")
    return root, blob


def test_metadata_is_stored_as_rows_and_read_like_files(store, tmp_path: Path) -> None:
    root, blob = _tree(store, b"hello\n")
    assert not store.cas.path(root).exists()  # a row, not a file
    assert store.cas.has(root) and store.cas.get_bytes(root) is not None
    assert store.cas.path(blob).exists()  # data stays a file (it can be hard-linked)
    store.get(root, tmp_path / "out")
    assert (tmp_path / "out" / "sub" / "dir" / "file.txt").read_bytes() == b"hello\n"


def test_gc_keeps_rooted_rows_and_deletes_the_others(store) -> None:
    kept, _ = _tree(store, b"kept\n")
    gone, _ = _tree(store, b"gone\n")
    store.add_root("keep", kept)
    report = store.gc()
    assert store.cas.has(kept) and not store.cas.has(gone)
    assert report.deleted_blobs >= 4  # gone's three directories and its file
    count = store.conn.execute("SELECT COUNT(*) FROM metadata_blobs").fetchone()[0]
    assert count == 3  # kept's root, sub and sub/dir


def test_verify_finds_a_corrupt_row(store) -> None:
    root, _ = _tree(store, b"x\n")
    store.conn.execute(
        "UPDATE metadata_blobs SET data = ? WHERE hash = ?", (b"tampered", root.hash)
    )
    report = store.verify()
    assert not report.ok
    [bad] = report.corrupt
    assert bad.expected == root.hash and Path(bad.quarantined_to).read_bytes() == b"tampered"
    assert not store.cas.has(root)


def test_stats_count_rows(store) -> None:
    before = store.stats().blobs
    _tree(store, b"y\n")
    assert store.stats().blobs == before + 4
