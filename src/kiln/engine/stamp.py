"""Build stamps: answering a no-op build without evaluating anything.

After a successful build, Kiln records what it saw: the stat signature
(inode, size, mtime, ctime, mode) of the build file, of the project modules
it imported and of every source file the rules read, the matches of every
glob, and each target's output. The next ``kiln build`` of the same targets
first checks those: if every file looks the same, every glob matches the
same files and every output folder is still what was built, there is
nothing to do, and neither the build file nor any rule runs.

Sound because rules are deterministic functions of the files they read
(see README, "Build files") and because no stamp is recorded when a file
was modified within the racy window before the build, when a source folder
was used (its files are not tracked one by one), or when the build failed.
"""

from __future__ import annotations

import json
import marshal
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln import __version__
from kiln.engine.sources import glob_files

if TYPE_CHECKING:
    from kiln.engine.build import BuildReport
    from kiln.engine.loader import Project
    from kiln.engine.sources import Sources
    from kiln.store.local import Store

ALL_TARGETS = "*"


def stamp_key(targets: list[str] | None) -> str:
    """How a request for ``targets`` (``None``: all of them) is filed."""
    return ALL_TARGETS if not targets else json.dumps(sorted(targets))


def _signature(path: str) -> tuple[int, int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


def record(store: Store, project: Project, key: str, sources: Sources, report: BuildReport) -> bool:
    """File the stamp of a finished build (or drop a stale one); True if filed."""
    code = {path: _signature(path) for path in project.code_files}
    oldest_trusted = sources.started_ns - sources.racy_ns
    fit = (
        report.ok
        and sources.stampable
        and all(s is not None and max(s[2], s[3]) < oldest_trusted for s in code.values())
    )
    conn = store.conn
    if not fit:
        conn.execute(
            "DELETE FROM build_stamps WHERE project = ? AND targets = ?", (str(project.root), key)
        )
        return False
    stamp = {
        "version": __version__,
        "files": {**code, **sources.seen},
        "globs": sources.globs,
        "targets": {t.name: (t.output, t.digest) for t in report.targets},
        "steps": len(report.steps),
    }
    conn.execute(
        "INSERT OR REPLACE INTO build_stamps(project, targets, stamp) VALUES (?, ?, ?)",
        (str(project.root), key, marshal.dumps(stamp)),
    )
    return True


def check(store: Store, root: Path, key: str) -> dict[str, Any] | None:
    """The stamp of the last build of these targets if nothing changed since."""
    row = store.conn.execute(
        "SELECT stamp FROM build_stamps WHERE project = ? AND targets = ?", (str(root), key)
    ).fetchone()
    if row is None:
        return None
    stamp = marshal.loads(row[0])
    if stamp["version"] != __version__:
        return None
    for path, signature in stamp["files"].items():
        if _signature(path) != signature:
            return None
    for pattern, matches in stamp["globs"].items():
        if glob_files(root, pattern) != matches:
            return None
    for name, (output, digest) in stamp["targets"].items():
        marker = root / "kiln-out" / ".kiln" / f"{name}.digest"
        try:
            if marker.read_text() != digest or not os.path.isdir(output):
                return None
        except OSError:
            return None
    return stamp
