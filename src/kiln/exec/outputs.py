"""Storing what a step left at its declared output paths as REAPI trees,
built from any kind of folder (a guest's virtual one, a host one, an
archive's members)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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
