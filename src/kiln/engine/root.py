"""Where a project is: the nearest folder holding a build file. Light to
import (a no-op build needs it before anything else)."""

from __future__ import annotations

from pathlib import Path

from kiln import errors

BUILD_FILE = "kilnfile.py"


def find_root(start: Path) -> Path:
    """The nearest folder at or above ``start`` holding a build file."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / BUILD_FILE).is_file():
            return folder
    raise errors.KilnError(
        f"no {BUILD_FILE} in {start} or any folder above it",
        hint=f"run kiln inside a project, or create {BUILD_FILE} (see docs/build-files.md)",
        exit_code=errors.ExitCode.BAD_INPUT,
    )
