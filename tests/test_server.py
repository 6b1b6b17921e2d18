"""The resident server (`kiln server`): a real server process per test on
its own store, real `kiln` clients, real signals. Every test stops its
server; one that is still alive at the end is killed and fails the test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import KILN
from kiln import server_client
from kiln.server import alive

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


class Served:
    """A server for one store, and how to run `kiln` against it."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {**os.environ, "KILN_HOME": str(home)}
        self.env.pop("KILN_SERVER", None)

    def kiln(self, *args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [KILN, *args], cwd=cwd, env={**self.env, **env}, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip

    def status(self) -> dict | None:
        return server_client.ask(self.home, {"op": "status"})

    def wait_until(self, check, what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)


def _gone(pid: int) -> bool:
    return not alive(pid)


def _start(served: Served, *options: str) -> dict:
    started = served.kiln("server", "start", "--json", *options)
    assert started.returncode == 0, started.stderr
    return json.loads(started.stdout)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(tmp_path / "home")
    yield s
    status = s.status()
    if status is not None:
        s.kiln("server", "stop")
        try:
            s.wait_until(lambda: _gone(status["pid"]), "the server to exit", timeout=10)
        finally:
            if not _gone(status["pid"]):
                os.kill(status["pid"], signal.SIGKILL)


def test_builds_run_in_the_server_with_the_clients_output_and_exit_code(
    served: Served, example: Path
) -> None:
    status = _start(served)
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
    # The compiled wasm module the first build made is loaded by the server now.
    assert served.status()["modules"]
    again = _start(served)  # already running: the same server
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
    _start(served)
    command = (
        f"import os, sys; os.umask(0o027); os.chdir({str(project / 'sub')!r}); "
        f"os.execv({KILN!r}, [{KILN!r}, 'build', '--json'])"
    )
    env = {**served.env, "KILN_TEST_MARK": "from the client"}
    done = subprocess.run(
        [sys.executable, "-c", command], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert served.status()["served"] == 1
    env["KILN_TEST_MARK"] = "changed"
    refused = subprocess.run(
        [sys.executable, "-c", command], env=env, capture_output=True, text=True, timeout=60
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
    _start(served)
    client, build_pid = _start_slow_build(served, tmp_path)
    assert build_pid != client.pid  # it runs in the server's child
    assert [c["pid"] for c in served.status()["commands"]] == [build_pid]
    client.send_signal(signal.SIGINT)
    _, err = client.communicate(timeout=30)
    assert client.returncode == 130, err
    assert "interrupted" in err
    served.wait_until(lambda: _gone(build_pid), "the build to end")
    assert served.status()["commands_running"] == 0


def test_a_build_whose_client_is_killed_is_stopped(served: Served, tmp_path: Path) -> None:
    _start(served)
    client, build_pid = _start_slow_build(served, tmp_path)
    client.kill()
    client.wait(timeout=10)
    served.wait_until(lambda: _gone(build_pid), "the orphaned build to be stopped")
    served.wait_until(lambda: served.status()["commands_running"] == 0, "the server to reap it")


def test_a_server_running_older_code_refuses_and_exits(
    served: Served, example: Path, monkeypatch
) -> None:
    status = _start(served)
    monkeypatch.chdir(example)
    monkeypatch.setattr(server_client, "code_fingerprint", lambda: "code edited since")
    monkeypatch.delenv("KILN_SERVER", raising=False)
    assert server_client.delegate(served.home, ["build", "report"]) is None  # run it yourself
    served.wait_until(lambda: _gone(status["pid"]), "the stale server to exit")
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


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_user_is_refused(served: Served) -> None:
    _start(served)
    probe = (
        "import os, socket, sys; from pathlib import Path; from kiln import server_client; "
        "name = server_client.address(Path(sys.argv[1])); "
        "os.setgid(65534); os.setuid(65534); "
        "s = socket.socket(socket.AF_UNIX); s.connect(name); "
        "s.sendall(server_client.encode({'op': 'status'}))\n"
        "try: print(repr(s.recv(4096)))\nexcept ConnectionResetError: print('reset')"
    )
    other = subprocess.run(
        [sys.executable, "-c", probe, str(served.home)], capture_output=True, text=True,
        timeout=30, env=served.env,
    )  # fmt: skip
    assert other.stdout.strip() in ("b''", "reset"), other.stderr  # closed unanswered
    assert "another user" in (served.home / "server.log").read_text()


def test_an_idle_server_exits_by_itself(served: Served) -> None:
    status = _start(served, "--idle", "1s")
    assert status["idle_timeout_s"] == 1
    served.wait_until(lambda: _gone(status["pid"]), "the idle server to exit")
    assert "idle" in (served.home / "server.log").read_text()


def test_status_and_stop_without_a_server(served: Served) -> None:
    none = served.kiln("server", "status")
    assert none.returncode == 3 and "no server" in none.stderr
    assert json.loads(served.kiln("server", "status", "--json").stdout) == {"server": None}
    assert "no server" in served.kiln("server", "stop").stderr
    status = _start(served)
    text = served.kiln("server", "status")
    assert f"pid {status['pid']}" in text.stdout
    assert served.kiln("server", "stop").stdout.strip() == "kiln server: stopped"
    assert _gone(status["pid"])


def test_a_client_with_another_import_path_runs_by_itself(
    served: Served, example: Path, tmp_path: Path
) -> None:
    _start(served)
    elsewhere = tmp_path / "modules"
    elsewhere.mkdir()
    done = served.kiln("build", "--json", "report", cwd=example, PYTHONPATH=str(elsewhere))
    assert done.returncode == 0, done.stderr
    assert served.status()["served"] == 0  # the build might import from there
    assert served.kiln("build", "--json", "report", cwd=example).returncode == 0
    assert served.status()["served"] == 1


def test_a_build_ends_with_its_server(served: Served, tmp_path: Path) -> None:
    status = _start(served)
    client, build_pid = _start_slow_build(served, tmp_path)
    os.kill(status["pid"], signal.SIGKILL)
    _, err = client.communicate(timeout=30)
    assert client.returncode == 1
    assert "the kiln server stopped during the command" in err
    served.wait_until(lambda: _gone(build_pid), "the build to end with its server")
