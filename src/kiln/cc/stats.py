"""``kiln cc --stats``, and the bookkeeping a hit owes the store.

A hit must not wait for database writes: its counts, and the marking of
the results it used (the age ``kiln gc`` goes by), are kept in memory and
written in one transaction at ``flush``, which runs ``FLUSH_DELAY_S``
after the first call that has something to write (and at ``close``, and
when ``kiln cc --stats`` asks the service for it).
"""

from __future__ import annotations

import threading
import time

from kiln.model.digest import Digest
from kiln.store.counters import add_counts, load_counts, zero_counts
from kiln.store.local import Store

STATS_KEY = "cc-stats"
DIRECT_PREFIX = "direct: "
FLUSH_DELAY_S = 0.5


class Ledger:
    """Counts and used results of one process, written to the store later."""

    def __init__(self, store: Store, delay: float | None = FLUSH_DELAY_S) -> None:
        """``delay``: seconds before pending entries are written; None: only
        at ``flush`` (a one-off call flushes at its end)."""
        self._store = store
        self._delay = delay
        self._counts: dict[str, int] = {}
        self._used: set[Digest] = set()
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def count(self, outcome: str, reason: str = "") -> None:
        """One call's outcome: hit, miss, failed, or direct (with its reason)."""
        name = DIRECT_PREFIX + reason if outcome == "direct" else outcome
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + 1
            self._schedule()

    def used(self, *keys: Digest) -> None:
        """Results (and manifests) a hit used: marked used at the flush."""
        with self._lock:
            self._used.update(keys)
            self._schedule()

    def _schedule(self) -> None:
        if self._delay is not None and self._timer is None:
            self._timer = threading.Timer(self._delay, self.flush)
            self._timer.daemon = True
            self._timer.start()

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, {}
            used, self._used = self._used, set()
            self._timer = None
        if used:
            now = time.time()
            with self._store.writing(), self._store.db.transaction() as conn:
                conn.executemany(
                    "UPDATE action_cache SET last_used = ? WHERE hash = ?",
                    [(now, key.hash) for key in used],
                )
        add_counts(self._store, STATS_KEY, counts)


def load(store: Store) -> dict[str, object]:
    """The totals: hits, misses, failed (compiles that failed, run
    directly), listed (misses whose headers the preprocessor listed) and
    the direct calls by reason."""
    counts = load_counts(store, STATS_KEY)
    direct = {k[len(DIRECT_PREFIX) :]: v for k, v in counts.items() if k.startswith(DIRECT_PREFIX)}
    return {
        "hits": counts.get("hit", 0),
        "misses": counts.get("miss", 0),
        "failed": counts.get("failed", 0),
        "listed": counts.get("listed", 0),
        "direct": dict(sorted(direct.items(), key=lambda kv: -kv[1])),
    }


def zero(store: Store) -> None:
    zero_counts(store, STATS_KEY)
