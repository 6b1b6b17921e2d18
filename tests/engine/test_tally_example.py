"""examples/tally: a 14-unit C program built by clang inside WebAssembly,
then run as WebAssembly on its test cases. Reproducible across stores and
across engines."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from engine_helpers import C_STORE, build, c_store_fixture, ran  # noqa: F401 (the c_store fixture)

from conftest import copy_example
from kiln.engine.check import check_engines
from kiln.exec.node import find_node
from kiln.store import Store

# The first run downloads @yowasp/clang from registry.npmjs.org.
pytestmark = pytest.mark.network

def _outputs(report) -> dict[str, str]:
    """Every step's description -> the digests of its outputs."""
    out = {}
    for step in report.steps:
        assert step.result is not None, step.description
        files = sorted((f.path, f.digest.hash) for f in step.result.output_files)
        folders = sorted((d.path, d.tree_digest.hash) for d in step.result.output_directories)
        out[step.description] = repr((files, folders))
    return out


def _seeded_store(home: Path) -> Store:
    """An empty store, but for clang compiled to this CPU's machine code
    (host-specific, never part of a result): copied in to save a minute."""
    modules = home / "wasm-modules"
    modules.mkdir(parents=True)
    for cached in (C_STORE / "wasm-modules").glob("*.cwasm"):
        shutil.copy(cached, modules / cached.name)
    return Store(home)


def test_tally_passes_its_cases(c_store, tmp_path, monkeypatch) -> None:
    root = copy_example("tally", tmp_path, monkeypatch)
    report = build(c_store, root)
    assert report.ok, report.errors
    assert (root / "kiln-out" / "tally" / "tally.wasm").read_bytes()[:4] == b"\0asm"
    cases = [s for s in report.steps if s.description.startswith("case ")]
    assert len(cases) == 6 and all(s.result.exit_code == 0 for s in cases)


@pytest.mark.slow
def test_two_empty_stores_build_identical_objects_and_program(
    c_store, tmp_path, monkeypatch
) -> None:
    root = copy_example("tally", tmp_path, monkeypatch)
    build(c_store, root, "tally")  # makes sure the compiled module is in the shared store
    digests = []
    for name in ("one", "two"):
        with _seeded_store(tmp_path / name) as store:
            report = build(store, root, "tally")
            assert report.ok, report.errors
            assert len([s for s in ran(report) if s.startswith("tally: cc ")]) == 14
            digests.append(_outputs(report))
    assert digests[0] == digests[1]
    assert len([d for d in digests[0] if d.startswith("cc ")]) == 14


@pytest.mark.skipif(find_node() is None, reason="Node.js is not installed")
def test_the_program_gives_the_same_results_under_both_engines(
    c_store, tmp_path, monkeypatch
) -> None:
    root = copy_example("tally", tmp_path, monkeypatch)
    report = build(c_store, root, "check")
    assert report.ok, report.errors
    for step in (s for s in report.steps if s.description.startswith("case ")):
        outcome = check_engines(c_store, step.key)
        assert outcome.differences == [], (step.description, outcome.differences)
