"""Nothing of a native build stays behind on the host: sandbox folders
(with their input links) and cgroups go when a build ends, and those of a
build killed with SIGKILL go at the next build or `kiln gc`."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import KILN, run_kiln
from native_helpers import needs_bubblewrap

pytestmark = needs_bubblewrap

KILNFILE = """
from kiln.build import native, target

@target
async def wait():
    return await native("sh", "-c", "{script}", tools=["sh", "sleep", "touch"], outputs=["out.txt"],
                        description="wait")
"""


CGROUPS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup/memory"))


def _project(root: Path, script: str) -> Path:
    root.mkdir(exist_ok=True)
    (root / "kilnfile.py").write_text(KILNFILE.format(script=script))
    return root


def _leftovers(home: Path, pid: int) -> list[str]:
    found = [p.name for p in (home / "sandboxes").glob("*")]
    for base in CGROUPS:
        if base.is_dir():
            found += [str(p) for p in base.glob(f"kiln-{pid}-*")]
    return found


def _build(home: Path, project: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "KILN_HOME": str(home), "KILN_SERVER": "off"}
    return subprocess.Popen(
        [KILN, "build", *args], cwd=project, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip


def _started(home: Path, tmp_path: Path, script: str) -> tuple[Path, subprocess.Popen[str]]:
    """A build of ``script`` whose step has started (touched ``started``)."""
    project = _project(tmp_path / "p", script)
    proc = _build(home, project, "-j", "1")
    deadline = time.monotonic() + 60
    while not any((home / "sandboxes").glob("*/work/step/started")):
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.05)
    return project, proc


def test_a_finished_build_leaves_no_sandbox_or_cgroup(home, tmp_path) -> None:
    for jobs in ("1", "2"):  # steps on threads, and in worker processes
        project = _project(tmp_path / "p", f"echo {jobs} > out.txt")
        proc = _build(home, project, "-j", jobs)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "1 step ran" in err, err
        assert _leftovers(home, proc.pid) == []


def test_a_killed_build_leaves_nothing_after_the_next_gc(home, tmp_path) -> None:
    _, proc = _started(home, tmp_path, "touch started; sleep 60; echo > out.txt")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert _leftovers(home, proc.pid), "the killed build left nothing to reap (test is void)"
    gc = run_kiln(home, "gc")
    assert gc.returncode == 0, gc.stderr
    assert _leftovers(home, proc.pid) == []


def test_gc_leaves_the_sandbox_of_a_running_build_alone(home, tmp_path) -> None:
    project, proc = _started(home, tmp_path, "touch started; sleep 5; echo done > out.txt")
    in_use = sorted(p.name for p in (home / "sandboxes").iterdir())
    gc = run_kiln(home, "gc", "--dry-run")  # (sandboxes are swept by a real gc only)
    assert gc.returncode == 0, gc.stderr
    gc = run_kiln(home, "gc", "--timeout", "0.5")
    if proc.poll() is None:  # gc swept while the step still ran
        assert sorted(p.name for p in (home / "sandboxes").iterdir()) == in_use
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "1 step ran" in err, err
    assert (project / "kiln-out" / "wait" / "out.txt").read_text() == "done\n"
