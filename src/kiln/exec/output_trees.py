"""Storing what a step left at its declared output paths as REAPI trees,
built from any kind of folder (a guest's virtual one, a host one, an
archive's members), and failing a step that left a declared path empty."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

from kiln import errors
from kiln.model.digest import Digest, canonical_bytes
from kiln.model.reapi import re_pb2
from kiln.model.tree import make_directory

Node = TypeVar("Node")
# The exit code of a step that exited 0 without creating a declared output.
EXIT_MISSING_OUTPUT = 1
# Folders a stored tree may nest (reading trees back, materializing them and
# comparing them recurse once per level).
MAX_TREE_DEPTH = 256


@dataclass(frozen=True)
class TreeNode(Generic[Node]):
    """A subfolder in what ``store_tree``'s ``children`` returns."""

    node: Node


# A child: a file (digest, executable), a symlink (its target) or a folder.
Child = tuple[Digest, bool] | str | TreeNode[Any]


@dataclass
class _Frame:
    """A folder ``store_tree`` is in the middle of."""

    listing: list[tuple[str, Child]]
    next: int = 0
    files: list[tuple[str, Digest, bool]] = field(default_factory=list)
    dirs: list[tuple[str, Digest]] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)


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
    tree = re_pb2.Tree()
    seen: set[Digest] = set()
    # Depth first without recursion (a step may nest folders thousands
    # deep): a frame per open folder, its listing, where it is in it, and
    # its entries so far. A folder's Directory is made once its last entry
    # is, and goes into the Tree after its subfolders (the order every
    # engine uses).
    stack = [_Frame(children(top))]
    while True:
        frame = stack[-1]
        if frame.next < len(frame.listing):
            name, child = frame.listing[frame.next]
            frame.next += 1
            if isinstance(child, tuple):
                frame.files.append((name, *child))
            elif isinstance(child, str):
                frame.links.append((name, child))
            else:
                if len(stack) > MAX_TREE_DEPTH:  # the top and MAX_TREE_DEPTH below it
                    raise errors.KilnError(
                        f"an output folder nests more than {MAX_TREE_DEPTH} folders deep",
                        hint="flatten the step's output folders",
                        exit_code=errors.ExitCode.FAILED,
                    )
                stack.append(_Frame(children(child.node)))
            continue
        directory = make_directory(frame.files, frame.dirs, frame.links)
        stack.pop()
        if not stack:
            break
        digest = batch.add_metadata(canonical_bytes(directory))
        if digest not in seen:
            seen.add(digest)
            tree.children.append(directory)
        parent = stack[-1]
        parent.dirs.append((parent.listing[parent.next - 1][0], digest))
    root = directory
    tree.root.CopyFrom(root)
    root_digest = batch.add_metadata(canonical_bytes(root))
    return StoredTree(batch.add_metadata(canonical_bytes(tree)), root_digest)


def missing_outputs(result: re_pb2.ActionResult, paths: list[str]) -> str:
    """For a step that exited 0 but left some of its declared ``paths``
    uncreated: make ``result`` a failure (like a non-zero exit: shown, never
    cached) and return the note for its stderr naming them; else ""."""
    made = {o.path for o in result.output_files}
    made.update(o.path for o in result.output_directories)
    made.update(o.path for o in result.output_symlinks)
    missing = [p for p in paths if p not in made]
    if result.exit_code != 0 or not missing:
        return ""
    result.exit_code = EXIT_MISSING_OUTPUT
    names = ", ".join(missing)
    return (
        f"declared output{'s' if len(missing) > 1 else ''} {names} "
        f"{'were' if len(missing) > 1 else 'was'} not created (the command exited 0); "
        "create it, or remove it from the step's outputs"
    )
