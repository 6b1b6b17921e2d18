"""What the resident server keeps per project between commands.

For each project it has built, the server keeps a ``ProjectWatch`` of its
folders and, per build stamp (``kiln.engine.stamp``), the moment the stamp
was last found to hold by checking every file it names with ``stat``. A
later request for the same targets holds too if, since that moment, the
watch saw no event on any of those files or on a folder whose listing a
glob depended on, the stamp in the store is still the one checked, and
what the watch cannot vouch for (files outside the project, through a
symbolic link or with several hard links, the environment) is unchanged
when checked again. Anything else, and any doubt (events lost, a watch
that could not be made), is checked with ``stat`` as a build without the
server checks it. A project folder moved away, deleted or replaced since it
was watched is watched anew, and what was known of it is dropped.

So a no-op build of a project the server watches costs no ``stat`` per
source file, however many files its stamp names.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.engine import stamp as stamps
from kiln.server.watch import ProjectWatch
from kiln.store import db
from kiln.system.stat_signature import Signature, signature

MAX_PROJECTS = 32  # watched at once; the least recently used is dropped


@dataclass
class Baseline:
    """A stamp found to hold at ``seq`` of its project's watch."""

    seq: int
    row: bytes  # the stamp as filed (a later build files another)
    stamp: dict[str, Any]
    watched: frozenset[str]  # an event on one of these: check again
    unwatched: tuple[tuple[str, Signature | None], ...]  # checked with stat every time


class Projects:
    """The watches and stamp baselines of the projects a server has built."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.watches: dict[str, ProjectWatch] = {}  # by root, least recently used first
        self.baselines: dict[tuple[str, str], Baseline] = {}
        self._conn: sqlite3.Connection | None = None
        self.answered = 0  # no-op builds the server answered itself (kiln.server.quick)

    def watch(self, root: str) -> ProjectWatch:
        """The watch of the project at ``root`` (a real path), its events
        read; made if new, made again if the folder it watched is no longer
        the one at ``root`` (moved, deleted, replaced)."""
        watch = self.watches.pop(root, None)
        if watch is not None:
            watch.drain()
            if not watch.at_root():
                # Its moments and what it vouched for are another folder's.
                for key in [k for k in self.baselines if k[0] == root]:
                    del self.baselines[key]
                stale, watch = watch, ProjectWatch(root)
                stale.close()  # (after: the new watch cannot reuse its descriptor)
        if watch is None:
            watch = ProjectWatch(root)
            while len(self.watches) >= MAX_PROJECTS:
                oldest = next(iter(self.watches))
                self.forget(oldest)
        self.watches[root] = watch  # (now the most recently used)
        return watch

    def forget(self, root: str) -> None:
        """Stop watching a project and drop what was known of it."""
        watch = self.watches.pop(root, None)
        if watch is not None:
            watch.close()
        for key in [k for k in self.baselines if k[0] == root]:
            del self.baselines[key]

    def drain(self) -> None:
        """Read the events waiting on every watch (they are counted, not acted on)."""
        for watch in self.watches.values():
            watch.drain()

    def holding_stamp(
        self, root: str, key: str, environ: Mapping[str, str]
    ) -> tuple[dict[str, Any] | None, str | None]:
        """(the stamp of ``key``, None) if it holds now for a client whose
        environment is ``environ``, else (None, what differs)."""
        watch = self.watch(root)  # (its events read)
        conn = self.conn()
        row = stamps.read(conn, root, key)
        if row is None:
            self.baselines.pop((root, key), None)
            return stamps.compare(conn, Path(root), key)
        base = self.baselines.get((root, key))
        if base is not None and base.row == row and self._still(watch, base, environ):
            return base.stamp, None
        seq = watch.seq  # (read before the files are: later changes are events)
        held, differs = stamps.holds(row, root, environ)
        if held is None:
            self.baselines.pop((root, key), None)
            return None, differs
        self.baselines[(root, key)] = _baseline(watch, seq, row, held)
        return held, None

    def _still(self, watch: ProjectWatch, base: Baseline, environ: Mapping[str, str]) -> bool:
        changes = watch.changes_after(base.seq)
        if changes is None or not changes.isdisjoint(base.watched):
            return False
        if any(signature(path) != sig for path, sig in base.unwatched):
            return False
        return stamps.host_change(base.stamp, environ) is None

    def record_answer(self, root: str, key: str) -> None:
        """File in the history a build answered here."""
        stamps.record_answer(self.conn(), Path(root), key)

    def conn(self) -> sqlite3.Connection:
        """The server's own connection to the store's database."""
        if self._conn is None:
            self._conn = db.connect(self.home / "kiln.db")
        return self._conn

    def close_in_child(self) -> None:
        """In a forked command: let go of the watches' descriptors (the
        server keeps them; what was known stays readable)."""
        for watch in self.watches.values():
            if watch.fileno() >= 0:
                with contextlib.suppress(OSError):
                    os.close(watch.fileno())

    def close(self) -> None:
        for root in list(self.watches):
            self.forget(root)
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None


def _baseline(watch: ProjectWatch, seq: int, row: bytes, stamp: dict[str, Any]) -> Baseline:
    """Sort what ``stamp`` names into what the watch vouches for and what
    must be checked with stat every time."""
    watched: set[str] = set()
    unwatched: list[tuple[str, Signature | None]] = []
    for folder, names in stamp["files"].items():
        for name, sig in names.items():
            path = os.path.join(folder, name)
            if watch.vouches_for(path):
                watched.add(path)
            else:
                unwatched.append((path, sig))
    for folder, sig in stamp["listed"].items():
        if watch.vouches_for_folder(folder) and sig is not None:
            watched.add(folder)
        else:
            unwatched.append((folder, None))  # (never equal: checked in full)
    return Baseline(seq, row, stamp, frozenset(watched), tuple(unwatched))
