"""Engine settings that make a module's results the same on every CPU: NaN
canonicalization, deterministic relaxed SIMD, and no threads. Each test
would fail with the setting off (on x86-64, where these tests run)."""

from __future__ import annotations

import struct
from pathlib import Path

import wasmtime

from kiln.exec.kinds import local_context
from kiln.exec.wasm import EXIT_TRAP, WasmExecutor, WasmLimits
from kiln.model.action import ActionSpec
from kiln.model.digest import Digest

# Stores 16 bytes computed by $compute at address 64, writes them to stdout.
TEMPLATE = """
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  {extra}
  (memory (export "memory") 1 {memory})
  (func (export "_start")
    {compute}
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


def _run(store, tmp_path: Path, compute: str, memory: str = "", extra: str = ""):
    root = tmp_path / "in"
    root.mkdir()
    wat = TEMPLATE.format(compute=compute, memory=memory, extra=extra)
    (root / "m.wasm").write_bytes(wasmtime.wat2wasm(wat))
    spec = ActionSpec(
        argv=("m.wasm",), input_root=store.put(root).digest, platform=WasmLimits().platform()
    )
    key = store.put_action(spec)
    result = WasmExecutor(local_context(store)).execute(key, *spec.action())
    stdout = store.cas.get_bytes(Digest.from_proto(result.stdout_digest))
    stderr = store.cas.get_bytes(Digest.from_proto(result.stderr_digest)).decode()
    return result.exit_code, stdout, stderr


def test_nan_results_are_canonical(store, tmp_path: Path) -> None:
    # A signalling NaN with payload 1 plus 1.0: x86 hardware returns the
    # quieted input (0x7fe00001); the canonical NaN is 0x7fc00000.
    compute = """
    (i32.store (i32.const 64) (i32.reinterpret_f32
      (f32.add (f32.reinterpret_i32 (i32.const 0x7fa00001)) (f32.const 1))))
    (i64.store (i32.const 72) (i64.reinterpret_f64
      (f64.mul (f64.reinterpret_i64 (i64.const 0x7ff0000000000bad)) (f64.const 2))))
    """
    code, stdout, stderr = _run(store, tmp_path, compute)
    assert code == 0, stderr
    f32_bits, _, f64_bits = struct.unpack("<IIQ", stdout)
    assert f32_bits == 0x7FC00000
    assert f64_bits == 0x7FF8000000000000


def test_relaxed_simd_is_deterministic(store, tmp_path: Path) -> None:
    # relaxed_swizzle with lane index 16 (out of range): x86's pshufb reads
    # lane 0 (value 1); the deterministic choice is 0, as for i8x16.swizzle.
    compute = """
    (v128.store (i32.const 64) (i8x16.relaxed_swizzle
      (v128.const i8x16 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
      (v128.const i8x16 16 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0)))
    """
    code, stdout, stderr = _run(store, tmp_path, compute)
    assert code == 0, stderr
    assert stdout == bytes([0] + [1] * 15)


def test_shared_memory_is_refused(store, tmp_path: Path) -> None:
    compute = "(drop (i32.atomic.rmw.add (i32.const 64) (i32.const 1)))"
    code, stdout, stderr = _run(store, tmp_path, compute, memory="1 shared")
    assert code == EXIT_TRAP and stdout == b""
    assert "not valid WebAssembly" in stderr and "threads" in stderr


def test_thread_spawn_import_traps(store, tmp_path: Path) -> None:
    extra = '(import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))'
    code, stdout, stderr = _run(store, tmp_path, "(drop (call $spawn (i32.const 0)))", extra=extra)
    assert code == EXIT_TRAP and stdout == b""
    assert "thread-spawn" in stderr
