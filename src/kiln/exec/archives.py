"""Archives (tar, tar.gz/tgz, tar.bz2, tar.xz, zip) read into store trees,
deterministically and safely.

Nothing is extracted to disk: members are read into an in-memory folder
tree and stored as REAPI ``Directory`` messages, which keep only names
(sorted), contents, the executable bit and symlink targets, so timestamps,
owners, modes and member order cannot change the digest. Members that would
land outside the tree are refused: absolute paths, ``..``, symlinks whose
target is absolute or climbs out, hard links to files not in the archive,
and devices, fifos and sockets.
"""

from __future__ import annotations

import os
import posixpath
import stat
import tarfile
import zipfile
from pathlib import Path
from typing import Any

from kiln import errors
from kiln.digest import Digest
from kiln.exec.outputs import Child, StoredTree, TreeNode, store_tree


class UnsafeArchive(errors.KilnError):
    """An archive member that would escape the tree or is not a plain file."""


# A folder being built: name -> sub-folder (dict), file (digest, executable)
# or symlink target (str).
Folder = dict[str, Any]


def archive_tree(batch: Any, archive: Path, strip: int = 0, where: str = "") -> StoredTree:
    """Store ``archive``'s members (the first ``strip`` path components
    removed) as a tree."""
    root: Folder = {}
    label = where or archive.name
    if zipfile.is_zipfile(archive):
        _read_zip(batch, archive, root, strip, label)
    elif tarfile.is_tarfile(archive):
        _read_tar(batch, archive, root, strip, label)
    else:
        raise errors.KilnError(
            f"{label}: not an archive Kiln can unpack (tar, tar.gz, tgz, tar.bz2, tar.xz, zip)",
            hint="fetch it as a file (without unpacking)",
            exit_code=errors.ExitCode.FAILED,
        )
    return store_tree(batch, root, _children)


def _children(folder: Folder) -> list[tuple[str, Child]]:
    out: list[tuple[str, Child]] = []
    for name, node in sorted(folder.items()):
        out.append((name, TreeNode(node) if isinstance(node, dict) else node))
    return out


def _member_path(name: str, strip: int, label: str) -> str | None:
    """The member's path in the tree, or None when stripping leaves nothing."""
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(f"{label}: member {name!r} has an absolute path")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"{label}: member {name!r} climbs out of the tree with '..'")
    parts = parts[strip:]
    return "/".join(parts) if parts else None


def _check_link(path: str, target: str, label: str) -> None:
    if target.startswith("/"):
        raise UnsafeArchive(f"{label}: symlink {path!r} points at the absolute path {target!r}")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchive(f"{label}: symlink {path!r} -> {target!r} points outside the tree")


def _place(root: Folder, path: str, node: Any, label: str) -> None:
    *parents, name = path.split("/")
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


def _read_tar(batch: Any, archive: Path, root: Folder, strip: int, label: str) -> None:
    files: dict[str, tuple[Digest, bool]] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            path = _member_path(member.name, strip, label)
            if member.isdir():
                if path is not None:
                    _place(root, path, {}, label)
                continue
            if path is None:
                continue
            if member.issym():
                _check_link(path, member.linkname, label)
                _place(root, path, member.linkname, label)
            elif member.islnk():
                linked = _member_path(member.linkname, strip, label)
                if linked not in files:
                    raise UnsafeArchive(
                        f"{label}: hard link {path!r} points at {member.linkname!r}, "
                        "which is not an earlier file of the archive"
                    )
                files[path] = files[linked]
                _place(root, path, files[path], label)
            elif member.isfile():
                extracted = tar.extractfile(member)
                assert extracted is not None
                digest = batch.add_bytes(extracted.read())
                files[path] = (digest, bool(member.mode & 0o111))
                _place(root, path, files[path], label)
            else:
                raise UnsafeArchive(
                    f"{label}: member {member.name!r} is a device, fifo or other special file"
                )


def _read_zip(batch: Any, archive: Path, root: Folder, strip: int, label: str) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            path = _member_path(info.filename, strip, label)
            mode = info.external_attr >> 16
            if info.is_dir():
                if path is not None:
                    _place(root, path, {}, label)
                continue
            if path is None:
                continue
            if stat.S_ISLNK(mode):
                target = zf.read(info).decode()
                _check_link(path, target, label)
                _place(root, path, target, label)
            elif stat.S_IFMT(mode) in (0, stat.S_IFREG):  # many zips record no file type
                _place(root, path, (batch.add_bytes(zf.read(info)), bool(mode & 0o111)), label)
            else:
                raise UnsafeArchive(f"{label}: member {info.filename!r} is not a plain file")


def folder_tree(batch: Any, folder: Path, skip: frozenset[str] = frozenset()) -> StoredTree:
    """Store a host folder (its top-level names in ``skip`` left out) as a
    tree with the same safety rules."""
    root: Folder = {}
    for here, dirs, names in os.walk(folder):
        rel = os.path.relpath(here, folder)
        if rel == ".":
            dirs[:] = [d for d in dirs if d not in skip]
            names = [n for n in names if n not in skip]
        for name in [*names, *(d for d in dirs if os.path.islink(os.path.join(here, d)))]:
            path = name if rel == "." else f"{rel}/{name}"
            full = os.path.join(here, name)
            if os.path.islink(full):
                target = os.readlink(full)
                _check_link(path, target, str(folder))
                _place(root, path, target, str(folder))
            elif os.path.isfile(full):
                executable = bool(os.stat(full).st_mode & 0o111)
                _place(root, path, (batch.add_file(full), executable), str(folder))
        for d in dirs:
            if not os.path.islink(os.path.join(here, d)):
                _place(root, d if rel == "." else f"{rel}/{d}", {}, str(folder))
    return store_tree(batch, root, _children)
