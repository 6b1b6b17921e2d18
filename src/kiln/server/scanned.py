"""Which source folders of a watched project are unchanged since a command
scanned them (see ``kiln.store.unchanged_folders``).

A command the server runs sends back, as it ends, the folders its puts
scanned into the stat cache; they are filed with the moment (the watch's
``seq``) the command was handed over, since what it scanned is what the
folders held at that moment or later. Before handing over the next
command, the server lists the folders with no event since: not the folder
itself (its listing), not any entry directly in it, and none it cannot
vouch for (a folder holding a symbolic link or a file with several hard
links is always scanned).
"""

from __future__ import annotations

import os

from kiln.server.watch import ProjectWatch

MAX_FOLDERS = 200_000  # remembered per project


class ScannedFolders:
    """Per project: folder -> the moment a command that scanned it was handed over."""

    def __init__(self) -> None:
        self._at: dict[str, dict[str, int]] = {}
        # The watch whose moments those are (a watch made again counts anew).
        self._watch: dict[str, ProjectWatch] = {}

    def unchanged(self, root: str, watch: ProjectWatch) -> list[str]:
        """The folders of ``root`` no event touched since they were scanned
        (the watch's events read)."""
        if self._watch.get(root) is not watch:
            self._at.pop(root, None)
            self._watch[root] = watch
            return []
        at = self._at.get(root)
        if not at:
            return []
        changes = watch.changes_after(min(at.values()))
        if changes is None:
            self._at.pop(root, None)  # (it cannot tell: forget, scan again)
            return []
        dirty = changes | {os.path.dirname(p) for p in changes} | watch.unvouched_folders()
        return [f for f in at if f not in dirty and watch.vouches_for_folder(f)]

    def learned(self, root: str, folders: list[str], seq: int, watch: ProjectWatch) -> None:
        """A command handed over at ``seq`` of ``watch`` scanned ``folders``
        (those of ``root`` are kept, if that is still the project's watch)."""
        if self._watch.get(root) is not watch:
            return
        prefix = root.rstrip("/") + "/"
        at = self._at.setdefault(root, {})
        for folder in folders:
            if isinstance(folder, str) and (folder == root or folder.startswith(prefix)):
                at[folder] = max(seq, at.get(folder, seq))
        if len(at) > MAX_FOLDERS:
            self._at.pop(root)

    def forget(self, root: str) -> None:
        self._at.pop(root, None)
        self._watch.pop(root, None)
