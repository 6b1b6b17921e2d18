"""A WASI command that counts through a function call (where Wasmtime
notices an interruption): seconds of work that Ctrl-C stops at once."""

from __future__ import annotations


def spin_wat(iterations: int) -> str:
    """The command's WebAssembly text, counting to ``iterations``."""
    return f"""
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func $next (param i64) (result i64) local.get 0 i64.const 1 i64.add)
  (func (export "_start") (local i64)
    (loop $again
      (local.set 0 (call $next (local.get 0)))
      (br_if $again (i64.lt_u (local.get 0) (i64.const {iterations}))))
    (call $exit (i32.const 0))))
"""
