"""Small file-system helpers shared by the engine and the executors."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Sequence
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


FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class NotAFolder(Exception):
    """A path component that should be a folder is a symlink or a file."""

    def __init__(self, where: str) -> None:
        super().__init__(f"{where!r} is not a folder (a symlink or a file)")
        self.where = where


def open_folder_beneath(top: int, parts: Sequence[str], create: bool = False) -> int:
    """A descriptor of the folder ``parts`` below the open folder ``top``,
    reached one component at a time without following any symlink, so a
    name a step made can never lead elsewhere on the host. Missing folders
    are made when ``create`` (else ``FileNotFoundError``); ``NotAFolder``
    names a component that is a symlink or a file."""
    fd = os.dup(top)
    try:
        for i, name in enumerate(parts):
            if name in ("", ".", "..") or "/" in name:
                raise NotAFolder("/".join(parts[: i + 1]))
            try:
                sub = os.open(name, FOLDER_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o777, dir_fd=fd)
                sub = _open_subfolder(fd, name, parts[: i + 1])
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise NotAFolder("/".join(parts[: i + 1])) from None
                raise
            os.close(fd)
            fd = sub
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_subfolder(fd: int, name: str, parts: Sequence[str]) -> int:
    try:
        return os.open(name, FOLDER_FLAGS, dir_fd=fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise NotAFolder("/".join(parts)) from None
        raise


def remove_entry_at(folder: int, name: str) -> None:
    """Remove ``name`` (a file, symlink or folder tree) from the open folder
    ``folder`` without following symlinks; nothing if it is not there."""
    try:
        st = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=folder)
    else:
        os.unlink(name, dir_fd=folder)


def fd_path(fd: int) -> Path:
    """A path that names the open folder ``fd`` itself (Linux's
    ``/proc/self/fd``): paths below it cannot be redirected by a symlink
    swapped into the folder's ancestors."""
    return Path(f"/proc/self/fd/{fd}")
