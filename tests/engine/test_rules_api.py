"""The build-file API beyond targets and steps: memoized rules with
arguments (``@rule``) and command-line settings (``kiln build -D``)."""

from __future__ import annotations

import pytest
from engine_helpers import build, write_project

from conftest import run_kiln
from kiln import api
from kiln.api import BuildRequest
from kiln.cli.build_options import parse
from kiln.errors import KilnError

HEADER = """
from kiln.build import gather, rule, setting, source, target, wasm

CAT = "tools/cat.wasm"
CALLS = []
"""

MEMOIZED = (
    HEADER
    + """
@rule
async def unit(name, *, opt=0):
    CALLS.append((name, opt))
    return await wasm(source(CAT), name, outputs=[name], description=f"unit {name}")

@target
async def t():
    await gather(*(unit(n) for n in ["a", "b", "a", "a", "b"]), unit("a", opt=0), unit("a", opt=1))
    again = await unit("b")  # after it finished
    return await wasm(source(CAT), "n", "b", inputs=[again.file("b")], outputs=["n"],
                      description=f"{len(CALLS)} evaluations")
"""
)


def test_a_rule_is_evaluated_once_per_distinct_arguments(store, tmp_path, tools) -> None:
    root = write_project(tmp_path / "p", MEMOIZED, tools)
    report = build(store, root)
    assert report.ok, report.errors
    assert sorted(s.description for s in report.steps) == [
        "3 evaluations", "unit a", "unit b",  # unit("a") is unit("a", opt=0)
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        (
            "@rule\nasync def r(xs):\n    return xs\n\n"
            "@target\nasync def t():\n    await r(['a', 'b'])\n",
            ["kilnfile.py:13:", "rule 'r'", "unhashable type: 'list'", "a tuple instead of a list"],
        ),
        (
            "@rule\nasync def r(n):\n    return await r(n)\n\n"
            "@target\nasync def t():\n    await r(1)\n",
            ["kilnfile.py:9:", "rule call cycle: r(1) -> r(1)", "await itself"],
        ),
        ("@rule\ndef r(n):\n    return n\n", ["kilnfile.py:7:", "rule 'r' is not an async"]),
        (
            "import sys\n\n@rule\nasync def r(n):\n    sys.exit(n)\n\n"
            "@target\nasync def t():\n    await r(3)\n",
            ["kilnfile.py:11:", "rule r(3) called sys.exit(3)"],
        ),
        (
            "@rule\nasync def r(n):\n    return 1 / n\n\n"
            "@target\nasync def t():\n    await r(n=0)\n",
            ["kilnfile.py:9:", "rule r(0) raised ZeroDivisionError"],
        ),
    ],
)
def test_rule_mistakes_are_named_at_their_line(store, tmp_path, tools, body, fragments) -> None:
    root = write_project(tmp_path / "p", HEADER + "\n" + body, tools)
    try:
        report = build(store, root)
    except KilnError as e:  # a mistake at load time
        message = e.render()
    else:
        [error] = report.errors
        message = error.render()
    for fragment in fragments:
        assert fragment in message, message


SETTINGS = (
    HEADER
    + """
@target
async def t():
    mode = setting("mode", default="debug")
    return await wasm(source(CAT), mode, outputs=[mode], description=f"mode {mode}")
"""
)


def test_settings_reach_the_build_file_and_the_stamp(store, tmp_path, tools, monkeypatch) -> None:
    monkeypatch.setenv("KILN_RACY_WINDOW_MS", "0")
    root = write_project(tmp_path / "p", SETTINGS, tools)

    def request(**settings: str) -> BuildRequest:
        return BuildRequest(("t",), cwd=root, store=store.home, settings=settings)

    default = api.build(request(), store=store)
    assert [s.description for s in default.steps] == ["mode debug"]
    release = api.build(request(mode="release"), store=store)
    assert not release.unchanged  # not answered by the stamp of the build without -D
    assert release.warnings == []
    assert [s.description for s in release.steps] == ["mode release"]
    assert (root / "kiln-out" / "t" / "release").is_file()
    assert api.answer_from_stamp(request(mode="release")) is not None
    assert api.answer_from_stamp(request(mode="other")) is None
    # Back to the first value: its stamp answers, and its output is put back.
    again = api.build(request(), store=store)
    assert again.unchanged and again.restored == ["t"]
    assert (root / "kiln-out" / "t" / "debug").is_file()
    misspelt = build(store, root, settings={"mdoe": "x"})
    assert misspelt.warnings == [
        "-D mdoe: the build file did not read this setting (a misspelt name?)"
    ]


def test_d_options_are_parsed_on_the_quick_path_and_refused_when_malformed(home) -> None:
    parsed = parse(["build", "-D", "b=2", "t", "-Da=x=y", "--define", "c=", "--define=b=3"])
    assert parsed is not None
    assert parsed[0].settings == (("a", "x=y"), ("b", "3"), ("c", ""))
    assert parsed[0].stamp_key != parse(["build", "t"])[0].stamp_key
    again = BuildRequest(("t",)).replace(settings={"c": "", "b": "3", "a": "x=y"})
    assert again.stamp_key == parsed[0].stamp_key  # one form, however given
    for bad in (["-D"], ["-D", "novalue"], ["-D", "=v"], ["-D", "1x=2"], ["-D", "a b=1"]):
        assert parse(["build", *bad]) is None, bad
        proc = run_kiln(home, "build", *bad)
        assert proc.returncode == 2, (bad, proc.stderr)
        assert "-D" in proc.stderr and ("NAME=VALUE" in proc.stderr or bad == ["-D"])
