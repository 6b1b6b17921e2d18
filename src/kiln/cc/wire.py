"""The bytes between the native ``kiln-cc`` client and the cc service.

All numbers are little-endian; a string is a u32 length and that many bytes
(no NUL), decoded as file names are (``os.fsdecode``: bytes that are not
UTF-8 survive as surrogate escapes).

Request: ``b"KCC1"``; u32 count and that many strings (argv as the client
got it); string cwd; string launcher (the client's ``/proc/self/exe``); u32
umask; u32 count and that many strings ``NAME=VALUE`` (its environment).

Reply: u8 kind. Kind 0, ``Ran``: i32 exit code, string stdout, string
stderr. Kind 1, ``Exec``: u32 count and that many strings (argv, argv[0] an
absolute path).
"""

from __future__ import annotations

import os
import socket
import struct
import time

from kiln.cc.invocation import Exec, Invocation, Ran

MAGIC = b"KCC1"
REQUEST_LIMIT = 4 << 20  # bytes in one request
STRINGS_LIMIT = 100_000  # strings in one request
REQUEST_TIMEOUT_S = 10.0
RAN, EXEC = 0, 1

_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")


class WireError(Exception):
    """Bytes that are not a well-formed message (or one past the limits)."""


# ---------------------------------------------------------------- encoding


def _bytes(text: str) -> bytes:
    try:
        return os.fsencode(text)
    except UnicodeEncodeError as e:
        raise WireError(f"a string cannot be sent as bytes: {text!r}") from e


def _string(text: str | bytes) -> bytes:
    data = text if isinstance(text, bytes) else _bytes(text)
    return _U32.pack(len(data)) + data


def _strings(items: list[str]) -> bytes:
    return _U32.pack(len(items)) + b"".join(_string(s) for s in items)


def encode_request(inv: Invocation) -> bytes:
    """The request the native client would send for ``inv``."""
    env = [f"{name}={value}" for name, value in inv.env.items()]
    return b"".join(
        (
            MAGIC,
            _strings(list(inv.argv)),
            _string(inv.cwd),
            _string(inv.launcher),
            _U32.pack(inv.umask),
            _strings(env),
        )
    )


def encode_reply(reply: Ran | Exec) -> bytes:
    """The bytes of a reply; ``WireError`` for one the client could not
    carry out (an ``Exec`` without an absolute program, a NUL in an argument)."""
    if isinstance(reply, Ran):
        try:
            code = _I32.pack(reply.exit_code)
        except struct.error as e:
            raise WireError(f"exit code out of range: {reply.exit_code}") from e
        return bytes((RAN,)) + code + _string(reply.stdout) + _string(reply.stderr)
    if isinstance(reply, Exec):
        argv = [_bytes(a) for a in reply.argv]
        if not argv or not argv[0].startswith(b"/"):
            raise WireError(f"Exec needs an absolute program: {reply.argv!r}")
        if any(b"\0" in a for a in argv):
            raise WireError(f"an argument to Exec holds a NUL byte: {reply.argv!r}")
        return bytes((EXEC,)) + _U32.pack(len(argv)) + b"".join(_string(a) for a in argv)
    raise WireError(f"not a reply: {reply!r}")


# ---------------------------------------------------------------- decoding


class _Source:
    """Bytes taken in order, within the request limits."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken = 0
        self.counted = 0  # strings

    def _read(self, n: int) -> bytes:
        raise NotImplementedError

    def take(self, n: int) -> bytes:
        if self.taken + n > self.limit:
            raise WireError(f"message longer than {self.limit} bytes")
        data = self._read(n)
        self.taken += n
        return data

    def u32(self) -> int:
        return _U32.unpack(self.take(4))[0]

    def blob(self) -> bytes:
        return self.take(self.u32())

    def string(self) -> str:
        return os.fsdecode(self.blob())

    def strings(self) -> list[str]:
        count = self.u32()
        self.counted += count
        if self.counted > STRINGS_LIMIT:
            raise WireError(f"message with more than {STRINGS_LIMIT} strings")
        return [self.string() for _ in range(count)]


class _Buffer(_Source):
    def __init__(self, data: bytes, limit: int) -> None:
        super().__init__(limit)
        self.data = memoryview(data)

    def _read(self, n: int) -> bytes:
        if self.taken + n > len(self.data):
            raise WireError("message cut short")
        return bytes(self.data[self.taken : self.taken + n])

    def end(self) -> None:
        if self.taken != len(self.data):
            raise WireError(f"{len(self.data) - self.taken} bytes after the message")


class _Socket(_Source):
    """Reads in large pieces: a client sends nothing after its request."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__(REQUEST_LIMIT)
        self.sock = sock
        self.deadline = deadline
        self.pending = bytearray()

    def _read(self, n: int) -> bytes:
        while len(self.pending) < n:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise WireError("timed out reading the request")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(max(n - len(self.pending), 65536))
            except TimeoutError:
                raise WireError("timed out reading the request") from None
            except OSError as e:
                raise WireError(f"cannot read the request: {e}") from e
            if not chunk:
                raise WireError("message cut short")
            self.pending += chunk
        data = bytes(self.pending[:n])
        del self.pending[:n]
        return data


def _request(source: _Source) -> Invocation:
    if source.take(len(MAGIC)) != MAGIC:
        raise WireError("not a kiln-cc request (bad magic)")
    argv = source.strings()
    cwd = source.string()
    launcher = source.string()
    umask = source.u32()
    env: dict[str, str] = {}
    for entry in source.strings():
        name, eq, value = entry.partition("=")
        if eq:
            env.setdefault(name, value)  # the first one wins, as for getenv(3)
    return Invocation(argv=argv, cwd=cwd, env=env, launcher=launcher, umask=umask)


def decode_request(data: bytes) -> Invocation:
    """The ``Invocation`` in one whole request; ``WireError`` if malformed."""
    source = _Buffer(data, REQUEST_LIMIT)
    inv = _request(source)
    source.end()
    return inv


def read_request(sock: socket.socket, timeout: float = REQUEST_TIMEOUT_S) -> Invocation:
    """Read exactly one request from ``sock`` within ``timeout`` seconds;
    ``WireError`` if it is malformed, cut short, too large or too slow."""
    return _request(_Socket(sock, time.monotonic() + timeout))


def decode_reply(data: bytes) -> Ran | Exec:
    """The reply in ``data`` (what the client reads); ``WireError`` if malformed."""
    source = _Buffer(data, len(data))
    kind = source.take(1)[0]
    reply: Ran | Exec
    if kind == RAN:
        code = _I32.unpack(source.take(4))[0]
        stdout = source.blob()
        reply = Ran(exit_code=code, stdout=stdout, stderr=source.blob())
    elif kind == EXEC:
        reply = Exec(argv=source.strings())
    else:
        raise WireError(f"unknown reply kind {kind}")
    source.end()
    return reply
