"""The project's output folder: ``kiln-out/TARGET`` holds a target's value,
read-only, and ``kiln-out/.kiln/TARGET.digest`` the digest it was made from.

Kept light to import: a no-op build puts back removed outputs from a
manifest (``manifest``, filed with the build stamp) by hard-linking store
blobs, without loading the engine or protobuf."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

TYPE_CHECKING = False  # (typing itself costs milliseconds at start-up)

if TYPE_CHECKING:
    from kiln.digest import Digest
    from kiln.store.localcas import LocalCAS

# A manifest entry: ("d", path), ("f", path, blob hash, size, executable)
# or ("l", path, target); parents come before their children.
Entry = tuple

OUTPUT_DIR = "kiln-out"


def output_dir(project: Path, target: str) -> Path:
    return project / OUTPUT_DIR / target


def marker(project: Path, target: str) -> Path:
    return project / OUTPUT_DIR / ".kiln" / f"{target}.digest"


def is_current(project: Path, target: str, digest: str) -> bool:
    """Whether ``kiln-out/TARGET`` is the tree ``digest`` as Kiln left it."""
    try:
        return (
            marker(project, target).read_text() == digest and output_dir(project, target).is_dir()
        )
    except OSError:
        return False


def place(cas: LocalCAS, project: Path, target: str, digest: Digest) -> None:
    """Make ``kiln-out/TARGET`` the tree ``digest`` (unless it already is)."""
    from kiln.store.materialize import Materializer

    if not is_current(project, target, str(digest)):
        _replace(project, target, str(digest), lambda dest: Materializer(cas).tree(digest, dest))


def _replace(project: Path, target: str, digest: str, write: Callable[[Path], object]) -> bool:
    """Empty ``kiln-out/TARGET``, let ``write`` fill it (False from it: give
    up), make it read-only and mark it as ``digest``. The marker is dropped
    first, so a half-written folder is never taken as current."""
    from kiln.fsutil import remove_tree  # (shutil: not on a no-op build's path)

    dest = output_dir(project, target)
    marker(project, target).unlink(missing_ok=True)
    remove_tree(dest)
    if write(dest) is False:
        return False
    _make_read_only(dest)
    marker(project, target).parent.mkdir(parents=True, exist_ok=True)
    marker(project, target).write_text(digest)
    return True


def manifest(cas: LocalCAS, digest: Digest) -> list[Entry]:
    """The entries of the stored tree ``digest``, for ``restore``."""
    from kiln.digest import Digest
    from kiln.tree import load_directory

    entries: list[Entry] = []

    def walk(d: Digest, prefix: str) -> None:
        directory = load_directory(cas, d)
        for f in directory.files:
            entries.append(("f", prefix + f.name, f.digest.hash, f.digest.size_bytes,
                            f.is_executable))  # fmt: skip
        for link in directory.symlinks:
            entries.append(("l", prefix + link.name, link.target))
        for sub in directory.directories:
            entries.append(("d", prefix + sub.name))
            walk(Digest.from_proto(sub.digest), prefix + sub.name + "/")

    walk(digest, "")
    return entries


def restore(cas_root: Path, project: Path, target: str, digest: str, entries: list[Entry]) -> bool:
    """Make ``kiln-out/TARGET`` the tree ``digest`` again from its manifest,
    linking blobs out of the store at ``cas_root``; False (and nothing
    half-done left marked as current) if a blob is not there to link."""

    def link_all(dest: Path) -> bool:
        dest.mkdir(parents=True)
        for entry in entries:
            path = dest / entry[1]
            if entry[0] == "d":
                path.mkdir()
            elif entry[0] == "l":
                os.symlink(entry[2], path)
            else:
                _, _, hash_hex, size, executable = entry
                # the store's layout (store/localcas.py): cas/hh/hash, ".x" for the 0555 twin
                blob = cas_root / hash_hex[:2] / (hash_hex + (".x" if executable else ""))
                try:
                    if os.stat(blob).st_size != size:
                        return False
                    os.link(blob, path)
                except OSError:
                    return False  # not linkable here (or gone): a full build writes it
        return True

    return _replace(project, target, digest, link_all)


def _make_read_only(root: Path) -> None:
    for folder, _, _ in os.walk(root, topdown=False):
        os.chmod(
            folder,
            stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH,
        )
