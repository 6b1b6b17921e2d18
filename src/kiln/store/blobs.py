"""Listing the blobs on disk (for GC, verify and stats)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kiln.digest import HEX_LEN
from kiln.store.localcas import EXEC_SUFFIX


@dataclass(frozen=True, slots=True)
class BlobFile:
    """A file under ``cas/``: a blob or its executable twin."""

    path: Path
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
