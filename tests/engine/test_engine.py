"""The engine's guarantees, each on a small project: non-blocking awaits,
in-flight deduplication, failures (fail-fast, --keep-going, never cached,
transient retries) and clear errors for bad build files."""

from __future__ import annotations

import os
import shutil

import pytest
from engine_helpers import build, ran, settle, write_project

from kiln.engine.loader import load
from kiln.engine.scheduler import StepStatus
from kiln.errors import KilnError
from kiln.exec.base import TransientError
from kiln.exec.kinds import local_context
from kiln.exec.wasm import WasmExecutor
from kiln.model.digest import Digest

HEADER = """
from kiln.build import gather, glob, source, target, wasm

CAT, SLOW = "tools/cat.wasm", "tools/slow.wasm"
"""


ONE_STEP = '\n@target\nasync def t():\n    return await wasm(source(CAT), "o", outputs=["o"])\n'


def globbing(pattern: str) -> str:
    """A build file whose one target concatenates the files ``pattern`` matches."""
    return (
        HEADER
        + f"""
@target
async def cat():
    files = glob("{pattern}")
    return await wasm(source(CAT), "all", *(f.path for f in files), inputs=files,
                      outputs=["all"])
"""
    )


def step(report, description: str):
    return next(s for s in report.steps if s.description == description)


def test_awaiting_a_slow_step_does_not_block_other_targets(store, tmp_path, tools) -> None:
    root = write_project(
        tmp_path / "p",
        HEADER
        + """
@target
async def a():
    return await wasm(source(SLOW), "400", "a.out", outputs=["a.out"], description="slow")

@target
async def b():
    done = []
    for i in range(3):  # one after the other, each awaited
        done.append(await wasm(source(CAT), f"b{i}", outputs=[f"b{i}"], description=f"quick {i}"))
    return done
""",
        tools,
    )
    report = build(store, root, jobs=2)
    assert report.ok, report.errors
    slow = step(report, "slow")
    quick = [step(report, f"quick {i}") for i in range(3)]
    assert {s.slot for s in quick} | {slow.slot} == {0, 1}
    for s in quick:  # every quick step ran while the slow one was running
        assert slow.started < s.started and s.finished < slow.finished


def test_identical_steps_in_flight_run_once(store, tmp_path, tools) -> None:
    root = write_project(
        tmp_path / "p",
        HEADER
        + """
async def shared():
    return await wasm(source(SLOW), "50", "x", outputs=["x"], description="shared")

@target
async def one():
    return await shared()

@target
async def two():
    return await shared()
""",
        tools,
    )
    report = build(store, root, jobs=2)
    statuses = sorted(s.status.value for s in report.steps)
    assert statuses == ["executed"]  # one step, asked for twice
    assert report.targets[0].digest == report.targets[1].digest


def test_a_step_asked_for_again_counts_once_and_is_looked_up_once(
    store, tmp_path, tools, monkeypatch
) -> None:
    root = write_project(
        tmp_path / "p",
        HEADER
        + """
async def unit(i):
    return await wasm(source(CAT), f"u{i}", outputs=[f"u{i}"], description=f"unit {i}")

@target
async def t():
    first = await gather(*(unit(i % 3) for i in range(12)))  # 3 steps, 12 requests
    again = [await unit(i) for i in range(3)]  # asked for again once finished
    return [*first[:3], *again]
""",
        tools,
    )
    lookups = []
    lookup = store.lookup
    monkeypatch.setattr(store, "lookup", lambda key, **kw: lookups.append(key) or lookup(key, **kw))
    report = build(store, root, jobs=2)
    assert report.ok, report.errors
    summary = report.summary()
    assert (summary["executed"], summary["cached"]) == (3, 0)
    assert sorted(s.description for s in report.steps) == ["unit 0", "unit 1", "unit 2"]
    lookups.clear()
    again = build(store, root, jobs=2).summary()
    assert (again["executed"], again["cached"]) == (0, 3)
    assert len(lookups) == 3  # one per step, not per request


FAILING = (
    HEADER
    + """
@target
async def bad():
    return await wasm(source(CAT), "out", "fail.txt", inputs=[source("fail.txt")],
                      outputs=["out"], description="cat fail")

@target
async def other():
    await wasm(source(SLOW), "200", "s", outputs=["s"], description="slow first")
    return await wasm(source(CAT), "after", outputs=["after"], description="after the slow one")
"""
)


def test_a_failure_stops_new_work_and_is_not_cached(store, tmp_path, tools) -> None:
    root = write_project(tmp_path / "p", FAILING, {**tools, "fail.txt": "FAIL here\n"})
    report = build(store, root, jobs=2)
    assert not report.ok
    [error] = report.errors
    message = error.render()
    for fragment in (
        "target 'bad'",
        "step 'cat fail'",
        "exit code 3",
        "command: tools/cat.wasm out fail.txt",
        "cat: fail.txt says FAIL",
        "kiln log bad",
    ):
        assert fragment in message
    failed = step(report, "cat fail")
    assert failed.status is StepStatus.FAILED and failed.attempts == 1  # not retried
    assert store.lookup(failed.key) is None  # never cached
    assert step(report, "slow first").status is StepStatus.EXECUTED  # already running
    assert step(report, "after the slow one").status is StepStatus.SKIPPED
    assert [t.output for t in report.targets] == [None, None]


def test_keep_going_runs_what_does_not_need_the_failure(store, tmp_path, tools) -> None:
    root = write_project(tmp_path / "p", FAILING, {**tools, "fail.txt": "FAIL here\n"})
    report = build(store, root, jobs=2, keep_going=True)
    assert len(report.errors) == 1
    assert step(report, "after the slow one").status is StepStatus.EXECUTED
    outcome = {t.name: t for t in report.targets}
    assert outcome["bad"].output is None and outcome["other"].output is not None


def test_keep_going_finishes_the_siblings_of_a_failed_step(store, tmp_path, tools) -> None:
    root = write_project(
        tmp_path / "p",
        HEADER
        + """
def unit(name):
    return wasm(source(CAT), name, f"{name}.txt", inputs=[source(f"{name}.txt")],
                outputs=[name], description=f"cc {name}")

@target
async def program():
    return await gather(*(unit(n) for n in ["bad1", "ok1", "ok2", "bad2", "ok3"]))
""",
        {
            **tools,
            **{
                f"{n}.txt": "FAIL\n" if n.startswith("bad") else f"{n}\n"
                for n in ["bad1", "ok1", "ok2", "bad2", "ok3"]
            },
        },
    )
    stopped = build(store, root, jobs=1)  # one at a time: the siblings wait for a slot
    assert {s.description: s.status for s in stopped.steps} == {
        "cc bad1": StepStatus.FAILED, "cc ok1": StepStatus.SKIPPED,
        "cc ok2": StepStatus.SKIPPED, "cc bad2": StepStatus.SKIPPED,
        "cc ok3": StepStatus.SKIPPED,
    }  # fmt: skip
    assert len(stopped.errors) == 1
    report = build(store, root, jobs=1, keep_going=True)
    status = {s.description: s.status for s in report.steps}
    assert status == {
        "cc bad1": StepStatus.FAILED, "cc ok1": StepStatus.EXECUTED,
        "cc ok2": StepStatus.EXECUTED, "cc bad2": StepStatus.FAILED,
        "cc ok3": StepStatus.EXECUTED,
    }  # fmt: skip
    assert not report.ok and report.exit_code == 1
    assert sorted(e.fields["step"] for e in report.errors) == ["cc bad1", "cc bad2"]
    for s in report.steps:
        assert (store.lookup(s.key) is not None) == (s.status is StepStatus.EXECUTED)
    fail_fast = build(store, root, jobs=1)  # the siblings' results were cached
    assert {s.description: s.status for s in fail_fast.steps if "ok" in s.description} == {
        f"cc ok{i}": StepStatus.CACHED for i in (1, 2, 3)
    }


def test_transient_errors_are_retried(store, tmp_path, tools) -> None:
    root = write_project(
        tmp_path / "p",
        HEADER + ONE_STEP,
        tools,
    )
    failures = [2]

    class Flaky(WasmExecutor):
        """Loses its worker twice (a fault no real test can cause on demand)."""

        def execute(self, key, action, command):
            if failures[0]:
                failures[0] -= 1
                raise TransientError("worker lost")
            return super().execute(key, action, command)

    report = build(store, root, executors={"wasm": lambda: Flaky(local_context(store))})
    assert report.ok and report.steps[0].attempts == 3

    failures[0] = 10  # more than the retries allow
    (root / "kilnfile.py").write_text((root / "kilnfile.py").read_text().replace('"o"', '"p"'))
    report = build(store, root, executors={"wasm": lambda: Flaky(local_context(store))})
    assert not report.ok and "worker lost" in report.errors[0].message


# ---------------------------------------------------------- bad build files


IMPORTS = "from kiln.build import glob, source, target\n"  # line 1; bodies start on line 2


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ("x = 1\ndef broken(:\n", ["kilnfile.py:3: syntax error"]),
        ("@target\ndef plain():\n    pass\n", ["kilnfile.py:2: target 'plain' is not an async"]),
        ("raise RuntimeError('no')\n", ["kilnfile.py:2: loading the build file raised Runtime"]),
        ("@target\nasync def t():\n    return 1 / 0\n", ["kilnfile.py:4: target 't' raised Zero"]),
        (
            "@target\nasync def a():\n    return await b()\n\n"
            "@target\nasync def b():\n    return await a()\n",
            [
                "dependency cycle between targets: b (",
                "kilnfile.py:6) -> a (",
                "kilnfile.py:2) -> b",
            ],
        ),
        (
            "@target\nasync def g():\n    return glob('src/*.c')\n",
            ["kilnfile.py:4 (target 'g'): glob 'src/*.c' matches no files"],
        ),
        (
            "@target\nasync def esc():\n    return {'../x': source('tools/cat.wasm')}\n",
            ["kilnfile.py:2: target 'esc' places output '../x' outside its folder"],
        ),
        (
            "@target\nasync def odd():\n    return 42\n",
            ["target 'odd' returned a int", "return a File"],
        ),
        (
            "@target\nasync def m():\n    return source('missing.txt')\n",
            ["kilnfile.py:4 (target 'm'): source file 'missing.txt' does not exist"],
        ),
    ],
)
def test_bad_build_files_name_file_and_line(store, tmp_path, tools, body, fragments) -> None:
    root = write_project(tmp_path / "p", IMPORTS + body, tools)
    try:
        report = build(store, root)
    except KilnError as e:
        message = e.render()
    else:
        assert report.errors, "expected the build to fail"
        message = report.errors[0].render()
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_unknown_target_lists_the_known_ones(tmp_path, tools) -> None:
    root = write_project(tmp_path / "p", HEADER + "\n@target\nasync def real():\n    pass\n", tools)
    with pytest.raises(KilnError, match=r"no target 'nope'") as e:
        load(root).target("nope")
    assert "targets are: real" in e.value.render()


def test_ran_helper_sees_executions(store, tmp_path, tools) -> None:
    root = write_project(
        tmp_path / "p",
        HEADER + ONE_STEP,
        tools,
    )
    assert ran(build(store, root)) == ["t: cat.wasm o"]
    assert ran(build(store, root)) == []


def test_glob_matches_files_under_the_project_root(store, tmp_path, tools) -> None:
    files = {"src/b.txt": "b", "src/a.txt": "a", "src/sub/c.txt": "c", "src/d.bin": "d"}
    root = write_project(tmp_path / "p", globbing("src/**/*.txt"), {**tools, **files})
    report = build(store, root)  # the current folder is not the project's
    assert report.ok, report.errors
    assert (root / "kiln-out" / "cat" / "all").read_text() == "abc"


GLOBBING = globbing("src/*.txt")


def test_the_build_stamp_answers_only_while_nothing_changed(
    store, tmp_path, tools, monkeypatch
) -> None:
    from kiln.engine import stamp

    monkeypatch.setenv("KILN_RACY_WINDOW_MS", "0")
    root = write_project(tmp_path / "p", GLOBBING, {**tools, "src/a.txt": "a"})
    key = stamp.stamp_key(None)
    report = build(store, root)
    assert report.stamped and stamp.check(store.conn, root, key) is not None
    (root / "src" / "b.txt").write_text("b")  # a new match for the glob
    assert stamp.check(store.conn, root, key) is None
    settle(root, root / "src" / "b.txt")
    build(store, root)
    assert stamp.check(store.conn, root, key) is not None
    (root / "kilnfile.py").write_text(GLOBBING + "\n# edited\n")  # the build file itself
    assert stamp.check(store.conn, root, key) is None
    settle(root, root / "kilnfile.py")  # (an edit in the build's own tick is racy)
    assert build(store, root).stamped
    before = (root / "kiln-out" / "cat" / "all").read_text()
    shutil.rmtree(root / "kiln-out")  # the outputs are gone, the sources are not
    unchanged = stamp.check(store.conn, root, key)
    assert unchanged is not None
    assert stamp.restore(store.cas.root, root, unchanged) == ["cat"]
    assert (root / "kiln-out" / "cat" / "all").read_text() == before
    assert stamp.restore(store.cas.root, root, unchanged) == []  # already in place


def test_a_removed_output_the_store_lost_is_built_again(
    store, tmp_path, tools, monkeypatch
) -> None:
    from kiln.engine import stamp

    monkeypatch.setenv("KILN_RACY_WINDOW_MS", "0")
    root = write_project(tmp_path / "p", GLOBBING, {**tools, "src/a.txt": "a"})
    key = stamp.stamp_key(None)
    assert build(store, root).stamped
    shutil.rmtree(root / "kiln-out")
    blob = store.cas.path(Digest.of_bytes(b"a"))  # the output file's content, lost
    os.chmod(blob, 0o644)
    blob.unlink()
    unchanged = stamp.check(store.conn, root, key)
    assert unchanged is not None and stamp.restore(store.cas.root, root, unchanged) is None
    report = build(store, root)
    assert report.ok and (root / "kiln-out" / "cat" / "all").read_text() == "a"


def test_a_stamp_of_an_older_signature_layout_does_not_answer(
    store, tmp_path, tools, monkeypatch
) -> None:
    import marshal

    from kiln import __version__
    from kiln.engine import stamp

    monkeypatch.setenv("KILN_RACY_WINDOW_MS", "0")
    root = write_project(tmp_path / "p", GLOBBING, {**tools, "src/a.txt": "a"})
    key = stamp.stamp_key(None)
    assert build(store, root).stamped and stamp.check(store.conn, root, key) is not None
    (row,) = store.conn.execute("SELECT stamp FROM build_stamps").fetchall()
    filed = marshal.loads(row[0])
    # As filed before signatures were (mode, ino, size, mtime_ns, ctime_ns):
    # (ino, size, mtime_ns, ctime_ns, mode), under the bare package version.
    old = {
        **filed,
        "version": __version__,
        "files": {
            folder: {name: (*sig[1:], sig[0]) for name, sig in names.items()}
            for folder, names in filed["files"].items()
        },
    }
    store.conn.execute("UPDATE build_stamps SET stamp = ?", (marshal.dumps(old),))
    assert stamp.check(store.conn, root, key) is None
    old["version"] = stamp.VERSION  # even under the new version: no signature matches
    store.conn.execute("UPDATE build_stamps SET stamp = ?", (marshal.dumps(old),))
    assert stamp.check(store.conn, root, key) is None


def test_a_file_edited_just_before_the_build_is_stamped_one_not_older_than_it_is_not(
    store, tmp_path, tools, monkeypatch
) -> None:
    """Raciness is judged against the file system's clock when the build
    starts (nanoseconds, as git does), not a 2 s window: an edit-then-build
    loop files a stamp, while a file stamped in the build's own tick (or
    later) never does, whatever the window."""
    from kiln.engine import stamp

    monkeypatch.delenv("KILN_RACY_WINDOW_MS", raising=False)
    root = write_project(tmp_path / "p", GLOBBING, {**tools, "src/a.txt": "a"})
    assert build(store, root).stamped  # written a moment ago: trusted
    (root / "src" / "a.txt").write_text("edited")
    settle(root, root / "src" / "a.txt")  # (at most a tick: a human is slower)
    report = build(store, root)
    assert report.stamped and stamp.check(store.conn, root, stamp.stamp_key(None)) is not None
    assert (root / "kiln-out" / "cat" / "all").read_text() == "edited"
    # An mtime not older than the build's clock (the same tick, or a clock
    # ahead): the file could change again unseen, so no stamp.
    future = stamp.clock(root)[0] + 3600 * 10**9
    os.utime(root / "src" / "a.txt", ns=(future, future))
    assert not build(store, root).stamped
    os.utime(root / "src" / "a.txt", ns=(future - 7200 * 10**9,) * 2)  # ctime is now, though
    monkeypatch.setenv("KILN_RACY_WINDOW_MS", str(3600 * 1000))  # a window still counts
    assert not build(store, root).stamped


def test_removing_kiln_out_or_adding_a_file_at_the_root_keeps_the_stamp(
    store, tmp_path, tools, monkeypatch
) -> None:
    """A root glob depends on what it matches, not on the root folder's
    mtime: `rm -rf kiln-out` or an unrelated file at the root leaves the
    stamp answering (and the outputs are put back); a new match does not."""
    from kiln import api
    from kiln.api import BuildRequest
    from kiln.engine import stamp

    monkeypatch.setenv("KILN_RACY_WINDOW_MS", "0")
    root = write_project(tmp_path / "p", globbing("*.txt"), {**tools, "a.txt": "a"})
    key = stamp.stamp_key(None)
    assert build(store, root).stamped
    shutil.rmtree(root / "kiln-out")
    (root / "notes.md").write_text("not a match")
    answered = api.build(BuildRequest((), cwd=root, store=store.home), store=store)
    assert answered.unchanged, "rm -rf kiln-out made the stamp fail"
    assert (root / "kiln-out" / "cat" / "all").read_text() == "a"
    (root / "b.txt").write_text("b")  # a new match
    assert stamp.check(store.conn, root, key) is None
    assert build(store, root).ok and (root / "kiln-out" / "cat" / "all").read_text() == "ab"


def test_globs_never_match_kiln_out(store, tmp_path, tools, monkeypatch) -> None:
    monkeypatch.setenv("KILN_RACY_WINDOW_MS", "0")
    root = write_project(tmp_path / "p", globbing("**/*.txt"), {**tools, "a.txt": "a"})
    assert build(store, root).ok
    (root / "kiln-out" / "extra.txt").write_text("x")
    report = build(store, root)
    assert report.ok and (root / "kiln-out" / "cat" / "all").read_text() == "a"


def test_worker_processes_give_the_same_results(store, tmp_path, tools, monkeypatch) -> None:
    """With KILN_WORKER_PROCESSES=1, executions after the first few run in
    forked worker processes, each with its own store handle."""
    from kiln.engine.scheduler import PROCESSES_AFTER

    files = {f"src/{i:02d}.txt": f"line {i}\n" for i in range(PROCESSES_AFTER + 6)}
    kilnfile = (
        HEADER
        + """
@target
async def all():
    files = glob("src/*.txt")
    steps = await gather(*(wasm(source(CAT), f"out/{f.path}", f.path, inputs=[f],
                                outputs=[f"out/{f.path}"]) for f in files))
    return [s.file(f"out/{f.path}") for s, f in zip(steps, files)]
"""
    )
    root = write_project(tmp_path / "p", kilnfile, {**tools, **files})
    monkeypatch.setenv("KILN_WORKER_PROCESSES", "1")
    with_processes = build(store, root, jobs=2)
    assert with_processes.ok, with_processes.errors
    assert len(ran(with_processes)) == len(files)
    out = root / "kiln-out" / "all" / "out" / "src"
    assert (out / "13.txt").read_text() == "line 13\n"
    monkeypatch.delenv("KILN_WORKER_PROCESSES")
    from kiln.store import Store

    with Store(tmp_path / "other") as other:
        threads = build(other, root, jobs=2)
    assert threads.targets[0].digest == with_processes.targets[0].digest


def test_a_missing_output_is_an_error_naming_its_blob(store) -> None:
    """Never empty bytes (a JSON output read after its blob was lost was a
    JSON parse error blamed on the build file); the empty blob is always there."""
    from kiln.engine.values import File, StepResult
    from kiln.model.digest import EMPTY

    gone = Digest.of_bytes(b'{"never": "stored"}')
    result = StepResult(gone, "make json", {"o.json": File("o.json", gone)}, EMPTY, EMPTY, False,
                        store)  # fmt: skip
    with pytest.raises(KilnError) as caught:
        result.json("o.json")
    assert f"output 'o.json' of make json {gone} is missing" in caught.value.message
    assert "kiln store verify" in (caught.value.hint or "")
    assert result.stdout == b"" and result.stderr == b""
