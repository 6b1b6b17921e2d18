"""Claimed names: scratch folders (and files) that belong to a live process.

A claim is a name ``TOKEN`` in a parent folder, in use for as long as its
owner holds the ``flock`` on ``TOKEN.lock``. The owner may create
``TOKEN`` and any ``TOKEN.<suffix>`` beside it. The lock is taken before
its name becomes visible (locked under a hidden name, then renamed), so a
lock nobody holds means its owner is dead, even after ``SIGKILL``: ``reap``
then removes everything the claim named.

Used for the output folders a build writes before moving them into place
(``engine/outputs.py``; the next build reaps what a killed one left). Kept
light to import: a no-op build may restore an output through it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_SUFFIX = ".lock"


class Claim:
    """A fresh name under ``parent``, claimed until ``release``."""

    def __init__(self, parent: Path, prefix: str = "") -> None:
        parent.mkdir(parents=True, exist_ok=True)
        token = f"{prefix}{os.getpid()}.{os.urandom(6).hex()}"
        pending = parent / f".{token}.pending"
        self._fd: int | None = os.open(
            pending, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644
        )
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._lock = parent / (token + LOCK_SUFFIX)
        os.rename(pending, self._lock)
        self.path = parent / token  # for the owner to create (a folder or a file)

    def sibling(self, suffix: str) -> Path:
        """Another name of this claim: ``TOKEN.<suffix>``."""
        return self.path.with_name(f"{self.path.name}.{suffix}")

    def release(self) -> None:
        """Remove what the claim names, then the claim itself."""
        if self._fd is None:
            return
        _remove_named(self._lock)
        os.close(self._fd)
        self._fd = None


def reap(parent: Path) -> int:
    """Remove the claims under ``parent`` whose owners are dead, with all
    they name; returns how many. A live owner's claim is never touched."""
    reaped = 0
    try:
        entries = list(os.scandir(parent))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.name.endswith(LOCK_SUFFIX) and not entry.name.startswith("."):
            reaped += _reap_one(Path(entry.path))
    return reaped


def _reap_one(lock: Path) -> int:
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0  # released or reaped meanwhile
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return 0  # its owner is alive
    try:
        if not lock.exists():
            return 0  # released (or reaped) just before we locked it
        _remove_named(lock)
        return 1
    finally:
        os.close(fd)


def _remove_named(lock: Path) -> None:
    """Remove ``TOKEN`` and every ``TOKEN.<suffix>`` of a lock held here, then the lock."""
    token = lock.name.removesuffix(LOCK_SUFFIX)
    for entry in os.scandir(lock.parent):
        if entry.name == token or (entry.name.startswith(token + ".") and entry.name != lock.name):
            _remove(Path(entry.path))
    lock.unlink(missing_ok=True)


def _remove(path: Path) -> None:
    """Remove a file or a folder tree, whatever the modes inside."""
    if path.is_dir() and not path.is_symlink():
        from kiln.system.fsutil import remove_tree  # (shutil: not on a no-op build's path)

        remove_tree(path)
    else:
        path.unlink(missing_ok=True)
