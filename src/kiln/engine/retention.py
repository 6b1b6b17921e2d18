"""What the build history keeps, and ``prune``, which deletes the rest.

Per project, the last ``KEEP_BUILDS`` builds stay, whatever their status
('unchanged' answers from the stamp included), and so do the project's last
build with steps (what ``kiln show``, ``log`` and ``trace`` read), the last
build with steps of each of its targets (what ``kiln show TARGET`` reads
when later builds left that target out) and, for each step that ran in one
of those, the build holding that step's previous run (what
``kiln why`` compares it with: ``history.previous_run``). Other builds go,
with their steps. A project whose root folder is gone, or holds no build
file any more, loses its builds, stamps, source_files rows and the GC roots
of its targets' values (``build:ROOT:TARGET``). A source_files row stays while its file
still has the stat signature the row records; any other row can never
answer again (engine/sources.py hashes a file whose signature differs), so
pruning makes no build wrong, and at worst one slower.

Every ``PRUNE_EVERY``-th build prunes as it is recorded (by id, so builds
answered from their stamp count: ``history.record_build`` and
``stamp.record_answer``), and so does ``kiln gc``. A build forgets the
targets its project's build file no longer defines (``forget_removed_targets``:
their roots, and the ``kiln-out`` folders Kiln placed for them). This module
imports little: the no-op build's path (engine/stamp.py) imports it.
"""

from __future__ import annotations

import json
import os
from collections import namedtuple
from pathlib import Path

from kiln.engine import kiln_out
from kiln.engine.root import BUILD_FILE
from kiln.store.db import transaction
from kiln.system.stat_signature import signature

TYPE_CHECKING = False  # (typing itself costs milliseconds at start-up)

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Collection

KEEP_BUILDS = 50  # builds kept per project, besides the ones pinned above
PRUNE_EVERY = 50  # a build whose id is a multiple of this prunes
SWEEP_ROWS = 1000  # source_files rows an automatic prune checks (a stat call each)
_SWEPT = "history.source_files_swept"  # meta key: where the last sweep stopped

# The builds to delete (parameters: gone project roots as a JSON list, KEEP_BUILDS).
_DOOMED = """
WITH live AS (
    SELECT id, project, status FROM builds
    WHERE project NOT IN (SELECT value FROM json_each(?1))
), shown AS (
    SELECT MAX(id) AS id FROM live WHERE status != 'unchanged' GROUP BY project
    UNION  -- each target's last build with its steps (history.last_build_of)
    SELECT MAX(s.build) FROM build_steps AS s JOIN live ON live.id = s.build
    GROUP BY live.project, s.target
), compared AS (  -- history.previous_run of each step of a shown build `why` explains
    SELECT (SELECT MAX(p.build) FROM build_steps AS p
            WHERE p.target = s.target AND p.step = s.step AND p.build < s.build
            AND p.status IN ('executed', 'cached', 'remote-cached', 'remote-executed')) AS id
    FROM build_steps AS s JOIN shown ON s.build = shown.id
    WHERE s.status IN ('executed', 'remote-executed', 'failed')
), recent AS (
    SELECT id FROM (
        SELECT id, ROW_NUMBER() OVER (PARTITION BY project ORDER BY id DESC) AS age FROM live
    ) WHERE age <= ?2
)
SELECT id FROM builds
WHERE id NOT IN (SELECT id FROM recent)
AND id NOT IN (SELECT id FROM shown)
AND id NOT IN (SELECT id FROM compared WHERE id IS NOT NULL)
"""


ROOT_PREFIX = "build:"  # the GC root of a target's value: build:PROJECT-ROOT:TARGET


class Pruned(namedtuple("Pruned", ("builds", "steps", "source_files", "projects", "roots"))):
    """What one ``prune`` deleted: builds, their steps, source_files rows,
    how many projects were forgotten because their root folder was gone (or
    no longer a project), and the GC roots of their targets."""

    __slots__ = ()


def due(build_id: int) -> bool:
    """Whether recording build ``build_id`` should prune."""
    return build_id % PRUNE_EVERY == 0


def prune(conn: sqlite3.Connection, *, sweep: int | None = None) -> Pruned:
    """Delete the history the policy above does not keep, in one write
    transaction. ``sweep``: check at most that many source_files rows,
    continuing where the last such prune stopped (None: check every row).

    Folders and files are looked at before the transaction, so the write
    lock is held only for the deletes; a source_files row is deleted only
    if it is still the one found stale.
    """
    target_roots = _target_roots(conn)
    projects = {p for (p,) in conn.execute("SELECT DISTINCT project FROM builds")}
    projects.update(p for (p,) in conn.execute("SELECT DISTINCT project FROM build_stamps"))
    projects.update(target_roots)
    gone = sorted(p for p in projects if not os.path.isfile(os.path.join(p, BUILD_FILE)))
    after = ""
    if sweep is not None:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (_SWEPT,)).fetchone()
        after = row[0] if row else ""
    rows = conn.execute(  # the signature's columns in its order (system/stat_signature.py)
        "SELECT path, mode, ino, size, mtime_ns, ctime_ns FROM source_files WHERE path > ? "
        "ORDER BY path LIMIT ?",
        (after, -1 if sweep is None else sweep),
    ).fetchall()
    stale = [r for r in rows if signature(r[0]) != tuple(r[1:])]
    with transaction(conn):
        doomed = json.dumps([i for (i,) in conn.execute(_DOOMED, (json.dumps(gone), KEEP_BUILDS))])
        steps = conn.execute(
            "DELETE FROM build_steps WHERE build IN (SELECT value FROM json_each(?))", (doomed,)
        ).rowcount
        builds = conn.execute(
            "DELETE FROM builds WHERE id IN (SELECT value FROM json_each(?))", (doomed,)
        ).rowcount
        files = conn.executemany(
            "DELETE FROM source_files WHERE path = ? AND mode = ? AND ino = ? "
            "AND size = ? AND mtime_ns = ? AND ctime_ns = ?",
            stale,
        ).rowcount
        for root in gone:
            prefix = root.rstrip("/") + "/"
            files += conn.execute(
                "DELETE FROM source_files WHERE path >= ? AND path < ?",
                (prefix, prefix[:-1] + "0"),  # '0' sorts right after '/'
            ).rowcount
            conn.execute("DELETE FROM build_stamps WHERE project = ?", (root,))
        roots = conn.executemany(
            "DELETE FROM gc_roots WHERE name = ?",
            [(name,) for root in gone for name in target_roots.get(root, {}).values()],
        ).rowcount
        if sweep is not None:
            swept_to = rows[-1][0] if rows and len(rows) == sweep else ""  # else start again
            conn.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (_SWEPT, swept_to)
            )
    return Pruned(builds, steps, files, len(gone), max(roots, 0))


def _target_roots(conn: sqlite3.Connection) -> dict[str, dict[str, str]]:
    """project root -> target -> the name of the GC root of its value."""
    found: dict[str, dict[str, str]] = {}
    for (name,) in conn.execute(
        "SELECT name FROM gc_roots WHERE substr(name, 1, ?) = ?", (len(ROOT_PREFIX), ROOT_PREFIX)
    ):
        project, _, target = name[len(ROOT_PREFIX) :].rpartition(":")
        if project and target.isidentifier():
            found.setdefault(project, {})[target] = name
    return found


def forget_removed_targets(
    conn: sqlite3.Connection, project: Path, defined: Collection[str]
) -> list[str]:
    """The targets of ``project`` that its build file, as just loaded by a
    build, no longer defines (returned): their GC roots are deleted, and
    their ``kiln-out`` folders too if Kiln placed them (by their markers: a
    folder put there by anyone else stays, and nothing is deleted through a
    ``kiln-out`` that is a link).

    Only a build calls this, with the targets it loaded: `kiln gc` never
    runs build files (in a store shared by several users that would run
    their code as the one collecting)."""
    roots = _target_roots(conn).get(str(project), {})
    known = set(roots) | set(kiln_out.marked(project))
    forgotten = sorted(known - set(defined))
    if not forgotten:
        return []  # (the usual case: no write transaction)
    with transaction(conn):
        conn.executemany(
            "DELETE FROM gc_roots WHERE name = ?", [(roots[t],) for t in forgotten if t in roots]
        )
    for target in forgotten:
        try:
            kiln_out.remove(project, target)
        except OSError:
            continue  # (a kiln-out that is not Kiln's folder: left alone)
    return forgotten

