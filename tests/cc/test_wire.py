"""The launcher's wire format: round trips, and malformed or hostile bytes
refused with ``WireError`` (never another exception, never a hang)."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiln.cc.invocation import Exec, Invocation, Ran
from kiln.cc.wire import (
    MAGIC,
    REQUEST_LIMIT,
    STRINGS_LIMIT,
    WireError,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    read_request,
)

# What a C program can be given: any bytes but NUL, as the client decodes them.
texts = st.binary(max_size=40).map(lambda b: os.fsdecode(b.replace(b"\0", b"")))
names = texts.filter(lambda t: "=" not in t)
invocations = st.builds(
    Invocation,
    argv=st.lists(texts, max_size=8),
    cwd=texts,
    env=st.dictionaries(names, texts, max_size=8),
    launcher=texts,
    umask=st.integers(0, 0o777),
)


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def string(data: bytes) -> bytes:
    return u32(len(data)) + data


def request(argv: list[bytes], env: list[bytes], cwd: bytes = b"/w") -> bytes:
    return (
        MAGIC + u32(len(argv)) + b"".join(map(string, argv)) + string(cwd) + string(b"/l")
        + u32(0o22) + u32(len(env)) + b"".join(map(string, env))
    )  # fmt: skip


@given(invocations)
def test_requests_round_trip(inv: Invocation) -> None:
    assert decode_request(encode_request(inv)) == inv


@given(st.integers(-(2**31), 2**31 - 1), st.binary(), st.binary())
def test_ran_replies_round_trip(code: int, out: bytes, err: bytes) -> None:
    reply = Ran(code, out, err)
    assert decode_reply(encode_reply(reply)) == reply


@given(st.lists(texts, max_size=8))
def test_exec_replies_round_trip(args: list[str]) -> None:
    reply = Exec(["/usr/bin/cc", *args])
    assert decode_reply(encode_reply(reply)) == reply


def test_bytes_that_are_not_utf8_survive() -> None:
    raw = request([b"gcc", b"-DX=\xff\xfe"], [b"A=\x80"], cwd=b"/tmp/\xe9")
    inv = decode_request(raw)
    assert os.fsencode(inv.argv[1]) == b"-DX=\xff\xfe"
    assert os.fsencode(inv.cwd) == b"/tmp/\xe9"
    assert os.fsencode(inv.env["A"]) == b"\x80"
    assert encode_request(inv) == raw


def test_the_first_of_two_variables_wins_and_entries_without_equals_are_skipped() -> None:
    inv = decode_request(request([b"cc"], [b"A=1", b"A=2", b"junk", b"B==x"]))
    assert inv.env == {"A": "1", "B": "=x"}


@given(invocations, st.data())
def test_every_truncation_is_refused(inv: Invocation, data: st.DataObject) -> None:
    raw = encode_request(inv)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(WireError):
        decode_request(raw[:cut])


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"KCC2" + u32(0),
        b"GET / HTTP/1.1\r\n\r\n",
        MAGIC + u32(1) + u32(0xFFFFFFFF) + b"gcc",  # a string longer than what follows
        MAGIC + u32(0xFFFFFFFF),  # billions of strings
        MAGIC + u32(STRINGS_LIMIT + 1) + b"\0" * 4 * (STRINGS_LIMIT + 1),
        MAGIC + u32(1) + string(b"x" * (REQUEST_LIMIT + 1)),
        request([b"cc"], []) + b"trailing",
    ],
    ids=["empty", "magic", "http", "lying", "count", "strings", "size", "trailing"],
)
def test_malformed_requests_are_refused(raw: bytes) -> None:
    with pytest.raises(WireError):
        decode_request(raw)


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x02", b"\x00\x01\x00", b"\x00" + bytes(4) + u32(5) + b"abc", b"\x01" + u32(1)],
)
def test_malformed_replies_are_refused(raw: bytes) -> None:
    with pytest.raises(WireError):
        decode_reply(raw)


@pytest.mark.parametrize(
    "reply",
    [Exec([]), Exec(["cc", "-c"]), Exec(["/bin/cc", "a\0b"]), Ran(2**31), Ran(-(2**31) - 1)],
)
def test_replies_the_client_cannot_carry_out_are_not_encoded(reply: Ran | Exec) -> None:
    with pytest.raises(WireError):
        encode_reply(reply)


def test_strings_python_cannot_send_as_bytes_are_refused() -> None:
    with pytest.raises(WireError):
        encode_request(Invocation(["cc", "\ud800"], "/", {}))


# ---------------------------------------------------------------- sockets


@contextlib.contextmanager
def sent(data: bytes, then_close: bool = True) -> Iterator[socket.socket]:
    """The reading end of a socket pair ``data`` is written to (in pieces)."""
    ours, theirs = socket.socketpair()

    def write() -> None:
        with contextlib.suppress(OSError):  # (the reader may stop first)
            for i in range(0, len(data), 7000):
                theirs.sendall(data[i : i + 7000])
        if then_close:
            theirs.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    with ours, theirs:
        yield ours
        ours.close()
        writer.join()


def test_a_request_is_read_from_a_socket_in_pieces() -> None:
    env = {"PATH": "/bin", "X": "é" * 50_000}
    inv = Invocation(["gcc", "-c", "x.c"], "/src", env, "/l", 0o27)
    with sent(encode_request(inv), then_close=False) as sock:
        assert read_request(sock, timeout=5) == inv


def test_a_request_cut_short_on_a_socket_is_refused() -> None:
    raw = encode_request(Invocation(["gcc"], "/", {"A": "b"}))
    with sent(raw[:-1]) as sock, pytest.raises(WireError, match="cut short"):
        read_request(sock, timeout=5)


def test_a_client_that_stops_sending_times_out() -> None:
    raw = encode_request(Invocation(["gcc"], "/", {}))
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(raw[:10])
        with pytest.raises(WireError, match="timed out"):
            read_request(ours, timeout=0.2)


def test_a_huge_request_on_a_socket_is_refused_before_it_is_all_read() -> None:
    raw = MAGIC + u32(1) + u32(REQUEST_LIMIT) + b"x" * 1000
    with sent(raw, then_close=False) as sock, pytest.raises(WireError, match="longer"):
        read_request(sock, timeout=5)
