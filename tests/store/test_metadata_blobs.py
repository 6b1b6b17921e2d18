"""Metadata blobs (Action, Command, Directory, Tree messages of builds) are
rows of the database, not files; every reader, GC and verify handle them."""

from __future__ import annotations

from pathlib import Path

from kiln.engine.inputs import input_root
from kiln.engine.values import File
from kiln.model.digest import Digest
from kiln.store.localcas import METADATA_MAX_BYTES, LocalCAS


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


def test_a_row_and_a_file_of_the_same_content_are_both_readable(store) -> None:
    data = b"the same bytes, stored both ways\n"
    with store.cas.batch() as batch:
        digest = batch.add_metadata(data)
    assert store.cas.rows.get(digest) == data and store.cas.files.get(digest) is None
    assert store.cas.put_bytes(data) == digest
    assert store.cas.rows.get(digest) == data and store.cas.files.get(digest) == data
    assert store.cas.get_bytes(digest) == data
    store.cas.path(digest).unlink()  # the file gone, the row still answers
    assert store.cas.has(digest) and store.cas.get_bytes(digest) == data
    assert store.cas.blob_file(digest).read_bytes() == data  # written out again


def test_a_message_over_the_limit_is_a_file(store) -> None:
    data = b"m" * (METADATA_MAX_BYTES + 1)
    with store.cas.batch() as batch:
        digest = batch.add_metadata(data)
    assert store.cas.path(digest).read_bytes() == data
    assert store.cas.rows.get(digest) is None and store.cas.get_bytes(digest) == data


def test_a_batch_installs_its_files_before_its_rows(store, monkeypatch) -> None:
    blob = Digest.of_bytes(b"named by the message\n")
    put_rows = store.cas.rows.put
    seen = []

    def put(blobs: list[tuple[Digest, bytes]]) -> None:
        seen.append(store.cas.files.has_hash(blob.hash, blob.size))
        put_rows(blobs)

    monkeypatch.setattr(store.cas.rows, "put", put)
    with store.cas.batch() as batch:
        batch.add_metadata(b"a message naming " + blob.hash.encode())
        batch.add_bytes(b"named by the message\n")
    assert seen == [True]


def test_without_a_database_metadata_is_files(tmp_path: Path) -> None:
    root, staging = tmp_path / "cas", tmp_path / "staging"
    staging.mkdir()
    for i in range(256):
        (root / f"{i:02x}").mkdir(parents=True)
    cas = LocalCAS(root, lambda: staging)
    with cas.batch() as batch:
        digest = batch.add_metadata(b"a Command message")
    assert cas.rows is None and cas.path(digest).read_bytes() == b"a Command message"
    assert cas.has(digest) and cas.get_bytes(digest) == b"a Command message"
    assert cas.recent(digest) == b"a Command message"
