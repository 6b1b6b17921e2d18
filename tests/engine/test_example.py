"""The bundled example: builds, rebuilds nothing, rebuilds only what a
change truly affects, and stops at identical intermediate outputs."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from engine_helpers import build, ran

from conftest import EXAMPLE
from kiln.model.digest import Digest

ALL_STEPS = [
    "chapters: list chapters",
    "counts: count clay",
    "counts: count fire",
    "counts: count glaze",
    "counts: count kiln",
    "report: merge counts",
]


def test_build_then_nothing_to_do(store, example: Path) -> None:
    first = build(store, example)
    assert first.ok, first.errors
    assert ran(first) == ALL_STEPS
    report = (example / "kiln-out" / "report" / "report.txt").read_text()
    assert report.startswith("153 words, 86 different, in 4 chapters\n")
    assert "   1. the              19" in report
    second = build(store, example)
    assert ran(second) == [] and second.ok
    assert second.files_hashed == 0  # the stat cache answered for every source


def test_touching_a_file_runs_nothing(store, example: Path) -> None:
    build(store, example)
    os.utime(example / "text" / "fire.txt")
    again = build(store, example)
    assert ran(again) == []
    assert again.files_hashed == 1  # re-read once, same bytes, same keys


def test_a_changed_chapter_reruns_its_count_and_the_merge(store, example: Path) -> None:
    build(store, example)
    with open(example / "text" / "fire.txt", "a") as f:
        f.write("The kiln cools for a day.\n")
    assert ran(build(store, example)) == ["counts: count fire", "report: merge counts"]


def test_a_comment_change_stops_at_the_identical_count(store, example: Path) -> None:
    """Early cutoff: the count step reruns and yields the same bytes, so the
    merge step's key is unchanged and it is a cache hit."""
    build(store, example)
    path = example / "text" / "clay.txt"
    path.write_text(path.read_text().replace("# Chapter two.", "# Chapter 2, revised."))
    again = build(store, example)
    assert ran(again) == ["counts: count clay"]
    merge = next(s for s in again.steps if s.description == "merge counts")
    assert merge.status.value == "cached"


def test_a_new_chapter_is_discovered_from_the_index(store, example: Path) -> None:
    build(store, example)
    (example / "text" / "ash.txt").write_text("Ash is what the fire leaves.\n")
    with open(example / "book.txt", "a") as f:
        f.write("ash\n")
    assert ran(build(store, example)) == [
        "chapters: list chapters",
        "counts: count ash",
        "report: merge counts",
    ]


def test_outputs_are_read_only_and_kept_from_gc(store, example: Path) -> None:
    first = build(store, example, "report")
    out = example / "kiln-out" / "report"
    # read-only files of their own (not the store's inodes) in writable folders
    assert os.stat(out).st_mode & stat.S_IWUSR
    put_back = os.stat(out / "report.txt")
    assert not put_back.st_mode & stat.S_IWUSR and put_back.st_nlink == 1
    assert not os.stat(out / "report.txt").st_mode & stat.S_IWUSR
    roots = {name for name, *_ in store.roots()}
    assert f"build:{example.resolve()}:report" in roots
    store.gc()
    digest = first.targets[0].digest
    store.get(Digest.parse(digest), example / "restored")  # the value survived
    assert (example / "restored" / "report.txt").read_bytes() == (out / "report.txt").read_bytes()


def test_cli_build_json_and_targets(tmp_path: Path, example: Path) -> None:
    kiln = str(Path(sys.executable).parent / "kiln")
    env = {**os.environ, "KILN_HOME": str(tmp_path / "home")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [kiln, *args], cwd=example / "text", env=env, capture_output=True, text=True
        )

    import json

    first = run("build", "--json", "report")
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert (summary["executed"], summary["cached"], summary["failed"]) == (6, 0, 0)
    assert len(summary["executed_keys"]) == 6
    assert summary["targets"]["report"]["output"] == str(example.resolve() / "kiln-out" / "report")
    second = run("build", "report")
    assert second.returncode == 0
    assert "nothing to do: no source changed since the last build (6 steps" in second.stderr
    assert "report: ../kiln-out/report" in second.stdout
    again = json.loads(run("build", "--json", "report").stdout)
    assert again["unchanged"] and (again["executed"], again["cached"]) == (0, 6)
    assert again["targets"]["report"] == summary["targets"]["report"]
    with open(example / "text" / "kiln.txt", "a") as f:
        f.write("One more line.\n")
    third = json.loads(run("build", "--json", "report").stdout)
    assert not third["unchanged"] and third["executed"] == 2  # count kiln, merge
    listed = run("targets")
    assert listed.stdout.splitlines() == [
        "chapters  The chapter names listed in book.txt, as JSON.",
        "counts    Word counts of every chapter, one step per chapter.",
        "report    The twenty most frequent words of the whole book.",
    ]


def test_the_committed_tool_is_built_from_its_source(guest, tmp_path: Path) -> None:
    """tools/textkit.wasm is what the ziglang package makes of textkit.c."""
    out = tmp_path / "textkit.wasm"
    subprocess.run(
        [sys.executable, "-m", "ziglang", "cc", "--target=wasm32-wasi", "-O2", "-s",
         "-o", str(out), str(EXAMPLE / "tools" / "textkit.c")],
        check=True,
    )  # fmt: skip
    assert out.read_bytes() == (EXAMPLE / "tools" / "textkit.wasm").read_bytes()


def test_a_noop_build_is_answered_before_the_cli_loads(tmp_path: Path, example: Path) -> None:
    """`kiln build` with nothing to do, even after `rm -rf kiln-out`, runs
    without importing the CLI, the engine or protobuf."""
    import shutil

    from kiln.cli.build_options import parse

    env = {**os.environ, "KILN_HOME": str(tmp_path / "home")}
    kiln = str(Path(sys.executable).parent / "kiln")
    first = subprocess.run([kiln, "build", "report"], cwd=example, env=env, capture_output=True)
    assert first.returncode == 0, first.stderr
    report = (example / "kiln-out" / "report" / "report.txt").read_bytes()
    shutil.rmtree(example / "kiln-out")  # (writable folders: as any user)
    probe = (
        "import sys\nfrom kiln.api import answer_from_stamp\n"
        "from kiln.cli.build_options import parse\nfrom kiln.cli.report import show_report\n"
        "request, as_json = parse(['build', '-j', '2', 'report'])\n"
        "report = answer_from_stamp(request)\nshow_report(report, as_json)\n"
        "heavy = ('click', 'google.protobuf', 'kiln.cli.app', 'kiln.engine.evaluation',"
        " 'kiln.model.digest', 'dataclasses', 'typing')\n"
        "print(report.unchanged, [m for m in heavy if m in sys.modules])\n"
    )
    answered = subprocess.run(
        [sys.executable, "-c", probe], cwd=example, env=env, capture_output=True, text=True
    )
    assert answered.stdout.splitlines() == ["report: kiln-out/report", "True []"], answered.stderr
    assert "nothing to do: no source changed since the last build; restored report" in (
        answered.stderr
    )
    out = example / "kiln-out" / "report"
    assert (out / "report.txt").read_bytes() == report
    # read-only files of their own (not the store's inodes) in writable folders
    assert os.stat(out).st_mode & stat.S_IWUSR
    put_back = os.stat(out / "report.txt")
    assert not put_back.st_mode & stat.S_IWUSR and put_back.st_nlink == 1
    # The quick path reads `kiln build`'s options from their one table...
    request, as_json = parse(["build", "a", "-k", "-j3", "--jobs", "1", "b", "--json"])
    assert (request.targets, request.jobs, request.keep_going) == (("a", "b"), 1, True)
    assert as_json
    assert parse(["build", "--jobs=4", "-j", "2"])[0].jobs == 2
    # ...and leaves the rest to the CLI, which reports what is wrong.
    rest = (["build", "-j0"], ["build", "-x"], ["build", "--json=1"], ["--store", "x", "build"])
    for argv in (*rest, ["gc"]):
        assert parse(argv) is None, argv


def test_an_output_cut_short_runs_its_step_again_once(store, example: Path) -> None:
    """A blob cut short counts as missing: its step runs again, and the
    whole blob replaces the short one, so later builds find it."""
    first = build(store, example)
    step = next(s for s in first.steps if s.description == "list chapters")
    assert step.result is not None
    blob = store.cas.path(Digest.from_proto(step.result.output_files[0].digest))
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:5])
    again = build(store, example)
    assert again.ok, again.errors
    assert ran(again) == ["chapters: list chapters"]
    assert ran(build(store, example)) == []
