"""Attacks on `kiln cc`: its service's socket, the native launcher's trust
in what listens there, and the files a compile writes on the host."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from squatters import NOBODY, squat_fixture  # noqa: F401 (the `squat` fixture)

from kiln.cc.compiles import CompileCache
from kiln.cc.invocation import Invocation, Ran
from kiln.cc.service import socket_path
from kiln.cc.setup import default_fallback, install_launcher
from kiln.exec.native import bwrap_path
from server_helpers import serving

pytestmark = pytest.mark.skipif(
    bwrap_path() is None or shutil.which("gcc") is None, reason="needs bubblewrap and gcc"
)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
# Connects to ARGV[1] as NOBODY (the interpreter starts as root: nobody may
# not run the test's one).
CONNECT = f"""
import os, socket, sys
os.setgid({NOBODY})
os.setuid({NOBODY})
socket.socket(socket.AF_UNIX).connect(sys.argv[1])
"""


@needs_root
def test_another_user_cannot_reach_the_cc_service(tmp_path: Path) -> None:
    with serving(tmp_path / "store") as served:
        served.start()
        path = socket_path(served.home)
        served.wait_until(lambda: os.path.exists(path), "the cc service to listen")
        tried = subprocess.run([sys.executable, "-c", CONNECT, path], capture_output=True,
                               text=True)  # fmt: skip
    assert tried.returncode != 0
    assert "PermissionError" in tried.stderr


@needs_root
def test_the_launcher_sends_nothing_to_a_listener_of_another_user(tmp_path: Path, squat) -> None:
    """A socket in the launcher's private folder, listened on by another
    user: the launcher sends it nothing (not the command line, not the
    environment), compiles the slow way, and the result is right."""
    folder = tmp_path / "sockets"
    folder.mkdir(mode=0o700)
    squatter = squat(str(folder / "cc.sock"), uid=NOBODY)
    launcher = tmp_path / "launcher"
    install_launcher(launcher, str(folder / "cc.sock"), default_fallback())
    project = tmp_path / "p"
    project.mkdir()
    (project / "a.c").write_text("int main(void) { return 3; }\n")
    env = {**os.environ, "KILN_HOME": str(tmp_path / "store"), "KILN_TEST_TOKEN": "s3cret"}
    built = subprocess.run([str(launcher / "kiln-cc"), "gcc", "-c", "a.c"], cwd=project, env=env,
                           capture_output=True)  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert all(not r["sent"] for r in squatter.received())
    subprocess.run(["gcc", "a.o", "-o", "a"], cwd=project, check=True)
    assert subprocess.run([str(project / "a")]).returncode == 3


def test_an_output_that_is_a_link_is_replaced_not_written_through(store, tmp_path: Path) -> None:
    """`-o` naming a symlink to another file: the object takes the link's
    place; the file it pointed at is untouched."""
    project = tmp_path / "p"
    project.mkdir()
    (project / "a.c").write_text("int a(void) { return 1; }\n")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (project / "a.o").symlink_to(victim)
    (project / "a.d").symlink_to(victim)
    cache = CompileCache(store)
    try:
        for _ in range(2):  # a miss, then a hit
            inv = Invocation(["kiln-cc", "gcc", "-MD", "-c", "a.c"], str(project),
                             {"PATH": os.environ["PATH"]})  # fmt: skip
            assert cache.handle(inv) == Ran(0)
            assert victim.read_text() == "precious\n"
            assert not (project / "a.o").is_symlink() and not (project / "a.d").is_symlink()
            (project / "a.o").unlink()
            (project / "a.o").symlink_to(victim)
    finally:
        cache.close()
    assert not list(project.glob(".a.o.kiln-*"))  # no temporary file left behind
