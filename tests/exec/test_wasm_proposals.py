"""The WebAssembly proposals of the wasm contract: set explicitly (not the
Wasmtime version's defaults), in the compiled-module cache key, and refused
clearly by the Node.js engine where it lacks them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import wasmtime

from kiln.errors import KilnError
from kiln.exec import wasm
from kiln.exec.kinds import WASM_ABI, local_context
from kiln.exec.node import NodeWasmExecutor, find_node, used_proposals
from kiln.exec.wasm import EXIT_TRAP, PROPOSALS, WasmExecutor
from kiln.model.action import ActionSpec
from kiln.model.digest import Digest

# One module per proposal that only that proposal makes valid.
SAMPLES = {
    "bulk-memory": "(module (memory 1) (func i32.const 0 i32.const 0 i32.const 0 memory.copy))",
    "multi-value": "(module (func (result i32 i32) i32.const 1 i32.const 2))",
    "reference-types": "(module (table 1 externref))",
    "simd": "(module (func (result v128) v128.const i32x4 1 2 3 4))",
    "relaxed-simd": "(module (func (param v128) (result v128) "
    "local.get 0 i32x4.relaxed_trunc_f32x4_s))",
    "tail-call": "(module (func $f return_call $f))",
    "exceptions": "(module (tag $e))",
    "function-references": "(module (type $t (func)) (func (param (ref $t))))",
    "gc": "(module (type (struct (field i32))))",
    "memory64": "(module (memory i64 1))",
    "multi-memory": "(module (memory 1) (memory 1))",
    "wide-arithmetic": "(module (func (result i64 i64) "
    "i64.const 1 i64.const 1 i64.const 1 i64.const 1 i64.add128))",
    "threads": "(module (memory 1 1 shared))",
    "custom-page-sizes": "(module (memory 1 (pagesize 1)))",
    "stack-switching": "(module (type $f (func)) (type $c (cont $f)))",
}

# setjmp/longjmp compiled for WebAssembly throw and catch like this.
CATCHES = """(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (tag $jump (param i32))
  (func (export "_start")
    (block $caught (result i32)
      (try_table (catch $jump $caught) (throw $jump (i32.const 7)))
      unreachable)
    call $exit))
"""


def test_the_contract_names_every_proposal_and_this_version_of_it() -> None:
    # Changing PROPOSALS changes which modules run: bump WASM_ABI with it.
    assert WASM_ABI == "kiln-wasi-p1-v2"
    assert {n for n, on in PROPOSALS.items() if not on} == {
        "threads", "custom-page-sizes", "stack-switching", "component-model",
    }  # fmt: skip
    assert set(SAMPLES) | {"component-model"} == set(PROPOSALS)


def test_the_engine_settings_are_pinned_to_the_contract_version() -> None:
    # Every setting that changes what a guest computes (proposals, NaN
    # canonicalisation, relaxed SIMD's flavour) is in the fingerprint. It may
    # change only together with WASM_ABI: results are shared across hosts.
    fingerprint = hashlib.sha256(wasm.config_fingerprint().encode()).hexdigest()[:16]
    assert (WASM_ABI, fingerprint) == ("kiln-wasi-p1-v2", "3cf42771e3909f38")


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_a_module_compiles_exactly_when_its_proposal_is_on(name: str) -> None:
    engine = wasmtime.Engine(wasm.engine_config())
    module = wasmtime.wat2wasm(SAMPLES[name])
    if PROPOSALS[name]:
        wasmtime.Module(engine, module)
    else:
        with pytest.raises(wasmtime.WasmtimeError):
            wasmtime.Module(engine, module)


def test_the_compiled_module_cache_key_follows_the_proposals(store, monkeypatch) -> None:
    executor = WasmExecutor(local_context(store))
    module = Digest.of_bytes(b"some module")
    before = executor._cache_path(module)
    monkeypatch.setitem(PROPOSALS, "exceptions", False)
    assert executor._cache_path(module) != before


def _action(store, tmp_path: Path, wat: str):
    root = tmp_path / "in"
    root.mkdir()
    (root / "tool.wasm").write_bytes(wasmtime.wat2wasm(wat))
    spec = ActionSpec(
        argv=("tool.wasm",),
        input_root=store.put(root).digest,
        platform=wasm.WasmLimits().platform(),
    )
    return store.put_action(spec), *spec.action()


def test_exceptions_run_under_wasmtime(store, tmp_path: Path) -> None:
    key, action, command = _action(store, tmp_path, CATCHES)
    result = WasmExecutor(local_context(store)).execute(key, action, command)
    assert result.exit_code == 7  # thrown, caught, the tag's payload is the exit code


def test_a_module_using_a_proposal_that_is_off_fails_deterministically(
    store, tmp_path: Path
) -> None:
    key, action, command = _action(store, tmp_path, SAMPLES["threads"])
    result = WasmExecutor(local_context(store)).execute(key, action, command)
    stderr = store.cas.get_bytes(Digest.from_proto(result.stderr_digest)).decode()
    assert result.exit_code == EXIT_TRAP and "is not valid WebAssembly" in stderr


def test_used_proposals_are_read_from_the_module() -> None:
    assert used_proposals(wasmtime.wat2wasm(CATCHES)) == ["exceptions"]
    assert used_proposals(wasmtime.wat2wasm(SAMPLES["memory64"])) == ["memory64"]
    assert used_proposals(wasmtime.wat2wasm(SAMPLES["multi-memory"])) == ["multi-memory"]
    assert used_proposals(wasmtime.wat2wasm(SAMPLES["threads"])) == ["threads"]
    imported = '(module (import "env" "m" (memory 1 1 shared)) (memory 1))'
    assert used_proposals(wasmtime.wat2wasm(imported)) == ["multi-memory", "threads"]
    assert used_proposals(wasmtime.wat2wasm(SAMPLES["simd"])) == []
    assert used_proposals(b"\0asm\1\0\0\0\5\xff") == []  # cut short: nothing seen


@pytest.mark.skipif(find_node() is None, reason="Node.js is not installed")
def test_node_refuses_clearly_what_it_cannot_compile(store, tmp_path: Path) -> None:
    key, action, command = _action(store, tmp_path, CATCHES)
    node = NodeWasmExecutor(local_context(store))
    try:
        result = node.execute(key, action, command)
    except KilnError as e:  # a Node.js without exnref exceptions (before V8 13)
        assert "the node engine cannot run this action" in e.message
        assert "the module uses exceptions" in e.message
        assert "docs/wasm.md" in (e.hint or "")
    else:  # a Node.js that has them agrees with Wasmtime
        assert result.exit_code == 7
