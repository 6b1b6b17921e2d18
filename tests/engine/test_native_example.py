"""The native example (examples/calc): one gcc step per translation unit,
a link, a run; rebuilds are minimal; a tool's identity is in the keys of
exactly the steps using it."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_helpers import build, ran, write_project

from conftest import copy_example
from kiln.cli.doctor import check_bubblewrap
from kiln.exec.native import bwrap_path

pytestmark = pytest.mark.skipif(
    bwrap_path() is None or check_bubblewrap().status != "ok",
    reason="bubblewrap cannot make sandboxes here (see `kiln doctor`)",
)


TARGETS = ("calc", "check")  # (`made`, make run by Kiln: test_recursive_native.py)


@pytest.fixture
def calc(tmp_path: Path, monkeypatch) -> Path:
    return copy_example("calc", tmp_path, monkeypatch)


def test_build_rebuild_and_one_changed_unit(store, calc: Path) -> None:
    first = build(store, calc, *TARGETS)
    assert first.ok, first.errors
    assert ran(first) == [
        "calc: cc src/lexer.c", "calc: cc src/main.c", "calc: cc src/parser.c",
        "calc: link calc", "check: run calc",
    ]  # fmt: skip
    answers = (calc / "kiln-out" / "check" / "answers.txt").read_text()
    assert "2 * (3 + 4) = 14\n" in answers and "100 / 7 - -3 = 17\n" in answers
    assert ran(build(store, calc, *TARGETS)) == []
    main = calc / "src" / "main.c"
    main.write_text(main.read_text().replace('"%s = %ld\\n"', '"%s => %ld\\n"'))
    again = build(store, calc, *TARGETS)
    assert ran(again) == ["calc: cc src/main.c", "calc: link calc", "check: run calc"]
    assert "2 * (3 + 4) => 14\n" in (calc / "kiln-out" / "check" / "answers.txt").read_text()


def test_a_tool_upgrade_changes_only_the_keys_of_its_steps(store, tmp_path: Path, guest) -> None:
    tool = tmp_path / "bin" / "stamp-tool"
    tool.parent.mkdir()
    tool.write_text('#!/bin/sh\necho v1 > "$1"\n')
    tool.chmod(0o755)
    root = write_project(
        tmp_path / "p",
        f"""
from kiln.build import native, target

@target
async def stamped():
    return await native("{tool}", "out.txt", tools=["{tool}", "sh"], outputs=["out.txt"],
                        description="stamp")

@target
async def plain():
    return await native("sh", "-c", "echo plain > p.txt", tools=["sh"], outputs=["p.txt"],
                        description="plain")
""",
    )
    first = build(store, root)
    assert first.ok, first.errors
    keys = {s.description: s.key for s in first.steps}
    tool.write_text('#!/bin/sh\necho v2 > "$1"\n')  # "upgraded" in place
    second = build(store, root)
    assert ran(second) == ["stamped: stamp"]
    assert {s.description: s.key for s in second.steps}["plain"] == keys["plain"]
    assert {s.description: s.key for s in second.steps}["stamp"] != keys["stamp"]
    assert (root / "kiln-out" / "stamped" / "out.txt").read_text() == "v2\n"
