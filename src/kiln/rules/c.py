"""C programs built entirely inside WebAssembly: ``c`` in build files.

    from kiln.build import c, glob, target

    @target
    async def tally():
        cc = await c.clang()
        return await c.program("tally", glob("src/*.c"), headers=glob("include/*.h"),
                               cflags=["-O2", "-Iinclude"], toolchain=cc)

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
from collections.abc import Iterable
from dataclasses import dataclass

from kiln import errors
from kiln.engine.rules import pick, read_bytes, unpack, wasm
from kiln.engine.values import File, Tree
from kiln.rules import fetch as fetching
from kiln.rules.c_includes import IncludeScanner
from kiln.rules.toolchains import YOWASP_CLANG

__all__ = ["Toolchain", "clang", "program"]

COMPILE_FUEL = 10**12  # a large optimized unit stays far below this
COMPILE_MEMORY_MIB = 2048
WASI_LIBS = "/usr/lib/wasm32-wasip1"
BUILTINS = "/usr/lib/wasm32-unknown-wasip1/libclang_rt.builtins.a"


@dataclass(frozen=True)
class Toolchain:
    """clang/wasm-ld as one WASI module (which tool runs depends on the
    name it is started by, argv[0]), and the ``/usr`` it expects."""

    module: File
    usr: Tree


async def clang() -> Toolchain:
    """The pinned ``@yowasp/clang`` (fetched and unpacked once per store)."""
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


async def compile_unit(
    unit: File, headers: list[File], cflags: list[str], toolchain: Toolchain
) -> File:
    """One translation unit to an object file; ``headers`` are the project
    headers it may include (its step sees no others)."""
    obj = f"obj/{unit.path}.o"
    step = await wasm(
        toolchain.module.at("clang"), "-c", *cflags, unit.path, "-o", obj,
        inputs=[toolchain.usr, unit, *headers], outputs=[obj],
        fuel=COMPILE_FUEL, memory_mib=COMPILE_MEMORY_MIB, description=f"cc {unit.path}",
    )  # fmt: skip
    return step.file(obj)


async def link(name: str, objects: list[File], toolchain: Toolchain) -> File:
    """Link objects with the WASI C library into ``NAME.wasm``."""
    # wasm-ld writes a temporary file next to its output and renames it; a
    # guest may create any name only under /tmp, so the output is made there.
    out = f"tmp/{name}.wasm"
    step = await wasm(
        toolchain.module.at("wasm-ld"), "-m", "wasm32", f"-L{WASI_LIBS}",
        f"{WASI_LIBS}/crt1-command.o", *(o.path for o in objects), "-lc", BUILTINS,
        "-o", f"/{out}",
        inputs=[toolchain.usr, *objects], outputs=[out],
        fuel=COMPILE_FUEL, memory_mib=COMPILE_MEMORY_MIB, description=f"link {name}.wasm",
    )  # fmt: skip
    return step.file(out).at(f"{name}.wasm")


async def program(
    name: str,
    sources: Iterable[File],
    *,
    headers: Iterable[File] = (),
    cflags: Iterable[str] = (),
    toolchain: Toolchain | None = None,
) -> File:
    """Compile each of ``sources`` in its own step and link ``NAME.wasm``."""
    units = list(sources)
    if not units:
        raise errors.KilnError(
            f"c.program({name!r}) has no sources", exit_code=errors.ExitCode.BAD_INPUT
        )
    tc = toolchain or await clang()
    flags = list(cflags)
    scanner = IncludeScanner(headers, flags, read_bytes)
    objects = await asyncio.gather(
        *(compile_unit(u, scanner.headers_of(u), flags, tc) for u in units)
    )
    return await link(name, list(objects), tc)
