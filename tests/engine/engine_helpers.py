"""Helpers for engine tests: projects in temporary folders, built through
the Python API, and the steps each build ran."""

from __future__ import annotations

import textwrap
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
