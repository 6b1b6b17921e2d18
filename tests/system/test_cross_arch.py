"""Kiln on ARM64 (emulated) builds the wasm examples from an empty store with
exactly the action keys and output digests of the x86-64 build: nothing
about the host is in a wasm step's key, and what the guests compute does
not depend on the CPU that ran them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from aarch64_helpers import REPO, X86_64, build_in_empty_store, copy_example
from conftest import kiln_out_files

pytestmark = [pytest.mark.slow, pytest.mark.network]


@pytest.mark.parametrize("example", ["wordcount", "tally"])
def test_arm64_builds_the_wasm_examples_with_the_keys_and_digests_of_x86_64(
    arm64: Path, example: str, tmp_path: Path
) -> None:
    x86_root = copy_example(example, tmp_path / "x86")
    arm_root = copy_example(example, tmp_path / "arm")
    x86, x86_seconds = build_in_empty_store(X86_64, tmp_path / "store-x86", x86_root)
    arm, arm_seconds = build_in_empty_store(arm64, tmp_path / "store-arm", arm_root)
    print(f"{example} from an empty store: x86-64 {x86_seconds:.1f} s, ARM64 {arm_seconds:.1f} s")

    assert x86["executed"] == len(x86["executed_keys"]) > 0 and x86["cached"] == 0
    assert arm["executed"] == x86["executed"] and arm["cached"] == 0
    assert sorted(arm["executed_keys"]) == sorted(x86["executed_keys"])
    digests = {name: t["digest"] for name, t in x86["targets"].items()}
    assert {name: t["digest"] for name, t in arm["targets"].items()} == digests
    assert kiln_out_files(arm_root) == kiln_out_files(x86_root) != {}


# The key of one gcc step, as a native step computes it on this machine.
NATIVE_KEY = """
import json
from kiln.exec.specs import NativeLimits
from kiln.exec.tools import Dpkg, identity, resolve
from kiln.model.action import ActionSpec
from kiln.model.digest import EMPTY
platform = NativeLimits().platform(["gcc"], identity([resolve("gcc", Dpkg())]))
spec = ActionSpec(argv=("gcc", "-c", "a.c"), input_root=EMPTY, outputs=("a.o",), platform=platform)
print(json.dumps({"key": str(spec.key()), "platform": dict(platform)}))
"""


def test_a_native_step_has_another_key_on_another_architecture(arm64: Path) -> None:
    # Here both run the same x86-64 gcc (emulation cannot run native steps:
    # the host's bubblewrap cannot start the ARM64 sandbox helper); the key
    # still differs, so no cache, local or remote, can answer one with the other.
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    keys = {}
    for python in (X86_64, arm64):
        proc = subprocess.run(
            [str(python), "-c", NATIVE_KEY], env=env, capture_output=True, text=True,
            timeout=600, check=True,
        )  # fmt: skip
        keys[python] = json.loads(proc.stdout)
    assert keys[X86_64]["platform"]["isa"] == "x86_64"
    assert keys[arm64]["platform"]["isa"] == "aarch64"
    assert keys[arm64]["key"] != keys[X86_64]["key"]
