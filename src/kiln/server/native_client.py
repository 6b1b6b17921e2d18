"""The native ``kiln`` client of the resident server: its checked-in static
builds, and installing it (``kiln server install-client FOLDER``).

``client.c`` is built like ``kiln-cc`` (``kiln.cc.native_client``): a
static musl binary per architecture, made by ziglang and checked in next to
its source; ``./dev kiln-client`` makes them again. Installed, a folder
holds it as ``kiln`` next to ``kiln.conf``: the server's socket, the
store's real path, then the fallback command (Kiln in this Python), one
argument a line. Put first on ``PATH``, it hands ``kiln build``, ``kiln
check`` and ``kiln gocacheprog`` to the store's server and runs everything
else, and all of it without a server, with the fallback.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from kiln.exec.zygote import Helper
from kiln.server.client import place
from kiln.system import install

CLIENT = Helper(Path(__file__).parent / "client.c", "kiln-client")
binary = CLIENT.binary  # the client built for this machine, if Kiln ships one
rebuild = CLIENT.rebuild  # ./dev kiln-client

NAME = "kiln"
CONF = "kiln.conf"
# Text every build of the client holds (client.c's INSTALL_COMMAND): a file
# with it is one this module installed, which it may replace.
MARK = b"kiln server install-client"
BINARY_LIMIT = 16 << 20  # bytes read of a file when looking for MARK


def default_fallback() -> list[str]:
    """What the client runs when the server does not take a command, the
    command's arguments after it: Kiln in this Python. (-P: the current
    folder is not put on the import path, where a ``kiln`` of its own
    would win.)"""
    return [sys.executable, "-P", "-m", "kiln"]


def install_client(folder: Path, home: Path, fallback: list[str] | None = None) -> list[Path]:
    """Put the client for the server of store ``home`` in ``folder`` (made
    if needed), replacing an older one; the files made. Raises
    ``KilnError`` rather than replace a file that is not Kiln's."""
    where = place(home)
    conf = install.settings(
        where.socket, [where.home], fallback or default_fallback(), "the native kiln client"
    )
    client = install.client_binary(CLIENT, "the native kiln client")
    install.check_folder(folder, "the native kiln client")
    install.refuse_unless_ours(folder / NAME, _is_client, "Kiln's native client")
    install.refuse_unless_ours(folder / CONF, _is_settings, "the native kiln client's settings")
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    made = [folder / NAME, folder / CONF]
    install.write_atomically(made[0], client, 0o755)
    install.write_atomically(made[1], conf)
    return made


def _regular_file(path: Path) -> bytes | None:
    """The start of ``path`` if it is a regular file (not a link to one)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        with open(path, "rb") as f:
            return f.read(BINARY_LIMIT)
    except OSError:
        return None


def _is_client(path: Path) -> bool:
    data = _regular_file(path)
    return data is not None and data.startswith(b"\x7fELF") and MARK in data


def _is_settings(path: Path) -> bool:
    """Settings as ``install_client`` writes them: a socket, then absolute paths."""
    data = _regular_file(path)
    lines = data.split(b"\n") if data is not None else []
    return (
        len(lines) >= 4  # (and the empty one after the last newline)
        and lines[0].startswith(b"/") and lines[0].endswith(b".sock")
        and all(line.startswith(b"/") for line in lines[1:3])
    )  # fmt: skip


if __name__ == "__main__":
    rebuild()
