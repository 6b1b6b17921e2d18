"""Listing the blobs of a store (for GC, verify and stats): files on disk
and metadata rows in the database."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kiln.model.digest import HEX_LEN
from kiln.store.db import transaction
from kiln.store.file_blobs import EXEC_SUFFIX


@dataclass(frozen=True, slots=True)
class BlobFile:
    """A file under ``cas/`` (a blob or its executable twin), or with
    ``path`` None a row of the ``metadata_blobs`` table."""

    path: Path | None
    hash: str
    size: int  # bytes on disk
    mtime: float
    is_twin: bool


def scan(cas_root: Path) -> Iterator[BlobFile]:
    """Every blob file, fan-out folder by folder. Foreign files are skipped."""
    with os.scandir(cas_root) as fanout:
        for sub in sorted(fanout, key=lambda e: e.name):
            if not sub.is_dir(follow_symlinks=False) or len(sub.name) != 2:
                continue
            with os.scandir(sub.path) as it:
                for e in it:
                    name = e.name
                    twin = name.endswith(EXEC_SUFFIX)
                    h = name[: -len(EXEC_SUFFIX)] if twin else name
                    if len(h) != HEX_LEN:
                        continue
                    st = e.stat(follow_symlinks=False)
                    yield BlobFile(Path(e.path), h, st.st_size, st.st_mtime, twin)


def scan_metadata(conn: sqlite3.Connection) -> Iterator[BlobFile]:
    """Every metadata blob (``mtime``: when it was last written)."""
    for h, size, last_used in conn.execute("SELECT hash, size, last_used FROM metadata_blobs"):
        yield BlobFile(None, h, size, last_used, False)


def delete_metadata(conn: sqlite3.Connection, hashes: list[str]) -> None:
    with transaction(conn):
        conn.executemany("DELETE FROM metadata_blobs WHERE hash = ?", [(h,) for h in hashes])
