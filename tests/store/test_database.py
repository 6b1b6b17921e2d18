"""The store's database: a connection per thread, write transactions that
wait for the lock, and failures of the database itself as one-line errors."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import make_sample_tree, run_kiln
from kiln.errors import ExitCode, KilnError
from kiln.store import Store
from kiln.store.db import database_error, transaction


def test_threads_do_not_share_transactions(store) -> None:
    """A thread's write is never swallowed by another thread's transaction
    (one shared connection ran it inside that transaction, and its rollback
    lost it)."""
    started = threading.Event()

    def other_thread() -> None:
        started.wait()
        store.conn.execute("INSERT INTO meta(key, value) VALUES ('kept', 'yes')")

    thread = threading.Thread(target=other_thread)
    thread.start()
    with pytest.raises(RuntimeError), transaction(store.conn) as conn:
        conn.execute("INSERT INTO meta(key, value) VALUES ('dropped', 'yes')")
        started.set()
        time.sleep(0.3)  # the other thread's insert waits for this transaction
        raise RuntimeError("give up")
    thread.join()
    keys = {k for (k,) in store.conn.execute("SELECT key FROM meta")}
    assert "kept" in keys and "dropped" not in keys


WRITER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("INSERT INTO meta(key, value) VALUES ('from another process', 'x')")
"""


def test_a_read_in_progress_does_not_fail_another_threads_write(store, home: Path) -> None:
    """The "database is locked" of concurrent builds: a thread reading
    (a statement not yet finished) while another process commits, then a
    second thread writing. On one shared connection that write had to
    upgrade the stale read and failed at once, without waiting."""
    for i in range(3):
        store.add_root(f"r{i}", store.cas.put_bytes(b"%d" % i), "blob")
    reading = store.conn.execute("SELECT name FROM gc_roots")
    assert reading.fetchone() is not None  # rows left: the read is still open
    subprocess.run([sys.executable, "-c", WRITER, str(home / "kiln.db")], check=True)
    failures: list[BaseException] = []

    def write() -> None:
        try:
            store.add_root("from a thread", store.cas.put_bytes(b"t"), "blob")
        except BaseException as e:
            failures.append(e)

    thread = threading.Thread(target=write)
    thread.start()
    thread.join()
    assert failures == []
    assert len(reading.fetchall()) == 2


def test_a_transaction_that_fails_raises_its_own_error(store) -> None:
    """An error that makes SQLite roll back by itself (a full disk) comes
    out as that error, not as "cannot rollback - no transaction is active"."""
    conn = store.conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full now
    with pytest.raises(KilnError) as caught, transaction(conn):
        conn.execute("INSERT INTO meta(key, value) VALUES ('big', ?)", (b"x" * (1 << 20),))
    assert caught.value.exit_code == ExitCode.STORE
    assert "disk is full" in caught.value.message and "cannot rollback" not in str(caught.value)
    assert not conn.in_transaction


def _failure(code: int, text: str) -> sqlite3.Error:
    error = sqlite3.OperationalError(text)
    error.sqlite_errorcode = code  # type: ignore[attr-defined]
    return error


@pytest.mark.parametrize(
    ("code", "text", "says", "hint"),
    [
        (sqlite3.SQLITE_CORRUPT, "database disk image is malformed", "is damaged", "aside"),
        (sqlite3.SQLITE_NOTADB, "file is not a database", "is damaged", ".recover"),
        (sqlite3.SQLITE_IOERR | (4 << 8), "disk I/O error", "disk I/O error", "dmesg"),
        (sqlite3.SQLITE_FULL, "database or disk is full", "disk is full", "df -h"),
        (sqlite3.SQLITE_BUSY, "database is locked", "stayed locked", "fuser"),
        (sqlite3.SQLITE_READONLY, "attempt to write a readonly database", "read-only", "perm"),
    ],
)
def test_database_failures_say_what_is_wrong(code: int, text: str, says: str, hint: str) -> None:
    error = database_error(Path("/store/kiln.db"), _failure(code, text))
    assert error is not None and error.exit_code == ExitCode.STORE
    assert says in error.message and text in error.message and "/store/kiln.db" in error.message
    assert hint in (error.hint or "")


def test_programming_errors_are_left_alone() -> None:
    assert database_error(Path("x"), sqlite3.IntegrityError("UNIQUE constraint failed")) is None


def _damage(db: Path, table: str) -> None:
    """Overwrite the first page of ``table``: the database opens, and fails
    when that table is read."""
    conn = sqlite3.connect(db)
    page = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(db, "r+b") as f:
        f.seek((page[0] - 1) * size)
        f.write(b"\xa5" * size)


@pytest.mark.parametrize(
    ("table", "command"),
    [
        ("metadata_blobs", ("store", "stats")),
        ("metadata_blobs", ("gc",)),
        ("metadata_blobs", ("store", "verify")),
        ("gc_roots", ("gc",)),
        ("stat_cache", ("store", "put", "{tree}")),
    ],
)
def test_a_damaged_database_is_one_line_with_what_to_do(
    home: Path, sample_tree: Path, table: str, command: tuple[str, ...]
) -> None:
    """A damaged page once gave a 39-line traceback (ending in "cannot
    rollback" inside a transaction)."""
    with Store(home) as store:
        for i in range(20):  # a few pages of rows
            (sample_tree / f"f{i}").write_text("x" * 3000 * i)
        store.put(sample_tree, root="sample")
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    _damage(home / "kiln.db", table)
    proc = run_kiln(home, *(arg.format(tree=sample_tree) for arg in command))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == ExitCode.STORE, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "is damaged (database disk image is malformed)" in lines[0], lines[0]
    assert "kiln.db-wal" in lines[0] and ".recover" in lines[0]


def test_a_file_that_is_not_a_database_is_one_line(home: Path, tmp_path: Path) -> None:
    Store(home).close()
    (home / "kiln.db").write_bytes(b"this is no database" * 1000)
    for suffix in ("-wal", "-shm"):
        (home / f"kiln.db{suffix}").unlink(missing_ok=True)
    proc = run_kiln(home, "store", "put", str(make_sample_tree(tmp_path / "t")))
    assert proc.returncode == ExitCode.STORE
    assert len(proc.stderr.strip().splitlines()) == 1 and "is damaged" in proc.stderr
