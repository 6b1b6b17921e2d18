"""Helpers shared by the benchmarks: real binaries, timing, reporting."""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

# The virtualenv's own console script: no pyenv shim in front of it.
KILN = str(Path(sys.executable).parent / "kiln")


def real_binary(name: str) -> str:
    """The real executable, skipping pyenv shims (which add ~50 ms a call)."""
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if "shims" in d:
            continue
        p = shutil.which(name, path=d)
        if p:
            return p
    raise SystemExit(f"bench: {name} not found on PATH")


def kiln_client(folder: Path, env: dict[str, str]) -> str:
    """The native client for the store of ``env`` (``kiln server
    install-client``), installed in ``folder``; the Python entry point
    where there is none for this machine."""
    proc = subprocess.run(
        [KILN, "server", "install-client", str(folder)], env=env, capture_output=True, text=True
    )
    client = folder / "kiln"
    return str(client) if proc.returncode == 0 and client.is_file() else KILN


def run(argv: list[str], cwd: str | Path | None = None, env: dict[str, str] | None = None) -> float:
    """Run a command to completion; seconds of wall time. Fails loudly."""
    return _timed(argv, cwd, env, subprocess.DEVNULL)[0]


def run_json(
    argv: list[str], cwd: str | Path | None = None, env: dict[str, str] | None = None
) -> tuple[float, dict]:
    """Like ``run``, for a command printing JSON: (seconds, what it printed)."""
    took, out = _timed(argv, cwd, env, subprocess.PIPE)
    return took, json.loads(out)


def _timed(
    argv: list[str], cwd: str | Path | None, env: dict[str, str] | None, stdout: int
) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv)} failed: {proc.stderr}")
    return took, proc.stdout or ""


def median_of(n: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(n))


def make_tree(root: Path, dirs: int, files_per_dir: int, seed: int = 0) -> int:
    """A source-like tree: ``dirs`` folders in 20 groups, small files of 100-3000 bytes."""
    rng = random.Random(seed)
    count = 0
    for d in range(dirs):
        sub = root / f"g{d % 20:02d}" / f"d{d:04d}"
        sub.mkdir(parents=True)
        for f in range(files_per_dir):
            (sub / f"f{f:02d}.c").write_bytes(rng.randbytes(rng.randint(100, 3000)))
            count += 1
    return count


def report(name: str, ours: float, peer_name: str, peer: float, goal: str) -> dict:
    ratio = ours / peer if peer else float("inf")
    print(
        f"{name}: kiln {ours * 1000:.1f} ms, {peer_name} {peer * 1000:.1f} ms, "
        f"ratio {ratio:.2f} (goal {goal})",
        flush=True,
    )
    return {
        "name": name,
        "kiln_s": ours,
        "peer": peer_name,
        "peer_s": peer,
        "ratio": ratio,
        "goal": goal,
    }


def time_fresh_action(store, spec, executor, kind: str) -> float:
    """Seconds to store an action, find it missing from the cache, execute
    it under the store's execute-once lock and record the result."""
    start = time.perf_counter()
    key = store.put_action(spec)
    action, command = spec.action()
    run = store.execute_once(key, lambda: (executor.execute(key, action, command), kind))
    assert run.result.exit_code == 0 and not run.cached
    return time.perf_counter() - start
