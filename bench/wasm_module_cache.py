"""A 75 MB module from the compiled-module cache vs a native compiler's start.

The module is clang/LLVM compiled to WASI (the pinned npm package
@yowasp/clang, downloaded once). It is compiled for this CPU once (the time
is printed); then each round makes a new ``WasmExecutor`` (no module in
memory, as in a new process), which loads the compiled module from the disk
cache, instantiates it and runs ``clang --version`` as an action. The peer:
fork+exec of the real ``gcc --version``, a native compiler driver's start.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import real_binary, report
from kiln.exec.kinds import local_context
from kiln.exec.wasm import WasmExecutor, WasmLimits
from kiln.model.action import ActionSpec
from kiln.rules.host_toolchains import yowasp_clang
from kiln.store import Store

ROUNDS = 20


def main() -> list[dict]:
    module = yowasp_clang()
    gcc = real_binary("gcc")
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        shutil.copy(module, src / "llvm.wasm")
        with Store(Path(tmp) / "home") as store:
            spec = ActionSpec(
                argv=("llvm.wasm", "clang", "--version"),
                input_root=store.put(src).digest,
                platform=WasmLimits().platform(),
            )
            key = store.put_action(spec)
            action, command = spec.action()

            def one() -> float:
                start = time.perf_counter()
                executor = WasmExecutor(local_context(store))
                result = executor.execute(key, action, command)
                took = time.perf_counter() - start
                assert result.exit_code == 0
                return took

            compile_s = one()
            print(
                f"first use of the {module.stat().st_size >> 20} MiB module: {compile_s:.1f} s "
                "(compiled for this CPU, then cached)",
                flush=True,
            )
            ours, peers = [], []
            for _ in range(ROUNDS):
                ours.append(one())
                start = time.perf_counter()
                subprocess.run([gcc, "--version"], check=True, stdout=subprocess.DEVNULL)
                peers.append(time.perf_counter() - start)
    return [
        report(
            "75 MB clang module from the compiled-module cache, `clang --version`",
            statistics.median(ours),
            "fork+exec gcc --version",
            statistics.median(peers),
            "milliseconds",
        )
    ]


if __name__ == "__main__":
    main()
