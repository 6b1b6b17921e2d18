"""Concurrency against one store: real `kiln build` processes of the bundled
wasm example, many at once, in one project or in several, while `kiln gc`
runs again and again.

Every build must succeed and leave exactly what a build alone leaves; an
action runs once however many builds want it at the same moment; and the
store stays intact. (Before: "database is locked" from a connection shared
by threads, a `kiln-out` folder two builds wrote into at once, and GC
deleting the blobs of running builds.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest

from conftest import EXAMPLE, KILN, run_kiln, snapshot

BUILDS = 6
VARIANTS = 3  # projects differ in one chapter: some keys shared, some not


def _write_variant(project: Path, variant: int) -> None:
    """Chapter "kiln" of variant 0 is the example's; others add a line."""
    text = (EXAMPLE / "text" / "kiln.txt").read_text()
    extra = "".join(f"Variant {variant} adds word{variant}.\n" for _ in range(variant))
    (project / "text" / "kiln.txt").write_text(text + extra)


def _project(path: Path, variant: int) -> Path:
    shutil.copytree(EXAMPLE, path, ignore=shutil.ignore_patterns("kiln-out"))
    _write_variant(path, variant)
    return path


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "KILN_HOME": str(home), "KILN_RACY_WINDOW_MS": "0", "KILN_SERVER": "off"}


def _start(home: Path, project: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [KILN, "build", "--json", *args],
        cwd=project,
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _build_all(home: Path, projects: list[Path], *args: str) -> list[dict]:
    """Build every project at once; each build's JSON summary, after
    asserting that all of them succeeded."""
    procs = [_start(home, p, *args) for p in projects]
    outputs = [p.communicate(timeout=300) for p in procs]
    failed = [err for p, (_, err) in zip(procs, outputs, strict=True) if p.returncode != 0]
    assert not failed, f"{len(failed)} of {len(procs)} builds failed; first: {failed[0]}"
    return [json.loads(out) for out, _ in outputs]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict]:
    """What one build alone leaves in kiln-out, per variant."""
    base = tmp_path_factory.mktemp("reference")
    out = {}
    for variant in range(VARIANTS):
        project = _project(base / f"v{variant}", variant)
        subprocess.run([KILN, "build"], cwd=project, env=_env(base / "home"), check=True,
                       capture_output=True)  # fmt: skip
        out[variant] = _outputs(project)
    return out


def _outputs(project: Path) -> dict:
    """The target folders under kiln-out (not Kiln's own notes in .kiln/)."""
    return {k: v for k, v in snapshot(project / "kiln-out").items() if not k.startswith(".kiln")}


def _verify(home: Path) -> None:
    proc = run_kiln(home, "store", "verify", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"], proc.stdout + proc.stderr


@pytest.mark.slow
def test_builds_of_one_project_at_once(tmp_path: Path, reference: dict[int, dict]) -> None:
    """All succeed, the output folder is what one build leaves, and each
    action ran once in all (the others waited and reused it)."""
    home, project = tmp_path / "home", _project(tmp_path / "p", 0)
    for variant in (0, 1):  # the second round replaces existing output folders
        _write_variant(project, variant)
        summaries = _build_all(home, [project] * BUILDS)
        runs = Counter(k for s in summaries for k in s["executed_keys"])
        assert runs and max(runs.values()) == 1, runs
        assert _outputs(project) == reference[variant]
    assert os.listdir(project / "kiln-out" / ".kiln" / "tmp") == []
    _verify(home)


def test_builds_of_different_projects_at_once(tmp_path: Path, reference: dict[int, dict]) -> None:
    home = tmp_path / "home"
    projects = [_project(tmp_path / f"p{i}", i % VARIANTS) for i in range(BUILDS)]
    summaries = _build_all(home, projects, "-j4")
    runs = Counter(k for s in summaries for k in s["executed_keys"])
    assert max(runs.values()) == 1, runs
    for i, project in enumerate(projects):
        assert _outputs(project) == reference[i % VARIANTS], project
    _verify(home)


class _GcLoop:
    """`kiln gc` (everything unreferenced goes) run back to back until stopped."""

    def __init__(self, home: Path) -> None:
        self.runs = 0
        self.failures: list[str] = []
        self._home = home
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop)

    def _loop(self) -> None:
        while not self._stop.is_set():
            proc = run_kiln(self._home, "gc")
            self.runs += 1
            if proc.returncode != 0:
                self.failures.append(proc.stderr)

    def __enter__(self) -> _GcLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.slow
def test_builds_while_gc_runs(tmp_path: Path, reference: dict[int, dict]) -> None:
    """GC never takes what a running build uses: its sources, the inputs and
    results of its steps, the results it finds in the cache (a result GC
    took apart first is a miss and runs again)."""
    home = tmp_path / "home"
    projects = [_project(tmp_path / f"p{i}", i % VARIANTS) for i in range(BUILDS)]
    with _GcLoop(home) as gc:
        _build_all(home, projects)
        for project in projects:  # build files "changed": every step is looked up again
            os.utime(project / "kilnfile.py")
        _build_all(home, projects)
    assert gc.runs >= 2 and not gc.failures, gc.failures
    for i, project in enumerate(projects):
        assert _outputs(project) == reference[i % VARIANTS], project
    _verify(home)
