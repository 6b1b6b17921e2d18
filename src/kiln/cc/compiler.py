"""Which compiler a launcher call means, and where it searches for headers.

Three ways in: ``kiln-cc gcc ARGS`` (and ``kiln cc gcc ARGS``, CMake's
``*_COMPILER_LAUNCHER``), where the compiler is the first argument; and a
*masquerade* link named like the compiler (``gcc ARGS`` with a folder of such
links first on ``PATH``), where the real compiler is the next one of that
name on ``PATH`` that is not the launcher again.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from dataclasses import dataclass

LAUNCHER_NAMES = ("kiln-cc",)
# Drivers whose command lines ``kiln.cc.args`` understands: GCC's and Clang's,
# with a target prefix (x86_64-linux-gnu-gcc) or a version (gcc-12, clang-16).
KNOWN_DRIVER = re.compile(r"(?:[\w.]+-)*(?:gcc|g\+\+|cc|c\+\+|clang|clang\+\+)(?:-[0-9][\w.]*)?")


@dataclass(frozen=True)
class Compiler:
    """The compiler a call runs: ``path`` as found (what runs), ``real`` the
    file it resolves to, and the name it was asked for."""

    name: str
    path: str
    real: str

    @property
    def known(self) -> bool:
        """Whether it is a GCC- or Clang-style driver (by either name)."""
        return any(KNOWN_DRIVER.fullmatch(os.path.basename(n)) for n in (self.name, self.real))


class NotFound(Exception):
    """The compiler named cannot be found."""


def split_launch(argv: list[str]) -> tuple[str, list[str]] | None:
    """(compiler name, its arguments) from a launcher's argv; None when the
    launcher was called by its own name without a compiler."""
    if os.path.basename(argv[0]) in LAUNCHER_NAMES:
        return None if len(argv) < 2 else (argv[1], argv[2:])
    return os.path.basename(argv[0]), argv[1:]


def find(name: str, cwd: str, path_var: str, launcher: str) -> Compiler:
    """The compiler ``name`` (a path, or a name searched on ``path_var``),
    never the launcher itself nor a link to it."""
    ours = _launcher_files(launcher)
    if "/" in name:
        path = os.path.join(cwd, name)
        if not os.access(path, os.X_OK) or os.path.realpath(path) in ours:
            raise NotFound(f"compiler {name!r} is not an executable file")
        return Compiler(name, path, os.path.realpath(path))
    for folder in path_var.split(os.pathsep):
        path = os.path.join(cwd, folder or ".", name)
        if not os.path.isfile(path) or not os.access(path, os.X_OK):
            continue
        real = os.path.realpath(path)
        if real in ours or os.path.basename(real) in LAUNCHER_NAMES:
            continue
        return Compiler(name, path, real)
    raise NotFound(f"compiler {name!r} not found on PATH (other than kiln's own launcher)")


def _launcher_files(launcher: str) -> set[str]:
    return {os.path.realpath(launcher)} if launcher else set()


@functools.lru_cache(maxsize=64)
def system_include_dirs(real: str, language: str, signature: tuple[int, int]) -> tuple[str, ...]:
    """The folders ``real`` searches for ``<...>`` headers after those of
    the command line, in order, as the driver itself reports them
    (``-E -v``); ``signature`` (size, mtime) renews the answer when the
    compiler file changes."""
    del signature
    try:
        run = subprocess.run(
            [real, "-x", language, "-E", "-v", "-"],
            input=b"", capture_output=True, timeout=30, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return ()
    folders: list[str] = []
    listing = False
    for line in run.stderr.decode(errors="replace").splitlines():
        if line.startswith("#include <...> search starts here:"):
            listing = True
        elif line.startswith("End of search list."):
            break
        elif listing and line.startswith(" "):
            folders.append(os.path.normpath(line.strip().removesuffix(" (framework directory)")))
    return tuple(folders)
