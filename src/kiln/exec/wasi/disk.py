"""The bytes of a guest's writable files, and the disk limit they share.

Invariants:
- ``Disk.used`` is the sum of the sizes of the guest's live writable files
  (outputs and ``/tmp``, removed ones still open included); a change that
  would take it past ``Disk.limit`` raises ``DiskLimit`` before anything
  changes. Sizes are apparent sizes: a hole counts, as it would be stored.
- The accounting depends only on what the guest did, so running out is as
  deterministic as running out of fuel.
- A file's bytes live in memory while it is at most ``SPILL_AT`` bytes and
  all files in memory together at most ``MEMORY_BUDGET``; past either they
  move to a scratch file on the store's disk, so a guest writing gigabytes
  (in one file or in many) does not make Kiln hold gigabytes. At most
  ``OPEN_FILES`` scratch files are open at once; the others are reopened by
  path when used.
"""

from __future__ import annotations

import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

from kiln.model.digest import Digest
from kiln.system.fsutil import remove_tree

SPILL_AT = 4 << 20
MEMORY_BUDGET = 64 << 20
OPEN_FILES = 64


class DiskLimit(Exception):
    """The guest's files would hold more than its disk limit. Raised from a
    host call, it ends the guest (as a trap does)."""

    def __init__(self, limit: int, wanted: int) -> None:
        super().__init__(limit, wanted)
        self.limit = limit
        self.wanted = wanted


class Disk:
    """What a guest's writable files share: the limit (None: none), the
    bytes in use, and where large files spill: a folder made in
    ``scratch_in`` when the first one does (None: nowhere, they stay in
    memory). ``close`` removes it."""

    def __init__(self, limit: int | None = None, scratch_in: Path | None = None) -> None:
        self.limit = limit
        self.used = 0
        self.in_memory = 0  # bytes of the files not spilled
        self._scratch_in = scratch_in
        self._scratch: Path | None = None  # made on first use: most runs never spill
        self._open: OrderedDict[Content, int] = OrderedDict()  # least recently used first

    def charge(self, delta: int) -> None:
        """Count ``delta`` more bytes in use (fewer if negative)."""
        if delta > 0 and self.limit is not None and self.used + delta > self.limit:
            raise DiskLimit(self.limit, self.used + delta)
        self.used += delta

    def can_spill(self) -> bool:
        return self._scratch_in is not None

    def new_scratch_file(self) -> str:
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="wasm-", dir=self._scratch_in))
        fd, path = tempfile.mkstemp(prefix="guest-", dir=self._scratch)
        os.close(fd)
        return path

    def fd(self, content: Content) -> int:
        """An open descriptor of ``content``'s scratch file."""
        fd = self._open.get(content)
        if fd is not None:
            self._open.move_to_end(content)
            return fd
        if len(self._open) >= OPEN_FILES:
            _, oldest = self._open.popitem(last=False)
            os.close(oldest)
        fd = self._open[content] = os.open(content.path, os.O_RDWR | os.O_CLOEXEC)  # type: ignore[arg-type]
        return fd

    def forget(self, content: Content) -> None:
        """Close ``content``'s scratch file if it is open."""
        fd = self._open.pop(content, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        """Close and remove every scratch file."""
        for fd in self._open.values():
            os.close(fd)
        self._open.clear()
        if self._scratch is not None:
            remove_tree(self._scratch)
            self._scratch = None


class Content:
    """One writable file's bytes: a ``bytearray`` while small, else the
    scratch file at ``path``. Every change in size is charged to ``disk``."""

    __slots__ = ("_disk", "_memory", "path", "size")

    def __init__(self, disk: Disk, data: bytes = b"") -> None:
        self._disk = disk
        self._memory: bytearray | None = bytearray()
        self.path: str | None = None
        self.size = 0
        if data:
            self.write(0, data)

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (fewer at the end)."""
        length = max(0, min(length, self.size - offset))
        if length == 0:
            return b""
        if self._memory is not None:
            return bytes(self._memory[offset : offset + length])
        return os.pread(self._disk.fd(self), length, offset)

    def write(self, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset``; a gap before it reads as zeros."""
        if not data:
            return
        end = offset + len(data)
        self._grow_to(end)
        if self._memory is not None:
            if offset > len(self._memory):
                self._memory.extend(bytes(offset - len(self._memory)))
            self._memory[offset:end] = data
            return
        _pwrite_all(self._disk.fd(self), data, offset)

    def resize(self, size: int) -> None:
        """Cut the file to ``size`` bytes or extend it with zeros."""
        if size > self.size:
            self._grow_to(size)
        else:
            self._disk.charge(size - self.size)
            if self._memory is not None:
                self._disk.in_memory -= self.size - size
            self.size = size
        if self._memory is not None:
            del self._memory[size:]
            self._memory.extend(bytes(size - len(self._memory)))
        else:
            os.ftruncate(self._disk.fd(self), size)

    def _grow_to(self, end: int) -> None:
        if end <= self.size:
            return
        disk, growth = self._disk, end - self.size
        disk.charge(growth)
        self.size = end
        if self._memory is None:
            return
        disk.in_memory += growth
        if disk.can_spill() and (end > SPILL_AT or disk.in_memory > MEMORY_BUDGET):
            self._spill()

    def _spill(self) -> None:
        self.path = self._disk.new_scratch_file()
        data, self._memory = self._memory, None
        self._disk.in_memory -= self.size
        fd = self._disk.fd(self)
        _pwrite_all(fd, data, 0)  # type: ignore[arg-type]
        os.ftruncate(fd, self.size)

    def release(self) -> None:
        """Give the bytes back: the file is gone and no descriptor refers to it."""
        self._disk.charge(-self.size)
        if self._memory is not None:
            self._disk.in_memory -= self.size
        self.size = 0
        self._memory = bytearray()
        if self.path is not None:
            self._disk.forget(self)
            os.unlink(self.path)
            self.path = None

    def store(self, batch: Any) -> Digest:
        """Add the bytes to a CAS batch without reading a large file into memory."""
        if self._memory is not None:
            return batch.add_bytes(bytes(self._memory))  # type: ignore[no-any-return]
        self._disk.forget(self)  # (all written: add_file reads it by path)
        return batch.add_file(self.path)  # type: ignore[no-any-return]


def _pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
