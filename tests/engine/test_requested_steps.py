"""Steps requested by running wasm steps (``kiln`` imports ``step_*``):
run by the build like its own steps, deduplicated, cached, under its slots
(one slot is enough: a waiting parent lends its own), counted; loops, bad
requests and a guest run outside a build fail clearly, never as results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from engine_helpers import build, write_project

from kiln.api import StepStatus
from kiln.errors import KilnError
from kiln.exec.kinds import local_context
from kiln.exec.wasm import WasmExecutor, WasmLimits
from kiln.model.action import ActionSpec
from kiln.model.digest import Digest

KILNFILE = """
import json
from kiln.build import read_bytes, source, target, wasm

def request(extra=()):
    return json.dumps({
        "executor": "wasm",
        "argv": ["cat.wasm", "out.txt", "a.txt", *extra],
        "inputs": {"cat.wasm": "/cat.wasm", "a.txt": "/a.txt", "b.txt": "/b.txt",
                   **{name: "/" + name for name in extra}},
        "outputs": ["out.txt"],
        "description": "child cat",
        "mount": "/tmp/child",
    })

@target
async def parent():
    step = await wasm(
        source("requester.wasm"), request(), "/tmp/child/out.txt", source("tag.txt").path,
        inputs=[source("cat.wasm"), source("a.txt"), source("b.txt"), source("tag.txt")],
        description="parent",
    )
    return step

@target
async def twins():
    # two parents asking for the same child: it runs once
    first = wasm(source("requester.wasm"), request(), "x", inputs=[source("cat.wasm"),
                 source("a.txt"), source("b.txt")], description="twin 1")
    second = wasm(source("requester.wasm"), request(), "y", inputs=[source("cat.wasm"),
                  source("a.txt"), source("b.txt")], description="twin 2")
    import asyncio
    one, two = await asyncio.gather(first, second)
    return None

@target
async def failing():
    step = await wasm(source("requester.wasm"), request(["FAIL.txt"]), inputs=[
        source("cat.wasm"), source("a.txt"), source("b.txt"), source("FAIL.txt")],
        description="parent of a failure")
    return None

@target
async def failing_then_rule():
    await failing()
    # The very step that failed when the parent asked for it: a rule asking
    # for it now gets the failure, not a result.
    await wasm(source("cat.wasm"), "out.txt", "a.txt", "FAIL.txt",
               inputs=[source("a.txt"), source("b.txt"), source("FAIL.txt")],
               outputs=["out.txt"], description="the same child, from a rule")

@target
async def loop():
    await wasm(source("requester.wasm"), "@loop.json",
               inputs=[source("requester.wasm"), source("loop.json")], description="looper")

@target
async def first():
    await wasm(source("requester.wasm"), "@a.json", inputs=[source("a.json"), source("b.json")],
               description="A")

@target
async def second():
    await wasm(source("requester.wasm"), "@b.json", inputs=[source("a.json"), source("b.json")],
               description="B")

@target
async def bad_mount():
    # Outputs may appear only under the guest's own /tmp.
    for mount in ["/etc/x", "/tmp", "/tmp/../etc", "/tmp/./x"]:
        step = await wasm(source("requester.wasm"), json.dumps({
            "executor": "wasm", "argv": ["cat.wasm"], "inputs": {}, "mount": mount}),
            description=f"mount {mount}")

@target
async def bad_tools():
    await wasm(source("requester.wasm"), json.dumps({
        "executor": "native", "argv": ["sh", "-c", "cat /etc/passwd"], "tools": ["sh"],
        "inputs": {}, "outputs": []}), description="asks for a native step")
"""

LOOP = {
    "executor": "wasm",
    "argv": ["requester.wasm", "@loop.json"],
    "inputs": {"requester.wasm": "/requester.wasm", "loop.json": "/loop.json"},
    "outputs": [],
}


def _crossing(mine: str) -> dict:
    """A request for the step the other target runs (which asks for this one)."""
    inputs = {name: "/" + name for name in ("requester.wasm", "a.json", "b.json")}
    return {"executor": "wasm", "argv": ["requester.wasm", f"@{mine}"], "inputs": inputs,
            "outputs": []}  # fmt: skip


@pytest.fixture
def project(tmp_path: Path, guest) -> Path:
    files = {
        "requester.wasm": guest("requester").read_bytes(),
        "cat.wasm": guest("cat").read_bytes(),
        "a.txt": "alpha\n",
        "b.txt": "beta\n",
        "FAIL.txt": "FAIL\n",
        "tag.txt": "one\n",
        "loop.json": json.dumps(LOOP),
        "a.json": json.dumps(_crossing("b.json")),  # A asks for B
        "b.json": json.dumps(_crossing("a.json")),  # B asks for A
    }
    return write_project(tmp_path / "p", KILNFILE, files)


def _stdout(store, report, description: str) -> str:
    step = next(s for s in report.steps if s.description == description)
    return store.cas.get_bytes(Digest.from_proto(step.result.stdout_digest)).decode()


def _statuses(report) -> dict[str, StepStatus]:
    return {s.description: s.status for s in report.steps}


def test_a_requested_step_runs_in_the_build_and_is_cached(store, project: Path) -> None:
    first = build(store, project, "parent", jobs=1)  # one slot: the parent lends it
    assert first.ok, first.errors
    assert _statuses(first) == {"parent": StepStatus.EXECUTED, "child cat": StepStatus.EXECUTED}
    assert _stdout(store, first, "parent") == "exit 0\nalpha\none\n"
    child = next(s for s in first.steps if s.description == "child cat")
    parent = next(s for s in first.steps if s.description == "parent")
    assert child.parent == parent.key and child.target == "parent"
    assert first.summary()["executed"] == 2

    (project / "tag.txt").write_text("two\n")  # the parent runs again; its child is a hit
    second = build(store, project, "parent", jobs=1)
    assert _statuses(second) == {"parent": StepStatus.EXECUTED, "child cat": StepStatus.CACHED}
    assert _stdout(store, second, "parent") == "exit 0\nalpha\ntwo\n"

    third = build(store, project, "parent")
    assert _statuses(third) == {"parent": StepStatus.CACHED}  # nothing ran, nothing asked


def test_the_same_request_from_two_steps_runs_once(store, project: Path) -> None:
    report = build(store, project, "twins", jobs=2)
    assert report.ok, report.errors
    children = [s for s in report.steps if s.description == "child cat"]
    assert len(children) == 1 and children[0].status is StepStatus.EXECUTED


def test_a_failed_child_is_its_parents_to_handle(store, project: Path) -> None:
    report = build(store, project, "failing")
    assert report.ok, report.errors  # the parent printed the exit code and succeeded
    assert _stdout(store, report, "parent of a failure").startswith("exit 3\n")
    assert _statuses(report)["child cat"] is StepStatus.FAILED


def test_a_rule_asking_for_a_failed_child_gets_the_failure(store, project: Path) -> None:
    report = build(store, project, "failing_then_rule")
    assert not report.ok
    message = report.errors[0].render()
    assert "failed with exit code 3" in message and "FAIL" in message
    # one step for both askers (the same key): the rule got the child's outcome
    assert [s.description for s in report.steps] == ["parent of a failure", "child cat"]


def test_a_request_loop_fails_clearly(store, project: Path) -> None:
    report = build(store, project, "loop", jobs=1)
    assert not report.ok
    message = report.errors[0].render()
    assert "request loop" in message and "looper" in message


@pytest.mark.parametrize("jobs", [1, 2])
def test_two_steps_asking_for_each_other_fail_clearly(store, project: Path, jobs: int) -> None:
    # Neither is the other's child: each is a target's own step, already
    # running or waiting when the other asks for it (a deadlock otherwise).
    report = build(store, project, "first", "second", jobs=jobs)
    assert not report.ok
    assert any("request loop" in e.render() for e in report.errors)


def test_outputs_are_mounted_only_under_tmp(store, project: Path) -> None:
    report = build(store, project, "bad_mount")
    assert report.ok, report.errors
    for step in report.steps:
        assert _stdout(store, report, step.description) == "errno 28\n", step.description  # EINVAL
    assert len(report.steps) == 4  # nothing was requested


def test_a_step_may_not_ask_for_tools_it_did_not_declare(store, project: Path) -> None:
    report = build(store, project, "bad_tools")
    assert not report.ok
    message = report.errors[0].render()
    assert "sh" in message and "not among the requesting step's own" in message
    assert not any(s.description.startswith("sh") for s in report.steps)
    assert report.steps[0].attempts == 1  # a refusal is final: not tried again


def test_outside_a_build_a_request_is_an_error_not_a_result(store, project: Path) -> None:
    # `kiln wasm run` or a remote worker: no build to ask. Failing with an
    # error keeps a wrong "not supported" from being cached as the result.
    lone = project.parent / "lone"
    lone.mkdir()
    (lone / "requester.wasm").write_bytes((project / "requester.wasm").read_bytes())
    request = json.dumps({"executor": "wasm", "argv": ["x"], "inputs": {}, "outputs": []})
    spec = ActionSpec(
        argv=("requester.wasm", request),
        input_root=store.put(lone).digest,
        platform=WasmLimits().platform(),
    )
    key = store.put_action(spec)
    with pytest.raises(KilnError, match="only a running build"):
        WasmExecutor(local_context(store)).execute(key, *spec.action())
