"""Attacks on the host's disk and Kiln's memory through what a step writes:
a wasm guest or a native step writing past its disk limit, in one file,
in many, in a hole, in a removed file still open.

A wasm step past its limit is a deterministic failed result (exit 134 and
``kiln: disk limit of N MiB reached`` in stderr, the same every run); a
native one is a failed result naming the limit and how to raise it. Large
guest files never sit in Kiln's memory."""

from __future__ import annotations

import os
import shutil
import subprocess
import tracemalloc
from pathlib import Path

import pytest

from conftest import KILN
from kiln.exec.kinds import local_context
from kiln.exec.native import EXIT_DISK_LIMIT, NativeLimits
from kiln.exec.wasi import disk
from kiln.exec.wasm import EXIT_TRAP, WasmExecutor, WasmLimits
from kiln.model.action import ActionSpec
from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2
from kiln.model.tree import walk
from native_helpers import needs_bubblewrap, run_native


def run_fill(store, tmp_path: Path, guest, *args: str, disk_mib: int, outputs=("out",)):
    """Run the ``fill`` guest with ``args`` under a disk limit: the result,
    its stdout and its stderr."""
    inputs = tmp_path / "in"
    inputs.mkdir(exist_ok=True)
    shutil.copy(guest("fill"), inputs / "fill.wasm")
    spec = ActionSpec(
        argv=("fill.wasm", *args),
        input_root=store.put(inputs).digest,
        outputs=tuple(outputs),
        platform=WasmLimits(disk_mib=disk_mib).platform(),
    )
    key = store.put_action(spec)
    result = WasmExecutor(local_context(store)).execute(key, *spec.action())
    out, err = (store.cas.get_bytes(Digest.from_proto(d)).decode()
                for d in (result.stdout_digest, result.stderr_digest))  # fmt: skip
    return result, out, err


@pytest.mark.parametrize(
    "args",
    [
        ("write", "out", "9"),  # one output file
        ("spread", "out", "5", "2"),  # several files in an output folder
        ("write", "tmp/scratch", "9"),  # /tmp counts too
        ("sparse", "out", "64"),  # a hole counts: it would be stored
        ("unlinked", "9"),  # a removed file counts while it is open
    ],
    ids=["one-file", "many-files", "tmp", "sparse", "unlinked"],
)
def test_a_guest_writing_past_its_disk_limit_fails_deterministically(
    store, tmp_path, guest, args
) -> None:
    runs = [run_fill(store, tmp_path, guest, *args, disk_mib=8) for _ in range(2)]
    for result, out, err in runs:
        assert result.exit_code == EXIT_TRAP and out == ""
        assert err.startswith("kiln: disk limit of 8 MiB reached: the guest's files")
        assert "raise it with disk_mib=" in err
    assert runs[0][0].stderr_digest == runs[1][0].stderr_digest


def test_kiln_wasm_run_takes_a_disk_limit(home, tmp_path, guest) -> None:
    shutil.copy(guest("fill"), tmp_path / "fill.wasm")
    run = [KILN, "wasm", "run", "fill.wasm", "--out", "out", "--disk", "8", "--", "write", "out"]
    env = {**os.environ, "KILN_HOME": str(home)}
    over = subprocess.run([*run, "9"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert over.returncode == EXIT_TRAP and "kiln: disk limit of 8 MiB reached" in over.stderr
    assert (tmp_path / "out").stat().st_size <= 8 << 20  # what it wrote before the limit
    within = subprocess.run([*run, "7"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert within.returncode == 0, within.stderr
    assert (tmp_path / "out").stat().st_size == 7 << 20


def test_a_build_step_past_its_disk_limit_fails_naming_it(store, tmp_path, guest) -> None:
    from kiln import api

    root = tmp_path / "project"
    (root / "tools").mkdir(parents=True)
    shutil.copy(guest("fill"), root / "tools" / "fill.wasm")
    (root / "kilnfile.py").write_text(
        "from kiln.build import source, target, wasm\n\n"
        "@target\n"
        "async def big():\n"
        "    step = await wasm(source('tools/fill.wasm'), 'write', 'out', '9',\n"
        "                      outputs=['out'], disk_mib=8)\n"
        "    return step.file('out')\n"
    )
    report = api.build(api.BuildRequest(["big"], cwd=root, store=store.home), store=store)
    assert not report.ok
    message = report.errors[0].render()
    assert "kiln: disk limit of 8 MiB reached" in message and "exit code 134" in message


def test_the_disk_limit_is_part_of_the_key(store) -> None:
    platform = dict(WasmLimits(disk_mib=8).platform())
    assert platform["disk-mib"] == "8"
    assert WasmLimits.from_platform(platform) == WasmLimits(disk_mib=8)


def test_a_run_stopped_by_its_disk_limit_is_not_compared_across_engines(
    store, tmp_path, guest
) -> None:
    from kiln.engine.check import check_engines
    from kiln.errors import KilnError

    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(guest("fill"), inputs / "fill.wasm")
    spec = ActionSpec(
        argv=("fill.wasm", "write", "out", "9"), input_root=store.put(inputs).digest,
        outputs=("out",), platform=WasmLimits(disk_mib=8).platform(),
    )  # fmt: skip
    with pytest.raises(KilnError, match="ran out of fuel, memory or disk under wasmtime"):
        check_engines(store, store.put_action(spec))


def test_files_removed_give_their_room_back(store, tmp_path, guest) -> None:
    result, out, err = run_fill(store, tmp_path, guest, "churn", "6", "4", disk_mib=8, outputs=())
    assert result.exit_code == 0, err
    assert out == "churn done\n"


@pytest.mark.parametrize("args", [("write", "out", "24"), ("spread", "out", "12", "2")],
                         ids=["one-file", "many-files"])  # fmt: skip
def test_large_outputs_are_spooled_to_disk_not_memory(
    store, tmp_path, guest, monkeypatch, args
) -> None:
    """24 MiB in one file, or in 12 files (more than the scratch files kept
    open, and past the memory budget): stored whole, while Kiln's own
    memory stays small."""
    monkeypatch.setattr(disk, "OPEN_FILES", 4)
    monkeypatch.setattr(disk, "MEMORY_BUDGET", 4 << 20)
    tracemalloc.start()
    try:
        result, _, err = run_fill(store, tmp_path, guest, *args, disk_mib=64)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.exit_code == 0, err
    sizes = [f.digest.size_bytes for f in result.output_files]
    for folder in result.output_directories:
        tree = re_pb2.Tree.FromString(store.cas.get_bytes(Digest.from_proto(folder.tree_digest)))
        root = Digest.of_message(tree.root)
        sizes += [e.digest.size for _, e in walk(store.cas, root) if e is not None]
    assert sum(sizes) == 24 << 20
    assert peak < 16 << 20, f"running the guest held {peak >> 20} MiB in memory"


# -------------------------------------------------------------------- native


@needs_bubblewrap
@pytest.mark.parametrize(
    "script",
    [
        "head -c 9M /dev/zero > out.bin",  # one file (RLIMIT_FSIZE)
        "i=0; while :; do i=$((i+1)); head -c 1M /dev/zero > f$i; done",  # forever (the guard)
        "for i in 1 2 3 4 5 6; do head -c 2M /dev/zero > f$i; done",  # left behind (last check)
        "truncate -s 1G sparse.bin",  # a hole
        "mkdir -p a/b/c/d/e && head -c 9M /dev/zero > a/b/c/d/e/deep.bin",  # down a folder
    ],
    ids=["one-file", "forever", "left-behind", "sparse", "nested"],
)
def test_a_native_step_writing_past_its_disk_limit_fails_clearly(store, tmp_path, script) -> None:
    result, _, err = run_native(
        store, tmp_path, script, tools=("sh", "head", "truncate", "mkdir"),
        outputs=("out.bin",), limits=NativeLimits(disk_mib=8),
    )  # fmt: skip
    assert result.exit_code == EXIT_DISK_LIMIT
    assert "kiln: disk limit of 8 MiB reached: " in err and "native(..., disk_mib=N)" in err
    assert not result.output_files  # nothing of it is stored


@needs_bubblewrap
def test_a_native_step_within_its_disk_limit_is_unaffected(store, tmp_path) -> None:
    result, _, err = run_native(
        store, tmp_path, "head -c 3M /dev/zero > out.bin", tools=("sh", "head"),
        outputs=("out.bin",), limits=NativeLimits(disk_mib=8),
    )  # fmt: skip
    assert result.exit_code == 0, err
    assert result.output_files[0].digest.size_bytes == 3 << 20
