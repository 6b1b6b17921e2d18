"""Garbage collection: named roots, live sessions' temp roots, and a policy.

Mark: everything reachable from a named root or from a live session's temp
root is kept, always. Candidates: action cache entries no root names, and
blobs nothing marked reaches. A candidate cache entry keeps its own output
blobs alive for as long as it stays. The policy picks what to delete:
- no limits: every candidate;
- ``max_age``: candidates unused for longer than that (cache entries by last
  hit, blobs by last write or re-put);
- ``max_size``: least recently used first, until the store fits; loose
  blobs go before cache entries.

GC holds the store's write lock exclusively, so no put or build write is
in flight while it decides and deletes.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2
from kiln.model.tree import reachable
from kiln.store.actioncache import result_blobs
from kiln.store.blobs import BlobFile, delete_metadata, scan, scan_metadata
from kiln.store.db import count_removal, transaction
from kiln.store.localcas import LocalCAS


@dataclass(frozen=True)
class GcPolicy:
    max_size: int | None = None  # bytes
    max_age: float | None = None  # seconds
    dry_run: bool = False


@dataclass
class GcReport:
    roots: int = 0
    temp_roots: int = 0
    kept_blobs: int = 0
    kept_bytes: int = 0
    deleted_blobs: int = 0
    deleted_bytes: int = 0
    evicted_actions: int = 0
    kept_actions: int = 0
    dangling_roots: list[str] = field(default_factory=list)
    dry_run: bool = False


def _action_blobs(cas: LocalCAS, key: str, result_bytes: bytes) -> set[str]:
    """The blobs a cache entry keeps: its outputs, its Action and Command."""
    result = re_pb2.ActionResult.FromString(result_bytes)
    return {d.hash for d in result_blobs(cas, result)} | _action_and_command(cas, key)


def _action_and_command(cas: LocalCAS, key: str) -> set[str]:
    """The hashes of an Action blob and of the Command it names (if stored)."""
    blobs = {key}
    with contextlib.suppress(FileNotFoundError, DecodeError, ValueError):
        data = cas.get_bytes_by_hash(key)
        if data is not None:
            action = re_pb2.Action.FromString(data)
            blobs.add(action.command_digest.hash)
    return blobs


def _mark_root(
    cas: LocalCAS,
    conn: sqlite3.Connection,
    kind: str,
    digest: Digest,
    marked: set[str],
    walked: set[Digest],
) -> None:
    """Mark everything one root keeps (``walked``: the directories marked
    with all below them so far, each walked once for all roots)."""
    if kind == "blob":
        marked.add(digest.hash)
    elif kind == "tree":
        marked.update(d.hash for d in reachable(cas, digest, skip_missing=True, seen=walked))
    else:  # an action: itself, its command and, once recorded, its result
        row = conn.execute(
            "SELECT result FROM action_cache WHERE hash = ?", (digest.hash,)
        ).fetchone()
        if row is None:
            marked.update(_action_and_command(cas, digest.hash))
        else:
            marked.update(_action_blobs(cas, digest.hash, row[0]))


def collect(cas: LocalCAS, conn: sqlite3.Connection, policy: GcPolicy) -> GcReport:
    """Run one collection. The caller holds the exclusive write lock."""
    now = time.time()
    report = GcReport(dry_run=policy.dry_run)
    marked: set[str] = set()
    walked: set[Digest] = set()
    rooted_actions: set[str] = set()
    roots = conn.execute("SELECT name, kind, hash, size FROM gc_roots").fetchall()
    temps = conn.execute("SELECT kind, hash, size FROM temp_roots").fetchall()
    report.roots, report.temp_roots = len(roots), len(temps)
    for name, kind, h, size in roots:
        digest = Digest(h, size)
        if kind != "action" and not cas.has(digest):
            report.dangling_roots.append(name)
        _mark_root(cas, conn, kind, digest, marked, walked)
        if kind == "action":
            rooted_actions.add(h)
    for kind, h, size in temps:
        _mark_root(cas, conn, kind, Digest(h, size), marked, walked)
        if kind == "action":
            rooted_actions.add(h)

    actions = [
        (h, last_used, _action_blobs(cas, h, result))
        for h, last_used, result in conn.execute(
            "SELECT hash, last_used, result FROM action_cache ORDER BY last_used"
        )
        if h not in rooted_actions
    ]
    refs: Counter[str] = Counter()
    for _, _, blobs in actions:
        refs.update(blobs)

    files = list(scan(cas.root)) + list(scan_metadata(conn))
    by_hash: dict[str, list[BlobFile]] = {}
    for f in files:
        by_hash.setdefault(f.hash, []).append(f)
    total = sum(f.size for f in files)

    def blob_size(h: str) -> int:
        return sum(f.size for f in by_hash.get(h, ()))

    def blob_age(h: str) -> float:
        return min(now - f.mtime for f in by_hash[h])

    evict: list[str] = []
    delete: set[str] = set()

    # 1. Age: evict old cache entries, then old loose blobs.
    if policy.max_age is not None:
        for h, last_used, blobs in actions:
            if now - last_used > policy.max_age:
                evict.append(h)
                refs.subtract(blobs)
        for h in by_hash:
            if h not in marked and refs[h] <= 0 and blob_age(h) > policy.max_age:
                delete.add(h)
                total -= blob_size(h)
    # 2. Size: loose blobs oldest first, then cache entries least recently used.
    if policy.max_size is not None and total > policy.max_size:
        loose = sorted(
            (h for h in by_hash if h not in marked and refs[h] <= 0 and h not in delete),
            key=blob_age,
            reverse=True,
        )
        for h in loose:
            if total <= policy.max_size:
                break
            delete.add(h)
            total -= blob_size(h)
        for h, _, blobs in actions:
            if total <= policy.max_size:
                break
            if h in evict:
                continue
            evict.append(h)
            refs.subtract(blobs)
            for b in blobs:
                if b not in marked and refs[b] <= 0 and b in by_hash and b not in delete:
                    delete.add(b)
                    total -= blob_size(b)
    # 3. No limits: every candidate.
    if policy.max_age is None and policy.max_size is None:
        evict = [h for h, _, _ in actions]
        delete = {h for h in by_hash if h not in marked}

    report.evicted_actions = len(evict)
    report.kept_actions = len(actions) - len(evict) + len(rooted_actions)
    for h in by_hash:
        n, size = len(by_hash[h]), blob_size(h)
        if h in delete:
            report.deleted_blobs += n
            report.deleted_bytes += size
        else:
            report.kept_blobs += n
            report.kept_bytes += size
    if policy.dry_run:
        return report

    if delete:
        count_removal(conn)  # (before any blob goes: see store/known_complete.py)
    if evict:
        with transaction(conn):
            conn.executemany("DELETE FROM action_cache WHERE hash = ?", [(h,) for h in evict])
    rows = []
    for h in delete:
        for f in by_hash[h]:
            if f.path is None:
                rows.append(h)
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f.path)
    if rows:
        delete_metadata(conn, rows)
    return report
