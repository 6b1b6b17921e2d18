"""The guest's virtual file system.

Invariants:
- The input tree is read-only and read straight from the CAS: directories
  are expanded from their ``Directory`` blobs on first use, file contents
  are read from their blobs when opened. Nothing is staged.
- Writable nodes exist only at or below a declared output path and under
  ``/tmp``; their contents are ``Content`` (in memory while small, else in
  scratch files) and together stay within the ``Disk``'s limit.
- Everything the guest can observe is deterministic: listings are sorted by
  name, inode numbers are handed out in order of first lookup, and every
  timestamp is the contract's fixed epoch.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from kiln.exec.wasi import abi
from kiln.exec.wasi.disk import Content, Disk
from kiln.model.digest import Digest

MAX_SYMLINK_HOPS = 40


class WasiError(Exception):
    """A WASI errno to return to the guest."""

    def __init__(self, errno: int) -> None:
        super().__init__(errno)
        self.errno = errno


@dataclass(eq=False)
class Node:
    ino: int
    writable: bool


@dataclass(eq=False)
class File(Node):
    """An input file (``blob``, read from the store on first use into
    ``loaded``) or a writable one (``body``). ``linked``: in the tree (a
    removed file lives on while a descriptor refers to it)."""

    blob: Digest | None = None
    loaded: bytes | None = None
    body: Content | None = None
    linked: bool = True

    def size(self) -> int:
        return self.body.size if self.body is not None else self.blob.size  # type: ignore[union-attr]


@dataclass(eq=False)
class Symlink(Node):
    target: str = ""


@dataclass(eq=False)
class Dir(Node):
    """``writable``: the guest may create, remove and rename any entry here
    (output directories, /tmp and below). ``output_names``: names it may
    create here although the directory is not writable (file outputs)."""

    entries: dict[str, Node] | None = None  # None: not expanded from ``source`` yet
    source: Digest | None = None
    parent: Dir | None = field(default=None, repr=False)
    output_names: set[str] = field(default_factory=set)

    def may_change(self, name: str) -> bool:
        return self.writable or name in self.output_names


class FileSystem:
    """A tree of nodes rooted at ``root``; ``load_dir`` and ``load_blob``
    fetch input directories and file contents from the store."""

    def __init__(
        self,
        input_root: Digest | None,
        load_dir: Callable[[Digest], list[tuple[str, str, object]]],
        load_blob: Callable[[Digest], bytes],
        disk: Disk | None = None,
    ) -> None:
        self._inos = itertools.count(1)
        self._load_dir = load_dir
        self._load_blob = load_blob
        self.disk = disk or Disk()
        self.root = Dir(next(self._inos), writable=False, source=input_root)
        if input_root is None:
            self.root.entries = {}

    # ---------------------------------------------------------- construction

    def entries(self, d: Dir) -> dict[str, Node]:
        if d.entries is None:
            d.entries = {}
            for name, kind, payload in self._load_dir(d.source):  # type: ignore[arg-type]
                if kind == "dir":
                    node: Node = Dir(next(self._inos), writable=False, source=payload, parent=d)  # type: ignore[arg-type]
                elif kind == "file":
                    node = File(next(self._inos), writable=False, blob=payload)  # type: ignore[arg-type]
                else:
                    node = Symlink(next(self._inos), writable=False, target=payload)  # type: ignore[arg-type]
                d.entries[name] = node
        return d.entries

    def read(self, f: File, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes of ``f`` at ``offset``."""
        if f.body is not None:
            return f.body.read(offset, length)
        if f.loaded is None:
            f.loaded = self._load_blob(f.blob)  # type: ignore[arg-type]
        return f.loaded[offset : offset + length]

    def new_file(self, data: bytes = b"") -> File:
        """A writable file holding ``data``, not yet in the tree."""
        return File(next(self._inos), writable=True, body=Content(self.disk, data))

    def _dir_at(self, parts: list[str]) -> Dir:
        """The directory at ``parts``, created (read-only, empty) if absent."""
        d = self.root
        for name in parts:
            entries = self.entries(d)
            node = entries.get(name)
            if not isinstance(node, Dir):
                node = Dir(next(self._inos), writable=False, parent=d, entries={})
                entries[name] = node
            d = node
        return d

    def allow_dir(self, path: str) -> Dir:
        """Make ``path`` a writable directory (an output directory or /tmp),
        replacing whatever the input tree had there."""
        parts = [p for p in path.split("/") if p]
        parent = self._dir_at(parts[:-1])
        d = Dir(next(self._inos), writable=True, parent=parent, entries={})
        self.entries(parent)[parts[-1]] = d
        return d

    def allow_file(self, path: str) -> None:
        """Let the guest create (or replace) the one file at ``path``."""
        parts = [p for p in path.split("/") if p]
        parent = self._dir_at(parts[:-1])
        parent.output_names.add(parts[-1])
        self.entries(parent).pop(parts[-1], None)

    def new_ino(self) -> int:
        return next(self._inos)

    # -------------------------------------------------------------- lookups

    def resolve(self, start: Dir, path: str, follow: bool) -> tuple[Dir, str, Node | None]:
        """Resolve ``path`` from ``start``: (parent dir, last name, node or None).

        ``..`` never leaves the root; absolute symlink targets start at the
        root. The last component is followed if it is a symlink and
        ``follow`` is set.
        """
        if not path:
            raise WasiError(abi.ENOENT)
        if "\0" in path:
            raise WasiError(abi.EINVAL)
        hops = 0
        d = self.root if path.startswith("/") else start
        parts = [p for p in path.split("/") if p and p != "."]
        if not parts:
            return d, ".", d
        while True:
            name = parts.pop(0)
            if name == "..":
                d = d.parent or d
                if not parts:
                    return d, ".", d
                continue
            node = self.entries(d).get(name)
            if isinstance(node, Symlink) and (parts or follow):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise WasiError(abi.ELOOP)
                target = node.target
                if target.startswith("/"):
                    d = self.root
                parts = [p for p in target.split("/") if p and p != "."] + parts
                if not parts:
                    return d, ".", d
                continue
            if not parts:
                return d, name, node
            if node is None:
                raise WasiError(abi.ENOENT)
            if not isinstance(node, Dir):
                raise WasiError(abi.ENOTDIR)
            d = node


def filetype(node: Node) -> int:
    if isinstance(node, Dir):
        return abi.FILETYPE_DIRECTORY
    if isinstance(node, Symlink):
        return abi.FILETYPE_SYMBOLIC_LINK
    return abi.FILETYPE_REGULAR_FILE
