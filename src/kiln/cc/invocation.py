"""One call of the compiler launcher, and what the launcher is to do next.

The launcher (``kiln cc``, the native ``kiln-cc`` client, or a masquerading
link named like a compiler) hands over an ``Invocation``; the answer is
either ``Ran`` (the compile was answered from the cache or run in the
sandbox: pass on its streams and exit code) or ``Exec`` (not one cacheable
compile: the launcher replaces itself with the real compiler).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Invocation:
    """What the launcher was asked, as it saw it."""

    argv: list[str]  # argv[0] is how the launcher was called
    cwd: str
    env: dict[str, str]
    launcher: str = ""  # the launcher's own file (skipped when searching PATH)
    umask: int = 0o022


@dataclass(frozen=True)
class Ran:
    """The compile is done: these are its streams and exit code."""

    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""


@dataclass(frozen=True)
class Exec:
    """Run the real compiler directly with ``argv`` (``argv[0]`` a path)."""

    argv: list[str] = field(default_factory=list)
