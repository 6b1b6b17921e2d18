"""A cacheable compile, restated as it runs in the sandbox.

The *project root* is the folder whose contents the sandbox mirrors at
``/work`` (``SANDBOX_ROOT``): ``$KILN_CC_BASE_DIR`` if set, else the
deepest folder holding the working folder, the source, the outputs and the
project's include folders. Paths under it are rewritten to ``/work/...``
in the arguments, so two checkouts of one project in different folders
give the same command, and so the same key.

Outputs must not embed the sandbox's folder, nor the host's unless the
key names it. A compile with debug information gets
``-fdebug-prefix-map=/work=ROOT`` (debuggers need the real folder, so the
host folder is in the key: such objects equal those of a compile outside
Kiln, and are shared only between checkouts at the same path, as with
ccache's default). ``__FILE__`` of a file named by an absolute path under
the root becomes its path relative to the root
(``-fmacro-prefix-map=/work/=``), as ccache's ``base_dir`` makes it, so
such compiles (CMake's) are shared between checkouts. A command line that
maps a prefix itself is left alone.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass

from kiln.cc.args import SEPARATE, Compile

SANDBOX_ROOT = "/work"
# Options whose value is a path (separate or attached).
PATH_OPTIONS = (
    "-I", "-isystem", "-iquote", "-idirafter", "-include", "-imacros", "-o", "-MF", "-MT",
    "-MQ", "-iprefix", "-iwithprefix", "-iwithprefixbefore", "-isysroot", "--sysroot",
)  # fmt: skip
SEARCH_OPTIONS = ("-iquote", "-I", "-isystem", "-idirafter")
PREFIX_MAPS = ("-ffile-prefix-map=", "-fdebug-prefix-map=", "-fmacro-prefix-map=")
# Environment variables that change what the compiler reads or writes
# behind the command line: such calls run directly.
UNCACHEABLE_ENV = (
    "CPATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH", "OBJC_INCLUDE_PATH", "GCC_EXEC_PREFIX",
    "COMPILER_PATH", "DEPENDENCIES_OUTPUT", "SUNPRO_DEPENDENCIES", "GCC_COMPARE_DEBUG",
)  # fmt: skip
# Variables that change the compiler's messages or output: in the key.
KEYED_ENV = ("LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "SOURCE_DATE_EPOCH")
SYSTEM_PREFIXES = ("/usr/", "/lib/", "/lib64/", "/etc/", "/opt/", "/nix/")  # never a root
SYSTEM_FOLDERS = ("/usr/", "/lib/", "/lib64/", "/etc/")  # headers of the compiler's packages


class NotCacheable(Exception):
    """Why this compile runs directly after all."""


@dataclass(frozen=True)
class Plan:
    """One compile in sandbox terms."""

    root: str  # host folder mirrored at /work
    cwd: str  # working folder, relative to root ("" for root itself)
    source: str  # relative to root
    argv: tuple[str, ...]  # as run in the sandbox (argv[0] the compiler)
    env: tuple[tuple[str, str], ...]
    outputs: dict[str, str]  # relative to root -> host path
    dep_file: str | None  # relative to root, if the command writes one
    search: tuple[str, ...]  # host include folders, in search order

    def host(self, relative: str) -> str:
        return posixpath.join(self.root, relative) if relative else self.root


def environment_reason(env: dict[str, str]) -> str | None:
    for name in UNCACHEABLE_ENV:
        if env.get(name):
            return f"the environment sets {name}"
    return None


def make_plan(
    compiler_path: str, unit: Compile, cwd: str, env: dict[str, str], up: int = 0
) -> Plan:
    """The sandbox form of ``unit`` run from ``cwd`` (a real, absolute path),
    its root ``up`` folders above the one its own paths give (the headers
    it reads may lie above that: see ``widen``)."""
    args = list(unit.args)
    host_paths = [cwd, _abs(cwd, unit.source), _abs(cwd, unit.output)]
    if unit.dep_file:
        host_paths.append(_abs(cwd, unit.dep_file))
    search = _search_folders(args, cwd)
    root = _root(env, host_paths + [d for d in search if not d.startswith(SYSTEM_PREFIXES)])
    for _ in range(up):
        root = posixpath.dirname(root)
    _check_root(root)
    argv = [compiler_path, *_rewrite(args, root)]
    argv += _prefix_maps(args, root, absolute=any(_is_under(a, root) for a in _path_values(args)))
    outputs = {_rel(root, _abs(cwd, unit.output)): _abs(cwd, unit.output)}
    dep_file = None
    if unit.dep_file:
        dep_file = _rel(root, _abs(cwd, unit.dep_file))
        outputs[dep_file] = _abs(cwd, unit.dep_file)
    source_dir = posixpath.dirname(_abs(cwd, unit.source))
    return Plan(
        root=root,
        cwd=_rel(root, cwd),
        source=_rel(root, _abs(cwd, unit.source)),
        argv=tuple(argv),
        env=tuple(sorted((k, env[k]) for k in KEYED_ENV if k in env)),
        outputs=outputs,
        dep_file=dep_file,
        search=(source_dir, *search),
    )


def _abs(cwd: str, path: str) -> str:
    return posixpath.normpath(posixpath.join(cwd, path))


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _rel(root: str, path: str) -> str:
    if not _is_under(path, root):
        raise NotCacheable(f"{path} is outside the project folder {root} (set KILN_CC_BASE_DIR)")
    rel = posixpath.relpath(path, root)
    return "" if rel == "." else rel


def _root(env: dict[str, str], paths: list[str]) -> str:
    given = env.get("KILN_CC_BASE_DIR")
    if given:
        if not posixpath.isabs(given):
            raise NotCacheable(f"KILN_CC_BASE_DIR={given!r} is not an absolute path")
        root = posixpath.normpath(os.path.realpath(given))
        for path in paths:
            _rel(root, path)
        return root
    return posixpath.commonpath(paths)


def _check_root(root: str) -> None:
    if root == "/" or root.startswith(SYSTEM_PREFIXES) or root + "/" in SYSTEM_PREFIXES:
        raise NotCacheable(
            f"its files have no common project folder ({root}); set KILN_CC_BASE_DIR"
        )


def widen(root: str, paths: list[str]) -> int:
    """How many folders above ``root`` the root must be to hold ``paths``."""
    common = posixpath.commonpath([root, *paths])
    _check_root(common)
    return root.count("/") - common.count("/") if common != root else 0


def is_system(path: str) -> bool:
    """Whether ``path`` is where the compiler's own packages put files."""
    return path.startswith(SYSTEM_FOLDERS)


def _option_values(args: list[str], options: tuple[str, ...]) -> list[tuple[int, str, str]]:
    """(index, option, value) of each path-valued option in ``args``."""
    found = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in options and i + 1 < len(args):
            found.append((i + 1, arg, args[i + 1]))
            i += 2
            continue
        if arg in SEPARATE:
            i += 2
            continue
        for option in options:
            if arg.startswith(option) and len(arg) > len(option) and not arg.startswith("-Wl"):
                value = arg[len(option) :]
                if option == "--sysroot":
                    value = value.removeprefix("=")
                found.append((i, option, value))
                break
        i += 1
    return found


def _search_folders(args: list[str], cwd: str) -> list[str]:
    by_option: dict[str, list[str]] = {o: [] for o in SEARCH_OPTIONS}
    for _i, option, value in _option_values(args, SEARCH_OPTIONS):
        by_option[option].append(_abs(cwd, value))
    return [d for option in SEARCH_OPTIONS for d in by_option[option]]


def _path_values(args: list[str]) -> list[str]:
    values = [v for _i, _o, v in _option_values(args, PATH_OPTIONS)]
    return values + [a for a in _sources(args)]


def _sources(args: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(args):
        if args[i] in SEPARATE:
            i += 2
            continue
        if not args[i].startswith("-"):
            out.append(args[i])
        i += 1
    return out


def _to_sandbox(value: str, root: str) -> str:
    if _is_under(value, root):
        return SANDBOX_ROOT + value[len(root.rstrip("/")) :]
    return value


def _rewrite(args: list[str], root: str) -> list[str]:
    out = list(args)
    for index, option, value in _option_values(args, PATH_OPTIONS):
        new = _to_sandbox(value, root)
        out[index] = new if out[index] == value else option + new
    i = 0
    while i < len(out):
        arg = out[i]
        if arg in SEPARATE:
            i += 2
            continue
        if not arg.startswith("-"):
            out[i] = _to_sandbox(arg, root)
        for prefix in PREFIX_MAPS:
            if arg.startswith(prefix) and "=" in arg[len(prefix) :]:
                old, new = arg[len(prefix) :].split("=", 1)
                out[i] = f"{prefix}{_to_sandbox(old, root)}={new}"
        i += 1
    return out


def _prefix_maps(args: list[str], root: str, absolute: bool) -> list[str]:
    """The maps that keep the host folder in the outputs where a compile
    outside Kiln would have put it (see the module's docstring)."""
    given = {p for a in args for p in PREFIX_MAPS if a.startswith(p)}
    if "-ffile-prefix-map=" in given:
        return []
    debug = any(a.startswith("-g") and a not in ("-g0", "-ggdb0") for a in args)
    maps = []
    if debug and "-fdebug-prefix-map=" not in given:
        maps.append(f"-fdebug-prefix-map={SANDBOX_ROOT}={root}")
    if absolute and "-fmacro-prefix-map=" not in given:
        maps.append(f"-fmacro-prefix-map={SANDBOX_ROOT}/=")
    return maps


def host_text(data: bytes, root: str) -> bytes:
    """Compiler messages with sandbox paths turned back into host paths."""
    return data.replace(SANDBOX_ROOT.encode() + b"/", root.encode() + b"/")


def host_depfile(data: bytes, root: str) -> bytes:
    """A dependency file written in the sandbox, for the host's make."""
    escaped = root.replace("$", "$$").replace(" ", "\\ ").replace("#", "\\#")
    return data.replace(SANDBOX_ROOT.encode() + b"/", os.fsencode(escaped) + b"/")
