"""Between the store and a guest's virtual file system: listing input
directories for ``FileSystem`` and collecting declared outputs into an
``ActionResult``. Shared by every engine that runs wasm actions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kiln.digest import Digest, canonical_bytes
from kiln.exec.wasi.vfs import Dir, File, FileSystem, Symlink, WasiError

if TYPE_CHECKING:
    from kiln.reapi import re_pb2
    from kiln.store.cas import ContentStore

Listing = list[tuple[str, str, object]]


def directory_entries(cas: ContentStore, digest: Digest) -> Listing:
    """(name, kind, payload) of a stored ``Directory``: files (payload: blob
    digest), then symlinks (target), then subdirectories (digest), each in
    name order. Inode numbers follow this order, so every engine uses it."""
    from kiln.reapi import re_pb2
    from kiln.tree import load_directory

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
            digest = batch.add_bytes(bytes(fs.content(node)))
            result.output_files.add(path=path, digest=digest.to_proto())
        elif isinstance(node, Symlink):
            result.output_symlinks.add(path=path, target=node.target)
        elif isinstance(node, Dir):
            digest = _store_tree(fs, batch, node)
            result.output_directories.add(path=path, tree_digest=digest.to_proto())


def _store_tree(fs: FileSystem, batch: Any, top: Dir) -> Digest:
    """Store ``top`` as a REAPI ``Tree`` (and its root ``Directory`` on its
    own, so the output can be materialized as a tree); the Tree's digest."""
    from kiln.reapi import re_pb2
    from kiln.tree import make_directory

    tree = re_pb2.Tree()
    children: set[Digest] = set()

    def directory(d: Dir) -> re_pb2.Directory:
        files, dirs, links = [], [], []
        for name, node in sorted(fs.entries(d).items()):
            if isinstance(node, File):
                files.append((name, batch.add_bytes(bytes(fs.content(node))), False))
            elif isinstance(node, Symlink):
                links.append((name, node.target))
            elif isinstance(node, Dir):
                sub = directory(node)
                digest = batch.add_metadata(canonical_bytes(sub))
                if digest not in children:
                    children.add(digest)
                    tree.children.append(sub)
                dirs.append((name, digest))
        return make_directory(files, dirs, links)

    root = directory(top)
    tree.root.CopyFrom(root)
    batch.add_metadata(canonical_bytes(root))
    return batch.add_metadata(canonical_bytes(tree))
