"""Blobs as read-only files: ``$KILN_HOME/cas/<hh>/<hash>``.

The file backend of the local CAS (``localcas``), which stores data blobs
here and the small messages describing work as rows (``row_blobs``). The
invariants are those of ``FileBlobs``.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from kiln.model.digest import Digest, hash_stream
from kiln.store.cas import verified

BLOB_MODE = 0o444
EXEC_MODE = 0o555
EXEC_SUFFIX = ".x"
# Files up to this size are read into memory once, hashed and written; larger
# ones are copied by the kernel into staging and hashed there.
SMALL_FILE = 1 << 20
SYNCFS_FROM = 16  # staged files from which one syncfs beats fsync per file


def _load_syncfs() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # (start-up: only a batch of many blobs syncs the file system)

    from kiln.system.libc import libc

    try:
        fn = libc().syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


class FileBlobs:
    """Blobs as files under ``root``; staging files under ``staging_dir()``.

    Invariants:
    - A file under ``root`` is complete: blobs are written to a private
      staging file (``stage_bytes``, ``stage_copy``), made durable (fsync, or
      one ``syncfs`` for a batch) and then renamed into place (``install``),
      so a crash at any moment leaves no partial blob visible.
    - A file written without a sync (``install(durable=False)``) may be cut
      short by a power loss: every reader checks its size (``has_hash``,
      ``get``, ``touch``), so it counts as missing, and ``install`` replaces
      it with the whole blob.
    - Blobs are read-only (0444). An executable twin ``<hash>.x`` (0555) is
      made on demand so that executables can be materialized by hard link too.
    - Each blob's content hashes to its name, checked by ``verify``; ``get``
      re-checks it on every read.
    """

    def __init__(self, root: Path, staging_dir: Callable[[], Path]) -> None:
        self.root = root
        self._root_text = os.fspath(root)  # for stat calls on many blobs (no Path objects)
        self._staging_dir = staging_dir
        self._counter = itertools.count()
        self._syncfs: Callable[[int], int] | bool | None = False  # False: not loaded yet

    # ---------------------------------------------------------------- reading

    def path(self, digest: Digest) -> Path:
        return self.path_for_hash(digest.hash)

    def path_for_hash(self, hash_hex: str) -> Path:
        return self.root / hash_hex[:2] / hash_hex

    def exec_path(self, digest: Digest) -> Path:
        return self.root / digest.hash[:2] / (digest.hash + EXEC_SUFFIX)

    def has_hash(self, hash_hex: str, size: int) -> bool:
        """Whether the blob's file is there at its size (its content is not read)."""
        try:
            return os.stat(f"{self._root_text}/{hash_hex[:2]}/{hash_hex}").st_size == size
        except FileNotFoundError:
            return False

    def get(self, digest: Digest) -> bytes | None:
        """The blob's content, re-checked against its digest; None if there is
        no file of that hash and size (a file of another size, cut short, is
        not this blob)."""
        try:
            with open(self.path(digest), "rb") as f:
                if os.fstat(f.fileno()).st_size != digest.size:
                    return None
                data = f.read()
        except FileNotFoundError:
            return None
        return verified(data, digest)

    def get_by_hash(self, hash_hex: str) -> bytes | None:
        """The content of the file named by a hash, unverified (for GC)."""
        try:
            return self.path_for_hash(hash_hex).read_bytes()
        except FileNotFoundError:
            return None

    def intact(self, digest: Digest) -> bool:
        """Whether the blob's file has the digest's size and, if it is small
        enough to read at once (``SMALL_FILE``), its content."""
        try:
            with open(self.path(digest), "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                if size != digest.size:
                    return False
                return size > SMALL_FILE or Digest.of_bytes(f.read()) == digest
        except FileNotFoundError:
            return False

    def touch(self, digest: Digest) -> bool:
        """Mark a blob as recently used (GC age); False if there is no such
        file or it was cut short (written without sync before a power loss),
        so that writers replace it."""
        path = self.path(digest)
        try:
            if os.stat(path).st_size != digest.size:
                return False
            os.utime(path)
            return True
        except FileNotFoundError:
            return False

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

    def stage_bytes(self, data: bytes | memoryview) -> Path:
        """A new staging file holding ``data``, invisible to readers."""
        staged, fd = self._open_staged()
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        finally:
            os.close(fd)
        return staged

    def stage_copy(self, source: BinaryIO) -> tuple[Path, Digest]:
        """A new staging file holding the rest of ``source`` (copied by the
        kernel), and the digest of what was actually copied, so that a file
        changing underneath cannot produce a blob that mismatches its name."""
        staged, fd = self._open_staged()
        try:
            with os.fdopen(fd, "wb", closefd=False) as out:
                shutil.copyfileobj(source, out, 1 << 20)
        finally:
            os.close(fd)
        with open(staged, "rb", buffering=0) as copy:
            return staged, hash_stream(copy)

    def install(self, staged: list[tuple[Path, Digest]], durable: bool = True) -> None:
        """Make staged files durable (unless not ``durable``), then move each
        into place as the blob of its digest."""
        if durable:
            self._sync_all([p for p, _ in staged])
        for path, digest in staged:
            self._install(path, digest)

    def unstage(self, staged: Iterable[Path]) -> None:
        """Remove staging files that will not be installed."""
        for path in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def sync(self) -> None:
        """Make everything written to the store so far durable (one syncfs)."""
        self._sync_all([], force_syncfs=True)

    def _stage_path(self) -> Path:
        return self._staging_dir() / f"{os.getpid()}.{next(self._counter)}"

    def _open_staged(self) -> tuple[Path, int]:
        staged = self._stage_path()
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, BLOB_MODE)
        return staged, fd

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

    def _install(self, staged: Path, digest: Digest) -> None:
        """Move a durable staged file into place. An existing blob wins if it
        is intact; one cut short (or, for a small blob, with other content)
        is replaced, atomically, so it no longer stands for the blob."""
        final = self.path(digest)
        try:
            os.link(staged, final)
        except FileExistsError:
            if not self.intact(digest):
                os.replace(staged, final)
                return
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            os.replace(staged, final)
            return
        os.unlink(staged)
