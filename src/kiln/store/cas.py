"""The content-addressed store interface.

A blob is named by its ``Digest``; "not found" is ``None`` (or ``False``),
never an exception. Backends live in their own modules (``localcas`` for the
embedded on-disk store); remote backends implement the same protocol.
A caller that needs the blob (one a result or tree names) reads it with
``read_blob``, for which a missing blob is an error naming it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Protocol

from kiln import errors
from kiln.model.digest import EMPTY, Digest


class ContentStore(Protocol):
    """Blobs by digest. Reads return ``None`` on a miss; writes are atomic."""

    def has(self, digest: Digest) -> bool:
        """True if the blob is present."""
        ...

    def find_missing(self, digests: Iterable[Digest]) -> list[Digest]:
        """The subset of ``digests`` not present, in input order, without duplicates."""
        ...

    def get_bytes(self, digest: Digest) -> bytes | None:
        """The blob's content, re-checked against its digest; ``None`` if absent."""
        ...

    def put_bytes(self, data: bytes) -> Digest:
        """Store ``data`` and return its digest (a no-op if already present)."""
        ...

    def put_file(self, path: str | os.PathLike[str]) -> Digest:
        """Store a file's content by streaming it; returns its digest."""
        ...


def read_blob(cas: ContentStore, digest: Digest, what: str = "blob") -> bytes:
    """The content of a blob that must be there (the empty blob always is);
    a missing one raises ``errors.blob_missing``, never yields empty bytes."""
    if digest == EMPTY:
        return b""
    data = cas.get_bytes(digest)
    if data is None:
        raise errors.blob_missing(digest, what)
    return data
