"""Digests of project files, remembered while their stat signature holds.

A resident ``kiln cc`` service hashes a header once, not once per unit that
includes it. A file changed within the racy window (see
``kiln.system.stat_signature``) is hashed every time.
"""

from __future__ import annotations

import threading
import time

from kiln.model.digest import Digest
from kiln.system.stat_signature import CTIME, MTIME, Signature, racy_window_ns, signature


class FileDigests:
    """``digest(path)``: the file's digest, or None if it cannot be read."""

    def __init__(self, limit: int = 200_000) -> None:
        self._known: dict[str, tuple[Signature, Digest]] = {}
        self._lock = threading.Lock()
        self._limit = limit

    def digest(self, path: str) -> Digest | None:
        sig = signature(path)
        if sig is None:
            return None
        known = self._known.get(path)
        if known is not None and known[0] == sig:
            return known[1]
        try:
            digest = Digest.of_file(path)
        except OSError:
            return None
        if signature(path) != sig:  # changed while read: not remembered
            return digest
        settled = time.time_ns() - racy_window_ns()
        if sig[MTIME] < settled and sig[CTIME] < settled:
            with self._lock:
                if len(self._known) >= self._limit:
                    self._known.clear()
                self._known[path] = (sig, digest)
        return digest
