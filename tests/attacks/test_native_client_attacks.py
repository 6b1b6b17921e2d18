"""Attacks on the native client's hand-over (`kiln server install-client`,
kiln/server/client.c), as test_server_attacks.py makes them on the Python
client's: a listener that is not the user's server waits where the client
looks for one, and answers like a server ("started", then "exit 0", which
would make the build pass having done nothing).

The client must send it nothing (not the argv, the environment with its
token, nor the terminal's descriptors), warn once, and leave the build to
Kiln in Python (which, told that the server was tried, does not look
again): the build runs by itself and builds everything."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from squatters import (  # noqa: F401 (the `squat` fixture)
    NOBODY,
    SECRET,
    Squatter,
    built_by_itself,
    private_folder,
    squat_fixture,
    victim_store,
)

from kiln.server import client as server_client
from kiln.server import native_client
from server_helpers import Served

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="the server is Linux-only"),
    pytest.mark.skipif(native_client.binary() is None, reason="no native client for here"),
]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
WARNING = "kiln: warning: not using the kiln server: "


@pytest.fixture
def victim(tmp_path: Path) -> Iterator[Served]:
    """A user's store with no server of its own, and the native client for it."""
    with victim_store(tmp_path) as served:
        served.install_native_client(tmp_path / "bin")
        yield served


def _build(victim: Served, example: Path) -> subprocess.CompletedProcess:
    """`kiln build` by the native client, with a secret in its environment."""
    client = victim.home.parent / "bin" / "kiln"
    return victim.run(client, "build", "--json", "report", cwd=example, KILN_TEST_TOKEN=SECRET)


def _built_by_itself(done: subprocess.CompletedProcess, example: Path, problem: str) -> None:
    """Check that the build built all of the example after one warning
    naming ``problem`` (and no other from the Python it ran)."""
    stderr = built_by_itself(done, example)
    warnings = [line for line in stderr.splitlines() if line.startswith(WARNING)]
    assert warnings == [WARNING + problem], stderr


def _squat(squat, where: server_client.Place, uid: int = -1) -> Squatter:
    """A squatter on the server's socket, its pid recorded as a server's."""
    squatter = squat(where.socket, uid=uid)
    Path(where.pid_file).write_text(f"{squatter.pid}\n")
    return squatter


@pytest.mark.parametrize("mode", [0o755, 0o710, 0o703, 0o777, 0o1777])
def test_a_folder_others_may_enter_is_not_used(
    victim: Served, example: Path, squat, mode: int
) -> None:
    where = private_folder(victim)
    os.chmod(where.folder, mode)
    squatter = _squat(squat, where)
    done = _build(victim, example)
    assert squatter.received() == []  # not even a connection
    _built_by_itself(
        done, example, f"{where.folder} is open to other users (mode {mode:04o}, not 0700)"
    )


def test_a_folder_that_is_a_link_is_not_used(
    victim: Served, example: Path, squat, tmp_path: Path
) -> None:
    where = server_client.place(victim.home)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    victim.home.mkdir()
    os.symlink(elsewhere, where.folder)
    squatter = _squat(squat, where)
    done = _build(victim, example)
    assert squatter.received() == []
    _built_by_itself(done, example, f"{where.folder} is not a folder")


def test_a_socket_that_is_not_a_socket_is_not_used(victim: Served, example: Path) -> None:
    where = private_folder(victim)
    Path(where.socket).write_text("")
    _built_by_itself(_build(victim, example), example, f"{where.socket} is not a socket")


@needs_root
def test_a_squatter_in_a_folder_of_another_user_gets_nothing(
    victim: Served, example: Path, squat
) -> None:
    where = private_folder(victim)
    os.chown(where.folder, NOBODY, NOBODY)
    squatter = _squat(squat, where, uid=NOBODY)
    done = _build(victim, example)
    assert squatter.received() == []
    _built_by_itself(done, example, f"{where.folder} belongs to uid {NOBODY}, not to uid 0")


@needs_root
def test_a_socket_of_another_user_gets_nothing(victim: Served, example: Path, squat) -> None:
    where = private_folder(victim)
    squatter = _squat(squat, where)
    os.chown(where.socket, NOBODY, NOBODY)
    done = _build(victim, example)
    assert squatter.received() == []
    _built_by_itself(done, example, f"{where.socket} belongs to uid {NOBODY}, not to uid 0")


@needs_root
def test_a_listener_of_another_user_in_the_private_folder_gets_nothing(
    victim: Served, example: Path, squat
) -> None:
    where = private_folder(victim)
    squatter = _squat(squat, where, uid=NOBODY)  # bound by this user, listening as nobody
    done = _build(victim, example)
    assert squatter.received() == [{"sent": "", "fds": 0}]  # connected, then nothing
    _built_by_itself(done, example, f"{where.socket} is served by uid {NOBODY}, not by uid 0")


@pytest.mark.parametrize("recorded", ["another pid", "no pid", "not a pid"])
def test_a_listener_that_is_not_the_recorded_server_gets_nothing(
    victim: Served, example: Path, squat, recorded: str
) -> None:
    where = private_folder(victim)
    squatter = squat(where.socket)
    if recorded == "another pid":
        Path(where.pid_file).write_text(f"{os.getpid()}\n")
    elif recorded == "not a pid":
        Path(where.pid_file).write_text(f"{squatter.pid}x\n")
    done = _build(victim, example)
    assert squatter.received() == [{"sent": "", "fds": 0}]
    _built_by_itself(
        done, example,
        f"{where.socket} is served by pid {squatter.pid}, not by the pid {where.pid_file} records",
    )  # fmt: skip


def test_the_python_client_agrees(victim: Served, example: Path, squat) -> None:
    """The checks and their warning are the Python client's own: with the
    native client left out, the same squatter gets the same refusal."""
    where = private_folder(victim)
    squatter = squat(where.socket)
    done = victim.kiln("build", "--json", "report", cwd=example, KILN_TEST_TOKEN=SECRET)
    assert squatter.received() == [{"sent": "", "fds": 0}]
    _built_by_itself(
        done, example,
        f"{where.socket} is served by pid {squatter.pid}, not by the pid {where.pid_file} records",
    )  # fmt: skip
