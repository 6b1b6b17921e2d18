"""Stat signatures and the racy-file rule, shared by every stat cache.

A file's *signature* is ``(mode, ino, size, mtime_ns, ctime_ns)``: while it
is unchanged, the file is taken to hold what it held (build stamps, the
source-file cache, the tree-put stat cache, resolved tools). Signatures are
compared as tuples, so whatever stores them follows ``FIELDS``: the build
stamps file it in their version, the ``source_files`` columns are read in
its order, and the tree-put listings spell it out (store/ingest.py).

*Racy*: a file modified within the racy window before a build or put
started might change again within the same timestamp tick without its
signature moving (coarse clocks), so it is not trusted: no build stamp is
filed, and the caches do not remember it (it is hashed again next time).
The window is ``RACY_WINDOW_NS``, or ``$KILN_RACY_WINDOW_MS`` when set (0 in
tests, to see edits at once).

This module runs in the no-op fast path (engine/stamp.py): it imports only
the standard library's cheapest modules.
"""

from __future__ import annotations

import os
from operator import attrgetter

TYPE_CHECKING = False  # (typing itself costs milliseconds at start-up)

if TYPE_CHECKING:
    from collections.abc import Callable

RACY_WINDOW_NS = 2_000_000_000  # default; $KILN_RACY_WINDOW_MS overrides it

# The fields of a signature, in order (mtime and ctime at MTIME and CTIME).
FIELDS = ("st_mode", "st_ino", "st_size", "st_mtime_ns", "st_ctime_ns")
MTIME, CTIME = 3, 4
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


def is_racy(sig: Signature, started_ns: int, window_ns: int) -> bool:
    """True if the file of signature ``sig`` was modified (content or inode
    data) within ``window_ns`` before ``started_ns``, or after it."""
    return max(sig[MTIME], sig[CTIME]) >= started_ns - window_ns
