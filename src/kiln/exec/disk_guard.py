"""Keeping a native step's work folder within its disk limit.

The work folder is an ordinary folder on the store's disk, where a quota
would need root. Two unprivileged mechanisms share the limit instead:

- ``RLIMIT_FSIZE``, set in the sandbox's first process and inherited by
  every step: no single file grows past the limit (a write past it fails
  with ``EFBIG`` and ``SIGXFSZ`` ends the writer);
- a ``DiskGuard`` thread that measures the work folder while the step runs
  and, once it holds more than the limit, ends the sandbox; and a last
  measurement when the step has ended.

A measurement counts each regular file's apparent or allocated size,
whichever is larger (a hole counts: it would be stored), hard links once,
each folder ``FOLDER_BYTES`` and each symlink ``LINK_BYTES``, so millions of
empty entries count too. It walks with one folder descriptor open at a
time, never following a symlink, at any depth. The guard samples, so a
step may overshoot by what it writes between two samples; going over is a
failed result, not a cached one.
"""

from __future__ import annotations

import os
import signal
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from kiln.system.fsutil import FOLDER_FLAGS, reopen_folder

FOLDER_BYTES = 4096
LINK_BYTES = 256
FIRST_SAMPLE_S = 0.2
MAX_SAMPLE_GAP_S = 2.0
SAMPLING_SHARE = 10  # wait at least this many times as long as a measurement took


class Usage(NamedTuple):
    """What a folder holds: bytes in all, and its largest file's size."""

    total: int
    largest: int


def folder_usage(folder: Path) -> Usage | None:
    """Measure ``folder``; None if it is gone, or if a folder moved while it
    was measured (a running step renaming things) so the walk lost its place."""
    try:
        fd = os.open(folder, FOLDER_FLAGS)
    except OSError:
        return None
    total, largest, seen = 0, 0, set[tuple[int, int]]()
    # From the top down to the folder at ``fd``: each folder's (device,
    # inode) and the names of its subfolders still to measure.
    path: list[tuple[tuple[int, int], list[str]]] = []
    try:
        while True:
            here = os.fstat(fd)
            subfolders, size, big = _list(fd, seen)
            total, largest = total + size, max(largest, big)
            path.append(((here.st_dev, here.st_ino), subfolders))
            while (child := _open_next(fd, path[-1][1])) is None:  # done here: back up
                path.pop()
                if not path:
                    return Usage(total, largest)
                fd = reopen_folder(fd, "..")
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != path[-1][0]:
                    return None
            fd = child
    except OSError:
        return None
    finally:
        os.close(fd)


def _list(fd: int, seen: set[tuple[int, int]]) -> tuple[list[str], int, int]:
    """The folder at ``fd``: (its subfolders' names, bytes of its other
    entries and of itself, its largest file)."""
    subfolders: list[str] = []
    total, largest = FOLDER_BYTES, 0
    with os.scandir(fd) as entries:
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    subfolders.append(entry.name)
                    continue
                if entry.is_symlink():
                    total += LINK_BYTES
                    continue
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed meanwhile
            if st.st_nlink > 1 and (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            size = max(st.st_size, st.st_blocks * 512) if stat.S_ISREG(st.st_mode) else 0
            total, largest = total + max(size, LINK_BYTES), max(largest, size)
    return subfolders, total, largest


def _open_next(fd: int, names: list[str]) -> int | None:
    """The next subfolder in ``names`` that still opens (``fd`` is then
    closed), or None when none is left."""
    while names:
        try:
            return reopen_folder(fd, names.pop())
        except OSError:
            continue  # removed or replaced meanwhile
    return None


class DiskGuard:
    """Watches ``folder`` while a step runs (``with``), calling ``stop``
    once it holds more than ``limit`` bytes; then ``verdict`` says whether
    the step went past the limit in any way."""

    def __init__(self, folder: Path, limit: int, stop: Callable[[], None]) -> None:
        self._folder = folder
        self._limit = limit
        self._stop = stop
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="kiln-disk-guard", daemon=True)
        self.tripped: Usage | None = None  # what the folder held when the step was stopped

    def __enter__(self) -> DiskGuard:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        gap = FIRST_SAMPLE_S
        while not self._done.wait(gap):
            started = time.monotonic()
            usage = folder_usage(self._folder)
            if usage is not None and usage.total > self._limit:
                self.tripped = usage
                self._stop()
                return
            took = time.monotonic() - started
            gap = min(MAX_SAMPLE_GAP_S, max(FIRST_SAMPLE_S, SAMPLING_SHARE * took))

    def verdict(self, exit_code: int, streams: tuple[int, ...]) -> str | None:
        """After the step (``exit_code``: 128 + the signal that ended it, if
        one did; ``streams``: the bytes it wrote to stdout and stderr): how
        it went past the limit, or None."""
        mib = self._limit >> 20
        if self.tripped is not None:
            held = self.tripped.total / (1 << 20)
            return (f"disk limit of {mib} MiB reached: the step's work folder held "
                    f"{held:.1f} MiB, so the step was stopped")  # fmt: skip
        usage = folder_usage(self._folder)
        # 128 + SIGXFSZ: what a writer ended by RLIMIT_FSIZE exits with (also
        # as reported by a shell that ran it).
        filled = usage is not None and usage.largest >= self._limit
        if exit_code == 128 + signal.SIGXFSZ or filled or max(streams) >= self._limit:
            return (f"disk limit of {mib} MiB reached: a file the step wrote grew to it "
                    "(a write past it fails, and SIGXFSZ ends the writer)")  # fmt: skip
        if usage is not None and usage.total > self._limit:
            left = usage.total / (1 << 20)
            return (f"disk limit of {mib} MiB reached: the step left "
                    f"{left:.1f} MiB in its work folder")  # fmt: skip
        return None
