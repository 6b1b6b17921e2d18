"""A warm `go build` with `kiln gocacheprog` vs Go's own warm cache.

The program is the test suite's (tests/gocache/wordfreq: three packages
and the parts of the standard library they use). Kiln's side starts every
build from an empty GOCACHE with GOCACHEPROG pointing at the venv's
`kiln` script, its store already holding every entry; the peer is the
same `go build` with Go's own on-disk cache warm. Both remove the
program first, so both link it again. Goal: at most 1.5×.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import go as go_package

from bench.common import KILN, median_of, report, run

PROGRAM = Path(__file__).parents[1] / "tests" / "gocache" / "wordfreq"
GO = str(Path(go_package.__file__).parent / "bin" / "go")
RUNS = 7


def main() -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="kiln-bench-go-") as tmp:
        work = Path(tmp)
        root = work / "wordfreq"
        shutil.copytree(PROGRAM, root)
        base = {
            **os.environ, "GOPATH": str(work / "gopath"), "GOPROXY": "off",
            "GOTOOLCHAIN": "local", "GOTELEMETRY": "off", "CGO_ENABLED": "0",
            "GOFLAGS": "-trimpath", "KILN_HOME": str(work / "store"),
        }  # fmt: skip
        program = work / "bin" / "wordfreq"
        own = {**base, "GOCACHE": str(work / "own-cache")}
        kiln = {**base, "GOCACHEPROG": f"{KILN} gocacheprog --namespace bench"}

        def build(env: dict[str, str], fresh_cache: bool) -> float:
            program.unlink(missing_ok=True)
            if fresh_cache:
                cache = work / "empty-cache"
                shutil.rmtree(cache, ignore_errors=True)
                env = {**env, "GOCACHE": str(cache)}
            return run([GO, "build", "-o", str(program), "."], cwd=root, env=env)

        build(own, fresh_cache=False)  # warm both
        build(kiln, fresh_cache=True)
        ours = median_of(RUNS, lambda: build(kiln, fresh_cache=True))
        peer = median_of(RUNS, lambda: build(own, fresh_cache=False))
        return [report("go build, warm", ours, "go's own cache", peer, "<= 1.5")]
