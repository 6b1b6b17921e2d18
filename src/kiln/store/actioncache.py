"""The action cache: action key -> ``ActionResult``, with metadata.

A miss returns ``None``. A hit is only reported when every blob the result
names is still in the CAS; otherwise the entry is useless and counts as a
miss. Only successful results (exit code 0) are recorded: a step's own
failure is returned to the caller as a value but never cached.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from kiln.model.digest import Digest, canonical_bytes
from kiln.store import db, known_complete

if TYPE_CHECKING:
    from kiln.model.reapi import re_pb2
    from kiln.store.cas import ContentStore
    from kiln.store.db import Database
    from kiln.store.localcas import LocalCAS


@dataclass(frozen=True, slots=True)
class CachedResult:
    """An action cache entry: the result and where it came from."""

    key: Digest
    result: re_pb2.ActionResult
    executor: str  # which executor produced it: "wasm", "native", "fetch", ...
    duration: float  # seconds the action ran
    producer: str  # store_id of the store where it ran
    created: float  # unix time it was recorded


class ActionCache(Protocol):
    """Action key -> result. ``lookup`` returns ``None`` on a miss."""

    def lookup(self, key: Digest, touch: bool = True) -> CachedResult | None: ...

    def touch(self, keys: list[Digest]) -> None:
        """Mark entries used now (what ``lookup(touch=False)`` left undone)."""
        ...

    def record(
        self, key: Digest, result: re_pb2.ActionResult, *, executor: str, duration: float
    ) -> None: ...


def result_blobs(cas: ContentStore, result: re_pb2.ActionResult) -> Iterator[Digest]:
    """Every blob an ``ActionResult`` refers to, including the files and
    directories inside its output trees."""
    for hash_hex, size in _result_hashes(cas, result):
        yield Digest(hash_hex, size)


def _result_hashes(cas: ContentStore, result: re_pb2.ActionResult) -> Iterator[tuple[str, int]]:
    """``result_blobs`` as (hash, size) pairs, unchecked."""
    from kiln.model.reapi import re_pb2  # (start-up: kiln store put loads no protobuf)

    for f in result.output_files:
        yield f.digest.hash, f.digest.size_bytes
    for d in result.output_directories:
        yield d.tree_digest.hash, d.tree_digest.size_bytes
        data = cas.get_bytes(Digest.from_proto(d.tree_digest))
        if data is None:
            continue
        tree = re_pb2.Tree.FromString(data)
        for directory in [tree.root, *tree.children]:
            for f in directory.files:
                yield f.digest.hash, f.digest.size_bytes
    for field in ("stdout_digest", "stderr_digest"):
        if result.HasField(field):
            d = getattr(result, field)
            if d.size_bytes:
                yield d.hash, d.size_bytes


class LocalActionCache:
    """The action cache in the store's SQLite database."""

    def __init__(self, conn: Database, cas: LocalCAS, store_id: str) -> None:
        self._conn = conn
        self._cas = cas
        self._store_id = store_id

    def complete(self, result: re_pb2.ActionResult) -> bool:
        """Whether every blob of a result is in the store, at its size."""
        if not (
            result.output_files or result.output_directories
            or result.stdout_digest.size_bytes or result.stderr_digest.size_bytes
        ):  # fmt: skip
            return True  # (a result held whole in its entry, e.g. a memoized call's)
        return all(self._cas.has_hash(h, n) for h, n in set(_result_hashes(self._cas, result)))

    def _known_complete(self, key: Digest, result: re_pb2.ActionResult) -> bool:
        """``complete``, unless remembered (store/known_complete.py)."""
        if not known_complete.enabled():
            return self.complete(result)
        removals = db.removals(self._conn)
        if known_complete.known(key.hash, removals):
            return True
        if not self.complete(result):
            return False
        known_complete.note(key.hash, removals)
        return True

    def lookup(self, key: Digest, touch: bool = True) -> CachedResult | None:
        """The entry of ``key`` if all its blobs are there; ``touch`` marks
        it used now (the GC's age), else the caller's session does so when
        it ends (``session.release``)."""
        from kiln.model.reapi import re_pb2  # (start-up: kiln store put loads no protobuf)

        row = self._conn.execute(
            "SELECT result, executor, duration, producer, created FROM action_cache "
            "WHERE hash = ? AND size = ?",
            (key.hash, key.size),
        ).fetchone()
        if row is None:
            return None
        result = re_pb2.ActionResult.FromString(row[0])
        if not self._known_complete(key, result):
            return None
        if touch:
            self._conn.execute(
                "UPDATE action_cache SET last_used = ? WHERE hash = ?", (time.time(), key.hash)
            )
        return CachedResult(key, result, row[1], row[2], row[3], row[4])

    def record(
        self,
        key: Digest,
        result: re_pb2.ActionResult,
        *,
        executor: str,
        duration: float,
        producer: str | None = None,
    ) -> None:
        """Record a successful result; its blobs must already be in the CAS."""
        if result.exit_code != 0:
            raise ValueError("failed results are never cached")
        missing = self._cas.find_missing(result_blobs(self._cas, result))
        if missing:
            raise ValueError(f"result names blobs that are not in the store: {missing[0]}")
        now = time.time()
        self._conn.execute(
            "INSERT OR REPLACE INTO action_cache"
            "(hash, size, result, executor, duration, producer, created, last_used) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key.hash,
                key.size,
                canonical_bytes(result),
                executor,
                duration,
                producer or self._store_id,
                now,
                now,
            ),
        )

    def touch(self, keys: list[Digest]) -> None:
        """Mark the entries of ``keys`` used now, in one transaction."""
        if keys:
            now = time.time()
            with self._conn.transaction() as conn:
                conn.executemany(
                    "UPDATE action_cache SET last_used = ? WHERE hash = ?",
                    [(now, key.hash) for key in keys],
                )

    def remove(self, key: Digest) -> None:
        self._conn.execute("DELETE FROM action_cache WHERE hash = ?", (key.hash,))

    def __len__(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM action_cache").fetchone()[0]
