"""The second engine: the same wasm actions under Node.js (V8) with Kiln's
virtual WASI ported to JavaScript must give the same results, digest for
digest, as under Wasmtime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kiln.engine.check import check_engines, compare_results
from kiln.exec.kinds import local_context
from kiln.exec.node import NodeWasmExecutor, find_node
from kiln.exec.wasm import EXIT_TRAP, WasmExecutor, WasmLimits
from kiln.model.action import ActionSpec
from kiln.model.digest import Digest

pytestmark = pytest.mark.skipif(find_node() is None, reason="Node.js is not installed")


def _action(store, tmp_path: Path, module: Path, outputs=("out",)):
    root = tmp_path / "in"
    (root / "data" / "sub").mkdir(parents=True)
    shutil.copy(module, root / "tool.wasm")
    (root / "data" / "a.txt").write_text("a\n")
    (root / "data" / "c.bin").write_bytes(bytes(range(256)) * 3)
    (root / "data" / "sub" / "x").write_text("x")
    (root / "data" / "ln").symlink_to("a.txt")
    spec = ActionSpec(
        argv=("tool.wasm", "one", "two words"),
        input_root=store.put(root).digest,
        env={"LANG": "C.UTF-8", "ZED": "z"},
        outputs=outputs,
        platform=WasmLimits().platform(),
    )
    key = store.put_action(spec)
    return key, *spec.action()


def _both(store, key, action, command):
    first = WasmExecutor(local_context(store)).execute(key, action, command)
    second = NodeWasmExecutor(local_context(store)).execute(key, action, command)
    return first, second


def _text(store, digest) -> str:
    return store.cas.get_bytes(Digest.from_proto(digest)).decode()


@pytest.mark.parametrize("name", ["observe", "fsops", "escape"])
def test_engines_agree_digest_for_digest(store, tmp_path: Path, guest, name: str) -> None:
    key, action, command = _action(store, tmp_path, guest(name))
    wasmtime, node = _both(store, key, action, command)
    assert compare_results(store, wasmtime, node) == []
    for result in (wasmtime, node):
        result.ClearField("execution_metadata")
    assert wasmtime == node  # the very same ActionResult message


def test_the_comparison_exercises_the_file_system(store, tmp_path: Path, guest) -> None:
    """The fsops guest really did what the agreement test relies on."""
    key, action, command = _action(store, tmp_path, guest("fsops"))
    _, node = _both(store, key, action, command)
    out = _text(store, node.stdout_digest)
    assert node.exit_code == 3
    for expected in (
        "mkdir out: ok",
        "mkdir in the inputs: Read-only file system",
        "pread: mid, size 103",
        "after truncate: 80",
        "exclusive create of an existing file: File exists",
        "readlink: 8 ../a.txt",
        "through the link: first line",
        "rmdir non-empty: Directory not empty",
        "slept 1500001000 ns (virtual)",
        "realtime 946684800",
    ):
        assert expected in out
    assert "  out/sub/moved.txt type=" in out
    assert _text(store, node.stderr_digest) == "a line on stderr\n"
    assert [d.path for d in node.output_directories] == ["out"]


def test_a_trap_agrees_apart_from_the_engines_wording(store, tmp_path: Path, guest) -> None:
    key, action, command = _action(store, tmp_path, guest("trap"))
    wasmtime, node = _both(store, key, action, command)
    assert wasmtime.exit_code == node.exit_code == EXIT_TRAP
    assert _text(store, node.stderr_digest).startswith("about to trap\nkiln: trap: ")
    assert wasmtime.stderr_digest != node.stderr_digest  # each engine words the trap its way
    assert compare_results(store, wasmtime, node) == []


def test_a_real_difference_is_reported(store, tmp_path: Path, guest) -> None:
    """compare_results can fail: results of two different actions differ."""
    key, action, command = _action(store, tmp_path, guest("observe"))
    first = WasmExecutor(local_context(store)).execute(key, action, command)
    command.arguments.append("extra")
    second = NodeWasmExecutor(local_context(store)).execute(key, action, command)
    whats = {d.what for d in compare_results(store, first, second)}
    assert whats == {"stdout", "output out/report.txt"}


def test_check_engines_uses_the_cached_wasmtime_result(store, tmp_path: Path, guest) -> None:
    key, _, _ = _action(store, tmp_path, guest("observe"))
    first = check_engines(store, key)
    assert first.identical and not first.reference_cached
    again = check_engines(store, key)
    assert again.identical and again.reference_cached


def test_kiln_check_command(kiln, tmp_path: Path, guest, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copy(guest("observe"), tmp_path / "tool.wasm")
    ran = kiln("wasm", "run", "--json", "--out", "out", "tool.wasm", "--", "hello", check=True)
    key = json.loads(ran.stdout)["key"]
    checked = kiln("check", "--engine", "node", "--json", key, check=True)
    [report] = json.loads(checked.stdout)
    assert report["identical"] and report["reference_cached"]
    assert report["key"] == key
    plain = kiln("check", "--engine", "node", key, check=True)
    assert "identical under wasmtime and node" in plain.stdout


def test_kiln_check_refuses_what_is_not_an_action(kiln, store) -> None:
    blob = store.cas.put_bytes(b"not an action")
    missing = kiln("check", "--engine", "node", "0" * 64 + "/5")
    assert missing.returncode == 3 and "no action" in missing.stderr
    wrong = kiln("check", "--engine", "node", str(blob))
    assert wrong.returncode == 2 and "is not an action" in wrong.stderr
    assert "Traceback" not in missing.stderr + wrong.stderr


def test_out_of_fuel_is_not_comparable(store, tmp_path: Path, guest) -> None:
    from kiln.errors import KilnError

    root = tmp_path / "spin"
    root.mkdir()
    shutil.copy(guest("spin"), root / "tool.wasm")
    spec = ActionSpec(
        argv=("tool.wasm",),
        input_root=store.put(root).digest,
        platform=WasmLimits(fuel=100_000).platform(),
    )
    key = store.put_action(spec)
    with pytest.raises(KilnError, match="ran out of fuel, memory or disk"):
        check_engines(store, key)
