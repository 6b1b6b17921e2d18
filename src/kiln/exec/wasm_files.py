"""Between the store and a guest's virtual file system: listing input
directories for ``FileSystem`` and collecting declared outputs into an
``ActionResult``. Shared by every engine that runs wasm actions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kiln.exec.output_trees import Child, TreeNode, store_tree
from kiln.exec.wasi.vfs import Dir, File, FileSystem, Symlink, WasiError
from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2
from kiln.model.tree import load_directory

if TYPE_CHECKING:
    from kiln.store.cas import ContentStore

Listing = list[tuple[str, str, object]]


def directory_entries(cas: ContentStore, digest: Digest) -> Listing:
    """(name, kind, payload) of a stored ``Directory``: files (payload: blob
    digest), then symlinks (target), then subdirectories (digest), each in
    name order. Inode numbers follow this order, so every engine uses it."""
    recent = getattr(cas, "recent", None)  # just written by this process: no file read
    data = recent(digest) if recent is not None else None
    d = re_pb2.Directory.FromString(data) if data is not None else load_directory(cas, digest)
    entries: Listing = []
    entries += [(f.name, "file", Digest.from_proto(f.digest)) for f in d.files]
    entries += [(s.name, "symlink", s.target) for s in d.symlinks]
    entries += [(x.name, "dir", Digest.from_proto(x.digest)) for x in d.directories]
    return entries


def collect_outputs(
    fs: FileSystem, batch: Any, paths: list[str], result: re_pb2.ActionResult
) -> None:
    """Store what the guest left at each declared output path and list it
    in ``result``; a path it did not create is simply absent."""
    for path in paths:
        try:
            _, _, node = fs.resolve(fs.root, path, follow=False)
        except WasiError:
            continue
        if isinstance(node, File):
            digest = _store_file(batch, node)
            result.output_files.add(path=path, digest=digest.to_proto())
        elif isinstance(node, Symlink):
            result.output_symlinks.add(path=path, target=node.target)
        elif isinstance(node, Dir):
            digest = _store_tree(fs, batch, node)
            result.output_directories.add(path=path, tree_digest=digest.to_proto())


def _store_tree(fs: FileSystem, batch: Any, top: Dir) -> Digest:
    """Store the guest folder ``top`` as a REAPI ``Tree``; its digest."""

    def children(d: Dir) -> list[tuple[str, Child]]:
        out: list[tuple[str, Child]] = []
        for name, node in sorted(fs.entries(d).items()):
            if isinstance(node, File):
                out.append((name, (_store_file(batch, node), False)))
            elif isinstance(node, Symlink):
                out.append((name, node.target))
            elif isinstance(node, Dir):
                out.append((name, TreeNode(node)))
        return out

    return store_tree(batch, top, children).tree


def _store_file(batch: Any, f: File) -> Digest:
    """Store a guest file: a written one from its ``Content``, an input
    moved or left at an output path as its blob (already in the store)."""
    if f.body is not None:
        return f.body.store(batch)
    return f.blob  # type: ignore[return-value]
