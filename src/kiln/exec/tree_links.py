"""Symlinks of a folder tree being built, checked where they lead.

A target is not judged as text alone: it is resolved through the tree
itself, component by component, entering the tree's folders, following its
other symlinks and taking ``..`` back up. So a chain such as ``a/b/up ->
../..`` (the top) plus ``a/b/esc -> up/../etc/passwd`` is seen to leave the
tree, although each target on its own stays inside it.

A name the tree does not hold (or a file used as a folder) is taken
lexically from there on, as the most a host could make of it. The last
component of a target is not followed: when it is a symlink, that symlink is
checked on its own, so every link resolving inside the tree means every
path through them does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

# More symlinks than this on the way (Linux's MAXSYMLINKS) and the host
# cannot resolve the path either: Kiln refuses it as a loop.
MAX_HOPS = 40

# A folder being built: name -> sub-folder (dict), file (any other value
# but a str) or symlink (its target, a str).
Folder = dict[str, Any]


def escaping_links(root: Folder) -> Iterator[tuple[str, str, str]]:
    """Each symlink of the tree at ``root`` that leads outside it, as
    (its path, its target, why)."""
    pending: list[tuple[Folder, list[Folder], str]] = [(root, [], "")]
    while pending:
        folder, parents, prefix = pending.pop()
        for name, node in sorted(folder.items()):
            if isinstance(node, dict):
                pending.append((node, [*parents, node], f"{prefix}{name}/"))
            elif isinstance(node, str):
                reason = link_escape(root, parents, node)
                if reason is not None:
                    yield f"{prefix}{name}", node, reason


def link_escape(root: Folder, parents: list[Folder], target: str) -> str | None:
    """Why ``target``, a symlink's target in the folder ``parents[-1]`` (the
    folders from just below ``root`` down to it; empty for ``root``
    itself), leads outside the tree, or None if it stays inside."""
    if target.startswith("/"):
        return "an absolute path"
    # The folders from the top down to where resolution has got to; None
    # for a name the tree does not hold as a folder (taken lexically).
    path: list[Folder | None] = list(parents)
    parts = deque(p for p in target.split("/") if p not in ("", "."))
    hops = 0
    while parts:
        part = parts.popleft()
        if part == "..":
            if not path:
                return "it climbs above the top of the tree"
            path.pop()
            continue
        here = path[-1] if path else root
        node = here.get(part) if here is not None else None
        if isinstance(node, str) and parts:  # a symlink on the way: go where it leads
            hops += 1
            if hops > MAX_HOPS:
                return f"resolving it follows more than {MAX_HOPS} symlinks (a loop)"
            if node.startswith("/"):
                return f"it goes through {part!r}, a symlink to an absolute path"
            parts.extendleft(reversed([p for p in node.split("/") if p not in ("", ".")]))
            continue
        path.append(node if isinstance(node, dict) else None)
    return None
