"""The content-addressed store interface.

A blob is named by its ``Digest``; "not found" is ``None`` (or ``False``),
never an exception. Backends live in their own modules (``localcas`` for the
embedded on-disk store); remote backends implement the same protocol.
A caller that needs the blob (one a result or tree names) reads it with
``read_blob``, for which a missing blob is an error naming it.

Executors see the store only through this protocol (``kiln.exec.base``):
they read blobs, write their outputs in batches, and ask for a tree or a
blob as host files when a process of theirs has to read it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
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

    def batch(self, durable: bool = True) -> BlobBatch:
        """A group of writes that become visible together when the batch
        is left (``with``) without an exception; nothing of it otherwise.
        ``durable=False``: no sync, for blobs that only describe work."""
        ...

    def blob_file(self, digest: Digest) -> Path:
        """A host file holding the blob, for a process to read (the store's
        own read-only file when it has one); raises if the blob is missing."""
        ...

    def materialize_tree(self, digest: Digest, dest: Path) -> None:
        """Write the tree into the empty (or absent) folder ``dest``, files
        read-only where they are shared with the store."""
        ...


class BlobBatch(Protocol):
    """Blobs staged by one writer (see ``ContentStore.batch``)."""

    def __enter__(self) -> BlobBatch: ...

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None: ...

    def add_bytes(self, data: bytes, digest: Digest | None = None) -> Digest:
        """Stage ``data`` (whose digest may be given if already computed)."""
        ...

    def add_file(self, path: str | os.PathLike[str] | int) -> Digest:
        """Stage a file's content, by path or open descriptor."""
        ...

    def add_metadata(self, data: bytes) -> Digest:
        """Stage a serialized message (a Directory, Tree, Action...)."""
        ...


def verified(data: bytes, digest: Digest) -> bytes:
    """``data`` as read from a backend, once it hashes to ``digest``; other
    content is a corrupt blob (an error), never returned."""
    actual = Digest.of_bytes(data)
    if actual != digest:
        raise errors.corrupt_blob(digest, actual)
    return data


def read_blob(cas: ContentStore, digest: Digest, what: str = "blob") -> bytes:
    """The content of a blob that must be there (the empty blob always is);
    a missing one raises ``errors.blob_missing``, never yields empty bytes."""
    if digest == EMPTY:
        return b""
    data = cas.get_bytes(digest)
    if data is None:
        raise errors.blob_missing(digest, what)
    return data
