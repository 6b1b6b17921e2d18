"""Source files of a project, hashed through the store's stat cache.

A file whose stat signature (mode, inode, size, mtime, ctime) is what it
was when it was last hashed is not read again. A racy file (modified within
the racy window before the build started) is not remembered, since a second
change within one timestamp tick would look the same
(system/stat_signature.py).

Every source a build uses is kept from GC until the build ends (the
store's session): found in the store or put there, and protected, under
one hold of the store's write lock.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from kiln import errors
from kiln.engine import kiln_out
from kiln.engine.globs import glob_files, glob_folders
from kiln.engine.values import File, Tree
from kiln.model.digest import Digest
from kiln.store.db import transaction
from kiln.system.stat_signature import is_racy, signature_of

if TYPE_CHECKING:
    from kiln.store.local import Store
    from kiln.system.stat_signature import Signature


class Sources:
    """Hashes the project's source files; one per build."""

    def __init__(self, store: Store, root: Path) -> None:
        self._store = store
        self.root = root
        # path -> (*signature, hash) of the files hashed before, read on first use
        self._known: dict[str, tuple[int, int, int, int, int, str]] | None = None
        self._files: dict[str, File] = {}
        self._trees: dict[tuple[str, bool], Tree] = {}  # (path, gitignore) -> tree
        self._gitignores: dict = {}  # the rules files parsed (engine/gitignore.py)
        self._fresh: list[tuple] = []  # rows to remember at the end of the build
        self.files_hashed = 0
        self.folders_listed = 0  # by source trees' puts (store/ingest.py)
        # What the build saw, for its stamp (engine/stamp.py): every file by
        # its stat signature, every glob with its matches; a racy file or a
        # source folder makes the build unstampable.
        self.seen: dict[str, Signature] = {}
        self.listed: set[str] = set()  # folders whose listing a glob depended on
        self.globs: dict[str, list[str]] = {}  # pattern -> what it matched
        self.stampable = True
        # (the file system's clock: a file not older than this is racy)
        self.started_ns, self.racy_ns = kiln_out.clock(root)

    def _relative(self, path: str, where: str) -> str:
        if os.path.isabs(path):
            raise errors.KilnError(
                f"{where}: source {path!r} is an absolute path",
                hint="name sources relative to the project root",
                exit_code=errors.ExitCode.BAD_INPUT,
            )
        norm = os.path.normpath(path)
        if norm == ".." or norm.startswith("../"):
            raise errors.KilnError(
                f"{where}: source {path!r} is outside the project",
                hint=f"sources must lie under {self.root}",
                exit_code=errors.ExitCode.BAD_INPUT,
            )
        return norm

    def file(self, path: str, where: str) -> File:
        """The source file at ``path`` (relative to the project root)."""
        return self.files([path], where)[0]

    def files(self, paths: list[str], where: str) -> list[File]:
        """``file`` for many paths: found or put, then kept from GC, under
        one hold of the store's write lock (one write for all). A path this
        build already has is answered from memory."""
        rels = [self._relative(path, where) for path in paths]
        if all(rel in self._files for rel in rels):
            return [self._files[rel] for rel in rels]
        with self._store.writing():
            values = [self._files.get(rel) or self._file(rel, where) for rel in rels]
            self._store.session.protect_many([v.digest for v in values], "blob")
        return values

    def _file(self, rel: str, where: str) -> File:
        """The source at ``rel`` (normalized), stored; the caller holds the
        write lock and keeps it from GC."""
        full = str(self.root / rel)
        try:
            st = os.stat(full)
        except FileNotFoundError:
            raise errors.KilnError(
                f"{where}: source file {rel!r} does not exist",
                hint=f"looked for {full}",
                exit_code=errors.ExitCode.BAD_INPUT,
            ) from None
        if stat.S_ISDIR(st.st_mode):
            raise errors.KilnError(
                f"{where}: source {rel!r} is a directory",
                hint="use source_tree() for a folder",
                exit_code=errors.ExitCode.BAD_INPUT,
            )
        signature = signature_of(st)
        self.seen[full] = signature
        racy = is_racy(signature, self.started_ns, self.racy_ns)
        self.stampable &= not racy
        cached = self._cache().get(full)
        known = Digest(cached[5], st.st_size) if cached and cached[:5] == signature else None
        if known is not None and self._store.cas.has(known):
            digest = known
        else:  # never hashed, changed, or collected meanwhile: read it (again)
            with self._store.cas.batch(durable=False) as batch:
                digest = batch.add_file(full)  # synced at the end of the build
            self.files_hashed += 1
            if not racy:
                self._fresh.append((full, *signature, digest.hash))
        value = File(rel, digest, bool(st.st_mode & stat.S_IXUSR))
        self._files[rel] = value
        return value

    def note(self, full: str) -> None:
        """Track a project file Kiln read for the build file (not a source
        steps see), or its absence, in the build stamp."""
        sig = signature_of(os.stat(full)) if os.path.lexists(full) else None
        self.seen[full] = sig  # type: ignore[assignment] (None: must stay absent)
        if sig is not None and is_racy(sig, self.started_ns, self.racy_ns):
            self.stampable = False

    def tree(self, path: str, where: str, gitignore: bool = False) -> Tree:
        """A source folder, stored as a tree (through the per-folder stat
        cache); with ``gitignore``, without what git would ignore."""
        rel = self._relative(path, where)
        if (known := self._trees.get((rel, gitignore))) is not None:
            return known
        full = self.root / rel
        if not full.is_dir():
            raise errors.KilnError(
                f"{where}: source folder {rel!r} does not exist",
                hint=f"looked for {full}",
                exit_code=errors.ExitCode.BAD_INPUT,
            )
        self.stampable = False  # a folder's contents are not tracked file by file
        ignore = None
        if gitignore:
            from kiln.engine.gitignore import GitIgnore  # (start-up: pathspec)

            ignore = GitIgnore(self.root, rel if rel != "." else "", self._gitignores)
        try:
            put = self._store.put(full, keep=True, filter=ignore)
        except errors.KilnError as e:
            raise errors.KilnError(
                f"{where}: {e.message}", hint=e.hint, exit_code=e.exit_code, **e.fields
            ) from None
        self.files_hashed += put.files_hashed
        self.folders_listed += put.dirs_listed
        value = Tree(rel if rel != "." else "", put.digest)
        self._trees[(rel, gitignore)] = value
        return value

    def glob(self, pattern: str, where: str) -> list[File]:
        """The files matching ``pattern`` (``**`` spans folders), sorted by path."""
        self._relative(pattern, where)
        matches = glob_files(self.root, pattern)
        self.listed.update(glob_folders(self.root, pattern))
        self.globs[pattern] = matches
        if not matches:
            raise errors.KilnError(
                f"{where}: glob {pattern!r} matches no files",
                hint=f"patterns are relative to {self.root}",
                exit_code=errors.ExitCode.BAD_INPUT,
            )
        return self.files(matches, where)

    def _cache(self) -> dict[str, tuple[int, int, int, int, int, str]]:
        if self._known is None:
            prefix = str(self.root).rstrip("/") + "/"
            rows = self._store.conn.execute(  # the signature's columns in its order
                "SELECT path, mode, ino, size, mtime_ns, ctime_ns, hash FROM source_files "
                "WHERE path >= ? AND path < ?",
                (prefix, prefix[:-1] + "0"),  # '0' sorts right after '/'
            )
            self._known = {r[0]: r[1:] for r in rows}
        return self._known

    def save(self) -> None:
        """Remember what was hashed (at the end of a build, in one transaction)."""
        if not self._fresh:
            return
        with transaction(self._store.conn) as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO source_files"
                "(path, mode, ino, size, mtime_ns, ctime_ns, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
                self._fresh,
            )
        self._fresh = []
