"""Build history: `kiln why`, `show`, `log` and `trace` on the example,
and pruning it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from engine_helpers import build

from kiln.engine import history, retention, stamp
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
    assert "has not been built" in proc.stderr and "kiln build" in proc.stderr


def test_show_log_and_why_answer_from_the_targets_own_last_build(kiln_in) -> None:
    """A target left out of the last build is shown from the last build that
    included it; one never built is said to be so (exit 3)."""
    for command in ("show", "log", "why", "graph", "inputs"):
        proc = kiln_in(command, "counts", code=3)
        assert "target 'counts'" in proc.stderr and "has not been built" in proc.stderr
        assert "kiln build counts" in proc.stderr
    kiln_in("build", "counts")
    kiln_in("build", "chapters")  # the last build: counts is not in it
    shown = json.loads(kiln_in("show", "counts", "--json").stdout)
    assert [s["step"] for s in shown] == ["count kiln", "count clay", "count fire", "count glaze"]
    assert "== counts: count clay [executed, exit code 0]" in kiln_in("log", "counts").stdout
    why = json.loads(kiln_in("why", "counts", "--json").stdout)
    assert [i["step"] for i in why] == ["count kiln", "count clay", "count fire", "count glaze"]
    assert "every step was a cache hit" in kiln_in("why", "chapters").stdout
    proc = kiln_in("show", "report", code=3)
    assert "has not been built" in proc.stderr and "kiln build report" in proc.stderr


def test_a_step_two_targets_ask_for_is_counted_once_and_shown_for_both(
    example: Path, kiln_in
) -> None:
    """The same action requested by two targets runs and counts once; `kiln
    show` and `log` list it under each of them."""
    (example / "kilnfile.py").write_text(
        "from kiln.build import source, target, wasm\n"
        "async def listing():\n"
        "    return await wasm(source('tools/textkit.wasm'), 'chapters', 'book.txt', 'c.json',\n"
        "                      inputs=[source('book.txt')], outputs=['c.json'],\n"
        "                      description='list chapters')\n"
        "@target\n"
        "async def first():\n"
        "    return await listing()\n"
        "@target\n"
        "async def second():\n"
        "    return await listing()\n"
    )
    report = json.loads(kiln_in("build", "--json").stdout)
    assert (report["executed"], report["cached"]) == (1, 0)
    for name in ("first", "second"):
        [step] = json.loads(kiln_in("show", name, "--json").stdout)
        assert step["step"] == "list chapters"
        assert "list chapters [executed, exit code 0]" in kiln_in("log", name).stdout
    kiln_in("build", "first", "--json")  # the last build: second is not in it
    assert [s["step"] for s in json.loads(kiln_in("show", "second", "--json").stdout)] == [
        "list chapters"
    ]


def test_an_unknown_target_suggests_the_closest_name(kiln_in) -> None:
    proc = kiln_in("build", "--json", "reprt", code=2)
    report = json.loads(proc.stdout)
    assert report["ok"] is False and "no target 'reprt'" in report["error"]
    assert report["hint"].startswith("did you mean 'report'?")
    assert "did you mean 'counts'?" in kiln_in("show", "count", code=2).stderr


def test_json_on_an_evaluation_error_is_json(example: Path, kiln_in) -> None:
    kilnfile = example / "kilnfile.py"
    text = kilnfile.read_text()
    kilnfile.write_text(text + "\ndef broken(:\n")
    for args in (("build", "--json"), ("targets", "--json"), ("graph", "report", "--json")):
        report = json.loads(kiln_in(*args, code=2).stdout)
        assert report["ok"] is False and "syntax error" in report["error"], args
    kilnfile.write_text(text.replace('source("book.txt")', 'source("no-book.txt")'))
    report = json.loads(kiln_in("build", "--json", code=2).stdout)
    assert report["ok"] is False and "no-book.txt" in report["error"] and "hint" in report


def test_graph_of_a_target_is_its_steps_and_what_they_read(
    example: Path, kiln_in, tmp_path: Path
) -> None:
    kiln_in("build")
    graph = json.loads(kiln_in("graph", "report", "--json").stdout)
    labels = {n["key"]: n["label"] for n in graph["nodes"]}
    assert sorted(labels.values()) == [
        "chapters: list chapters", "counts: count clay", "counts: count fire",
        "counts: count glaze", "counts: count kiln", "report: merge counts",
    ]  # fmt: skip
    edges = {(labels[e["from"]], labels[e["to"]]): e["inputs"] for e in graph["edges"]}
    assert edges == {
        (f"counts: count {name}", "report: merge counts"): [f"counts/{name}.txt"]
        for name in ("kiln", "clay", "fire", "glaze")
    }
    # The chapter list is read by the rule of counts, not by a step.
    assert graph["awaits"] == {"counts": ["chapters"], "report": ["counts"]}
    assert {n["status"] for n in graph["nodes"]} == {"executed"}
    only = json.loads(kiln_in("graph", "chapters", "--json").stdout)
    assert [n["label"] for n in only["nodes"]] == ["chapters: list chapters"]
    assert only["edges"] == [] and only["awaits"] == {}

    dot = kiln_in("graph", "report").stdout
    assert dot.startswith('digraph "kiln: report (build 1)" {') and dot.rstrip().endswith("}")
    assert dot.count(" -> ") == 4 + 2  # four outputs read, two targets awaited

    inputs = json.loads(kiln_in("inputs", "report", "--json").stdout)
    assert [(i["kind"], i["path"]) for i in inputs] == [
        ("source", "book.txt"), ("source", "text/clay.txt"), ("source", "text/fire.txt"),
        ("source", "text/glaze.txt"), ("source", "text/kiln.txt"),
        ("source", "tools/textkit.wasm"),
    ]  # fmt: skip
    book = (example / "book.txt").read_bytes()
    assert inputs[0]["digest"] == f"{hashlib.sha256(book).hexdigest()}/{len(book)}"
    assert inputs[0]["read_by"] == ["chapters: list chapters"]
    text = kiln_in("inputs", "counts").stdout.splitlines()
    assert len(text) == 6 and text[0].startswith("source  book.txt  ")
    # From anywhere, with -C (also through the no-op build's quick path).
    env = {**os.environ, "KILN_HOME": str(tmp_path / "home")}
    again = subprocess.run(
        [KILN, "-C", str(example), "graph", "report", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert json.loads(again.stdout)["nodes"] == graph["nodes"]
    noop = subprocess.run(
        [KILN, "-C", str(example), "build"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert noop.returncode == 0 and "nothing to do" in noop.stderr, noop.stderr


def test_graph_of_a_fetch_names_what_it_downloaded(store, tmp_path: Path) -> None:
    """A fetched input is listed as a fetch, with its pin and URL."""
    from kiln.engine.step_graph import step_graph

    payload = b"fetched bytes\n"
    digest = f"{hashlib.sha256(payload).hexdigest()}/{len(payload)}"
    rows = [
        history.StepRow(1, 0, "t", "fetch f.txt", "k1", "cached", None, None, None,
                        {"argv": ["kiln-fetch", "--kind=url", "--mode=file",
                                  f"--pin=sha256:{digest.split('/')[0]}", "--name=f.txt",
                                  "--strip=0", "--", "https://example.org/f.txt"],
                         "inputs": {}, "platform": {"kiln-abi": "kiln-fetch-v1"}},
                        _result({"f.txt": digest})),
        history.StepRow(1, 1, "t", "use", "k2", "executed", 0, 0.0, 1.0,
                        {"argv": ["x"], "inputs": {"f.txt": digest, "src.c": "0" * 64 + "/1"}},
                        None),
    ]  # fmt: skip
    graph = step_graph(store, rows, {"t"})
    assert [(e.source, e.to, e.paths) for e in graph.edges] == [("k1", "k2", ["f.txt"])]
    assert graph.nodes["k1"].fetch and not graph.nodes["k2"].fetch
    assert [(i.path, i.read_by) for i in graph.inputs] == [("src.c", ["k2"])]


def _result(files: dict[str, str]) -> bytes:
    from kiln.model.digest import Digest, canonical_bytes
    from kiln.model.reapi import re_pb2

    result = re_pb2.ActionResult(exit_code=0)
    for path, digest in files.items():
        result.output_files.add(path=path, digest=Digest.parse(digest).to_proto())
    return canonical_bytes(result)


def test_a_store_from_before_awaits_were_recorded_is_upgraded(store, example: Path) -> None:
    """A v4 store (no builds.awaits, no build_steps.also) gains both columns."""
    from kiln.store.local import Store

    build(store, example)
    home = store.home
    conn = store.conn  # the builds table as schema version 4 had it
    conn.execute(
        "CREATE TABLE old (id INTEGER PRIMARY KEY AUTOINCREMENT, project TEXT NOT NULL, "
        "targets TEXT NOT NULL, started REAL NOT NULL, finished REAL, status TEXT NOT NULL)"
    )
    conn.execute("INSERT INTO old SELECT id, project, targets, started, finished, status "
                 "FROM builds")  # fmt: skip
    conn.execute("DROP TABLE builds")
    conn.execute("ALTER TABLE old RENAME TO builds")
    conn.execute("ALTER TABLE build_steps DROP COLUMN also")
    conn.execute("PRAGMA user_version=4")
    store.close()
    with Store(home) as again:
        assert history.awaits(again, 1) == {}  # an old build: nothing recorded
        build(again, example)
        assert history.awaits(again, 2)["report"] == ["counts"]


def test_a_targets_last_build_outlives_the_kept_builds(store, example: Path, monkeypatch) -> None:
    monkeypatch.setattr(retention, "KEEP_BUILDS", 2)
    build(store, example, "counts")
    for _ in range(4):
        build(store, example, "chapters")
    retention.prune(store.conn)
    assert history.last_build_of(store, example, "counts") == 1
    assert len(history.steps(store, 1, "counts")) == 4


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


def test_graph_edges_prefer_the_step_that_made_the_bytes_at_that_path(store) -> None:
    """Several steps made the same bytes (an empty file, say): the reading
    step is joined to the one that made them at the path it read; a project
    file read at its own path is a source."""
    from kiln.engine.step_graph import step_graph

    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855/0"

    def step(seq: int, key: str, inputs: dict[str, str], made: dict[str, str]):
        return history.StepRow(1, seq, "t", key, key, "executed", 0, 0.0, 1.0,
                               {"argv": ["x"], "inputs": inputs}, _result(made))  # fmt: skip

    rows = [
        step(0, "k1", {}, {"a.h": empty}),
        step(1, "k2", {}, {"b.h": empty}),
        step(2, "k3", {"b.h": empty, "a.h": empty, "src/__init__.py": empty}, {}),
    ]
    graph = step_graph(store, rows, None, None, lambda path: path.startswith("src/"))
    assert sorted((e.source, e.paths) for e in graph.edges) == [("k1", ["a.h"]), ("k2", ["b.h"])]
    assert [(i.path, i.read_by) for i in graph.inputs] == [("src/__init__.py", ["k3"])]


_USES_A_FETCH = """
from kiln.build import fetch, source, target, wasm

@target
async def used():
    data = await fetch.url("{url}", digest="{pin}")
    return await wasm(source("tools/cat.wasm"), "o", inputs=[data], outputs=["o"],
                      description="use it")
"""


def test_inputs_name_a_fetch_with_its_pin_and_url(store, tmp_path: Path, tools) -> None:
    from engine_helpers import write_project
    from fetch_servers import Served, http_server

    with http_server(Served()) as served:
        served.files["/data.txt"] = b"fetched data\n"
        pin = served.sha256("/data.txt")
        url = f"{served.base}/data.txt"
        root = write_project(tmp_path / "p", _USES_A_FETCH.format(url=url, pin=pin), tools)
        assert build(store, root).ok
    env = {**os.environ, "KILN_HOME": str(store.home)}
    proc = subprocess.run(
        [KILN, "inputs", "used", "--json"], cwd=root, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    by_path = {i["path"]: i for i in json.loads(proc.stdout)}
    fetched = by_path["data.txt"]
    assert fetched["kind"] == "fetch" and fetched["pin"] == pin
    assert fetched["urls"] == [f"{served.base}/data.txt"]
    assert fetched["digest"] == f"{pin.removeprefix('sha256:')}/13"
    assert fetched["read_by"] == ["used: use it"]
    assert by_path["tools/cat.wasm"]["kind"] == "source"
