"""`kiln wasm run`: one module as a memoized action, from the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import run_kiln


def _workspace(tmp_path: Path, module: Path) -> Path:
    ws = tmp_path / "ws"
    (ws / "data" / "sub").mkdir(parents=True)
    shutil.copy(module, ws / "tool.wasm")
    (ws / "data" / "a.txt").write_text("a\n")
    return ws


def _run(home: Path, ws: Path, *args: str):
    import os
    import subprocess

    from conftest import KILN

    return subprocess.run(
        [KILN, "wasm", "run", *args],
        cwd=ws,
        capture_output=True,
        text=True,
        env={**os.environ, "KILN_HOME": str(home)},
    )


def test_runs_once_prints_stdout_and_copies_outputs(home: Path, tmp_path: Path, guest) -> None:
    ws = _workspace(tmp_path, guest("observe"))
    first = _run(home, ws, "--json", "tool.wasm", "--in", "data", "--out", "out", "--", "hi")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["cached"] is False and report["exit_code"] == 0
    assert (ws / "out" / "report.txt").read_text() == "argc=2\n"
    (ws / "out" / "report.txt").unlink()
    second = _run(home, ws, "--json", "tool.wasm", "--in", "data", "--out", "out", "--", "hi")
    again = json.loads(second.stdout)
    assert again["cached"] is True and again["key"] == report["key"]
    assert again["outputs"] == report["outputs"]
    assert (ws / "out" / "report.txt").read_text() == "argc=2\n"
    plain = _run(home, ws, "tool.wasm", "--in", "data", "--out", "out", "--", "hi")
    assert "argv[1]=hi" in plain.stdout and "entry a.txt" in plain.stdout


def test_several_inputs_are_placed_at_their_paths(home: Path, tmp_path: Path, guest) -> None:
    ws = _workspace(tmp_path, guest("observe"))
    (ws / "more").mkdir()
    (ws / "more" / "m.txt").write_text("m\n")
    (ws / "single.txt").write_text("s\n")
    proc = _run(
        home, ws, "tool.wasm", "--in", "data", "--in", "more", "--in", "single.txt", "--out", "out"
    )
    assert proc.returncode == 0, proc.stderr
    assert "entry a.txt" in proc.stdout  # data/ listed by the guest
    conflict = _run(home, ws, "tool.wasm", "--in", "data", "--in", "data")
    assert conflict.returncode == 2 and "two inputs claim the path 'data'" in conflict.stderr


def test_guest_exit_code_is_passed_through(home: Path, tmp_path: Path, guest) -> None:
    ws = _workspace(tmp_path, guest("spin"))
    proc = _run(home, ws, "--fuel", "100000", "tool.wasm")
    assert proc.returncode == 134
    assert "out of fuel after 100000 units" in proc.stderr


def test_missing_module_is_a_clear_error(home: Path, tmp_path: Path) -> None:
    proc = run_kiln(home, "wasm", "run", str(tmp_path / "nope.wasm"))
    assert proc.returncode == 2 and "no such file" in proc.stderr and "Traceback" not in proc.stderr
