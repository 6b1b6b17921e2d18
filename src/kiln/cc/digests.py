"""Digests of project files, remembered while their stat signature holds.

A resident ``kiln cc`` service hashes a header once, not once per unit that
includes it. A file changed within the racy window (see
``kiln.system.stat_signature``) is hashed every time.
"""

from __future__ import annotations

import threading
import time
from typing import Generic, TypeVar

from kiln.model.digest import Digest
from kiln.system.stat_signature import CTIME, MTIME, Signature, racy_window_ns, signature

K = TypeVar("K")
V = TypeVar("V")


class SettledMemo(Generic[K, V]):
    """Values remembered with the stat signature they were read under, and
    only when that signature is settled (older than the racy window); at
    most ``limit`` of them (all are forgotten when it is reached)."""

    def __init__(self, limit: int) -> None:
        self._known: dict[K, tuple[Signature, V]] = {}
        self._lock = threading.Lock()
        self._limit = limit

    def get(self, key: K, sig: Signature) -> V | None:
        known = self._known.get(key)
        return known[1] if known is not None and known[0] == sig else None

    def put(self, key: K, sig: Signature, value: V) -> None:
        settled = time.time_ns() - racy_window_ns()
        if sig[MTIME] < settled and sig[CTIME] < settled:
            with self._lock:
                if len(self._known) >= self._limit:
                    self._known.clear()
                self._known[key] = (sig, value)


class FileDigests:
    """``digest(path)``: the file's digest, or None if it cannot be read."""

    def __init__(self, limit: int = 200_000) -> None:
        self._memo: SettledMemo[str, Digest] = SettledMemo(limit)

    def digest(self, path: str) -> Digest | None:
        sig = signature(path)
        if sig is None:
            return None
        known = self._memo.get(path, sig)
        if known is not None:
            return known
        try:
            digest = Digest.of_file(path)
        except OSError:
            return None
        if signature(path) == sig:  # (changed while read: not remembered)
            self._memo.put(path, sig, digest)
        return digest
