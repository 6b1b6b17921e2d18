"""The project's output folder: ``kiln-out/TARGET`` holds a target's value
and ``kiln-out/.kiln/TARGET.digest`` (the marker) the digest it was made
from, with the stat signature of every file placed.

Outputs behave like files: folders are writable (``rm -rf kiln-out`` works
for anyone), files are read-only copies, cloned (``FICLONE``) where the
file system shares extents and copied otherwise, so no output shares an
inode with the store: editing one, even as root, cannot reach a blob. An
output changed or removed since it was placed no longer matches its
marker's signatures, so the next build (a no-op one too) puts it back.

An output folder is replaced in one rename: the new one is written under
``kiln-out/.kiln/tmp/`` and then moved into place, so no reader ever sees a
half-written folder and builds of one project running at once never write
into each other's (each ends with a complete folder; the last one stays).
A folder being written is claimed (``system/claims.py``) by its writer; one
left by a killed build is removed by the next build that places an output.

Kiln writes only into a real ``kiln-out`` folder: one that is a symbolic
link (or ``kiln-out/.kiln`` being one) is refused, so no build, ``kiln
clean`` or ``kiln gc`` writes or deletes through it.

Kept light to import: a no-op build puts back removed outputs from a
manifest (``manifest``, filed with the build stamp) by copying store
blobs, without loading the engine or protobuf."""

from __future__ import annotations

import errno
import fcntl
import marshal
import os
import stat
from collections.abc import Callable, Iterable
from itertools import chain
from pathlib import Path

from kiln.system import claims
from kiln.system.stat_signature import INO, reference_ns, signature, signature_of

TYPE_CHECKING = False  # (typing itself costs milliseconds at start-up)

if TYPE_CHECKING:
    from kiln.model.digest import Digest
    from kiln.store.localcas import LocalCAS
    from kiln.system.stat_signature import Signature

# A manifest entry: ("d", path), ("f", path, blob hash, size, executable)
# or ("l", path, target); parents come before their children.
Entry = tuple

OUTPUT_DIR = "kiln-out"
STATE_DIR = ".kiln"  # kiln-out/.kiln: markers and the staging folder
MARKER_SUFFIX = ".digest"
_PLACE_ATTEMPTS = 20  # other builds replacing the same folder at the same moment
_FICLONE = 0x40049409  # linux/fs.h: share the source's extents (btrfs, XFS, ...)
_FILE_MODES = (0o444, 0o555)  # read-only, by whether the file is executable


class NotAFolder(OSError):
    """``kiln-out`` (or ``kiln-out/.kiln``) is not a real folder of the project."""


def output_dir(project: Path, target: str) -> Path:
    return project / OUTPUT_DIR / target


def marker(project: Path, target: str) -> Path:
    return project / OUTPUT_DIR / STATE_DIR / f"{target}{MARKER_SUFFIX}"


def check_folder(project: Path) -> None:
    """Raise ``NotAFolder`` if ``kiln-out`` or ``kiln-out/.kiln`` exists and
    is anything but a real folder (a symbolic link to elsewhere above all)."""
    for path in (project / OUTPUT_DIR, project / OUTPUT_DIR / STATE_DIR):
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(mode):
            raise NotAFolder(errno.ENOTDIR, "not a folder Kiln made (a symbolic link?)", str(path))


def refused(e: NotAFolder, what: str) -> Exception:
    """The user's error for ``e`` (``what``: what was not done)."""
    from kiln import errors  # (not on the no-op path)

    return errors.KilnError(
        f"{e.filename}: not a folder Kiln made (a symbolic link?): {what}",
        hint="remove it; Kiln reads and writes outputs only in a real kiln-out folder",
        exit_code=errors.ExitCode.BAD_INPUT,
    )


def clock(project: Path) -> tuple[int, int]:
    """(start, window) to judge the project's files racy by
    (``stat_signature.reference_ns``), read from the file system's clock
    in ``kiln-out/.kiln`` (the process's clock if that is not a folder)."""
    try:
        check_folder(project)
    except NotAFolder:
        return reference_ns(None)
    return reference_ns(project / OUTPUT_DIR / STATE_DIR)


def read_marker(project: Path, target: str) -> tuple[str, Signature | None, list] | None:
    """(digest, signature of the folder placed, [(path, signature)] of
    what is in it) as the marker of ``target`` records them; None without
    one (or with one of an older layout)."""
    try:
        with open(marker(project, target), "rb") as f:
            digest, folder, entries = marshal.load(f)
        return digest, folder, entries
    except (OSError, ValueError, EOFError, TypeError):
        return None


def is_current(project: Path, target: str, digest: str) -> bool:
    """Whether ``kiln-out/TARGET`` is the tree ``digest`` as Kiln left it:
    the marker names the digest, and the folder placed for it and every
    file, link and folder in it still have the stat signatures they had
    when placed (none changed, none removed, nothing added at the top;
    a folder another build placed after the marker was written differs)."""
    known = read_marker(project, target)
    if known is None or known[0] != digest:
        return False
    return _matches(output_dir(project, target), known, all)


def placed_folder(project: Path, target: str) -> Path | None:
    """``kiln-out/TARGET`` if it is the folder Kiln placed there last (by
    its marker: the same inode, and the folder itself or something Kiln put
    in it unchanged; edits made inside it since do not matter), else None."""
    known = read_marker(project, target)
    dest = output_dir(project, target)
    return dest if known is not None and _matches(dest, known, any) else None


def _matches(dest: Path, known: tuple, each: Callable[[Iterable[bool]], bool]) -> bool:
    """Whether ``dest`` is the folder ``known`` records (its inode) and
    ``each`` (``all``, ``any``) of it and the entries in it match their
    recorded signatures."""
    _, folder, entries = known
    try:
        st = os.lstat(dest)
        if folder is None or st.st_ino != folder[INO]:
            return False
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:  # paths relative to the open folder: no path walk per file
        found = (signature(path, fd, follow_symlinks=False) == sig for path, sig in entries)
        return each(chain((signature_of(st) == folder,), found))
    finally:
        os.close(fd)


def marked(project: Path) -> list[str]:
    """The targets with a marker in ``kiln-out/.kiln``: those Kiln placed
    an output of (it may be gone or replaced since); none in a
    ``kiln-out`` that is not a real folder."""
    try:
        check_folder(project)
        names = os.listdir(project / OUTPUT_DIR / STATE_DIR)
    except OSError:
        return []
    return sorted(
        n.removesuffix(MARKER_SUFFIX)
        for n in names
        if n.endswith(MARKER_SUFFIX) and n.removesuffix(MARKER_SUFFIX).isidentifier()
    )


def remove(project: Path, target: str) -> bool | None:
    """Remove ``kiln-out/TARGET`` if it is the folder Kiln placed there
    (True), and its marker. None: a folder is there that Kiln did not
    place (the user's, or put there since), left as it is; False: nothing
    was there. ``target`` must be a target's name (an identifier)."""
    if not target.isidentifier():
        raise ValueError(f"not a target name: {target!r}")
    check_folder(project)
    folder = placed_folder(project, target)
    removed: bool | None = folder is not None
    if folder is not None:
        staging = claims.Claim(project / OUTPUT_DIR / STATE_DIR / "tmp")
        try:  # moved aside in one rename, then removed whatever its modes
            os.rename(folder, staging.sibling("old"))
        except FileNotFoundError:
            removed = False  # removed meanwhile
        finally:
            staging.release()
    elif os.path.lexists(output_dir(project, target)):
        removed = None
    marker(project, target).unlink(missing_ok=True)
    return removed


def tidy(project: Path) -> None:
    """Remove ``kiln-out/.kiln`` and ``kiln-out`` if nothing but Kiln's own
    notes (and what killed builds left) is in them; the rest stays."""
    state = project / OUTPUT_DIR / STATE_DIR
    claims.reap(state / "tmp")
    for path in (state / "clock", state / "tmp", state, project / OUTPUT_DIR):
        try:
            os.rmdir(path) if path.name != "clock" else os.unlink(path)
        except OSError:
            continue  # not empty (or gone): what is there stays


def place(cas: LocalCAS, project: Path, target: str, digest: Digest) -> None:
    """Make ``kiln-out/TARGET`` the tree ``digest`` (unless it already is)."""
    try:
        check_folder(project)
    except NotAFolder as e:
        raise refused(e, f"the output of {target!r} was not written") from None
    if is_current(project, target, str(digest)):
        return

    def blob(hash_hex: str, size: int) -> Path | bytes | None:
        from kiln.model.digest import Digest

        path = cas.path(Digest(hash_hex, size))
        if os.path.exists(path):
            return path
        return cas.get_bytes(Digest(hash_hex, size))  # a metadata row, if anything

    entries = manifest(cas, digest)
    if not _replace(project, target, str(digest), lambda dest: _write(dest, entries, blob)):
        from kiln import errors

        raise errors.digest_not_found(digest, f"a blob of the value of target {target!r}")


def restore(cas_root: Path, project: Path, target: str, digest: str, entries: list[Entry]) -> bool:
    """Make ``kiln-out/TARGET`` the tree ``digest`` again from its manifest,
    copying blobs out of the store at ``cas_root``; False (and nothing
    half-done left marked as current) if a blob is not there to copy."""

    def blob(hash_hex: str, size: int) -> Path | None:
        # the store's layout (store/file_blobs.py): cas/hh/hash
        return cas_root / hash_hex[:2] / hash_hex

    try:
        check_folder(project)
    except NotAFolder:
        return False  # a full build says so
    return _replace(project, target, digest, lambda dest: _write(dest, entries, blob))


def _write(
    dest: Path, entries: list[Entry], blob: Callable[[str, int], Path | bytes | None]
) -> bool:
    """Fill the new folder ``dest`` with ``entries``, each file a read-only
    copy of its blob (``blob``: its path in the store, or its bytes); False
    if a blob is missing or not of its size."""
    dest.mkdir(parents=True)
    for entry in entries:
        path = dest / entry[1]
        if entry[0] == "d":
            path.mkdir()
        elif entry[0] == "l":
            os.symlink(entry[2], path)
        else:
            _, _, hash_hex, size, executable = entry
            source = blob(hash_hex, size)
            mode = _FILE_MODES[bool(executable)]
            try:
                if isinstance(source, bytes) and len(source) == size:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
                    try:
                        os.write(fd, source)
                    finally:
                        os.close(fd)
                elif not isinstance(source, Path) or not clone_file(source, path, size, mode):
                    return False
            except OSError:
                return False  # not readable here (or gone): a full build writes it
    return True


def clone_file(source: Path, dest: Path, size: int, mode: int) -> bool:
    """Write ``dest`` (new, with ``mode``) holding the bytes of ``source``,
    sharing its extents where the file system can (``FICLONE``), copied in
    the kernel otherwise; False if ``source`` is not ``size`` bytes."""
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.fstat(src).st_size != size:
            return False
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            try:
                fcntl.ioctl(out, _FICLONE, src)
            except OSError:  # not this file system (or not across two): copy
                done = 0
                while done < size:
                    n = os.sendfile(out, src, done, size - done)
                    if n == 0:
                        return False  # shrunk meanwhile
                    done += n
        finally:
            os.close(out)
    finally:
        os.close(src)
    return True


def _replace(project: Path, target: str, digest: str, write: Callable[[Path], object]) -> bool:
    """Let ``write`` fill a new folder (False from it: give up, leaving the
    output as it was), move it to ``kiln-out/TARGET`` in place of what is
    there, and mark it as ``digest`` with the signatures of what it holds."""
    staging_root = project / OUTPUT_DIR / STATE_DIR / "tmp"
    claims.reap(staging_root)  # what killed builds left
    staging = claims.Claim(staging_root)
    try:
        if write(staging.path) is False:
            return False
        if is_current(project, target, digest):
            return True  # another build placed the same folder meanwhile
        # What is inside is stat'ed before the move (a rename changes the
        # ctime of the moved folder only), the folder after it: if another
        # build's folder is there by then, this one is not marked as placed.
        placed = os.stat(staging.path).st_ino
        inside = _signatures(staging.path)
        dest = output_dir(project, target)
        dest.parent.mkdir(parents=True, exist_ok=True)
        _move_into_place(staging, dest)
        folder = signature(dest, follow_symlinks=False)
        if folder is not None and folder[INO] != placed:
            folder = None
        # Written whole, by rename: a reader never sees half a marker.
        staged_marker = staging.sibling("marker")
        staged_marker.write_bytes(marshal.dumps((digest, folder, inside)))
        os.replace(staged_marker, marker(project, target))
    finally:
        staging.release()
    return True


def _signatures(root: Path) -> list[tuple[str, tuple]]:
    """(path relative to ``root``, stat signature) of everything under it."""
    found = []
    for folder, dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        for name in (*dirs, *files):
            path = name if rel == "." else f"{rel}/{name}"
            found.append((path, signature(os.path.join(folder, name), follow_symlinks=False)))
    return found


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
            _move_aside(dest, staging.sibling(f"old{attempt}"))
        except FileNotFoundError:
            continue  # another build moved it aside first
    raise OSError(errno.EBUSY, "other builds kept replacing it at the same moment", str(dest))


def _move_aside(dest: Path, aside: Path) -> None:
    """Rename ``dest`` to ``aside``. A folder without write permission (as
    Kiln made them before its folders were writable) cannot be moved to
    another folder by its owner (its ``..`` changes): it is opened first."""
    try:
        os.rename(dest, aside)
    except PermissionError:
        if not stat.S_ISDIR(os.lstat(dest).st_mode):
            raise
        os.chmod(dest, 0o755)
        os.rename(dest, aside)


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
