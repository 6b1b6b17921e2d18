"""Memoized calls as the CLI shows them: `kiln build` (its verdict and
--json), `kiln show` (each call under its step), `kiln why` (the calls that
ran inside a step that ran) and `kiln trace` (calls on their step's lane)."""

from __future__ import annotations

import json
from pathlib import Path

from engine_helpers import calls_project

from conftest import run_kiln


def test_calls_in_build_show_why_and_trace(home: Path, tmp_path: Path) -> None:
    root = calls_project(tmp_path / "p", "alpha beta")

    def kiln(*args: str):
        return run_kiln(home, *args, cwd=root, check=True)

    first = kiln("build", "shout")
    assert "in them, 2 memoized calls, 2 ran" in first.stderr
    (root / "words.txt").write_text("alpha gamma")
    summary = json.loads(kiln("build", "--json", "shout").stdout)
    assert summary["calls"] == {"ran": 1, "cached": 1}

    [step] = json.loads(kiln("show", "--json", "shout").stdout)
    assert step["call_counts"] == {"total": 2, "ran": 1, "trapped": 0}
    assert [(c["export"], c["ran"], c["status"]) for c in step["calls"]] == [
        ("run", False, 0), ("run", True, 0),
    ]  # fmt: skip
    text = kiln("show", "shout").stdout
    assert "memoized calls: 2, 1 ran, 1 from the cache" in text

    why = kiln("why", "shout").stdout
    assert "inside it, 1 memoized call(s) ran" in why
    assert step["calls"][1]["input"][:12] in why

    kiln("trace", "-o", str(tmp_path / "trace.json"))
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    calls = [e for e in events if e.get("cat") == "call"]
    assert [e["name"] for e in calls] == ["call run"]
    [shout] = [e for e in events if e.get("name") == "shout: shout"]
    assert calls[0]["tid"] == shout["tid"]
    assert shout["ts"] <= calls[0]["ts"] <= shout["ts"] + shout["dur"]
