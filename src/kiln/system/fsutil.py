"""Small file-system helpers shared by the engine and the executors."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path

FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree(root: Path) -> None:
    """Remove ``root`` (a file, link or folder), whatever the modes inside
    and however deep it goes, following no symlink."""
    if root.is_symlink() or root.is_file():
        root.unlink()
        return
    if not root.exists():
        return
    os.chmod(root, stat.S_IRWXU)
    top = os.open(root, FOLDER_FLAGS)
    try:
        _remove_contents(top)
    finally:
        os.close(top)
    root.rmdir()


def _remove_contents(top: int) -> None:
    """Empty the open folder ``top``, depth first and without recursion
    (``shutil.rmtree`` recurses on Python 3.11; a step may nest folders
    thousands deep), holding one descriptor: down into a subfolder, back up
    through its ``..`` (checked to be the folder it came from)."""
    fd = os.dup(top)
    below: list[tuple[str, tuple[int, int]]] = []  # (subfolder entered, the folder it is in)
    try:
        while True:
            with os.scandir(fd) as entries:
                sub = None
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        sub = entry.name
                        break
                    os.unlink(entry.name, dir_fd=fd)
            if sub is not None:  # a folder made unreadable or unwritable opens up first
                os.chmod(sub, stat.S_IRWXU, dir_fd=fd)
                here = os.fstat(fd)
                fd = reopen_folder(fd, sub)
                below.append((sub, (here.st_dev, here.st_ino)))
                continue
            if not below:
                return
            name, parent = below.pop()
            fd = reopen_folder(fd, "..")
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != parent:
                raise OSError(errno.ESTALE, "a folder moved while it was being removed")
            os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)


def reopen_folder(fd: int, name: str) -> int:
    """The folder ``name`` (a subfolder, or ``..``) relative to the open
    folder ``fd``, without following a symlink; ``fd`` is closed once it opens."""
    new = os.open(name, FOLDER_FLAGS, dir_fd=fd)
    os.close(fd)
    return new


def empty_folder(folder: Path) -> None:
    """Remove everything inside ``folder`` and keep the folder itself."""
    with os.scandir(folder) as entries:
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                remove_tree(path)
            else:
                path.unlink()


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
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=folder)
        return
    os.chmod(name, stat.S_IRWXU, dir_fd=folder)
    fd = os.open(name, FOLDER_FLAGS, dir_fd=folder)
    try:
        _remove_contents(fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=folder)


def fd_path(fd: int) -> Path:
    """A path that names the open folder ``fd`` itself (Linux's
    ``/proc/self/fd``): paths below it cannot be redirected by a symlink
    swapped into the folder's ancestors."""
    return Path(f"/proc/self/fd/{fd}")
