"""A small C program built with the host's gcc in Kiln's native sandbox.

Every translation unit is compiled by its own step (`gcc -c`), then the
objects are linked; `check` runs the program on tests/cases.txt. The steps
see only their inputs and the files of gcc and the packages it needs.

`made` builds the same program with its own Makefile instead: `make` runs,
unmodified, in one recursive native step, with kiln-sub as the compiler
launcher. Each compile it starts becomes a step of this build, so when
make runs again (here, whenever the Makefile or a source changes), every
compile whose source and headers are unchanged is a cache hit.
"""

from kiln.build import gather, glob, native, setting, source, target

CFLAGS = ["-O2", "-Wall", "-Iinclude"]


async def compile_unit(unit):
    obj = f"obj/{unit.path}.o"
    step = await native(
        "gcc",
        *CFLAGS,
        "-c",
        unit.path,
        "-o",
        obj,
        tools=["gcc"],
        inputs=[unit, *glob("include/*.h")],
        outputs=[obj],
        description=f"cc {unit.path}",
    )
    return step.file(obj)


@target
async def calc():
    """The calc program."""
    objects = await gather(*(compile_unit(u) for u in glob("src/*.c")))
    return await native(
        "gcc",
        *(o.path for o in objects),
        "-o",
        "calc",
        tools=["gcc"],
        inputs=objects,
        outputs=["calc"],
        description="link calc",
    )


@target
async def check():
    """calc's answers for tests/cases.txt."""
    program = (await calc()).file("calc")
    return await native(
        "sh",
        "-c",
        "./calc tests/cases.txt > answers.txt",
        tools=["sh"],
        inputs=[program, source("tests/cases.txt")],
        outputs=["answers.txt"],
        description="run calc",
    )


@target
async def made():
    """calc, built by make (memoized compile by compile through kiln-sub)."""
    jobs = setting("make-jobs", "2")
    return await native(
        "make",
        f"-j{jobs}",
        "CC=/kiln/bin/kiln-sub cc gcc",
        tools=["make", "sh", "mkdir", "gcc"],
        inputs=[source("Makefile"), *glob("src/*.c"), *glob("include/*.h")],
        outputs=["calc"],
        recursive=True,
        description="make calc",
    )
