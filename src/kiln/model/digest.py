"""SHA-256 content digests (REAPI ``Digest``: hash + size) and hashing.

A ``Digest`` is printed one way everywhere, ``<64 lowercase hex>/<size>``,
and is validated when constructed, so code never handles digest strings.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from kiln import errors

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from kiln.model.reapi import re_pb2

HASH_NAME = "sha256"
HEX_LEN = 64
_HEX = frozenset("0123456789abcdef")

# Files at least this large are hashed with a reader thread that overlaps
# reading the next chunk with hashing the current one (hashlib releases the
# GIL); this reaches the CPU's raw SHA-256 throughput, a plain loop about 90%.
PIPELINE_THRESHOLD = 8 << 20
CHUNK = 1 << 20


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """A SHA-256 hash in lowercase hex and the size in bytes of its content."""

    hash: str
    size: int

    def __post_init__(self) -> None:
        if len(self.hash) != HEX_LEN or not _HEX.issuperset(self.hash):
            raise ValueError(f"not a lowercase SHA-256 hex string: {self.hash!r}")
        if self.size < 0:
            raise ValueError(f"negative size: {self.size}")

    def __str__(self) -> str:
        return f"{self.hash}/{self.size}"

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse ``<hex>/<size>``; raises ``KilnError`` with a hint when malformed."""
        hex_part, sep, size_part = text.strip().partition("/")
        if not sep:
            raise errors.malformed_digest(text, "missing '/<size>'")
        hex_part = hex_part.lower()
        if len(hex_part) != HEX_LEN or not _HEX.issuperset(hex_part):
            raise errors.malformed_digest(text, "the hash must be 64 hex characters")
        if not (size_part.isascii() and size_part.isdigit()):  # no '٣' or '²'
            raise errors.malformed_digest(text, "the size must be a non-negative integer")
        return cls(hex_part, int(size_part))

    @classmethod
    def of_bytes(cls, data: bytes | bytearray | memoryview) -> Digest:
        digest = object.__new__(cls)  # (a hash made here needs no checking)
        object.__setattr__(digest, "hash", hashlib.sha256(data).hexdigest())
        object.__setattr__(digest, "size", len(data))
        return digest

    @classmethod
    def of_message(cls, message: Message) -> Digest:
        """Digest of a protobuf message's canonical (deterministic) encoding."""
        return cls.of_bytes(canonical_bytes(message))

    @classmethod
    def of_file(cls, path: str | os.PathLike[str]) -> Digest:
        """Hash a file by streaming it; large files never sit in memory whole."""
        with open(path, "rb", buffering=0) as f:
            return hash_stream(f)

    def to_proto(self) -> re_pb2.Digest:
        from kiln.model.reapi import re_pb2  # (start-up: protobuf; digests are on every path)

        return re_pb2.Digest(hash=self.hash, size_bytes=self.size)

    @classmethod
    def from_proto(cls, proto: re_pb2.Digest) -> Digest:
        return cls(proto.hash, proto.size_bytes)


EMPTY = Digest(hashlib.sha256(b"").hexdigest(), 0)


def canonical_bytes(message: Message) -> bytes:
    """REAPI's canonical encoding: deterministic serialization of the message."""
    return message.SerializeToString(deterministic=True)


def hash_stream(f: BinaryIO) -> Digest:
    """Digest of everything readable from an unbuffered binary stream."""
    try:
        size_hint = os.fstat(f.fileno()).st_size
    except (OSError, AttributeError, ValueError):
        size_hint = 0
    if size_hint >= PIPELINE_THRESHOLD:
        return _hash_pipelined(f)
    h = hashlib.sha256()
    total = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while n := f.readinto(buf):
        h.update(view[:n])
        total += n
    return Digest(h.hexdigest(), total)


def _hash_pipelined(f: BinaryIO) -> Digest:
    """Hash with a reader thread filling one buffer while another is hashed."""
    import queue  # (start-up: large files only)
    import threading

    free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
    full: queue.Queue[tuple[bytearray, int] | BaseException] = queue.Queue(maxsize=2)
    for _ in range(3):
        free.put(bytearray(CHUNK))

    def read() -> None:
        try:
            while True:
                buf = free.get()
                n = f.readinto(buf) or 0
                full.put((buf, n))
                if n == 0:
                    return
        except BaseException as e:  # handed to the hashing thread
            full.put(e)

    reader = threading.Thread(target=read, name="kiln-hash-reader", daemon=True)
    reader.start()
    h = hashlib.sha256()
    total = 0
    try:
        while True:
            item = full.get()
            if isinstance(item, BaseException):
                raise item
            buf, n = item
            if n == 0:
                break
            h.update(memoryview(buf)[:n])
            total += n
            free.put(buf)
    finally:
        reader.join()
    return Digest(h.hexdigest(), total)
