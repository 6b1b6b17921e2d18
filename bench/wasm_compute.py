"""A compute-heavy guest: Kiln's WASM executor vs the same C built natively.

The guest is ``bench/guests/compute.c`` (integer hashing over a buffer, a heap
sort, a matrix product and an n-body step, repeated ``ROUNDS`` times). It is
compiled here, into a temporary folder, twice: to wasm32-wasi with the
``ziglang`` package (the flags tests/conftest.py uses) and natively with the
real ``gcc -O2``.

Kiln's side: ``WasmExecutor.execute`` on one stored action, after a warm-up
run so the module is compiled and cached; it includes building the guest's
file system and storing stdout/stderr. Fuel metering is on as in production,
with the default memory limit but ``fuel=FUEL`` (10**11): the run needs about
1.5 * 10**10 units, more than the default 10**10. The peer: the native binary
run with ``subprocess.run``. Both print the same checksum (asserted); medians
of 3 interleaved rounds.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import real_binary, report
from kiln.exec.kinds import local_context
from kiln.exec.wasm import WasmExecutor, WasmLimits
from kiln.model.action import ActionSpec
from kiln.model.digest import Digest
from kiln.store import Store

SOURCE = Path(__file__).parent / "guests" / "compute.c"
WASM_CFLAGS = ["--target=wasm32-wasi", "-O2", "-s"]  # as in tests/conftest.py
ROUNDS = 20000  # about 0.8 s natively
FUEL = 10**11  # the default 10**10 is not enough for ROUNDS
REPEATS = 3


def _build(tmp: Path) -> tuple[Path, Path]:
    """(wasm module, native binary) built from SOURCE into ``tmp``."""
    wasm = tmp / "in" / "compute.wasm"
    native = tmp / "compute-native"
    wasm.parent.mkdir()
    for argv in (
        [sys.executable, "-m", "ziglang", "cc", *WASM_CFLAGS, "-o", str(wasm), str(SOURCE)],
        [real_binary("gcc"), "-O2", "-o", str(native), str(SOURCE), "-lm"],
    ):
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"bench: {' '.join(argv)} failed: {proc.stderr}")
    return wasm, native


def main() -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp_name:
        tmp = Path(tmp_name)
        wasm, native = _build(tmp)
        with Store(tmp / "home") as store:
            root = store.put(wasm.parent).digest
            executor = WasmExecutor(local_context(store))
            platform = WasmLimits(fuel=FUEL).platform()
            spec = ActionSpec(argv=(wasm.name, str(ROUNDS)), input_root=root, platform=platform)
            key = store.put_action(spec)
            action, command = spec.action()

            def ours() -> tuple[float, bytes]:
                start = time.perf_counter()
                result = executor.execute(key, action, command)
                took = time.perf_counter() - start
                stderr = store.cas.get_bytes(Digest.from_proto(result.stderr_digest))
                if result.exit_code != 0:
                    raise SystemExit(f"bench: wasm guest failed ({result.exit_code}): {stderr!r}")
                stdout = store.cas.get_bytes(Digest.from_proto(result.stdout_digest))
                assert stdout is not None
                return took, stdout

            def peer() -> tuple[float, bytes]:
                start = time.perf_counter()
                proc = subprocess.run([str(native), str(ROUNDS)], capture_output=True, check=True)
                return time.perf_counter() - start, proc.stdout

            _, expected = ours()  # compile the module once (cached from then on)
            if not expected.startswith(f"rounds {ROUNDS} checksum ".encode()):
                raise SystemExit(f"bench: unexpected guest output {expected!r}")
            assert executor.compiled == 1
            ours_s, peer_s = [], []
            for _ in range(REPEATS):
                for fn, times in ((ours, ours_s), (peer, peer_s)):
                    took, out = fn()
                    if out != expected:
                        raise SystemExit(f"bench: outputs differ: {out!r} vs {expected!r}")
                    times.append(took)
    return [
        report(
            f"compute-heavy wasm guest ({ROUNDS} rounds)",
            statistics.median(ours_s),
            "native gcc -O2",
            statistics.median(peer_s),
            "report (expected <= 2)",
        )
    ]


if __name__ == "__main__":
    main()
