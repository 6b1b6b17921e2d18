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

from kiln.errors import KilnError
from kiln.model.digest import Digest
from kiln.store.db import Database, transaction
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
        self.protect_many([digest], kind)

    def protect_many(self, digests: list[Digest], kind: str) -> None:
        """``protect`` for many digests of one kind, in one transaction."""
        with self._protected_lock:
            fresh = {d.hash: d for d in digests if (kind, d.hash) not in self._protected}
            if not fresh:
                return
            rows = [(self.id, kind, d.hash, d.size) for d in fresh.values()]
            insert = "INSERT INTO temp_roots(session, kind, hash, size) VALUES (?, ?, ?, ?)"
            if len(rows) == 1:
                self._conn.execute(insert, rows[0])
            else:
                with self._conn.transaction() as conn:
                    conn.executemany(insert, rows)
            self._protected.update((kind, h) for h in fresh)

    def close(self) -> None:
        if self._fd is None:
            return
        if self._protected:
            with contextlib.suppress(sqlite3.Error, KilnError):  # reaped later if this fails
                release(self._conn.conn, [self.id])
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
    dead = [s for (s,) in rows if not is_locked(sessions / s)]
    if dead:
        release(conn, dead)
    return removed


def release(conn: sqlite3.Connection, sessions: list[str]) -> None:
    """Drop the temp roots of sessions that ended. The cache entries they
    kept are marked used now, all at once: a hit a session keeps is not
    marked used as it is looked up (that would be a second write per hit)."""
    now = time.time()
    with transaction(conn):
        conn.executemany(
            "UPDATE action_cache SET last_used = ? WHERE hash IN "
            "(SELECT hash FROM temp_roots WHERE session = ? AND kind = 'action')",
            [(now, s) for s in sessions],
        )
        conn.executemany("DELETE FROM temp_roots WHERE session = ?", [(s,) for s in sessions])
