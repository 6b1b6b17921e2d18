"""The row backend alone: a real SQLite database, no files, no store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.errors import KilnError
from kiln.model.digest import Digest
from kiln.store.db import Database
from kiln.store.row_blobs import RowBlobs


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "kiln.db")
    yield database
    database.close()


def test_rows_round_trip_and_miss_as_none(db: Database) -> None:
    rows = RowBlobs(db)
    data = b"a Directory message"
    digest = Digest.of_bytes(data)
    assert not rows.has_hash(digest.hash, digest.size) and rows.get(digest) is None
    rows.put([(digest, data)])
    assert rows.has_hash(digest.hash, digest.size) and rows.get(digest) == data
    assert rows.get_by_hash(digest.hash) == data
    assert not rows.has_hash(digest.hash, digest.size + 1)  # another size: not this blob
    assert rows.get(Digest(digest.hash, digest.size + 1)) is None


def test_writing_a_row_again_only_refreshes_its_age(db: Database) -> None:
    rows = RowBlobs(db)
    digest = Digest.of_bytes(b"m")
    rows.put([(digest, b"m")])
    db.execute("UPDATE metadata_blobs SET last_used = 0")
    rows.put([(digest, b"m")])
    [(last_used,)] = db.execute("SELECT last_used FROM metadata_blobs").fetchall()
    assert last_used > 0


def test_a_tampered_row_is_an_error_on_read(db: Database) -> None:
    rows = RowBlobs(db)
    digest = Digest.of_bytes(b"right")
    rows.put([(digest, b"right")])
    db.execute("UPDATE metadata_blobs SET data = ? WHERE hash = ?", (b"wrong", digest.hash))
    with pytest.raises(KilnError, match="corrupt"):
        rows.get(digest)
    assert rows.get_by_hash(digest.hash) == b"wrong"  # unverified, for GC
