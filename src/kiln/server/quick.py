"""No-op builds answered by the resident server itself, without a fork.

A plain ``kiln build`` request (the options ``kiln.cli.build_options``
parses) whose build stamp holds (``kiln.server.projects``) and whose
outputs are all in place is answered in the server's own loop: the answer
is filed in the history and the report's text goes back to the client,
which prints it. Anything else (the stamp does not hold, an output must be
put back, other options) is left to a forked command as before, told
whether the stamp was checked so that it is not checked twice.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path
from typing import Any

from kiln.api import BuildReport
from kiln.cli import build_options
from kiln.cli.report import show_report
from kiln.engine import kiln_out
from kiln.engine.root import find_root
from kiln.errors import KilnError
from kiln.server.projects import Projects


class _Output(io.TextIOBase):
    """A text stream that records what is written to it, in order, with
    the descriptor it stands for (1: stdout, 2: stderr)."""

    def __init__(self, fd: int, writes: list[list[Any]]) -> None:
        self._fd = fd
        self._writes = writes

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self._writes and self._writes[-1][0] == self._fd:
            self._writes[-1][1] += text
        else:
            self._writes.append([self._fd, text])
        return len(text)

    def isatty(self) -> bool:
        return False


def answer(projects: Projects, request: dict[str, Any]) -> dict[str, Any] | None:
    """The answer to a ``run`` request, when the server can give it at once:
    ``{"output": [[fd, text], ...], "exit": 0}``. None when the command must
    run; ``request["stamp_checked"]`` is then set if the stamp was found
    not to hold."""
    argv = request.get("argv")
    if request.get("stamp_checked") or not isinstance(argv, list) or argv[:1] != ["build"]:
        return None
    parsed = build_options.parse([str(a) for a in argv])
    if parsed is None:
        return None
    build_request, as_json = parsed
    if not build_request.from_stamp:
        return None
    started = time.perf_counter()
    cwd = str(request["cwd"])
    try:
        root = find_root(Path(cwd))
    except (KilnError, OSError):
        return None  # (the command says what is wrong)
    request["project_root"] = str(root)
    key = build_request.stamp_key
    held, _differs = projects.holding_stamp(str(root), key, request["env"])
    if held is None:
        request["stamp_checked"] = True
        return None
    if request.get("check_only"):
        return None  # (the server checking a stamp a build just filed)
    for name, (_output, digest) in held["targets"].items():
        if not kiln_out.is_current(root, name, digest):
            return None  # the command puts it back (with the client's umask)
    projects.record_answer(str(root), key)
    projects.answered += 1
    report = BuildReport.from_stamp(held, [], time.perf_counter() - started)
    return {"output": render(report, as_json, cwd), "exit": 0}


def render(report: BuildReport, as_json: bool, cwd: str) -> list[list[Any]]:
    """What ``show_report`` prints for ``report``, as [fd, text] pairs in order."""
    writes: list[list[Any]] = []
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Output(1, writes), _Output(2, writes)
    try:
        show_report(report, as_json, cwd=cwd)
    finally:
        sys.stdout, sys.stderr = saved
    return writes
