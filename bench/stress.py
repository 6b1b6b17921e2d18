"""Stress: concurrent builds and GCs on one store, with builds killed at random.

A robustness benchmark, not a speed one: no peer, and the goal is zero on
every count. ``PROJECTS`` copies of the bundled wasm example (two contents,
so some actions are shared by every build and some by half of them) are
built ``BUILDS_PER_PROJECT`` at a time each, all at once on one store, for
``ROUNDS`` rounds; each round edits a chapter, so its steps run again.
Meanwhile `kiln gc` (everything unreferenced goes) runs back to back, and
about ``KILL_SHARE`` of the builds are killed with SIGKILL at a random
moment. Printed:

- builds attempted, killed, and failed (a build not killed that exited
  non-zero), then failed in a last round without kills or GC (recovery);
- wrong results: a project whose kiln-out differs from what a build alone
  (in a separate store) leaves for the same sources;
- duplicate executions: an action executed while another execution of it
  was running, or again when no GC could have removed its result since
  (from the build history; a killed build records none, so what it ran is
  not counted);
- corrupt blobs: what `kiln store verify` finds at the end.

Sizes: ``KILN_STRESS_PROJECTS`` (4), ``KILN_STRESS_ROUNDS`` (6),
``KILN_STRESS_KILL`` (0.3); about a minute on two cores.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import KILN

EXAMPLE = Path(__file__).parents[1] / "examples" / "wordcount"
PROJECTS = int(os.environ.get("KILN_STRESS_PROJECTS", "4"))
ROUNDS = int(os.environ.get("KILN_STRESS_ROUNDS", "6"))
KILL_SHARE = float(os.environ.get("KILN_STRESS_KILL", "0.3"))
BUILDS_PER_PROJECT = 2  # builds of one project racing on its kiln-out folder
VARIANTS = 2  # project contents
KILL_WITHIN = 2.0  # seconds after its start a killed build dies, at most
Snapshot = dict[str, tuple]


@dataclass
class Tally:
    """The counts the benchmark prints (all but attempted, killed and
    executions should be zero)."""

    attempted: int = 0
    killed: int = 0
    failed: int = 0
    failed_after: int = 0  # in the last round, without kills or GC
    wrong: int = 0
    executions: int = 0
    duplicates: int = 0
    gc_runs: int = 0
    gc_failed: int = 0
    checked_blobs: int = 0
    corrupt_blobs: int = 0
    failures: list[str] = field(default_factory=list)  # a few messages, for the reader


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "KILN_HOME": str(home), "KILN_RACY_WINDOW_MS": "0", "KILN_SERVER": "off"}


def _edit(project: Path, variant: int, round_: int) -> None:
    """Round ``round_``'s sources of a project of ``variant``."""
    text = (EXAMPLE / "text" / "kiln.txt").read_text()
    (project / "text" / "kiln.txt").write_text(text + f"Variant {variant} round {round_}.\n")


def _copy(dest: Path) -> Path:
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("kiln-out"))
    return dest


def _snapshot(project: Path) -> Snapshot:
    """Every target folder under kiln-out: kinds, bytes, exec bits, links."""
    out: Snapshot = {}
    root = project / "kiln-out"
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".kiln"]
        for name in dirs + files:
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", path.read_bytes(), os.access(path, os.X_OK))
    return out


class References:
    """What one build alone leaves in kiln-out, per (variant, round): built
    on first use in a project and store of their own."""

    def __init__(self, base: Path) -> None:
        self._project = _copy(base / "reference")
        self._env = _env(base / "reference-home")
        self._known: dict[tuple[int, int], Snapshot] = {}

    def get(self, variant: int, round_: int) -> Snapshot:
        if (variant, round_) not in self._known:
            _edit(self._project, variant, round_)
            subprocess.run([KILN, "build", "-j1"], cwd=self._project, env=self._env, check=True,
                           capture_output=True)  # fmt: skip
            self._known[variant, round_] = _snapshot(self._project)
        return self._known[variant, round_]


class GcLoop:
    """`kiln gc` run back to back until stopped; remembers when each ran."""

    def __init__(self, home: Path, tally: Tally) -> None:
        self.intervals: list[tuple[float, float]] = []
        self._env = _env(home)
        self._tally = tally
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            start = time.time()
            proc = subprocess.run([KILN, "gc"], env=self._env, capture_output=True, text=True)
            self.intervals.append((start, time.time()))
            self._tally.gc_runs += 1
            if proc.returncode != 0:
                self._tally.gc_failed += 1
                self._tally.failures.append(f"gc: {proc.stderr.strip()}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _run_round(
    home: Path, projects: list[tuple[Path, int]], kill_share: float, rng: random.Random
) -> list[tuple[Path, int, bool, int, str]]:
    """Start every build at once, kill some at random moments, wait for all:
    (project, variant, killed, exit code, stderr) per build."""
    builds = []
    for project, variant in projects * BUILDS_PER_PROJECT:
        proc = subprocess.Popen(
            [KILN, "build"], cwd=project, env=_env(home),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        doomed = rng.random() < kill_share
        builds.append((project, variant, proc, rng.uniform(0, KILL_WITHIN) if doomed else None))
    started = time.monotonic()
    for _, _, proc, at in sorted(builds, key=lambda b: b[3] or 0):
        if at is not None:
            time.sleep(max(0.0, started + at - time.monotonic()))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
    outcomes = []
    for project, variant, proc, at in builds:
        _, err = proc.communicate()
        killed = at is not None and proc.returncode == -signal.SIGKILL
        outcomes.append((project, variant, killed, proc.returncode, err))
    return outcomes


def _judge(
    outcomes: list[tuple[Path, int, bool, int, str]],
    reference: Snapshot | dict[int, Snapshot],
    tally: Tally,
    after: bool = False,
) -> None:
    """Count failures, and compare each project some build finished in."""
    finished: dict[Path, int] = {}
    for project, variant, killed, code, err in outcomes:
        tally.attempted += 1
        if killed:
            tally.killed += 1
            continue
        if code != 0:
            if after:
                tally.failed_after += 1
            else:
                tally.failed += 1
            tally.failures.append(f"build: {_first_error(err)}")
            continue
        finished[project] = variant
    for project, variant in finished.items():
        expected = reference[variant] if isinstance(reference, dict) else reference
        if _snapshot(project) != expected:
            tally.wrong += 1
            tally.failures.append(f"wrong result in {project.name}")


def _first_error(stderr: str) -> str:
    lines = stderr.strip().splitlines() or ["(no output)"]
    return next((line for line in lines if "error" in line.lower()), lines[-1])


def _executions(home: Path, gcs: list[tuple[float, float]], tally: Tally) -> None:
    """Count executions and duplicates from the build history: a run of a
    key is a duplicate if it started before an earlier run ended (the
    execute-once lock failed), or when no GC had run since the first build
    that ran it ended (until then that build kept the result from GC, and
    after it no GC could have removed it)."""
    conn = sqlite3.connect(home / "kiln.db")
    rows = conn.execute(
        "SELECT s.key, s.started, s.finished, b.finished FROM build_steps s "
        "JOIN builds b ON b.id = s.build WHERE s.status = 'executed'"
    ).fetchall()
    conn.close()
    by_key: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for key, started, finished, build_finished in rows:
        by_key[key].append((started, finished, build_finished))
    for runs in by_key.values():
        runs.sort()
        tally.executions += len(runs)
        for i, (start, _, _) in enumerate(runs[1:], 1):
            earlier = runs[:i]
            overlapping = start < max(end for _, end, _ in earlier)
            kept_until = min(kept for _, _, kept in earlier)  # the first build to let it go
            collectable = any(g_start < start and g_end > kept_until for g_start, g_end in gcs)
            if overlapping or not collectable:
                tally.duplicates += 1


def _verify(home: Path, tally: Tally) -> None:
    proc = subprocess.run([KILN, "store", "verify", "--json"], env=_env(home),
                          capture_output=True, text=True)  # fmt: skip
    report = json.loads(proc.stdout)
    tally.checked_blobs, tally.corrupt_blobs = report["checked"], len(report["corrupt"])


def stress(base: Path, seed: int = 1) -> Tally:
    """Run the rounds, then a last one without kills or GC; the tally."""
    rng = random.Random(seed)
    tally = Tally()
    home = base / "home"
    references = References(base)
    projects = [(_copy(base / f"p{i}"), i % VARIANTS) for i in range(PROJECTS)]
    gc = GcLoop(home, tally)
    gc.start()
    try:
        for round_ in range(ROUNDS):
            for project, variant in projects:
                _edit(project, variant, round_)
            expected = {v: references.get(v, round_) for v in range(VARIANTS)}
            _judge(_run_round(home, projects, KILL_SHARE, rng), expected, tally)
    finally:
        gc.stop()
    expected = {v: references.get(v, ROUNDS - 1) for v in range(VARIANTS)}
    _judge(_run_round(home, projects, 0.0, rng), expected, tally, after=True)
    _executions(home, gc.intervals, tally)
    _verify(home, tally)
    return tally


def main() -> list[dict]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kiln-stress-") as tmp:
        tally = stress(Path(tmp))
    seconds = time.perf_counter() - started
    print(
        f"stress: {PROJECTS} projects x {BUILDS_PER_PROJECT} builds at once, {ROUNDS} rounds, "
        f"`kiln gc` back to back ({tally.gc_runs} runs, {tally.gc_failed} failed), "
        f"{KILL_SHARE:.0%} of builds killed at random ({seconds:.0f} s)\n"
        f"  builds attempted {tally.attempted}, killed {tally.killed}, failed {tally.failed}, "
        f"failed after the kills {tally.failed_after}\n"
        f"  wrong results {tally.wrong}, duplicate executions {tally.duplicates} "
        f"(of {tally.executions}), corrupt blobs {tally.corrupt_blobs} "
        f"(of {tally.checked_blobs} checked) (goal: 0 failed, wrong, duplicate, corrupt)",
        flush=True,
    )
    for message in tally.failures[:5]:
        print(f"  {message}")
    result = {k: v for k, v in vars(tally).items() if k != "failures"}
    return [{"name": "stress", "seconds": seconds, **result}]
