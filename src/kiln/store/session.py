"""Sessions: a process's live use of the store.

A session owns a staging folder (``tmp/<id>/``) for blobs being written and
a set of temporary GC roots (digests an in-flight build still needs). It is
alive exactly while its process holds the ``flock`` on ``sessions/<id>``;
the kernel drops that lock when the process dies, even by SIGKILL, so a dead
session is recognised by its lock being free, and its leftovers are reaped.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

from kiln.digest import Digest
from kiln.errors import KilnError
from kiln.store.db import Database
from kiln.store.locks import is_locked

_ABANDONED_AFTER = 3600.0


class Session:
    """Created locked: the lock file is locked under a temporary name and only
    then renamed into ``sessions/``, so a reaper never sees it unlocked."""

    def __init__(self, home: Path, conn: Database) -> None:
        self.id = os.urandom(16).hex()
        self._home = home
        self._conn = conn
        self._protected: set[tuple[str, str]] = set()  # (kind, hash) rows written
        self._protected_lock = threading.Lock()
        sessions = home / "sessions"
        pending = sessions / f".{self.id}.new"
        self._fd: int | None = os.open(
            pending, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644
        )
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        os.rename(pending, sessions / self.id)
        self.staging = home / "tmp" / self.id
        self.staging.mkdir(parents=True, exist_ok=True)

    def protect(self, digest: Digest, kind: str = "tree") -> None:
        """Keep ``digest`` (and, for trees and actions, all it reaches) from GC
        for as long as this session lives. Call it while holding the store's
        write lock, right after the content was written or found: GC holds
        that lock exclusively, so it either ran before (and the caller saw
        what it left) or sees the protection. Protecting twice is a no-op."""
        with self._protected_lock:
            if (kind, digest.hash) in self._protected:
                return
            self._conn.execute(
                "INSERT INTO temp_roots(session, kind, hash, size) VALUES (?, ?, ?, ?)",
                (self.id, kind, digest.hash, digest.size),
            )
            self._protected.add((kind, digest.hash))

    def close(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(sqlite3.Error, KilnError):  # reaped later if this fails
            self._conn.execute("DELETE FROM temp_roots WHERE session = ?", (self.id,))
        shutil.rmtree(self.staging, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._home / "sessions" / self.id)
        os.close(self._fd)
        self._fd = None


def reap_dead_sessions(home: Path, conn: sqlite3.Connection) -> int:
    """Remove staging folders, temp roots and lock files of dead sessions.

    Liveness is re-checked for each session just before its leftovers are
    removed, so a session that starts meanwhile is never touched. Returns how
    many staged (never installed) files were removed.
    """
    sessions = home / "sessions"
    removed = 0
    for staging in (home / "tmp").iterdir():
        if not is_locked(sessions / staging.name):
            removed += sum(1 for _ in staging.iterdir()) if staging.is_dir() else 1
            shutil.rmtree(staging, ignore_errors=True)
    for lock in sessions.iterdir():
        if lock.name.startswith("."):
            # A session being created; only an abandoned one (its creator
            # died before renaming it into place) is old.
            with contextlib.suppress(FileNotFoundError):
                if time.time() - lock.stat().st_mtime > _ABANDONED_AFTER:
                    os.unlink(lock)
        elif not is_locked(lock):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)
    rows = conn.execute("SELECT DISTINCT session FROM temp_roots").fetchall()
    dead = [(s,) for (s,) in rows if not is_locked(sessions / s)]
    if dead:
        conn.executemany("DELETE FROM temp_roots WHERE session = ?", dead)
    return removed
