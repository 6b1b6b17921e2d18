"""A trivial WASM action end to end vs fork+exec of /bin/true.

Kiln's side: a fresh action each round (its argument differs, so no cache
hit), through ``Store.execute_once``: store the Action and Command, look up
the cache, take the key's lock, build the guest's file system from the input
tree, run the (cached, compiled) module, store stdout/stderr and record the
result. The peer: ``subprocess.run(["/bin/true"])``, what running any native
step costs at least.
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import report, time_fresh_action
from kiln.exec.kinds import local_context
from kiln.exec.wasm import WasmExecutor, WasmLimits
from kiln.model.action import ActionSpec
from kiln.store import Store

ROUNDS = 300

# Writes "ok\n" to stdout and returns from _start (exit code 0).
TRIVIAL_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "ok\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 3))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


def main() -> list[dict]:
    import wasmtime

    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        (src / "tool.wasm").write_bytes(wasmtime.wat2wasm(TRIVIAL_WAT))
        with Store(Path(tmp) / "home") as store:
            root = store.put(src).digest
            executor = WasmExecutor(local_context(store))
            platform = WasmLimits().platform()

            def one(i: int) -> float:
                spec = ActionSpec(argv=("tool.wasm", str(i)), input_root=root, platform=platform)
                return time_fresh_action(store, spec, executor, "wasm")

            one(-1)  # compile the module once (cached from then on)
            ours, peers = [], []
            for i in range(ROUNDS):
                ours.append(one(i))
                start = time.perf_counter()
                subprocess.run(["/bin/true"], check=True)
                peers.append(time.perf_counter() - start)
    return [
        report(
            "trivial wasm action, end to end",
            statistics.median(ours),
            "fork+exec /bin/true",
            statistics.median(peers),
            "<= 2",
        )
    ]


if __name__ == "__main__":
    main()
