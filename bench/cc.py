"""`make -j2 CC="kiln-cc gcc"` on LuaJIT 2.1 (a real project with its own
Makefile: 147 compiles, an assembler unit, host tools it builds and runs,
links; fetched pinned from PyPI inside lupa's sdist), against plain make,
ccache and sccache on the same tree, in the same run:

- cold: every cache empty, `make clean && make -j2`, the median of
  COLD_ROUNDS rounds in which the four builds take turns; goal at most
  1.10× plain make. Kiln's resident server is running and its sandbox for
  gcc is set up (once per machine and compiler, like ccache's cache
  folder; what that costs is printed too);
- warm: `make clean && make -j2` with every cache full (the median of
  ROUNDS); goal at most 1.0× ccache. Kiln's first warm build after its
  server starts (nothing remembered in memory yet) is printed too;
- pass-through: a link through the launcher against gcc itself (the
  median of CALLS each); goal at most 5 ms more.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tests.cc.sdists import lupa_third_party

from bench.common import KILN, real_binary, report, run

ROUNDS = 3
COLD_ROUNDS = 3
CALLS = 30


def main() -> list[dict]:
    ccache = real_binary("ccache")
    sccache = str(Path(KILN).parent / "sccache")
    with tempfile.TemporaryDirectory(prefix="kiln-bench-cc-") as tmp:
        work = Path(tmp)
        tree = work / "luajit"
        shutil.copytree(lupa_third_party(work / "sdist") / "luajit21", tree)
        env = {**os.environ, "KILN_HOME": str(work / "store"), "CCACHE_DIR": str(work / "ccache"),
               "SCCACHE_DIR": str(work / "sccache"), "SCCACHE_IDLE_TIMEOUT": "0"}  # fmt: skip
        env.pop("KILN_SERVER", None)
        launcher = work / "launcher"
        kiln_cc = f"CC={launcher}/kiln-cc gcc"
        commands = {
            "plain": [],
            "kiln": [kiln_cc],
            "ccache": [f"CC={ccache} gcc"],
            "sccache": [f"CC={sccache} gcc"],
        }
        run([KILN, "server", "start"], env=env)
        run([sccache, "--start-server"], env=env)
        try:
            run([KILN, "cc", "--setup", str(launcher)], env=env)
            print(f"cc: sandbox set up for gcc in {_set_up(launcher, work, env):.1f} s (once)")

            def build(name: str) -> float:
                run(["make", "clean"], cwd=tree, env=env)
                return run(["make", "-j2", "-s", *commands[name]], cwd=tree, env=env)

            def empty(name: str) -> None:
                """Empty ``name``'s cache (Kiln: a new store, its sandbox set up)."""
                if name == "kiln":
                    run([KILN, "server", "stop"], env=env)
                    shutil.rmtree(work / "store")
                    run([KILN, "server", "start"], env=env)
                    _set_up(launcher, work, env)
                elif name == "ccache":
                    shutil.rmtree(work / "ccache", ignore_errors=True)
                elif name == "sccache":
                    run([sccache, "--stop-server"], env=env)
                    shutil.rmtree(work / "sccache", ignore_errors=True)
                    run([sccache, "--start-server"], env=env)

            colds: dict[str, list[float]] = {name: [] for name in commands}
            for _ in range(COLD_ROUNDS):  # interleaved: a slow minute hits all alike
                for name in commands:
                    empty(name)
                    colds[name].append(build(name))
            cold = {name: statistics.median(times) for name, times in colds.items()}
            _expect_hits(env, 0)
            warm = {n: statistics.median(build(n) for _ in range(ROUNDS)) for n in commands}
            _expect_hits(env, 147 * ROUNDS)
            run([KILN, "server", "stop"], env=env)
            run([KILN, "server", "start"], env=env)
            first_warm = build("kiln")
            link = _pass_through(launcher, work, env)
        finally:
            subprocess.run([KILN, "server", "stop"], env=env, capture_output=True)
            subprocess.run([sccache, "--stop-server"], env=env, capture_output=True)
    print(f"cc: cold ccache {cold['ccache']:.1f} s ({cold['ccache'] / cold['plain']:.2f}× make), "
          f"sccache {cold['sccache']:.1f} s ({cold['sccache'] / cold['plain']:.2f}× make); "
          f"warm sccache {warm['sccache']:.2f} s ({warm['kiln'] / warm['sccache']:.2f}× for kiln); "
          f"kiln's first warm build after a server start {first_warm:.2f} s "
          f"({first_warm / warm['ccache']:.2f}× ccache)")  # fmt: skip
    print(
        f"cc: a link through kiln-cc costs {(link[0] - link[1]) * 1000:.1f} ms more than gcc's own"
    )
    return [
        report("cc cold build (LuaJIT, make -j2)", cold["kiln"], "make", cold["plain"], "≤ 1.10"),
        report("cc warm rebuild after make clean", warm["kiln"], "ccache", warm["ccache"], "≤ 1.0"),
        report("cc pass-through (a link)", link[0], "gcc", link[1], "≤ 5 ms more"),
    ]


def _set_up(launcher: Path, work: Path, env: dict[str, str]) -> float:
    """Compile one trivial unit: the store builds gcc's sandbox root."""
    (work / "setup.c").write_text("int setup(void) { return 0; }\n")
    return run([f"{launcher}/kiln-cc", "gcc", "-c", "setup.c"], cwd=work, env=env)


def _expect_hits(env: dict[str, str], hits: int) -> None:
    got = subprocess.run([KILN, "cc", "--stats", "--json"], env=env, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    if f'"hits": {hits},' not in got:
        raise SystemExit(f"bench: expected {hits} hits, the store says {got}")


def _pass_through(launcher: Path, work: Path, env: dict[str, str]) -> tuple[float, float]:
    """Median seconds of a link through kiln-cc and of the same link."""
    (work / "main.c").write_text("int main(void) { return 0; }\n")
    subprocess.run(["gcc", "-c", "main.c"], cwd=work, check=True)
    gcc = real_binary("gcc")

    def link(argv: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run([*argv, "main.o", "-o", "main"], cwd=work, env=env, check=True)
        return time.perf_counter() - start

    ours = statistics.median(link([f"{launcher}/kiln-cc", "gcc"]) for _ in range(CALLS))
    theirs = statistics.median(link([gcc]) for _ in range(CALLS))
    return ours, theirs
