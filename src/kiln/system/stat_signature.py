"""Stat signatures and the racy-file rule, shared by every stat cache.

A file's *signature* is ``(mode, ino, size, mtime_ns, ctime_ns)``: while it
is unchanged, the file is taken to hold what it held (build stamps, the
source-file cache, the tree-put stat cache, resolved tools). Signatures are
compared as tuples, so whatever stores them follows ``FIELDS``: the build
stamps file it in their version, the ``source_files`` columns are read in
its order, and the tree-put listings spell it out (store/ingest.py).

*Racy*: a file modified in the same timestamp tick as it was read might
change again within that tick without its signature moving, so it is not
trusted: no build stamp is filed, and the caches do not remember it (it is
hashed again next time). A build judges that as git does, against the
file system's own clock: ``clock_ns`` touches a file of the project's
``kiln-out/.kiln`` before the build reads anything, and a file whose mtime
or ctime is not older than that touch is racy (nanosecond timestamps: a
file edited a moment before the build is trusted). Where no such clock can
be read (and for the store's own puts, which compare with the process's
clock) the racy window ``RACY_WINDOW_NS`` before the start counts as racy
too. ``$KILN_RACY_WINDOW_MS``, when set, is the window in both cases (0 in
tests, to see edits at once; a large one to never trust a file).

This module runs in the no-op fast path (engine/stamp.py): it imports only
the standard library's cheapest modules.
"""

from __future__ import annotations

import os
import time
from operator import attrgetter

TYPE_CHECKING = False  # (typing itself costs milliseconds at start-up)

if TYPE_CHECKING:
    from collections.abc import Callable

RACY_WINDOW_NS = 2_000_000_000  # default; $KILN_RACY_WINDOW_MS overrides it

# The fields of a signature, in order (inode, mtime and ctime at INO, MTIME and CTIME).
FIELDS = ("st_mode", "st_ino", "st_size", "st_mtime_ns", "st_ctime_ns")
INO, MTIME, CTIME = 1, 3, 4
Signature = tuple[int, int, int, int, int]

# The signature of an ``os.stat_result`` (a C call, no Python frame: it runs
# once per file in the stat caches' loops).
signature_of: Callable[[os.stat_result], Signature] = attrgetter(*FIELDS)


def signature(
    path: str | os.PathLike[str], dir_fd: int | None = None, follow_symlinks: bool = True
) -> Signature | None:
    """The signature of ``path`` (relative to the open folder ``dir_fd``
    if given: no path walk per file), or None if it cannot be stat'ed."""
    try:
        st = os.stat(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
    except OSError:
        return None
    return signature_of(st)


def racy_window_ns() -> int:
    """The racy window: ``$KILN_RACY_WINDOW_MS`` if set, else the default."""
    ms = os.environ.get("KILN_RACY_WINDOW_MS")
    return int(float(ms) * 1e6) if ms else RACY_WINDOW_NS


def clock_ns(folder: str | os.PathLike[str]) -> int | None:
    """The file system's time now, as it stamps files in ``folder``: the
    mtime given to ``folder/clock`` by touching it (created, with
    ``folder``, if missing); None if it cannot be written."""
    path = os.path.join(folder, "clock")
    try:
        try:
            # Looked at first: a kernel with multigrain timestamps then
            # gives the touch a fine one (later than any file changed before).
            os.lstat(path)
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            os.close(os.open(path, flags, 0o644))
            os.lstat(path)
        # Never through a link a checkout may hold: its own times are a clock too.
        os.utime(path, follow_symlinks=False)
        return os.lstat(path).st_mtime_ns
    except OSError:
        return None


def reference_ns(folder: str | os.PathLike[str] | None) -> tuple[int, int]:
    """(start, window) for ``is_racy`` in a build whose files are judged
    against the file system's clock in ``folder`` (``clock_ns``): the
    window is 0 there unless ``$KILN_RACY_WINDOW_MS`` says otherwise; the
    process's clock and the racy window where that clock cannot be read
    (or ``folder`` is None)."""
    fs_now = clock_ns(folder) if folder is not None else None
    if fs_now is None:
        return time.time_ns(), racy_window_ns()
    ms = os.environ.get("KILN_RACY_WINDOW_MS")
    return fs_now, int(float(ms) * 1e6) if ms else 0


def is_racy(sig: Signature, started_ns: int, window_ns: int) -> bool:
    """True if the file of signature ``sig`` was modified (content or inode
    data) within ``window_ns`` before ``started_ns``, or after it."""
    return max(sig[MTIME], sig[CTIME]) >= started_ns - window_ns


def listing(folder: str) -> str | None:
    """A digest of the names in ``folder`` (None if it cannot be listed):
    what a build file that listed it saw."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return None
    return _text_digest("\0".join(names))


def variable_digest(value: str | None) -> str | None:
    """What a stamp keeps of an environment variable's value: a digest, so
    a secret a build file read never lands in the store's database."""
    return None if value is None else _text_digest(value)


def _text_digest(text: str) -> str:
    import hashlib  # (start-up: only for a stamp that recorded a listing or a variable)

    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()
