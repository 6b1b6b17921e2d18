"""The cc service on a real socket: answers, refusals, failures, many
clients at once, and its life as a child of the resident server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.cc.invocation import Exec, Invocation, Ran
from kiln.cc.service import EXIT_INTERNAL, Activity, CcService, socket_path
from kiln.cc.wire import decode_reply, encode_request
from kiln.server.client import Untrusted, place
from server_helpers import Served, gone, serving

INV = Invocation(["gcc", "-c", "x.c"], "/src", {"PATH": "/bin"}, "/opt/kiln-cc", 0o22)


@pytest.fixture
def private() -> Iterator[Path]:
    """A short folder only this user may enter (socket paths are short)."""
    folder = Path(tempfile.mkdtemp(prefix="kcc"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def ask_all(path: str, invocations: list[Invocation]) -> dict[int, bytes]:
    """Send every invocation at once, each on its own connection."""
    replies: dict[int, bytes] = {}

    def one(i: int) -> None:
        replies[i] = ask(path, encode_request(invocations[i]))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(invocations))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return replies


def echo(inv: Invocation) -> Ran:
    return Ran(len(inv.argv), " ".join(inv.argv).encode(), inv.cwd.encode())


def ask(path: Path | str, data: bytes) -> bytes:
    """Send ``data`` and read until the service closes the connection."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)


def test_a_request_gets_the_handlers_reply(private: Path) -> None:
    with CcService(str(private / "cc.sock"), echo):
        assert decode_reply(ask(private / "cc.sock", encode_request(INV))) == echo(INV)


def test_an_exec_reply_is_carried(private: Path) -> None:
    with CcService(str(private / "cc.sock"), lambda inv: Exec(["/usr/bin/gcc", *inv.argv[1:]])):
        reply = decode_reply(ask(private / "cc.sock", encode_request(INV)))
    assert reply == Exec(["/usr/bin/gcc", "-c", "x.c"])


@pytest.mark.parametrize(
    "handler",
    [lambda inv: 1 / 0, lambda inv: Exec(["gcc"]), lambda inv: "not a reply"],
    ids=["raises", "relative-exec", "wrong-type"],
)
def test_a_failing_handler_is_an_internal_error_with_its_traceback_logged(
    private: Path, handler, capfd: pytest.CaptureFixture[str]
) -> None:
    with CcService(str(private / "cc.sock"), handler, log_file="/store/server.log"):
        reply = decode_reply(ask(private / "cc.sock", encode_request(INV)))
    assert isinstance(reply, Ran)
    assert reply.exit_code == EXIT_INTERNAL
    assert reply.stderr.startswith(b"kiln cc: internal error: ")
    assert reply.stderr.endswith(b"; see /store/server.log\n")
    assert reply.stderr.count(b"\n") == 1
    assert "Traceback" in capfd.readouterr().err


@pytest.mark.parametrize(
    "data", [b"GET / HTTP/1.0\r\n\r\n", b"KCC1\xff\xff\xff\xff", b""], ids=["http", "count", "none"]
)
def test_a_malformed_request_is_closed_without_an_answer(private: Path, data: bytes) -> None:
    seen: list[Invocation] = []
    with CcService(str(private / "cc.sock"), lambda inv: seen.append(inv) or echo(inv)) as service:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(service.path)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        assert sock.recv(100) == b""
        sock.close()
        # ... and goes on answering others
        assert decode_reply(ask(service.path, encode_request(INV))) == echo(INV)
    assert seen == [INV]


def test_a_client_that_stops_sending_is_dropped(private: Path) -> None:
    with (
        CcService(str(private / "cc.sock"), echo, request_timeout=0.3) as service,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock,
    ):
        sock.connect(service.path)
        sock.sendall(encode_request(INV)[:20])
        sock.settimeout(10)
        assert sock.recv(100) == b""


def test_a_folder_other_users_may_enter_is_refused(private: Path) -> None:
    private.chmod(0o755)
    with pytest.raises(Untrusted):
        CcService(str(private / "cc.sock"), echo)


def test_stopping_removes_the_socket_but_not_a_newer_services(private: Path) -> None:
    path = str(private / "cc.sock")
    with CcService(path, echo):
        assert os.path.exists(path)
    assert not os.path.exists(path)
    old = CcService(path, echo)
    with CcService(path, echo):  # (takes over the path)
        old.stop()
        assert decode_reply(ask(path, encode_request(INV))) == echo(INV)


def test_clients_are_answered_at_once(private: Path) -> None:
    together = threading.Barrier(8, timeout=20)  # each waits until all 8 are in the handler

    def handler(inv: Invocation) -> Ran:
        together.wait()
        return echo(inv)

    invocations = [Invocation(["cc", f"-DN={i}"] * (i + 1), f"/w{i}", {}) for i in range(8)]
    with CcService(str(private / "cc.sock"), handler) as service:
        replies = ask_all(service.path, invocations)
    assert {i: decode_reply(r) for i, r in replies.items()} == {
        i: echo(inv) for i, inv in enumerate(invocations)
    }


def test_more_clients_than_workers_wait_their_turn(private: Path, monkeypatch) -> None:
    """With every worker busy, a connection waits for the first to finish;
    the workers then stay as many as allowed, and each is answered."""
    import kiln.cc.service as service_module

    monkeypatch.setattr(service_module, "MAX_WORKERS", 2)
    started = threading.Semaphore(0)

    def handler(inv: Invocation) -> Ran:
        started.release()
        time.sleep(0.05)
        return echo(inv)

    invocations = [Invocation(["cc", str(i)], f"/w{i}", {}) for i in range(7)]
    with CcService(str(private / "cc.sock"), handler) as service:
        replies = ask_all(service.path, invocations)
        assert service._workers == 2
    assert {i: decode_reply(r) for i, r in replies.items()} == {
        i: echo(inv) for i, inv in enumerate(invocations)
    }


def test_activity_is_seen_by_the_process_that_forked_the_service() -> None:
    activity = Activity()
    before = activity.last()
    pid = os.fork()
    if pid == 0:
        time.sleep(0.01)
        activity.touch()
        os._exit(0)
    os.waitpid(pid, 0)
    assert activity.last() > before


def test_the_socket_of_a_store_is_next_to_its_servers(tmp_path: Path) -> None:
    path = socket_path(tmp_path)
    assert path == place(tmp_path).socket[: -len(".sock")] + ".cc.sock"


# ---------------------------------------------------------------- in the server


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with serving(tmp_path / "store") as served:
        yield served


def test_the_server_starts_the_cc_service_and_stops_it(served: Served) -> None:
    status = served.start()
    path = socket_path(served.home)
    assert status["cc_socket"] == path
    served.wait_until(lambda: os.path.exists(path), "the cc socket")
    reply = decode_reply(ask(path, encode_request(Invocation(["cc", "--version"], "/", {}))))
    assert isinstance(reply, Ran | Exec)
    assert served.kiln("server", "stop").returncode == 0
    served.wait_until(lambda: not os.path.exists(path), "the cc socket to go")
    served.wait_until(lambda: gone(status["cc_pid"]), "the cc service to exit")


def test_the_cc_service_ends_when_the_server_dies(served: Served) -> None:
    status = served.start()
    path = socket_path(served.home)
    served.wait_until(lambda: os.path.exists(path), "the cc socket")
    os.kill(status["pid"], signal.SIGKILL)
    served.wait_until(lambda: gone(status["cc_pid"]), "the cc service to exit")
    assert not os.path.exists(path)
