"""Word statistics of a small book, every step a WebAssembly action.

`kiln build` runs `textkit` (tools/textkit.c, compiled to tools/textkit.wasm)
to read the chapter list, count the words of each chapter, and merge the
counts into a report. The chapter list is itself a build result: the rule
reads it and decides which counting steps to run (a dynamic dependency).
"""

from kiln.build import gather, source, target, wasm

TEXTKIT = "tools/textkit.wasm"


@target
async def chapters():
    """The chapter names listed in book.txt, as JSON."""
    return await wasm(
        source(TEXTKIT),
        "chapters",
        "book.txt",
        "chapters.json",
        inputs=[source("book.txt")],
        outputs=["chapters.json"],
        description="list chapters",
    )


async def count(name):
    text = source(f"text/{name}.txt")
    return await wasm(
        source(TEXTKIT),
        "count",
        text.path,
        f"counts/{name}.txt",
        inputs=[text],
        outputs=[f"counts/{name}.txt"],
        description=f"count {name}",
    )


@target
async def counts():
    """Word counts of every chapter, one step per chapter."""
    names = (await chapters()).json("chapters.json")
    steps = await gather(*(count(name) for name in names))
    return [step.file(f"counts/{name}.txt") for step, name in zip(steps, names, strict=True)]


@target
async def report():
    """The twenty most frequent words of the whole book."""
    files = await counts()
    return await wasm(
        source(TEXTKIT),
        "merge",
        "report.txt",
        *(f.path for f in files),
        inputs=files,
        outputs=["report.txt"],
        description="merge counts",
    )
