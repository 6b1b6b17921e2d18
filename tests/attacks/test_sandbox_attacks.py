"""Attacks on the native sandbox itself: state passed from one step to the
next through what the resident sandbox shares, and bytes in arguments that
try to change the step's environment."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from kiln.errors import KilnError
from kiln.exec.kinds import local_context
from kiln.exec.native import NativeExecutor
from kiln.model.action import ActionSpec
from kiln.model.digest import Digest
from native_helpers import needs_bubblewrap, run_native

pytestmark = needs_bubblewrap


def test_dev_and_dev_shm_carry_nothing_to_the_next_step(store, tmp_path) -> None:
    executor = NativeExecutor(local_context(store))
    tools = ("sh", "cat", "touch", "ls")
    first, out, err = run_native(
        store, tmp_path,
        "echo left > /dev/shm/x && echo wrote-shm; touch /dev/planted && echo wrote-dev; ls /dev",
        tools=tools, executor=executor,
    )  # fmt: skip
    assert first.exit_code == 0
    assert "wrote-shm" in out and "wrote-dev" not in out and "Read-only file system" in err
    _, out, err = run_native(
        store, tmp_path, "cat /dev/shm/x; ls -A /dev/shm; ls /dev", tools=tools, executor=executor
    )
    assert "left" not in out and "planted" not in out and "No such file" in err


def test_a_nul_byte_in_an_argument_is_refused_by_the_action() -> None:
    root = Digest.of_bytes(b"")
    with pytest.raises(ValueError, match="NUL"):
        ActionSpec(argv=("env", "name\0INJECTED=1"), input_root=root)
    with pytest.raises(ValueError, match="NUL"):
        ActionSpec(argv=("env",), input_root=root, env={"A": "1\0INJECTED=1"})


def test_a_nul_byte_in_a_stored_command_never_reaches_the_sandbox(store, tmp_path) -> None:
    """An action made elsewhere (a shared cache, a remote client) is not
    built by ``ActionSpec``: the executor refuses it too."""
    (tmp_path / "in").mkdir()
    spec = ActionSpec(argv=("env",), input_root=store.put(tmp_path / "in").digest,
                      platform=_platform())  # fmt: skip
    action, command = spec.action()
    command.arguments.append("name\0INJECTED=1")
    command.environment_variables.add(name="B", value="2\0INJECTED=2")
    with pytest.raises(KilnError, match="NUL byte"):
        NativeExecutor(local_context(store)).execute(spec.key(), action, command)


def _platform() -> tuple[tuple[str, str], ...]:
    from kiln.exec.native import NativeLimits
    from kiln.exec.tools import Dpkg, identity, resolve

    names = ["env", "sh"]
    dpkg = Dpkg()
    return NativeLimits().platform(names, identity([resolve(n, dpkg) for n in names]))


def test_the_sandbox_refuses_a_request_whose_item_holds_a_nul(store, tmp_path) -> None:
    """The zygote's protocol is framed by lengths and refuses NUL inside an
    item, whoever wrote the request."""
    executor = NativeExecutor(local_context(store))
    run_native(store, tmp_path, "true", executor=executor)  # starts the resident sandbox
    [sandbox] = executor._zygotes.values()
    zygote = sandbox.zygote

    def item(kind: bytes, data: bytes) -> bytes:
        return kind + struct.pack("=I", len(data)) + data

    request = item(b"s", b"step") + item(b"c", b"/work") + item(b"a", b"env")
    request += item(b"a", b"x\0INJECTED=1")
    out, err = os.memfd_create("out"), os.memfd_create("err")
    try:
        socket.send_fds(zygote._sock, [request], [out, err])
        assert zygote._sock.recv(512) == b"error malformed request"
    finally:
        os.close(out)
        os.close(err)
    again, stdout, _ = run_native(store, tmp_path, "echo fine", executor=executor)
    assert again.exit_code == 0 and stdout == "fine\n"


def test_the_resident_processes_command_lines_are_hidden(store, tmp_path) -> None:
    """bubblewrap's command line names the store's and Kiln's host folders."""
    result, out, err = run_native(
        store, tmp_path,
        "for p in /proc/[0-9]*; do cat $p/cmdline $p/environ 2>/dev/null | tr '\\0' ' '; done",
        tools=("sh", "cat", "tr"),
    )  # fmt: skip
    assert result.exit_code == 0, err
    assert "bwrap" not in out and str(store.home) not in out and "kiln-zygote" not in out


def test_a_flood_on_stdout_is_cut_not_held_whole(store, tmp_path) -> None:
    result, out, err = run_native(store, tmp_path, "head -c 100M /dev/zero", tools=("sh", "head"))
    assert result.exit_code == 0
    assert len(out) == 64 << 20
    assert "kiln: stdout cut at 64 MiB of 100.0 MiB written" in err
