"""Watching a project's folders: what changed since a given moment.

A ``ProjectWatch`` puts an inotify watch (through ``asyncinotify``) on
every folder of a project, except the folders no build reads as sources
(``kiln-out`` and version-control metadata at any depth). Each event about
a path stamps it (and its folder, whose listing changed) with the next
number of a counter; ``changes_after(n)`` then names the paths that may
have changed (files, and folders whose listing changed) after the moment
``n`` was read from ``seq``.

Reading the events is the synchronisation: Linux queues an inotify event
inside the system call that changed the file, so once ``drain`` has read
the queue empty, every change made before it was called is counted. That
is why a server can trust ``changes_after`` for a request it has just
received: the client's edit happened before the request.

Where the watch cannot vouch for a path, it says so (``vouches_for``) and
the caller checks the path with ``stat`` as it would without a server:

- a path outside the watched folders (outside the project, under an
  ignored folder, through a symbolic link, or in a folder whose watch
  could not be added);
- a file with more than one hard link (changed through another name, it
  raises no event here);
- anything at all after the event queue overflowed, or while the project
  is not watched (a network file system, where changes made by other
  machines raise no events, or the inotify limits were reached): then
  ``usable`` is False and ``reason`` says why (``kiln doctor`` shows it).

A watch is of one folder: once the project folder is moved away or
deleted (its own events say so), or a folder above it is replaced (which
raises no event here), paths under the project's root no longer name what
it sees. ``at_root`` then says False, and its owner makes a new watch.

Not seen by inotify, so not by this: writes through a shared memory
mapping of a file (``mmap``) that are never followed by a ``write``,
``truncate`` or ``utime`` on it.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import errno
import os
import stat

from asyncinotify import Inotify, Mask, Watch

# Folders never watched, at any depth: build outputs and version control.
IGNORED_NAMES = frozenset({"kiln-out", ".git", ".hg", ".svn", ".jj"})

_WATCH_MASK = (
    Mask.MODIFY | Mask.ATTRIB | Mask.CLOSE_WRITE | Mask.CREATE | Mask.DELETE
    | Mask.MOVED_FROM | Mask.MOVED_TO | Mask.DELETE_SELF | Mask.MOVE_SELF
    | Mask.ONLYDIR | Mask.DONT_FOLLOW | Mask.EXCL_UNLINK
)  # fmt: skip

# statfs(2) f_type of file systems whose changes may come from elsewhere
# (another machine, a user-space server): inotify does not see those.
_REMOTE_FS = {
    0x6969: "NFS",
    0xFF534D42: "CIFS",
    0xFE534D42: "SMB2",
    0x517B: "SMB",
    0x65735546: "FUSE",
    0x01021997: "9P",
    0x564C: "NCP",
    0x6B414653: "AFS",
    0x5346414F: "OpenAFS",
    0x47504653: "GPFS",
    0x0BD00BD0: "Lustre",
    0x73757245: "Coda",
    0x00C36400: "Ceph",
}

# A project with more folders than this is not watched (its watches would
# crowd out other programs' inotify use); it is checked with stat instead.
MAX_FOLDERS = 100_000
MAX_LOG = 1 << 20  # changes remembered


class _StatFs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_long * 15)]


def remote_file_system(path: str) -> str | None:
    """The name of the network or user-space file system ``path`` lies on,
    or None for a local one (or when it cannot be told)."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = _StatFs()
    if libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        return None
    return _REMOTE_FS.get(buf.f_type & 0xFFFFFFFF)


def inotify_limits() -> dict[str, int | None]:
    """The kernel's inotify limits for this user (None where unreadable)."""
    limits: dict[str, int | None] = {}
    for name in ("max_user_watches", "max_user_instances", "max_queued_events"):
        try:
            with open(f"/proc/sys/fs/inotify/{name}") as f:
                limits[name] = int(f.read())
        except (OSError, ValueError):
            limits[name] = None
    return limits


def _identity(path: str) -> tuple[int, int] | None:
    """The device and inode of the folder at ``path`` (None if there is none)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class ProjectWatch:
    """The inotify watches on one project's folders and what they saw."""

    def __init__(self, root: str, max_folders: int = MAX_FOLDERS) -> None:
        """Watch ``root`` (a real path) and the folders below it. Never
        raises for a project that cannot be watched: ``usable`` is then
        False and ``reason`` says why."""
        self.root = root
        self.seq = 0  # bumped by every event read
        self.lost_at = 0  # the last moment from which nothing can be vouched for
        self.reason: str | None = None  # why nothing is vouched for now
        self.folders = 0
        self._max_folders = max_folders
        # What changed, in order: paths and the seq of their event, from
        # _log_start on (older entries are dropped: see _remember).
        self._log_seqs: list[int] = []
        self._log_paths: list[str] = []
        self._log_start = 0
        self._by_wd: dict[int, str] = {}  # watch descriptor -> folder
        self._wd_of: dict[str, int] = {}
        self._watches: dict[int, Watch] = {}
        self._shared: set[str] = set()  # symbolic links, files with several links
        self._inotify: Inotify | None = None
        # The folder the watches are put on (taken before: a folder put at
        # ``root`` later differs), and whether it has left ``root`` since.
        self.identity = _identity(root)
        self.moved = False
        remote = remote_file_system(root)
        if remote is not None:
            self._give_up(f"{root} is on a {remote} file system, whose changes inotify may miss")
            return
        try:
            self._inotify = Inotify(cache_size=4096)
            os.set_blocking(self._inotify.fd, False)  # drain() reads until empty
        except OSError as e:
            self._give_up(f"inotify is not available: {os.strerror(e.errno or 0)}")
            return
        self._add_tree(root)

    # ------------------------------------------------------------ queries

    @property
    def usable(self) -> bool:
        """Whether the watch vouches for anything now."""
        return self.reason is None

    def fileno(self) -> int:
        """The inotify descriptor, readable when events wait (-1 if none)."""
        return self._inotify.fd if self._inotify is not None else -1

    def at_root(self) -> bool:
        """Whether the folder watched is still the one at ``root``. A
        project folder moved away, deleted or replaced by another folder
        (itself or a folder above it) leaves watches that tell about
        another folder, or about none: the watch must then be made again."""
        return not self.moved and _identity(self.root) == self.identity

    def vouches_for(self, path: str) -> bool:
        """Whether a change of ``path`` (absolute) would raise an event here."""
        return (
            self.reason is None
            and os.path.dirname(path) in self._wd_of
            and path not in self._shared
            and os.path.basename(path) not in IGNORED_NAMES
        )

    def vouches_for_folder(self, folder: str) -> bool:
        """Whether a change of the listing of ``folder`` would raise an event here."""
        return self.reason is None and folder in self._wd_of

    def unvouched_folders(self) -> set[str]:
        """The folders holding an entry the watch cannot vouch for."""
        return {os.path.dirname(path) for path in self._shared}

    def changes_after(self, seq: int) -> set[str] | None:
        """The paths with an event after the moment ``seq`` was read from
        ``seq`` (a folder is in it when its listing changed); None when the
        watch cannot tell (not usable, events lost after ``seq``, or
        ``seq`` older than what it remembers)."""
        if self.reason is not None or self.lost_at > seq or seq < self._log_start:
            return None
        if seq >= self.seq:
            return set()
        first = bisect.bisect_right(self._log_seqs, seq)
        return set(self._log_paths[first:])

    def changed_under(self, folder: str, seq: int) -> bool:
        """Whether anything in ``folder`` or below it may have changed after
        ``seq`` (always True when the watch cannot vouch for all of it)."""
        changes = self.changes_after(seq)
        if changes is None or folder not in self._wd_of:
            return True
        prefix = folder + "/"
        return any(p == folder or p.startswith(prefix) for p in changes) or any(
            p.startswith(prefix) for p in self._shared
        )

    # ------------------------------------------------------------ events

    def drain(self) -> int:
        """Read every event queued now; the number read."""
        if self._inotify is None:
            return 0
        count = 0
        while self._inotify is not None:  # (an event may make the watch give up)
            try:
                event = self._inotify.sync_get()
            except BlockingIOError:
                return count
            except OSError as e:
                self._give_up(f"reading inotify events failed: {os.strerror(e.errno or 0)}")
                return count
            if event is None:
                return count
            count += 1
            self._event(event)
        return count

    def _event(self, event: object) -> None:
        mask: Mask = event.mask  # type: ignore[attr-defined]
        self.seq += 1
        if Mask.Q_OVERFLOW in mask:
            self.lost_at = self.seq  # events were dropped: nothing before now holds
            return
        wd = event.watch.wd if event.watch is not None else None  # type: ignore[attr-defined]
        folder = self._by_wd.get(wd) if wd is not None else None
        if folder is None:
            return
        if folder == self.root and mask & (Mask.IGNORED | Mask.DELETE_SELF | Mask.MOVE_SELF):
            # Paths under root no longer name what the watches see: vouch
            # for nothing (the descriptor stays open until the watch is
            # replaced, so that the new one's cannot take its number).
            self.moved = True
            self._give_up(f"the project folder {self.root} was moved or deleted", close=False)
            return
        if Mask.IGNORED in mask:  # the folder is gone (or unmounted)
            self._forget_folder(folder)
            self._remember(folder)
            return
        if Mask.DELETE_SELF in mask or Mask.MOVE_SELF in mask:
            self._remember(folder)
            return
        name = event.name  # type: ignore[attr-defined]
        if name is None:
            self._remember(folder)
            return
        path = os.path.join(folder, str(name))
        self._remember(path)
        if mask & (Mask.CREATE | Mask.DELETE | Mask.MOVED_FROM | Mask.MOVED_TO):
            self._remember(folder)  # its listing changed
        if mask & (Mask.DELETE | Mask.MOVED_FROM):
            self._shared.discard(path)
            if Mask.ISDIR in mask:
                self._forget_tree(path)
        if mask & (Mask.CREATE | Mask.MOVED_TO | Mask.ATTRIB):
            self._look_at(path, Mask.ISDIR in mask and not (mask & Mask.ATTRIB))

    def _remember(self, path: str) -> None:
        if len(self._log_seqs) >= MAX_LOG:
            # Forget the oldest half: questions about moments before it
            # are answered "cannot tell" (callers then check with stat).
            half = len(self._log_seqs) // 2
            self._log_start = self._log_seqs[half]
            del self._log_seqs[:half], self._log_paths[:half]
        self._log_seqs.append(self.seq)
        self._log_paths.append(path)

    def _look_at(self, path: str, is_new_folder: bool) -> None:
        """A new (or changed) entry: watch it if it is a folder, note it if
        the watch cannot vouch for it."""
        try:
            st = os.lstat(path)
        except OSError:
            return
        self._note_shared(path, st)
        new = is_new_folder and stat.S_ISDIR(st.st_mode) and path not in self._wd_of
        if new and os.path.basename(path) not in IGNORED_NAMES:
            # Everything already in it was made before its watch: count it
            # all as changed.
            self._add_tree(path, mark=True)

    def _note_shared(self, path: str, st: os.stat_result) -> None:
        if stat.S_ISLNK(st.st_mode) or (not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1):
            self._shared.add(path)
        else:
            self._shared.discard(path)

    # ------------------------------------------------------------ watches

    def _add_tree(self, top: str, mark: bool = False) -> None:
        """Watch ``top`` and the folders below it (not through symbolic
        links, not the ignored ones)."""
        stack = [top]
        while stack and self.reason is None:
            folder = stack.pop()
            if not self._add_folder(folder):
                continue
            if mark:
                self._remember(folder)
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        path = entry.path
                        if mark:
                            self._remember(path)
                        if entry.is_dir(follow_symlinks=False):
                            if entry.name not in IGNORED_NAMES:
                                stack.append(path)
                        elif entry.is_symlink():
                            self._shared.add(path)
                        elif entry.is_file(follow_symlinks=False):
                            with contextlib.suppress(OSError):
                                if entry.stat(follow_symlinks=False).st_nlink > 1:
                                    self._shared.add(path)
            except OSError:
                # Unreadable, or gone meanwhile: its events say what happened.
                continue

    def _add_folder(self, folder: str) -> bool:
        if self._inotify is None:
            return False
        if self.folders >= self._max_folders:
            self._give_up(f"the project has more than {self._max_folders} folders")
            return False
        try:
            watch = self._inotify.add_watch(folder, _WATCH_MASK)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                limit = inotify_limits()["max_user_watches"]
                self._give_up(
                    f"the inotify watch limit is reached (fs.inotify.max_user_watches = {limit})"
                )
            # ENOENT, ENOTDIR, EACCES: the folder went away or cannot be
            # watched; paths in it are not vouched for.
            return False
        self._by_wd[watch.wd] = folder
        self._watches[watch.wd] = watch
        self._wd_of[folder] = watch.wd
        self.folders += 1
        return True

    def _forget_folder(self, folder: str) -> None:
        wd = self._wd_of.pop(folder, None)
        if wd is not None:
            self._by_wd.pop(wd, None)
            self._watches.pop(wd, None)
            self.folders -= 1

    def _forget_tree(self, top: str) -> None:
        """A folder moved away or deleted: its watches no longer tell about
        ``top`` (a moved folder keeps raising events under its new name)."""
        prefix = top + "/"
        for folder in [f for f in self._wd_of if f == top or f.startswith(prefix)]:
            wd = self._wd_of.pop(folder)
            self._by_wd.pop(wd, None)
            self.folders -= 1
            if self._inotify is not None:
                with contextlib.suppress(OSError, ValueError, KeyError):
                    self._inotify.rm_watch(self._watches.pop(wd))

    def _give_up(self, reason: str, close: bool = True) -> None:
        """Stop vouching for anything (the caller checks with stat); with
        ``close``, remove every watch now."""
        self.reason = reason
        self.lost_at = self.seq = self.seq + 1
        if close:
            self.close()

    def close(self) -> None:
        """Remove every watch."""
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        self._by_wd.clear()
        self._wd_of.clear()
        self._watches.clear()
        self.folders = 0
