"""Which project headers a C translation unit may include, found by reading
its ``#include`` lines (and those of the headers it reaches) in Python.

The answer is a superset on purpose: conditionals are ignored (a header
named under an ``#if`` counts), ``__has_include`` counts as an include, a
name matches every header whose path it could resolve to (next to the
includer, under a ``-I``-style folder, or as a path suffix), and a computed
``#include MACRO`` gives every header. A compile step that sees this set
therefore finds everything clang could open; one that sees too little
fails with "file not found" instead of producing a wrong object, because
the step's sandbox holds only its declared inputs.

Names that match no project header are left to the toolchain's ``/usr``.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kiln.engine.values import File
from kiln.model.digest import Digest

__all__ = ["IncludeScanner", "search_dirs"]

# Translation phase 2 first (backslash-newline joins lines), then directives.
_CONTINUATION = re.compile(rb"\\\r?\n")
_DIRECTIVE = re.compile(
    rb"^[ \t]*#[ \t]*(?:include|include_next|import)\b[ \t]*(.*)$", re.MULTILINE
)
_HAS_INCLUDE = re.compile(rb"__has_include(?:_next)?\s*\(\s*([<\"])([^>\"\n]*)[>\"]")
_NAMED = re.compile(rb"([<\"])([^>\"\n]*)[>\"]")

# Flags naming a folder searched for includes (joined "-Idir" or separate "-I dir").
_DIR_FLAGS = ("-I", "-iquote", "-isystem", "-idirafter")


def search_dirs(cflags: Iterable[str]) -> tuple[list[str], list[str]]:
    """(include folders, forced includes) named by compiler flags."""
    folders: list[str] = []
    forced: list[str] = []
    flags = list(cflags)
    for i, flag in enumerate(flags):
        following = flags[i + 1] if i + 1 < len(flags) else None
        if flag == "-include" and following is not None:
            forced.append(following)
            continue
        for prefix in _DIR_FLAGS:
            if flag == prefix and following is not None:
                folders.append(posixpath.normpath(following))
                break
            if flag.startswith(prefix) and len(flag) > len(prefix):
                folders.append(posixpath.normpath(flag[len(prefix) :]))
                break
    return folders, forced


@dataclass(frozen=True)
class _Directives:
    names: tuple[str, ...]  # every name in an include or __has_include
    computed: bool  # an #include whose operand is a macro


def parse_directives(text: bytes) -> _Directives:
    """The header names a file's directives mention."""
    text = _CONTINUATION.sub(b"", text)
    names: list[str] = []
    computed = False
    for match in _DIRECTIVE.finditer(text):
        operand = match.group(1).strip()
        named = _NAMED.match(operand)
        if named is None:
            computed = True
        else:
            names.append(named.group(2).decode(errors="replace"))
    for match in _HAS_INCLUDE.finditer(text):
        names.append(match.group(2).decode(errors="replace"))
    return _Directives(tuple(names), computed)


class IncludeScanner:
    """Finds the headers (among ``headers``) a unit may include, directly or
    through other headers. One scanner reads each header once."""

    def __init__(
        self, headers: Iterable[File], cflags: Iterable[str], read: Callable[[File], bytes]
    ) -> None:
        self._headers = list(headers)
        self._by_path = {posixpath.normpath(h.path): h for h in self._headers}
        self._folders, self._forced = search_dirs(cflags)
        self._read = read
        self._parsed: dict[Digest, _Directives] = {}

    def headers_of(self, unit: File) -> list[File]:
        """The headers ``unit`` may include, in the order they were given."""
        found: set[str] = set()
        pending: list[tuple[str, str]] = [("", name) for name in self._forced]
        directives = self._directives(unit)
        if directives.computed:
            return list(self._headers)
        pending += [(unit.path, name) for name in directives.names]
        while pending:
            includer, name = pending.pop()
            for path in self._candidates(includer, name):
                if path in found:
                    continue
                found.add(path)
                directives = self._directives(self._by_path[path])
                if directives.computed:
                    return list(self._headers)
                pending += [(path, n) for n in directives.names]
        return [h for h in self._headers if posixpath.normpath(h.path) in found]

    def _directives(self, file: File) -> _Directives:
        parsed = self._parsed.get(file.digest)
        if parsed is None:
            parsed = self._parsed[file.digest] = parse_directives(self._read(file))
        return parsed

    def _candidates(self, includer: str, name: str) -> list[str]:
        """Project headers ``name`` could resolve to, seen from ``includer``."""
        bases = [posixpath.dirname(includer), *self._folders, ""]
        paths = {posixpath.normpath(posixpath.join(b, name)) for b in bases}
        suffix = "/" + posixpath.normpath(name)
        out = [p for p in paths if p in self._by_path]
        out += [p for p in self._by_path if p.endswith(suffix) and p not in paths]
        return out
