"""Action results known to be complete, remembered across commands.

A cache hit is only a hit if every blob its result names is still in the
store (``LocalActionCache.complete``): for an unpacked toolchain that is
thousands of ``stat`` calls on every lookup. Blobs leave the store only
through Kiln's own garbage collection and ``kiln store verify``, and both
first count a *removal* in the store's database (``db.count_removal``).
So a result found complete while that count was N is still complete while
it is N.

Remembering is off by default: the resident server turns it on
(``enable``) and keeps what the commands it forks learned (``learned``,
sent back to it and ``merge``d), so every later command starts knowing it;
a command run without the server checks every blob as before. Restarting
the server forgets everything.
"""

from __future__ import annotations

_enabled = False
_known: dict[str, int] = {}  # action key hash -> the removal count it was checked at
_learned: list[tuple[str, int]] = []  # checked in this process, not yet sent


def enable() -> None:
    """Remember results found complete (in this process and its forks)."""
    global _enabled
    _enabled = True


def enabled() -> bool:
    return _enabled


def known(key_hash: str, removals: int) -> bool:
    """Whether the result of ``key_hash`` was found complete at ``removals``."""
    return _known.get(key_hash) == removals


def note(key_hash: str, removals: int) -> None:
    """The result of ``key_hash`` was just found complete at ``removals``."""
    if _enabled and _known.get(key_hash) != removals:
        _known[key_hash] = removals
        _learned.append((key_hash, removals))


def learned() -> list[tuple[str, int]]:
    """What this process found since it started (or was forked), to send
    to the process that remembers."""
    return list(_learned)


def merge(items: object, removals: int) -> int:
    """Remember what a command learned, if nothing was removed from the
    store since (``removals``: the count now); how many were taken."""
    taken = 0
    if not isinstance(items, list):
        return 0
    for item in items:
        if (
            isinstance(item, (list, tuple)) and len(item) == 2
            and isinstance(item[0], str) and item[1] == removals
        ):  # fmt: skip
            _known[item[0]] = removals
            taken += 1
    # (what was checked before a removal is forgotten: it may be gone)
    for key in [k for k, n in _known.items() if n != removals]:
        del _known[key]
    return taken


def size() -> int:
    return len(_known)
