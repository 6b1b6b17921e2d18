"""``kiln cc --stats``: what the launcher did, like ``ccache -s``.

Counts are kept in memory and added to the store's totals at ``flush``
(the resident service flushes about once a second, a one-off call at its
end), so a compile does not wait for a database write.
"""

from __future__ import annotations

import threading
import time

from kiln.store.counters import add_counts, load_counts, zero_counts
from kiln.store.local import Store

STATS_KEY = "cc-stats"
DIRECT_PREFIX = "direct: "
FLUSH_EVERY_S = 0.0  # seconds; 0: every call (a commit here costs well under a millisecond)
OUTCOMES = ("hit", "miss", "failed")


class Stats:
    """Counts of one process, flushed into the store's totals."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: dict[str, int] = {}
        self._lock = threading.Lock()
        self._flushed = time.monotonic()

    def count(self, outcome: str, reason: str = "") -> None:
        """One call's outcome: hit, miss, failed, or direct (with its reason)."""
        name = DIRECT_PREFIX + reason if outcome == "direct" else outcome
        with self._lock:
            self._pending[name] = self._pending.get(name, 0) + 1
            due = time.monotonic() - self._flushed > FLUSH_EVERY_S
        if due:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            self._flushed = time.monotonic()
        add_counts(self._store, STATS_KEY, pending)


def load(store: Store) -> dict[str, object]:
    """The totals: hits, misses, failed (compiles that failed, run
    directly) and the direct calls by reason."""
    counts = load_counts(store, STATS_KEY)
    direct = {k[len(DIRECT_PREFIX) :]: v for k, v in counts.items() if k.startswith(DIRECT_PREFIX)}
    return {
        "hits": counts.get("hit", 0),
        "misses": counts.get("miss", 0),
        "failed": counts.get("failed", 0),
        "direct": dict(sorted(direct.items(), key=lambda kv: -kv[1])),
    }


def zero(store: Store) -> None:
    zero_counts(store, STATS_KEY)
