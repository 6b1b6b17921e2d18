"""Folder -> store: hash a directory tree into ``Directory`` blobs and file blobs.

The stat cache makes re-putting an unchanged tree cost one ``lstat`` per
entry and no reads. Per source directory it remembers the *listing* (each
entry's name, mode, inode, size, mtime and ctime; name and mode only for
subdirectories), the digest the directory became, its subdirectories'
digests and its files' digests.

A put runs in two phases:
1. *Scan*: list every directory. Directories known from the cache are
   independent of each other, so on a multi-core machine a forked worker
   scans part of them; it reports only the listings that changed.
2. *Compose*, bottom-up from the root: a directory whose listing and
   subdirectory digests equal the cache keeps its digest without building
   any message; otherwise its changed files are read and hashed and its
   ``Directory`` is rebuilt.

Racy entries (system/stat_signature.py): a file modified within the racy
window before the put could change again without its mtime moving (coarse
timestamp clocks), so such entries are stored as "never matches" and
re-hashed next time, as git does for racily clean index entries.

A put may leave entries out (a ``Filter``, e.g. what git ignores: see
engine/gitignore.py): they are never read, hashed or stored. The rows of a
filtered put are kept apart from the others (their key is the folder's path
after the filter's ``namespace``), so a folder put with and without a
filter has two rows that never answer for each other; each row also holds
the ``key`` of the rules in force for the folder, and a folder whose rules
changed is composed again even if its listing did not. Such a row's
listing is the whole listing, ignored entries included: an unchanged
folder is answered without deciding anything again.
"""

from __future__ import annotations

import gc
import marshal
import os
import sqlite3
import stat
import time
from collections.abc import Callable

from kiln import errors
from kiln.model.digest import Digest, canonical_bytes
from kiln.store import unchanged_folders
from kiln.store.db import transaction
from kiln.store.file_blobs import SMALL_FILE
from kiln.store.localcas import CasBatch, LocalCAS
from kiln.system.stat_signature import is_racy
from kiln.system.stat_signature import racy_window_ns as default_racy_window_ns

# Fork a scanning worker only for trees with at least this many directories.
PARALLEL_MIN_DIRS = 256
PROGRESS_EVERY = 500

# A listing is a list of entries in scandir order:
#   (name, *signature) = (name, mode, ino, size, mtime_ns, ctime_ns) for
#     files and symlinks (system/stat_signature.py),
#   (name, mode) for directories (their contents are compared by digest).
Listing = list[tuple]
_UNCHANGED = None  # scan result: the listing equals the cached one

_KINDS = {
    stat.S_IFSOCK: "socket",
    stat.S_IFIFO: "FIFO (named pipe)",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
}


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "special file")


class Scope:
    """The rules of a ``Filter`` in force for the entries of one folder."""

    key: str  # identifies the rules: equal keys, equal decisions for equal listings

    def enter(self, path: str, listing: Listing) -> Scope:
        """The scope of the subfolder at ``path`` (whose ``listing`` may
        hold rules of its own), one of the entries this scope kept."""
        raise NotImplementedError

    def keep(self, listing: Listing) -> Listing:
        """The entries of this scope's folder to store, in listing order."""
        raise NotImplementedError


class Filter:
    """Leaves entries out of a put: ``Ingester(..., filter=...)``.

    The rules in force for a folder must depend only on where the folder is
    and on files the filter reads, never on where the put started: the stat
    cache row of a folder serves every put of it under the same namespace.
    """

    namespace: str  # a prefix of the stat cache keys of filtered folders (never "/...")

    def top(self, root: str) -> Scope:
        """The scope above ``root`` (the folder being put): ``enter(root, ...)``
        gives root's own. Raise a ``KilnError`` if root itself is left out."""
        raise NotImplementedError


def scan(path: str) -> Listing:
    """One directory's listing (see ``Listing``); ``KilnError`` if unreadable."""
    try:
        # Scanning an open descriptor makes each lstat resolve one name
        # relative to it rather than the whole path (~15% faster).
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except PermissionError as e:
        raise errors.path_unreadable(path, e.strerror or "permission denied") from None
    except (FileNotFoundError, NotADirectoryError):
        raise errors.path_missing(path) from None
    listing: Listing = []
    try:
        with os.scandir(fd) as it:
            for e in it:
                # d_type tells directories without a stat (their own stat
                # data is irrelevant: they are compared by digest).
                if e.is_dir(follow_symlinks=False):
                    listing.append((e.name, stat.S_IFDIR))
                    continue
                st = e.stat(follow_symlinks=False)
                # (name, *signature_of(st)), spelled out: ~60 ns a file less
                # (tests/system/test_stat_signature.py keeps the two alike).
                listing.append(
                    (e.name, st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                )
    except PermissionError as e:
        raise errors.path_unreadable(path, e.strerror or "permission denied") from None
    except FileNotFoundError:
        raise errors.path_missing(path) from None
    finally:
        os.close(fd)
    return listing


class _Cached:
    """One stat_cache row, decoded lazily."""

    __slots__ = (
        "_listing",
        "_rules",
        "_subdirs",
        "filtered",
        "hash",
        "listing_raw",
        "size",
        "subdirs_raw",
    )

    def __init__(
        self, listing_raw: bytes, hash_: str, size: int, subdirs_raw: bytes, filtered: bool
    ) -> None:
        self.listing_raw = listing_raw
        self.hash = hash_
        self.size = size
        self.subdirs_raw = subdirs_raw
        self.filtered = filtered  # (its listing is stored as (rules key, listing))
        self._listing: Listing | None = None
        self._rules = ""
        self._subdirs: list[tuple[str, str, int]] | None = None

    @property
    def listing(self) -> Listing:
        """The folder's whole listing (in a filtered row, ignored entries too)."""
        if self._listing is None:
            self._decode()
        return self._listing  # type: ignore[return-value]

    @property
    def rules(self) -> str:
        """The key of the filter's rules the row was made under."""
        if self._listing is None:
            self._decode()
        return self._rules

    def _decode(self) -> None:
        if self.filtered:
            self._rules, self._listing = marshal.loads(self.listing_raw)
        else:
            self._listing = marshal.loads(self.listing_raw)

    @property
    def subdirs(self) -> list[tuple[str, str, int]]:
        """(name, hash, size) of each subdirectory, by name."""
        if self._subdirs is None:
            self._subdirs = marshal.loads(self.subdirs_raw)
        return self._subdirs


def _scan_known(paths: list[str], cached: dict[str, _Cached]) -> dict[str, object]:
    """Scan cache-known directories: ``_UNCHANGED``, a new listing, or the
    ``KilnError`` met (raised later only if the directory is still part of
    the tree)."""
    out: dict[str, object] = {}
    for path in paths:
        try:
            listing = scan(path)
        except errors.KilnError as e:
            out[path] = ("error", e.message, e.hint, e.exit_code)
            continue
        out[path] = _UNCHANGED if listing == cached[path].listing else listing
    return out


class Ingester:
    """Puts one folder (or file) into a ``LocalCAS``, using the stat cache."""

    def __init__(
        self,
        cas: LocalCAS,
        conn: sqlite3.Connection,
        racy_window_ns: int | None = None,
        workers: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        filter: Filter | None = None,
    ) -> None:
        """``progress(files_hashed, bytes_hashed)`` is called every
        ``PROGRESS_EVERY`` files that had to be read. ``filter`` leaves
        entries of a folder put out of it."""
        self._cas = cas
        self._conn = conn
        self._filter = filter
        self._prefix = filter.namespace if filter is not None else ""  # of stat cache keys
        self._racy_window_ns = (
            racy_window_ns if racy_window_ns is not None else default_racy_window_ns()
        )
        self._workers = workers if workers is not None else min(os.cpu_count() or 1, 4)
        self._cached: dict[str, _Cached] = {}
        self._scanned: dict[str, object] = {}
        self._updates: list[tuple] = []
        self._visited: set[str] = set()
        self._start_ns = 0
        self._progress = progress
        self.files_hashed = 0
        self.bytes_hashed = 0
        self.dirs_rebuilt = 0
        self.dirs_listed = 0  # (those the stat cache could not answer without a listing)

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
            raise errors.unsupported_file_type(path, _kind(st.st_mode))
        return self.put_tree(root), "tree"

    def put_tree(self, root: str) -> Digest:
        # The walk allocates a few objects per file and frees none of them
        # until the end: cyclic GC passes over them would only cost time.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._put_tree(root)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _put_tree(self, root: str) -> Digest:
        self._start_ns = time.time_ns()
        above = self._filter.top(root) if self._filter is not None else None
        self._load_cache(root)
        self._scan_phase()
        with self._cas.batch() as batch:
            digest = self._compose(batch, root, above)
        if not self._cas.has(digest):
            # The store lost blobs behind the cache's back (e.g. removed by
            # hand): forget what we knew and hash everything again.
            self._cached.clear()
            self._scanned.clear()
            self._visited.clear()
            self._updates.clear()
            with self._cas.batch() as batch:
                digest = self._compose(batch, root, above)
        self._save_cache(root)
        unchanged_folders.note_scanned([self._watch_key(d) for d in self._visited])
        return digest

    def _watch_key(self, folder: str) -> str:
        """How ``store/unchanged_folders.py`` names a folder of this put
        (apart for each filter's namespace, as the stat cache's rows are)."""
        return f"{self._prefix}\0{folder}" if self._prefix else folder

    # --------------------------------------------------------- phase 1: scan

    def _scan_phase(self) -> None:
        unchanged = unchanged_folders.unchanged
        known = sorted(d for d in self._cached if not unchanged(self._watch_key(d)))
        if self._workers < 2 or len(known) < PARALLEL_MIN_DIRS:
            return  # compose scans on demand
        self.dirs_listed += len(known)
        ours, theirs = known[0::2], known[1::2]
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: scan, report, exit without cleanup
            os.close(read_fd)
            code = 0
            try:
                data = marshal.dumps(_scan_known(theirs, self._cached))
                with os.fdopen(write_fd, "wb") as out:
                    out.write(data)
            except BaseException:
                code = 1
            os._exit(code)
        os.close(write_fd)
        try:
            self._scanned = _scan_known(ours, self._cached)
            with os.fdopen(read_fd, "rb") as inp:
                data = inp.read()
        finally:
            _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) == 0:
            self._scanned.update(marshal.loads(data))
        # else: whatever the worker did not report is scanned on demand

    def _listing(self, path: str) -> Listing | None:
        """The scan result for ``path``: a listing, or ``None`` if unchanged."""
        result = self._scanned.pop(path, False)
        if result is False:
            if path in self._cached and unchanged_folders.unchanged(self._watch_key(path)):
                return _UNCHANGED  # (the resident server saw nothing change in it)
            self.dirs_listed += 1
            listing = scan(path)
            cached = self._cached.get(path)
            return _UNCHANGED if cached is not None and cached.listing == listing else listing
        if isinstance(result, tuple):
            _, message, hint, exit_code = result
            raise errors.KilnError(message, hint=hint, exit_code=exit_code)
        return result  # type: ignore[return-value]

    # ------------------------------------------------------ phase 2: compose

    def _compose(self, batch: CasBatch, path: str, above: Scope | None = None) -> Digest:
        """The digest of the folder at ``path``; ``above``: the filter's
        scope of its parent folder (with a filter)."""
        self._visited.add(path)
        listing = self._listing(path)
        cached = self._cached.get(path)
        scope = None
        if above is not None:
            whole = cached.listing if listing is _UNCHANGED else listing
            scope = above.enter(path, whole)  # type: ignore[arg-type]
            if listing is _UNCHANGED and cached.rules != scope.key:  # type: ignore[union-attr]
                listing = whole  # the same entries under other rules
        if listing is _UNCHANGED:
            assert cached is not None
            subdirs = [
                (name, self._compose(batch, os.path.join(path, name), scope))
                for name, _, _ in cached.subdirs
            ]
            if all(
                d.hash == h and d.size == s
                for (_, d), (_, h, s) in zip(subdirs, cached.subdirs, strict=True)
            ):
                return Digest(cached.hash, cached.size)
            kept = cached.listing if scope is None else scope.keep(cached.listing)
            return self._rebuild(batch, path, kept, dict(subdirs), cached, cached.listing, scope)
        kept = listing if scope is None else scope.keep(listing)
        subdir_digests = {
            entry[0]: self._compose(batch, os.path.join(path, entry[0]), scope)
            for entry in kept
            if len(entry) == 2
        }
        return self._rebuild(batch, path, kept, subdir_digests, cached, listing, scope)

    def _rebuild(
        self,
        batch: CasBatch,
        path: str,
        listing: Listing,
        subdir_digests: dict[str, Digest],
        cached: _Cached | None,
        whole: Listing,
        scope: Scope | None,
    ) -> Digest:
        """Build the folder's ``Directory`` from the entries of ``listing``
        (those kept of the ``whole`` listing, which the stat cache keeps)."""
        # (start-up: protobuf, loaded only when a folder changed)
        from kiln.model.tree import make_directory

        old_listing: dict[str, tuple] = {}
        old_contents: dict[str, tuple[str, int]] = {}
        if cached is not None:
            old_listing = {entry[0]: entry for entry in cached.listing}
            row = self._conn.execute(
                "SELECT contents FROM stat_cache WHERE dir = ?", (self._prefix + path,)
            ).fetchone()
            old_contents = marshal.loads(row[0]) if row else {}
        files: list[tuple[str, Digest, bool]] = []
        links: list[tuple[str, str]] = []
        contents: dict[str, tuple[str, int]] = {}
        for entry in listing:
            name, mode = entry[0], entry[1]
            if len(entry) == 2:
                continue
            full = os.path.join(path, name)
            if stat.S_ISREG(mode):
                known = old_contents.get(name)
                if known is not None and old_listing.get(name) == entry:
                    digest = Digest(known[0], known[1])
                else:
                    digest = self._hash_file(batch, full, entry[3])
                files.append((name, digest, bool(mode & stat.S_IXUSR)))
                contents[name] = (digest.hash, digest.size)
            elif stat.S_ISLNK(mode):
                try:
                    links.append((name, os.readlink(full)))
                except FileNotFoundError:
                    raise errors.path_missing(full) from None
            else:
                raise errors.unsupported_file_type(full, _kind(mode))
        stored = [  # ino -1: a racy entry never matches
            (e[0], e[1], -1, *e[3:])
            if len(e) > 2 and is_racy(e[1:], self._start_ns, self._racy_window_ns)
            else e
            for e in whole
        ]
        dirs = sorted(subdir_digests.items())
        directory = make_directory(files, dirs, links, where=path)
        digest = batch.add_bytes(canonical_bytes(directory))
        self.dirs_rebuilt += 1
        self._updates.append(
            (
                self._prefix + path,
                marshal.dumps(stored if scope is None else (scope.key, stored)),
                digest.hash,
                digest.size,
                marshal.dumps([(n, d.hash, d.size) for n, d in dirs]),
                marshal.dumps(contents),
            )
        )
        return digest

    def _hash_file(self, batch: CasBatch, path: str, size: int) -> Digest:
        self.files_hashed += 1
        self.bytes_hashed += size
        if self._progress is not None and self.files_hashed % PROGRESS_EVERY == 0:
            self._progress(self.files_hashed, self.bytes_hashed)
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
        query, params = _under(
            self._prefix + root, "SELECT dir, listing, hash, size, subdirs FROM stat_cache WHERE"
        )
        skip, filtered = len(self._prefix), self._filter is not None
        self._cached = {
            row[0][skip:]: _Cached(row[1], row[2], row[3], row[4], filtered)
            for row in self._conn.execute(query, params)
        }

    def _save_cache(self, root: str) -> None:
        stale = [(self._prefix + d,) for d in self._cached if d not in self._visited]
        if not self._updates and not stale:
            return
        with transaction(self._conn) as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO stat_cache(dir, listing, hash, size, subdirs, contents) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                self._updates,
            )
            conn.executemany("DELETE FROM stat_cache WHERE dir = ?", stale)
        self._updates.clear()


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
