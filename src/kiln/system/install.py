"""Installing one of Kiln's native clients in a folder of the user's
(``kiln cc --setup``, ``kiln server install-client``): the binary built for
this machine and its settings file, each written whole or not at all, and
never in the place of a file that is not Kiln's."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.errors import KilnError
from kiln.server.client import SOCKET_PATH_LIMIT

if TYPE_CHECKING:
    from kiln.exec.zygote import Helper


def client_binary(helper: Helper, what: str) -> bytes:
    """The bytes of ``helper`` built for this machine; ``KilnError`` if
    Kiln ships none for it."""
    path = helper.binary()
    if path is None:
        raise KilnError(
            f"{what} is not built for this machine",
            hint="Kiln's native clients are built for x86_64 and aarch64 Linux",
        )
    return path.read_bytes()


def check_folder(folder: Path, what: str) -> None:
    """Refuse a path that exists and is not a folder (the folder is made later)."""
    if folder.exists() and not folder.is_dir():
        raise KilnError(f"{folder} is not a folder", hint=f"name a folder for {what}")


def settings(socket: str, lines: list[str], fallback: list[str], what: str) -> bytes:
    """A client's settings file: the socket it talks to, ``lines``, then
    the command it runs when it cannot be served, one argument a line."""
    for text in (socket, *lines, *fallback):
        if "\n" in text or "\0" in text:
            raise KilnError(
                f"{what} cannot carry {text!r}", hint="no newline or NUL in its settings"
            )
    if not os.path.isabs(socket) or len(os.fsencode(socket)) > SOCKET_PATH_LIMIT:
        raise KilnError(f"not a usable socket path: {socket}")
    if not fallback or not os.path.isabs(fallback[0]):
        raise KilnError(f"the fallback of {what} must start with an absolute program: {fallback!r}")
    return "".join(f"{line}\n" for line in (socket, *lines, *fallback)).encode()


def refuse_unless_ours(path: Path, ours: Callable[[Path], bool], what: str) -> None:
    """Raise ``KilnError`` if ``path`` exists (as anything, a dangling link
    too) and ``ours`` does not recognise it as Kiln's ``what``."""
    if os.path.lexists(path) and not ours(path):
        raise KilnError(
            f"{path} exists and is not {what}",
            hint="move it away, or install in another folder",
        )


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """``data`` at ``path`` with ``mode``: the old file, or all of the new."""
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        with open(staged, "wb") as f:
            f.write(data)
        os.chmod(staged, mode)
        os.replace(staged, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)


def link_atomically(path: Path, target: str) -> None:
    """A symbolic link to ``target`` at ``path``, replacing what was there."""
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(staged)
    os.symlink(target, staged)
    try:
        os.replace(staged, path)
    except BaseException:
        os.unlink(staged)
        raise
