"""Helpers for engine tests: projects in temporary folders, built through
the Python API, and the steps each build ran."""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln import api
from kiln.api import BuildReport, BuildRequest, StepStatus
from kiln.rules.toolchains import default_cache
from kiln.store import Store

# The store of the C-in-wasm tests (tally, site, the C rules), kept between
# runs: the toolchain's download and its compiled module (tens of seconds
# the first time) are reused.
C_STORE = default_cache() / "test-stores" / "c-wasm"


@pytest.fixture(name="c_store", scope="module")
def c_store_fixture() -> Iterator[Store]:
    """``C_STORE``, open (import this fixture into a test module to use it)."""
    with Store(C_STORE) as store:
        yield store

# A project whose one wasm step makes a memoized call per word of
# words.txt (tests/exec/guests/caller.wat and callee.wat).
CALLS_KILNFILE = """
from kiln.build import read_bytes, source, target, wasm

@target
async def shout():
    words = read_bytes(source("words.txt")).decode().split()
    return await wasm(source("caller.wasm"), "run", *words,
                      inputs=[source("callee.wasm")], description="shout")
"""
WAT_GUESTS = Path(__file__).parents[1] / "exec" / "guests"


def calls_project(root: Path, words: str) -> Path:
    """``CALLS_KILNFILE`` at ``root``, with its guests and ``words``."""
    import wasmtime  # (only the tests of calls)

    files: dict[str, str | bytes] = {
        f"{name}.wasm": bytes(wasmtime.wat2wasm((WAT_GUESTS / f"{name}.wat").read_text()))
        for name in ("caller", "callee")
    }
    return write_project(root, CALLS_KILNFILE, {**files, "words.txt": words})


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
