"""Kiln running on a second CPU architecture: an ARM64 CPython under qemu-user.

``../shared/tools/aarch64-python`` (beside the project) unpacks Debian's
arm64 CPython 3.11 and the aarch64 wheels of Kiln's dependencies, and
writes a launcher that runs them under ``qemu-aarch64-static``. Kiln's own
sources run on it unchanged (``PYTHONPATH=src``). The setup is made once
per set of dependency versions in pytest's cache (about 40 s; it needs
root for apt, as CI has), the way the REAPI servers are installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from remote import servers

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO.parent / "shared" / "tools" / "aarch64-python"
# Kiln's run-time dependencies, at the versions this checkout runs with.
PACKAGES = ("wasmtime", "protobuf", "grpcio", "buildgrid-common", "click", "rich")
RUN_KILN = "from kiln.cli.entry import main; main()"


def requirements() -> list[str]:
    return [f"{name}=={version(name)}" for name in PACKAGES]


def aarch64_python(cache: Path) -> Path:
    """The emulated ARM64 interpreter's launcher (set up on first use), or skip."""
    if not TOOL.is_file():
        pytest.skip(f"{TOOL} is not there (it ships in ../shared beside the project)")
    wanted = requirements()
    name = "aarch64-python-" + hashlib.sha256(" ".join(wanted).encode()).hexdigest()[:12]
    if not (cache / name / servers.MARKER).exists() and os.geteuid() != 0:
        pytest.skip("setting up the ARM64 interpreter needs root (apt-get)")

    def build(folder: Path) -> None:
        # The tool installs the wheels with `pip`: this interpreter's.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        subprocess.run(
            [str(TOOL), str(folder), *wanted],
            check=True, env={**os.environ, "PATH": path}, capture_output=True, timeout=1200,
        )  # fmt: skip

    launcher = servers.ensure_installed(cache, name, build) / "bin" / "python"
    machine = subprocess.run(
        [str(launcher), "-c", "import platform; print(platform.machine())"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout.strip()  # fmt: skip
    assert machine == "aarch64", machine
    return launcher


def kiln_on(
    python: Path, home: Path, cwd: Path, *args: str, timeout: float = 3600
) -> subprocess.CompletedProcess[str]:
    """Run this checkout's Kiln (``src/``) on ``python`` against store ``home``."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "KILN_HOME": str(home),
        "KILN_RACY_WINDOW_MS": "0",
    }
    return subprocess.run(
        [str(python), "-c", RUN_KILN, *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def build_json(python: Path, home: Path, cwd: Path, *args: str) -> dict:
    """``kiln build --json ARGS`` on ``python``; it must succeed."""
    proc = kiln_on(python, home, cwd, "build", "--json", *args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)
