"""A recursive native step against the same compiles requested by the build
file: the overhead of `make CC="/kiln/bin/kiln-sub cc gcc"` in one
`native(..., recursive=True)` step.

The project is synthetic: UNITS small C units (a shared header, the C
library's headers) and a `main.c`, in a temporary folder. Both sides run
`kiln build -jJOBS` (no resident server) on a copy of it:

- the peer, "requested by the build file": the kilnfile asks for one
  `native("gcc", "-O2", "-Wall", "-Iinclude", "-c", ...)` step per unit
  (like examples/calc's `compile_unit`), then a link step;
- Kiln recursive: the kilnfile's one target runs `make -jJOBS
  CC="/kiln/bin/kiln-sub cc gcc"` in a recursive native step (tools make,
  sh, mkdir, gcc), so each of make's compiles (the same flags) is a step
  the build runs for it; the link goes through kiln-sub to gcc directly.

cold: every compile new (the header carries a nonce per build, so no
result is in the store; the peer's link gets a new setting in its
environment, since the objects come out the same each time), the store
itself warm: a warm-up build of each side beforehand made the sandbox
roots of gcc and of make+sh+mkdir+gcc and the tool index, as any used
store has them. The two sides take turns; the median of ROUNDS. The main
figure is B's whole build against A's.

warm (for information): make runs again with every compile in the store
(the Makefile changed: the make step runs, its compiles are all hits,
its link runs), against the peer's build evaluated again with every
compile a hit and its link run again (a setting in the link's environment
changed). The same work but for the make step around it.

Sizes: KILN_BENCH_RECURSIVE_UNITS (24), KILN_BENCH_RECURSIVE_JOBS (2),
KILN_BENCH_RECURSIVE_ROUNDS (7).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench.common import KILN, report, run_json
from kiln.cli.doctor import check_bubblewrap
from kiln.exec.native import bwrap_path

UNITS = int(os.environ.get("KILN_BENCH_RECURSIVE_UNITS", "24"))
JOBS = int(os.environ.get("KILN_BENCH_RECURSIVE_JOBS", "2"))
ROUNDS = int(os.environ.get("KILN_BENCH_RECURSIVE_ROUNDS", "7"))
CFLAGS = ["-O2", "-Wall", "-Iinclude"]

PEER_KILNFILE = f"""\
from kiln.build import gather, glob, native, setting, target

CFLAGS = {CFLAGS!r}


async def compile_unit(unit):
    obj = f"obj/{{unit.path}}.o"
    step = await native(
        "gcc", *CFLAGS, "-c", unit.path, "-o", obj,
        tools=["gcc"], inputs=[unit, *glob("include/*.h")], outputs=[obj],
        description=f"cc {{unit.path}}",
    )
    return step.file(obj)


@target
async def prog():
    objects = await gather(*(compile_unit(u) for u in glob("src/*.c")))
    return await native(
        "gcc", *(o.path for o in objects), "-o", "prog",
        tools=["gcc"], inputs=objects, outputs=["prog"],
        env={{"LINK_ROUND": setting("link-round", "0")}}, description="link prog",
    )
"""

RECURSIVE_KILNFILE = """\
from kiln.build import glob, native, setting, source, target


@target
async def prog():
    return await native(
        "make", f"-j{setting('make-jobs', '2')}", "CC=/kiln/bin/kiln-sub cc gcc",
        tools=["make", "sh", "mkdir", "gcc"],
        inputs=[source("Makefile"), *glob("src/*.c"), *glob("include/*.h")],
        outputs=["prog"], recursive=True, description="make prog",
    )
"""

MAKEFILE = f"""\
CC ?= cc
CFLAGS ?= {" ".join(CFLAGS[:2])}
OBJECTS = $(patsubst src/%.c,obj/%.o,$(sort $(wildcard src/*.c)))

prog: $(OBJECTS)
\t$(CC) $(OBJECTS) -o $@

obj/%.o: src/%.c include/common.h
\t@mkdir -p obj
\t$(CC) $(CFLAGS) -Iinclude -c $< -o $@
"""

HEADER = """\
#ifndef COMMON_H
#define COMMON_H
#include <stddef.h>
#include <stdint.h>

struct table {
    size_t len;
    uint32_t items[64];
};

static inline uint32_t mix(uint32_t h, uint32_t v) {
    h ^= v + 0x9e3779b9u + (h << 6) + (h >> 2);
    return h;
}

void table_fill(struct table *t, uint32_t seed);
"""

UNIT = """\
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common.h"

static int compare(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static uint32_t checksum(const struct table *t) {
    uint32_t h = 0;
    for (size_t i = 0; i < t->len; i++)
        h = mix(h, t->items[i]);
    return h;
}

uint32_t unit_@N@(uint32_t seed) {
    struct table t;
    char name[32];
    table_fill(&t, seed * @N@ + 1);
    qsort(t.items, t.len, sizeof t.items[0], compare);
    snprintf(name, sizeof name, "unit %d", @N@);
    return mix(checksum(&t), (uint32_t)strlen(name));
}
"""


def write_project(folder: Path, side: str) -> None:
    """The synthetic project, for ``side`` ("peer" or "recursive")."""
    (folder / "src").mkdir(parents=True)
    (folder / "include").mkdir()
    decls = "".join(f"uint32_t unit_{i}(uint32_t seed);\n" for i in range(UNITS))
    (folder / "include" / "common.h").write_text(HEADER + decls + "#endif\n")
    for i in range(UNITS):
        (folder / "src" / f"unit_{i}.c").write_text(UNIT.replace("@N@", str(i)))
    calls = "".join(f"    h = mix(h, unit_{i}(h));\n" for i in range(UNITS))
    (folder / "src" / "main.c").write_text(
        '#include <stdio.h>\n#include "common.h"\n\n'
        "void table_fill(struct table *t, uint32_t seed) {\n"
        "    t->len = 64;\n"
        "    for (size_t i = 0; i < t->len; i++)\n"
        "        seed = t->items[i] = seed * 1103515245u + 12345u;\n"
        "}\n\n"
        f"int main(void) {{\n    uint32_t h = 1;\n{calls}"
        '    printf("%u\\n", (unsigned)h);\n    return 0;\n}\n'
    )
    if side == "peer":
        (folder / "kilnfile.py").write_text(PEER_KILNFILE)
    else:
        (folder / "kilnfile.py").write_text(RECURSIVE_KILNFILE)
        (folder / "Makefile").write_text(MAKEFILE)


def fresh(template: Path, folder: Path, nonce: str) -> Path:
    """A copy of ``template`` whose header (an input of every compile)
    carries ``nonce``: none of its compiles is in the store."""
    shutil.copytree(template, folder)
    header = folder / "include" / "common.h"
    header.write_text(f"/* {nonce} */\n" + header.read_text())
    return folder


def build(folder: Path, env: dict[str, str], side: str, nonce: str = "") -> tuple[float, dict]:
    """``kiln build -jJOBS`` of ``side``'s project in ``folder``: (seconds,
    its JSON report); the peer's link environment gets ``nonce``."""
    define = f"link-round={nonce}" if side == "peer" else f"make-jobs={JOBS}"
    return run_json([KILN, "build", f"-j{JOBS}", "--json", "-D", define], cwd=folder, env=env)


def expect(report_: dict, executed: int, cached: int, what: str) -> None:
    got = (report_["executed"], report_["cached"])
    if not report_["ok"] or got != (executed, cached):
        raise SystemExit(
            f"bench: {what}: expected {executed} steps run and {cached} cached, "
            f"got {got[0]} and {got[1]} (ok: {report_['ok']})"
        )


def main() -> list[dict]:
    if bwrap_path() is None or check_bubblewrap().status != "ok":
        print("recursive: skipped, bubblewrap cannot make sandboxes here (see `kiln doctor`)")
        return []
    compiles = UNITS + 1  # and main.c
    with tempfile.TemporaryDirectory(prefix="kiln-bench-recursive-") as tmp_name:
        tmp = Path(tmp_name)
        env = {**os.environ, "KILN_HOME": str(tmp / "home"), "KILN_SERVER": "off",
               "KILN_RACY_WINDOW_MS": "0"}  # fmt: skip
        # Kiln as installed runs from cached bytecode; without it every run
        # would compile Kiln's sources again.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        templates = {side: tmp / f"template-{side}" for side in ("peer", "recursive")}
        for side, folder in templates.items():
            write_project(folder, side)
            # warm-up: the sandbox roots and the tool index into the store
            build(fresh(folder, tmp / f"warm-up-{side}", f"warm-up {side}"), env, side)

        colds: dict[str, list[float]] = {"peer": [], "recursive": []}
        own: dict[str, list[float]] = {"peer": [], "recursive": []}  # as Kiln reports it
        last: dict[str, Path] = {}
        for i in range(ROUNDS):  # interleaved: a slow minute hits both alike
            for side in ("peer", "recursive") if i % 2 == 0 else ("recursive", "peer"):
                folder = fresh(templates[side], tmp / f"{side}-{i}", f"{side} {i}")
                # the objects are the same each round: a new link too
                took, got = build(folder, env, side, f"cold {i}")
                # peer: the compiles and the link; recursive: the compiles and make
                expect(got, compiles + 1, 0, f"{side} cold build")
                colds[side].append(took)
                own[side].append(got["seconds"])
                last[side] = folder
        outputs = {side: _program_output(folder) for side, folder in last.items()}
        if outputs["peer"] != outputs["recursive"]:
            raise SystemExit(f"bench: the two programs differ: {outputs}")

        warms: dict[str, list[float]] = {"peer": [], "recursive": []}
        makefile = last["recursive"] / "Makefile"
        for i in range(ROUNDS):
            took, got = build(last["peer"], env, "peer", f"warm {i}")
            expect(got, 1, compiles, "peer warm build")
            warms["peer"].append(took)
            makefile.write_text(MAKEFILE + f"# warm round {i}\n")
            took, got = build(last["recursive"], env, "recursive")
            expect(got, 1, compiles, "recursive warm build")
            warms["recursive"].append(took)

    cold = {side: statistics.median(times) for side, times in colds.items()}
    warm = {side: statistics.median(times) for side, times in warms.items()}
    extra = (cold["recursive"] - cold["peer"]) / compiles
    pairs = [r / p for r, p in zip(colds["recursive"], colds["peer"], strict=True)]
    inside = statistics.median(own["recursive"]) / statistics.median(own["peer"])
    print(f"recursive: cold builds, {compiles} compiles -j{JOBS}: recursive "
          f"{_ms(colds['recursive'])}, peer {_ms(colds['peer'])} ms; "
          f"{extra * 1000:+.1f} ms per compile; each round's ratio "
          f"{'/'.join(f'{r:.2f}' for r in pairs)}; ratio of the build times Kiln reports "
          f"(without the process start) {inside:.2f}")  # fmt: skip
    print(f"recursive: warm builds (every compile a hit, the link run): recursive "
          f"{_ms(warms['recursive'])}, peer {_ms(warms['peer'])} ms")  # fmt: skip
    return [
        report(f"recursive native step, cold ({compiles} compiles requested through "
               f"kiln-sub cc, make -j{JOBS})", cold["recursive"],
               "the same compiles as steps of the build file", cold["peer"], "≤ 1.5"),
        report("recursive native step, warm (make again, every compile a hit)",
               warm["recursive"], "the build file evaluated again, every compile a hit",
               warm["peer"], "report"),
    ]  # fmt: skip


def _program_output(folder: Path) -> str:
    program = folder / "kiln-out" / "prog" / "prog"
    return subprocess.run([str(program)], check=True, capture_output=True, text=True).stdout


def _ms(times: list[float]) -> str:
    return "/".join(f"{t * 1000:.0f}" for t in times)


if __name__ == "__main__":
    main()
