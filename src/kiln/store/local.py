"""``Store``: the embedded local store under ``$KILN_HOME``.

Layout:
    cas/<hh>/<hash>[.x]   blobs (read-only), executable twins
    tmp/<session>/        staging files of live sessions
    sessions/<session>    session locks (held while the process lives)
    locks/write           shared by writers, exclusive for GC
    locks/keys            "this action is being executed": one byte-range lock per key
    quarantine/           corrupt blobs moved aside by verify
    kiln.db               SQLite (WAL): action cache, roots, stat cache
    kiln.db.open-lock     serializes opening (and creating) the database
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kiln import errors
from kiln.model.digest import Digest, canonical_bytes
from kiln.store import db
from kiln.store.actioncache import CachedResult, LocalActionCache
from kiln.store.blobs import scan, scan_metadata
from kiln.store.db import count_removal, default_home
from kiln.store.ingest import Filter, Ingester, forget_stat_cache
from kiln.store.localcas import LocalCAS
from kiln.store.locks import KeyLocks, SharedExclusiveLock
from kiln.store.session import Session, reap_dead_sessions

# Materializing, GC and verify read Directory messages (protobuf), which
# `kiln store put` of an unchanged tree never loads: imported where used.
if TYPE_CHECKING:
    from kiln.model.action import ActionSpec
    from kiln.model.reapi import re_pb2
    from kiln.store.gc import GcPolicy, GcReport
    from kiln.store.materialize import Materializer
    from kiln.store.verify import VerifyReport

ROOT_KINDS = ("tree", "blob", "action")
__all__ = ["Execution", "PutResult", "Store", "StoreStats", "default_home"]


@dataclass(frozen=True)
class PutResult:
    digest: Digest
    kind: str  # "tree" or "blob"
    files_hashed: int
    dirs_rebuilt: int
    dirs_listed: int = 0  # listed to compare with the stat cache


@dataclass(frozen=True)
class Execution:
    """What ``execute_once`` returns: the result and whether it was reused."""

    result: re_pb2.ActionResult
    cached: bool  # True: taken from the action cache, nothing ran here
    waited: bool = False  # True: another process ran it while we waited


@dataclass(frozen=True)
class StoreStats:
    home: str
    store_id: str
    blobs: int
    blob_bytes: int
    exec_twins: int
    actions: int
    roots: int
    database_bytes: int


class Store:
    """The local store: CAS, action cache, roots, locks. Safe to share
    between processes; one ``Store`` object may be used by many threads."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = Path(home) if home is not None else default_home()
        try:
            for sub in ("cas", "tmp", "sessions", "locks", "quarantine"):
                (self.home / sub).mkdir(parents=True, exist_ok=True)
            cas_root = self.home / "cas"
            if not (cas_root / "ff").is_dir():
                for i in range(256):
                    (cas_root / f"{i:02x}").mkdir(exist_ok=True)
            self.db = db.Database(self.home / "kiln.db")
        except (OSError, sqlite3.Error) as e:
            raise errors.store_unusable(self.home, str(e)) from None
        self.store_id = db.store_id(self.conn)
        self._session: Session | None = None
        self._session_lock = threading.Lock()
        self._action_cache: LocalActionCache | None = None
        self._write_lock = SharedExclusiveLock(self.home / "locks" / "write")
        self.cas = LocalCAS(cas_root, self._staging_dir, self.db, guard=self._write_lock.shared)
        self.key_locks = KeyLocks(self.home / "locks" / "keys")

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
        self._write_lock.close()
        self.db.close()

    @property
    def conn(self) -> sqlite3.Connection:
        """The database connection of the calling thread (see ``db.Database``)."""
        return self.db.conn

    @property
    def action_cache(self) -> LocalActionCache:
        if self._action_cache is None:
            self._action_cache = LocalActionCache(self.db, self.cas, self.store_id)
        return self._action_cache

    @property
    def session(self) -> Session:
        """This process's session (created on first use, by one thread)."""
        with self._session_lock:
            if self._session is None:
                self._session = Session(self.home, self.db)
            return self._session

    def _staging_dir(self) -> Path:
        return self.session.staging

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold while adding content or references; GC waits for it."""
        with self._write_lock.shared():
            yield

    # ------------------------------------------------------------- content

    def put(
        self,
        path: str | os.PathLike[str],
        root: str | None = None,
        progress: Callable[[int, int], None] | None = None,
        keep: bool = False,
        filter: Filter | None = None,
    ) -> PutResult:
        """Store a folder as a tree (or a file as a blob); optionally name a GC
        root, or with ``keep`` protect it for as long as this process's
        session lives. ``progress(files, bytes)`` hears about files that had
        to be read. ``filter`` leaves entries of a folder out (never read,
        hashed or stored; see store/ingest.py)."""
        with self.writing():
            ingester = Ingester(self.cas, self.conn, progress=progress, filter=filter)
            digest, kind = ingester.put(path)
            if root is not None:
                self.add_root(root, digest, kind)
            if keep:
                self.session.protect(digest, kind)
        return PutResult(
            digest, kind, ingester.files_hashed, ingester.dirs_rebuilt, ingester.dirs_listed
        )

    def put_action(self, spec: ActionSpec) -> Digest:
        """Store an action's ``Action`` and ``Command`` blobs; returns its key."""
        return self.put_messages(*spec.action())

    def put_messages(self, action: re_pb2.Action, command: re_pb2.Command) -> Digest:
        """``put_action`` for messages already built: returns the action's key."""
        with self.writing(), self.cas.batch(durable=False) as batch:
            batch.add_metadata(canonical_bytes(command))
            return batch.add_metadata(canonical_bytes(action))

    def get(
        self,
        digest: Digest,
        dest: str | os.PathLike[str],
        *,
        blob: bool = False,
        copy: bool = False,
    ) -> Materializer:
        """Write a tree (or with ``blob=True`` one blob) to ``dest``."""
        from kiln.store.materialize import Materializer  # (start-up: protobuf)

        m = Materializer(self.cas, copy=copy)
        with self.writing():  # exec twins are written into the CAS
            if blob:
                m.blob(digest, dest)
            else:
                m.tree(digest, dest)
        return m

    # ----------------------------------------------------- execute once

    def execute_once(
        self,
        key: Digest,
        execute: Callable[[], tuple[re_pb2.ActionResult, str]],
        timeout: float | None = None,
    ) -> Execution:
        """Run ``execute`` for ``key`` unless its result is cached.

        Across processes sharing this store, at most one runs a given key at a
        time; the others wait and then reuse the recorded result. ``execute``
        returns (result, executor name); failed results are not recorded, so
        a waiter runs the action itself after a failure.

        The result returned, reused or made here, is kept from GC for as long
        as this process's session lives (``lookup(keep=True)``, ``_record``).
        """
        hit = self.lookup(key, keep=True)
        if hit is not None:
            return Execution(hit.result, cached=True)
        lease = self.key_locks.acquire(key, timeout)
        if lease is None:
            raise _busy(key, timeout)
        # Holding the write lock from execution to recording keeps GC from
        # deleting the outputs before the cache entry that keeps them exists.
        with lease, self.writing():
            if (hit := self._hit_after_wait(key)) is not None:
                return hit
            start = time.monotonic()
            return self._record(key, *execute(), start)

    async def execute_once_async(
        self,
        key: Digest,
        execute: Callable[[], Awaitable[tuple[re_pb2.ActionResult, str]]],
        timeout: float | None = None,
    ) -> Execution:
        """``execute_once`` for asyncio: waiting for another process does not
        block the event loop."""
        import asyncio  # (start-up: only async callers pay for it)

        hit = self.lookup(key, keep=True)
        if hit is not None:
            return Execution(hit.result, cached=True)
        lease = await asyncio.to_thread(self.key_locks.acquire, key, timeout)
        if lease is None:
            raise _busy(key, timeout)
        with lease, self.writing():
            if (hit := self._hit_after_wait(key)) is not None:
                return hit
            start = time.monotonic()
            return self._record(key, *(await execute()), start)

    def _hit_after_wait(self, key: Digest) -> Execution | None:
        """Holding the key: did another process record it while we waited?"""
        hit = self.lookup(key, keep=True)
        return None if hit is None else Execution(hit.result, cached=True, waited=True)

    def _record(
        self, key: Digest, result: re_pb2.ActionResult, executor: str, start: float
    ) -> Execution:
        """Record a successful result; keep any result from GC (the caller
        holds the write lock, so no GC ran since its blobs were written)."""
        if result.exit_code == 0:
            took = time.monotonic() - start
            self.action_cache.record(key, result, executor=executor, duration=took)
        self._protect_result(key, result)
        return Execution(result, cached=False)

    def lookup(self, key: Digest, keep: bool = False) -> CachedResult | None:
        """The cache entry of ``key``; None on a miss, which includes an entry
        some of whose blobs are gone. With ``keep``, a hit is kept from GC
        for as long as this process's session lives: the lookup and the
        protection happen under the write lock, so a GC either ran before
        (and a result it took apart is a miss, to be run again) or will see
        the protection."""
        if not keep:
            return self.action_cache.lookup(key)
        with self.writing():
            hit = self.action_cache.lookup(key, touch=False)  # marked used as the session ends
            if hit is not None:
                self.session.protect(key, "action")
        return hit

    def keep_result(self, key: Digest, result: re_pb2.ActionResult) -> bool:
        """Keep the blobs of ``key``'s ``result`` from GC for as long as this
        process's session lives; False if some of them are gone already. A
        recorded (successful) result is kept through its cache entry; a
        failure's output and error logs are kept as blobs."""
        with self.writing():
            if not self.action_cache.complete(result):
                return False
            self._protect_result(key, result)
        return True

    def _protect_result(self, key: Digest, result: re_pb2.ActionResult) -> None:
        self.session.protect(key, "action")
        if result.exit_code != 0:
            for log in (result.stdout_digest, result.stderr_digest):
                if log.size_bytes:
                    self.session.protect(Digest.from_proto(log), "blob")

    # --------------------------------------------------------------- roots

    def add_root(self, name: str, digest: Digest, kind: str = "tree") -> None:
        """Name a GC root; replaces a root of the same name."""
        if kind not in ROOT_KINDS:
            raise ValueError(f"root kind must be one of {ROOT_KINDS}")
        if not name or "\0" in name:
            raise errors.KilnError(
                f"invalid root name {name!r}", exit_code=errors.ExitCode.BAD_INPUT
            )
        with self.writing():
            self.conn.execute(
                "INSERT OR REPLACE INTO gc_roots(name, kind, hash, size, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (name, kind, digest.hash, digest.size, time.time()),
            )

    def remove_root(self, name: str) -> bool:
        """Remove a named root; False if there was none of that name."""
        cur = self.conn.execute("DELETE FROM gc_roots WHERE name = ?", (name,))
        return cur.rowcount > 0

    def roots(self) -> list[tuple[str, str, Digest, float]]:
        """(name, kind, digest, created) for every named root, by name."""
        rows = self.conn.execute(
            "SELECT name, kind, hash, size, created FROM gc_roots ORDER BY name"
        )
        return [(n, k, Digest(h, s), c) for n, k, h, s, c in rows]

    # ---------------------------------------------------------- maintenance

    def verify(self) -> VerifyReport:
        """Re-hash every blob, quarantine corrupt ones, reap dead sessions."""
        from kiln.store.verify import verify_blobs, verify_metadata  # (start-up: protobuf)

        with self.writing():
            stale = reap_dead_sessions(self.home, self.conn)
        count_removal(self.conn)  # corrupt blobs may be quarantined (store/known_complete.py)
        report = verify_blobs(self.cas.root, self.home / "quarantine")
        verify_metadata(self.conn, self.home / "quarantine", report)
        report.stale_staging_removed = stale
        if report.corrupt:
            forget_stat_cache(self.conn)
        return report

    def gc(self, policy: GcPolicy | None = None, timeout: float | None = None) -> GcReport:
        """Collect garbage; waits (up to ``timeout``) for in-flight writes."""
        from kiln.store.gc import GcPolicy, collect  # (start-up: protobuf)

        with self._write_lock.exclusive(timeout) as held:
            if not held:
                raise errors.KilnError(
                    "the store is busy: another kiln process is writing to it",
                    hint="retry when it has finished, or pass a longer --timeout",
                    exit_code=errors.ExitCode.STORE,
                )
            reap_dead_sessions(self.home, self.conn)
            policy = policy or GcPolicy()
            report = collect(self.cas, self.conn, policy)
            if report.deleted_blobs and not policy.dry_run:
                forget_stat_cache(self.conn)
        return report

    def stats(self) -> StoreStats:
        blobs = twins = size = 0
        for f in itertools.chain(scan(self.cas.root), scan_metadata(self.conn)):
            size += f.size
            if f.is_twin:
                twins += 1
            else:
                blobs += 1
        db_bytes = sum(p.stat().st_size for p in self.home.glob("kiln.db*") if p.is_file())
        return StoreStats(
            home=str(self.home),
            store_id=self.store_id,
            blobs=blobs,
            blob_bytes=size,
            exec_twins=twins,
            actions=len(self.action_cache),
            roots=self.conn.execute("SELECT COUNT(*) FROM gc_roots").fetchone()[0],
            database_bytes=db_bytes,
        )


def _busy(key: Digest, timeout: float | None) -> errors.KilnError:
    return errors.KilnError(
        f"action {key} is still being executed by another process after {timeout} s",
        hint="wait for the other build to finish",
        exit_code=errors.ExitCode.STORE,
        key=str(key),
    )
