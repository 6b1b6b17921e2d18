"""The real native ``kiln-cc`` client against a real cc service (in a
thread of the test process) and real sockets: what it sends, what it does
with each reply, and when it falls back to the slow path."""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kiln.cc import native_client
from kiln.cc.invocation import Exec, Invocation, Ran
from kiln.cc.service import CcService
from kiln.cc.setup import CONF, LAUNCHER, MASKS, install_launcher
from kiln.errors import KilnError

pytestmark = pytest.mark.skipif(native_client.binary() is None, reason="no kiln-cc for here")

FALLBACK = "#!/bin/sh\nprintf 'fallback:%s\\n' \"$@\"\nexit 9\n"


class Recorder:
    """A handler that notes each invocation and answers with ``reply``."""

    def __init__(self) -> None:
        self.seen: list[Invocation] = []
        self.reply: Callable[[Invocation], Ran | Exec] = lambda inv: Ran(
            3, os.fsencode("\n".join(inv.argv) + "\n"), b"to stderr\n"
        )

    def __call__(self, inv: Invocation) -> Ran | Exec:
        self.seen.append(inv)
        return self.reply(inv)


class Setup:
    """A private folder with a service's socket, a launcher folder, a fallback."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.private = root / "private"
        self.private.mkdir(mode=0o700)
        self.socket = str(self.private / "cc.sock")
        self.fallback = root / "fallback.sh"
        self.fallback.write_text(FALLBACK)
        self.fallback.chmod(0o755)
        self.bin = root / "bin"
        install_launcher(self.bin, self.socket, [str(self.fallback)])
        self.launcher = self.bin / LAUNCHER
        self.handler = Recorder()
        self.env = {"PATH": f"{self.bin}:/usr/bin:/bin", "KCC_TEST": "é\udcff"}

    def run(self, *argv: str | Path, **options: object) -> subprocess.CompletedProcess[bytes]:
        env = {k: os.fsencode(v) for k, v in self.env.items()}
        return subprocess.run(
            [str(a) for a in argv], env=env, capture_output=True, timeout=60, **options
        )  # type: ignore[call-overload]


@pytest.fixture
def setup() -> Iterator[Setup]:
    root = Path(tempfile.mkdtemp(prefix="kcc"))  # (short: a socket's path is)
    try:
        yield Setup(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def served(setup: Setup) -> Iterator[Setup]:
    with CcService(setup.socket, setup.handler):
        yield setup


def test_a_compile_gets_the_services_streams_and_exit_code(served: Setup, tmp_path: Path) -> None:
    proc = served.run(served.launcher, "gcc", "-c", "x.c", cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (3, b"to stderr\n")
    assert proc.stdout == f"{served.launcher}\ngcc\n-c\nx.c\n".encode()
    [inv] = served.handler.seen
    assert inv.argv == [str(served.launcher), "gcc", "-c", "x.c"]
    assert inv.cwd == str(tmp_path)
    assert inv.env == served.env
    assert inv.launcher == os.path.realpath(served.launcher)
    assert inv.umask == _umask()


def test_a_masquerading_link_found_on_path_is_seen_as_called(served: Setup) -> None:
    for name in MASKS:
        proc = served.run(name, "-O2", "y.c")
        assert proc.returncode == 3, proc.stderr
    assert [inv.argv for inv in served.handler.seen] == [[n, "-O2", "y.c"] for n in MASKS]
    assert {inv.launcher for inv in served.handler.seen} == {os.path.realpath(served.launcher)}


def test_an_exec_reply_runs_the_program(served: Setup) -> None:
    served.handler.reply = lambda inv: Exec(["/bin/echo", "real", *inv.argv[2:]])
    proc = served.run(served.launcher, "gcc", "--version")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"real --version\n", b"")


def test_an_exec_of_a_missing_program_says_so(served: Setup) -> None:
    served.handler.reply = lambda inv: Exec(["/nonexistent/gcc"])
    proc = served.run(served.launcher, "gcc")
    assert proc.returncode == 127
    assert proc.stderr == b"kiln-cc: cannot run /nonexistent/gcc: No such file or directory\n"


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 5_000_003])
def test_streams_are_passed_on_byte_for_byte(served: Setup, size: int) -> None:
    out = os.urandom(size)
    err = b"\xff\x00warning\xfe\n" * (size // 100)
    served.handler.reply = lambda inv: Ran(0, out, err)
    proc = served.run(served.launcher, "gcc", "-c", "big.c")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, out, err)


def test_arguments_that_are_not_utf8_arrive_as_given(served: Setup) -> None:
    proc = served.run(served.launcher, "gcc", "-DX=\udcff\udcfe", "é.c")
    assert proc.returncode == 3
    assert [os.fsencode(a) for a in served.handler.seen[0].argv[1:]] == [
        b"gcc",
        b"-DX=\xff\xfe",
        "é.c".encode(),
    ]


@pytest.mark.parametrize("code", [0, 1, 70, 255, 256, -1])
def test_exit_codes(served: Setup, code: int) -> None:
    served.handler.reply = lambda inv: Ran(code)
    assert served.run(served.launcher, "gcc").returncode == (code if 0 <= code <= 255 else 1)


def test_a_failing_handler_is_reported(served: Setup) -> None:
    served.handler.reply = lambda inv: {}["no such key"]
    proc = served.run(served.launcher, "gcc")
    assert proc.returncode == 70
    assert proc.stderr.startswith(b"kiln cc: internal error: KeyError")


def test_with_no_service_the_fallback_runs_with_the_whole_argv(setup: Setup) -> None:
    proc = setup.run(setup.launcher, "gcc", "-c", "x.c")
    assert proc.returncode == 9
    assert proc.stdout == fallen_back(setup.launcher, "gcc", "-c", "x.c")
    proc = setup.run("gcc", "-c", "x.c")
    assert proc.stdout == fallen_back("gcc", "-c", "x.c")


def test_kiln_server_off_means_the_fallback(served: Setup) -> None:
    served.env["KILN_SERVER"] = "Off"
    assert served.run(served.launcher, "gcc").returncode == 9
    assert served.handler.seen == []


def test_a_dead_services_socket_file_means_the_fallback(setup: Setup) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(setup.socket)
    dead.close()
    assert setup.run(setup.launcher, "gcc").returncode == 9


def test_a_socket_in_a_folder_others_may_enter_is_not_used(served: Setup) -> None:
    served.private.chmod(0o755)
    proc = served.run(served.launcher, "gcc")
    assert (proc.returncode, served.handler.seen) == (9, [])
    served.private.chmod(0o700)
    assert served.run(served.launcher, "gcc").returncode == 3


def test_a_socket_reached_through_a_link_is_not_used(served: Setup) -> None:
    link = served.root / "link"
    link.symlink_to(served.private)
    (served.bin / CONF).write_text(f"{link}/cc.sock\n{served.fallback}\n")
    assert served.run(served.launcher, "gcc").returncode == 9


@pytest.mark.parametrize(
    "reply",
    [
        b"",  # closed without answering (a refusal)
        b"\x00\x00\x00\x00\x00\x10\x00\x00\x00partial",  # stdout cut short
        b"\x07",  # an unknown kind
        b"\x01\x01\x00\x00\x00\x03\x00\x00\x00gcc",  # Exec of a relative program
        b"\x01\x01\x00\x00\x00\x05\x00\x00\x00/b\x00in",  # Exec with a NUL
    ],
    ids=["refused", "cut", "kind", "relative", "nul"],
)
def test_a_reply_that_is_not_whole_means_the_fallback_and_nothing_else(
    setup: Setup, reply: bytes
) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(setup.socket)
    listener.listen(1)

    def serve_once() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(1 << 20)
            conn.sendall(reply)

    server = threading.Thread(target=serve_once)
    server.start()
    proc = setup.run(setup.launcher, "gcc")
    server.join(10)
    listener.close()
    assert (proc.returncode, proc.stderr) == (9, b"")
    assert proc.stdout == fallen_back(setup.launcher, "gcc")


def test_without_its_configuration_it_says_where_it_looked(setup: Setup) -> None:
    (setup.bin / CONF).unlink()
    proc = setup.run(setup.launcher, "gcc")
    assert proc.returncode == 127
    missing = f"{setup.bin}/{CONF}: No such file or directory"
    assert proc.stderr == f"kiln-cc: cannot read {missing}\n".encode()


def test_run_through_a_link_elsewhere_it_finds_its_configuration(served: Setup) -> None:
    elsewhere = served.root / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "cc").symlink_to(served.launcher)
    served.env["PATH"] = f"{elsewhere}:/usr/bin:/bin"
    assert served.run("cc", "a.c").returncode == 3
    assert served.handler.seen[0].argv == ["cc", "a.c"]


def test_many_clients_at_once_each_get_their_answer(served: Setup) -> None:
    def reply(inv: Invocation) -> Ran:
        time.sleep(0.3)
        return Ran(int(inv.argv[2]), inv.argv[2].encode() * 100_000)

    served.handler.reply = reply
    started = time.monotonic()
    procs = [
        subprocess.Popen([served.launcher, "gcc", str(i)], stdout=subprocess.PIPE) for i in range(8)
    ]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    took = time.monotonic() - started
    assert [p.returncode for p in procs] == list(range(8))
    assert outs == [str(i).encode() * 100_000 for i in range(8)]
    assert took < 8 * 0.3, "the compiles were answered one after another"


def test_installing_again_replaces_the_launcher_but_not_a_users_files(setup: Setup) -> None:
    made = install_launcher(setup.bin, setup.socket, ["/usr/bin/python3", "-m", "x"])
    assert sorted(p.name for p in made) == sorted([LAUNCHER, CONF, *MASKS])
    assert (setup.bin / CONF).read_text() == f"{setup.socket}\n/usr/bin/python3\n-m\nx\n"
    assert os.readlink(setup.bin / "gcc") == LAUNCHER
    assert (setup.bin / LAUNCHER).stat().st_mode & 0o777 == 0o755
    (setup.bin / "gcc").unlink()
    (setup.bin / "gcc").write_text("mine")
    with pytest.raises(KilnError, match="not kiln's launcher"):
        install_launcher(setup.bin, setup.socket, [str(setup.fallback)])
    assert (setup.bin / "gcc").read_text() == "mine"
    with pytest.raises(KilnError, match="not a folder"):
        install_launcher(setup.fallback, setup.socket, [str(setup.fallback)])
    with pytest.raises(KilnError):
        install_launcher(setup.root / "new", setup.socket, ["relative"])
    with pytest.raises(KilnError):
        install_launcher(setup.root / "new", "/x\n", [str(setup.fallback)])


def test_per_invocation_time(served: Setup) -> None:
    """Prints (with -s) what one call of the launcher costs when the
    service answers at once."""
    served.handler.reply = lambda inv: Ran(0)
    times = []
    for _ in range(200):
        started = time.perf_counter()
        subprocess.run([served.launcher, "gcc", "-c", "x.c"], check=True)
        times.append(time.perf_counter() - started)
    spawn = []
    for _ in range(200):
        started = time.perf_counter()
        subprocess.run(["/bin/true"], check=True)
        spawn.append(time.perf_counter() - started)
    median, true = statistics.median(times) * 1000, statistics.median(spawn) * 1000
    print(f"\nkiln-cc per invocation: median {median:.2f} ms (/bin/true: {true:.2f} ms)")
    assert median < 50


def fallen_back(*argv: str | Path) -> bytes:
    """What the test's fallback prints when run with ``argv``."""
    return "".join(f"fallback:{a}\n" for a in argv).encode()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
