"""What a ``glob`` in a build file matches, and the folders it depends on.

Kiln's own names at the project root (``kiln-out``) are never matched nor
walked: outputs are not sources, and removing them (``rm -rf kiln-out``,
``kiln clean``) changes no glob. Kept light to import: a no-op build whose
listed folders moved runs the globs again (engine/stamp.py) to see whether
what they match did.
"""

from __future__ import annotations

import glob as globlib
import os

TYPE_CHECKING = False  # (typing itself costs milliseconds at start-up)

if TYPE_CHECKING:
    from pathlib import Path

# Names at the project root that are Kiln's, not the project's.
KILN_OWNED = ("kiln-out",)


def _owned(rel: str) -> bool:
    return rel.split("/", 1)[0] in KILN_OWNED


def glob_files(root: str | Path, pattern: str) -> list[str]:
    """Files under ``root`` matching ``pattern``, relative and sorted."""
    return sorted(
        rel
        for rel in map(os.path.normpath, globlib.glob(pattern, root_dir=root, recursive=True))
        if not _owned(rel) and os.path.isfile(os.path.join(root, rel))
    )


def glob_folders(root: str | Path, pattern: str) -> list[str]:
    """Every folder whose listing the matches of ``pattern`` depend on: the
    folder of its last fixed part and, when a wildcard comes before the file
    name, all folders below it (but Kiln's own). A listing change shows in
    the folder's mtime."""
    parts = pattern.split("/")
    fixed = []
    for part in parts[:-1]:
        if globlib.has_magic(part):
            break
        fixed.append(part)
    base = os.path.join(root, *fixed)
    if len(fixed) == len(parts) - 1:
        return [base]
    found = []
    seen: set[tuple[int, int]] = set()
    # Through links to folders too, as glob's ** goes (each folder once:
    # a link back up would loop).
    for folder, dirs, _ in os.walk(base, followlinks=True):
        try:
            st = os.stat(folder)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        found.append(folder)
        if os.path.samefile(folder, root):
            dirs[:] = [d for d in dirs if d not in KILN_OWNED]
    return found
