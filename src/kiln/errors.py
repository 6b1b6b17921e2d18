"""User-facing errors.

Every error a user can cause has a named constructor here that builds a
message, labelled fields (what, where) and a hint (what to do). The CLI prints
``KilnError`` as one line plus its hint and exits with ``exit_code``; it never
shows a traceback for one.
"""

from __future__ import annotations

import os


class ExitCode:
    """Exit codes of the ``kiln`` command (documented in docs/cli.md)."""

    OK = 0
    FAILED = 1  # the command ran and found a problem (e.g. corrupt blobs)
    BAD_INPUT = 2  # usage error, malformed argument, unusable input path
    NOT_FOUND = 3  # a digest or name that is not in the store, a target never built
    STORE = 4  # the store itself cannot be used (permissions, disk, lock)
    INTERRUPTED = 130  # stopped by Ctrl-C (SIGINT), as shells report it


class KilnError(Exception):
    """An error caused by input or environment, reported without traceback."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        exit_code: int = ExitCode.FAILED,
        **fields: object,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code
        self.fields = fields

    def __str__(self) -> str:
        return self.message

    def render(self) -> str:
        """One line: the message, then the hint if there is one."""
        if self.hint:
            return f"{self.message} (hint: {self.hint})"
        return self.message


def malformed_digest(text: str, reason: str) -> KilnError:
    return KilnError(
        f"malformed digest {text!r}: {reason}",
        hint="write a digest as <64 hex chars>/<size in bytes>, as `kiln store put` prints it",
        exit_code=ExitCode.BAD_INPUT,
        digest=text,
    )


def digest_not_found(digest: object, what: str = "blob") -> KilnError:
    return KilnError(
        f"{what} {digest} is not in the store",
        hint="check the digest, or `kiln store put` the content first",
        exit_code=ExitCode.NOT_FOUND,
        digest=str(digest),
    )


def not_a_directory(digest: object) -> KilnError:
    return KilnError(
        f"blob {digest} is not a tree (not a canonical REAPI Directory message)",
        hint="if it is a file's digest, use `kiln store get --blob`",
        exit_code=ExitCode.BAD_INPUT,
        digest=str(digest),
    )


def path_missing(path: str | os.PathLike[str]) -> KilnError:
    return KilnError(
        f"{os.fspath(path)}: no such file or directory",
        hint="check the path",
        exit_code=ExitCode.BAD_INPUT,
        path=os.fspath(path),
    )


def path_unreadable(path: str | os.PathLike[str], reason: str) -> KilnError:
    return KilnError(
        f"{os.fspath(path)}: cannot read ({reason})",
        hint="fix its permissions or leave it out of the tree",
        exit_code=ExitCode.BAD_INPUT,
        path=os.fspath(path),
    )


def unsupported_file_type(path: str | os.PathLike[str], kind: str) -> KilnError:
    return KilnError(
        f"{os.fspath(path)}: is a {kind}; only regular files, directories and symlinks "
        "can be stored",
        hint="remove it from the tree or move it elsewhere",
        exit_code=ExitCode.BAD_INPUT,
        path=os.fspath(path),
        kind=kind,
    )


def bad_name(name: str, where: str) -> KilnError:
    return KilnError(
        f"invalid entry name {name!r} in {where}",
        hint="names must be non-empty, not '.' or '..', and contain no '/' or NUL",
        exit_code=ExitCode.BAD_INPUT,
        name=name,
    )


def destination_not_empty(path: str | os.PathLike[str]) -> KilnError:
    return KilnError(
        f"{os.fspath(path)}: destination exists and is not an empty directory",
        hint="choose a new path or remove it first",
        exit_code=ExitCode.BAD_INPUT,
        path=os.fspath(path),
    )


def store_unusable(path: str | os.PathLike[str], reason: str) -> KilnError:
    return KilnError(
        f"store at {os.fspath(path)} cannot be used: {reason}",
        hint="check KILN_HOME and its permissions and free space (`df -h`)",
        exit_code=ExitCode.STORE,
        path=os.fspath(path),
    )


def corrupt_blob(digest: object, actual: object) -> KilnError:
    return KilnError(
        f"blob {digest} is corrupt in the store (its content hashes to {actual})",
        hint="run `kiln store verify` to quarantine corrupt blobs, then rebuild",
        exit_code=ExitCode.FAILED,
        digest=str(digest),
    )


class UnsafeArchive(KilnError):
    """An archive Kiln refuses to unpack: a member that would escape the
    tree or is not a plain file, or more content than the limits allow."""


def unsafe_archive(archive: str, problem: str) -> UnsafeArchive:
    return UnsafeArchive(
        f"{archive}: {problem}",
        hint="an archive's members must stay inside it; do not use this archive unless you "
        "trust it and can repack it",
        exit_code=ExitCode.FAILED,
        archive=archive,
    )


def archive_link_escapes(archive: str, path: str, target: str, reason: str) -> UnsafeArchive:
    return UnsafeArchive(
        f"{archive}: symlink {path!r} -> {target!r} points outside the tree ({reason})",
        hint="symlinks in an archive must resolve inside it, through its own folders and links",
        exit_code=ExitCode.FAILED,
        archive=archive,
        path=path,
        target=target,
    )


def archive_over_limit(archive: str, problem: str, setting: str, config: str) -> UnsafeArchive:
    """An archive past one of the unpacking limits (``setting`` in the
    ``[archives]`` table of the config file ``config``)."""
    return UnsafeArchive(
        f"{archive}: {problem}; refused (a decompression bomb?)",
        hint=f"if you trust it, raise `{setting}` in the [archives] table of {config}",
        exit_code=ExitCode.FAILED,
        archive=archive,
        setting=setting,
    )


def blob_missing(digest: object, what: str = "blob") -> KilnError:
    """A blob the store recorded (a result, a tree) is no longer there."""
    return KilnError(
        f"{what} {digest} is missing from the store",
        hint="run the command again (the step that made it runs again); "
        "if this keeps happening, run `kiln store verify`",
        exit_code=ExitCode.NOT_FOUND,
        digest=str(digest),
    )


# What each kind of database failure means, and what to do about it.
_DATABASE_PROBLEMS = {
    "corrupt": (
        "is damaged",
        "stop all kiln processes, then move {path}, {path}-wal and {path}-shm aside: Kiln "
        "starts a new database (blobs are kept; cached results, roots and history are lost, "
        "so rebuild your projects before the next `kiln gc`); `sqlite3 {path} .recover` "
        "may save its rows",
    ),
    "io": ("cannot be read or written (disk I/O error)",
           "check the disk (`dmesg`) and that it has free space (`df -h`)"),
    "full": ("cannot grow: the disk is full",
             "free space on that disk (`df -h`); `kiln gc` removes unused blobs"),
    "locked": ("stayed locked by another kiln process for {timeout:.0f} s",
               "wait for the other process to finish (`fuser {path}` names it), then retry"),
    "read-only": ("cannot be written (read-only)",
                  "check the permissions of the store folder and its file system"),
    "cannot-open": ("cannot be opened", "check that the store folder exists and is writable"),
    "other": ("failed", "retry; if it fails again, check the disk and the store folder"),
}  # fmt: skip


def database_failed(
    path: str | os.PathLike[str], problem: str, detail: str, timeout: float = 0.0
) -> KilnError:
    """The store's SQLite database failed; ``problem`` is a key of
    ``_DATABASE_PROBLEMS``, ``detail`` SQLite's own message."""
    what, hint = _DATABASE_PROBLEMS[problem]
    path = os.fspath(path)
    return KilnError(
        f"the store's database {path} {what.format(timeout=timeout)} ({detail})",
        hint=hint.format(path=path),
        exit_code=ExitCode.STORE,
        path=path,
        problem=problem,
    )


def unreadable_archive(archive: str, reason: str) -> KilnError:
    return KilnError(
        f"{archive}: cannot be unpacked ({reason})",
        hint="Kiln unpacks tar (plain, gzip, bzip2, xz) and zip; fetch anything else as a file, "
        "and check that the download is complete",
        exit_code=ExitCode.FAILED,
        archive=archive,
    )


def unknown_target(build_file: object, name: str, known: list[str]) -> KilnError:
    """A target name the build file does not define; the hint suggests the
    closest defined name."""
    import difflib  # (start-up: only when a name is wrong)

    close = difflib.get_close_matches(name, known, n=1)
    listed = ", ".join(sorted(known)) or "none"
    hint = f"did you mean {close[0]!r}? " if close else ""
    return KilnError(
        f"{build_file}: no target {name!r}",
        hint=f"{hint}targets are: {listed} (`kiln targets` lists them)",
        exit_code=ExitCode.BAD_INPUT,
        target=name,
    )


def never_built(project: object, target: str | None = None) -> KilnError:
    """No build (of ``target``) of ``project`` is recorded in the store."""
    what = f"target {target!r} of {project} has" if target else f"{project} has"
    return KilnError(
        f"{what} not been built with this store (no build is recorded)",
        hint=f"run `kiln build{' ' + target if target else ''}` first",
        exit_code=ExitCode.NOT_FOUND,
        target=target,
    )


def bad_usage(message: str, command: str) -> KilnError:
    """A command line that does not parse (click's usage errors)."""
    import re  # (start-up: only on a usage error)

    found = re.search(r"\.? \(?Did you mean (.*?)\)?$", message)  # click's own guess
    guess = f"did you mean {found.group(1)}; " if found else ""
    message = message[: found.start()] if found else message
    return KilnError(
        message[:1].lower() + message[1:].rstrip("."),
        hint=f"{guess}see `{command} --help`",
        exit_code=ExitCode.BAD_INPUT,
    )
