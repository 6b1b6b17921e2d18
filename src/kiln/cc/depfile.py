"""Make-syntax dependency files, as GCC and Clang write them (``-M``, ``-MD``).

A rule is ``target...: prerequisite...`` with backslash-newline
continuations; a space inside a name is written ``\\ ``, a ``$`` as ``$$``
and a ``#`` as ``\\#``. ``-MP`` adds an empty rule per header, which adds
no prerequisite here.
"""

from __future__ import annotations


def prerequisites(text: str) -> list[str]:
    """Every prerequisite named in ``text``, in order, each once."""
    seen: dict[str, None] = {}
    for rule in _rules(text):
        target_end = _colon(rule)
        if target_end is None:
            continue
        for name in _words(rule[target_end + 1 :]):
            seen.setdefault(name, None)
    return list(seen)


def _rules(text: str) -> list[str]:
    """The logical lines of ``text`` (continuations joined)."""
    joined = text.replace("\\\r\n", " ").replace("\\\n", " ")
    return [line for line in joined.splitlines() if line.strip()]


def _colon(rule: str) -> int | None:
    """Where the target list ends: the first ``:`` that is not escaped and
    not a drive letter's (``C:\\``, which these compilers never write here)."""
    i = 0
    while i < len(rule):
        ch = rule[i]
        if ch == "\\":
            i += 2
            continue
        if ch == ":":
            return i
        i += 1
    return None


def _words(text: str) -> list[str]:
    words: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in " #":
            current.append(text[i + 1])
            i += 2
            continue
        if ch == "$" and text[i + 1 : i + 2] == "$":
            current.append("$")
            i += 2
            continue
        if ch in " \t":
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(ch)
        i += 1
    if current:
        words.append("".join(current))
    return words
