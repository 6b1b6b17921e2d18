"""A memoized call from inside a guest vs a plain in-guest function call.

The guest makes ``CALLS`` calls one after the other, each on its own
8-byte input (a salt from argv[1], then the call's number), of a function
that returns its input: through Kiln's ``kiln`` import ``call`` (start,
wait and read in one) of another module, or as a
plain function of its own module (the peer: the same trivial work without
memoization). Measured per call, the plain loop's time taken off:

- a hit in a step run again by a build: before it starts, the build loads
  the cache entries of the calls the step's previous run made
  (``kiln.engine.call_warmup``), in batches; that loading is counted. The
  goal: ≤ 50 µs;
- a hit answered from the store by a lookup of its own (a call the
  previous run did not make, or the first run in a new process);
- a hit remembered in the process (a step making a call made before);
- a miss: the call's module instantiated and run, its result recorded.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.common import report
from kiln.engine import call_warmup
from kiln.exec import wasm_calls
from kiln.exec.kinds import local_context
from kiln.exec.wasm import WasmExecutor, WasmLimits
from kiln.model.action import ActionSpec
from kiln.store import Store

CALLS = 2000

GUEST = """
(module
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "kiln" "call"
    (func $call (param i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "/callee.wasm")
  (data (i32.const 32) "echo")
  (func $echo (param $in i32) (param $out i32)
    (i64.store (local.get $out) (i64.load (local.get $in))))
  (func (export "_start") (local $i i32) (local $memoized i32)
    (drop (call $args_get (i32.const 1024) (i32.const 2048)))
    ;; argv[1]: the salt (its first 4 bytes); argv[2]: "calls" or "plain"
    (i32.store (i32.const 64) (i32.load (i32.load (i32.const 1028))))
    (local.set $memoized (i32.eq (i32.load8_u (i32.load (i32.const 1032))) (i32.const 99)))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (i32.const {calls})))
      (i32.store (i32.const 68) (local.get $i))
      (if (local.get $memoized)
        (then
          (if (call $call (i32.const 16) (i32.const 12) (i32.const 32) (i32.const 4)
                (i32.const 64) (i32.const 8) (i32.const 256) (i32.const 8) (i32.const 128))
            (then unreachable)))
        (else (call $echo (i32.const 64) (i32.const 256))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))))
"""

CALLEE = """
(module
  (import "kiln" "input_read" (func $input (param i32 i32 i32 i32) (result i32)))
  (import "kiln" "output_write" (func $output (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "echo")
    (drop (call $input (i32.const 0) (i32.const 0) (i32.const 8) (i32.const 16)))
    (drop (call $output (i32.const 0) (i32.const 8)))))
"""


def main() -> list[dict]:
    import wasmtime

    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        (src / "guest.wasm").write_bytes(wasmtime.wat2wasm(GUEST.replace("{calls}", str(CALLS))))
        (src / "callee.wasm").write_bytes(wasmtime.wat2wasm(CALLEE))
        with Store(Path(tmp) / "home") as store:
            root = store.put(src).digest
            executor = WasmExecutor(local_context(store))
            platform = WasmLimits().platform()
            runs = iter(range(1 << 30))

            last_calls: list[str] = []

            def step(salt: str, mode: str, memo: bool = True, warmed: bool = False) -> float:
                """Seconds to run the guest once (a new step each time)."""
                if not memo:
                    wasm_calls.MEMO.clear()
                argv = ("guest.wasm", salt, mode, str(next(runs)))
                spec = ActionSpec(argv=argv, input_root=root, platform=platform)
                key = store.put_action(spec)
                action, command = spec.action()
                start = time.perf_counter()
                if warmed:
                    call_warmup.load(store, last_calls)
                result = executor.execute(key, action, command)
                elapsed = time.perf_counter() - start
                assert result.exit_code == 0, result
                last_calls[:] = [c["key"] for c in wasm_calls.calls_of(result)]
                return elapsed

            step("warm", "calls")  # compile both modules once
            plain = min(step("salt", "plain") for _ in range(5))
            misses, warm_hits, store_hits, memo_hits = [], [], [], []
            for round_ in range(3):
                salt = f"s{round_:03d}"
                misses.append(step(salt, "calls", memo=False))
                warm_hits.append(step(salt, "calls", memo=False, warmed=True))
                store_hits.append(step(salt, "calls", memo=False))
                memo_hits.append(step(salt, "calls"))

    def per_call(times: list[float]) -> float:
        return max(min(times) - plain, 0.0) / CALLS

    print(f"wasm calls: plain in-guest call loop of {CALLS}: {plain * 1000:.2f} ms", flush=True)
    results = []
    for name, times in (
        ("memoized call, hit in a step run again (calls warmed)", warm_hits),
        ("memoized call, hit from the store (a lookup each)", store_hits),
        ("memoized call, hit remembered in the process", memo_hits),
        ("memoized call, miss (runs and records)", misses),
    ):
        cost = per_call(times)
        print(f"wasm calls: {name}: {cost * 1e6:.1f} µs per call", flush=True)
        results.append(
            report(f"wasm calls: {name}", cost, "plain in-guest call", plain / CALLS, "≤ 50 µs hit")
        )
    return results
