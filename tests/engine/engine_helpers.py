"""Helpers for engine tests: projects in temporary folders, built through
the Python API, and the steps each build ran."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

from kiln import api
from kiln.api import BuildReport, BuildRequest, StepStatus


def write_project(root: Path, kilnfile: str, files: dict[str, str | bytes] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "kilnfile.py").write_text(textwrap.dedent(kilnfile))
    for path, content in (files or {}).items():
        p = root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
    return root


def build(
    store, root: Path, *targets: str, executors=None, observer=None, **options
) -> BuildReport:
    """Build through the engine's entry, never answered from the stamp
    (each call evaluates), in ``store``."""
    request = BuildRequest(targets, cwd=root, store=store.home, from_stamp=False, **options)
    return api.build(request, observer, store=store, executors=executors)


def ran(report: BuildReport) -> list[str]:
    """``target: step`` of every step that executed, sorted."""
    return sorted(
        f"{s.target}: {s.description}" for s in report.steps if s.status is StepStatus.EXECUTED
    )


def settle(root: Path, path: Path) -> None:
    """Wait until the file system's clock has moved past ``path``'s last
    change: a build starting in the same tick could not trust it."""
    from kiln.engine import stamp

    changed = max(os.stat(path).st_mtime_ns, os.stat(path).st_ctime_ns)
    while stamp.clock(root)[0] <= changed:
        time.sleep(0.001)
