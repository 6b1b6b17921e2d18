"""Recursive native steps: a step declared ``recursive=True`` asks its build
for steps through ``/kiln/bin/kiln-sub``; the build runs, deduplicates,
caches and counts them like its own. Includes an unmodified ``make`` whose
compiles become steps (examples/calc's ``made``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from engine_helpers import build, write_project

from conftest import copy_example
from kiln.api import StepStatus
from kiln.cli.doctor import check_bubblewrap
from kiln.engine.check import rebuild_steps
from kiln.exec.native import bwrap_path

pytestmark = pytest.mark.skipif(
    bwrap_path() is None or check_bubblewrap().status != "ok",
    reason="bubblewrap cannot make sandboxes here (see `kiln doctor`)",
)

KILNFILE = """
from kiln.build import native, source, target

CHILD = ("kiln-sub run --tool sh --tool tr --in a.txt --out b.txt -- "
         "sh -c 'tr a-z A-Z < a.txt > b.txt; echo from the child'")

@target
async def parent():
    return await native(
        "sh", "-c", "/kiln/bin/" + CHILD + "; echo exit $? > status.txt; cat b.txt >> status.txt",
        tools=["sh", "tr", "cat"], inputs=[source("a.txt"), source("note.txt")],
        outputs=["status.txt"], recursive=True, description="parent",
    )

@target
async def folder():
    return await native(
        "sh", "-c",
        "/kiln/bin/kiln-sub run --tool cat --in d -- cat d/x.txt d/sub/y.txt > all.txt",
        tools=["sh", "cat"], inputs=[source("d/x.txt"), source("d/sub/y.txt")],
        outputs=["all.txt"], recursive=True, description="folder",
    )

@target
async def alone():
    # What a recursive step sees of the channel: its own socket, nothing else.
    return await native("sh", "-c", "ls -a /kiln/sub /kiln/bin > out.txt",
                        tools=["sh", "ls"], outputs=["out.txt"], recursive=True)

@target
async def plain():
    return await native("sh", "-c", "ls /kiln/bin/kiln-sub /kiln/sub > out.txt 2>&1; true",
                        tools=["sh", "ls"], outputs=["out.txt"], description="plain")

@target
async def greedy():
    return await native("sh", "-c", "/kiln/bin/kiln-sub run --tool curl -- curl http://example.org",
                        tools=["sh"], recursive=True, description="greedy")

@target
async def looping():
    return await native("sh", "loop.sh", tools=["sh"], inputs=[source("loop.sh")],
                        recursive=True, description="looping")

@target
async def usage():
    return await native("sh", "-c",
                        "/kiln/bin/kiln-sub run --in /etc/passwd -- true; echo $? > out.txt",
                        tools=["sh"], outputs=["out.txt"], recursive=True, description="usage")
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    files = {
        "a.txt": "hello\n",
        "note.txt": "one\n",
        "d/x.txt": "x\n",
        "d/sub/y.txt": "y\n",
        # The same step as the one running it: a loop the build must refuse.
        "loop.sh": "/kiln/bin/kiln-sub run --recursive --tool sh --in loop.sh -- sh loop.sh\n",
    }
    return write_project(tmp_path / "p", KILNFILE, files)


def _statuses(report) -> dict[str, StepStatus]:
    return {s.description: s.status for s in report.steps}


def test_a_requested_step_runs_once_and_its_outputs_come_back(store, project: Path) -> None:
    first = build(store, project, "parent", jobs=1)  # the parent lends its one slot
    assert first.ok, first.errors
    child = next(s for s in first.steps if s.description != "parent")
    parent = next(s for s in first.steps if s.description == "parent")
    assert child.status is StepStatus.EXECUTED and child.parent == parent.key
    status = (project / "kiln-out" / "parent" / "status.txt").read_text()
    assert status == "exit 0\nHELLO\n"
    (project / "note.txt").write_text("two\n")  # only the parent's inputs change
    second = build(store, project, "parent", jobs=1)
    assert _statuses(second) == {
        "parent": StepStatus.EXECUTED, child.description: StepStatus.CACHED,
    }  # fmt: skip
    (project / "a.txt").write_text("again\n")
    third = build(store, project, "parent", jobs=1)
    assert all(s is StepStatus.EXECUTED for s in _statuses(third).values())
    assert (project / "kiln-out" / "parent" / "status.txt").read_text() == "exit 0\nAGAIN\n"


def test_a_folder_of_the_steps_inputs_is_an_input(store, project: Path) -> None:
    report = build(store, project, "folder")
    assert report.ok, report.errors
    assert (project / "kiln-out" / "folder" / "all.txt").read_text() == "x\ny\n"
    assert len(report.steps) == 2


def test_a_recursive_step_sees_only_its_own_socket(store, project: Path) -> None:
    report = build(store, project, "alone")
    assert report.ok, report.errors
    listing = (project / "kiln-out" / "alone" / "out.txt").read_text().split()
    assert sorted(listing) == sorted(
        [".", "..", "kiln-sub", "/kiln/bin:", ".", "..", "socket", "/kiln/sub:"]
    )


def test_a_step_that_is_not_recursive_has_no_channel(store, project: Path) -> None:
    report = build(store, project, "plain")
    assert report.ok, report.errors
    out = (project / "kiln-out" / "plain" / "out.txt").read_text()
    assert "No such file" in out and "kiln-sub" in out


def test_a_step_may_not_ask_for_tools_it_did_not_declare(store, project: Path) -> None:
    report = build(store, project, "greedy")
    assert not report.ok
    message = report.errors[0].render()
    assert "curl" in message and "not among the requesting step's own" in message
    assert "kiln-sub" in message  # the step failed as an error, naming the channel
    assert [s.description for s in report.steps] == ["greedy"]
    assert report.steps[0].attempts == 1  # a refusal is final: not tried again


def test_a_request_loop_fails_clearly(store, project: Path) -> None:
    report = build(store, project, "looping", jobs=1)
    assert not report.ok
    assert "request loop" in report.errors[0].render()


def test_inputs_are_paths_inside_the_step(store, project: Path) -> None:
    report = build(store, project, "usage")
    assert report.ok, report.errors
    assert (project / "kiln-out" / "usage" / "out.txt").read_text() == "2\n"  # a usage error


@pytest.fixture
def calc(tmp_path: Path, monkeypatch) -> Path:
    return copy_example("calc", tmp_path, monkeypatch)


@pytest.mark.skipif(
    shutil.which("make") is None or shutil.which("gcc") is None, reason="needs make and gcc"
)
def test_make_with_kiln_sub_as_the_compiler_launcher(store, calc: Path) -> None:
    first = build(store, calc, "made", jobs=1)  # make -j2 under one slot: no deadlock
    assert first.ok, first.errors
    compiles = sorted(s.description for s in first.steps if s.description.startswith("cc "))
    assert compiles == ["cc src/lexer.c", "cc src/main.c", "cc src/parser.c"]
    assert all(s.status is StepStatus.EXECUTED for s in first.steps)
    program = calc / "kiln-out" / "made" / "calc"
    assert program.stat().st_mode & 0o111

    # make runs again in a fresh sandbox: every compile is a hit.
    (calc / "Makefile").write_text((calc / "Makefile").read_text() + "# again\n")
    again = build(store, calc, "made")
    assert _statuses(again) == {
        "make calc": StepStatus.EXECUTED, **dict.fromkeys(compiles, StepStatus.CACHED),
    }  # fmt: skip

    # One source changed: that compile runs, the others are hits.
    main = calc / "src" / "main.c"
    main.write_text(main.read_text().replace('"%s = %ld\\n"', '"%s => %ld\\n"'))
    edited = build(store, calc, "made")
    ran = sorted(s.description for s in edited.steps if s.status is StepStatus.EXECUTED)
    assert ran == ["cc src/main.c", "make calc"]

    # `kiln check`: the compiles are run again as steps of their own; make's
    # step needs a build to answer it, and says so.
    checks = {c.step: c for c in rebuild_steps(store, edited.steps)}
    assert "need the build that runs it" in checks["make calc"].skipped
    assert checks["cc src/main.c"].identical and not checks["cc src/main.c"].skipped
