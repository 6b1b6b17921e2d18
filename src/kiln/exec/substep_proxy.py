"""The other end of ``kiln-sub``: one native step's channel to its build.

A native step that declares ``recursive=True`` finds ``/kiln/bin/kiln-sub``
and the socket ``/kiln/sub/socket`` in its sandbox; the socket is this
proxy's, served for that one step while it runs (``SubstepProxy``). A
``kiln-sub`` process sends its arguments, working folder and environment,
and the proxy works it like a pair of hands inside the sandbox (``Hands``):
it reads the files the requested step needs through it, asks the build
for the step (``kiln.exec.substeps``, naming the requesting step), and has
the outputs written back, or tells it to run a program itself.

The proxy never touches the sandbox's files from the host: everything the
step sees or writes goes through ``kiln-sub``, with the step's own rights.
What it sends is hostile data: sizes are capped, paths checked, and the
only thing it can obtain is a pure step of the tools its step declared.

An answer that is not the requested step's result (the build refused or
could not run it) would make the requesting step's output depend on
something other than its inputs: the proxy notes it (``tainted``), and the
executor fails the step with it as an error, never caching what it made.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kiln.exec.zygote import build_command as _build_command
from kiln.exec.zygote import helper_binary, rebuild_helpers

CLIENT_FOLDER = Path(__file__).parent / "sandbox"
CLIENT_SOURCE = CLIENT_FOLDER / "kiln-sub.c"
SOCKET_NAME = "socket"
SANDBOX_SOCKET = "/kiln/sub/socket"
SANDBOX_CLIENT = "/kiln/bin/kiln-sub"
MESSAGE_LIMIT = 256 << 20  # one file of a requested step's inputs, at most
_LENGTH = struct.Struct(">I")


class HandsGone(Exception):
    """``kiln-sub`` went away, or said something malformed."""


class SandboxError(Exception):
    """What ``kiln-sub`` reported failing in the sandbox (errno, text)."""

    def __init__(self, errno: int, text: str) -> None:
        super().__init__(f"{text}: {os.strerror(errno)}")
        self.errno = errno


@dataclass(frozen=True)
class Hello:
    """What a ``kiln-sub`` process says first."""

    cwd: str
    args: list[str]
    env: dict[str, str]


class Hands:
    """One ``kiln-sub`` process, doing in the sandbox what it is told."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def hello(self) -> Hello:
        fields = self._receive()
        if not fields or fields[0] != b"hello" or b"" not in fields[2:] or len(fields) < 2:
            raise HandsGone("kiln-sub did not introduce itself")
        split = fields.index(b"", 2)
        env = {}
        for item in fields[split + 1 :]:
            name, sep, value = _text(item).partition("=")
            if sep:
                env[name] = value
        return Hello(_text(fields[1]), [_text(a) for a in fields[2:split]], env)

    def read(self, path: str) -> tuple[int, bytes]:
        """A file's mode and bytes."""
        reply = self._ask(b"read", path.encode())
        if reply[0] != b"data" or len(reply) != 3:
            raise HandsGone("malformed answer to read")
        return int(reply[1]), reply[2]

    def list(self, path: str) -> list[tuple[str, str]]:
        """A folder's entries: (name, "file" | "dir" | "other")."""
        reply = self._ask(b"list", path.encode())
        if reply[0] != b"entries" or len(reply) % 2 != 1:
            raise HandsGone("malformed answer to list")
        return [(_text(reply[i]), _text(reply[i + 1])) for i in range(1, len(reply), 2)]

    def run(self, argv: list[str]) -> tuple[int, bytes, bytes]:
        """Run a program in the sandbox: exit code, stdout, stderr."""
        reply = self._ask(b"run", *(a.encode() for a in argv))
        if reply[0] != b"ran" or len(reply) != 4:
            raise HandsGone("malformed answer to run")
        return int(reply[1]), reply[2], reply[3]

    def write(self, path: str, mode: int, data: bytes) -> None:
        """Write a file (replacing what is there, never through a link)."""
        reply = self._ask(b"write", path.encode(), f"{mode:o}".encode(), data)
        if reply[0] != b"ok":
            raise HandsGone("malformed answer to write")

    def exec(self, argv: list[str]) -> None:
        """Have ``kiln-sub`` become ``argv`` (the last thing it is told)."""
        self._send([b"exec", *(a.encode() for a in argv)])

    def exit(self, code: int, stdout: bytes = b"", stderr: bytes = b"") -> None:
        """Have ``kiln-sub`` print these and exit (the last thing it is told)."""
        self._send([b"exit", str(code).encode(), stdout, stderr])

    def _ask(self, *fields: bytes) -> list[bytes]:
        self._send(list(fields))
        reply = self._receive()
        if reply and reply[0] == b"error" and len(reply) == 3:
            raise SandboxError(int(reply[1]) if reply[1].isdigit() else 0, _text(reply[2]))
        if not reply:
            raise HandsGone("empty answer")
        return reply

    def _send(self, fields: list[bytes]) -> None:
        body = b"".join(_LENGTH.pack(len(f)) + f for f in fields)
        try:
            self._sock.sendall(_LENGTH.pack(len(body)) + body)
        except OSError as e:
            raise HandsGone(f"kiln-sub went away: {e}") from None

    def _receive(self) -> list[bytes]:
        (size,) = _LENGTH.unpack(self._exactly(_LENGTH.size))
        if size > MESSAGE_LIMIT:
            raise HandsGone(f"kiln-sub sent a message of {size} bytes (at most {MESSAGE_LIMIT})")
        data = self._exactly(size)
        fields, at = [], 0
        while at < size:
            if size - at < 4:
                raise HandsGone("malformed message")
            (n,) = _LENGTH.unpack_from(data, at)
            at += 4
            if n > size - at:
                raise HandsGone("malformed message")
            fields.append(data[at : at + n])
            at += n
        return fields

    def _exactly(self, size: int) -> bytes:
        chunks, left = [], size
        while left:
            try:
                chunk = self._sock.recv(min(left, 1 << 20))
            except OSError as e:
                raise HandsGone(f"kiln-sub went away: {e}") from None
            if not chunk:
                raise HandsGone("kiln-sub went away")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)


def binary() -> Path | None:
    """The static ``kiln-sub`` built for this machine, if Kiln ships one."""
    return helper_binary(CLIENT_FOLDER, binary_name)


def binary_name(arch: str) -> str:
    return f"kiln-sub-{arch}"


def build_command(zig: list[str], arch: str, out: Path) -> list[str]:
    """How the checked-in ``kiln-sub`` for ``arch`` is made from its source."""
    return _build_command(zig, arch, out, CLIENT_SOURCE)


def rebuild() -> None:
    """Make the checked-in ``kiln-sub`` binaries again (``./dev kiln-sub``)."""
    rebuild_helpers(CLIENT_SOURCE, binary_name)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


Handler = Callable[[Hands, Hello], None]


class SubstepProxy:
    """Serves ``kiln-sub`` for one running step, on ``folder/socket``; each
    connection is handled on its own thread by ``handler``."""

    def __init__(self, folder: Path, handler: Handler) -> None:
        self._handler = handler
        self.path = folder / SOCKET_NAME
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bound through /proc/self/fd: a store's folder may be deeper than
        # a socket's path may be long (108 bytes).
        folder_fd = os.open(folder, os.O_PATH | os.O_DIRECTORY)
        try:
            self._listener.bind(f"/proc/self/fd/{folder_fd}/{SOCKET_NAME}")
        finally:
            os.close(folder_fd)
        self._listener.listen(64)
        self.tainted: Tainted | None = None  # why the step's output cannot be trusted, if so
        self._thread = threading.Thread(target=self._accept, name="kiln-sub-proxy", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed: the step ended
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            hands = Hands(conn)
            try:
                self._handler(hands, hands.hello())
            except HandsGone:
                return
            except Exception as e:  # refused, or Kiln's own failure: not the step's doing
                failure = e if isinstance(e, Tainted) else Tainted(f"{e!r}", final=False)
                if self.tainted is None:
                    self.tainted = failure
                with contextlib.suppress(HandsGone):
                    hands.exit(125, stderr=f"kiln-sub: {failure}\n".encode())

    def close(self) -> None:
        """Stop serving (the step ended)."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class Tainted(Exception):
    """The build did not give a requested step's result (refused it, or
    could not run it): the requesting step fails as an error (``final``:
    running it again would fail the same way)."""

    def __init__(self, message: str, final: bool = True) -> None:
        super().__init__(message)
        self.final = final


if __name__ == "__main__":
    rebuild()
