"""Kiln on ARM64 (emulated) builds the wasm examples from an empty store with
exactly the action keys and output digests of the x86-64 build: nothing
about the host is in a wasm step's key, and what the guests compute does
not depend on the CPU that ran them."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from aarch64_helpers import aarch64_python, build_json
from kiln.rules.toolchains import default_cache

pytestmark = [pytest.mark.slow, pytest.mark.network]

EXAMPLES = Path(__file__).parents[2] / "examples"
X86_64 = Path(sys.executable)
# Compiled clang (host machine code, never a result) kept between runs, one
# folder per architecture: compiling it takes a minute natively, much longer
# under emulation.
MODULE_CACHES = {"x86_64": "c-wasm", "aarch64": "c-wasm-aarch64"}


@pytest.fixture(scope="module")
def arm64(request: pytest.FixtureRequest) -> Path:
    return aarch64_python(Path(request.config.cache.mkdir("aarch64")).resolve())


def _copy(example: str, folder: Path) -> Path:
    root = folder / example
    shutil.copytree(EXAMPLES / example, root, ignore=shutil.ignore_patterns("kiln-out"))
    return root


def _outputs(root: Path) -> dict[str, bytes]:
    out = root / "kiln-out"
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and ".kiln" not in p.parts
    }


def _modules_cache(arch: str) -> Path:
    return default_cache() / "test-stores" / MODULE_CACHES[arch] / "wasm-modules"


def _build(python: Path, arch: str, example: str, tmp_path: Path) -> tuple[dict, Path, float]:
    """An empty store (but for cached compiled modules) builds ``example``."""
    home = tmp_path / f"store-{arch}"
    modules = home / "wasm-modules"
    modules.mkdir(parents=True)
    cache = _modules_cache(arch)
    for compiled in cache.glob("*.cwasm"):
        shutil.copy(compiled, modules / compiled.name)
    root = _copy(example, tmp_path / arch)
    started = time.monotonic()
    report = build_json(python, home, root)
    seconds = time.monotonic() - started
    cache.mkdir(parents=True, exist_ok=True)
    for compiled in modules.glob("*.cwasm"):  # keep what this run compiled
        if not (cache / compiled.name).exists():
            staged = cache / f".{compiled.name}.{os.getpid()}"
            shutil.copy(compiled, staged)
            os.replace(staged, cache / compiled.name)
    return report, root, seconds


@pytest.mark.parametrize("example", ["wordcount", "tally"])
def test_arm64_builds_the_wasm_examples_with_the_keys_and_digests_of_x86_64(
    arm64: Path, example: str, tmp_path: Path
) -> None:
    x86, x86_root, _ = _build(X86_64, "x86_64", example, tmp_path)
    arm, arm_root, seconds = _build(arm64, "aarch64", example, tmp_path)
    print(f"{example}: ARM64 (emulated) build from an empty store: {seconds:.1f} s")

    assert x86["executed"] == len(x86["executed_keys"]) > 0 and x86["cached"] == 0
    assert arm["executed"] == x86["executed"] and arm["cached"] == 0
    assert sorted(arm["executed_keys"]) == sorted(x86["executed_keys"])
    digests = {name: t["digest"] for name, t in x86["targets"].items()}
    assert {name: t["digest"] for name, t in arm["targets"].items()} == digests
    assert _outputs(arm_root) == _outputs(x86_root) != {}
