"""Cross-process locks on files (``flock``), released by the kernel on exit.

A process killed with SIGKILL releases its locks, so no lock can be left
stale by a crash. Lock files live under ``$KILN_HOME/locks``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from kiln.digest import Digest

_POLL = 0.02


def _acquire(fd: int, op: int, timeout: float | None) -> bool:
    """flock ``fd``; poll if a timeout is given. False when it timed out."""
    if timeout is None:
        fcntl.flock(fd, op)
        return True
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL)


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
                fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                fcntl.flock(fd, fcntl.LOCK_SH)
                self._fd = fd
            self._shared_count += 1
        try:
            yield
        finally:
            with self._mutex:
                self._shared_count -= 1
                if self._shared_count == 0 and self._fd is not None:
                    os.close(self._fd)
                    self._fd = None

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

    def __init__(self, path: Path, fd: int) -> None:
        self._path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> KeyLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class KeyLocks:
    """One exclusive lock per action key: "this key is being executed".

    Lock files are created on demand and unlinked by their holder on release.
    A waiter that wakes up on a lock file that was meanwhile unlinked retries
    on the new file, so two processes can never both hold the same key.
    """

    def __init__(self, directory: Path) -> None:
        self._dir = directory

    def path(self, key: Digest) -> Path:
        return self._dir / key.hash

    def acquire(self, key: Digest, timeout: float | None = None) -> KeyLease | None:
        """Block until the key is ours; ``None`` if ``timeout`` ran out first."""
        path = self.path(key)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not _acquire(fd, fcntl.LOCK_EX, remaining):
                os.close(fd)
                return None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return KeyLease(path, fd)
            os.close(fd)  # the holder before us unlinked it; lock the new file
