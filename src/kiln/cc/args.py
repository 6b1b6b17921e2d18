"""What a compiler command line asks for: one cacheable compile, or not.

``kiln cc`` memoizes exactly one kind of invocation: ``-c`` of one source
file into one object (with an optional dependency file). Everything else
(linking, preprocessing, several sources, reading stdin, options whose
effects Kiln cannot see, such as profile data or response files) runs the
real compiler directly, and ``classify`` says why, for ``kiln cc --stats``.

The rules are those of GCC and Clang's drivers: options that take their
value as the next argument are listed in ``SEPARATE``; the rest are one
argument each (``-DX=1``, ``-Iinclude``, ``-O2``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

SOURCE_SUFFIXES = {
    ".c": "c", ".i": "c",
    ".cc": "c++", ".cp": "c++", ".cxx": "c++", ".cpp": "c++", ".c++": "c++", ".C": "c++",
    ".CPP": "c++", ".ii": "c++",
    ".m": "objective-c", ".mm": "objective-c++",
    ".s": "assembler", ".S": "assembler-with-cpp", ".sx": "assembler-with-cpp",
}  # fmt: skip

# What in a source or header makes the compiler look for files that no
# list of the headers it read shows (so a sandbox holding only those would
# answer differently).
FILE_PROBES = re.compile(rb"__has_include|__has_embed|\.incbin")

# Options whose value is the next argument (when not attached).
SEPARATE = {
    "-o", "-I", "-D", "-U", "-include", "-imacros", "-isystem", "-iquote", "-idirafter",
    "-iprefix", "-iwithprefix", "-iwithprefixbefore", "-isysroot", "--sysroot", "-x", "-MF",
    "-MT", "-MQ", "-arch", "-target", "--target", "-Xpreprocessor", "-Xassembler", "-Xclang",
    "-aux-info", "-G", "-B", "-L", "-l", "-u", "-T", "-Xlinker", "-z", "-e", "-imultilib",
    "--param", "-A", "-F",
}  # fmt: skip

# Options that make the invocation something other than one cacheable
# compile, and why (a prefix match on the argument).
UNCACHEABLE = {
    "-E": "preprocessing only (-E)",
    "-M": "dependency output without a compile (-M/-MM)",
    "-MM": "dependency output without a compile (-M/-MM)",
    "-S": "assembly output (-S)",
    "-save-temps": "writes temporary files beside the output (-save-temps)",
    "-fprofile-generate": "profile instrumentation (-fprofile-generate)",
    "-fprofile-use": "reads profile data (-fprofile-use)",
    "-fprofile-arcs": "coverage data (-fprofile-arcs)",
    "-ftest-coverage": "coverage data (-ftest-coverage)",
    "--coverage": "coverage data (--coverage)",
    "-fauto-profile": "reads profile data (-fauto-profile)",
    "-gsplit-dwarf": "a second output (.dwo, -gsplit-dwarf)",
    "-fplugin": "a compiler plugin (-fplugin)",
    "-ftime-trace": "writes a trace file (-ftime-trace)",
    "-fdump-": "writes dump files (-fdump-*)",
    "-Xclang": "options passed straight to clang's front end (-Xclang)",
    "-Wp,": "options passed straight to the preprocessor (-Wp,)",
    "-Xpreprocessor": "options passed straight to the preprocessor (-Xpreprocessor)",
    "-specs": "a specs file changes the driver (-specs)",
    "-fmodules": "Clang modules read a module cache (-fmodules)",
}


@dataclass(frozen=True)
class Compile:
    """One cacheable compile: ``source`` to ``output`` (and ``dep_file``)."""

    source: str
    output: str
    language: str
    dep_file: str | None  # where -MD/-MMD write, if asked
    args: tuple[str, ...]  # every argument, as given


@dataclass(frozen=True)
class PassThrough:
    """Not one cacheable compile: the real compiler runs it directly."""

    reason: str


def _uncacheable(arg: str) -> str | None:
    for prefix, reason in UNCACHEABLE.items():
        exact = prefix in ("-E", "-M", "-MM", "-S")
        if arg == prefix if exact else arg.startswith(prefix):
            return reason
    return None


def classify(args: list[str]) -> Compile | PassThrough:
    """What the compiler arguments ``args`` (without the compiler) ask for."""
    sources: list[str] = []
    output: str | None = None
    dep_file: str | None = None
    language: str | None = None
    compile_only = wants_deps = False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("@"):
            return PassThrough("a response file (@file)")
        reason = _uncacheable(arg)
        if reason:
            return PassThrough(reason)
        if arg in SEPARATE:
            if i + 1 >= len(args):
                return PassThrough(f"{arg} without its value")
            value = args[i + 1]
            if arg == "-o":
                output = value
            elif arg == "-MF":
                dep_file = value
            elif arg == "-x":
                language = value
            i += 2
            continue
        if arg == "-c":
            compile_only = True
        elif arg in ("-MD", "-MMD"):
            wants_deps = True
        elif arg.startswith("-o") and len(arg) > 2:
            output = arg[2:]
        elif arg.startswith("-MF") and len(arg) > 3:
            dep_file = arg[3:]
        elif arg.startswith("-x") and len(arg) > 2:
            language = arg[2:]
        elif arg == "-":
            return PassThrough("the source comes from stdin (-)")
        elif not arg.startswith("-"):
            sources.append(arg)
        i += 1
    if not compile_only:
        return PassThrough("not a compile (no -c): linking or a driver query")
    if len(sources) != 1:
        return PassThrough("no source file" if not sources else "several source files")
    source = sources[0]
    stem, suffix = os.path.splitext(source)
    if language is None:
        language = SOURCE_SUFFIXES.get(suffix)
        if language is None:
            return PassThrough(f"an input that is not a known source file ({source})")
    if output is None:
        output = os.path.basename(stem) + ".o"
    if wants_deps and dep_file is None:
        dep_file = os.path.splitext(output)[0] + ".d"
    elif not wants_deps and dep_file is not None:
        return PassThrough("-MF without -MD or -MMD")
    return Compile(source, output, language, dep_file if wants_deps else None, tuple(args))


def without_outputs(args: list[str]) -> list[str]:
    """The arguments less the compile and its outputs (for ``-M``)."""
    out: list[str] = []
    skip_next = False
    for arg in args:
        if skip_next:
            skip_next = False
            continue
        if arg in ("-o", "-MF", "-MT", "-MQ"):
            skip_next = True
            continue
        if arg in ("-c", "-MD", "-MMD", "-MP") or arg.startswith(("-o", "-MF", "-MT", "-MQ")):
            continue
        out.append(arg)
    return out
