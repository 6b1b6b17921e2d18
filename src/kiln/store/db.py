"""The store's SQLite database (WAL mode), shared by concurrent processes.

Tables (schema version in ``PRAGMA user_version``), each with the one
module that writes it:
- ``meta``: the store's identity (``store_id``) and settings; this module
  (engine/retention.py keeps where its source_files sweep stopped; GC and
  verify count their removals of blobs, ``count_removal``).
- ``action_cache``: action key -> serialized ``ActionResult`` plus metadata;
  store/actioncache.py (store/session.py marks kept hits used, store/gc.py
  evicts).
- ``gc_roots``: named roots that garbage collection never deletes;
  store/local.py.
- ``temp_roots``: digests protected by a live session (an in-flight build);
  store/session.py.
- ``stat_cache``: per source directory, what its entries looked like
  (inode, size, mtime, ctime, mode) and the digests they hashed to;
  store/ingest.py.
- ``source_files`` (v2): the same for single source files a build declared;
  engine/sources.py (engine/retention.py prunes it).
- ``builds``, ``build_steps`` (v2): build history, for ``kiln why``, ``show``,
  ``log``, ``trace`` and ``graph`` (``builds.awaits``: v5;
  ``build_steps.also``: v6; ``builds.evaluation``: v7); engine/history.py
  (engine/stamp.py files the builds answered from a stamp,
  engine/retention.py prunes them).
- ``metadata_blobs`` (v4): small CAS blobs that describe work (``Action``,
  ``Command``, ``Directory`` and ``Tree`` messages of builds) kept in the
  database instead of one file each; store/row_blobs.py (store/blobs.py
  deletes them for GC).
- ``build_stamps`` (v3): what the last successful build of some targets saw,
  so that a no-op build is answered without evaluating; engine/stamp.py
  (engine/retention.py drops those of projects that are gone).

How they write: a process opens the database once per thread (``Database``,
owned by the ``Store``; the no-op build's quick path, cli/entry.py, opens
one ``connect``). A write of one statement commits on its own; a write of
several runs in ``transaction`` (``BEGIN IMMEDIATE``: one writer at a time
across processes, the others wait up to ``BUSY_TIMEOUT_S``). Writes that
add blobs or references to them also hold the store's write lock shared
(``Store.writing``), which GC takes exclusively.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from pathlib import Path

from kiln import errors

TYPE_CHECKING = False  # (typing itself costs milliseconds at start-up)

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from typing import Any

SCHEMA_VERSION = 7
BUSY_TIMEOUT_S = 60.0


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
    dir      TEXT PRIMARY KEY,    -- absolute path of a source directory (a filtered
                                  -- put's after its filter's namespace: store/ingest.py)
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
    status   TEXT NOT NULL,       -- running, ok, failed
    awaits   TEXT,                -- (v5) JSON: target -> the targets it awaited
    evaluation TEXT               -- (v7) JSON: why the stamp did not answer, why none was filed
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
    also     TEXT,                -- (v6) JSON list: other targets that asked for the same step
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
        conn = _open(path)
        try:
            _migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn
    finally:
        os.close(lock_fd)


def _open(path: Path) -> sqlite3.Connection:
    """A connection to an existing (or new) database: autocommit (each
    statement its own transaction unless ``transaction`` opens one), waiting
    up to ``BUSY_TIMEOUT_S`` for another writer."""
    try:
        conn = sqlite3.connect(
            path,
            timeout=BUSY_TIMEOUT_S,
            isolation_level=None,
            check_same_thread=False,  # closed by the thread that closes the store
            factory=Connection,
        )
    except sqlite3.Error as e:
        _raise_mapped(path, e)
        raise
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return
    with transaction(conn):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version < SCHEMA_VERSION:
            import uuid  # (start-up: needed once, when a store is created)

            # columns added to tables that exist
            if 2 <= version < 5:
                conn.execute("ALTER TABLE builds ADD COLUMN awaits TEXT")
            if 2 <= version < 6:
                conn.execute("ALTER TABLE build_steps ADD COLUMN also TEXT")
            if 2 <= version < 7:
                conn.execute("ALTER TABLE builds ADD COLUMN evaluation TEXT")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('store_id', ?)",
                (uuid.uuid4().hex,),
            )
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Run the statements of the ``with`` block as one write transaction.

    ``BEGIN IMMEDIATE`` takes the write lock up front, waiting for it under
    the busy timeout; a deferred transaction that read first could only fail
    at its first write ("database is locked") when another process wrote
    meanwhile. On an error, the transaction is rolled back if SQLite has not
    already done so itself (as it does after an I/O error or a full disk),
    so the error raised is always the first one, never "cannot rollback".
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error, errors.KilnError):
                conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class Database:
    """The store's database for all threads of a process: each thread gets
    its own connection, made on first use.

    SQLite transactions belong to a connection, so threads sharing one
    connection would run their statements inside each other's transactions
    (and a read still in progress on it would turn another thread's write
    into an immediate "database is locked"). Separate connections are
    isolated from each other exactly as separate processes are.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []
        self._remember(connect(path))

    def _remember(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        self._local.conn = conn
        with self._lock:
            self._all.append(conn)
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        """The calling thread's connection."""
        conn = getattr(self._local, "conn", None)
        return conn if conn is not None else self._remember(_open(self.path))

    def execute(self, sql: str, parameters: Any = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, parameters)

    def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> sqlite3.Cursor:
        return self.conn.executemany(sql, rows)

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """``transaction`` on the calling thread's connection."""
        return transaction(self.conn)

    def close(self) -> None:
        """Close every thread's connection (the threads must be done with them)."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()


# ------------------------------------------------------------ errors

# SQLite's primary result codes (the low byte of an extended code).
_PROBLEMS = {
    sqlite3.SQLITE_CORRUPT: "corrupt",
    sqlite3.SQLITE_NOTADB: "corrupt",
    sqlite3.SQLITE_IOERR: "io",
    sqlite3.SQLITE_FULL: "full",
    sqlite3.SQLITE_BUSY: "locked",
    sqlite3.SQLITE_READONLY: "read-only",
    sqlite3.SQLITE_CANTOPEN: "cannot-open",
}


def database_error(path: Path, e: sqlite3.Error) -> errors.KilnError | None:
    """The one-line ``KilnError`` for a failure of the database itself (a
    damaged file, a full disk, an I/O error, a lock held too long...); None
    for any other error (a programming error such as a broken constraint)."""
    code = getattr(e, "sqlite_errorcode", None)
    problem = _PROBLEMS.get(code & 0xFF) if code is not None else None
    if problem is None and type(e) in (sqlite3.OperationalError, sqlite3.DatabaseError):
        problem = "other"
    if problem is None:
        return None
    return errors.database_failed(path, problem, str(e), BUSY_TIMEOUT_S)


def _raise_mapped(path: Path, e: sqlite3.Error) -> None:
    """Raise the ``database_error`` for ``e`` if it has one (else return)."""
    mapped = database_error(path, e)
    if mapped is not None:
        raise mapped from e


class Connection(sqlite3.Connection):
    """A connection whose failures are ``database_error``s: every statement
    goes through a ``Cursor`` that maps them."""

    def __init__(self, database: str | os.PathLike[str], *args: Any, **kwargs: Any) -> None:
        super().__init__(database, *args, **kwargs)
        self.path = Path(database)

    def cursor(self, factory: Any = None) -> sqlite3.Cursor:  # type: ignore[override]
        return super().cursor(factory or Cursor)

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        return self.cursor().executemany(sql, parameters)


class Cursor(sqlite3.Cursor):
    """Maps the failures of running a statement and of reading its rows."""

    connection: Connection

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        try:
            return super().execute(sql, parameters)
        except sqlite3.Error as e:
            _raise_mapped(self.connection.path, e)
            raise

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Cursor:
        try:
            return super().executemany(sql, parameters)
        except sqlite3.Error as e:
            _raise_mapped(self.connection.path, e)
            raise

    def fetchone(self) -> Any:
        try:
            return super().fetchone()
        except sqlite3.Error as e:
            _raise_mapped(self.connection.path, e)
            raise

    def fetchmany(self, size: int | None = None) -> list[Any]:
        try:
            return super().fetchmany(self.arraysize if size is None else size)
        except sqlite3.Error as e:
            _raise_mapped(self.connection.path, e)
            raise

    def fetchall(self) -> list[Any]:
        try:
            return super().fetchall()
        except sqlite3.Error as e:
            _raise_mapped(self.connection.path, e)
            raise

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except sqlite3.Error as e:
            _raise_mapped(self.connection.path, e)
            raise


def removals(conn: sqlite3.Connection) -> int:
    """How many times blobs may have been removed from the store (garbage
    collection, quarantine): what ``store/known_complete.py`` keys on."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'removals'").fetchone()
    return int(row[0]) if row is not None else 0


def count_removal(conn: sqlite3.Connection) -> None:
    """Count a removal, before any blob goes (so no one trusts what was
    known complete while it goes)."""
    conn.execute(
        "INSERT INTO meta(key, value) VALUES ('removals', '1') ON CONFLICT(key) "
        "DO UPDATE SET value = CAST(value AS INTEGER) + 1"
    )


def store_id(conn: sqlite3.Connection) -> str:
    return conn.execute("SELECT value FROM meta WHERE key='store_id'").fetchone()[0]
