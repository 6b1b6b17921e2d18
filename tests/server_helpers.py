"""Real resident servers for tests: one per store, started and stopped
through the real `kiln` command, waited for with deadlines (never fixed
sleeps: the machine running the tests may be loaded)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import KILN
from kiln.server import client as server_client
from kiln.server.daemon import alive

WAIT_S = 60.0  # a deadline for what takes milliseconds on an idle machine


class Served:
    """A store that may have a server, and how to run `kiln` against it."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {**os.environ, "KILN_HOME": str(home)}
        self.env.pop("KILN_SERVER", None)

    def kiln(self, *args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
        """Run the real `kiln` on this store."""
        return self.run(KILN, *args, cwd=cwd, **env)

    def run(
        self, program: str | Path, *args: str, cwd: Path | None = None, **env: str
    ) -> subprocess.CompletedProcess:
        """Run ``program`` (`kiln`, or the native client) on this store."""
        return subprocess.run(
            [str(program), *args], cwd=cwd, env={**self.env, **env}, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip

    def install_native_client(self, folder: Path) -> Path:
        """`kiln server install-client FOLDER` for this store: the client's path."""
        installed = self.kiln("server", "install-client", str(folder))
        assert installed.returncode == 0, installed.stderr
        return folder / "kiln"

    def start(self, *options: str) -> dict:
        """`kiln server start`: the server's status."""
        started = self.kiln("server", "start", "--json", *options)
        assert started.returncode == 0, started.stderr
        return json.loads(started.stdout)

    def status(self) -> dict | None:
        return server_client.ask(self.home, {"op": "status"})

    def wait_until(self, check: Callable[[], object], what: str, timeout: float = WAIT_S) -> None:
        """Poll ``check`` until it holds; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)


def gone(pid: int) -> bool:
    """Whether a process has ended (a zombie counts as ended)."""
    return not alive(pid)


@contextmanager
def serving(home: Path) -> Iterator[Served]:
    """A ``Served`` store whose server, if one runs at the end, is stopped
    (and killed if it does not exit: the test then fails)."""
    served = Served(home)
    try:
        yield served
    finally:  # (also when the test failed inside the `with`)
        status = served.status()
        if status is not None:
            served.kiln("server", "stop")
            try:
                served.wait_until(lambda: gone(status["pid"]), "the server to exit")
            finally:
                if not gone(status["pid"]):
                    os.kill(status["pid"], signal.SIGKILL)
