"""Cross-process locks on files (``flock``), released by the kernel on exit.

A process killed with SIGKILL releases its locks, so no lock can be left
stale by a crash. Lock files live under ``$KILN_HOME/locks``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from kiln.model.digest import Digest

_POLL = 0.02


def _take(lock: Callable[[bool], object], timeout: float | None) -> bool:
    """Take a lock with ``lock(wait)``, which without ``wait`` raises
    BlockingIOError (or PermissionError) if it is held; with a timeout,
    poll until then. False when it timed out."""
    if timeout is None:
        lock(True)
        return True
    deadline = time.monotonic() + timeout
    while True:
        try:
            lock(False)
            return True
        except (BlockingIOError, PermissionError):
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL)


def _acquire(fd: int, op: int, timeout: float | None) -> bool:
    """flock ``fd``; poll if a timeout is given. False when it timed out."""
    return _take(lambda wait: fcntl.flock(fd, op if wait else op | fcntl.LOCK_NB), timeout)


def is_locked(path: Path) -> bool:
    """True if some process holds a lock on the file ``path`` (a snapshot);
    False if it is free or does not exist."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class SharedExclusiveLock:
    """A reader/writer lock over one file, shareable by threads of a process.

    Store writers hold it shared while they add blobs or references; garbage
    collection holds it exclusively, so it never sweeps while a write is in
    flight. Within one process, shared holds are counted so that threads and
    nested writers share one ``flock``.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._mutex = threading.Lock()
        self._fd: int | None = None
        self._shared_count = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._mutex:
            if self._shared_count == 0:
                if self._fd is None:  # kept open: opening it for every write costs
                    self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                fcntl.flock(self._fd, fcntl.LOCK_SH)
            self._shared_count += 1
        try:
            yield
        finally:
            with self._mutex:
                self._shared_count -= 1
                if self._shared_count == 0 and self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._mutex:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
                self._shared_count = 0

    @contextlib.contextmanager
    def exclusive(self, timeout: float | None = None) -> Iterator[bool]:
        """Yields False (not holding the lock) if ``timeout`` ran out."""
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            yield _acquire(fd, fcntl.LOCK_EX, timeout)
        finally:
            os.close(fd)


class KeyLease:
    """A held key lock; ``release`` (or leaving ``with``) lets the next waiter in."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the description releases its lock
            self._fd = None

    def __enter__(self) -> KeyLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# struct flock on Linux (x86-64 and arm64): l_type, l_whence, l_start, l_len,
# l_pid (0 for open-file-description locks), padded to 32 bytes.
_FLOCK = struct.Struct("hhqqi4x")


class KeyLocks:
    """One exclusive lock per action key: "this key is being executed".

    Every key is one byte of a single lock file, at an offset taken from the
    key's hash, locked with an open-file-description lock (``F_OFD_SETLK``):
    taking a key creates no file. Each acquisition opens its own description,
    so threads of one process exclude each other as processes do; the kernel
    releases the lock when the holder closes it or dies.
    """

    def __init__(self, path: Path) -> None:
        self._path = path

    def acquire(self, key: Digest, timeout: float | None = None) -> KeyLease | None:
        """Block until the key is ours; ``None`` if ``timeout`` ran out first."""
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        lock = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, int(key.hash[:15], 16), 1, 0)

        def set_lock(wait: bool) -> None:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK, lock)

        try:
            if _take(set_lock, timeout):
                return KeyLease(fd)
            os.close(fd)
            return None
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
