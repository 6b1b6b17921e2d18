"""Folder -> store: hash a directory tree into ``Directory`` blobs and file blobs.

The stat cache makes re-putting an unchanged tree cost one ``lstat`` per
entry and no reads: per source directory it remembers each entry's
(name, mode, inode, size, mtime, ctime) and the digests they hashed to. A
directory whose entries all look the same as last time keeps its digest
without building any message.

Racy entries: a file modified within ``RACY_WINDOW_NS`` of the walk's start
could change again without its mtime moving (coarse timestamp clocks), so
such entries are stored as "never matches" and re-hashed next time, as git
does for racily clean index entries.
"""

from __future__ import annotations

import marshal
import os
import sqlite3
import stat
import time

from kiln import errors
from kiln.digest import Digest, canonical_bytes
from kiln.store.localcas import SMALL_FILE, CasBatch, LocalCAS

RACY_WINDOW_NS = 2_000_000_000  # default; $KILN_RACY_WINDOW_MS overrides it

# A stat_cache row's data: marshal of (signature, dir_hash, dir_size, contents)
#   signature[i] = (name, mode, ino, size, mtime_ns, ctime_ns) for files/symlinks,
#                  (name, mode, subdir_hash, subdir_size) for directories
#   contents[i]  = (hash, size) for files, target for symlinks, None for directories
_Row = tuple[list[tuple], str, int, list]

_KINDS = {
    stat.S_IFSOCK: "socket",
    stat.S_IFIFO: "FIFO (named pipe)",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
}


class Ingester:
    """Puts one folder (or file) into a ``LocalCAS``, using the stat cache."""

    def __init__(
        self, cas: LocalCAS, conn: sqlite3.Connection, racy_window_ns: int | None = None
    ) -> None:
        self._cas = cas
        if racy_window_ns is None:
            ms = os.environ.get("KILN_RACY_WINDOW_MS")
            racy_window_ns = int(float(ms) * 1e6) if ms else RACY_WINDOW_NS
        self._racy_window_ns = racy_window_ns
        self._conn = conn
        self._cached: dict[str, bytes] = {}
        self._updates: list[tuple[str, bytes]] = []
        self._start_ns = 0
        self.files_hashed = 0
        self.dirs_rebuilt = 0

    def put(self, path: str | os.PathLike[str]) -> tuple[Digest, str]:
        """Store ``path``; returns its digest and kind ("tree" or "blob")."""
        root = os.path.realpath(path)
        try:
            st = os.stat(root)
        except FileNotFoundError:
            raise errors.path_missing(path) from None
        except PermissionError as e:
            raise errors.path_unreadable(path, e.strerror or "permission denied") from None
        if stat.S_ISREG(st.st_mode):
            with self._cas.batch() as batch:
                return self._hash_file(batch, root, st.st_size), "blob"
        if not stat.S_ISDIR(st.st_mode):
            raise errors.unsupported_file_type(
                path, _KINDS.get(stat.S_IFMT(st.st_mode), "special file")
            )
        return self.put_tree(root), "tree"

    def put_tree(self, root: str) -> Digest:
        self._start_ns = time.time_ns()
        self._load_cache(root)
        with self._cas.batch() as batch:
            digest = self._visit(batch, root)
        if not self._cas.has(digest):
            # The store lost blobs behind the cache's back (e.g. removed by
            # hand): forget what we knew and hash everything again.
            self._cached.clear()
            self._conn.execute(*_under(root, "DELETE FROM stat_cache WHERE"))
            with self._cas.batch() as batch:
                digest = self._visit(batch, root)
        self._save_cache()
        return digest

    # ------------------------------------------------------------- the walk

    def _visit(self, batch: CasBatch, path: str) -> Digest:
        signature: list[tuple] = []
        try:
            with os.scandir(path) as it:
                for e in it:
                    st = e.stat(follow_symlinks=False)
                    mode = st.st_mode
                    if stat.S_ISDIR(mode):
                        sub = self._visit(batch, e.path)
                        signature.append((e.name, mode, sub.hash, sub.size))
                    else:
                        signature.append(
                            (e.name, mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                        )
        except PermissionError as e:
            raise errors.path_unreadable(path, e.strerror or "permission denied") from None
        except FileNotFoundError:
            raise errors.path_missing(path) from None

        raw = self._cached.pop(path, None)
        cached: _Row | None = marshal.loads(raw) if raw is not None else None
        if cached is not None and cached[0] == signature:
            return Digest(cached[1], cached[2])
        return self._rebuild(batch, path, signature, cached)

    def _rebuild(
        self, batch: CasBatch, path: str, signature: list[tuple], cached: _Row | None
    ) -> Digest:
        from kiln.tree import make_directory

        old: dict[str, tuple[tuple, object]] = {}
        if cached is not None:
            old = {
                sig[0]: (sig, content) for sig, content in zip(cached[0], cached[3], strict=True)
            }
        files: list[tuple[str, Digest, bool]] = []
        dirs: list[tuple[str, Digest]] = []
        links: list[tuple[str, str]] = []
        contents: list[object] = []
        stored_signature: list[tuple] = []
        for sig in signature:
            name, mode = sig[0], sig[1]
            full = os.path.join(path, name)
            if stat.S_ISDIR(mode):
                dirs.append((name, Digest(sig[2], sig[3])))
                contents.append(None)
                stored_signature.append(sig)
                continue
            prior = old.get(name)
            if stat.S_ISREG(mode):
                if prior is not None and prior[0] == sig:
                    h, size = prior[1]  # type: ignore[misc]
                    digest = Digest(h, size)
                else:
                    digest = self._hash_file(batch, full, sig[3])
                files.append((name, digest, bool(mode & stat.S_IXUSR)))
                contents.append((digest.hash, digest.size))
            elif stat.S_ISLNK(mode):
                target = os.readlink(full)
                links.append((name, target))
                contents.append(target)
            else:
                kind = _KINDS.get(stat.S_IFMT(mode), "special file")
                raise errors.unsupported_file_type(full, kind)
            racy = max(sig[4], sig[5]) >= self._start_ns - self._racy_window_ns
            stored_signature.append((name, mode, -1, *sig[3:]) if racy else sig)
        directory = make_directory(files, dirs, links, where=path)
        data = canonical_bytes(directory)
        digest = batch.add_bytes(data)
        self.dirs_rebuilt += 1
        row: _Row = (stored_signature, digest.hash, digest.size, contents)
        self._updates.append((path, marshal.dumps(row)))
        return digest

    def _hash_file(self, batch: CasBatch, path: str, size: int) -> Digest:
        self.files_hashed += 1
        try:
            if size > SMALL_FILE:
                return batch.add_file(path)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                chunks = []
                while chunk := os.read(fd, max(size, 65536)):
                    chunks.append(chunk)
            finally:
                os.close(fd)
        except PermissionError as e:
            raise errors.path_unreadable(path, e.strerror or "permission denied") from None
        except FileNotFoundError:
            raise errors.path_missing(path) from None
        return batch.add_bytes(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    # ------------------------------------------------------- the stat cache

    def _load_cache(self, root: str) -> None:
        self._cached = dict(
            self._conn.execute(*_under(root, "SELECT dir, data FROM stat_cache WHERE"))
        )

    def _save_cache(self) -> None:
        stale = list(self._cached)
        if not self._updates and not stale:
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.executemany(
                "INSERT OR REPLACE INTO stat_cache(dir, data) VALUES (?, ?)", self._updates
            )
            self._conn.executemany("DELETE FROM stat_cache WHERE dir = ?", [(d,) for d in stale])
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._updates.clear()
        self._cached.clear()


def _under(root: str, query: str) -> tuple[str, tuple[str, str, str]]:
    """A WHERE clause for ``root`` and every directory below it (by path range)."""
    prefix = root.rstrip("/") + "/"
    return (
        query + " dir = ? OR (dir >= ? AND dir < ?)",
        (root, prefix, prefix[:-1] + chr(ord("/") + 1)),
    )


def forget_stat_cache(conn: sqlite3.Connection) -> None:
    """Drop the whole stat cache (after GC or quarantine removed blobs)."""
    conn.execute("DELETE FROM stat_cache")
