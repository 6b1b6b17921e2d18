"""The native sandbox: steps see only what they declared. Each escape
attempt below must fail, and fail in the specific way the sandbox makes it
fail."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from kiln.exec.base import TransientError
from kiln.exec.kinds import local_context
from kiln.exec.native import NativeExecutor, NativeLimits
from kiln.exec.tools import Dpkg, identity, resolve
from kiln.model.digest import Digest
from native_helpers import needs_bubblewrap, run_native

pytestmark = needs_bubblewrap

_run = run_native


def test_declared_outputs_are_collected_and_inputs_are_readable(store, tmp_path) -> None:
    result, out, _ = _run(
        store, tmp_path, "cat input.txt; echo made > out/made.txt; echo stray > stray.txt",
        tools=("sh", "cat"), outputs=("out/made.txt",),
    )  # fmt: skip
    assert result.exit_code == 0 and out == "an input\n"
    assert [f.path for f in result.output_files] == ["out/made.txt"]  # stray.txt is not


def test_undeclared_host_files_are_not_there(store, tmp_path) -> None:
    home = Path.home()
    _, out, _ = _run(
        store, tmp_path,
        f"cat /etc/hostname; cat /etc/passwd; ls {home}; ls /usr/bin/python3; echo done",
        tools=("sh", "cat", "ls"),
    )  # fmt: skip
    assert "done" in out
    _, _, err = _run(
        store, tmp_path, f"cat /etc/hostname; ls {home}; ls /usr/bin/python3",
        tools=("sh", "cat", "ls"),
    )  # fmt: skip
    assert "cat: /etc/hostname: No such file or directory" in err
    assert f"ls: cannot access '{home}': No such file or directory" in err
    assert "ls: cannot access '/usr/bin/python3': No such file or directory" in err


def test_nothing_outside_the_outputs_can_be_written(store, tmp_path) -> None:
    _result, _, err = _run(
        store, tmp_path,
        "echo x > input.txt; echo x > /kiln/inputs/input.txt; echo x > /usr/bin/evil; "
        "chmod 777 input.txt; echo x > /evil",
        tools=("sh", "chmod"),
    )  # fmt: skip
    assert err.count("Read-only file system") >= 4
    assert (tmp_path / "in" / "input.txt").read_text() == "an input\n"
    blob = store.cas.path(Digest.of_bytes(b"an input\n"))
    assert blob.read_text() == "an input\n" and not os.stat(blob).st_mode & 0o222


def test_no_network_to_the_host(store, tmp_path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            accepted.append(server.accept())

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        _, _, err = _run_bash(store, tmp_path, f"exec 3<>/dev/tcp/127.0.0.1/{port}")
    finally:
        thread.join()
        server.close()
    assert "Connection refused" in err
    assert accepted == []


def _run_bash(store, tmp_path, script: str):
    return _run(store, tmp_path, f"bash -c '{script}'", tools=("bash", "sh"))


def test_no_host_environment_hostname_or_uid(store, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KILN_TEST_SECRET", "leaked")
    _, out, _ = _run(
        store, tmp_path, "env; uname -n; id -u; id -g", tools=("sh", "env", "uname", "id")
    )
    assert "KILN_TEST_SECRET" not in out and "leaked" not in out
    lines = out.splitlines()
    assert lines[-3:] == ["kiln", "1000", "1000"]
    assert set(line.split("=")[0] for line in lines[:-3]) <= {
        "PATH", "HOME", "TZ", "LANG", "SOURCE_DATE_EPOCH", "KILN_BUILD_CORES", "PWD", "SHLVL",
        "_",
    }  # fmt: skip


def test_host_processes_cannot_be_signalled(store, tmp_path) -> None:
    victim = subprocess.Popen(["sleep", "60"])
    try:
        _, _, err = _run(store, tmp_path, f"kill -9 {victim.pid}")
        assert "No such process" in err
        assert victim.poll() is None  # still running
    finally:
        victim.kill()
        victim.wait()


def test_a_fork_bomb_meets_the_process_limit(store, tmp_path) -> None:
    _result, _, err = _run(
        store, tmp_path,
        "i=0; while [ $i -lt 200 ]; do sleep 0.3 & i=$((i+1)); done; wait; echo survived",
        tools=("sh", "sleep"), limits=NativeLimits(pids=16),
    )  # fmt: skip
    assert "Cannot fork" in err or "Resource temporarily unavailable" in err


def test_no_process_outlives_its_step(store, tmp_path) -> None:
    result, out, _ = _run(store, tmp_path, "sleep 313 & echo started", tools=("sh", "sleep"))
    assert result.exit_code == 0 and out == "started\n"
    assert _gone("sleep 313")


def test_a_timeout_is_transient_and_leaves_nothing(store, tmp_path) -> None:
    with pytest.raises(TransientError, match="wall-clock timeout"):
        _run(store, tmp_path, "sleep 317", tools=("sh", "sleep"), timeout=1)
    assert _gone("sleep 317")


def _gone(command: str, within: float = 5.0) -> bool:
    """Whether no process runs ``command`` (the kernel may still be ending
    the step's processes just after the sandbox has answered)."""
    deadline = time.monotonic() + within
    while subprocess.run(["pgrep", "-f", command], capture_output=True).returncode == 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_changed_tool_binary_changes_its_identity(tmp_path) -> None:
    dpkg = Dpkg()
    tool = tmp_path / "mycc"
    tool.write_text("#!/bin/sh\necho version 1\n")
    tool.chmod(0o755)
    first = identity([resolve(str(tool), dpkg)])
    tool.write_text("#!/bin/sh\necho version 2\n")
    assert identity([resolve(str(tool), dpkg)]) != first
    assert resolve(str(tool), dpkg).packages  # the interpreter's package (dash) is needed


def test_undeclared_tool_is_a_clear_error(tmp_path) -> None:
    from kiln.errors import KilnError

    with pytest.raises(KilnError, match="tool 'no-such-tool-here' is not an executable"):
        resolve("no-such-tool-here", Dpkg())


def test_out_of_memory_is_reported_as_such(store, tmp_path) -> None:
    # The shell keeps the whole output of the substitution in memory.
    result, _, err = _run(
        store, tmp_path, "x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo ${#x}",
        tools=("sh", "head", "tr"), limits=NativeLimits(memory_mib=64),
    )  # fmt: skip
    # With a memory cgroup (root, or a delegated cgroup tree) the kill is
    # seen; under the RLIMIT_AS fallback only the crash and the limit are.
    assert (
        "kiln: out of memory: killed at the step's limit of 64 MiB" in err
        or "memory is limited here by RLIMIT_AS, 64 MiB" in err
    ), err
    assert result.exit_code != 0


def test_the_resident_sandbox_processes_are_out_of_reach(store, tmp_path) -> None:
    executor = NativeExecutor(local_context(store))
    result, out, err = _run(
        store, tmp_path,
        "ls -A /kiln/host; touch /kiln/host/x; "
        "for p in /proc/[0-9]*; do ls $p/root/kiln/host; cat $p/environ; "
        "[ ${p#/proc/} = $$ ] || kill -9 ${p#/proc/}; done; "
        "echo done",
        tools=("sh", "ls", "touch", "cat", "kill"), executor=executor,
    )  # fmt: skip
    assert result.exit_code == 0 and out.endswith("done\n")
    assert "zygote" not in out and "work" not in out
    assert "touch: cannot touch '/kiln/host/x': Read-only file system" in err
    assert "/root/kiln/host': Permission denied" in err  # the resident processes'
    assert "/environ: Permission denied" in err
    again, out, _ = _run(store, tmp_path, "echo still here", executor=executor)
    assert again.exit_code == 0 and out == "still here\n"


def test_nothing_passes_from_one_step_to_the_next(store, tmp_path) -> None:
    executor = NativeExecutor(local_context(store))
    tools = ("sh", "ls", "ipcmk", "ipcs", "touch", "grep")
    first, out, _ = _run(
        store, tmp_path, "touch /tmp/left-behind stray.txt; ipcmk -M 4096; ipcs -m | grep -c 0x",
        tools=tools, executor=executor,
    )  # fmt: skip
    assert first.exit_code == 0 and "Shared memory id" in out and out.endswith("1\n")
    _, out, _ = _run(
        store, tmp_path, "ls -A /tmp .; ipcs -m | grep -c 0x", tools=tools, executor=executor
    )
    assert "left-behind" not in out and "stray.txt" not in out and out.endswith("0\n")


def test_an_output_folder_keeps_inputs_it_links_as_their_content(store, tmp_path) -> None:
    from kiln.model.reapi import re_pb2

    result, _, _ = _run(
        store, tmp_path,
        "mkdir out; ln -s /kiln/inputs/input.txt out/copy.txt; ln -s elsewhere out/link; "
        "echo new > out/new.txt",
        tools=("sh", "mkdir", "ln"), outputs=("out",),
    )  # fmt: skip
    assert result.exit_code == 0, result
    [folder] = result.output_directories
    tree = re_pb2.Tree.FromString(store.cas.get_bytes(Digest.from_proto(folder.tree_digest)))
    files = {f.name: Digest.from_proto(f.digest) for f in tree.root.files}
    assert files == {
        "copy.txt": Digest.of_bytes(b"an input\n"),
        "new.txt": Digest.of_bytes(b"new\n"),
    }
    assert [(s.name, s.target) for s in tree.root.symlinks] == [("link", "elsewhere")]
