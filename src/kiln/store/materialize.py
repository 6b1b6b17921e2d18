"""Store -> folder: write a tree out of the CAS.

Files are hard links to the read-only blobs (executables to the blob's 0555
twin) where the file system allows it, copies otherwise: across file systems,
at the per-inode link limit, or when the caller asks for copies. A hard-linked
file shares its inode with the store, so it must not be made writable; use
``copy=True`` for trees you intend to edit.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from kiln import errors
from kiln.model.digest import Digest
from kiln.model.tree import load_directory
from kiln.store.localcas import LocalCAS

_LINK_FALLBACK = (errno.EXDEV, errno.EMLINK, errno.EPERM, errno.EACCES, errno.ENOTSUP)


class Materializer:
    """Writes trees from one ``LocalCAS``; counts links versus copies."""

    def __init__(self, cas: LocalCAS, copy: bool = False) -> None:
        self._cas = cas
        self._copy = copy
        self.linked = 0
        self.copied = 0

    def tree(self, digest: Digest, dest: str | os.PathLike[str]) -> None:
        """Create ``dest`` (absent or an empty directory) holding the tree."""
        dest = Path(dest)
        if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
            raise errors.destination_not_empty(dest)
        # Load the root first so a wrong digest creates nothing.
        load_directory(self._cas, digest)
        dest.mkdir(parents=True, exist_ok=True)
        self._write_dir(digest, dest)

    def blob(self, digest: Digest, dest: str | os.PathLike[str], executable: bool = False) -> None:
        """Write one blob as the file ``dest`` (which must not exist)."""
        dest = Path(dest)
        if dest.exists() or dest.is_symlink():
            raise errors.destination_not_empty(dest)
        if not self._cas.has(digest):
            raise errors.digest_not_found(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._write_file(digest, executable, dest)

    def _write_dir(self, digest: Digest, path: Path) -> None:
        directory = load_directory(self._cas, digest, str(path))
        for f in directory.files:
            self._write_file(Digest.from_proto(f.digest), f.is_executable, path / f.name)
        for s in directory.symlinks:
            os.symlink(s.target, path / s.name)
        for d in directory.directories:
            sub = path / d.name
            sub.mkdir()
            self._write_dir(Digest.from_proto(d.digest), sub)

    def _write_file(self, digest: Digest, executable: bool, dest: Path) -> None:
        try:
            intact = os.stat(self._cas.path(digest)).st_size == digest.size
        except FileNotFoundError:  # a metadata row, if anything: nothing to link
            data = self._cas.get_bytes(digest)
            if data is None:
                raise errors.digest_not_found(digest, f"blob of {dest}") from None
            dest.write_bytes(data)
            os.chmod(dest, 0o755 if executable else 0o644)
            self.copied += 1
            return
        if not intact:
            raise errors.digest_not_found(digest, f"blob of {dest}")
        source = self._cas.ensure_exec_twin(digest) if executable else self._cas.path(digest)
        if not self._copy:
            try:
                os.link(source, dest)
                self.linked += 1
                return
            except OSError as e:
                if e.errno not in _LINK_FALLBACK:
                    raise
        shutil.copyfile(source, dest)
        os.chmod(dest, 0o755 if executable else 0o644)
        self.copied += 1
