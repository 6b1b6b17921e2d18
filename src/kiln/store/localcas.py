"""The embedded on-disk CAS: blob files under ``$KILN_HOME/cas`` and
metadata rows in the store's database, behind one ``ContentStore``.

``LocalCAS`` composes two backends, each with its own invariants:
``FileBlobs`` (``file_blobs``: read-only files, staged, synced and renamed
into place) and ``RowBlobs`` (``row_blobs``: the ``metadata_blobs`` table).
It routes writes between them, reads from both, and remembers the small
blobs this process wrote lately.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from kiln import errors
from kiln.model.digest import Digest
from kiln.store.file_blobs import SMALL_FILE, FileBlobs
from kiln.store.row_blobs import RowBlobs

if TYPE_CHECKING:
    from kiln.store.db import Database

# A batch commits (one sync, then renames) after this many staged blobs.
BATCH_BLOBS = 8192
BATCH_BYTES = 256 << 20

RECENT_BLOBS = 8192  # small blobs remembered in memory after writing them
RECENT_MAX_BYTES = 4096  # "small"
METADATA_MAX_BYTES = 1 << 20  # larger messages are stored as files


class LocalCAS:
    """Blobs as files (``files``) or, for metadata, as rows (``rows``).

    Metadata blobs (``add_metadata``: the Action, Command, Directory and
    Tree messages a build writes for every step, a few hundred bytes each)
    up to ``METADATA_MAX_BYTES`` are rows of ``conn``; all other blobs, and
    metadata too when there is no database (``rows`` is None), are files.
    Invariants:
    - Readers do not care where a blob lives (``has``, ``get_bytes``): files
      are tried first, then rows. Only file blobs can be hard-linked
      (``path``), and data blobs are always files.
    - A visible row never names a blob not yet there: a batch installs its
      files before it writes its rows.
    - ``recent`` holds only blobs this process wrote, keyed by their digest:
      never stale, though the store may have collected them since.
    """

    def __init__(
        self,
        root: Path,
        staging_dir: Callable[[], Path],
        conn: Database | None = None,
        guard: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
    ) -> None:
        """``guard()`` is held by every batch from its first write to its
        commit: the store's shared write lock, which GC takes exclusively."""
        self.files = FileBlobs(root, staging_dir)
        self.rows = None if conn is None else RowBlobs(conn)
        self.root = root
        self.guard = guard
        # Small blobs this process wrote lately (directories, actions), kept so
        # that a step reading its input tree right after it was written does not
        # open and re-hash each file; content-addressed, so never stale.
        self._recent: OrderedDict[Digest, bytes] = OrderedDict()
        self._recent_lock = threading.Lock()

    # ---------------------------------------------------------------- reading

    def path(self, digest: Digest) -> Path:
        return self.files.path(digest)

    def path_for_hash(self, hash_hex: str) -> Path:
        return self.files.path_for_hash(hash_hex)

    def exec_path(self, digest: Digest) -> Path:
        return self.files.exec_path(digest)

    def has(self, digest: Digest) -> bool:
        return self.has_hash(digest.hash, digest.size)

    def has_hash(self, hash_hex: str, size: int) -> bool:
        """``has`` for a hash and size as they are (no ``Digest`` made: a
        lookup checks thousands of blobs for a toolchain's tree)."""
        if self.files.has_hash(hash_hex, size):
            return True
        return self.rows is not None and self.rows.has_hash(hash_hex, size)

    def find_missing(self, digests: Iterable[Digest]) -> list[Digest]:
        seen: set[Digest] = set()
        missing = []
        for d in digests:
            if d not in seen:
                seen.add(d)
                if not self.has(d):
                    missing.append(d)
        return missing

    def recent(self, digest: Digest) -> bytes | None:
        """A small blob this process wrote lately, from memory (else None).
        Its content is right by construction, but the store may have
        collected the blob since: use ``get_bytes`` to know it is stored."""
        with self._recent_lock:
            return self._recent.get(digest)

    def get_bytes_by_hash(self, hash_hex: str) -> bytes | None:
        """The content stored under a hash, unverified (for GC's bookkeeping)."""
        data = self.files.get_by_hash(hash_hex)
        if data is None and self.rows is not None:
            return self.rows.get_by_hash(hash_hex)
        return data

    def get_bytes(self, digest: Digest) -> bytes | None:
        """The blob's content, re-checked against its digest; None if there is
        no blob of that hash and size (as for ``has``: a hash stored at
        another size is not this blob)."""
        data = self.files.get(digest)
        if data is None and self.rows is not None:
            return self.rows.get(digest)
        return data

    def touch(self, digest: Digest) -> bool:
        """Mark a file blob as recently used (``FileBlobs.touch``)."""
        return self.files.touch(digest)

    def sync(self) -> None:
        """Make everything written to the store so far durable (one syncfs)."""
        self.files.sync()

    def blob_file(self, digest: Digest) -> Path:
        """The blob's own read-only file (a metadata row is written out to
        one first: rare, only a message read as a file)."""
        path = self.files.path(digest)
        if self.files.intact(digest):
            return path
        data = self.get_bytes(digest)
        if data is None:
            raise errors.digest_not_found(digest)
        with self.batch() as batch:
            batch.add_bytes(data, digest)
        return path

    def materialize_tree(self, digest: Digest, dest: Path) -> None:
        """Write a tree into ``dest``, files hard-linked to the blobs."""
        from kiln.store.materialize import Materializer  # (start-up: protobuf)

        with self.guard():  # executable twins are written into the store
            Materializer(self).tree(digest, dest)

    def ensure_exec_twin(self, digest: Digest) -> Path:
        """Path of an executable (0555) copy of the blob, created if needed."""
        return self.files.ensure_exec_twin(digest)

    # ---------------------------------------------------------------- writing

    def put_bytes(self, data: bytes) -> Digest:
        with self.batch() as batch:
            return batch.add_bytes(data)

    def put_file(self, path: str | os.PathLike[str]) -> Digest:
        with self.batch() as batch:
            return batch.add_file(path)

    def batch(self, durable: bool = True) -> CasBatch:
        """A group of writes made durable together (one sync for all).

        ``durable=False`` skips the sync, for small blobs that only describe
        work (actions, commands, input trees): after a power loss one of them
        may be lost or cut short. Readers check sizes (``has``,
        ``find_missing``, ``touch``), so such a blob counts as missing: an
        action cache entry that needs it is a miss, and the next writer
        replaces it. Call ``sync`` before naming such content in a GC root.
        A killed process never leaves a partial blob visible either way
        (blobs are renamed into place whole)."""
        return CasBatch(self, durable)

    def put_metadata(self, blobs: list[tuple[Digest, bytes]]) -> None:
        """Store metadata blobs (rows; as files when there is no database)."""
        if not blobs:
            return
        if self.rows is None:
            with self.batch(durable=False) as batch:
                for digest, data in blobs:
                    batch.add_bytes(data, digest)
            return
        self.rows.put(blobs)
        for digest, data in blobs:
            if len(data) <= RECENT_MAX_BYTES:
                self._remember(digest, data)

    def _remember(self, digest: Digest, data: bytes) -> None:
        with self._recent_lock:
            self._recent[digest] = data
            if len(self._recent) > RECENT_BLOBS:
                self._recent.popitem(last=False)


class CasBatch:
    """Stages blobs and installs them all at ``commit`` (or on leaving ``with``).

    Blobs become visible only after they are durable; if the process dies
    before that, the staged files are left in the session's staging folder,
    invisible to readers and removed by the next ``verify`` or ``gc``.
    Metadata is staged in memory and stored after the files (see ``commit``).
    """

    def __init__(self, cas: LocalCAS, durable: bool = True) -> None:
        self._cas = cas
        self._files = cas.files
        self._durable = durable
        self._small: list[tuple[Digest, bytes]] = []  # remembered once installed
        self._metadata: list[tuple[Digest, bytes]] = []
        self._staged: list[tuple[Path, Digest]] = []
        self._pending: set[Digest] = set()
        self._bytes = 0
        self._guard: AbstractContextManager[object] | None = None

    def __enter__(self) -> CasBatch:
        self._guard = self._cas.guard()
        self._guard.__enter__()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self.commit()
            else:
                self.discard()
        finally:
            if self._guard is not None:
                self._guard.__exit__(None, None, None)
                self._guard = None

    def _present(self, digest: Digest) -> bool:
        return digest in self._pending or self._files.touch(digest)

    def add_bytes(self, data: bytes, digest: Digest | None = None) -> Digest:
        """Stage ``data`` (whose digest may be given if already computed)."""
        if digest is None:
            digest = Digest.of_bytes(data)
        if not self._present(digest):
            staged = self._files.stage_bytes(data)
            if len(data) <= RECENT_MAX_BYTES:
                self._small.append((digest, bytes(data)))
            self._stage(staged, digest)
        return digest

    def add_metadata(self, data: bytes) -> Digest:
        """Add a metadata blob (a message describing work; see ``LocalCAS``),
        stored with the batch's other blobs at ``commit``."""
        digest = Digest.of_bytes(data)
        if len(data) > METADATA_MAX_BYTES:
            return self.add_bytes(data, digest)
        self._metadata.append((digest, data))
        return digest

    def add_file(self, path: str | os.PathLike[str] | int) -> Digest:
        """Stage a file's content, given by path or by an open descriptor
        (read from its current offset, left open). Hashes what was actually
        copied, so a file changing underneath cannot produce a blob that
        mismatches its name."""
        with open(path, "rb", buffering=0, closefd=not isinstance(path, int)) as f:
            if os.fstat(f.fileno()).st_size <= SMALL_FILE:
                return self.add_bytes(f.read())
            staged, digest = self._files.stage_copy(f)
        if self._present(digest):
            self._files.unstage([staged])
        else:
            self._stage(staged, digest)
        return digest

    def _stage(self, staged: Path, digest: Digest) -> None:
        self._staged.append((staged, digest))
        self._pending.add(digest)
        self._bytes += digest.size
        if len(self._staged) >= BATCH_BLOBS or self._bytes >= BATCH_BYTES:
            self.commit()

    def commit(self) -> None:
        self._commit_files()
        # After the files: a visible message never names a blob not yet there.
        self._cas.put_metadata(self._metadata)
        self._metadata = []

    def _commit_files(self) -> None:
        if not self._staged:
            return
        self._files.install(self._staged, self._durable)
        for digest, data in self._small:
            self._cas._remember(digest, data)
        self._clear()

    def discard(self) -> None:
        self._metadata = []
        self._files.unstage(p for p, _ in self._staged)
        self._clear()

    def _clear(self) -> None:
        self._small.clear()
        self._staged.clear()
        self._pending.clear()
        self._bytes = 0
