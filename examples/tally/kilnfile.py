"""tally, a CSV tool in C (14 translation units), built by clang running
inside WebAssembly and then run, as WebAssembly, on its test cases.

`kiln build tally` gives kiln-out/tally/tally.wasm; `kiln build check`
runs every case of CASES on tests/people.csv and compares the output with
tests/expected/NAME.csv (a difference fails the build and names the case).
"""

from kiln.build import c, gather, glob, read_bytes, source, target, wasm

CFLAGS = ["-O2", "-Wall", "-Wextra", "-Iinclude"]

CASES = {
    "stats-score": ["stats", "people.csv", "score"],
    "stats-age": ["stats", "people.csv", "age"],
    "count-city": ["count", "people.csv", "city"],
    "select": ["select", "people.csv", "city,name"],
    "sort-age-desc": ["sort", "people.csv", "-age"],
    "sort-city": ["sort", "people.csv", "city"],
}


@target
async def tally():
    """tally.wasm, compiled and linked inside WebAssembly."""
    return await c.program("tally", glob("src/*.c"), headers=glob("include/*.h"), cflags=CFLAGS)


async def run_case(program, name, args):
    step = await wasm(
        program,
        *args,
        inputs={"people.csv": source("tests/people.csv")},
        description=f"case {name}",
    )
    expected = read_bytes(source(f"tests/expected/{name}.csv"))
    if step.stdout != expected:
        raise AssertionError(
            f"case {name}: tally {' '.join(args)} printed\n{step.stdout.decode()}"
            f"expected\n{expected.decode()}"
        )


@target
async def check():
    """Every test case, each checked against its expected output."""
    program = await tally()
    await gather(*(run_case(program, n, a) for n, a in CASES.items()))
