"""The store's SQLite database (WAL mode), shared by concurrent processes.

Tables (schema version in ``PRAGMA user_version``):
- ``meta``: the store's identity (``store_id``) and settings.
- ``action_cache``: action key -> serialized ``ActionResult`` plus metadata.
- ``gc_roots``: named roots that garbage collection never deletes.
- ``temp_roots``: digests protected by a live session (an in-flight build).
- ``stat_cache``: per source directory, what its entries looked like
  (inode, size, mtime, ctime, mode) and the digests they hashed to.
- ``source_files`` (v2): the same for single source files a build declared.
- ``builds``, ``build_steps`` (v2): build history, for ``kiln why``, ``show``,
  ``log`` and ``trace``.
- ``metadata_blobs`` (v4): small CAS blobs that describe work (``Action``,
  ``Command``, ``Directory`` and ``Tree`` messages of builds) kept in the
  database instead of one file each (see store/localcas.py).
- ``build_stamps`` (v3): what the last successful build of some targets saw,
  so that a no-op build is answered without evaluating (engine/stamp.py).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path

SCHEMA_VERSION = 4


def default_home() -> Path:
    """``$KILN_HOME``, else ``$XDG_CACHE_HOME/kiln``, else ``~/.cache/kiln``."""
    if home := os.environ.get("KILN_HOME"):
        return Path(home)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "kiln"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS action_cache (
    hash      TEXT PRIMARY KEY,   -- action digest hash (the key)
    size      INTEGER NOT NULL,   -- action digest size
    result    BLOB NOT NULL,      -- canonical ActionResult bytes
    executor  TEXT NOT NULL,      -- which executor produced it (wasm, native, ...)
    duration  REAL NOT NULL,      -- seconds the action ran
    producer  TEXT NOT NULL,      -- store_id of the store that produced it
    created   REAL NOT NULL,      -- unix time when recorded
    last_used REAL NOT NULL       -- unix time of the last hit (for GC policy)
);
CREATE TABLE IF NOT EXISTS gc_roots (
    name    TEXT PRIMARY KEY,
    kind    TEXT NOT NULL CHECK (kind IN ('tree', 'blob', 'action')),
    hash    TEXT NOT NULL,
    size    INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS temp_roots (
    session TEXT NOT NULL,
    kind    TEXT NOT NULL,
    hash    TEXT NOT NULL,
    size    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS temp_roots_session ON temp_roots(session);
CREATE TABLE IF NOT EXISTS stat_cache (
    dir      TEXT PRIMARY KEY,    -- absolute path of a source directory
    listing  BLOB NOT NULL,       -- marshal: its entries' stat data, see store/ingest.py
    hash     TEXT NOT NULL,       -- digest of the Directory message it became
    size     INTEGER NOT NULL,
    subdirs  BLOB NOT NULL,       -- marshal: [(name, hash, size)] of its subdirectories
    contents BLOB NOT NULL        -- marshal: {name: (hash, size)} of its files
);
CREATE TABLE IF NOT EXISTS source_files (
    path     TEXT PRIMARY KEY,    -- absolute path of a source file
    ino      INTEGER NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    mode     INTEGER NOT NULL,
    hash     TEXT NOT NULL        -- SHA-256 of its content when it looked like this
);
CREATE TABLE IF NOT EXISTS builds (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    project  TEXT NOT NULL,       -- absolute path of the project root
    targets  TEXT NOT NULL,       -- JSON list of requested targets
    started  REAL NOT NULL,
    finished REAL,
    status   TEXT NOT NULL        -- running, ok, failed
);
CREATE TABLE IF NOT EXISTS build_steps (
    build    INTEGER NOT NULL,
    seq      INTEGER NOT NULL,    -- order in which steps were requested
    target   TEXT NOT NULL,
    step     TEXT NOT NULL,       -- the step's description (its name within the target)
    key      TEXT NOT NULL,       -- action digest, hash/size
    status   TEXT NOT NULL,       -- executed, cached, failed, skipped
    slot     INTEGER,             -- worker slot that ran it
    started  REAL,
    finished REAL,
    inputs   TEXT NOT NULL,       -- JSON: what the key was computed from
    result   BLOB,                -- ActionResult bytes (also for failures)
    PRIMARY KEY (build, seq)
);
CREATE INDEX IF NOT EXISTS build_steps_by_name ON build_steps(target, step);
CREATE TABLE IF NOT EXISTS metadata_blobs (
    hash      TEXT PRIMARY KEY,   -- SHA-256 of data
    size      INTEGER NOT NULL,
    data      BLOB NOT NULL,
    last_used REAL NOT NULL       -- unix time written or last written again (GC age)
);
CREATE TABLE IF NOT EXISTS build_stamps (
    project  TEXT NOT NULL,       -- absolute path of the project root
    targets  TEXT NOT NULL,       -- which targets: JSON list, or '*' for all
    stamp    BLOB NOT NULL,       -- marshal: see engine/stamp.py
    PRIMARY KEY (project, targets)
);
"""


def connect(path: Path) -> sqlite3.Connection:
    """Open the database, creating and migrating the schema when needed.

    Switching a new database to WAL takes an exclusive lock that SQLite does
    not wait for (it fails with "database is locked" when another process is
    opening the same new store), so opening is serialized with a ``flock``.
    """
    lock_fd = os.open(f"{path}.open-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        return _connect(path)
    finally:
        os.close(lock_fd)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=60000")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                import uuid

                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('store_id', ?)",
                    (uuid.uuid4().hex,),
                )
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return conn


def store_id(conn: sqlite3.Connection) -> str:
    return conn.execute("SELECT value FROM meta WHERE key='store_id'").fetchone()[0]
