"""Installing the launcher: ``kiln-cc``, its configuration and its masks.

A launcher folder holds the native client as ``kiln-cc``, ``kiln-cc.conf``
(the cc service's socket, then the fallback command, one argument a line;
see ``client.c``) and links named like compilers pointing at ``kiln-cc``,
for putting the folder first on ``PATH`` ("masquerading").
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from kiln.cc import native_client
from kiln.errors import KilnError
from kiln.server.client import SOCKET_PATH_LIMIT

LAUNCHER = "kiln-cc"
CONF = "kiln-cc.conf"
MASKS = ("cc", "gcc", "g++", "c++", "clang", "clang++")


def default_fallback() -> list[str]:
    """The command the client runs when the service cannot answer; the
    invocation's whole argv follows it. (-P: the folder being compiled in
    is not put on the import path, where a ``kiln`` of its own would win.)"""
    return [sys.executable, "-P", "-m", "kiln.cc.launch"]


def install_launcher(folder: Path, socket: str, fallback: list[str]) -> list[Path]:
    """Put the launcher for the service at ``socket`` in ``folder`` (made if
    needed), replacing an older one; the files made. Raises ``KilnError``
    rather than replace a file of the user's."""
    _check_conf(socket, fallback)
    client = native_client.binary()
    if client is None:
        raise KilnError(
            "kiln cc has no native launcher for this machine",
            hint="the launcher is built for x86_64 and aarch64 Linux",
        )
    if folder.exists() and not folder.is_dir():
        raise KilnError(f"{folder} is not a folder", hint="name a folder for the launcher")
    for name in MASKS:
        _check_ours(folder / name)
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    made = [folder / LAUNCHER, folder / CONF]
    _write_atomically(made[0], client.read_bytes(), 0o755)
    _write_atomically(made[1], "".join(f"{line}\n" for line in (socket, *fallback)).encode())
    for name in MASKS:
        _link_atomically(folder / name, LAUNCHER)
        made.append(folder / name)
    return made


def _check_conf(socket: str, fallback: list[str]) -> None:
    for text in (socket, *fallback):
        if "\n" in text or "\0" in text:
            raise KilnError(
                f"the launcher cannot carry {text!r}", hint="no newline or NUL in its settings"
            )
    if not os.path.isabs(socket) or len(os.fsencode(socket)) > SOCKET_PATH_LIMIT:
        raise KilnError(f"not a usable socket path: {socket}")
    if not fallback or not os.path.isabs(fallback[0]):
        raise KilnError(
            f"the launcher's fallback must start with an absolute program: {fallback!r}"
        )


def _check_ours(path: Path) -> None:
    """Refuse to replace anything but a link to the launcher (or nothing)."""
    try:
        target = os.readlink(path)
    except FileNotFoundError:
        return
    except OSError:  # (not a link)
        target = None
    if target != LAUNCHER:
        raise KilnError(
            f"{path} exists and is not kiln's launcher",
            hint="move it away, or install the launcher in another folder",
        )


def _write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        with open(staged, "wb") as f:
            f.write(data)
        os.chmod(staged, mode)
        os.replace(staged, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)


def _link_atomically(path: Path, target: str) -> None:
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(staged)
    os.symlink(target, staged)
    try:
        os.replace(staged, path)
    except BaseException:
        os.unlink(staged)
        raise
