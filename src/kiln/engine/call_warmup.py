"""Warming a step's memoized calls before it runs again.

A wasm step that makes memoized calls usually runs again because one of
its inputs changed (one page of many edited), and then makes mostly the
calls it made last time. Its previous run's result lists them
(``kiln.exec.wasm_calls.calls_of``); before the step starts, ``warm`` loads
their cache entries into this process's memory of calls in a few batched
queries, so that each call is answered from memory instead of by a lookup
of its own. Only a speed-up: every entry is found by its key, so entries
the step no longer needs are merely unused.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from kiln.exec.wasm_calls import CALLS_FIELD, MEMO, calls_of, decode_outcome
from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2

if TYPE_CHECKING:
    from kiln.store.local import Store

CALLS_MARK = CALLS_FIELD.encode()  # in the bytes of a result that lists calls
BATCH = 500  # keys per query
TOUCHED_WITHIN_S = 3600.0  # an entry used this recently is not marked used again
MAX_WARMED = 20_000


def steps_with_calls(store: Store) -> set[tuple[str, str]]:
    """(target, step) of every recorded step whose result lists calls: the
    only ones worth warming (one scan of the history, not a query a step)."""
    rows = store.conn.execute(
        "SELECT DISTINCT target, step FROM build_steps WHERE status IN ('executed', 'cached') "
        "AND result IS NOT NULL AND instr(result, ?) > 0",
        (CALLS_MARK,),
    )
    return {(target, step) for target, step in rows}


def warm(store: Store, target: str, step: str) -> int:
    """Load the cache entries of the calls the last recorded run of this
    step (target and description) made; how many were loaded."""
    return load(store, previous_calls(store, target, step))


def previous_calls(store: Store, target: str, step: str) -> list[str]:
    """The keys of the calls the last recorded run of this step made."""
    row = store.conn.execute(
        "SELECT result FROM build_steps WHERE target = ? AND step = ? AND result IS NOT NULL "
        "AND status IN ('executed', 'cached') ORDER BY build DESC LIMIT 1",
        (target, step),
    ).fetchone()
    if row is None:
        return []
    return list(dict.fromkeys(c["key"] for c in calls_of(re_pb2.ActionResult.FromString(row[0]))))


def load(store: Store, keys: list[str]) -> int:
    """Load the cache entries of these call keys into memory (and mark
    them used); how many were found."""
    loaded, stale = 0, []
    recently = time.time() - TOUCHED_WITHIN_S
    for start in range(0, min(len(keys), MAX_WARMED), BATCH):
        chunk = [k.partition("/")[0] for k in keys[start : start + BATCH]]
        marks = ",".join("?" * len(chunk))
        for hash_hex, size, data, last_used in store.conn.execute(
            f"SELECT hash, size, result, last_used FROM action_cache WHERE hash IN ({marks})",
            chunk,
        ):
            outcome = decode_outcome(re_pb2.ActionResult.FromString(data), store.cas)
            if outcome is None:
                continue
            key = Digest(hash_hex, size)
            MEMO.put(key, outcome)
            loaded += 1
            if last_used < recently:
                stale.append(key)
    store.action_cache.touch(stale)  # used again, as far as the GC is concerned
    return loaded
