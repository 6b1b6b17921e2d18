"""The native `kiln` client (`kiln server install-client`, kiln/server/client.c).

First the real binary against a real resident server per test (each one
stopped at the end), side by side with the Python client; then the details
of its protocol against a stand-in server, a thread of the test process
that records each request and answers what the test says, with a fallback
command that only says how it was run.

(Not tests/test_native_client.py: tests/cc/ has a module of that name.)"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import KILN
from kiln.server import client as server_client
from kiln.server import native_client
from server_helpers import WAIT_S, Served, gone, serving

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="the server is Linux-only"),
    pytest.mark.skipif(native_client.binary() is None, reason="no native client for here"),
]

# What differs between two runs of the same command: how long it took.
DURATION = re.compile(r"\d+\.\d+")
# Bytes that are not all UTF-8 (Python's surrogateescape carries them), and
# what JSON must escape.
RAW = (
    b"\xff\xfe caf\xc3\xa9 \xed\xa0\x80 \xc0\xaf \xf4\x90\x80\x80 \xe2\x82 "
    b'"quoted" back\\slash \t\n\x01\x1f\x7f \xf0\x9f\x98\x80 end'
)
# (It writes files, so it leaves no build stamp: each build runs it again.)
PROBE = """
import os
from pathlib import Path
from kiln.build import setting, target

@target
async def probe():
    mark = Path(os.environ["KILN_TEST_MARK"])
    mark.with_suffix(".env").write_bytes(os.environb.get(b"KILN_TEST_RAW", b""))
    mark.with_suffix(".arg").write_bytes(os.fsencode(setting("raw", default="")))
    mark.with_suffix(".tried").write_text(repr(os.environ.get("KILN_SERVER_TRIED")))
"""
SLEEPY = """
import asyncio, os
from pathlib import Path
from kiln.build import target

@target
async def slow():
    Path(os.environ["KILN_TEST_MARK"]).write_text(str(os.getpid()))
    await asyncio.sleep(120)
"""
FAILING = """
from kiln.build import source, target, wasm

@target
async def broken():
    return await wasm(source("textkit.wasm"), "no-such-command", description="fail on purpose")
"""
# No build stamp (so each build reads its build file again).
NO_STAMP = {"KILN_RACY_WINDOW_MS": str(24 * 3600 * 1000)}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with serving(tmp_path / "home") as s:
        s.env["KILN_RACY_WINDOW_MS"] = "0"  # (edits are seen at once)
        yield s


@pytest.fixture
def native(served: Served, tmp_path: Path) -> Path:
    return served.install_native_client(tmp_path / "bin")


@pytest.fixture
def probe(tmp_path: Path) -> Path:
    """A project whose build writes what it got to $KILN_TEST_MARK.*"""
    return _project(tmp_path / "probe", PROBE)


def _project(root: Path, kilnfile: str) -> Path:
    root.mkdir(parents=True)
    (root / "kilnfile.py").write_text(kilnfile)
    return root


def _answered(served: Served) -> int:
    status = served.status()
    assert status is not None, (served.home / "server.log").read_text()  # (why it is gone)
    return status["answered_here"]


def _until_answered(served: Served, client: Path, args: list[str], cwd: Path) -> None:
    """Build until the server answers a build itself (the stamp of these
    arguments holds: its sources may be racy files at first)."""
    before = _answered(served)
    deadline = time.monotonic() + WAIT_S
    while _answered(served) == before:
        assert time.monotonic() < deadline, "the server answered no no-op build itself"
        done = served.run(client, *args, cwd=cwd)
        assert done.returncode == 0, done.stderr


def _same(done: subprocess.CompletedProcess) -> tuple[int, str, str]:
    return done.returncode, DURATION.sub("N", done.stdout), DURATION.sub("N", done.stderr)


# ---------------------------------------------------------------- installing


def test_install_client_writes_the_client_and_its_settings(served: Served, tmp_path: Path) -> None:
    folder = tmp_path / "bin"
    done = served.kiln("server", "install-client", "--json", str(folder))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    where = server_client.place(served.home)
    client, conf = folder / "kiln", folder / "kiln.conf"
    assert report["files"] == [str(client), str(conf)]
    assert client.read_bytes() == native_client.binary().read_bytes()
    assert stat.S_IMODE(client.stat().st_mode) == 0o755
    fallback = report["fallback"]
    assert fallback[1:] == ["-P", "-m", "kiln"]
    assert os.path.realpath(fallback[0]) == os.path.realpath(sys.executable)
    assert conf.read_text().splitlines() == [where.socket, where.home, *fallback]
    again = served.kiln("server", "install-client", str(folder))  # its own files: replaced
    assert again.returncode == 0, again.stderr
    assert f'export PATH="{folder}:$PATH"' in again.stdout
    assert sorted(p.name for p in folder.iterdir()) == ["kiln", "kiln.conf"]  # nothing staged left


def test_install_client_does_not_replace_files_of_the_user(served: Served, tmp_path: Path) -> None:
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "kiln").symlink_to(KILN)  # e.g. the user's own link to kiln
    refused = served.kiln("server", "install-client", str(folder))
    assert refused.returncode == 1
    assert f"{folder / 'kiln'} exists and is not Kiln's native client" in refused.stderr
    assert os.readlink(folder / "kiln") == KILN and not (folder / "kiln.conf").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "kiln.conf").write_text("the user's\n")
    refused = served.kiln("server", "install-client", str(other))
    assert "is not the native kiln client's settings" in refused.stderr
    assert (other / "kiln.conf").read_text() == "the user's\n" and not (other / "kiln").exists()
    (tmp_path / "file").write_text("")
    not_a_folder = served.kiln("server", "install-client", str(tmp_path / "file"))
    assert not_a_folder.returncode == 2 and "is a file" in not_a_folder.stderr


def test_python_runs_kiln_as_the_fallback_does() -> None:
    done = subprocess.run(
        [*native_client.default_fallback(), "build", "--help"], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: kiln build")


# ---------------------------------------------------------------- a real server


def test_a_no_op_build_answered_by_the_server_prints_what_the_python_client_prints(
    served: Served, native: Path, example: Path
) -> None:
    served.start()
    for args in (["build"], ["build", "--json"], ["build", "report", "counts"]):
        _until_answered(served, native, args, example)
        count = _answered(served)
        by_native = served.run(native, *args, cwd=example)
        assert _answered(served) == count + 1  # answered by the server itself
        by_python = served.kiln(*args, cwd=example)
        assert _answered(served) == count + 2
        assert _same(by_native) == _same(by_python)
        assert by_native.returncode == 0
    assert "nothing to do" in by_native.stderr


def test_a_build_runs_in_the_server_with_the_exit_code_of_the_python_client(
    served: Served, native: Path, example: Path, tmp_path: Path
) -> None:
    served.start()
    first = served.run(native, "build", "--json", "report", cwd=example)
    assert first.returncode == 0, first.stderr
    assert (json.loads(first.stdout)["executed"], json.loads(first.stdout)["failed"]) == (6, 0)
    assert (example / "kiln-out" / "report" / "report.txt").is_file()
    assert served.status()["served"] == 1
    with open(example / "text" / "kiln.txt", "a") as f:
        f.write("One more line.\n")
    second = served.run(native, "build", "--json", "report", cwd=example)
    assert json.loads(second.stdout)["executed"] == 2
    unknown = served.run(native, "build", "no-such-target", cwd=example)
    assert unknown.returncode == 2 and "no-such-target" in unknown.stderr
    assert _same(unknown) == _same(served.kiln("build", "no-such-target", cwd=example))
    project = _project(tmp_path / "failing", FAILING)
    (project / "textkit.wasm").write_bytes((example / "tools" / "textkit.wasm").read_bytes())
    failed = served.run(native, "build", cwd=project)
    assert failed.returncode == 1 and "failed with exit code 2" in failed.stderr
    assert _same(failed) == _same(served.kiln("build", cwd=project))
    assert served.status()["served"] == 6  # every one ran in the server


def test_a_command_the_server_refuses_runs_in_python_once(
    served: Served, native: Path, probe: Path, tmp_path: Path
) -> None:
    served.start()
    modules = tmp_path / "modules"
    modules.mkdir()
    mark = tmp_path / "mark"
    # Another import path than the server's: refused (the build could import other code).
    path = os.pathsep.join([str(modules), *filter(None, [os.environ.get("PYTHONPATH")])])
    done = served.run(native, "build", cwd=probe, PYTHONPATH=path, KILN_TEST_MARK=str(mark))
    assert done.returncode == 0, done.stderr
    assert "kiln server" not in done.stderr  # (no warning: a refusal is no attack)
    assert served.status()["served"] == 0 and _answered(served) == 0
    assert mark.with_suffix(".tried").read_text() == "None"  # the build never sees the marker


def test_other_commands_kiln_server_off_and_another_store_run_in_python(
    served: Served, native: Path, example: Path, tmp_path: Path
) -> None:
    served.start()
    for args in (["--version"], ["store", "stats", "--json"]):
        by_native, by_python = served.run(native, *args), served.kiln(*args)
        assert by_native.returncode == 0, by_native.stderr
        assert _same(by_native) == _same(by_python)
    off = served.run(native, "build", "--json", "report", cwd=example, KILN_SERVER="Off")
    assert off.returncode == 0, off.stderr
    assert json.loads(off.stdout)["executed"] == 6
    other = tmp_path / "other-store"
    elsewhere = served.run(native, "build", "--json", cwd=example, KILN_HOME=str(other), **NO_STAMP)
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert json.loads(elsewhere.stdout)["executed"] == 6  # (in its own store: nothing cached)
    assert other.is_dir()
    assert served.status()["served"] == 0 and _answered(served) == 0


def test_with_no_server_a_build_starts_one_when_configured(
    served: Served, native: Path, example: Path, tmp_path: Path
) -> None:
    """[server] start = "on-build": the fallback that finds no server starts it."""
    config = tmp_path / "config.toml"
    config.write_text('[server]\nstart = "on-build"\n')
    served.home.mkdir()  # (a store that does not exist yet has no server to look for)
    first = served.run(native, "build", "--json", cwd=example, KILN_CONFIG=str(config))
    assert first.returncode == 0, first.stderr  # (it ran by itself meanwhile)
    served.wait_until(served.status, "the server the build started")
    again = served.run(native, "build", "report", cwd=example, KILN_CONFIG=str(config))
    assert again.returncode == 0, again.stderr
    assert served.status()["served"] == 1


def test_leading_c_options_are_applied_first(
    served: Served, native: Path, example: Path, tmp_path: Path
) -> None:
    served.start()
    done = served.run(
        native, "-C", str(example.parent), f"-C{example.name}", "build", "--json", "report",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["executed"] == 6
    assert served.status()["served"] == 1
    # One that cannot be applied is the fallback's to report.
    missing = ["-C", str(example), "-C", "no-such-folder", "build"]
    by_native = served.run(native, *missing, cwd=tmp_path)
    assert by_native.returncode == 2 and "no-such-folder" in by_native.stderr
    assert _same(by_native) == _same(served.kiln(*missing, cwd=tmp_path))
    assert served.status()["served"] == 1


def test_bytes_that_are_not_utf8_reach_the_build_exactly(
    served: Served, native: Path, probe: Path, tmp_path: Path
) -> None:
    served.start()
    for client, mark in ((native, tmp_path / "native"), (Path(KILN), tmp_path / "python")):
        env = {**served.env, "KILN_TEST_MARK": str(mark), "KILN_TEST_RAW": os.fsdecode(RAW)}
        done = subprocess.run(
            [str(client), "build", b"-Draw=" + RAW], cwd=probe, env=env, capture_output=True,
            timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert mark.with_suffix(".env").read_bytes() == RAW
        assert mark.with_suffix(".arg").read_bytes() == RAW
    assert served.status()["served"] == 2  # both ran in the server


def test_a_large_environment_is_handed_over_whole(
    served: Served, native: Path, probe: Path, tmp_path: Path
) -> None:
    served.start()
    mark = tmp_path / "mark"
    value = os.urandom(60_000).hex()  # 1.2 MB in all: many writes to the socket
    large = {f"KILN_TEST_LARGE_{i}": value for i in range(10)}
    done = served.run(
        native, "build", cwd=probe, KILN_TEST_MARK=str(mark), KILN_TEST_RAW=value, **large
    )
    assert done.returncode == 0, done.stderr
    assert mark.with_suffix(".env").read_text() == value
    assert served.status()["served"] == 1


def _start_slow_build(served: Served, client: Path, tmp_path: Path) -> tuple[subprocess.Popen, int]:
    project = _project(tmp_path / "sleepy", SLEEPY)
    mark = tmp_path / "started"
    process = subprocess.Popen(
        [str(client), "build", "slow"], cwd=project,
        env={**served.env, "KILN_TEST_MARK": str(mark)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    served.wait_until(lambda: mark.exists() and mark.read_text() != "", "the build to start")
    return process, int(mark.read_text())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_client_stops_the_build(
    served: Served, native: Path, tmp_path: Path, signum: int
) -> None:
    served.start()
    client, build_pid = _start_slow_build(served, native, tmp_path)
    # It runs in the server's child. (Not if the server refused it: Kiln's
    # code changed since it started, as the log says; the client then
    # became the Python kiln, keeping its pid.)
    assert build_pid != client.pid, (served.home / "server.log").read_text()
    assert [c["pid"] for c in served.status()["commands"]] == [build_pid]
    client.send_signal(signum)
    _, err = client.communicate(timeout=60)
    assert client.returncode == 128 + signum, err
    if signum == signal.SIGINT:
        assert "interrupted" in err
    served.wait_until(lambda: gone(build_pid), "the build to end")
    served.wait_until(lambda: served.status()["commands_running"] == 0, "the server to reap it")


def test_a_build_whose_server_dies_ends_with_an_error(
    served: Served, native: Path, tmp_path: Path
) -> None:
    status = served.start()
    client, build_pid = _start_slow_build(served, native, tmp_path)
    os.kill(status["pid"], signal.SIGKILL)
    _, err = client.communicate(timeout=60)
    assert client.returncode == 1
    assert err == "kiln: error: the kiln server stopped during the command\n"
    served.wait_until(lambda: gone(build_pid), "the build to end with its server")


def test_gocacheprog_is_served(served: Served, native: Path, tmp_path: Path) -> None:
    served.start()
    done = subprocess.run(
        [str(native), "gocacheprog"], input='{"ID":1,"Command":"close"}\n', cwd=tmp_path,
        env=served.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert answers[0]["KnownCommands"] and answers[-1] == {"ID": 1}
    assert served.status()["served"] == 1


# ---------------------------------------------------------------- a stand-in server

# (Python, not sh: dash resets the signal mask it was started with.)
FALLBACK = """
import os, re, sys
for arg in sys.argv[1:]:
    print(f"fallback:{arg}")
print(f"tried:{os.environ.get('KILN_SERVER_TRIED', 'unset')}")
with open("/proc/self/status") as f:
    print("blocked:" + re.search(r"^SigBlk:\\t(\\w+)$", f.read(), re.M).group(1))
for fd in (0, 2):
    try:
        os.fstat(fd)
    except OSError:
        print(f"closed:{fd}")
sys.exit(9)
"""
UNBLOCKED = "blocked:0000000000000000\n"  # (the signals the client forwards are not left blocked)
Answer = Callable[[dict, socket.socket], None]


class StandIn:
    """A server of the test's own at the place of store ``home`` (its pid
    recorded, so the client trusts it): it records each connection's
    request (None: nothing was sent) and the number of descriptors that
    came with it, then lets ``answer`` reply."""

    def __init__(self, home: Path, answer: Answer) -> None:
        where = server_client.place(home)
        os.makedirs(where.folder, mode=0o700, exist_ok=True)
        Path(where.pid_file).write_text(f"{os.getpid()}\n")
        self.answer = answer
        self.received: list[tuple[dict | None, int]] = []
        self.stdio: list[list[tuple[int, int]]] = []  # what the descriptors are (dev, inode)
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(where.socket)
        self.listener.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed
                return
            with conn:
                conn.settimeout(WAIT_S)
                data, fds = b"", []
                while not data.endswith(b"\n"):
                    chunk, more, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
                    data, fds = data + chunk, fds + more
                    if not chunk:
                        break
                self.stdio.append([(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in fds])
                for fd in fds:
                    os.close(fd)
                request = json.loads(data) if data else None
                self.received.append((request, len(fds)))
                if request is not None:
                    self.answer(request, conn)

    def close(self) -> None:
        if self.listener.fileno() == -1:
            return
        self.listener.shutdown(socket.SHUT_RDWR)  # (wakes the accept)
        self.listener.close()
        self.thread.join(WAIT_S)


class Setup:
    """A store with a stand-in server, and the native client installed for
    it with ``FALLBACK`` as its fallback."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.home.mkdir()
        fallback = root / "fallback.py"
        fallback.write_text(FALLBACK)
        self.client = native_client.install_client(
            root / "bin", self.home, [sys.executable, "-S", str(fallback)]
        )[0]
        self.env = {"PATH": os.environ["PATH"], "KILN_HOME": str(self.home)}
        self.stand_in: StandIn | None = None

    def serve(self, answer: Answer) -> StandIn:
        self.stand_in = StandIn(self.home, answer)
        return self.stand_in

    def run(self, *args: str | bytes, **options: object) -> subprocess.CompletedProcess[bytes]:
        options.setdefault("env", self.env)
        return subprocess.run(
            [str(self.client), *args], capture_output=True, timeout=120, **options
        )  # type: ignore[call-overload]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    s = Setup(tmp_path)
    try:
        yield s
    finally:
        if s.stand_in is not None:
            s.stand_in.close()


def _lines(*messages: dict) -> Answer:
    def answer(_request: dict, conn: socket.socket) -> None:
        conn.sendall(b"".join(json.dumps(m).encode() + b"\n" for m in messages))

    return answer


def test_the_request_is_what_the_server_reads(setup: Setup) -> None:
    stand_in = setup.serve(_lines({"started": 1}, {"exit": 0}))
    sub = setup.root / "sub"
    sub.mkdir()
    env = {**setup.env, "KILN_TEST_RAW": RAW, "EMPTY": ""}
    done = setup.run("-C", "sub", "build", "x", RAW, cwd=setup.root, env=env, umask=0o027)
    assert done.returncode == 0, done.stderr
    [(request, fds)] = stand_in.received
    assert fds == 3  # stdin, stdout, stderr
    assert request == {
        "op": "run",
        "home": server_client.place(setup.home).home,
        "argv": ["build", "x", os.fsdecode(RAW)],
        "cwd": str(sub),
        "env": {k: os.fsdecode(v) for k, v in env.items()},
        "umask": 0o027,
    }


def test_answers_are_printed_byte_for_byte(setup: Setup) -> None:
    out = 'a\n\t"\\/\b\f\r é \U0001f600 \udcff\udc80 \x00 end'  # (\udcXX: a byte that is not UTF-8)
    setup.serve(_lines({"output": [[1, out], [2, "to stderr\n"], [1, "more"]], "exit": 3}))
    done = setup.run("build")
    assert (done.returncode, done.stdout, done.stderr) == (
        3, out.encode("utf-8", "surrogateescape") + b"more", b"to stderr\n"
    )  # fmt: skip


@pytest.mark.parametrize(
    ("messages", "code", "stderr"),
    [
        ([{"started": 42}, {"stopping": True}, {"exit": 7}], 7, b""),
        ([{"started": 42, "exit": 300}], 300 % 256, b""),
        ([{"started": 42}], 1, b"kiln: error: the kiln server stopped during the command\n"),
    ],
    ids=["started-then-exit", "exit-at-once", "closed-before-exit"],
)
def test_the_exit_code_is_the_servers(
    setup: Setup, messages: list[dict], code: int, stderr: bytes
) -> None:
    setup.serve(_lines(*messages))
    done = setup.run("check", "x")
    assert (done.returncode, done.stdout, done.stderr) == (code, b"", stderr)


@pytest.mark.parametrize("warning", [None, "the server says why"])
def test_a_refusal_runs_the_fallback_once(setup: Setup, warning: str | None) -> None:
    answer = {"refused": "stale", **({"warning": warning} if warning else {})}
    stand_in = setup.serve(_lines(answer))
    done = setup.run("-C", str(setup.root), "build", "x")
    assert done.returncode == 9
    assert done.stdout.decode() == f"fallback:build\nfallback:x\ntried:1\n{UNBLOCKED}"
    assert done.stderr == (f"kiln: warning: {warning}\n".encode() if warning else b"")
    assert len(stand_in.received) == 1


@pytest.mark.parametrize("socket_file", ["none", "dead"])
def test_with_no_server_the_fallback_looks_again(setup: Setup, socket_file: str) -> None:
    """(And so may start one, [server] start = "on-build".)"""
    if socket_file == "dead":  # a killed server's socket: nothing listens on it
        setup.serve(_lines({"exit": 0})).close()
    done = setup.run("build")
    assert done.stdout.decode() == f"fallback:build\ntried:unset\n{UNBLOCKED}"
    assert (done.returncode, done.stderr) == (9, b"")


def test_a_server_gone_before_answering_is_a_refusal(setup: Setup) -> None:
    setup.serve(lambda _request, conn: conn.close())
    done = setup.run("build")
    assert (done.returncode, done.stdout.decode()) == (9, f"fallback:build\ntried:1\n{UNBLOCKED}")


def test_signals_are_forwarded_and_one_before_a_refusal_is_the_answer(setup: Setup) -> None:
    forwarded: list[bytes] = []

    def answer(_request: dict, conn: socket.socket) -> None:
        forwarded.append(conn.makefile("rb").readline())  # (waits for the signal)
        conn.sendall(b'{"refused": "stopping"}\n')

    stand_in = setup.serve(answer)
    client = subprocess.Popen(
        [str(setup.client), "build"], env=setup.env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + WAIT_S
    while not stand_in.received:
        assert time.monotonic() < deadline, "the client sent nothing"
        time.sleep(0.01)
    client.send_signal(signal.SIGINT)
    out, _err = client.communicate(timeout=60)
    assert forwarded == [b'{"signal":2}\n']
    assert client.returncode == 130 and out == b""  # interrupted: no fallback


def test_a_closed_stdin_stdout_or_stderr_goes_as_dev_null(setup: Setup) -> None:
    """Not as whatever the client opened in its place (its socket)."""
    after: list[bytes] = []

    def answer(_request: dict, conn: socket.socket) -> None:
        conn.sendall(b'{"output": [[1, "to stdout"], [2, "to stderr"]], "exit": 0}\n')
        after.append(conn.makefile("rb").read())  # (until the client is gone)

    stand_in = setup.serve(answer)
    done = setup.run("build", preexec_fn=lambda: [os.close(fd) for fd in (0, 1)])
    assert (done.returncode, done.stderr) == (0, b"to stderr")
    null = os.stat(os.devnull)
    assert stand_in.stdio[0][:2] == [(null.st_dev, null.st_ino)] * 2
    deadline = time.monotonic() + WAIT_S
    while not after:  # (the stand-in reads on until the client is gone)
        assert time.monotonic() < deadline, "the stand-in never saw the client go"
        time.sleep(0.01)
    assert after == [b""]  # nothing written to the server
    # And the fallback gets them closed, as they were.
    off = setup.run("build", env={**setup.env, "KILN_SERVER": "off"},
                    preexec_fn=lambda: os.close(0))  # fmt: skip
    assert off.stdout.decode().endswith(f"{UNBLOCKED}closed:0\n")


def test_a_request_over_the_limit_is_not_sent(setup: Setup) -> None:
    stand_in = setup.serve(_lines({"exit": 0}))
    # Each byte that is not UTF-8 takes six in JSON: 4.3 MiB.
    env = {**setup.env, **{f"KILN_TEST_{i}": b"\xff" * 120_000 for i in range(6)}}
    done = setup.run("build", env=env)
    assert (done.returncode, done.stdout.decode()) == (9, f"fallback:build\ntried:1\n{UNBLOCKED}")
    assert stand_in.received == [(None, 0)]  # verified, then nothing sent


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["build"], {"KILN_SERVER": "OFF"}),
        (["--version"], {}),
        (["store", "stats"], {}),
        (["-C", "/no/such/folder", "build"], {}),
        (["build"], {"KILN_HOME": "/no/such/store"}),
    ],
    ids=["off", "version", "store", "bad-C", "other-store"],
)
def test_what_the_server_does_not_serve_goes_to_the_fallback_unasked(
    setup: Setup, args: list[str], env: dict[str, str]
) -> None:
    stand_in = setup.serve(_lines({"exit": 0}))
    done = setup.run(*args, env={**setup.env, **env})
    expected = "".join(f"fallback:{a}\n" for a in args) + "tried:unset\n" + UNBLOCKED
    assert (done.returncode, done.stdout.decode()) == (9, expected)
    assert stand_in.received == []


def test_the_store_is_found_as_python_finds_it(setup: Setup, tmp_path: Path) -> None:
    """$KILN_HOME, else $XDG_CACHE_HOME/kiln, else ~/.cache/kiln: its real path."""
    stand_in = setup.serve(_lines({"exit": 0}))
    for link in ("link", "cache/kiln", "user/.cache/kiln"):
        (tmp_path / link).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / link).symlink_to(setup.home)
    path = os.environ["PATH"]
    for env in [
        {"KILN_HOME": str(tmp_path / "link")},
        {"KILN_HOME": "", "XDG_CACHE_HOME": str(tmp_path / "cache")},
        {"XDG_CACHE_HOME": "", "HOME": f"{tmp_path}/user//"},
        {"KILN_HOME": "link"},  # (relative: to the folder -C enters)
    ]:
        done = setup.run("-C", str(tmp_path), "build", env={"PATH": path, **env})
        assert done.returncode == 0, (env, done.stdout)
    assert len(stand_in.received) == 4


@pytest.mark.parametrize("conf", [None, "", "/a.sock\n/home\n", "relative.sock\n/home\n/bin/sh\n"])
def test_unusable_settings_are_an_error(setup: Setup, conf: str | None) -> None:
    settings = setup.client.with_name("kiln.conf")
    if conf is None:
        settings.unlink()
    else:
        settings.write_text(conf)
    done = setup.run("build")
    assert done.returncode == 2
    assert done.stderr.startswith(f"kiln: error: {settings.parent}/kiln.conf ".encode())
    assert b"kiln server install-client" in done.stderr
