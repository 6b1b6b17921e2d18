"""Talking to the resident server (``kiln.server.daemon``), standard library only.

A ``kiln build`` that finds a server for its store hands the command over:
it sends its arguments, working folder, environment and umask, passes its
stdin, stdout and stderr as file descriptors, forwards the signals it gets
(Ctrl-C) and exits with the build's exit code. With no server, or one that
runs other code than this installation, the command runs in this process
as usual; ``KILN_SERVER=off`` never uses one.

What a client sends (its environment, secrets included, and its terminal)
goes only to a server it has verified first (``connect``): the socket is a
file in a folder that belongs to the user and that no other user may enter
(``Place``), its listener runs as the same user (``SO_PEERCRED``), and it is
the process whose pid the server recorded next to the socket. Anything else
gets nothing: the command runs here, after one warning naming the problem.

Messages are JSON objects, one per line. A server belongs to one store and
one installation of Kiln (its socket's name is derived from both, and each
request names the store it is for), so two checkouts of Kiln sharing a store
never run each other's code; the server compares the code's fingerprint
(every source file's size and mtime) with its own on each request.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import stat
import struct
import sys
from pathlib import Path

TYPE_CHECKING = False  # (typing itself costs milliseconds at start-up)

if TYPE_CHECKING:
    import subprocess
    from typing import Any

# Commands a server may run (the ones whose start-up time matters).
SERVED = ("build", "check", "gocacheprog")
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
PACKAGE = Path(__file__).resolve().parent.parent  # the kiln package
REQUEST_LIMIT = 1 << 22  # bytes; an environment is far smaller
SOCKET_PATH_LIMIT = 107  # bytes in a socket's path (sockaddr_un.sun_path, less its NUL)
# Where the server of a store whose path is too long for a socket listens
# (in kiln-<uid>, held to the same checks as the store's own folder).
SHORT_ROOT = "/tmp"
LOG_NAME = "server.log"  # in the store


class ServerGone(Exception):
    """The server closed the connection before answering."""


def available() -> bool:
    """Whether this platform and environment may use a server."""
    return sys.platform == "linux" and os.environ.get("KILN_SERVER", "").lower() != "off"


class Untrusted(Exception):
    """Why a server's socket must not be sent anything."""


class Place:
    """Where the server of one store (``home``, its real path) and one
    installation of Kiln listens: ``socket``, in ``folder``, which only its
    user may enter; ``pid_file`` holds the listener's pid and ``lock_file``
    is locked by it while it listens."""

    __slots__ = ("folder", "home", "lock_file", "pid_file", "socket")

    def __init__(self, home: str, folder: str, name: str) -> None:
        self.home = home
        self.folder = folder
        self.socket = os.path.join(folder, f"{name}.sock")
        self.pid_file = os.path.join(folder, f"{name}.pid")
        self.lock_file = os.path.join(folder, f"{name}.lock")


def place(home: Path) -> Place:
    """The server's place for a store and this installation: a folder
    ``server-<uid>`` in the store, or, when a socket path there would be
    too long, ``kiln-<uid>`` in ``SHORT_ROOT``. Never Linux's abstract
    namespace, where any user may take any name first."""
    real = os.path.realpath(home)
    who = f"{real}\0{PACKAGE}\0{os.path.realpath(sys.executable)}"
    name = hashlib.sha256(who.encode()).hexdigest()[:16]
    folder = os.path.join(real, f"server-{os.getuid()}")
    if len(os.fsencode(os.path.join(folder, f"{name}.sock"))) > SOCKET_PATH_LIMIT:
        folder = os.path.join(SHORT_ROOT, f"kiln-{os.getuid()}")
    return Place(real, folder, name)


def check_private_folder(folder: str) -> None:
    """Raise ``Untrusted`` unless ``folder`` is a directory (not a link to
    one) of this user that no other user may read, write or enter;
    ``FileNotFoundError`` if there is none."""
    st = os.lstat(folder)
    _check_owner(folder, st, stat.S_IFDIR)
    if st.st_mode & 0o077:
        mode = stat.S_IMODE(st.st_mode)
        raise Untrusted(f"{folder} is open to other users (mode {mode:04o}, not 0700)")


def _check_owner(path: str, st: os.stat_result, kind: int) -> None:
    if stat.S_IFMT(st.st_mode) != kind:
        raise Untrusted(f"{path} is not a {'folder' if kind == stat.S_IFDIR else 'socket'}")
    if st.st_uid != os.getuid():
        raise Untrusted(f"{path} belongs to uid {st.st_uid}, not to uid {os.getuid()}")


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """The pid and uid of the process at the other end of a Unix socket
    (for a client: the server's, as of its ``listen``)."""
    size = struct.calcsize("iII")
    pid, uid, _gid = struct.unpack(
        "iII", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size)
    )
    return pid, uid


def code_fingerprint() -> str:
    """Size and mtime of every file of the kiln package, and the Python
    running it: a server started before any of these changed is stale."""
    h = hashlib.sha256(f"{sys.version}\0{os.path.realpath(sys.executable)}".encode())
    for folder, dirs, files in os.walk(PACKAGE):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith((".py", ".mjs")):
                st = os.stat(os.path.join(folder, name))
                h.update(f"{folder}/{name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


def import_path() -> list[str]:
    """Where this process imports from, without the folder of the script
    (the entry point's, or none for the server, which runs with -P): a
    command whose PYTHONPATH differs from the server's runs by itself."""
    return sys.path[1:] if sys.path and sys.flags.safe_path is False else sys.path


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def connect(where: Place, timeout: float | None = None) -> socket.socket | None:
    """A connection to the server at ``where``, verified before anything is
    sent on it; None when no server runs there, or (after a warning) when
    the socket or what listens on it cannot be trusted."""
    try:
        return _connect_verified(where, timeout)
    except Untrusted as e:
        warn(f"not using the kiln server: {e}")
        return None


def _connect_verified(where: Place, timeout: float | None) -> socket.socket | None:
    try:
        check_private_folder(where.folder)
        _check_owner(where.socket, os.lstat(where.socket), stat.S_IFSOCK)
    except OSError:  # no server made its place here (or none is left)
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(where.socket)
        _check_listener(sock, where)
    except OSError:  # nothing listens: a dead server's socket
        sock.close()
        return None
    except Untrusted:
        sock.close()
        raise
    return sock


def _check_listener(sock: socket.socket, where: Place) -> None:
    pid, uid = peer_credentials(sock)
    if uid != os.getuid():
        raise Untrusted(f"{where.socket} is served by uid {uid}, not by uid {os.getuid()}")
    try:
        with open(where.pid_file, "rb") as f:
            recorded = int(f.read(32))
    except (OSError, ValueError):
        recorded = None
    if pid != recorded:
        raise Untrusted(
            f"{where.socket} is served by pid {pid}, not by the pid {where.pid_file} records"
        )


_warned = False


def warn(message: str) -> None:
    """Say on stderr why no server is used; once a process."""
    global _warned
    if not _warned:
        _warned = True
        sys.stderr.write(f"kiln: warning: {message}\n")


class Lines:
    """The JSON messages arriving on a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._file = sock.makefile("rb")

    def next(self) -> dict[str, Any]:
        line = self._file.readline(REQUEST_LIMIT)
        if not line.endswith(b"\n"):
            raise ServerGone("the server closed the connection")
        return json.loads(line)


def ask(home: Path, message: dict[str, Any], timeout: float = 10.0) -> dict[str, Any] | None:
    """One request and its answer (``status``, ``stop``); None without a
    server for this store, or when it refuses."""
    where = place(home)
    sock = connect(where, timeout)
    if sock is None:
        return None
    with sock:
        try:
            sock.sendall(encode({**message, "home": where.home}))
            return _unless_refused(Lines(sock).next())
        except (ServerGone, OSError):
            return None


def _unless_refused(answer: dict[str, Any]) -> dict[str, Any] | None:
    """A server's answer, or None (after its warning, if it gives one) when
    it is a refusal."""
    if "refused" not in answer:
        return answer
    if "warning" in answer:
        warn(str(answer["warning"]))
    return None


def delegate(home: Path, argv: list[str], stamp_checked: bool = False) -> int | None:
    """Run ``kiln ARGV`` in the store's server: its exit code, or None when
    no server takes it (the caller then runs it itself). ``stamp_checked``:
    this process found that the build stamp cannot answer (``kiln.api``)."""
    if not argv or argv[0] not in SERVED or not available():
        return None
    where = place(home)
    _hold_stdio()  # (before the socket is made: it must not take their numbers)
    sock = connect(where)
    if sock is None:
        return None
    request = {
        "op": "run", "home": where.home, "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ),
        "umask": _umask(), "stamp_checked": stamp_checked, "path": import_path(),
    }  # fmt: skip
    with sock, _Forwarding(sock) as forwarding:
        stdio, opened = _stdio()
        try:
            socket.send_fds(sock, [encode(request)], stdio)
            lines = Lines(sock)
            first = lines.next()
        except (ServerGone, OSError):
            first = {"refused": "the server went away"}
        finally:
            for fd in opened:
                os.close(fd)
        if _unless_refused(first) is None:
            # Interrupted meanwhile: that is the answer; else run it here.
            return 128 + forwarding.received if forwarding.received else None
        if "output" in first:  # answered by the server itself
            write_output(first["output"])
        if "exit" in first:  # (the command can be done before "started" is sent)
            return int(first["exit"])
        try:
            while True:  # the command's own "exit", or the server's once it is reaped
                message = lines.next()
                if "exit" in message:
                    return int(message["exit"])
        except (ServerGone, OSError, ValueError):
            sys.stderr.write("kiln: error: the kiln server stopped during the command\n")
            return 1


def write_output(writes: list[list[Any]]) -> None:
    """Print what the server answered for a command: [fd, text] pairs, fd
    1 for stdout and 2 for stderr."""
    for fd, text in writes:
        stream = sys.stderr if fd == 2 else sys.stdout
        stream.write(str(text))
        stream.flush()


class _Forwarding:
    """While entered, the signals a user sends to stop a command (Ctrl-C...)
    go to the server, which passes them to the command's process group."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._previous: dict[int, Any] = {}
        self.received = 0  # the last signal forwarded

    def _forward(self, signum: int, _frame: object) -> None:
        self.received = signum
        with contextlib.suppress(OSError):
            self._sock.sendall(encode({"signal": signum}))

    def __enter__(self) -> _Forwarding:
        self._previous = {s: signal.signal(s, self._forward) for s in FORWARDED_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def spawn(home: Path, idle: float) -> subprocess.Popen[bytes]:
    """Start the store's server in the background (its log: ``server.log``
    in the store); it exits at once if another one holds the place."""
    import subprocess  # (start-up: not on the way of every command)

    home.mkdir(parents=True, exist_ok=True)
    with open(home / LOG_NAME, "ab") as out:
        return subprocess.Popen(
            # -P: no folder of its own on sys.path (see import_path)
            [sys.executable, "-P", "-m", "kiln.server.daemon", "--home", str(home),
             "--idle", str(idle)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
        )  # fmt: skip


def start_on_build(home: Path, argv: list[str]) -> None:
    """When the config says ``[server] start = "on-build"``: start the
    store's server for the next commands (this one runs by itself)."""
    if not argv or argv[0] not in SERVED or not available():
        return
    from kiln.config import load_config
    from kiln.errors import KilnError

    try:
        config = load_config()
    except KilnError:
        return  # (the command itself says what is wrong with the file)
    if config.server_on_build:
        spawn(home, config.server_idle_s)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _hold_stdio() -> None:
    """Put /dev/null on each of descriptors 0-2 that is closed, so that no
    descriptor this process opens takes its number (and is then passed to
    the command as its stdin, stdout or stderr)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:  # (the lowest free number: ``fd`` unless a lower one is closed too)
                os.dup2(null, fd)
                os.close(null)


def _stdio() -> tuple[list[int], list[int]]:
    """Descriptors 0-2 to pass (a closed one is passed as /dev/null)."""
    fds, opened = [], []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            fds.append(null)
            opened.append(null)
    return fds, opened
