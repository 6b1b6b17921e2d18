"""Storing what a step left at its declared output paths: trees built
from any kind of folder (a guest's virtual one, a host one), and the host
side of native steps."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

from kiln.digest import Digest, canonical_bytes

if TYPE_CHECKING:
    from kiln.reapi import re_pb2

Node = TypeVar("Node")


@dataclass(frozen=True)
class TreeNode(Generic[Node]):
    """A subfolder in what ``store_tree``'s ``children`` returns."""

    node: Node


# A child: a file (digest, executable), a symlink (its target) or a folder.
Child = tuple[Digest, bool] | str | TreeNode[Any]


class StoredTree(NamedTuple):
    """Digests of a stored folder: its REAPI ``Tree`` and its root ``Directory``."""

    tree: Digest
    root: Digest


def store_tree(
    batch: Any, top: Node, children: Callable[[Node], list[tuple[str, Child]]]
) -> StoredTree:
    """Store the folder ``top`` as a REAPI ``Tree`` (and its root ``Directory``
    on its own, so the output can be materialized as a tree) and return the
    Tree's digest; ``children(folder)`` lists a folder, storing its files."""
    from kiln.reapi import re_pb2
    from kiln.tree import make_directory

    tree = re_pb2.Tree()
    seen: set[Digest] = set()

    def directory(folder: Node) -> re_pb2.Directory:
        files, dirs, links = [], [], []
        for name, child in children(folder):
            if isinstance(child, tuple):
                files.append((name, *child))
            elif isinstance(child, str):
                links.append((name, child))
            else:
                sub = directory(child.node)
                digest = batch.add_metadata(canonical_bytes(sub))
                if digest not in seen:
                    seen.add(digest)
                    tree.children.append(sub)
                dirs.append((name, digest))
        return make_directory(files, dirs, links)

    root = directory(top)
    tree.root.CopyFrom(root)
    root_digest = batch.add_metadata(canonical_bytes(root))
    return StoredTree(batch.add_metadata(canonical_bytes(tree)), root_digest)


def collect_host_outputs(
    batch: Any,
    work: Path,
    inputs: tuple[str, Path],
    paths: list[str],
    result: re_pb2.ActionResult,
) -> None:
    """Store what a native step left at each of ``paths`` under ``work``.
    ``inputs`` is (where the step saw its inputs, where they are on the
    host): a symlink to an input is stored as the input itself."""
    seen_at, host_inputs = inputs

    def resolve(path: Path) -> Path | str:
        """The host file behind an input link, else the link's target."""
        target = os.readlink(path)
        if target.startswith(seen_at + "/"):
            return host_inputs / target[len(seen_at) + 1 :]
        return target

    def children(folder: Path) -> list[tuple[str, Child]]:
        out: list[tuple[str, Child]] = []
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            path = Path(entry.path)
            real: Path | str = resolve(path) if entry.is_symlink() else path
            if isinstance(real, str):
                out.append((entry.name, real))
            elif real.is_dir():
                out.append((entry.name, TreeNode(real)))
            elif real.is_file():
                out.append((entry.name, (batch.add_file(real), os.access(real, os.X_OK))))
        return out

    for path in paths:
        host = work / path
        if not host.exists() and not host.is_symlink():
            continue
        real = resolve(host) if host.is_symlink() else host
        if isinstance(real, str):
            result.output_symlinks.add(path=path, target=real)
        elif real.is_file():
            digest = batch.add_file(real)
            result.output_files.add(
                path=path, digest=digest.to_proto(), is_executable=os.access(real, os.X_OK)
            )
        elif real.is_dir():
            stored = store_tree(batch, real, children)
            result.output_directories.add(path=path, tree_digest=stored.tree.to_proto())
