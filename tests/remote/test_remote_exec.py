"""Remote execution on a real engine: BuildGrid with its SQL scheduler on
PostgreSQL, and ``kiln worker`` processes as its bots. Results must equal a
local build's; steps spread over the workers; a killed worker's step runs
again elsewhere; an unreachable engine is an error unless told to fall back."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import KILN, run_kiln
from kiln import api
from kiln.api import BuildRequest, StepStatus
from kiln.errors import KilnError
from kiln.remote.worker import MATCH_KEYS, WILDCARD_KEYS
from kiln.store import Store

from .proxy import Proxy

pytestmark = [pytest.mark.slow, pytest.mark.network]

EXAMPLES = Path(__file__).parents[2] / "examples"
KILN_ENGINE = {"match_keys": MATCH_KEYS, "wildcard_keys": WILDCARD_KEYS, "keepalive_s": 6}


def project(tmp_path: Path, name: str, example: str = "wordcount") -> Path:
    root = tmp_path / name
    shutil.copytree(EXAMPLES / example, root, ignore=shutil.ignore_patterns("kiln-out"))
    return root


def build(home: Path, root: Path, **options) -> api.BuildReport:
    with Store(home) as store:
        request = BuildRequest(cwd=root, store=home, from_stamp=False, **options)
        return api.build(request, None, store=store)


class Workers:
    """``kiln worker`` processes, each with its own store; stopped at the end."""

    def __init__(self, url: str, folder: Path) -> None:
        self.url = url
        self.folder = folder
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, slots: int = 2) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "ab")  # noqa: SIM115
        env = {**os.environ, "KILN_HOME": str(self.folder / name)}
        proc = subprocess.Popen(
            [KILN, "worker", "--remote", self.url, "--slots", str(slots), "--bot-id", name],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers(buildgrid_exec, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(buildgrid_exec.url, tmp_path)
    try:
        yield pool
    finally:
        pool.stop()


def workers_of(report: api.BuildReport) -> set[str]:
    return {s.result.execution_metadata.worker for s in report.steps if s.result is not None}


@pytest.mark.parametrize("buildgrid_exec", [KILN_ENGINE], indirect=True)
@pytest.mark.parametrize("example", ["wordcount", "calc"])
def test_remote_execution_gives_the_local_digests_over_two_workers(
    buildgrid_exec, workers: Workers, tmp_path: Path, example: str
) -> None:
    if example == "calc":
        from kiln.cli.doctor import check_bubblewrap

        if check_bubblewrap().status != "ok":
            pytest.skip("bubblewrap cannot make sandboxes here (see `kiln doctor`)")
    workers.start("w1")
    workers.start("w2")
    # (calc's `made` runs make here: a recursive step never goes remote)
    targets = ["calc", "check"] if example == "calc" else []
    local = build(tmp_path / "local", project(tmp_path, "local", example), targets=targets)
    assert local.ok, local.errors
    remote = build(
        tmp_path / "client", project(tmp_path, "remote", example),
        remote_exec=buildgrid_exec.url, jobs=8, targets=targets,
    )  # fmt: skip
    assert remote.ok, remote.errors
    summary = remote.summary()
    assert summary["executed"] == 0, [s.description for s in remote.steps]
    assert summary["remote_executed"] == len(remote.steps)
    assert [t.digest for t in remote.targets] == [t.digest for t in local.targets]
    if example == "wordcount":  # enough independent steps to reach both
        assert workers_of(remote) == {"w1", "w2"}, workers.log("w1") + workers.log("w2")
        # Where each result came from, in `kiln show` and on the trace's lanes.
        root = tmp_path / "remote"
        shown = run_kiln(tmp_path / "client", "show", "report", "--json", cwd=root, check=True)
        [merge] = json.loads(shown.stdout)
        assert merge["status"] == "remote-executed"
        assert merge["origin"] in ("remote worker w1", "remote worker w2")
        run_kiln(tmp_path / "client", "trace", "-o", str(tmp_path / "t.json"), cwd=root, check=True)
        events = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
        lanes = {e["args"]["name"] for e in events if e.get("name") == "thread_name"}
        assert {"remote worker w1", "remote worker w2"} <= lanes
        status = run_kiln(
            tmp_path / "client", "remote", "status", "--remote", buildgrid_exec.url, "--json"
        )
        [row] = json.loads(status.stdout)
        assert status.returncode == 0 and row["ok"] and row["execution"]

    again = build(
        tmp_path / "client2", project(tmp_path, "again", example),
        remote_exec=buildgrid_exec.url, targets=targets,
    )  # fmt: skip
    assert again.count(StepStatus.REMOTE_CACHED) == len(again.steps)  # the engine's cache


@pytest.mark.parametrize("buildgrid_exec", [KILN_ENGINE], indirect=True)
def test_a_worker_killed_mid_lease_has_its_step_run_elsewhere(
    buildgrid_exec, workers: Workers, tmp_path: Path, tools
) -> None:
    root = tmp_path / "slow"
    root.mkdir()
    (root / "slow.wasm").write_bytes(tools["tools/slow.wasm"])
    (root / "kilnfile.py").write_text("""
from kiln.build import source, target, wasm

@target
async def slow():
    step = await wasm(source("slow.wasm"), "800", "out.txt", outputs=["out.txt"])
    return step.file("out.txt")
""")
    first = workers.start("first", slots=1)
    killed = threading.Event()

    def kill_once_running() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if ": running " in workers.log("first"):
                os.killpg(first.pid, signal.SIGKILL)
                killed.set()
                workers.start("second", slots=1)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=kill_once_running)
    thread.start()
    try:
        report = build(tmp_path / "client", root, remote_exec=buildgrid_exec.url)
    finally:
        thread.join()
    assert killed.is_set()
    assert report.ok, report.errors
    assert workers_of(report) == {"second"}
    assert report.count(StepStatus.REMOTE_EXECUTED) == 1


@pytest.mark.parametrize("buildgrid_exec", [KILN_ENGINE], indirect=True)
def test_an_unreachable_engine_is_an_error_unless_falling_back(
    buildgrid_exec, tmp_path: Path
) -> None:
    url = buildgrid_exec.url
    buildgrid_exec.stop()
    with pytest.raises(KilnError) as failed:
        build(tmp_path / "a", project(tmp_path, "a"), remote_exec=url)
    message = failed.value.render()
    assert "UNAVAILABLE" in message and "--remote-fallback" in message
    cli = run_kiln(tmp_path / "c", "build", "--remote-exec", url, cwd=project(tmp_path, "c"))
    assert cli.returncode == 1 and "Traceback" not in cli.stderr
    assert "--remote-fallback" in cli.stderr
    fell_back = build(tmp_path / "b", project(tmp_path, "b"), remote_exec=url, remote_fallback=True)
    assert fell_back.ok, fell_back.errors
    assert fell_back.count(StepStatus.EXECUTED) == len(fell_back.steps)
    assert any("--remote-fallback" in w for w in fell_back.warnings)


@pytest.mark.parametrize("buildgrid_exec", [KILN_ENGINE], indirect=True)
def test_a_worker_outlives_an_engine_restart(
    buildgrid_exec, workers: Workers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_RACY_WINDOW_MS", "0")
    workers.start("w1")
    root = project(tmp_path, "a")
    assert build(tmp_path / "client", root, remote_exec=buildgrid_exec.url).ok
    ran_before = workers.log("w1").count(": running ")
    buildgrid_exec.restart()
    chapter = root / "text" / "clay.txt"
    chapter.write_text(chapter.read_text() + "\nclay again\n")
    report = build(tmp_path / "client", root, remote_exec=buildgrid_exec.url)
    assert report.ok, report.errors
    assert report.count(StepStatus.REMOTE_EXECUTED) == 2  # the chapter's count, the merge
    # The same worker ran both, through the restart: in a new session, or in
    # its old one when the engine kept it (BuildGrid keeps bot sessions in
    # its database, so counting sessions made this test fail now and then).
    log = workers.log("w1")
    assert log.count(": running ") >= ran_before + 2, log


@pytest.mark.parametrize("buildgrid_exec", [KILN_ENGINE], indirect=True)
def test_an_execution_stream_that_drops_is_resumed_with_wait_execution(
    buildgrid_exec, workers: Workers, tmp_path: Path
) -> None:
    workers.start("w1")
    proxy = Proxy(buildgrid_exec.address).start()
    proxy.cut_streams["/build.bazel.remote.execution.v2.Execution/Execute"] = 1
    try:
        report = build(tmp_path / "client", project(tmp_path, "a"), remote_exec=proxy.url)
    finally:
        proxy.stop()
    assert report.ok, report.errors
    assert report.count(StepStatus.REMOTE_EXECUTED) == len(report.steps)
    assert "WaitExecution" in proxy.calls


# An engine configured to let the property through (Kiln's documented set refuses it).
OPEN_ENGINE = {**KILN_ENGINE, "wildcard_keys": (*WILDCARD_KEYS, "secrets")}


@pytest.mark.parametrize("buildgrid_exec", [OPEN_ENGINE], indirect=True)
def test_a_worker_refuses_an_action_that_names_secrets(
    buildgrid_exec, workers: Workers, tmp_path: Path
) -> None:
    """Any client of the engine could send one; the worker never lends its secrets."""
    import asyncio
    import platform

    from kiln.exec.kinds import NATIVE_ABI
    from kiln.model.digest import EMPTY, Digest, canonical_bytes
    from kiln.model.reapi import re_pb2
    from kiln.remote.client import RemoteClient
    from kiln.remote.settings import RemoteSettings, parse_endpoint

    workers.start("w1")
    command = re_pb2.Command(arguments=["cat", "/kiln/secrets/release-key"])
    props = {"kiln-abi": NATIVE_ABI, "isa": platform.machine(), "os": "linux",
             "secrets": "release-key"}  # fmt: skip
    action = re_pb2.Action(
        command_digest=Digest.of_message(command).to_proto(),
        input_root_digest=EMPTY.to_proto(),
        platform=re_pb2.Platform(
            properties=[re_pb2.Platform.Property(name=k, value=v) for k, v in sorted(props.items())]
        ),
    )

    async def execute() -> re_pb2.ExecuteResponse:
        endpoint = parse_endpoint(buildgrid_exec.url, "test")
        client = RemoteClient(endpoint, RemoteSettings(exec=endpoint))
        try:
            await client.check(execution=True)
            blobs = {Digest.of_message(m): canonical_bytes(m) for m in (action, command)}
            await client.upload(blobs)
            return await asyncio.wait_for(client.execute(Digest.of_message(action)), 60)
        finally:
            await client.close()

    response = asyncio.run(execute())
    assert response.status.code == 7  # PERMISSION_DENIED
    assert "runs no step that reads secrets" in response.status.message
    assert not response.result.stdout_digest.size_bytes
