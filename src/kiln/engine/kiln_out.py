"""The project's output folder: ``kiln-out/TARGET`` holds a target's value,
read-only, and ``kiln-out/.kiln/TARGET.digest`` the digest it was made from.

An output folder is replaced in one rename: the new one is written under
``kiln-out/.kiln/tmp/`` and then moved into place, so no reader ever sees a
half-written folder and builds of one project running at once never write
into each other's (each ends with a complete folder; the last one stays).
A folder being written is claimed (``kiln/claims.py``) by its writer; one
left by a killed build is removed by the next build that places an output.

Kept light to import: a no-op build puts back removed outputs from a
manifest (``manifest``, filed with the build stamp) by hard-linking store
blobs, without loading the engine or protobuf."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

from kiln.system import claims

TYPE_CHECKING = False  # (typing itself costs milliseconds at start-up)

if TYPE_CHECKING:
    from kiln.model.digest import Digest
    from kiln.store.localcas import LocalCAS

# A manifest entry: ("d", path), ("f", path, blob hash, size, executable)
# or ("l", path, target); parents come before their children.
Entry = tuple

OUTPUT_DIR = "kiln-out"
_PLACE_ATTEMPTS = 20  # other builds replacing the same folder at the same moment


def output_dir(project: Path, target: str) -> Path:
    return project / OUTPUT_DIR / target


def marker(project: Path, target: str) -> Path:
    return project / OUTPUT_DIR / ".kiln" / f"{target}.digest"


def is_current(project: Path, target: str, digest: str) -> bool:
    """Whether ``kiln-out/TARGET`` is the tree ``digest`` as Kiln left it:
    the marker names the digest and the folder that was placed for it (its
    inode, so a folder another build placed after the marker was written is
    not taken for it)."""
    try:
        placed = str(os.stat(output_dir(project, target)).st_ino)
        return marker(project, target).read_text().split() == [digest, placed]
    except OSError:
        return False


def place(cas: LocalCAS, project: Path, target: str, digest: Digest) -> None:
    """Make ``kiln-out/TARGET`` the tree ``digest`` (unless it already is)."""
    from kiln.store.materialize import Materializer  # (start-up: protobuf, not for a no-op)

    if not is_current(project, target, str(digest)):
        _replace(project, target, str(digest), lambda dest: Materializer(cas).tree(digest, dest))


def _replace(project: Path, target: str, digest: str, write: Callable[[Path], object]) -> bool:
    """Let ``write`` fill a new folder (False from it: give up, leaving the
    output as it was), make it read-only, move it to ``kiln-out/TARGET`` in
    place of what is there, and mark it as ``digest``."""
    staging_root = project / OUTPUT_DIR / ".kiln" / "tmp"
    claims.reap(staging_root)  # what killed builds left
    staging = claims.Claim(staging_root)
    try:
        if write(staging.path) is False:
            return False
        if is_current(project, target, digest):
            return True  # another build placed the same folder meanwhile
        _make_read_only(staging.path)
        placed = os.stat(staging.path).st_ino
        dest = output_dir(project, target)
        dest.parent.mkdir(parents=True, exist_ok=True)
        _move_into_place(staging, dest)
        # Written whole, by rename: a reader never sees half a marker.
        staged_marker = staging.sibling("marker")
        staged_marker.write_text(f"{digest} {placed}")
        os.replace(staged_marker, marker(project, target))
    finally:
        staging.release()
    return True


def _move_into_place(staging: claims.Claim, dest: Path) -> None:
    """Rename the finished folder to ``dest``; whatever is there (another
    build's folder, placed a moment ago, or an old one) is moved aside first,
    to be removed with the staging claim."""
    for attempt in range(_PLACE_ATTEMPTS):
        try:
            os.rename(staging.path, dest)
            return
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
        try:
            os.rename(dest, staging.sibling(f"old{attempt}"))
        except FileNotFoundError:
            continue  # another build moved it aside first
    raise OSError(errno.EBUSY, "other builds kept replacing it at the same moment", str(dest))


def manifest(cas: LocalCAS, digest: Digest) -> list[Entry]:
    """The entries of the stored tree ``digest``, for ``restore``."""
    # (start-up: protobuf, not for a no-op build, which restores from the manifest)
    from kiln.model.digest import Digest
    from kiln.model.tree import load_directory

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
                # the store's layout (store/file_blobs.py): cas/hh/hash, ".x" for the 0555 twin
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
