"""Archives (tar, tar.gz/tgz, tar.bz2, tar.xz, zip) read into store trees,
deterministically, safely and in bounded memory.

Nothing is extracted to the host: members are streamed into the store (a
large one through a scratch file, never whole in memory) and recorded in
an in-memory folder tree of names, stored as REAPI ``Directory`` messages,
which keep only names (sorted), contents, the executable bit and symlink
targets, so timestamps, owners, modes and member order cannot change the
digest. Refused: members that would land outside the tree (absolute paths,
``..``), symlinks that lead outside it once resolved through the tree's own
folders and links (``kiln.exec.tree_links``), hard links to files not in the
archive, devices, fifos and sockets; and archives past the limits of
``kiln.config.ArchiveLimits``: the unpacked size (a tar's whole
uncompressed stream, headers included, counted as it is decompressed; a
zip's declared member sizes, all counted before any member is read), its
ratio to the archive's size, and the number of members.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from kiln import errors
from kiln.config import RATIO_FLOOR, ArchiveLimits
from kiln.exec.output_trees import MAX_TREE_DEPTH, Child, StoredTree, TreeNode, store_tree
from kiln.exec.tree_links import Folder, escaping_links
from kiln.model.digest import Digest

# Members up to this size are read into memory whole; larger ones are
# streamed through a scratch file.
IN_MEMORY = 16 << 20
MAX_LINK_TARGET = 4095  # bytes (Linux's PATH_MAX, less the NUL)
# tarfile holds a member's headers (pax records, GNU long names) in memory
# while it reads them: one member's may take this many bytes.
MAX_HEADERS = 16 << 20
_COMPRESSIONS = ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open), (b"\xfd7zXZ\x00", lzma.open))
# What a damaged or truncated archive raises while it is read.
_CORRUPT = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    gzip.BadGzipFile,
)


class _Unpacking:
    """One archive being read: the tree so far, where large members are
    spooled, and the running totals checked against the limits."""

    def __init__(self, batch: Any, archive: Path, label: str, limits: ArchiveLimits,
                 scratch: Path) -> None:  # fmt: skip
        self.batch = batch
        self.label = label
        self.root: Folder = {}
        self._limits = limits
        self._scratch = scratch
        self._archive_size = max(archive.stat().st_size, 1)
        self._bytes = 0
        self._members = 0

    def count_member(self) -> None:
        """Count one more member; refuse the archive past ``max_members``."""
        self._members += 1
        if self._members > self._limits.max_members:
            self._refuse(f"has more than {self._limits.max_members} members", "max-members")

    def count_bytes(self, size: int) -> None:
        """Count ``size`` more unpacked bytes; refuse the archive past
        ``max_bytes`` or past ``max_ratio`` times its own size."""
        self._bytes += size
        limits = self._limits
        if self._bytes > limits.max_bytes:
            self._refuse(f"unpacks to more than {limits.max_bytes >> 20} MiB",
                         "max-unpacked-mib")  # fmt: skip
        if self._bytes > max(RATIO_FLOOR, limits.max_ratio * self._archive_size):
            self._refuse(
                f"unpacks to more than {limits.max_ratio} times its own size "
                f"({self._archive_size} bytes)", "max-ratio",
            )  # fmt: skip

    def _refuse(self, problem: str, setting: str) -> None:
        raise errors.archive_over_limit(self.label, problem, setting, self._limits.config)

    def add(self, reader: IO[bytes], size: int) -> Digest:
        """Store a member's ``size`` bytes read from ``reader``."""
        if size <= IN_MEMORY:
            return self.batch.add_bytes(reader.read())
        with tempfile.NamedTemporaryFile(dir=self._scratch, prefix="member-") as spool:
            shutil.copyfileobj(reader, spool, 1 << 20)
            spool.flush()
            return self.batch.add_file(spool.name)

    def place(self, path: str, node: Any) -> None:
        _place(self.root, path, node, self.label)

    def stored(self) -> StoredTree:
        """Check the finished tree's symlinks and store it."""
        return _store_checked(self.batch, self.root, self.label)


def archive_tree(
    batch: Any, archive: Path, strip: int = 0, where: str = "", *,
    limits: ArchiveLimits, scratch: Path,
) -> StoredTree:  # fmt: skip
    """Store ``archive``'s members (the first ``strip`` path components
    removed) as a tree, spooling large members through files in
    ``scratch`` (a folder on the store's disk)."""
    label = where or archive.name
    unpacking = _Unpacking(batch, archive, label, limits, scratch)
    read = _read_zip if zipfile.is_zipfile(archive) else _read_tar
    try:
        read(unpacking, archive, strip)
    except _CORRUPT as e:
        raise errors.unreadable_archive(label, str(e) or type(e).__name__) from None
    return unpacking.stored()


def _store_checked(batch: Any, root: Folder, label: str) -> StoredTree:
    escaping = next(escaping_links(root), None)
    if escaping is not None:
        raise errors.archive_link_escapes(label, *escaping)
    return store_tree(batch, root, _children)


def _children(folder: Folder) -> list[tuple[str, Child]]:
    out: list[tuple[str, Child]] = []
    for name, node in sorted(folder.items()):
        out.append((name, TreeNode(node) if isinstance(node, dict) else node))
    return out


def _member_path(name: str, strip: int, label: str) -> str | None:
    """The member's path in the tree, or None when stripping leaves nothing."""
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise errors.unsafe_archive(label, f"member {name!r} has an absolute path")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise errors.unsafe_archive(label, f"member {name!r} climbs out of the tree with '..'")
    parts = parts[strip:]
    return "/".join(parts) if parts else None


def _place(root: Folder, path: str, node: Any, label: str) -> None:
    *parents, name = path.split("/")
    if len(parents) > MAX_TREE_DEPTH:
        raise errors.unsafe_archive(
            label, f"{path[:200]!r}... is more than {MAX_TREE_DEPTH} folders deep"
        )
    folder = root
    for i, part in enumerate(parents):
        sub = folder.setdefault(part, {})
        if not isinstance(sub, dict):
            raise errors.KilnError(
                f"{label}: {'/'.join(parents[: i + 1])!r} is both a file and a folder",
                exit_code=errors.ExitCode.FAILED,
            )
        folder = sub
    if isinstance(node, dict):
        existing = folder.setdefault(name, node)
        if not isinstance(existing, dict):
            raise errors.KilnError(
                f"{label}: {path!r} is both a file and a folder", exit_code=errors.ExitCode.FAILED
            )
    elif isinstance(folder.get(name), dict):
        raise errors.KilnError(
            f"{label}: {path!r} is both a folder and a file", exit_code=errors.ExitCode.FAILED
        )
    else:
        folder[name] = node  # a later member replaces an earlier one, as tar does


class _TarStream(io.RawIOBase):
    """An archive's uncompressed tar stream, every byte counted against the
    limits as tarfile reads it. While ``header_room`` is set (tarfile reading
    one member's headers, which it keeps in memory: pax records, long
    names), it may read only that many bytes."""

    def __init__(self, inner: IO[bytes], unpacking: _Unpacking) -> None:
        super().__init__()
        self._inner = inner
        self._unpacking = unpacking
        self.header_room: int | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._inner.readinto(buffer)  # type: ignore[attr-defined]
        self._unpacking.count_bytes(n)
        if self.header_room is not None:
            self.header_room -= n
            if self.header_room < 0:
                raise errors.unsafe_archive(
                    self._unpacking.label, f"a member's headers exceed {MAX_HEADERS >> 20} MiB"
                )
        return n

    def members(self) -> Iterator[tuple[tarfile.TarInfo, IO[bytes] | None]]:
        """The tar's members in order, with a reader of each regular file's
        bytes (to be read before the next member)."""
        self.header_room = MAX_HEADERS
        # Sequential ("r|"): nothing seeks back; opening reads the first member.
        with tarfile.open(fileobj=self, mode="r|", bufsize=1 << 20) as tar:
            while True:
                self.header_room = MAX_HEADERS
                member = tar.next()
                self.header_room = None
                if member is None:
                    return
                tar.members.clear()  # (tarfile keeps every header read; this keeps none)
                yield member, tar.extractfile(member) if member.isfile() else None


def _uncompressed(archive: Path) -> IO[bytes]:
    """The archive's bytes, decompressed by its magic number if compressed."""
    with open(archive, "rb") as f:
        magic = f.read(6)
    for prefix, opener in _COMPRESSIONS:
        if magic.startswith(prefix):
            return opener(archive, "rb")  # type: ignore[no-any-return]
    return open(archive, "rb")


def _read_tar(unpacking: _Unpacking, archive: Path, strip: int) -> None:
    files: dict[str, tuple[Digest, bool]] = {}
    with _uncompressed(archive) as raw:
        for member, data in _TarStream(raw, unpacking).members():
            _read_tar_member(unpacking, member, data, strip, files)


def _read_tar_member(
    unpacking: _Unpacking, member: tarfile.TarInfo, data: IO[bytes] | None, strip: int,
    files: dict[str, tuple[Digest, bool]],
) -> None:  # fmt: skip
    """Place one member in the tree. A regular file's ``data`` is read here,
    also when stripped away, so tarfile never skips data with headers' room."""
    label = unpacking.label
    unpacking.count_member()
    path = _member_path(member.name, strip, label)
    if data is not None:
        if path is None:
            while data.read(1 << 20):
                pass
            return
        files[path] = (unpacking.add(data, member.size), bool(member.mode & 0o111))
        unpacking.place(path, files[path])
    elif path is None:
        return
    elif member.isdir():
        unpacking.place(path, {})
    elif member.issym():
        unpacking.place(path, member.linkname)
    elif member.islnk():
        linked = _member_path(member.linkname, strip, label)
        if linked not in files:
            raise errors.unsafe_archive(
                label, f"hard link {path!r} points at {member.linkname!r}, "
                "which is not an earlier file of the archive",
            )  # fmt: skip
        files[path] = files[linked]
        unpacking.place(path, files[path])
    else:
        raise errors.unsafe_archive(
            label, f"member {member.name!r} is a device, fifo or other special file"
        )


def _read_zip(unpacking: _Unpacking, archive: Path, strip: int) -> None:
    label = unpacking.label
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:  # all declared sizes first: a bomb is refused before any read
            unpacking.count_member()
            unpacking.count_bytes(info.file_size)
        for info in members:
            path = _member_path(info.filename, strip, label)
            mode = info.external_attr >> 16
            if info.is_dir():
                if path is not None:
                    unpacking.place(path, {})
                continue
            if path is None:
                continue
            if stat.S_ISLNK(mode):
                unpacking.place(path, _zip_link_target(zf, info, label))
            elif stat.S_IFMT(mode) in (0, stat.S_IFREG):  # many zips record no file type
                with zf.open(info) as data:
                    unpacking.place(path, (unpacking.add(data, info.file_size), bool(mode & 0o111)))
            else:
                raise errors.unsafe_archive(label, f"member {info.filename!r} is not a plain file")


def _zip_link_target(zf: zipfile.ZipFile, info: zipfile.ZipInfo, label: str) -> str:
    with zf.open(info) as member:
        target = member.read(MAX_LINK_TARGET + 1)
    try:
        if len(target) <= MAX_LINK_TARGET:
            return target.decode()
    except UnicodeDecodeError:
        pass
    raise errors.unsafe_archive(label, f"symlink {info.filename!r} has no usable target")


def folder_tree(batch: Any, folder: Path, skip: frozenset[str] = frozenset()) -> StoredTree:
    """Store a host folder (its top-level names in ``skip`` left out) as a
    tree with the same safety rules."""
    root: Folder = {}
    label = str(folder)
    for here, dirs, names in os.walk(folder):
        rel = os.path.relpath(here, folder)
        if rel == ".":
            dirs[:] = [d for d in dirs if d not in skip]
            names = [n for n in names if n not in skip]
        for name in [*names, *(d for d in dirs if os.path.islink(os.path.join(here, d)))]:
            path = name if rel == "." else f"{rel}/{name}"
            full = os.path.join(here, name)
            if os.path.islink(full):
                _place(root, path, os.readlink(full), label)
            elif os.path.isfile(full):
                executable = bool(os.stat(full).st_mode & 0o111)
                _place(root, path, (batch.add_file(full), executable), label)
        for d in dirs:
            if not os.path.islink(os.path.join(here, d)):
                _place(root, d if rel == "." else f"{rel}/{d}", {}, label)
    return _store_checked(batch, root, label)
