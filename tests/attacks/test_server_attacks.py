"""Attacks on `kiln build`'s hand-over to the resident server: a listener
that is not the user's server (another user's, or one in a place others can
reach) waits where a client might look for one.

A client hands over its argv, folder, environment (tokens included) and its
stdin, stdout and stderr. Each test runs a squatter that records what it is
sent and answers like a server ("started", then "exit 0", which would make
the build pass having done nothing): it must receive nothing, and the build
must run by itself and build everything."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from squatters import (  # noqa: F401 (the `squat` fixture)
    NOBODY,
    SECRET,
    built_by_itself,
    private_folder,
    squat_fixture,
    victim_store,
)

from kiln.server import client as server_client
from server_helpers import Served, serving

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the server is Linux-only")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")

@pytest.fixture
def victim(tmp_path: Path) -> Iterator[Served]:
    """A user's store with no server of its own."""
    with victim_store(tmp_path) as served:
        yield served


def _build(victim: Served, example: Path) -> subprocess.CompletedProcess:
    """`kiln build`, with a secret in its environment."""
    return victim.kiln("build", "--json", "report", cwd=example, KILN_TEST_TOKEN=SECRET)


def _old_abstract_name(home: Path) -> str:
    """Where Kiln's server listened before it moved to a private folder: a
    name any local user could take first."""
    who = f"{os.path.realpath(home)}\0{server_client.PACKAGE}\0{os.path.realpath(sys.executable)}"
    return "@kiln-server-" + hashlib.sha256(who.encode()).hexdigest()[:32]


def test_a_squatter_on_the_old_abstract_name_gets_nothing(
    victim: Served, example: Path, squat
) -> None:
    squatter = squat(_old_abstract_name(victim.home))
    done = _build(victim, example)
    assert squatter.received() == []
    stderr = built_by_itself(done, example)
    assert "warning" not in stderr  # no server was ever there: nothing to warn of


@needs_root
def test_a_squatter_in_a_folder_of_another_user_gets_nothing(
    victim: Served, example: Path, squat
) -> None:
    where = private_folder(victim)
    os.chown(where.folder, NOBODY, NOBODY)
    squatter = squat(where.socket, uid=NOBODY)
    Path(where.pid_file).write_text(f"{squatter.pid}\n")
    done = _build(victim, example)
    assert squatter.received() == []  # not even a connection
    stderr = built_by_itself(done, example)
    assert f"{where.folder} belongs to uid {NOBODY}" in stderr


@needs_root
def test_a_listener_of_another_user_in_the_private_folder_gets_nothing(
    victim: Served, example: Path, squat
) -> None:
    where = private_folder(victim)
    squatter = squat(where.socket, uid=NOBODY)  # bound by this user, listening as nobody
    Path(where.pid_file).write_text(f"{squatter.pid}\n")
    done = _build(victim, example)
    assert squatter.received() == [{"sent": "", "fds": 0}]  # connected, then nothing
    stderr = built_by_itself(done, example)
    assert f"served by uid {NOBODY}" in stderr


@pytest.mark.parametrize("mode", [0o755, 0o710, 0o703, 0o777])
def test_a_folder_others_may_enter_is_not_used(
    victim: Served, example: Path, squat, mode: int
) -> None:
    where = private_folder(victim)
    os.chmod(where.folder, mode)
    squatter = squat(where.socket)
    Path(where.pid_file).write_text(f"{squatter.pid}\n")
    done = _build(victim, example)
    assert squatter.received() == []
    stderr = built_by_itself(done, example)
    assert f"{where.folder} is open to other users (mode {mode:04o}" in stderr


def test_a_folder_that_is_a_link_is_not_used(
    victim: Served, example: Path, squat, tmp_path: Path
) -> None:
    where = server_client.place(victim.home)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    victim.home.mkdir()
    os.symlink(elsewhere, where.folder)
    squatter = squat(where.socket)
    Path(where.pid_file).write_text(f"{squatter.pid}\n")
    done = _build(victim, example)
    assert squatter.received() == []
    stderr = built_by_itself(done, example)
    assert f"{where.folder} is not a folder" in stderr


@pytest.mark.parametrize("recorded", ["another pid", "no pid"])
def test_a_listener_that_is_not_the_recorded_server_gets_nothing(
    victim: Served, example: Path, squat, recorded: str
) -> None:
    where = private_folder(victim)
    squatter = squat(where.socket)
    if recorded == "another pid":
        Path(where.pid_file).write_text(f"{os.getpid()}\n")
    done = _build(victim, example)
    assert squatter.received() == [{"sent": "", "fds": 0}]
    stderr = built_by_itself(done, example)
    assert f"served by pid {squatter.pid}, not by the pid {where.pid_file} records" in stderr


def test_a_short_folder_of_another_user_is_not_used(
    tmp_path: Path, monkeypatch, capsys, squat
) -> None:
    # A store too deep for a socket path is served from SHORT_ROOT/kiln-<uid>,
    # a name another user may create first.
    monkeypatch.setattr(server_client, "SHORT_ROOT", str(tmp_path))
    monkeypatch.setattr(server_client, "_warned", False)
    where = server_client.place(tmp_path.joinpath(*["deep-folder"] * 8, "home"))
    assert where.folder == str(tmp_path / f"kiln-{os.getuid()}")
    os.mkdir(where.folder, 0o777)
    squatter = squat(where.socket)
    Path(where.pid_file).write_text(f"{squatter.pid}\n")
    assert server_client.connect(where) is None
    assert squatter.received() == []
    assert "is open to other users" in capsys.readouterr().err


def test_a_request_for_another_store_is_refused(
    tmp_path: Path, example: Path, monkeypatch, capsys
) -> None:
    with serving(tmp_path / "h") as served:
        status = served.start()
        ours = server_client.place(served.home)
        # A client that reaches this server while asking for another store.
        other = tmp_path / "other"
        monkeypatch.setattr(server_client, "place", lambda home: _with_home(ours, str(home)))
        monkeypatch.setattr(server_client, "_warned", False)
        monkeypatch.chdir(example)
        monkeypatch.delenv("KILN_SERVER", raising=False)
        assert server_client.delegate(other, ["build", "report"]) is None  # runs it itself
        assert f"serves {ours.home}, not {other}" in capsys.readouterr().err
        assert server_client.ask(other, {"op": "stop"}) is None
        monkeypatch.undo()
        assert served.status()["served"] == 0 and served.status()["pid"] == status["pid"]
        assert f"not {other}" in (served.home / "server.log").read_text()


def _with_home(where: server_client.Place, home: str) -> server_client.Place:
    """``where``, as if it were the place of store ``home``."""
    return server_client.Place(home, where.folder, Path(where.socket).stem)


def test_a_server_does_not_listen_in_a_folder_others_may_enter(victim: Served) -> None:
    where = private_folder(victim)
    os.chmod(where.folder, 0o733)
    refused = victim.kiln("server", "start")
    assert refused.returncode == 1
    assert "the kiln server did not start" in refused.stderr
    assert f"{where.folder} is open to other users" in refused.stderr
    assert not os.path.exists(where.socket)
