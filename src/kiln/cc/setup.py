"""Installing the launcher: ``kiln-cc``, its configuration and its masks.

A launcher folder holds the native client as ``kiln-cc``, ``kiln-cc.conf``
(the cc service's socket, then the fallback command, one argument a line;
see ``client.c``) and links named like compilers pointing at ``kiln-cc``,
for putting the folder first on ``PATH`` ("masquerading").
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from kiln.cc import native_client
from kiln.system import install

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
    conf = install.settings(socket, [], fallback, "the launcher")
    client = install.client_binary(native_client.CLIENT, "kiln cc's native launcher")
    install.check_folder(folder, "the launcher")
    for name in MASKS:
        install.refuse_unless_ours(folder / name, _is_mask, "kiln's launcher")
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    made = [folder / LAUNCHER, folder / CONF]
    install.write_atomically(made[0], client, 0o755)
    install.write_atomically(made[1], conf)
    for name in MASKS:
        install.link_atomically(folder / name, LAUNCHER)
        made.append(folder / name)
    return made


def _is_mask(path: Path) -> bool:
    """A link to the launcher next to it."""
    try:
        return os.readlink(path) == LAUNCHER
    except OSError:  # (not a link)
        return False
