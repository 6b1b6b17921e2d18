"""Collecting a native step's outputs from its host work folder.

Everything in the work folder was made by the step and is hostile: names,
symlinks, file types. Collection therefore never resolves a path on the
host. Every folder is opened relative to the work folder one component at
a time with ``O_NOFOLLOW``, every file is opened with ``O_NOFOLLOW`` and
checked to be a regular file on the open descriptor, and symlinks are
stored as symlinks (their target is text, never followed).

One kind of symlink is read: the links Kiln itself puts in the work folder
for the step's inputs (``/kiln/inputs/<path>``, see ``native._link_inputs``).
Such a link left at an output stands for the input itself, so it is looked
up in the input tree *in the store* (never on the host); a target that
leaves the input tree (``..``) is refused.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln import errors
from kiln.exec.output_trees import Child, TreeNode, store_tree
from kiln.model.digest import Digest
from kiln.model.tree import Entry, load_directory, lookup
from kiln.system.fsutil import FOLDER_FLAGS, NotAFolder, open_folder_beneath

if TYPE_CHECKING:
    from kiln.model.reapi import re_pb2
    from kiln.store.cas import ContentStore

INPUTS_SEEN_AT = "/kiln/inputs"
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def output_refused(output: str, reason: str) -> errors.KilnError:
    return errors.KilnError(
        f"output {output!r}: {reason}; refused",
        hint="a step's outputs must be files, folders and symlinks inside its own work folder",
        exit_code=errors.ExitCode.FAILED,
        output=output,
    )


@dataclass(frozen=True)
class _WorkFolder:
    """A folder under the work folder, by its path components."""

    parts: tuple[str, ...]


@dataclass(frozen=True)
class _InputFolder:
    """A folder of the input tree, by its ``Directory`` digest."""

    digest: Digest


def collect_host_outputs(
    batch: Any,
    cas: ContentStore,
    work: Path,
    input_root: Digest,
    paths: list[str],
    result: re_pb2.ActionResult,
) -> None:
    """Store what a native step left at each of ``paths`` (relative) under
    ``work`` into ``result``; a missing output is left out. Raises
    ``KilnError`` naming the output for anything that is not a file, folder
    or symlink inside ``work``, or a link to an input that leaves the inputs."""
    top = os.open(work, FOLDER_FLAGS)
    try:
        collector = _Collector(batch, cas, top, input_root)
        for path in paths:
            collector.output(path, result)
    finally:
        os.close(top)


class _Collector:
    def __init__(self, batch: Any, cas: ContentStore, top: int, input_root: Digest) -> None:
        self._batch = batch
        self._cas = cas
        self._top = top
        self._input_root = input_root
        self._output = ""  # the output being collected, for errors

    def output(self, path: str, result: re_pb2.ActionResult) -> None:
        self._output = path
        parts = tuple(p for p in path.split("/") if p and p != ".")
        if not parts or ".." in parts:
            raise output_refused(path, "the path leaves the work folder")
        try:
            parent = self._open_folder(parts[:-1])
        except FileNotFoundError:
            return
        with _closing(parent):
            try:
                st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                return
            child = self._child(parent, parts[-1], st, parts)
        if isinstance(child, str):
            result.output_symlinks.add(path=path, target=child)
        elif isinstance(child, tuple):
            digest, executable = child
            result.output_files.add(path=path, digest=digest.to_proto(), is_executable=executable)
        else:
            stored = store_tree(self._batch, child.node, self._children)
            result.output_directories.add(path=path, tree_digest=stored.tree.to_proto())

    def _open_folder(self, parts: tuple[str, ...]) -> int:
        """The folder ``parts`` below the work folder, reached without
        following any symlink (``FileNotFoundError`` if missing)."""
        try:
            return open_folder_beneath(self._top, parts)
        except NotAFolder as e:
            raise output_refused(self._output, str(e)) from None

    def _child(self, folder: int, name: str, st: os.stat_result, parts: tuple[str, ...]) -> Child:
        """What the entry ``name`` of ``folder`` (at ``parts``) becomes in a tree."""
        if stat.S_ISLNK(st.st_mode):
            return self._link(os.readlink(name, dir_fd=folder))
        if stat.S_ISDIR(st.st_mode):
            return TreeNode(_WorkFolder(parts))
        if stat.S_ISREG(st.st_mode):
            return self._file(folder, name)
        where = "/".join(parts)
        raise output_refused(self._output, f"{where!r} is a {_kind(st.st_mode)}")

    def _file(self, folder: int, name: str) -> tuple[Digest, bool]:
        fd = os.open(name, _FILE_FLAGS, dir_fd=folder)
        with _closing(fd):
            st = os.fstat(fd)  # the file actually opened, not the name's earlier state
            if not stat.S_ISREG(st.st_mode):
                raise output_refused(self._output, f"{name!r} changed while it was read")
            return self._batch.add_file(fd), bool(st.st_mode & stat.S_IXUSR)

    def _link(self, target: str) -> Child:
        """A symlink: itself, unless it is one of the links to an input."""
        if not target.startswith(INPUTS_SEEN_AT + "/"):
            return target
        rest = posixpath.normpath(target[len(INPUTS_SEEN_AT) + 1 :])
        if rest == ".." or rest.startswith(("../", "/")):
            raise output_refused(self._output, f"its link {target!r} leaves the step's inputs")
        found = lookup(self._cas, self._input_root, rest) if rest != "." else self._input_root
        if isinstance(found, Digest):
            return TreeNode(_InputFolder(found))
        if isinstance(found, Entry) and found.kind == "file":
            assert found.digest is not None
            return found.digest, found.executable
        if isinstance(found, Entry):
            return found.target  # an input symlink: the same symlink
        return target  # nothing there (or reached through a link): a dangling link

    def _children(self, folder: _WorkFolder | _InputFolder) -> list[tuple[str, Child]]:
        if isinstance(folder, _InputFolder):
            return list(_input_children(self._cas, folder.digest))
        fd = self._open_folder(folder.parts)
        with _closing(fd):
            out: list[tuple[str, Child]] = []
            with os.scandir(fd) as entries:
                names = sorted(e.name for e in entries)
            for name in names:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                out.append((name, self._child(fd, name, st, (*folder.parts, name))))
            return out


def _input_children(cas: ContentStore, digest: Digest) -> Iterator[tuple[str, Child]]:
    """The entries of a stored input folder, as they are."""
    directory = load_directory(cas, digest)
    for f in directory.files:
        yield f.name, (Digest.from_proto(f.digest), f.is_executable)
    for s in directory.symlinks:
        yield s.name, s.target
    for d in directory.directories:
        yield d.name, TreeNode(_InputFolder(Digest.from_proto(d.digest)))


def _kind(mode: int) -> str:
    kinds = {stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device",
             stat.S_IFBLK: "block device"}  # fmt: skip
    return kinds.get(stat.S_IFMT(mode), "special file")


@contextlib.contextmanager
def _closing(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)
