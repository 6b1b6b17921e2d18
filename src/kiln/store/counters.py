"""Named counters kept in the store's ``meta`` table (``kiln cc --stats``,
``kiln gocacheprog --stats``): a JSON object of integers per key, added to
in one transaction so that concurrent writers lose no count."""

from __future__ import annotations

import json

from kiln.store.local import Store


def load_counts(store: Store, key: str) -> dict[str, int]:
    """The counters under ``key`` (empty if none or unreadable)."""
    row = store.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    if row is None:
        return {}
    try:
        counts = json.loads(row[0])
    except ValueError:
        return {}
    if not isinstance(counts, dict):
        return {}
    return {str(k): v for k, v in counts.items() if isinstance(v, int)}


def add_counts(store: Store, key: str, counts: dict[str, int]) -> None:
    """Add ``counts`` to the counters under ``key``."""
    if not any(counts.values()):
        return
    with store.db.transaction() as conn:
        total = load_counts(store, key)
        for name, n in counts.items():
            total[name] = total.get(name, 0) + n
        conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(total))
        )


def zero_counts(store: Store, key: str) -> None:
    store.conn.execute("DELETE FROM meta WHERE key = ?", (key,))
