"""Talking to the resident server (``kiln.server``), standard library only.

A ``kiln build`` that finds a server for its store hands the command over:
it sends its arguments, working folder, environment and umask, passes its
stdin, stdout and stderr as file descriptors, forwards the signals it gets
(Ctrl-C) and exits with the build's exit code. With no server, or one that
runs other code than this installation, the command runs in this process
as usual; ``KILN_SERVER=off`` never uses one.

Messages are JSON objects, one per line. A server belongs to one store and
one installation of Kiln (its socket's name is derived from both), so two
checkouts of Kiln sharing a store never run each other's code; the code's
fingerprint (every source file's size and mtime) is checked on each request.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import sys
from pathlib import Path

TYPE_CHECKING = False  # (typing itself costs milliseconds at start-up)

if TYPE_CHECKING:
    from typing import Any

# Commands a server may run (the ones whose start-up time matters).
SERVED = ("build", "check")
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
PACKAGE = Path(__file__).resolve().parent
REQUEST_LIMIT = 1 << 22  # bytes; an environment is far smaller


class ServerGone(Exception):
    """The server closed the connection before answering."""


def available() -> bool:
    """Whether this platform and environment may use a server."""
    return sys.platform == "linux" and os.environ.get("KILN_SERVER", "").lower() != "off"


def address(home: Path) -> bytes:
    """The server's socket for a store and this installation: a name in
    Linux's abstract namespace (no file to leave behind, no path length
    limit); the server checks that a client runs as its own user."""
    who = f"{os.path.realpath(home)}\0{PACKAGE}\0{os.path.realpath(sys.executable)}"
    return b"\0kiln-server-" + hashlib.sha256(who.encode()).hexdigest()[:32].encode()


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


def connect(home: Path, timeout: float | None = None) -> socket.socket | None:
    """A connection to the store's server, or None when none is running."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(address(home))
    except OSError:
        sock.close()
        return None
    return sock


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
    """One request and its answer (``status``, ``stop``); None without a server."""
    sock = connect(home, timeout)
    if sock is None:
        return None
    with sock:
        sock.sendall(encode(message))
        try:
            return Lines(sock).next()
        except (ServerGone, OSError):
            return None


def delegate(
    home: Path, argv: list[str], declined: tuple[str, str, str] | None = None
) -> int | None:
    """Run ``kiln ARGV`` in the store's server: its exit code, or None when
    no server takes it (the caller then runs it itself). ``declined`` is
    the build stamp this process already found stale (see ``kiln.quick``)."""
    if not argv or argv[0] not in SERVED or not available():
        return None
    sock = connect(home)
    if sock is None:
        return None
    request = {
        "op": "run", "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ),
        "umask": _umask(), "fingerprint": code_fingerprint(), "declined": declined,
        "path": import_path(),
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
        if "refused" in first:
            # Interrupted meanwhile: that is the answer; else run it here.
            return 128 + forwarding.received if forwarding.received else None
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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
