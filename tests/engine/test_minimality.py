"""A property test: on random graphs of WASM steps, after random source
edits, a rebuild gives what a from-scratch build in an empty store gives,
and executes exactly the steps whose inputs changed (minimality, as in
"Build systems à la carte"), which with early cutoff can be fewer than all
the steps downstream of an edit."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from engine_helpers import build, write_project
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.engine.scheduler import StepStatus
from kiln.store import Store

# A step: (kind, inputs), inputs are indexes into sources + earlier steps.
# "cat" concatenates its inputs; "count" counts the words of one input and
# ignores its comment lines, so an edit in a comment stops there.


@st.composite
def graphs(draw):
    sources = draw(st.integers(1, 4))
    steps = []
    for i in range(draw(st.integers(1, 7))):
        upstream = sources + i
        if draw(st.booleans()):
            steps.append(("count", [draw(st.integers(0, upstream - 1))]))
        else:
            picked = draw(
                st.lists(st.integers(0, upstream - 1), min_size=1, max_size=3, unique=True)
            )
            steps.append(("cat", sorted(picked)))
    edits = draw(
        st.lists(
            st.tuples(st.integers(0, sources - 1), st.sampled_from(["comment", "text"])),
            min_size=1,
            max_size=3,
        )
    )
    return sources, steps, edits


def kilnfile(sources: int, steps: list) -> str:
    lines = [
        "from kiln.build import source, target, wasm",
        "",
        "@target",
        "async def all():",
        f"    nodes = [source(f'src/s{{i}}.txt') for i in range({sources})]",
    ]
    for i, (kind, inputs) in enumerate(steps):
        ins = "[" + ", ".join(f"nodes[{j}]" for j in inputs) + "]"
        if kind == "cat":
            args = f"'out{i}.txt', *(f.path for f in {ins})"
            tool = "tools/cat.wasm"
        else:
            args = f"'count', {ins}[0].path, 'out{i}.txt'"
            tool = "tools/textkit.wasm"
        lines.append(
            f"    r = await wasm(source('{tool}'), {args}, inputs={ins}, "
            f"outputs=['out{i}.txt'], description='step {i}')"
        )
        lines.append(f"    nodes.append(r.file('out{i}.txt'))")
    lines.append("    return nodes")
    return "\n".join(lines) + "\n"


def text(i: int, version: int, comment: int) -> str:
    return f"# note {comment}\nsource {i} says hello {version} times\n"


@pytest.mark.slow
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(graph=graphs())
def test_rebuilds_are_correct_and_minimal(graph, guest, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KILN_RACY_WINDOW_MS", "0")
    sources, steps, edits = graph
    tools = {
        "tools/cat.wasm": guest("cat").read_bytes(),
        "tools/textkit.wasm": (
            Path(__file__).parents[2] / "examples/wordcount/tools/textkit.wasm"
        ).read_bytes(),
    }
    files = {f"src/s{i}.txt": text(i, 0, 0) for i in range(sources)}
    # One folder per example, inside the test's (shared by all its examples).
    with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
        base = Path(tmp)
        root = write_project(base / "p", kilnfile(sources, steps), {**tools, **files})
        with Store(base / "home") as store:
            before = build(store, root)
            assert before.ok, before.errors
            versions = {i: [0, 0] for i in range(sources)}
            for i, kind in edits:
                versions[i][0 if kind == "text" else 1] += 1
                (root / f"src/s{i}.txt").write_text(text(i, *versions[i]))
            after = build(store, root)
            assert after.ok, after.errors
        with Store(base / "fresh") as fresh:
            scratch = build(fresh, root)
    assert after.targets[0].digest == scratch.targets[0].digest  # correct

    def inputs(report):
        return {s.description: s.identity["inputs"] for s in report.steps}

    old, new = inputs(before), inputs(after)
    changed = {name for name in new if new[name] != old[name]}
    executed = {s.description for s in after.steps if s.status is StepStatus.EXECUTED}
    assert executed == changed  # minimal: exactly the steps whose inputs changed
