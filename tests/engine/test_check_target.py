"""`kiln check TARGET`: every step of a target run again, ignoring the cache,
and compared with its recorded result."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import threading
from pathlib import Path

import pytest
from engine_helpers import write_project

from conftest import KILN
from kiln.cli.doctor import check_bubblewrap
from kiln.exec.native import bwrap_path


def _kiln(home: Path, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KILN_HOME": str(home)}
    return subprocess.run([KILN, *args], cwd=root, env=env, capture_output=True, text=True)


@pytest.mark.slow
@pytest.mark.skipif(
    bwrap_path() is None or check_bubblewrap().status != "ok",
    reason="bubblewrap cannot make sandboxes here (see `kiln doctor`)",
)
def test_a_step_whose_output_changes_when_run_again_is_reported(home, tmp_path) -> None:
    root = write_project(
        tmp_path / "p",
        """
from kiln.build import native, target

@target
async def steady():
    return await native("sh", "-c", "echo same > out.txt", tools=["sh"], outputs=["out.txt"],
                        description="steady")

@target
async def shaky():
    return await native("sh", "-c", "date +%N > out.txt", tools=["sh", "date"],
                        outputs=["out.txt"], description="shaky")
""",
    )
    assert _kiln(home, root, "build").returncode == 0
    steady = _kiln(home, root, "check", "steady")
    assert steady.returncode == 0 and "1 step run again: all identical" in steady.stderr
    shaky = _kiln(home, root, "check", "shaky", "--json")
    assert shaky.returncode == 1
    [report] = json.loads(shaky.stdout)
    assert report["step"] == "shaky" and not report["identical"]
    assert [d["what"] for d in report["differences"]] == ["output out.txt"]
    # The recorded result is untouched: the build still uses it.
    assert "nothing to do" in _kiln(home, root, "build").stderr


def test_a_key_without_an_engine_is_a_clear_error(home, tmp_path) -> None:
    root = write_project(tmp_path / "p", "from kiln.build import target\n")
    proc = _kiln(home, root, "check", "a" * 64 + "/10")
    assert proc.returncode == 2 and "needs a second engine" in proc.stderr


def test_check_runs_steps_again_jobs_at_a_time(store, example: Path) -> None:
    """`kiln check -j 2`: two steps are run again at once (each waits here
    for the other; one at a time, the first would wait in vain)."""
    from engine_helpers import build

    from kiln.engine.check import rebuild_steps

    records = build(store, example, "counts").steps
    both, arrived = threading.Barrier(2, timeout=30), itertools.count()
    checks = rebuild_steps(store, records, lambda step: next(arrived) < 2 and both.wait(), jobs=2)
    assert len(checks) == 5 and all(c.identical for c in checks)
    with pytest.raises(threading.BrokenBarrierError):
        rebuild_steps(store, records[:1], lambda step: threading.Barrier(2, timeout=0.1).wait())


def test_check_takes_jobs_like_build(home, example: Path) -> None:
    proc = _kiln(home, example, "check", "-j", "2", "counts", "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == 5
    proc = _kiln(home, example, "check", "--jobs", "0", "counts")
    assert proc.returncode == 2 and "'--jobs'" in proc.stderr
