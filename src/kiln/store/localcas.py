"""The embedded on-disk CAS: ``$KILN_HOME/cas/<hh>/<hash>``.

Invariants:
- A file under ``cas/`` is complete: blobs are written to a private staging
  file, made durable (fsync, or one ``syncfs`` for a batch) and then renamed
  into place, so a crash at any moment leaves no partial blob visible.
- Blobs are read-only (0444). An executable twin ``<hash>.x`` (0555) is made
  on demand so that executables can be materialized by hard link too.
- Each blob's content hashes to its name, checked by ``verify``; reads of
  small blobs are re-checked on every read.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from kiln import errors
from kiln.model.digest import Digest, hash_stream

if TYPE_CHECKING:
    from kiln.store.db import Database

BLOB_MODE = 0o444
EXEC_MODE = 0o555
EXEC_SUFFIX = ".x"
# Files up to this size are read into memory once, hashed and written; larger
# ones are copied by the kernel into staging and hashed there.
SMALL_FILE = 1 << 20
# A batch commits (one sync, then renames) after this many staged blobs.
BATCH_BLOBS = 8192
BATCH_BYTES = 256 << 20


RECENT_BLOBS = 8192  # small blobs remembered in memory after writing them
RECENT_MAX_BYTES = 4096  # "small"
METADATA_MAX_BYTES = 1 << 20  # larger messages are stored as files
SYNCFS_FROM = 16  # staged files from which one syncfs beats fsync per file


def _load_syncfs() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    from kiln.system.libc import libc

    try:
        fn = libc().syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


class LocalCAS:
    """Blobs as files under ``root``; staging files under ``staging_dir()``.

    Metadata blobs (``add_metadata``: the Action, Command, Directory and
    Tree messages a build writes for every step, a few hundred bytes each)
    live in the ``metadata_blobs`` table of ``conn`` instead: a file system
    creates a file far more slowly than SQLite appends a row. Readers do not
    care where a blob lives (``has``, ``get_bytes``); only file blobs can be
    hard-linked (``path``), and data blobs are always files.
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
        self.root = root
        self.guard = guard
        self._root_text = os.fspath(root)  # for stat calls on many blobs (no Path objects)
        self._conn = conn
        self._staging_dir = staging_dir
        self._counter = itertools.count()
        self._syncfs: Callable[[int], int] | bool | None = False  # False: not loaded yet
        # Small blobs this process wrote lately (directories, actions), kept so
        # that a step reading its input tree right after it was written does not
        # open and re-hash each file; content-addressed, so never stale.
        self._recent: OrderedDict[Digest, bytes] = OrderedDict()
        self._recent_lock = threading.Lock()

    # ---------------------------------------------------------------- reading

    def path(self, digest: Digest) -> Path:
        return self.path_for_hash(digest.hash)

    def path_for_hash(self, hash_hex: str) -> Path:
        return self.root / hash_hex[:2] / hash_hex

    def exec_path(self, digest: Digest) -> Path:
        return self.root / digest.hash[:2] / (digest.hash + EXEC_SUFFIX)

    def has(self, digest: Digest) -> bool:
        return self.has_hash(digest.hash, digest.size)

    def has_hash(self, hash_hex: str, size: int) -> bool:
        """``has`` for a hash and size as they are (no ``Digest`` made: a
        lookup checks thousands of blobs for a toolchain's tree)."""
        try:
            return os.stat(f"{self._root_text}/{hash_hex[:2]}/{hash_hex}").st_size == size
        except FileNotFoundError:
            return self._has_metadata(hash_hex, size)

    def _metadata(self, hash_hex: str, size: int) -> bytes | None:
        if self._conn is None:
            return None
        row = self._conn.execute(
            "SELECT data FROM metadata_blobs WHERE hash = ? AND size = ?", (hash_hex, size)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def _has_metadata(self, hash_hex: str, size: int) -> bool:
        """Whether a metadata blob is stored (its content is not read)."""
        if self._conn is None:
            return False
        query = "SELECT 1 FROM metadata_blobs WHERE hash = ? AND size = ?"
        return self._conn.execute(query, (hash_hex, size)).fetchone() is not None

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
        try:
            return self.path_for_hash(hash_hex).read_bytes()
        except FileNotFoundError:
            if self._conn is None:
                return None
            row = self._conn.execute(
                "SELECT data FROM metadata_blobs WHERE hash = ?", (hash_hex,)
            ).fetchone()
            return None if row is None else bytes(row[0])

    def get_bytes(self, digest: Digest) -> bytes | None:
        """The blob's content, re-checked against its digest; None if there is
        no blob of that hash and size (as for ``has``: a hash stored at
        another size is not this blob)."""
        try:
            with open(self.path(digest), "rb") as f:
                if os.fstat(f.fileno()).st_size != digest.size:
                    return None
                data = f.read()
        except FileNotFoundError:
            found = self._metadata(digest.hash, digest.size)
            if found is None:
                return None
            data = found
        actual = Digest.of_bytes(data)
        if actual != digest:
            raise errors.corrupt_blob(digest, actual)
        return data

    def touch(self, digest: Digest) -> bool:
        """Mark a file blob as recently used (GC age); False if there is no
        such file or it was cut short (written without sync before a power
        loss), so that writers replace it."""
        path = self.path(digest)
        try:
            if os.stat(path).st_size != digest.size:
                return False
            os.utime(path)
            return True
        except FileNotFoundError:
            return False

    def sync(self) -> None:
        """Make everything written to the store so far durable (one syncfs)."""
        self._sync_all([], force_syncfs=True)

    def blob_file(self, digest: Digest) -> Path:
        """The blob's own read-only file (a metadata row is written out to
        one first: rare, only a message read as a file)."""
        path = self.path(digest)
        if _intact(path, digest):
            return path
        data = self.get_bytes(digest)
        if data is None:
            raise errors.digest_not_found(digest)
        with self.batch() as batch:
            batch.add_bytes(data, digest)
        return path

    def materialize_tree(self, digest: Digest, dest: Path) -> None:
        """Write a tree into ``dest``, files hard-linked to the blobs."""
        from kiln.store.materialize import Materializer

        with self.guard():  # executable twins are written into the store
            Materializer(self).tree(digest, dest)

    def ensure_exec_twin(self, digest: Digest) -> Path:
        """Path of an executable (0555) copy of the blob, created if needed."""
        twin = self.exec_path(digest)
        if not twin.exists():
            staged = self._stage_path()
            shutil.copyfile(self.path(digest), staged)
            os.chmod(staged, EXEC_MODE)
            self._sync_one(staged)
            os.replace(staged, twin)
        return twin

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

    def _stage_path(self) -> Path:
        return self._staging_dir() / f"{os.getpid()}.{next(self._counter)}"

    def _write_staged(self, data: bytes | memoryview) -> Path:
        staged = self._stage_path()
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, BLOB_MODE)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        finally:
            os.close(fd)
        return staged

    def _sync_one(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _sync_all(self, staged: list[Path], force_syncfs: bool = False) -> None:
        """Make staged files durable: one syncfs on Linux for a large batch,
        else fsync each (a syncfs flushes the whole file system, which costs
        far more than a few fsyncs when other writes are going on)."""
        if len(staged) < SYNCFS_FROM and not force_syncfs:
            for path in staged:
                self._sync_one(path)
            return
        if self._syncfs is False:
            self._syncfs = _load_syncfs()
        if callable(self._syncfs):
            fd = os.open(self.root, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if self._syncfs(fd) == 0:
                    return
            finally:
                os.close(fd)
        for path in staged:
            self._sync_one(path)

    def put_metadata(self, blobs: list[tuple[Digest, bytes]]) -> None:
        """Store metadata blobs (rows; as files when there is no database)."""
        if not blobs:
            return
        if self._conn is None:
            with self.batch(durable=False) as batch:
                for digest, data in blobs:
                    batch.add_bytes(data, digest)
            return
        now = time.time()
        self._conn.executemany(
            "INSERT INTO metadata_blobs(hash, size, data, last_used) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(hash) DO UPDATE SET last_used = excluded.last_used",
            [(d.hash, d.size, data, now) for d, data in blobs],
        )
        for digest, data in blobs:
            if len(data) <= RECENT_MAX_BYTES:
                self._remember(digest, data)

    def _remember(self, digest: Digest, data: bytes) -> None:
        with self._recent_lock:
            self._recent[digest] = data
            if len(self._recent) > RECENT_BLOBS:
                self._recent.popitem(last=False)

    def _install(self, staged: Path, digest: Digest) -> None:
        """Move a durable staged file into place. An existing blob wins if it
        is intact; one cut short (or, for a small blob, with other content)
        is replaced, atomically, so it no longer stands for the blob."""
        final = self.path(digest)
        try:
            os.link(staged, final)
        except FileExistsError:
            if not _intact(final, digest):
                os.replace(staged, final)
                return
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            os.replace(staged, final)
            return
        os.unlink(staged)


def _intact(path: Path, digest: Digest) -> bool:
    """Whether the blob file at ``path`` has the digest's size and, if it is
    small enough to read at once (``SMALL_FILE``), its content."""
    try:
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            if size != digest.size:
                return False
            return size > SMALL_FILE or Digest.of_bytes(f.read()) == digest
    except FileNotFoundError:
        return False


class CasBatch:
    """Stages blobs and installs them all at ``commit`` (or on leaving ``with``).

    Blobs become visible only after they are durable; if the process dies
    before that, the staged files are left in the session's staging folder,
    invisible to readers and removed by the next ``verify`` or ``gc``.
    """

    def __init__(self, cas: LocalCAS, durable: bool = True) -> None:
        self._cas = cas
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
        return digest in self._pending or self._cas.touch(digest)

    def add_bytes(self, data: bytes, digest: Digest | None = None) -> Digest:
        """Stage ``data`` (whose digest may be given if already computed)."""
        if digest is None:
            digest = Digest.of_bytes(data)
        if not self._present(digest):
            self._staged.append((self._cas._write_staged(data), digest))
            if len(data) <= RECENT_MAX_BYTES:
                self._small.append((digest, bytes(data)))
            self._pending.add(digest)
            self._bytes += digest.size
            self._maybe_commit()
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
            size = os.fstat(f.fileno()).st_size
            if size <= SMALL_FILE:
                return self.add_bytes(f.read())
            staged = self._cas._stage_path()
            fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, BLOB_MODE)
            try:
                with os.fdopen(fd, "wb", closefd=False) as out:
                    shutil.copyfileobj(f, out, 1 << 20)
            finally:
                os.close(fd)
        with open(staged, "rb", buffering=0) as copy:
            digest = hash_stream(copy)
        if self._present(digest):
            os.unlink(staged)
        else:
            self._staged.append((staged, digest))
            self._pending.add(digest)
            self._bytes += digest.size
            self._maybe_commit()
        return digest

    def _maybe_commit(self) -> None:
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
        if self._durable:
            self._cas._sync_all([p for p, _ in self._staged])
        for staged, digest in self._staged:
            self._cas._install(staged, digest)
        for digest, data in self._small:
            self._cas._remember(digest, data)
        self._small.clear()
        self._staged.clear()
        self._pending.clear()
        self._bytes = 0

    def discard(self) -> None:
        self._small.clear()
        self._metadata = []
        for staged, _ in self._staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged)
        self._staged.clear()
        self._pending.clear()
        self._bytes = 0
