"""examples/tally (14 C units) built by clang inside WebAssembly, against
gcc driven by make on the same sources; the median of ROUNDS rounds, each
on a fresh copy:

- full build: `kiln build tally -j2` (toolchain fetched and its module
  compiled beforehand, as on any machine after its first build; every
  compile is new: each unit carries a fresh id) vs `make -j2` from clean;
- one-file change: one unit edited so that its object file changes (a new
  function), then the same two commands: Kiln compiles it and relinks;
- warm rebuild: the output folder removed (`rm -rf kiln-out`, `make clean`)
  and built again from a populated store vs make with a warm ccache.

The one-file change also reports its floor: the time the two steps it
runs (clang on the unit, wasm-ld) took by themselves, as the store recorded
them (the wasm guests and Kiln's WASI host serving their file reads),
against the same make run. Nothing Kiln does around the steps can bring the
one-file ratio below that floor.

Each comparison is made twice: with every `kiln` command starting cold
(KILN_SERVER=off), and with the store's resident server running (`kiln
server start`), which runs each command in a process forked from one that
has Kiln imported and clang's compiled module loaded.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import uuid
from pathlib import Path

from bench.common import KILN, kiln_client, real_binary, report, run, run_json
from kiln.model.digest import Digest
from kiln.rules.toolchains import default_cache
from kiln.server.client import ask
from kiln.store.local import Store

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tally"

MAKEFILE = """CC ?= gcc
CFLAGS = -O2 -Wall -Wextra -Iinclude
SOURCES = $(wildcard src/*.c)
OBJECTS = $(SOURCES:src/%.c=obj/%.o)

tally: $(OBJECTS)
\t$(CC) $(OBJECTS) -o $@

obj/%.o: src/%.c $(wildcard include/*.h) | obj
\t$(CC) $(CFLAGS) -c $< -o $@

obj:
\tmkdir -p obj

clean:
\trm -rf obj tally
"""


def _project(tmp: Path, name: str) -> Path:
    """A copy of the example whose units carry an id new to every store."""
    root = tmp / name
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("kiln-out"))
    tag = uuid.uuid4()
    for unit in (root / "src").glob("*.c"):
        text = unit.read_text()
        unit.write_text(f'__attribute__((used)) static const char build_id[] = "{tag}";\n{text}')
    (root / "Makefile").write_text(MAKEFILE)
    return root


ROUNDS = 3


def _round(
    tmp: Path, name: str, make: str, env: dict[str, str], kiln: str = KILN
) -> dict[str, float]:
    """One round of the three comparisons on a fresh copy of the example
    (``env`` says whether kiln uses its server; ``kiln``: the command)."""
    root = _project(tmp, name)
    times = {
        "kiln full": run([kiln, "build", "tally", "-j2"], cwd=root, env=env),
        "make full": run([make, "-j2"], cwd=root, env=env),
    }
    unit = root / "src" / "stats.c"
    # An edit that changes the object file: one that compiles to the same
    # bytes (say `n + 0` for `n`) would stop Kiln before the link.
    unit.write_text(unit.read_text() + "\nint bench_edit(void) { return 42; }\n")
    one = [kiln, "build", "tally", "-j2", "--json"]
    times["kiln one"], built = run_json(one, cwd=root, env=env)
    times["steps one"] = _steps_seconds(Path(env["KILN_HOME"]), built["executed_keys"])
    times["make one"] = run([make, "-j2"], cwd=root, env=env)

    ccache_env = {**env, "CC": "ccache gcc"}
    run([make, "clean"], cwd=root, env=env)
    run([make, "-j2"], cwd=root, env=ccache_env)  # fills the cache
    run([make, "clean"], cwd=root, env=env)
    times["make warm"] = run([make, "-j2"], cwd=root, env=ccache_env)
    shutil.rmtree(root / "kiln-out")
    times["kiln warm"] = run([kiln, "build", "tally", "-j2"], cwd=root, env=env)
    stats = subprocess.run(["ccache", "-s"], env=ccache_env, capture_output=True, text=True)
    assert "Hits" in stats.stdout or "hit" in stats.stdout.lower()
    return times


def _steps_seconds(home: Path, keys: list[str]) -> float:
    """How long the executed steps ``keys`` ran, by the store's record;
    one changed unit must run exactly its compile and the link."""
    assert len(keys) == 2, f"a one-file change ran {len(keys)} steps, not compile + link"
    with Store(home) as store:
        hits = [store.lookup(Digest.parse(key)) for key in keys]
    assert all(hits), "an executed step has no cached result"
    return sum(hit.duration for hit in hits)  # type: ignore[union-attr]


def main() -> list[dict]:
    if shutil.which("ccache") is None:
        print("c-wasm: skipped, ccache is not installed (apt-get install ccache)")
        return []
    make = real_binary("make")
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp_name:
        tmp = Path(tmp_name)
        # A store kept between runs (like the tests'): the toolchain and its
        # compiled module are reused; every unit's id keeps its compiles new.
        home = default_cache() / "bench-stores" / "c-wasm"
        env = {**os.environ, "KILN_HOME": str(home), "KILN_RACY_WINDOW_MS": "0",
               "CCACHE_DIR": str(tmp / "ccache")}  # fmt: skip
        # Kiln as installed runs from cached bytecode; without it every run
        # would compile Kiln's sources again.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        warm = _project(tmp, "warm-up")  # fetch the toolchain, compile its module
        run([KILN, "build", "tally"], cwd=warm, env=env)
        cold = {**env, "KILN_SERVER": "off"}
        rounds = [_round(tmp, f"cold-{i}", make, cold) for i in range(ROUNDS)]
        env.pop("KILN_SERVER", None)
        client = kiln_client(tmp / "bin", env)
        run([KILN, "server", "start"], env=env)
        try:
            served = [_round(tmp, f"served-{i}", make, env, client) for i in range(ROUNDS)]
            status = ask(home, {"op": "status"})
            # full build + one-file change per round (a warm rebuild never needs it)
            assert status is not None and status["served"] >= 2 * ROUNDS, status
        finally:
            run([KILN, "server", "stop"], env=env)
    rows = []
    for label, results in (("", rounds), (", kiln server running", served)):
        t = {k: statistics.median(r[k] for r in results) for k in results[0]}
        rows += [
            report(f"tally full build (14 units, clang in wasm){label}", t["kiln full"],
                   "make -j2 (gcc)", t["make full"], "<= 3"),
            report(f"tally one-file change{label}", t["kiln one"], "make -j2 (gcc)",
                   t["make one"], "<= 1.5"),
            report(f"  its floor: the compile and link steps alone{label}", t["steps one"],
                   "make -j2 (gcc)", t["make one"], "<= 1.5 for the whole build"),
            report(f"tally one-file change vs its two steps' own durations{label}",
                   t["kiln one"], "the compile and link steps alone", t["steps one"],
                   "<= 1.25 with the server"),
            report(f"tally warm rebuild after rm -rf of the outputs{label}", t["kiln warm"],
                   "make -j2 with a warm ccache", t["make warm"], "<= 1"),
        ]  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
