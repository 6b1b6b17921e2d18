"""Attacks on the channels of steps that request steps: the build's step
service (its socket), the per-step proxy behind kiln-sub (hostile bytes
from inside a sandbox), and what a recursive step may obtain through it
(host files, tools it did not declare, secrets)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from squatters import NOBODY

from kiln import api
from kiln.cli.doctor import check_bubblewrap
from kiln.engine.nested import StepService
from kiln.exec.native import bwrap_path
from kiln.exec.substep_proxy import Hands, Hello, SubstepProxy
from kiln.exec.substeps import encode_message

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
needs_sandbox = pytest.mark.skipif(
    bwrap_path() is None or check_bubblewrap().status != "ok",
    reason="bubblewrap cannot make sandboxes here (see `kiln doctor`)",
)

# Sends a request to ARGV[1] as NOBODY and prints what comes back.
ASK_AS_NOBODY = f"""
import os, socket, sys
os.setgid({NOBODY})
os.setuid({NOBODY})
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
try:
    s.sendall(bytes.fromhex(sys.argv[2]))
    print(repr(s.recv(100)))
except (BrokenPipeError, ConnectionResetError):  # closed with the request unread
    print(repr(b""))
"""


class _Service:
    """A step service on its own event loop (no build behind it: a request
    that got through would fail on the missing scheduler)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.service = StepService(None, None)  # type: ignore[arg-type]
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self.service.__aenter__(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.service.__aexit__(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


@needs_root
def test_another_user_cannot_reach_the_step_service() -> None:
    served = _Service()
    try:
        request = encode_message({"parent": "x"}).hex()
        path = str(served.service.path)
        tried = subprocess.run([sys.executable, "-c", ASK_AS_NOBODY, path, request],
                               capture_output=True, text=True)  # fmt: skip
        assert tried.returncode != 0 and "PermissionError" in tried.stderr  # a 0700 folder
        # Even with the folder opened up, the service answers its own user only.
        os.chmod(served.service.path.parent, 0o755)
        os.chmod(served.service.path, 0o777)
        tried = subprocess.run([sys.executable, "-c", ASK_AS_NOBODY, path, request],
                               capture_output=True, text=True)  # fmt: skip
        assert tried.returncode == 0, tried.stderr
        assert tried.stdout.strip() == "b''"  # closed without a word
    finally:
        served.close()


# ------------------------------------------------------------- the proxy


@pytest.fixture
def proxy(tmp_path: Path):
    heard: list[Hello] = []

    def handler(hands: Hands, hello: Hello) -> None:
        heard.append(hello)
        hands.exit(0)

    served = SubstepProxy(tmp_path, handler)
    yield served, heard
    served.close()


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    sock.connect(str(path))
    return sock


def _frame(*fields: bytes) -> bytes:
    body = b"".join(struct.pack(">I", len(f)) + f for f in fields)
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize(
    "attack",
    [
        struct.pack(">I", 0xFFFFFFF0),  # a length far past the limit
        struct.pack(">I", 100) + b"short",  # cut off
        _frame(b"hello") + b"",  # no separator between arguments and environment
        struct.pack(">I", 12) + struct.pack(">I", 50) + b"12345678",  # a field overruns
        _frame(b"data", b"0", b"x"),  # not a hello
    ],
    ids=["huge", "truncated", "no-separator", "field-overrun", "not-hello"],
)
def test_the_proxy_survives_malformed_messages(proxy, attack: bytes) -> None:
    served, heard = proxy
    with _connect(served.path) as sock:
        sock.sendall(attack)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b""  # dropped, nothing done
    assert heard == []
    with _connect(served.path) as sock:  # and it still serves the next one
        sock.sendall(_frame(b"hello", b"/work", b"run", b"", b"A=1"))
        assert sock.recv(100)  # the handler's exit message
    assert heard == [Hello("/work", ["run"], {"A": "1"})]


# ------------------------------------------------- what a recursive step gets

KILNFILE = """
from kiln.build import native, source, target

@target
async def peek():
    # A link to a host file, handed to a requested step as its input.
    return await native("sh", "-c",
        "ln -s {secret} link; /kiln/bin/kiln-sub run --tool cat --in link -- cat link "
        "> got.txt 2> err.txt; echo $? >> got.txt",
        tools=["sh", "ln", "cat"], outputs=["got.txt", "err.txt"], recursive=True)

@target
async def sneaky():
    return await native("sh", "-c", "true", tools=["sh"], secrets=["token"], recursive=True)
"""


def _build(store, root: Path, target: str) -> api.BuildReport:
    request = api.BuildRequest([target], cwd=root, store=store.home, from_stamp=False)
    return api.build(request, store=store)


def _project(root: Path, kilnfile: str) -> Path:
    root.mkdir()
    (root / "kilnfile.py").write_text(kilnfile)
    return root


@needs_sandbox
def test_a_requested_step_never_sees_host_files(store, tmp_path: Path) -> None:
    secret = tmp_path / "host-secret.txt"
    secret.write_text("the host's secret\n")
    root = _project(tmp_path / "p", KILNFILE.replace("{secret}", str(secret)))
    report = _build(store, root, "peek")
    assert report.ok, report.errors
    got = (root / "kiln-out" / "peek" / "got.txt").read_text()
    assert "secret" not in got and got.strip().endswith("2")  # kiln-sub: no such input
    assert [s.description for s in report.steps] == [report.steps[0].description]  # no child


def test_a_step_with_secrets_cannot_be_recursive(store, tmp_path: Path) -> None:
    root = _project(tmp_path / "p", KILNFILE.replace("{secret}", "/nowhere"))
    report = _build(store, root, "sneaky")
    assert not report.ok
    assert "secrets cannot be recursive" in report.errors[0].render()


def test_a_failure_of_the_proxy_taints_the_step(tmp_path: Path) -> None:
    """Kiln's own failure while serving kiln-sub is never the step's result:
    the step is marked so that its executor fails it as an error."""

    def handler(hands: Hands, hello: Hello) -> None:
        raise RuntimeError("a bug")

    served = SubstepProxy(tmp_path, handler)
    try:
        with _connect(served.path) as sock:
            sock.sendall(_frame(b"hello", b"/work", b"run", b""))
            assert b"a bug" in sock.recv(1000)
        assert served.tainted is not None and not served.tainted.final
    finally:
        served.close()
