"""Merkle trees of REAPI ``Directory`` messages: canonical form, walk, diff.

A tree is named by the digest of its root ``Directory``'s canonical bytes.
Canonical means: files, directories and symlinks each sorted by name (by
code point, which equals UTF-8 byte order), no name used twice in one
directory, every name a single valid path component.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError

from kiln import errors
from kiln.model.digest import Digest, canonical_bytes
from kiln.model.reapi import re_pb2

if TYPE_CHECKING:
    from kiln.store.cas import ContentStore


def check_name(name: str, where: str = "a directory") -> None:
    """Reject names that are not one path component of valid UTF-8."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise errors.bad_name(name, where)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise errors.bad_name(name, where + " (not valid UTF-8)") from None


def make_directory(
    files: list[tuple[str, Digest, bool]],
    directories: list[tuple[str, Digest]],
    symlinks: list[tuple[str, str]],
    where: str = "a directory",
) -> re_pb2.Directory:
    """Build a canonical ``Directory`` from (name, digest, executable) files,
    (name, digest) subdirectories and (name, target) symlinks."""
    names: set[str] = set()
    for name in [f[0] for f in files] + [d[0] for d in directories] + [s[0] for s in symlinks]:
        check_name(name, where)
        if name in names:
            raise errors.bad_name(name, where + " (duplicate)")
        names.add(name)
    return re_pb2.Directory(
        files=[
            re_pb2.FileNode(
                name=name,
                digest=re_pb2.Digest(hash=d.hash, size_bytes=d.size),
                is_executable=executable,
            )
            for name, d, executable in sorted(files)
        ],
        directories=[
            re_pb2.DirectoryNode(name=name, digest=re_pb2.Digest(hash=d.hash, size_bytes=d.size))
            for name, d in sorted(directories)
        ],
        symlinks=[re_pb2.SymlinkNode(name=name, target=t) for name, t in sorted(symlinks)],
    )


def check_canonical(directory: re_pb2.Directory, where: str = "a directory") -> None:
    """Raise ``KilnError`` unless ``directory`` follows REAPI's canonical rules.

    Used on every ``Directory`` read back from a store before it is trusted
    to name paths on disk.
    """
    seen: set[str] = set()
    for group in (directory.files, directory.directories, directory.symlinks):
        previous = None
        for node in group:
            check_name(node.name, where)
            if previous is not None and node.name <= previous:
                raise errors.bad_name(node.name, where + " (entries not sorted or repeated)")
            if node.name in seen:
                raise errors.bad_name(node.name, where + " (duplicate)")
            seen.add(node.name)
            previous = node.name
    for sym in directory.symlinks:
        if not sym.target or "\0" in sym.target:
            raise errors.bad_name(sym.name, where + " (empty or invalid symlink target)")


def directory_digest(directory: re_pb2.Directory) -> Digest:
    return Digest.of_bytes(canonical_bytes(directory))


def load_directory(cas: ContentStore, digest: Digest, where: str = "") -> re_pb2.Directory:
    """Read, parse and check a ``Directory`` blob; ``KilnError`` if absent."""
    data = cas.get_bytes(digest)
    if data is None:
        raise errors.digest_not_found(digest, "directory")
    try:
        directory = re_pb2.Directory.FromString(data)
    except DecodeError:
        directory = None
    # Canonical means re-encoding gives the very same bytes: this also turns
    # away file blobs that happen to parse.
    if directory is None or canonical_bytes(directory) != data:
        raise errors.not_a_directory(digest)
    check_canonical(directory, where or str(digest))
    return directory


@dataclass(frozen=True, slots=True)
class Entry:
    """One non-directory path in a tree (files and symlinks), for walks and diffs."""

    path: str
    kind: str  # "file" or "symlink"
    digest: Digest | None = None  # files only
    executable: bool = False  # files only
    target: str = ""  # symlinks only


def walk(cas: ContentStore, root: Digest, prefix: str = "") -> Iterator[tuple[str, Entry | None]]:
    """Yield (path, entry) for every file and symlink, and (path, None) for
    every directory, depth first in canonical order. The root is not yielded."""
    directory = load_directory(cas, root, prefix or "/")
    for f in directory.files:
        path = prefix + f.name
        yield path, Entry(path, "file", Digest.from_proto(f.digest), f.is_executable)
    for s in directory.symlinks:
        path = prefix + s.name
        yield path, Entry(path, "symlink", target=s.target)
    for d in directory.directories:
        path = prefix + d.name
        yield path, None
        yield from walk(cas, Digest.from_proto(d.digest), path + "/")


def tree_message(cas: ContentStore, root: Digest) -> re_pb2.Tree:
    """The REAPI ``Tree`` of a stored directory: its root and every
    directory below it, each once."""
    directories = [d for _, d in _directories(cas, root, skip_missing=False)]
    return re_pb2.Tree(root=directories[0], children=directories[1:])


def _directories(
    cas: ContentStore, root: Digest, skip_missing: bool, seen: set[Digest] | None = None
) -> Iterator[tuple[Digest, re_pb2.Directory | None]]:
    """Every directory of a tree once, root first, but none in ``seen`` (to
    which those yielded are added); ``None`` for one that is missing or
    corrupt when ``skip_missing`` (else ``KilnError``)."""
    stack = [root]
    seen = set() if seen is None else seen
    while stack:
        digest = stack.pop()
        if digest in seen:
            continue
        seen.add(digest)
        try:
            directory = load_directory(cas, digest)
        except errors.KilnError:
            if not skip_missing:
                raise
            yield digest, None
            continue
        yield digest, directory
        stack.extend(Digest.from_proto(d.digest) for d in directory.directories)


def reachable(
    cas: ContentStore, root: Digest, skip_missing: bool = False, seen: set[Digest] | None = None
) -> Iterator[Digest]:
    """Every blob a tree needs: its Directory blobs and its file blobs, each
    once. With ``skip_missing``, a missing or corrupt Directory blob hides
    only what is below it instead of raising ``KilnError``. Directories in
    ``seen`` are skipped with all below them, and those walked are added:
    walks of many trees sharing subtrees (GC's roots) read each once."""
    for digest, directory in _directories(cas, root, skip_missing, seen):
        yield digest
        if directory is not None:
            for f in directory.files:
                yield Digest.from_proto(f.digest)


@dataclass
class TreeDiff:
    """Paths that differ between two trees (directories included)."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def _entries(directory: re_pb2.Directory) -> dict[str, tuple[str, object]]:
    out: dict[str, tuple[str, object]] = {}
    for f in directory.files:
        out[f.name] = ("file", (f.digest.hash, f.digest.size_bytes, f.is_executable))
    for s in directory.symlinks:
        out[s.name] = ("symlink", s.target)
    for d in directory.directories:
        out[d.name] = ("dir", Digest.from_proto(d.digest))
    return out


def diff(cas: ContentStore, old: Digest, new: Digest) -> TreeDiff:
    """Compare two trees, skipping identical subtrees by digest (Merkle).

    A path whose kind changes (file to directory, say) is "changed"; the
    contents of added or removed directories are listed under them.
    """
    result = TreeDiff()
    _diff(cas, old, new, "", result)
    for paths in (result.added, result.removed, result.changed):
        paths.sort()
    return result


def _diff(cas: ContentStore, old: Digest, new: Digest, prefix: str, out: TreeDiff) -> None:
    if old == new:
        return
    a = _entries(load_directory(cas, old))
    b = _entries(load_directory(cas, new))
    for name in a.keys() | b.keys():
        path = prefix + name
        if name not in b:
            out.removed.append(path)
            if a[name][0] == "dir":
                out.removed.extend(p for p, _ in walk(cas, a[name][1], path + "/"))  # type: ignore[arg-type]
        elif name not in a:
            out.added.append(path)
            if b[name][0] == "dir":
                out.added.extend(p for p, _ in walk(cas, b[name][1], path + "/"))  # type: ignore[arg-type]
        elif a[name][0] == b[name][0] == "dir":
            _diff(cas, a[name][1], b[name][1], path + "/", out)  # type: ignore[arg-type]
        elif a[name] != b[name]:
            out.changed.append(path)


def graft(
    cas: ContentStore,
    put_bytes: Callable[[bytes], Digest],
    root: Digest | None,
    path: str,
    node: tuple[str, Digest | str, bool],
) -> Digest:
    """A new tree: ``root`` (or an empty tree) with ``node`` placed at ``path``.

    ``node`` is ("dir", tree digest, _), ("file", blob digest, executable) or
    ("symlink", target, _). Missing parent directories are created; putting
    something where a different entry already is raises ``KilnError``.
    ``put_bytes`` stores the new Directory blobs.
    """
    parts = [p for p in path.split("/") if p and p != "."]
    if not parts:
        if node[0] != "dir" or root is not None:
            raise errors.KilnError(
                f"cannot place {node[0]} at the root of a tree that already has content",
                exit_code=errors.ExitCode.BAD_INPUT,
            )
        return node[1]  # type: ignore[return-value]
    for name in parts:
        check_name(name, path)
    return _graft(cas, put_bytes, root, parts, node, path)


def _graft(
    cas: ContentStore,
    put_bytes: Callable[[bytes], Digest],
    root: Digest | None,
    parts: list[str],
    node: tuple[str, Digest | str, bool],
    full: str,
) -> Digest:
    entries = _entries(load_directory(cas, root)) if root is not None else {}
    name = parts[0]
    existing = entries.get(name)
    if len(parts) > 1:
        if existing is not None and existing[0] != "dir":
            raise _conflict(full)
        sub = existing[1] if existing is not None else None
        entries[name] = ("dir", _graft(cas, put_bytes, sub, parts[1:], node, full))  # type: ignore[arg-type]
    else:
        if existing is not None:
            raise _conflict(full)
        kind, value, executable = node
        entries[name] = (kind, (value.hash, value.size, executable) if kind == "file" else value)  # type: ignore[union-attr]
    files = [(n, Digest(v[0], v[1]), v[2]) for n, (k, v) in entries.items() if k == "file"]  # type: ignore[index]
    dirs = [(n, v) for n, (k, v) in entries.items() if k == "dir"]
    links = [(n, v) for n, (k, v) in entries.items() if k == "symlink"]
    return put_bytes(canonical_bytes(make_directory(files, dirs, links)))  # type: ignore[arg-type]


def _conflict(path: str) -> errors.KilnError:
    return errors.KilnError(
        f"two inputs claim the path {path!r}",
        hint="give each input its own path",
        exit_code=errors.ExitCode.BAD_INPUT,
        path=path,
    )


def lookup(cas: ContentStore, root: Digest, path: str) -> Entry | Digest | None:
    """What is at ``path`` in a tree: an ``Entry`` for a file or symlink, the
    Directory digest for a directory, ``None`` if nothing (symlinks are not
    followed)."""
    parts = [p for p in path.split("/") if p and p != "."]
    current = root
    for i, name in enumerate(parts):
        directory = load_directory(cas, current)
        last = i == len(parts) - 1
        sub = next((d for d in directory.directories if d.name == name), None)
        if sub is not None:
            current = Digest.from_proto(sub.digest)
            continue
        if not last:
            return None
        for f in directory.files:
            if f.name == name:
                return Entry(path, "file", Digest.from_proto(f.digest), f.is_executable)
        for s in directory.symlinks:
            if s.name == name:
                return Entry(path, "symlink", target=s.target)
        return None
    return current
