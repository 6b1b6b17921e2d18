"""The output attacks again with Kiln run by an unprivileged user (no
cgroups to make, rlimits instead): nothing of the host may reach the store
or the project's kiln-out/."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import KILN
from native_helpers import needs_bubblewrap

NOBODY = 65534
UP = "/kiln/inputs" + "/.." * 12

can_switch_user = os.getuid() == 0 and shutil.which("setpriv") is not None
pytestmark = [
    needs_bubblewrap,
    pytest.mark.skipif(not can_switch_user, reason="needs root to run Kiln as another user"),
]

KILNFILE = """
from kiln.build import native, target

@target
async def steal():
    return await native("sh", "-c", {script!r}, tools=["sh", "ln", "mkdir"],
                        outputs=["out"], description="steal")
"""


@pytest.fixture
def place() -> Iterator[Path]:
    """A folder the unprivileged user owns (pytest's are closed to it)."""
    folder = Path(tempfile.mkdtemp(prefix="kiln-nobody-"))
    folder.chmod(0o755)
    os.chown(folder, NOBODY, NOBODY)
    yield folder
    shutil.rmtree(folder)


def _as_nobody(place: Path, project: Path) -> subprocess.CompletedProcess[str]:
    return _as_nobody_run(place, project, KILN, "build")


def _as_nobody_run(place: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(place), "KILN_HOME": str(place / "store"),
           "KILN_SERVER": "off"}  # fmt: skip
    if "PYTHONPATH" in os.environ:  # (the sources under test)
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize(
    "script",
    [
        "mkdir out; ln -s {up}{secret} out/token",
        "mkdir -p out/d; ln -s {up}{folder} out/d/all",
        "ln -s {up}{folder} out",
    ],
)
def test_an_unprivileged_build_cannot_store_a_host_file(place: Path, script: str) -> None:
    secret = place / "readable-by-nobody.txt"
    secret.write_text("nobody-can-read-this\n")
    project = place / "p"
    project.mkdir()
    code = script.format(up=UP, secret=secret, folder=place)
    (project / "kilnfile.py").write_text(KILNFILE.format(script=code))
    for path in (secret, project, project / "kilnfile.py"):
        os.chown(path, NOBODY, NOBODY)
    proc = _as_nobody(place, project)
    assert proc.returncode != 0 and "refused" in proc.stderr, proc.stderr
    stored = [p.read_bytes() for p in (place / "store" / "cas").rglob("*") if p.is_file()]
    assert b"nobody-can-read-this\n" not in stored
    assert not (project / "kiln-out" / "steal").exists()


WRITES = """
from kiln.build import native, target

@target
async def hello():
    return await native("sh", "-c", "mkdir -p out/sub; echo hello > out/sub/hello.txt",
                        tools=["sh", "mkdir"], outputs=["out"], description="hello")
"""


def test_an_unprivileged_user_can_remove_and_edit_outputs_without_reaching_the_store(
    place: Path,
) -> None:
    project = place / "p"
    project.mkdir()
    (project / "kilnfile.py").write_text(WRITES)
    for path in (project, project / "kilnfile.py"):
        os.chown(path, NOBODY, NOBODY)
    built = _as_nobody(place, project)
    assert built.returncode == 0, built.stderr
    out = project / "kiln-out" / "hello" / "out" / "sub" / "hello.txt"
    assert out.read_text() == "hello\n"
    # The owner may make an output writable and edit it: a copy, not the blob.
    edit = _as_nobody_run(place, project, "sh", "-c", f"chmod u+w {out} && echo evil > {out}")
    assert edit.returncode == 0, edit.stderr
    verify = _as_nobody_run(place, project, KILN, "store", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert _as_nobody(place, project).returncode == 0  # put back
    assert out.read_text() == "hello\n"
    # A folder without write permission (as Kiln made them before) is replaced.
    locked = _as_nobody_run(place, project, "chmod", "-R", "a-w", "kiln-out/hello")
    assert locked.returncode == 0, locked.stderr
    again = _as_nobody(place, project)
    assert again.returncode == 0 and "restored hello" in again.stderr, again.stderr
    removed = _as_nobody_run(place, project, "rm", "-rf", "kiln-out")  # the README's advice
    assert removed.returncode == 0, removed.stderr
    assert _as_nobody(place, project).returncode == 0 and out.read_text() == "hello\n"
