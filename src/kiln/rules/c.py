"""C programs built entirely inside WebAssembly: ``c`` in build files.

    from kiln.build import c, glob, target

    @target
    async def tally():
        cc = await c.clang()
        return await c.program("tally", glob("src/*.c"), headers=glob("include/*.h"),
                               cflags=["-O2"], include_dirs=["include"], toolchain=cc)

The public rules are ``clang`` (the toolchain), ``program`` (every unit
compiled, then linked), and its two halves for builds that need their own
shape: ``compile_unit`` (one ``clang -c`` step) and ``link`` (one
``wasm-ld`` step), with per-unit flags, defines, include folders, link
flags and the toolchain's extra libraries (``libs=["setjmp"]``); ``flags``
spells the compile options as clang arguments, and ``headers_of`` finds the
headers a unit may include. ``exports=["NAME", ...]`` links a reactor
instead of a command: a module whose functions are called on their own
(Kiln's memoized calls), and ``guest_header`` is ``kiln.h``, the C side of
those calls.

The toolchain is the pinned npm package ``@yowasp/clang`` (LLVM compiled to
WASI): a fetch pinned by the registry's sha512, its ``llvm.core.wasm`` (one
module for ``clang`` and ``wasm-ld``, chosen by argv[0]) and its
``llvm-resources.tar`` unpacked at ``/usr`` in the guest. The module is
placed in a step's tree as ``clang`` or as ``wasm-ld``. WASI cannot start
processes, so the clang driver never runs the linker: every translation
unit is a ``clang -c`` step and the link is a ``wasm-ld`` step.

Header dependencies are discovered, not declared per unit: before a unit's
compile step, its ``#include`` lines (and those of the headers they reach)
are read (``kiln.rules.c_includes``), and the step gets exactly the
project headers the unit may include. Changing a header therefore
recompiles only the units that include it; a change that leaves an object
file identical stops there (early cutoff).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import chain

from kiln import errors
from kiln.engine.rules import _context, pick, read_bytes, rule, unpack, wasm
from kiln.engine.values import File, Tree
from kiln.guest import HEADER as GUEST_HEADER_SOURCE
from kiln.rules import fetch as fetching
from kiln.rules.c_includes import IncludeScanner
from kiln.rules.toolchains import YOWASP_CLANG

__all__ = [
    "GUEST_INCLUDE",
    "Toolchain",
    "clang",
    "compile_unit",
    "flags",
    "guest_header",
    "headers_of",
    "link",
    "program",
]

COMPILE_FUEL = 10**12  # a large optimized unit stays far below this
COMPILE_MEMORY_MIB = 2048
WASI_LIBS = "/usr/lib/wasm32-wasip1"
BUILTINS = "/usr/lib/wasm32-unknown-wasip1/libclang_rt.builtins.a"
# Where ``guest_header`` places kiln.h in a compile step (searched with -I).
GUEST_INCLUDE = "kiln-guest"
_GUEST_HEADER = f"{GUEST_INCLUDE}/kiln.h"
_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Toolchain:
    """clang/wasm-ld as one WASI module (which tool runs depends on the
    name it is started by, argv[0]), and the ``/usr`` it expects."""

    module: File
    usr: Tree


@rule
async def clang() -> Toolchain:
    """The pinned ``@yowasp/clang`` (fetched and unpacked once per store,
    evaluated once per build)."""
    tarball = await fetching.npm(
        YOWASP_CLANG.name, YOWASP_CLANG.version, digest=YOWASP_CLANG.integrity
    )
    assert isinstance(tarball, File)
    package = await unpack(tarball, strip=1, name="yowasp-clang")
    module = pick(package, "gen/llvm.core.wasm")
    resources = pick(package, "gen/llvm-resources.tar")
    assert isinstance(module, File) and isinstance(resources, File)
    usr = await unpack(resources, name="usr")
    return Toolchain(module, usr.at("usr"))


def flags(
    cflags: Iterable[str] = (),
    defines: Mapping[str, str | None] | None = None,
    include_dirs: Iterable[str] = (),
) -> list[str]:
    """The clang arguments of these options: ``cflags`` as given, then
    ``-DNAME=VALUE`` (``-DNAME`` for a value of None) per define, then
    ``-IDIR`` per include folder (project-relative)."""
    out = [str(f) for f in cflags]
    for name, value in (defines or {}).items():
        if not name or name.startswith("-") or "=" in name:
            raise errors.KilnError(
                f"c: {name!r} is not a macro name to define",
                hint="give defines as {'NAME': 'VALUE'} or {'NAME': None}",
                exit_code=errors.ExitCode.BAD_INPUT,
            )
        out.append(f"-D{name}" if value is None else f"-D{name}={value}")
    return out + [f"-I{d}" for d in include_dirs]


def guest_header() -> File:
    """``kiln.h``, the C declarations of Kiln's memoized calls (the ``kiln``
    import module) and helpers around them, as a ``File`` at
    ``kiln-guest/kiln.h``. Give it among a unit's ``headers`` (to
    ``program`` or ``compile_unit``): the unit's step then also gets
    ``-Ikiln-guest``, so the unit includes it as ``<kiln.h>``. Its content
    comes with Kiln; a new version of it recompiles the units that include
    it."""
    data = GUEST_HEADER_SOURCE.read_bytes()
    return File(_GUEST_HEADER, _context("c.guest_header()").store.cas.put_bytes(data))


def _guest_flags(headers: Iterable[File], args: Iterable[str]) -> list[str]:
    """``-Ikiln-guest`` if ``guest_header`` is among ``headers`` and ``args``
    lack it: the flag that lets a unit include it as ``<kiln.h>``."""
    flag = f"-I{GUEST_INCLUDE}"
    wanted = any(h.path == _GUEST_HEADER for h in headers) and flag not in args
    return [flag] if wanted else []


def headers_of(unit: File, headers: Iterable[File], cflags: Iterable[str] = ()) -> list[File]:
    """The ``headers`` that ``unit`` may include, directly or through other
    headers, found by reading their ``#include`` lines (``cflags`` give the
    ``-I`` folders); a superset, never too few (``kiln.rules.c_includes``).
    For many units, ``program`` reads each header once for all of them."""
    return IncludeScanner(headers, list(cflags), read_bytes).headers_of(unit)


async def compile_unit(
    unit: File,
    headers: Iterable[File] = (),
    cflags: Iterable[str] = (),
    toolchain: Toolchain | None = None,
    *,
    defines: Mapping[str, str | None] | None = None,
    include_dirs: Iterable[str] = (),
) -> File:
    """One translation unit compiled by its own ``clang -c`` step to the
    object file ``obj/UNIT.o``; the step sees the unit, exactly the
    ``headers`` given (see ``headers_of``) and the toolchain's ``/usr``.
    Its arguments are ``flags(cflags, defines, include_dirs)``, and
    ``-Ikiln-guest`` when ``guest_header()`` is among the headers."""
    tc = toolchain or await clang()
    headers = list(headers)
    args = flags(cflags, defines, include_dirs)
    args += _guest_flags(headers, args)
    obj = f"obj/{unit.path}.o"
    step = await wasm(
        tc.module.at("clang"), "-c", *args, unit.path, "-o", obj,
        inputs=[tc.usr, unit, *headers], outputs=[obj],
        fuel=COMPILE_FUEL, memory_mib=COMPILE_MEMORY_MIB, description=f"cc {unit.path}",
    )  # fmt: skip
    return step.file(obj)


async def link(
    name: str,
    objects: Iterable[File],
    toolchain: Toolchain | None = None,
    *,
    ldflags: Iterable[str] = (),
    libs: Iterable[str] = (),
    exports: Iterable[str] | None = None,
) -> File:
    """Link ``objects`` (object files or static archives, as ``File``
    values) with the WASI C library into ``NAME.wasm``, by one ``wasm-ld``
    step. ``ldflags`` are passed to ``wasm-ld`` before the objects;
    ``libs`` names libraries of the toolchain (``"setjmp"``,
    ``"wasi-emulated-signal"``, ``"m"``: ``-lNAME``), linked after the
    objects and before the C library.

    Without ``exports`` the module is a command (``_start`` runs ``main``).
    With ``exports`` (C function names, e.g. ``["render"]``) it is a
    reactor: no ``main``; ``_initialize`` runs the C library's and the
    program's constructors, and each named function is exported
    (``--export=NAME``), to be called on its own, as Kiln's memoized calls
    do (such a function takes no parameters and returns nothing)."""
    tc = toolchain or await clang()
    objects = list(objects)
    names = [str(lib) for lib in libs]
    bad = next((n for n in names if not n or n.startswith("-") or "/" in n), None)
    if bad is not None:
        raise errors.KilnError(
            f"c.link({name!r}): {bad!r} is not a library name",
            hint="name libraries as for -l, e.g. libs=['setjmp']; pass archives you "
            "built as objects",
            exit_code=errors.ExitCode.BAD_INPUT,
        )
    symbols = _exports(name, exports)
    if symbols is None:
        start = [f"{WASI_LIBS}/crt1-command.o"]
    else:
        start = [
            "--entry=_initialize", *(f"--export={s}" for s in symbols),
            f"{WASI_LIBS}/crt1-reactor.o",
        ]  # fmt: skip
    # wasm-ld writes a temporary file next to its output and renames it; a
    # guest may create any name only under /tmp, so the output is made there.
    out = f"tmp/{name}.wasm"
    step = await wasm(
        tc.module.at("wasm-ld"), "-m", "wasm32", f"-L{WASI_LIBS}", *map(str, ldflags),
        *start, *(o.path for o in objects),
        *(f"-l{n}" for n in names), "-lc", BUILTINS, "-o", f"/{out}",
        inputs=[tc.usr, *objects], outputs=[out],
        fuel=COMPILE_FUEL, memory_mib=COMPILE_MEMORY_MIB, description=f"link {name}.wasm",
    )  # fmt: skip
    return step.file(out).at(f"{name}.wasm")


def _exports(name: str, exports: Iterable[str] | None) -> list[str] | None:
    """The function names ``exports=`` gives, checked (None: a command)."""
    if exports is None:
        return None
    if isinstance(exports, str):
        raise errors.KilnError(
            f"c.link({name!r}): exports= takes a list of function names, "
            f"got the string {exports!r}",
            hint=f"write exports=[{exports!r}]",
            exit_code=errors.ExitCode.BAD_INPUT,
        )
    symbols = list(exports)
    bad = next((s for s in symbols if not isinstance(s, str) or not _SYMBOL.fullmatch(s)), None)
    if bad is not None:
        raise errors.KilnError(
            f"c.link({name!r}): {bad!r} is not a function name to export",
            hint="name C functions, e.g. exports=['render']: letters, digits and '_', "
            "not starting with a digit",
            exit_code=errors.ExitCode.BAD_INPUT,
        )
    if "main" in symbols or "_start" in symbols:
        raise errors.KilnError(
            f"c.link({name!r}): exports= makes a reactor, which has no "
            f"{'main' if 'main' in symbols else '_start'} to export",
            hint="leave exports= out to link a command (its main runs as _start)",
            exit_code=errors.ExitCode.BAD_INPUT,
        )
    return list(dict.fromkeys(symbols))


async def program(
    name: str,
    sources: Iterable[File],
    *,
    headers: Iterable[File] = (),
    cflags: Iterable[str] = (),
    defines: Mapping[str, str | None] | None = None,
    include_dirs: Iterable[str] = (),
    unit_flags: Mapping[str, Iterable[str]] | None = None,
    ldflags: Iterable[str] = (),
    libs: Iterable[str] = (),
    exports: Iterable[str] | None = None,
    toolchain: Toolchain | None = None,
) -> File:
    """Compile each of ``sources`` in its own step (``compile_unit``) and
    link ``NAME.wasm`` (``link``). Every unit gets ``flags(cflags, defines,
    include_dirs)``; ``unit_flags`` adds, after those, flags for the units
    at the paths it names (e.g. ``{"src/fast.c": ["-O3"]}``). ``ldflags``,
    ``libs`` and ``exports`` (a reactor exporting these functions, instead
    of a command) are the link's."""
    units = list(sources)
    if not units:
        raise errors.KilnError(
            f"c.program({name!r}) has no sources", exit_code=errors.ExitCode.BAD_INPUT
        )
    extra = {path: [str(f) for f in more] for path, more in (unit_flags or {}).items()}
    unknown = sorted(set(extra) - {u.path for u in units})
    if unknown:
        raise errors.KilnError(
            f"c.program({name!r}): unit_flags names {', '.join(map(repr, unknown))}, "
            "which is not one of its sources",
            hint="key unit_flags by a source's path, e.g. 'src/main.c'",
            exit_code=errors.ExitCode.BAD_INPUT,
        )
    exports = _exports(name, exports)  # (checked before anything is compiled)
    tc = toolchain or await clang()
    headers = list(headers)
    common = flags(cflags, defines, include_dirs)
    # One scanner for all units (each header read once); a unit's own -I
    # folders widen the search for all of them, which only adds headers.
    searched = [*common, *chain.from_iterable(extra.values())]
    scanner = IncludeScanner(headers, [*searched, *_guest_flags(headers, searched)], read_bytes)
    objects = await asyncio.gather(
        *(
            compile_unit(u, scanner.headers_of(u), [*common, *extra.get(u.path, ())], tc)
            for u in units
        )
    )
    return await link(name, list(objects), tc, ldflags=ldflags, libs=libs, exports=exports)
