"""What git would leave out of a source tree: ``source_tree(path, gitignore=True)``.

A ``GitIgnore`` is the store's ``Filter`` (store/ingest.py) for one source
tree of a project: the entries it leaves out are never read, hashed or
stored, so they are no part of the tree's digest. The rules, as git
applies them (gitignore(5)), without asking git (the project need not be a
git checkout):

- ``.git/info/exclude`` of the project root, the lowest precedence;
- the ``.gitignore`` of the project root, of each folder down to the
  tree's folder and of each folder inside the tree, each relative to its
  own folder; a deeper file decides before a shallower one, and in one
  file the last pattern that matches decides (``!`` keeps what an earlier
  one left out);
- a folder left out is not entered: nothing in it can be kept again, and
  its own ``.gitignore`` is not read;
- an entry named ``.git`` is always left out.

Each line is parsed by ``pathspec``'s gitignore flavour
(``GitIgnoreSpecPattern``, what ``pathspec.GitIgnoreSpec`` compiles a line
to), but matched against one entry at a time, as git's own walk does: a
pattern matches an entry (its path relative to the pattern's folder) as a
whole, and one ending with ``/`` only a folder. ``GitIgnoreSpec.match_file`` also
counts a match of one of the path's leading folders, which is right for
the flat file list of one ``.gitignore`` but not once a deeper
``.gitignore`` keeps such a folder again.

The key of a folder's rules is a digest of everything they come from (the
project root, the folder's path in it, each rules file's folder and
bytes), the same whichever tree the folder is put as part of, so the stat
cache of a folder (store/ingest.py) never answers under rules other than
its own.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat

from kiln import errors
from kiln.store.ingest import Filter, Listing, Scope

# Part of every key: a change of what the rules mean must change it.
VERSION = b"kiln-gitignore-1"
NAMESPACE = "gitignore:"
RULES_FILE = ".gitignore"
EXCLUDE_FILE = os.path.join(".git", "info", "exclude")

# The endings of the regular expressions pathspec 1.1.1 makes of a pattern
# (patterns/gitignore/spec.py), and what each becomes when the expression
# must match the whole of one entry's path (and whether only a folder's):
_ANY_TAIL = "(?:(?P<ps_d>/)|$)"  # "name": a file or a folder of that name
_DIR_TAIL = "(?P<ps_d>/)"  # "name/": only a folder
_WHOLE = {
    ".": (r".+\Z", False),  # "*", "**": everything
    _DIR_TAIL: (r".+\Z", True),  # "**//": every folder
    "/": (r".+/.+\Z", False),  # "**/*/**": everything below the first level
}


def _whole(regex: str) -> tuple[str, bool]:
    """``regex`` (of a pathspec gitignore pattern) matching a whole entry
    path, and whether it matches only folders."""
    if regex in _WHOLE:
        return _WHOLE[regex]
    if regex.endswith(_ANY_TAIL):
        return regex[: -len(_ANY_TAIL)] + r"\Z", False
    if regex.endswith(_DIR_TAIL):
        return regex[: -len(_DIR_TAIL)] + r"\Z", True
    if regex.endswith("/"):  # "dir/**": everything inside dir, not dir itself
        return regex + r".+\Z", False
    raise AssertionError(f"a gitignore pattern's expression of unknown shape: {regex!r}")


class _Pattern:
    __slots__ = ("file", "folders", "ignores", "line", "regex", "text")

    def __init__(
        self, regex: re.Pattern[str], ignores: bool, folders: bool, file: str, line: int, text: str
    ) -> None:
        self.regex = regex
        self.ignores = ignores  # False: a "!" pattern
        self.folders = folders  # matches only folders (it ended with "/")
        self.file = file
        self.line = line
        self.text = text

    def __str__(self) -> str:
        if self is _GIT:
            return "git's own folder"
        return f"{self.file}:{self.line} ({self.text.strip()!r})"


class _Rules:
    """The patterns of one rules file, compiled; ``base``: the folder they
    are relative to (from the project root, "" for the root)."""

    __slots__ = ("any_file", "any_folder", "base", "patterns")

    def __init__(self, base: str, patterns: list[_Pattern]) -> None:
        self.base = base
        self.patterns = patterns
        # One test of all the patterns at once: most entries match none.
        self.any_folder = _either(patterns)
        self.any_file = _either([p for p in patterns if not p.folders])

    def match(self, path: str, is_dir: bool) -> _Pattern | None:
        """The pattern deciding about the entry at ``path`` (relative to
        ``base``), if any."""
        either = self.any_folder if is_dir else self.any_file
        if either is None or either.match(path) is None:
            return None
        return next(
            p
            for p in reversed(self.patterns)
            if (is_dir or not p.folders) and p.regex.match(path) is not None
        )


def _either(patterns: list[_Pattern]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p.regex.pattern})" for p in patterns), re.DOTALL)


def parse(text: str, file: str, base: str) -> _Rules:
    """The rules of one file; a ``KilnError`` naming the line of a bad pattern."""
    from pathspec.patterns.gitignore.base import GitIgnorePatternError
    from pathspec.patterns.gitignore.spec import GitIgnoreSpecPattern

    patterns = []
    for number, line in enumerate(text.removeprefix("\ufeff").split("\n"), 1):
        # As git does, a "/" at the end only says "folders only" and is
        # taken off before the rest is matched: pathspec would read
        # "dir/**/" as "dir/" (matching dir itself, which git does not).
        body = line if line.endswith("\\ ") else line.rstrip()
        folders = body.endswith("/") and body[:-1] not in ("", "!") and body[-2] != "\\"
        if "//" in body:
            continue  # no path has an empty part: git matches nothing with it
        if folders:
            body = body[:-1]
            if body.endswith(" ") and not body.endswith("\\ "):
                body = body[:-1] + "\\ "  # (spaces before the "/" are part of it)
        try:
            pattern = GitIgnoreSpecPattern(body if folders else line)
        except (GitIgnorePatternError, re.error) as e:
            raise errors.KilnError(
                f"{file}:{number}: bad gitignore pattern {line.strip()!r} ({e})",
                hint="fix or remove the line (patterns are described in gitignore(5))",
                exit_code=errors.ExitCode.BAD_INPUT,
                path=file,
                line=number,
            ) from None
        if pattern.include is None or pattern.regex is None:
            continue  # blank, a comment, or nothing git would match
        regex, only_folders = _whole(pattern.regex.pattern)
        compiled = re.compile(regex, re.DOTALL)
        patterns.append(
            _Pattern(compiled, pattern.include, folders or only_folders, file, number, line)
        )
    return _Rules(base, patterns)


class _Source:
    """A rules file in force: where, its folder, its text (parsed when needed)."""

    __slots__ = ("base", "file", "text")

    def __init__(self, file: str, base: str, text: str) -> None:
        self.file = file
        self.base = base
        self.text = text


class _Scope(Scope):
    """The rules in force for the entries of one folder."""

    __slots__ = ("_checks", "_filter", "key", "next_rel", "rel", "sources")

    def __init__(
        self, filter: GitIgnore, rel: str | None, sources: tuple[_Source, ...], key: str
    ) -> None:
        self._filter = filter
        self.rel = rel  # the folder from the project root ("" root; None: above the root)
        self.sources = sources  # lowest precedence first
        self.key = key
        self.next_rel: str | None = None  # (set: the rel of the one folder entered)
        self._checks: list[tuple[_Rules, str]] | None = None

    def enter(self, path: str, listing: Listing) -> _Scope:
        if self.next_rel is not None:
            rel = self.next_rel
        elif self.rel is None:
            rel = ""
        else:
            name = os.path.basename(path)
            rel = f"{self.rel}/{name}" if self.rel else name
        return self._filter.scope(path, rel, listing, self)

    def keep(self, listing: Listing) -> Listing:
        return [e for e in listing if self.ignoring(e[0], len(e) == 2) is None]

    def ignoring(self, name: str, is_dir: bool) -> _Pattern | None:
        """The pattern that leaves the entry ``name`` out, or None if it is
        kept (a ``!`` pattern keeping it counts as None)."""
        if name == ".git":
            return _GIT
        if self._checks is None:
            self._checks = self._compile()
        for rules, prefix in self._checks:
            pattern = rules.match(prefix + name, is_dir)
            if pattern is not None:
                return pattern if pattern.ignores else None
        return None

    def _compile(self) -> list[tuple[_Rules, str]]:
        """Each rules file in force, the deepest first, with the path of
        this folder relative to the file's folder (as a prefix)."""
        assert self.rel is not None
        checks = []
        for source in reversed(self.sources):
            rules = self._filter.rules(source)
            below = self.rel[len(source.base) :].lstrip("/")
            checks.append((rules, f"{below}/" if below else ""))
        return checks


_GIT = _Pattern(re.compile(r"\.git\Z"), True, False, "(git's own folder)", 0, ".git")


class GitIgnore(Filter):
    """The ``Filter`` of one source tree: ``project`` (the project root),
    ``rel`` the tree's folder in it ("" for the root). ``parsed`` is shared
    by the trees of one build: each rules file is parsed once."""

    namespace = NAMESPACE

    def __init__(
        self, project: str | os.PathLike[str], rel: str, parsed: dict[tuple[str, str], _Rules]
    ) -> None:
        self.project = os.path.realpath(project)
        self.rel = rel
        self._parsed = parsed

    def top(self, root: str) -> _Scope:
        """The scope above the tree's folder, after checking that no rule
        leaves out the folder itself or one of the folders above it."""
        exclude = os.path.join(self.project, EXCLUDE_FILE)
        text = _read(exclude) if _is_file(exclude) else None
        key = hashlib.sha256(VERSION + b"\0" + os.fsencode(self.project))
        sources: tuple[_Source, ...] = ()
        if text is not None:
            key.update(b"\0exclude\0" + text)
            sources = (_Source(exclude, "", _decode(text)),)
        scope = _Scope(self, None, sources, key.hexdigest())
        folder = self.project
        for name in self.rel.split("/") if self.rel else []:
            scope = scope.enter(folder, _rules_listing(folder))
            pattern = scope.ignoring(name, True)
            if pattern is not None:
                raise errors.KilnError(
                    f"source folder {self.rel!r} is ignored by git: {pattern} leaves out "
                    f"{os.path.join(scope.rel or '', name)!r}",
                    hint="leave out gitignore=True, or keep the folder with a '!' pattern",
                    exit_code=errors.ExitCode.BAD_INPUT,
                    path=pattern.file,
                    line=pattern.line,
                )
            folder = os.path.join(folder, name)
        scope.next_rel = self.rel
        return scope

    def scope(self, path: str, rel: str, listing: Listing, above: _Scope) -> _Scope:
        """The scope of the folder at ``path`` (``rel`` from the project root):
        ``above``'s rules and those of its own ``.gitignore`` (a regular
        file; git does not follow a symlink there either)."""
        key = hashlib.sha256(f"{above.key}\0{rel}\0".encode(errors="surrogateescape"))
        mode = next((e[1] for e in listing if e[0] == RULES_FILE), None)
        if mode is None or not stat.S_ISREG(mode):
            return _Scope(self, rel, above.sources, key.hexdigest())
        file = os.path.join(path, RULES_FILE)
        text = _read(file)
        key.update(b"rules\0" + text)
        source = _Source(file, rel, _decode(text))
        return _Scope(self, rel, (*above.sources, source), key.hexdigest())

    def rules(self, source: _Source) -> _Rules:
        """``source`` parsed (once per build)."""
        known = self._parsed.get((source.file, source.text))
        if known is None:
            known = self._parsed[(source.file, source.text)] = parse(
                source.text, source.file, source.base
            )
        return known


def _rules_listing(folder: str) -> Listing:
    """As much of a folder's listing as a scope needs: its rules file."""
    try:
        return [(RULES_FILE, os.lstat(os.path.join(folder, RULES_FILE)).st_mode)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _is_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def _read(file: str) -> bytes:
    try:
        with open(file, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise errors.path_missing(file) from None
    except OSError as e:
        raise errors.KilnError(
            f"{file}: cannot read its gitignore rules ({e.strerror or e})",
            hint="fix its permissions, or leave out gitignore=True",
            exit_code=errors.ExitCode.BAD_INPUT,
            path=file,
        ) from None


def _decode(text: bytes) -> str:
    """A rules file's text (bytes that are not UTF-8 as file names are)."""
    return text.decode("utf-8", errors="surrogateescape")
