"""Build history: `kiln why`, `show`, `log` and `trace` on the example,
and pruning it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from engine_helpers import build

from kiln.engine import retention, stamp
from kiln.store import db

KILN = str(Path(sys.executable).parent / "kiln")


@pytest.fixture
def kiln_in(example: Path, tmp_path: Path):
    env = {**os.environ, "KILN_HOME": str(tmp_path / "home"), "KILN_RACY_WINDOW_MS": "0"}

    def run(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([KILN, *args], cwd=example, env=env, capture_output=True, text=True)
        assert proc.returncode == code, proc.stderr
        return proc

    return run


def test_why_names_the_changed_input_of_each_step_that_ran(example: Path, kiln_in) -> None:
    kiln_in("build")
    first = kiln_in("why", "--json")
    assert {tuple(i["reasons"]) for i in json.loads(first.stdout)} == {
        ("never ran before (no earlier build recorded this step)",)
    }
    with open(example / "text" / "glaze.txt", "a") as f:
        f.write("Glaze again.\n")
    kiln_in("build")
    report = {
        (i["target"], i["step"]): i["reasons"] for i in json.loads(kiln_in("why", "--json").stdout)
    }
    assert set(report) == {("counts", "count glaze"), ("report", "merge counts")}
    [glaze] = report[("counts", "count glaze")]
    assert glaze.startswith("input text/glaze.txt changed: ")
    [merge] = report[("report", "merge counts")]
    assert merge.startswith("input counts/glaze.txt changed: ")  # an upstream output
    kiln_in("build")
    assert "every step was a cache hit" in kiln_in("why").stdout


def test_why_names_a_changed_argument(example: Path, kiln_in) -> None:
    kiln_in("build", "chapters")
    kilnfile = example / "kilnfile.py"
    kilnfile.write_text(kilnfile.read_text().replace('"chapters.json"', '"list.json"'))
    kiln_in("build", "chapters")
    [item] = json.loads(kiln_in("why", "chapters", "--json").stdout)
    assert any(r.startswith("arguments changed: ") and "list.json" in r for r in item["reasons"])


def test_show_log_and_trace(example: Path, kiln_in, tmp_path: Path) -> None:
    kiln_in("build")
    shown = json.loads(kiln_in("show", "counts", "--json").stdout)
    assert [s["step"] for s in shown] == ["count kiln", "count clay", "count fire", "count glaze"]
    clay = shown[1]
    assert clay["status"] == "executed" and clay["exit_code"] == 0
    assert set(clay["inputs"]) == {"text/clay.txt", "tools/textkit.wasm"}
    assert set(clay["outputs"]) == {"counts/clay.txt"}
    assert "== counts: count clay [executed, exit code 0]" in kiln_in("log", "counts").stdout

    out = tmp_path / "trace.json"
    kiln_in("trace", "-o", str(out))
    ran = [e for e in json.loads(out.read_text())["traceEvents"] if e["ph"] == "X"]
    assert len(ran) == 6 and {e["tid"] for e in ran} <= set(range(os.cpu_count() or 1))
    assert all(e["dur"] >= 0 and e["cat"] == "executed" for e in ran)

    os.utime(example / "book.txt")  # the stamp no longer holds; every step is a cache hit
    kiln_in("build")
    kiln_in("trace", "-o", str(out))
    events = json.loads(out.read_text())["traceEvents"]
    steps = [e for e in events if e["ph"] in ("X", "i")]
    assert len(steps) == 6 and all(e["ph"] == "i" and e["cat"] == "cached" for e in steps)
    lanes = {e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    assert "cache hits" in lanes


def test_history_commands_need_a_build(kiln_in) -> None:
    proc = kiln_in("why", code=3)
    assert "no build of" in proc.stderr and "kiln build" in proc.stderr


def test_explain_names_each_kind_of_change() -> None:
    from kiln.engine.history import StepRow, explain

    def row(build: int, key: str, **identity) -> StepRow:
        base = {"argv": ["t.wasm", "a"], "env": {"LANG": "C"}, "inputs": {}, "outputs": ["o"]}
        return StepRow(
            build, 0, "t", "step", key, "executed", 0, 0.0, 1.0, {**base, **identity}, None
        )

    digest = "0" * 64 + "/1"
    old = row(1, "k1", inputs={"a.txt": digest, "gone.txt": digest})
    new = row(2, "k2", inputs={"a.txt": "1" * 64 + "/2", "new.txt": digest},
              env={"LANG": "C.UTF-8"}, argv=["t.wasm", "b"])  # fmt: skip
    reasons = explain(old, new)
    assert reasons[0].startswith("input a.txt changed: 000000000000/1 -> 111111111111/2")
    assert "input gone.txt is no longer used" in reasons
    assert "input new.txt is new" in reasons
    assert "arguments changed: 't.wasm a' -> 't.wasm b'" in reasons
    assert "environment variable LANG changed: 'C' -> 'C.UTF-8'" in reasons
    assert explain(None, new) == ["never ran before (no earlier build recorded this step)"]
    assert "was not in the cache" in explain(row(1, "k2"), new)[0]


# ------------------------------------------------------------------ pruning


def _count(conn, sql: str, *params) -> int:
    return conn.execute(f"SELECT COUNT(*) FROM {sql}", params).fetchone()[0]


def test_history_stays_bounded_and_why_still_explains(
    example: Path, kiln_in, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    kiln_in("build")  # build 1: every step runs
    conn = db.connect(home / "kiln.db")
    try:
        for _ in range(200):  # no-op builds, answered from the stamp as `kiln build` does
            assert stamp.answer(conn, home / "cas", example, stamp.ALL_TARGETS) is not None
        assert _count(conn, "builds") <= retention.KEEP_BUILDS + retention.PRUNE_EVERY
        # The next build's id is a multiple of PRUNE_EVERY: it prunes as it is recorded.
        [(last,)] = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'builds'")
        due = (last // retention.PRUNE_EVERY + 1) * retention.PRUNE_EVERY
        conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'builds'", (due - 1,))
        with open(example / "text" / "glaze.txt", "a") as f:
            f.write("Glaze again.\n")
        kiln_in("build")
        ids = {i for (i,) in conn.execute("SELECT id FROM builds")}
        assert due in ids and len(ids) == retention.KEEP_BUILDS + 1
        assert 1 in ids  # the previous run of the steps that ran, 200 builds back
        assert _count(conn, "build_steps WHERE build NOT IN (SELECT id FROM builds)") == 0
    finally:
        conn.close()
    report = {
        (i["target"], i["step"]): i["reasons"] for i in json.loads(kiln_in("why", "--json").stdout)
    }
    assert set(report) == {("counts", "count glaze"), ("report", "merge counts")}
    [glaze] = report[("counts", "count glaze")]
    assert glaze.startswith("input text/glaze.txt changed: ")


def test_prune_drops_stale_source_rows_and_gone_projects(
    store, example: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    shutil.copytree(example, other)
    build(store, example)
    build(store, other)
    conn = store.conn
    under = "source_files WHERE path >= ? AND path < ?"
    mine, theirs = (str(example) + "/", str(example) + "0"), (str(other) + "/", str(other) + "0")
    kept = _count(conn, under, *mine)
    assert kept > 1 and _count(conn, under, *theirs) == kept
    glaze = example / "text" / "glaze.txt"
    with open(glaze, "a") as f:
        f.write("Glaze again.\n")
    shutil.rmtree(other)

    pruned = retention.prune(conn)
    assert pruned.projects == 1 and pruned.builds == 1
    assert _count(conn, under, *theirs) == 0
    assert _count(conn, "builds WHERE project = ?", str(other)) == 0
    assert _count(conn, "build_stamps WHERE project = ?", str(other)) == 0
    assert _count(conn, "source_files WHERE path = ?", str(glaze)) == 0  # changed since
    assert _count(conn, under, *mine) == kept - 1
    assert build(store, example).files_hashed == 1  # only the changed file is read again


def test_an_automatic_prune_checks_a_slice_of_source_rows_at_a_time(store, example: Path) -> None:
    build(store, example)
    conn = store.conn
    total = _count(conn, "source_files")
    wasm = example / "tools" / "textkit.wasm"
    assert conn.execute("SELECT MAX(path) FROM source_files").fetchone()[0] == str(wasm)
    os.utime(wasm, ns=(0, 0))  # its row, the last one, is stale; no other is
    rounds = (total + 1) // 2
    deleted = [retention.prune(conn, sweep=2).source_files for _ in range(rounds)]
    assert deleted == [0] * (rounds - 1) + [1]
    assert _count(conn, "source_files") == total - 1


def test_gc_forgets_the_history_of_a_project_that_is_gone(
    example: Path, kiln_in, tmp_path: Path
) -> None:
    kiln_in("build")
    moved = example.with_name("moved")
    example.rename(moved)
    env = {**os.environ, "KILN_HOME": str(tmp_path / "home")}
    try:
        proc = subprocess.run([KILN, "gc", "--json"], env=env, capture_output=True, text=True)
    finally:
        moved.rename(example)
    assert proc.returncode == 0, proc.stderr
    history = json.loads(proc.stdout)["history"]
    assert (history["projects"], history["builds"], history["steps"]) == (1, 1, 6)
    again = subprocess.run([KILN, "gc", "--json"], env=env, capture_output=True, text=True)
    assert json.loads(again.stdout)["history"]["builds"] == 0
