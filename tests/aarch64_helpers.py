"""Kiln running on a second CPU architecture: an ARM64 CPython under qemu-user.

``../shared/tools/aarch64-python`` (beside the project) unpacks Debian's
arm64 CPython 3.11 and the aarch64 wheels of Kiln's dependencies, and
writes a launcher that runs them under ``qemu-aarch64-static``. Kiln's own
sources run on it unchanged (``PYTHONPATH=src``).

Two things are slow to make and are kept in ``CROSS_CACHE``, outside the
checkout, so that a fresh clone on a machine that ran these tests before
does not make them again: the interpreter (about 40 s; it needs root for
apt, as CI has) and clang compiled to ARM64 machine code under emulation
(about 17 minutes on 2 cores; host machine code, never a build result).
Both are named by what they hold.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from kiln.rules.toolchains import default_cache
from remote import servers

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
TOOL = REPO.parent / "shared" / "tools" / "aarch64-python"
CROSS_CACHE = Path(
    os.environ.get("KILN_TEST_CROSS_CACHE") or Path.home() / ".cache" / "kiln-tests" / "aarch64"
)
# Kiln's run-time dependencies, at the versions this checkout runs with.
PACKAGES = ("wasmtime", "protobuf", "grpcio", "buildgrid-common", "click", "rich")
X86_64 = Path(sys.executable)


def requirements() -> list[str]:
    return [f"{name}=={version(name)}" for name in PACKAGES]


def aarch64_python() -> Path:
    """The emulated ARM64 interpreter's launcher (set up on first use), or skip."""
    if not TOOL.is_file():
        pytest.skip(f"{TOOL} is not there (it ships in ../shared beside the project)")
    wanted = requirements()
    name = "python-" + hashlib.sha256(" ".join(wanted).encode()).hexdigest()[:12]
    if not (CROSS_CACHE / name / servers.MARKER).exists() and os.geteuid() != 0:
        pytest.skip("setting up the ARM64 interpreter needs root (apt-get)")

    def build(folder: Path) -> None:
        # The tool installs the wheels with `pip`: this interpreter's.
        path = f"{X86_64.parent}{os.pathsep}{os.environ.get('PATH', '')}"
        subprocess.run(
            [str(TOOL), str(folder), *wanted],
            check=True, env={**os.environ, "PATH": path}, capture_output=True, timeout=1200,
        )  # fmt: skip

    launcher = servers.ensure_installed(CROSS_CACHE, name, build) / "bin" / "python"
    machine = subprocess.run(
        [str(launcher), "-c", "import platform; print(platform.machine())"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout.strip()  # fmt: skip
    assert machine == "aarch64", machine
    return launcher


def copy_example(example: str, folder: Path) -> Path:
    root = folder / example
    shutil.copytree(EXAMPLES / example, root, ignore=shutil.ignore_patterns("kiln-out"))
    return root


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
        [str(python), "-m", "kiln", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def build_json(python: Path, home: Path, cwd: Path, *args: str) -> dict:
    """``kiln build --json ARGS`` on ``python``; it must succeed."""
    proc = kiln_on(python, home, cwd, "build", "--json", *args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def modules_cache(python: Path) -> Path:
    """Where compiled modules for ``python``'s CPU are kept between runs (for
    x86-64, with the C-in-wasm tests' store)."""
    if python == X86_64:
        return default_cache() / "test-stores" / "c-wasm" / "wasm-modules"
    return CROSS_CACHE / "wasm-modules"


def build_in_empty_store(python: Path, home: Path, root: Path, *args: str) -> tuple[dict, float]:
    """``build_json`` with a new store ``home``, empty but for the compiled
    modules kept for this CPU; what it compiles is kept. Returns the report
    and the seconds the build took."""
    modules = home / "wasm-modules"
    modules.mkdir(parents=True)
    cache = modules_cache(python)
    for compiled in cache.glob("*.cwasm"):
        shutil.copy(compiled, modules / compiled.name)
    started = time.monotonic()
    report = build_json(python, home, root, *args)
    seconds = time.monotonic() - started
    cache.mkdir(parents=True, exist_ok=True)
    for compiled in modules.glob("*.cwasm"):
        if not (cache / compiled.name).exists():
            staged = cache / f".{compiled.name}.{os.getpid()}"
            shutil.copy(compiled, staged)
            os.replace(staged, cache / compiled.name)
    return report, seconds
