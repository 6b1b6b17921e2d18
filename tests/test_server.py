"""The resident server (`kiln server`): a real server process per test on
its own store, real `kiln` clients, real signals. Every test stops its
server; one that is still alive at the end is killed and fails the test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import KILN
from kiln.server import client as server_client
from server_helpers import Served, gone, serving

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the server is Linux-only")

SLEEPY = """
import asyncio, os
from pathlib import Path
from kiln.build import target

@target
async def slow():
    Path(os.environ["KILN_TEST_MARK"]).write_text(str(os.getpid()))
    await asyncio.sleep(120)
"""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with serving(tmp_path / "home") as s:
        yield s


# A build that must leave no stamp, so that the next one is not answered
# from it by the client (whether it does depends on how old the example's
# files are by then: on a loaded machine, older than the racy window).
NO_STAMP = {"KILN_RACY_WINDOW_MS": str(24 * 3600 * 1000)}

def test_builds_run_in_the_server_with_the_clients_output_and_exit_code(
    served: Served, example: Path
) -> None:
    status = served.start()
    assert status["served"] == 0 and status["store"] == str(served.home)
    first = served.kiln("build", "--json", "report", cwd=example)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)  # the child wrote to the client's stdout
    assert (summary["executed"], summary["failed"]) == (6, 0)
    assert (example / "kiln-out" / "report" / "report.txt").is_file()
    assert served.status()["served"] == 1
    with open(example / "text" / "kiln.txt", "a") as f:
        f.write("One more line.\n")
    second = served.kiln("build", "--json", "report", cwd=example)
    assert json.loads(second.stdout)["executed"] == 2
    unknown = served.kiln("build", "no-such-target", cwd=example)
    assert unknown.returncode == 2
    assert "no-such-target" in unknown.stderr
    assert served.status()["served"] == 3
    # KILN_SERVER=off runs without the server.
    served.kiln("build", "--json", "report", cwd=example, KILN_SERVER="off")
    assert served.status()["served"] == 3
    # The server loads the compiled wasm module the first build made once it
    # has reaped that build's process.
    served.wait_until(lambda: served.status()["modules"], "the server to load the module")
    again = served.start()  # already running: the same server
    assert again["pid"] == status["pid"]


def test_the_command_gets_the_clients_folder_environment_and_umask(
    served: Served, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    (project / "kilnfile.py").write_text(
        textwrap.dedent(f"""
        import os
        from kiln.build import target

        seen = (os.getcwd(), os.environ.get("KILN_TEST_MARK"), os.umask(0o022))
        if seen != ({str(project / "sub")!r}, "from the client", 0o027):
            raise RuntimeError(f"the build saw {{seen}}")

        @target
        async def nothing():
            return None
        """)
    )
    served.start()
    command = (
        f"import os, sys; os.umask(0o027); os.chdir({str(project / 'sub')!r}); "
        f"os.execv({KILN!r}, [{KILN!r}, 'build', '--json'])"
    )
    env = {**served.env, "KILN_TEST_MARK": "from the client"}
    done = subprocess.run(
        [sys.executable, "-c", command], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert served.status()["served"] == 1
    env["KILN_TEST_MARK"] = "changed"
    # Edited, the build file is read again: not answered by the build stamp
    # (which a slow first build makes trusted, its sources older than the
    # racy window; a fast one does not).
    with open(project / "kilnfile.py", "a") as f:
        f.write("# edited\n")
    refused = subprocess.run(
        [sys.executable, "-c", command], env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode != 0 and "the build saw" in refused.stderr


def _sleepy(tmp_path: Path) -> tuple[Path, Path]:
    project = tmp_path / "sleepy"
    project.mkdir()
    (project / "kilnfile.py").write_text(SLEEPY)
    return project, tmp_path / "started"


def _start_slow_build(served: Served, tmp_path: Path) -> tuple[subprocess.Popen, int]:
    project, mark = _sleepy(tmp_path)
    client = subprocess.Popen(
        [KILN, "build", "slow"], cwd=project, env={**served.env, "KILN_TEST_MARK": str(mark)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    served.wait_until(mark.exists, "the build to start")
    served.wait_until(lambda: mark.read_text() != "", "the build to write its pid")
    return client, int(mark.read_text())


def test_ctrl_c_on_the_client_interrupts_the_build(served: Served, tmp_path: Path) -> None:
    served.start()
    client, build_pid = _start_slow_build(served, tmp_path)
    assert build_pid != client.pid  # it runs in the server's child
    assert [c["pid"] for c in served.status()["commands"]] == [build_pid]
    client.send_signal(signal.SIGINT)
    _, err = client.communicate(timeout=60)
    assert client.returncode == 130, err
    assert "interrupted" in err
    served.wait_until(lambda: gone(build_pid), "the build to end")
    # Gone is a zombie too: the server may not have reaped it yet.
    served.wait_until(lambda: served.status()["commands_running"] == 0, "the server to reap it")


def test_a_build_whose_client_is_killed_is_stopped(served: Served, tmp_path: Path) -> None:
    served.start()
    client, build_pid = _start_slow_build(served, tmp_path)
    client.kill()
    client.wait(timeout=60)
    served.wait_until(lambda: gone(build_pid), "the orphaned build to be stopped")
    served.wait_until(lambda: served.status()["commands_running"] == 0, "the server to reap it")


def test_a_server_running_older_code_refuses_and_exits(
    served: Served, example: Path, monkeypatch
) -> None:
    status = served.start()
    monkeypatch.chdir(example)
    monkeypatch.delenv("KILN_SERVER", raising=False)
    edited = server_client.PACKAGE / "__init__.py"  # (its mtime moves, then moves back)
    before = edited.stat()
    os.utime(edited, ns=(before.st_atime_ns, before.st_mtime_ns + 1000))
    try:
        assert server_client.delegate(served.home, ["build", "report"]) is None  # run it yourself
    finally:
        os.utime(edited, ns=(before.st_atime_ns, before.st_mtime_ns))
    served.wait_until(lambda: gone(status["pid"]), "the stale server to exit")
    assert "code changed" in (served.home / "server.log").read_text()
    direct = served.kiln("build", "report", cwd=example)  # no server: runs by itself
    assert direct.returncode == 0, direct.stderr


def test_the_fingerprint_follows_the_code(tmp_path: Path, monkeypatch) -> None:
    package = tmp_path / "kiln"
    (package / "sub").mkdir(parents=True)
    (package / "a.py").write_text("x = 1\n")
    (package / "sub" / "b.py").write_text("y = 2\n")
    monkeypatch.setattr(server_client, "PACKAGE", package)
    before = server_client.code_fingerprint()
    assert server_client.code_fingerprint() == before
    (package / "sub" / "b.py").write_text("y = 3\n")
    assert server_client.code_fingerprint() != before


PROBE = """
import os, socket, sys
from kiln.server import client as server_client

os.setgid(65534)
os.setuid(65534)
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
try:  # the server may refuse (close) before it reads: sending fails then
    s.sendall(server_client.encode({"op": "status", "home": sys.argv[2]}))
    print(repr(s.recv(4096)))
except (BrokenPipeError, ConnectionResetError):
    print("closed")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_user_is_refused(served: Served) -> None:
    served.start()
    where = server_client.place(served.home)
    # Clients of other users cannot reach the socket in its private folder; a
    # link to it elsewhere lets this one, so the server's own check stops it.
    reachable = Path(tempfile.mkdtemp(prefix="kiln-probe-", dir="/tmp"))
    try:
        reachable.chmod(0o755)
        os.link(where.socket, reachable / "server.sock")
        (reachable / "server.sock").chmod(0o777)
        other = subprocess.run(
            [sys.executable, "-c", PROBE, str(reachable / "server.sock"), where.home],
            capture_output=True, text=True, timeout=60, env=served.env,
        )  # fmt: skip
    finally:
        shutil.rmtree(reachable)
    assert other.stdout.strip() in ("b''", "closed"), other.stderr  # closed unanswered
    assert "another user" in (served.home / "server.log").read_text()


def test_an_idle_server_exits_by_itself(served: Served) -> None:
    status = served.start("--idle", "1s")
    assert status["idle_timeout_s"] == 1
    served.wait_until(lambda: gone(status["pid"]), "the idle server to exit")
    assert "idle" in (served.home / "server.log").read_text()


def test_status_and_stop_without_a_server(served: Served) -> None:
    none = served.kiln("server", "status")
    assert none.returncode == 3 and "no server" in none.stderr
    assert json.loads(served.kiln("server", "status", "--json").stdout) == {"server": None}
    assert "no server" in served.kiln("server", "stop").stderr
    status = served.start()
    text = served.kiln("server", "status")
    assert f"pid {status['pid']}" in text.stdout
    assert served.kiln("server", "stop").stdout.strip() == "kiln server: stopped"
    served.wait_until(lambda: gone(status["pid"]), "the server to exit")


def test_a_client_with_another_import_path_runs_by_itself(
    served: Served, example: Path, tmp_path: Path
) -> None:
    served.start()
    elsewhere = tmp_path / "modules"
    elsewhere.mkdir()
    done = served.kiln(
        "build", "--json", "report", cwd=example, PYTHONPATH=str(elsewhere), **NO_STAMP
    )
    assert done.returncode == 0, done.stderr
    assert served.status()["served"] == 0  # the build might import from there
    assert served.kiln("build", "--json", "report", cwd=example).returncode == 0
    assert served.status()["served"] == 1


def test_a_build_ends_with_its_server(served: Served, tmp_path: Path) -> None:
    status = served.start()
    client, build_pid = _start_slow_build(served, tmp_path)
    os.kill(status["pid"], signal.SIGKILL)
    _, err = client.communicate(timeout=60)
    assert client.returncode == 1
    assert "the kiln server stopped during the command" in err
    served.wait_until(lambda: gone(build_pid), "the build to end with its server")


def test_the_socket_is_in_a_private_folder_of_the_store(served: Served) -> None:
    status = served.start()
    where = server_client.place(served.home)
    assert where.folder == str(served.home.resolve() / f"server-{os.getuid()}")
    folder = os.lstat(where.folder)
    assert stat.S_ISDIR(folder.st_mode) and stat.S_IMODE(folder.st_mode) == 0o700
    assert stat.S_ISSOCK(os.lstat(where.socket).st_mode)
    assert Path(where.pid_file).read_text() == f"{status['pid']}\n"


def test_a_killed_servers_socket_gives_way_to_the_next_server(
    served: Served, example: Path
) -> None:
    killed = served.start()
    os.kill(killed["pid"], signal.SIGKILL)
    served.wait_until(lambda: gone(killed["pid"]), "the killed server to exit")
    assert os.path.exists(server_client.place(served.home).socket)  # left behind
    alone = served.kiln("build", "--json", "report", cwd=example, **NO_STAMP)
    assert alone.returncode == 0, alone.stderr
    assert "warning" not in alone.stderr  # a dead server is no server, not an attack
    assert served.start()["pid"] != killed["pid"]
    assert served.kiln("build", "--json", "report", cwd=example).returncode == 0
    assert served.status()["served"] == 1


def test_servers_started_at_once_are_one(served: Served) -> None:
    command = [KILN, "server", "start", "--json"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    starts = [subprocess.Popen(command, env=served.env, **pipes) for _ in range(3)]
    answers = [start.communicate(timeout=120) for start in starts]
    assert [start.returncode for start in starts] == [0, 0, 0], answers
    assert len({json.loads(out)["pid"] for out, _ in answers}) == 1


def test_a_store_too_deep_for_a_socket_path_is_served_from_a_short_private_folder(
    tmp_path: Path, example: Path
) -> None:
    home = tmp_path.joinpath(*["deep-folder"] * 8, "home")
    where = server_client.place(home)
    assert where.folder == f"{server_client.SHORT_ROOT}/kiln-{os.getuid()}"
    assert len(where.socket) <= server_client.SOCKET_PATH_LIMIT
    try:
        with serving(home) as served:
            served.start()
            done = served.kiln("build", "--json", "report", cwd=example)
            assert done.returncode == 0, done.stderr
            assert served.status()["served"] == 1
        assert stat.S_IMODE(os.lstat(where.folder).st_mode) == 0o700
    finally:  # (the folder is shared by every such store of this user)
        for leftover in (where.pid_file, where.lock_file):
            Path(leftover).unlink(missing_ok=True)


def test_d_settings_reach_the_build_file_through_the_server(served: Served, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "kilnfile.py").write_text(
        textwrap.dedent("""
        from kiln.build import setting, target

        @target
        async def mode():
            print("mode:", setting("mode", default="debug"))
        """)
    )
    served.start()
    for mode, args in (("debug", []), ("fast", ["-D", "mode=fast"]), ("small", ["-Dmode=small"])):
        done = served.kiln("build", *args, cwd=project, KILN_RACY_WINDOW_MS="0")
        assert done.returncode == 0, done.stderr
        assert f"mode: {mode}\n" in done.stdout  # not answered by another value's stamp
    assert served.status()["served"] == 3
    bad = served.kiln("build", "-D", "mode", cwd=project)
    assert bad.returncode == 2 and "NAME=VALUE" in bad.stderr


def _request(served: Served, cwd: Path, argv: list[str], env: dict[str, str]) -> dict:
    """A run request as the Python client makes it."""
    return {
        "op": "run", "home": server_client.place(served.home).home, "argv": argv,
        "cwd": str(cwd), "env": env, "umask": 0o022,
    }  # fmt: skip


def test_a_signal_sent_with_the_request_reaches_the_command(
    served: Served, tmp_path: Path
) -> None:
    """A client interrupted right after sending its request: the signal line
    arrives with the request, in the same read, and still reaches the command."""
    served.start()
    project = tmp_path / "sleepy"
    project.mkdir()
    (project / "kilnfile.py").write_text(SLEEPY)
    env = {**served.env, "KILN_TEST_MARK": str(tmp_path / "mark")}
    sock = server_client.connect(server_client.place(served.home))
    assert sock is not None
    with sock, open(os.devnull, "r+b") as null:
        request = _request(served, project, ["build", "slow"], env)
        message = server_client.encode(request) + server_client.encode({"signal": 2})
        socket.send_fds(sock, [message], [null.fileno()] * 3)
        lines = server_client.Lines(sock)
        first = lines.next()
        assert "started" in first, first
        assert lines.next() == {"exit": 130}


def test_a_signal_line_split_between_two_reads_is_forwarded(tmp_path: Path) -> None:
    from kiln.server.daemon import Running, Server

    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        run = Running(child.pid, None, {})  # type: ignore[arg-type]
        Server._signals(None, run, b'{"sig')  # type: ignore[arg-type]
        assert child.poll() is None
        Server._signals(None, run, b'nal": 15}\n')  # type: ignore[arg-type]
        assert child.wait(timeout=60) == -signal.SIGTERM
    finally:
        child.kill()
        child.wait()


def test_a_client_started_with_stdout_closed_passes_no_socket_as_it(
    served: Served, example: Path
) -> None:
    """With descriptor 1 closed, the client's socket must not take its
    number and be handed to the command as its stdout."""
    served.start()
    closed = subprocess.run(
        [KILN, "build", "report"], cwd=example, env=served.env, stderr=subprocess.PIPE,
        text=True, timeout=120, preexec_fn=lambda: os.close(1),
    )  # fmt: skip
    assert closed.returncode == 0, closed.stderr
    assert "Traceback" not in closed.stderr and "stopped during the command" not in closed.stderr
    assert served.status()["served"] + served.status()["answered_here"] >= 0
    assert "bad request" not in (served.home / "server.log").read_text()


def test_a_fork_that_fails_leaves_the_servers_signals_unblocked(
    tmp_path: Path, monkeypatch
) -> None:
    """(fork failing for want of processes cannot be caused here: faked)"""
    import errno

    from kiln.server.daemon import Server

    server = Server(tmp_path / "home")
    try:
        def no_fork() -> int:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

        monkeypatch.setattr(os, "fork", no_fork)
        with pytest.raises(OSError):
            server._fork_spare()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        assert signal.SIGINT not in blocked and signal.SIGTERM not in blocked
    finally:
        server.stop()
