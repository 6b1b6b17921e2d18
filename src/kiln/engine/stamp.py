"""Build stamps: answering a no-op build without evaluating anything.

After a successful build, Kiln records what it saw: the stat signature
(system/stat_signature.py) of the build file, of the project modules
it imported and of every source file the rules read, what every ``glob``
matched with the signatures of the folders it listed, and each target's
output. The next ``kiln build`` of the same targets first checks those: if
everything looks the same, there is nothing to do, and neither the build
file nor any rule runs. A listed folder that changed (a file added or
removed anywhere in it, ``rm -rf kiln-out`` at the root) only makes the
globs run again: the stamp still answers if they match what they matched.
An output removed or changed since (``rm -rf kiln-out``, a file of it
edited or deleted) is put back from the store (engine/kiln_out.py).

Sound because rules are deterministic functions of the files they read
(see docs/build-files.md) and because no stamp is recorded when a file was
modified in the same timestamp tick as the build started or later (racy:
judged against the file system's clock, see system/stat_signature.py),
when a source folder was used (its files are not tracked one by one), or
when the build failed. This module imports little: it runs before anything else.
"""

from __future__ import annotations

import json
import marshal
import os
import sqlite3
import time
from collections import defaultdict
from pathlib import Path

from kiln import __version__
from kiln.engine import kiln_out, retention
from kiln.system.stat_signature import FIELDS, is_racy, listing, signature, variable_digest

TYPE_CHECKING = False  # (typing itself costs milliseconds at start-up)

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from kiln.engine.loader import Project
    from kiln.engine.observe import Observation
    from kiln.engine.report import BuildReport
    from kiln.engine.sources import Sources
    from kiln.store.local import Store
    from kiln.system.stat_signature import Signature

ALL_TARGETS = "*"
# What a stamp must have been filed by to be read: a stamp of another Kiln,
# of another signature layout or of another stamp layout simply does not match.
LAYOUT = 3  # 2: globs filed with their matches, listed folders apart; 3: host reads
VERSION = (__version__, FIELDS, LAYOUT)


def stamp_key(targets: list[str] | None, settings: tuple[tuple[str, str], ...] = ()) -> str:
    """How a request for ``targets`` (``None``: all of them) is filed."""
    key = ALL_TARGETS if not targets else json.dumps(sorted(targets))
    # `kiln build -D name=value` settings: each set of values has its own
    # stamp, so a build with other values is never answered by this one's.
    if settings:
        key += " -D " + json.dumps(sorted(settings))
    return key


def clock(root: Path) -> tuple[int, int]:
    """The racy reference (start, window) of a build of ``root``: take it
    before the build file is read, for ``record``."""
    return kiln_out.clock(root)


def record(
    store: Store,
    project: Project,
    key: str,
    sources: Sources,
    report: BuildReport,
    loaded: tuple[int, int] | None = None,
    observed: Observation | None = None,
) -> bool:
    """File the stamp of a finished build (or drop a stale one); True if
    filed. ``loaded``: ``clock`` taken before the build file was read (the
    project's code files are judged racy by it; by the sources' otherwise).
    ``observed``: what the evaluation read from the host besides
    (engine/observe.py); something it did that no stamp captures (a
    program started) means no stamp."""
    from kiln.model.digest import Digest  # (start-up: not on the no-op path, which reads stamps)

    started, window = loaded or (sources.started_ns, sources.racy_ns)
    code = {path: signature(path) for path in project.code_files}
    # A racy folder is filed without a signature: its globs run again.
    listed: dict[str, Signature | None] = {}
    for folder in sources.listed:
        sig = signature(folder)
        trusted = sig is not None and not is_racy(sig, sources.started_ns, sources.racy_ns)
        listed[folder] = sig if trusted else None
    host_files = dict(observed.files) if observed is not None else {}
    if not report.ok:
        report.not_stamped = "the build failed"
    elif not sources.stampable:
        report.not_stamped = "a source folder was used, or a source changed while the build ran"
    elif observed is not None and observed.impure:
        report.not_stamped = observed.impure[0]
    elif any(s is None or is_racy(s, started, window) for s in code.values()):
        report.not_stamped = "the build file or a project module changed while the build ran"
    elif any(s is not None and is_racy(s, started, window) for s in host_files.values()):
        report.not_stamped = "a host file the build file read changed while the build ran"
    conn = store.conn
    if report.not_stamped is not None:
        conn.execute(
            "DELETE FROM build_stamps WHERE project = ? AND targets = ?", (str(project.root), key)
        )
        return False
    by_folder: dict[str, dict[str, Signature | None]] = defaultdict(dict)
    for path, sig in {**code, **sources.seen}.items():
        folder, name = os.path.split(path)
        by_folder[folder][name] = sig
    stamp = {
        "version": VERSION,
        "files": dict(by_folder),
        "listed": listed,
        "globs": dict(sources.globs),
        "targets": {t.name: (t.output, t.digest) for t in report.targets},
        "manifests": {
            t.name: kiln_out.manifest(store.cas, Digest.parse(t.digest))
            for t in report.targets
            if t.digest is not None
        },
        "steps": len(report.steps),
        "env": dict(observed.env) if observed is not None else {},
        "host_files": host_files,
        "host_listed": dict(observed.listed) if observed is not None else {},
    }
    conn.execute(
        "INSERT OR REPLACE INTO build_stamps(project, targets, stamp) VALUES (?, ?, ?)",
        (str(project.root), key, marshal.dumps(stamp)),
    )
    return True


def check(conn: sqlite3.Connection, root: Path, key: str) -> dict[str, Any] | None:
    """The stamp of the last build of these targets if no file it read has
    changed since, nor what a glob matches, nor what it read of the host
    (its outputs may be gone: see ``restore``)."""
    stamp, _ = compare(conn, root, key)
    return stamp


def compare(
    conn: sqlite3.Connection, root: Path, key: str
) -> tuple[dict[str, Any] | None, str | None]:
    """(the stamp, None) if it still holds, else (None, what differs)."""
    row = read(conn, root, key)
    if row is None:
        return None, _no_stamp(conn, root, key)
    return holds(row, root)


def read(conn: sqlite3.Connection, root: Path | str, key: str) -> bytes | None:
    """The stamp filed for ``key`` in the project at ``root``, as filed."""
    row = conn.execute(
        "SELECT stamp FROM build_stamps WHERE project = ? AND targets = ?", (str(root), key)
    ).fetchone()
    return row[0] if row is not None else None


def holds(
    row: bytes, root: Path | str, environ: Mapping[str, str] | None = None
) -> tuple[dict[str, Any] | None, str | None]:
    """(the stamp filed as ``row``, None) if it still holds, else (None,
    what differs); ``environ``: the environment it is judged in (this
    process's by default)."""
    stamp = marshal.loads(row)
    if stamp["version"] != VERSION:
        return None, "the stamp was filed by another version of Kiln"
    changed = host_change(stamp, environ)
    if changed is not None:
        return None, changed
    for folder, names in stamp["files"].items():
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None, f"the folder {folder} is gone"
        try:  # names relative to an open folder: no path walk per file
            for name, sig in names.items():
                if signature(name, fd) != sig:
                    return None, f"{os.path.join(folder, name)} changed"
        finally:
            os.close(fd)
    if any(sig is None or signature(f) != sig for f, sig in stamp["listed"].items()):
        return globs_hold(stamp, root)
    return stamp, None


def globs_hold(
    stamp: dict[str, Any], root: Path | str
) -> tuple[dict[str, Any] | None, str | None]:
    """(the stamp, None) if every glob it filed matches what it matched."""
    from kiln.engine.globs import glob_files  # (only when a listed folder moved)

    for pattern, matched in stamp["globs"].items():
        if glob_files(root, pattern) != matched:
            return None, f"glob({pattern!r}) matches other files"
    return stamp, None


def _no_stamp(conn: sqlite3.Connection, root: Path, key: str) -> str:
    """Why there is no stamp for ``key``: other ``-D`` settings than a
    stamped build of the same targets, or no stamped build at all."""
    targets, _, settings = key.partition(" -D ")
    for (other,) in conn.execute(
        "SELECT targets FROM build_stamps WHERE project = ?", (str(root),)
    ):
        other_targets, _, other_settings = other.partition(" -D ")
        if other_targets == targets and other_settings != settings:
            now = dict(json.loads(settings)) if settings else {}
            then = dict(json.loads(other_settings)) if other_settings else {}
            names = sorted(n for n in now.keys() | then.keys() if now.get(n) != then.get(n))
            return "other settings: " + ", ".join(f"-D {n}" for n in names)
    return "no stamp: the last build of these targets failed, was not stamped, or never ran"


def host_change(stamp: dict[str, Any], environ: Mapping[str, str] | None = None) -> str | None:
    """What differs from the host the stamped evaluation read (environment
    variables, in ``environ`` or this process's; files and folders outside
    the project's sources), or None."""
    environ = os.environ if environ is None else environ
    for name, digest in stamp["env"].items():
        if variable_digest(environ.get(name)) != digest:
            return f"environment variable {name} changed"
    for name, sig in stamp["host_files"].items():
        if signature(name) != sig:
            return f"the file {name} changed"
    for name, digest in stamp["host_listed"].items():
        if listing(name) != digest:
            return f"the folder {name} has other entries"
    return None


def restore(cas_root: Path, root: Path, stamp: dict[str, Any]) -> list[str] | None:
    """Put back the stamped outputs that were removed or replaced since
    (sources unchanged, so the values are too), linking blobs out of the
    store at ``cas_root``: the targets restored, or None if one of them
    cannot be (a full build then makes it)."""
    restored = []
    for name, (_, digest) in sorted(stamp["targets"].items()):
        if kiln_out.is_current(root, name, digest):
            continue
        entries = stamp["manifests"].get(name)
        if entries is None or not kiln_out.restore(cas_root, root, name, digest, entries):
            return None
        restored.append(name)
    return restored


def record_answer(conn: sqlite3.Connection, root: Path, key: str) -> None:
    """File in the build history a build answered from its stamp (no steps);
    one in ``retention.PRUNE_EVERY`` also prunes the history."""
    now = time.time()
    cur = conn.execute(
        "INSERT INTO builds(project, targets, started, finished, status) "
        "VALUES (?, ?, ?, ?, 'unchanged')",
        (str(root), key, now, now),
    )
    if cur.lastrowid and retention.due(cur.lastrowid):
        retention.prune(conn, sweep=retention.SWEEP_ROWS)


def answer(
    conn: sqlite3.Connection,
    cas_root: Path,
    root: Path,
    key: str,
    holding: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[str]] | None:
    """A build answered from its stamp: (the stamp, the targets put back),
    filed in the history; None when the stamp cannot answer (``check``,
    ``restore``) and the build must run. ``holding``: the stamp, already
    found to hold (by the resident server, which watches the project)."""
    unchanged = holding if holding is not None else check(conn, root, key)
    restored = restore(cas_root, root, unchanged) if unchanged is not None else None
    if unchanged is None or restored is None:
        return None
    record_answer(conn, root, key)
    return unchanged, restored
