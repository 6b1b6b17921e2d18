"""Blobs as rows of the database's ``metadata_blobs`` table (see ``db``).

The row backend of the local CAS (``localcas``): it holds the Action,
Command, Directory and Tree messages a build writes for every step, a few
hundred bytes each, since a file system creates a file far more slowly
than SQLite appends a row. The invariants are those of ``RowBlobs``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from kiln.model.digest import Digest
from kiln.store.cas import verified

if TYPE_CHECKING:
    from kiln.store.db import Database


class RowBlobs:
    """Blobs as rows ``(hash, size, data, last_used)`` of ``metadata_blobs``.

    Invariants:
    - A row is whole: SQLite writes it atomically, so no reader sees part of
      it. Rows are as durable as the database's commits: a power loss may
      lose the latest ones, never cut one short.
    - A row's ``data`` hashes to its ``hash`` and has ``size`` bytes; ``get``
      re-checks it on every read, and ``verify`` re-hashes every row.
    - ``last_used`` is when the blob was last written: writing a blob that
      is already a row only refreshes it (the GC age).
    - Rows cannot be hard-linked: a reader that needs a file asks the CAS
      for one (``LocalCAS.blob_file``).
    """

    def __init__(self, conn: Database) -> None:
        self._conn = conn

    def has_hash(self, hash_hex: str, size: int) -> bool:
        """Whether the blob is a row (its content is not read)."""
        query = "SELECT 1 FROM metadata_blobs WHERE hash = ? AND size = ?"
        return self._conn.execute(query, (hash_hex, size)).fetchone() is not None

    def get(self, digest: Digest) -> bytes | None:
        """The blob's content, re-checked against its digest; None if there is
        no row of that hash and size."""
        row = self._conn.execute(
            "SELECT data FROM metadata_blobs WHERE hash = ? AND size = ?",
            (digest.hash, digest.size),
        ).fetchone()
        return None if row is None else verified(bytes(row[0]), digest)

    def get_by_hash(self, hash_hex: str) -> bytes | None:
        """The content of the row of a hash, unverified (for GC)."""
        row = self._conn.execute(
            "SELECT data FROM metadata_blobs WHERE hash = ?", (hash_hex,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def put(self, blobs: list[tuple[Digest, bytes]]) -> None:
        """Store blobs whose digests the caller computed from their content."""
        now = time.time()
        self._conn.executemany(
            "INSERT INTO metadata_blobs(hash, size, data, last_used) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(hash) DO UPDATE SET last_used = excluded.last_used",
            [(d.hash, d.size, data, now) for d, data in blobs],
        )
