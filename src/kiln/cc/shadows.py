"""Would the compiler now read another file than the one it read before?

A header found in include folder *k* is shadowed when a file of the same
name appears in a folder searched before *k*: the compile would read that
one instead, so a hit on the old list must not be given. Checking every
(header, earlier folder) pair costs hundreds of ``stat`` calls per compile;
but a file can appear only where a folder changes, so what was found in a
folder is kept with the folder's signature and reused while it holds (a
missing folder holds nothing). Folders changed within the racy window are
not trusted.
"""

from __future__ import annotations

import os
import threading

from kiln.cc.digests import SettledMemo
from kiln.system.stat_signature import signature


class ShadowCheck:
    """``shadowed(search, listed)``, with the candidates of each search path
    and list worked out once, and each folder's answers kept while its
    signature holds (a build writing objects into an include folder makes
    only that folder's few candidates be looked at again)."""

    def __init__(self, limit: int = 20_000) -> None:
        self._candidates: dict[tuple[tuple[str, ...], frozenset[str]], dict[str, list[str]]] = {}
        self._folders: SettledMemo[str, dict[str, bool]] = SettledMemo(limit)
        self._lock = threading.Lock()
        self._limit = limit

    def shadowed(self, search: tuple[str, ...], listed: frozenset[str]) -> bool:
        """Whether a file in ``search`` (folders in search order) now comes
        before one of the ``listed`` files under the same name."""
        key = (search, listed)
        grouped = self._candidates.get(key)
        if grouped is None:
            grouped = {}
            for candidate in _candidates(search, listed):
                grouped.setdefault(os.path.dirname(candidate), []).append(candidate)
            with self._lock:
                if len(self._candidates) >= self._limit:
                    self._candidates.clear()
                self._candidates[key] = grouped
        return any(self._any_exists(folder, names) for folder, names in grouped.items())

    def _any_exists(self, folder: str, candidates: list[str]) -> bool:
        sig = signature(folder)
        if sig is None:
            return False
        answers = dict(self._folders.get(folder, sig) or {})
        found = False
        for candidate in candidates:
            exists = answers.get(candidate)
            if exists is None:
                exists = answers[candidate] = os.path.lexists(candidate)
            found = found or exists
        self._folders.put(folder, sig, answers)
        return found


def _candidates(search: tuple[str, ...], listed: frozenset[str]) -> list[str]:
    """Every path that would shadow a listed file. A file under several
    search folders (nested ones) may have been found through any of them,
    so each is considered."""
    prefixes = [folder.rstrip("/") + "/" for folder in search]
    out = []
    for path in listed:
        for k, prefix in enumerate(prefixes):
            if path.startswith(prefix):
                name = path[len(prefix) :]
                out.extend(c for c in (e + name for e in prefixes[:k]) if c not in listed)
    return out
