"""A 10,000-step build graph: Kiln vs ninja on the same graph.

The project has 100 libraries of 100 sources; each source is "compiled" by
one step (a trivial WASM tool under Kiln, `cp` under ninja), each library
"archived" by one step over its 100 objects, and the program "linked" from
the 100 archives: 10,101 steps with the fan-in of a real project. The same
graph is written as a kilnfile.py and as a build.ninja.

- full build, empty store / clean tree: `kiln build -j2` vs `ninja -j2`;
- no-op rebuild: `kiln build` vs `ninja`, nothing changed;
- cache-hit cost per step: a build of a second copy of the project against
  the populated store (every step a cache hit, nothing runs), per step.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import KILN, kiln_client, report, run

LIBS = int(os.environ.get("KILN_BENCH_LIBS", "100"))
SOURCES = 100  # per library
CAT_C = Path(__file__).parents[1] / "tests" / "exec" / "guests" / "cat.c"

KILNFILE = '''
from kiln.build import gather, glob, source, target, wasm

CAT = "tools/cat.wasm"


async def library(n):
    files = glob(f"src/lib{n:03d}/*.c")
    steps = await gather(*(
        wasm(source(CAT), f"obj/{f.path}.o", f.path, inputs=[f],
             outputs=[f"obj/{f.path}.o"], description=f"cc {f.path}")
        for f in files
    ))
    objects = [s.file(f"obj/{f.path}.o") for s, f in zip(steps, files)]
    name = f"lib/lib{n:03d}.a"
    return (await wasm(source(CAT), name, *(o.path for o in objects), inputs=objects,
                       outputs=[name], description=f"ar {name}")).file(name)


@target
async def app():
    """The program, linked from every library."""
    archives = await gather(*(library(n) for n in range(LIBS)))
    return await wasm(source(CAT), "app", *(a.path for a in archives), inputs=archives,
                      outputs=["app"], description="link app")
'''


def write_graph(root: Path, cat_wasm: Path) -> int:
    """Sources, kilnfile.py and build.ninja; returns the number of steps."""
    (root / "tools").mkdir(parents=True)
    shutil.copy(cat_wasm, root / "tools" / "cat.wasm")
    (root / "kilnfile.py").write_text(KILNFILE.replace("LIBS", str(LIBS)))
    ninja = ["rule cc\n  command = cp $in $out\n", "rule ar\n  command = cat $in > $out\n"]
    archives = []
    for n in range(LIBS):
        folder = root / "src" / f"lib{n:03d}"
        folder.mkdir(parents=True)
        objects = []
        for i in range(SOURCES):
            path = f"src/lib{n:03d}/f{i:03d}.c"
            (root / path).write_text(f"int f{n}_{i}(void) {{ return {n * SOURCES + i}; }}\n")
            objects.append(f"obj/{path}.o")
            ninja.append(f"build obj/{path}.o: cc {path}\n")
        archives.append(f"lib/lib{n:03d}.a")
        ninja.append(f"build {archives[-1]}: ar {' '.join(objects)}\n")
    ninja.append(f"build app: ar {' '.join(archives)}\n")
    (root / "build.ninja").write_text("".join(ninja))
    return LIBS * SOURCES + LIBS + 1


def _ninja() -> str:
    import ninja

    return str(Path(ninja.BIN_DIR) / "ninja")


def _timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv)} failed: {proc.stderr[-2000:]}")
    return took


def main() -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp_name:
        tmp = Path(tmp_name)
        cat = tmp / "cat.wasm"
        subprocess.run(
            [sys.executable, "-m", "ziglang", "cc", "--target=wasm32-wasi", "-O2", "-s",
             "-o", str(cat), str(CAT_C)],
            check=True,
        )  # fmt: skip
        project = tmp / "project"
        steps = write_graph(project, cat)
        env = {**os.environ, "KILN_HOME": str(tmp / "home"), "KILN_RACY_WINDOW_MS": "0"}
        ninja = _ninja()

        kiln_full = _timed([KILN, "build", "-j2"], project, env)
        ninja_full = _timed([ninja, "-j2"], project, env)
        results.append(
            report(f"full build, {steps} steps", kiln_full, "ninja -j2 (cp)", ninja_full, "<= 2")
        )
        kiln_noop = statistics.median(_timed([KILN, "build"], project, env) for _ in range(5))
        ninja_noop = statistics.median(_timed([ninja], project, env) for _ in range(5))
        results.append(
            report(f"no-op rebuild, {steps} steps", kiln_noop, "ninja no-op", ninja_noop, "<= 3")
        )
        client = kiln_client(tmp / "bin", env)
        run([KILN, "server", "start"], env=env)
        try:
            _timed([client, "build"], project, env)  # the server starts watching the project
            served = statistics.median(_timed([client, "build"], project, env) for _ in range(7))
            ninja_noop = statistics.median(_timed([ninja], project, env) for _ in range(7))
        finally:
            run([KILN, "server", "stop"], env=env)
        how = "native client" if client != KILN else "Python client"
        results.append(
            report(f"no-op rebuild, {steps} steps, kiln server running ({how})", served,
                   "ninja no-op", ninja_noop, "<= 1.0")
        )  # fmt: skip
        copy = tmp / "copy"
        shutil.copytree(project, copy, ignore=shutil.ignore_patterns("kiln-out", "obj", "lib"))
        hits = _timed([KILN, "build"], copy, env)
        per_step_us = hits / steps * 1e6
        print(f"cache-hit cost: {per_step_us:.0f} µs per step ({steps} hits in {hits:.2f} s)")
        results.append({"name": "cache-hit cost per step", "kiln_s": hits / steps,
                        "peer": None, "peer_s": None, "ratio": None, "goal": "report"})  # fmt: skip
    return results


if __name__ == "__main__":
    main()
