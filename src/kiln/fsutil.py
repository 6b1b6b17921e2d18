"""Small file-system helpers shared by the engine and the executors."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path


def remove_tree(root: Path) -> None:
    """Remove ``root`` (a file, link or folder), whatever the modes inside."""
    if root.is_symlink() or root.is_file():
        root.unlink()
        return
    if not root.exists():
        return
    pending = [str(root)]
    while pending:  # folders made unreadable or unwritable must open up first
        folder = pending.pop()
        os.chmod(folder, stat.S_IRWXU)
        pending += [e.path for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]
    shutil.rmtree(root)


def empty_folder(folder: Path) -> None:
    """Remove everything inside ``folder`` and keep the folder itself."""
    with os.scandir(folder) as entries:
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                remove_tree(path)
            else:
                path.unlink()
