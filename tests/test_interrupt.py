"""Ctrl-C during `kiln build`: the running steps (a native one in its
sandbox, a wasm one in a thread) stop at once, the command says what it
stopped and exits 130, and the next build runs them again (nothing of
theirs was cached) and succeeds. With and without the resident server."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import wasmtime

from conftest import KILN
from native_helpers import needs_bubblewrap
from server_helpers import WAIT_S, Served, serving
from spin_guest import spin_wat

pytestmark = needs_bubblewrap

# A WASI command that counts to ITERATIONS through a function call (each
# call is where Wasmtime notices an interruption): seconds of work.
ITERATIONS = 700_000_000
SPIN = spin_wat(ITERATIONS)
STEP_S = 3  # how long the native step sleeps

KILNFILE = f"""
from kiln.build import native, source, target, wasm


@target
async def nap():
    return await native("sh", "-c", "sleep {STEP_S}; echo rested > out",
                        tools=["sh", "sleep"], outputs=["out"], description="nap")


@target
async def spin():
    await wasm(source("spin.wasm"), fuel=10**11, description="spin")
    return source("spin.wasm")
"""


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "p"
    project.mkdir()
    (project / "kilnfile.py").write_text(KILNFILE)
    (project / "spin.wasm").write_bytes(wasmtime.wat2wasm(SPIN))
    return project


def _interrupt_while_running(
    served: Served, project: Path, tmp_path: Path, starts: int = 2
) -> tuple[str, float]:
    """Start `kiln build -v` in a process group of its own, send SIGINT to
    the group (as a terminal's Ctrl-C does) once ``starts`` steps have
    started: its stderr and how long it took to exit after the signal."""
    err = tmp_path / "stderr.txt"
    with err.open("w") as stream:
        build = subprocess.Popen(
            [KILN, "build", "-v", "-j", "2"], cwd=project, env=served.env,
            stdout=subprocess.DEVNULL, stderr=stream, start_new_session=True,
        )  # fmt: skip
        try:
            served.wait_until(
                lambda: err.read_text().count("kiln: start") == starts, "the steps to start"
            )
            sent = time.monotonic()
            os.killpg(build.pid, signal.SIGINT)
            build.wait(timeout=WAIT_S)
            took = time.monotonic() - sent
        finally:
            if build.poll() is None:
                build.kill()
                build.wait()
    assert build.returncode == 130, err.read_text()
    return err.read_text(), took


@pytest.mark.parametrize("server", [False, True], ids=["in-process", "server"])
def test_ctrl_c_stops_running_steps_at_once_and_the_next_build_runs_them(
    tmp_path: Path, server: bool
) -> None:
    project = _project(tmp_path)
    with serving(tmp_path / "home") as served:
        if server:
            served.start()
        else:
            served.env["KILN_SERVER"] = "off"
        stderr, took = _interrupt_while_running(served, project, tmp_path)
        assert took < STEP_S - 1, (took, stderr)  # not waiting for the steps
        assert "kiln: interrupted: stopping 2 running steps: " in stderr
        assert "nap (" in stderr and "spin (" in stderr
        assert "Ctrl-C again" in stderr
        assert not (project / "kiln-out" / "nap").exists()

        again = served.kiln("build", "--json", cwd=project)
        assert again.returncode == 0, again.stderr
        assert '"executed": 2' in again.stdout  # both ran: nothing of theirs was cached
        assert (project / "kiln-out" / "nap" / "out").read_text() == "rested\n"


LATE = f"""
from kiln.build import gather, native, target


@target
async def late():
    await gather(*(native("sh", "-c", f"echo {{i}} > out", tools=["sh"], outputs=["out"])
                   for i in range(9)))
    return await native("sh", "-c", "sleep {STEP_S}; echo rested > out",
                        tools=["sh", "sleep"], outputs=["out"], description="nap")
"""


def test_ctrl_c_stops_steps_in_worker_processes(tmp_path: Path) -> None:
    """After its first executions a build may run steps in worker processes
    (KILN_WORKER_PROCESSES=1): Ctrl-C stops theirs at once too."""
    project = tmp_path / "p"
    project.mkdir()
    (project / "kilnfile.py").write_text(LATE)
    with serving(tmp_path / "home") as served:
        served.env.update(KILN_SERVER="off", KILN_WORKER_PROCESSES="1")
        stderr, took = _interrupt_while_running(served, project, tmp_path, starts=10)
        assert took < STEP_S - 1, (took, stderr)
        assert "Traceback" not in stderr and "kiln: interrupted: stopping 1 running step" in stderr
        again = served.kiln("build", "--json", cwd=project)
        assert again.returncode == 0, again.stderr
        assert (project / "kiln-out" / "late" / "out").read_text() == "rested\n"
