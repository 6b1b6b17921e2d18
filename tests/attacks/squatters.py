"""A listener that is not Kiln's, waiting where a client might look for
one: it records what each connection sends (shared by the attack tests on
the server's and the cc service's sockets); and the store of its victim,
whose build must run by itself (the server attack tests, for the Python
and the native client)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kiln.server import client as server_client
from server_helpers import Served, serving

NOBODY = 65534
SECRET = "kiln-test-token-4242"  # in the victim's environment: no squatter may see it

# Binds ADDRESS ("@name": Linux's abstract namespace), then listens as UID
# (-1: as itself; SO_PEERCRED shows who listened), prints its pid and
# records each connection as a JSON line: the bytes and descriptors it got.
# A connection that sends exactly b"end" ends it: connections are accepted
# in order, so every client before it has been recorded by then.
SQUATTER = r"""
import json, os, socket, sys

address, record, uid = sys.argv[1], open(sys.argv[2], "a"), int(sys.argv[3])
listener = socket.socket(socket.AF_UNIX)
listener.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
if uid >= 0:
    os.setgid(uid)
    os.setuid(uid)
listener.listen(16)
print(os.getpid(), flush=True)
while True:
    conn, _ = listener.accept()
    got, fds = b"", []
    while True:
        data, more, _flags, _addr = socket.recv_fds(conn, 1 << 16, 8)
        if not data:
            break
        got += data
        fds += more
        for fd in more:  # (held, they would keep the client's output open)
            os.close(fd)
        if got.endswith(b"\n"):  # a request: answer as a server saying "done"
            conn.sendall(b'{"started": 1}\n{"exit": 0}\n')
    conn.close()
    if got == b"end":
        break
    record.write(json.dumps({"sent": got.decode(errors="replace"), "fds": len(fds)}) + "\n")
    record.flush()
"""


class Squatter:
    """A listener, not Kiln's, at ``address``; ``received()`` is what
    clients sent it."""

    def __init__(self, address: str, record: Path, uid: int = -1) -> None:
        self.address = address
        self.record = record
        self.process = subprocess.Popen(
            [sys.executable, "-c", SQUATTER, address, str(record), str(uid)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.pid = int(self.process.stdout.readline())  # listening from now

    def received(self) -> list[dict]:
        """One entry per connection it accepted (and it ends)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(self._bound())
            sock.sendall(b"end")
            sock.shutdown(socket.SHUT_WR)
            sock.recv(1)
        self.process.wait(timeout=60)
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def _bound(self) -> str | bytes:
        return b"\0" + self.address[1:].encode() if self.address.startswith("@") else self.address

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture(name="squat")
def squat_fixture(tmp_path: Path) -> Iterator[Callable[..., Squatter]]:
    """Start squatters; every one is killed at the end."""
    started: list[Squatter] = []

    def start(address: str, uid: int = -1) -> Squatter:
        squatter = Squatter(address, tmp_path / f"squatter-{len(started)}.jsonl", uid)
        started.append(squatter)
        return squatter

    yield start
    for squatter in started:
        squatter.kill()


@contextmanager
def victim_store(tmp_path: Path) -> Iterator[Served]:
    """A user's store with no server of its own (stopped at the end if one
    was started)."""
    with serving(tmp_path / "h") as served:
        where = server_client.place(served.home)
        assert where.folder.startswith(str(tmp_path)), "the store's path is too long here"
        yield served


def private_folder(victim: Served) -> server_client.Place:
    """The store's server folder, made as the server makes it."""
    where = server_client.place(victim.home)
    os.makedirs(where.folder, mode=0o700)
    return where


def built_by_itself(done: subprocess.CompletedProcess, example: Path) -> str:
    """Check that a build of the example built all of it (not a squatter's
    "exit 0"); its stderr."""
    assert done.returncode == 0, done.stderr
    assert done.stdout, f"the build did nothing: {done.stderr}"
    summary = json.loads(done.stdout)
    assert (summary["executed"], summary["failed"]) == (6, 0)
    assert (example / "kiln-out" / "report" / "report.txt").is_file()
    return done.stderr
