"""The include scanner that decides which project headers a C unit's compile
step sees: a superset of what clang could open, never less."""

from __future__ import annotations

from kiln.engine.values import File
from kiln.model.digest import Digest
from kiln.rules.c_includes import IncludeScanner, parse_directives, search_dirs


def files(tree: dict[str, str]) -> dict[str, File]:
    return {p: File(p, Digest.of_bytes(t.encode())) for p, t in tree.items()}


def scan(tree: dict[str, str], unit: str, cflags: list[str] = ()) -> list[str]:
    values = files(tree)
    content = {values[p].digest: t.encode() for p, t in tree.items()}
    reads: list[str] = []

    def read(f: File) -> bytes:
        reads.append(f.path)
        return content[f.digest]

    headers = [v for p, v in values.items() if p.endswith(".h")]
    scanner = IncludeScanner(headers, list(cflags), read)
    found = [h.path for h in scanner.headers_of(values[unit])]
    assert len(reads) == len(set(reads)), "each file is read once"
    return found


def test_direct_and_nested_includes_through_an_include_folder() -> None:
    tree = {
        "src/a.c": '#include "a.h"\n#include <stdio.h>\nint main(void) { return 0; }\n',
        "include/a.h": '#pragma once\n#include "b.h"\n',
        "include/b.h": "#include <stdlib.h>\n",
        "include/c.h": "int unrelated;\n",
    }
    assert scan(tree, "src/a.c", ["-Iinclude"]) == ["include/a.h", "include/b.h"]


def test_headers_under_conditionals_and_has_include_count() -> None:
    tree = {
        "a.c": '#ifdef WINDOWS\n#  include "win.h"\n#endif\n#if __has_include("opt.h")\n#endif\n',
        "win.h": "",
        "opt.h": "",
        "other.h": "",
    }
    assert scan(tree, "a.c") == ["win.h", "opt.h"]


def test_a_computed_include_gives_every_header() -> None:
    tree = {"a.c": '#define H "x.h"\n#include H\n', "x.h": "", "y.h": ""}
    assert scan(tree, "a.c") == ["x.h", "y.h"]
    nested = {"a.c": '#include "x.h"\n', "x.h": "#include CONFIG\n", "y.h": ""}
    assert scan(nested, "a.c") == ["x.h", "y.h"]


def test_names_resolve_next_to_the_includer_by_flag_folder_and_by_suffix() -> None:
    tree = {
        "lib/src/a.c": '#include "../inc/a.h"\n#include "util/strings.h"\n#include <cfg.h>\n',
        "lib/inc/a.h": "",
        "third/util/strings.h": "",
        "gen/cfg.h": "",
        "gen/other.h": "",
    }
    assert scan(tree, "lib/src/a.c", ["-I", "gen"]) == [
        "lib/inc/a.h", "third/util/strings.h", "gen/cfg.h",
    ]  # fmt: skip


def test_include_cycles_end_and_continued_lines_are_joined() -> None:
    tree = {
        "a.c": '#include "x.h"\n',
        "x.h": '#include "y.h"\n',
        "y.h": '#\\\ninclude "x.h"\n#include \\\n"z.h"\n',
        "z.h": "",
    }
    assert scan(tree, "a.c") == ["x.h", "y.h", "z.h"]


def test_forced_includes_and_their_headers_are_seen() -> None:
    tree = {"a.c": "int x;\n", "config.h": '#include "defs.h"\n', "defs.h": "", "no.h": ""}
    assert scan(tree, "a.c", ["-include", "config.h"]) == ["config.h", "defs.h"]


def test_search_dirs_reads_every_spelling() -> None:
    flags = ["-Iinc", "-I", "gen/", "-iquote", "q", "-isystemsys", "-O2", "-include", "f.h"]
    assert search_dirs(flags) == (["inc", "gen", "q", "sys"], ["f.h"])


def test_directives_mention_names_not_text() -> None:
    parsed = parse_directives(b'/* #include in a comment: a superset */\nint a; // "#include"\n')
    assert parsed.names == () and not parsed.computed
    assert parse_directives(b"  #  import <objc.h>\n").names == ("objc.h",)
