"""Assembling a step's input tree from ``File`` and ``Tree`` handles, each
placed at its path. Directories are written bottom-up in one batch; a
``Tree`` is grafted whole (its digest reused), so the cost depends on the
number of handles, not on the size of the trees."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kiln import errors
from kiln.engine.values import File, Tree, Value
from kiln.model.digest import Digest, canonical_bytes
from kiln.model.tree import make_directory

if TYPE_CHECKING:
    from kiln.store.cas import ContentStore
    from kiln.store.localcas import LocalCAS

# A directory being assembled: name -> File | Tree (grafted whole) | _Dir.
_Dir = dict[str, "File | Tree | _Dir"]


def place(values: list[Value], where: str) -> _Dir:
    """Nest the handles by path; two different things at one path is an error."""
    root: _Dir = {}
    for value in values:
        parts = [p for p in value.path.split("/") if p not in ("", ".")]
        if any(p == ".." for p in parts):
            raise errors.KilnError(
                f"{where}: input path {value.path!r} leaves the input tree",
                hint="give inputs paths inside the step's tree",
                exit_code=errors.ExitCode.BAD_INPUT,
            )
        if not parts:
            if not isinstance(value, Tree):
                raise _conflict(where, value.path or "/")
            if root:
                raise _conflict(where, "/")
            root = {"": value}
            continue
        d = root
        for name in parts[:-1]:
            sub = d.setdefault(name, {})
            if not isinstance(sub, dict):
                raise _conflict(where, value.path)
            d = sub
        existing = d.get(parts[-1])
        if existing is not None and existing != value:
            raise _conflict(where, value.path)
        d[parts[-1]] = value
    return root


def input_tree(values: list[Value], where: str) -> tuple[Digest, list[tuple[Digest, bytes]]]:
    """The digest of the tree holding ``values`` at their paths, and the
    ``Directory`` blobs that make it up (not written: a step that turns out
    to be a cache hit never needs them in the store)."""
    nested = place(values, where)
    if set(nested) == {""}:
        return nested[""].digest, []  # type: ignore[union-attr]
    blobs: list[tuple[Digest, bytes]] = []
    return _compose(nested, blobs), blobs


def input_root(cas: LocalCAS, values: list[Value], where: str) -> Digest:
    """``input_tree``, written to the store (not synced: a build syncs the
    store once before naming its outputs as GC roots)."""
    digest, blobs = input_tree(values, where)
    write_blobs(cas, blobs)
    return digest


def stored_tree(cas: ContentStore, values: list[Value], where: str) -> Digest:
    """``input_tree``, its folders put in any content store (an executor's,
    for a step it asks the build for)."""
    digest, blobs = input_tree(values, where)
    for _, data in blobs:
        cas.put_bytes(data)
    return digest


def write_blobs(cas: LocalCAS, blobs: list[tuple[Digest, bytes]]) -> None:
    """Store the ``Directory`` blobs of an input tree (as metadata rows)."""
    cas.put_metadata(blobs)


def _compose(d: _Dir, blobs: list[tuple[Digest, bytes]]) -> Digest:
    files, dirs = [], []
    for name, entry in sorted(d.items()):
        if isinstance(entry, File):
            files.append((name, entry.digest, entry.executable))
        elif isinstance(entry, Tree):
            dirs.append((name, entry.digest))
        else:
            dirs.append((name, _compose(entry, blobs)))
    data = canonical_bytes(make_directory(files, dirs, []))
    digest = Digest.of_bytes(data)
    blobs.append((digest, data))
    return digest


def _conflict(where: str, path: str) -> errors.KilnError:
    return errors.KilnError(
        f"{where}: two different inputs at {path!r}",
        hint="place each input at its own path",
        exit_code=errors.ExitCode.BAD_INPUT,
    )
