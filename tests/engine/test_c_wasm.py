"""C built entirely inside WebAssembly: the pinned @yowasp/clang fetched from
npm (cached in a store kept under $KILN_CACHE, which conftest.py points at
pytest's cache folder), one clang step per unit with discovered headers, a
wasm-ld step, and the program run as a wasm step."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from engine_helpers import build, c_store_fixture, ran, write_project  # noqa: F401 (the c_store fixture)

from kiln.model.digest import Digest

# The first run downloads @yowasp/clang from registry.npmjs.org.
pytestmark = pytest.mark.network

KILNFILE = """
from kiln.build import c, glob, target, wasm

@target
async def hello():
    return await c.program("hello", glob("src/*.c"), headers=glob("include/*.h"),
                           cflags=["-O2", "-Iinclude"])

@target
async def run():
    return await wasm(await hello(), "world")
"""

FILES = {
    "include/greet.h": "#ifndef GREET_H\n#define GREET_H\nconst char *greeting(void);\n#endif\n",
    "include/unused.h": "#define UNUSED 1\n",
    "include/style.h": '#define GREETING "hello"\n',
    "src/greet.c": '#include "greet.h"\n#include "style.h"\n'
    "const char *greeting(void) { return GREETING; }\n",
    "src/main.c": '#include <stdio.h>\n#include "greet.h"\n'
    "int main(int argc, char **argv) {\n"
    '  printf("%s, %s\\n", greeting(), argc > 1 ? argv[1] : "?");\n  return 0;\n}\n',
}


def test_a_c_program_is_compiled_linked_and_run_inside_wasm(c_store, tmp_path: Path) -> None:
    # The store is kept between runs; an id unique to this run in every
    # source (and object) keeps the project's steps new to it (the
    # toolchain's are not).
    run_id = uuid.uuid4()
    token = f'__attribute__((used)) static const char run_id[] = "{run_id}";\n'
    files = {p: (token if p.endswith(".c") else f"/* {run_id} */\n") + t for p, t in FILES.items()}
    root = write_project(tmp_path / "p", KILNFILE, files)
    first = build(c_store, root)
    assert first.ok, first.errors
    log = {s.description: s for s in first.steps}
    assert {"cc src/main.c", "cc src/greet.c", "link hello.wasm"} <= set(log)
    run = log["hello.wasm world"]
    assert run.result is not None and run.result.exit_code == 0
    stdout = c_store.cas.get_bytes(Digest.from_proto(run.result.stdout_digest))
    assert stdout == b"hello, world\n"
    assert (root / "kiln-out" / "hello" / "hello.wasm").read_bytes()[:4] == b"\0asm"
    # The compile step of main.c sees the one project header it includes.
    cc_main = log["cc src/main.c"]
    assert sorted(p for p in cc_main.identity["inputs"] if p.startswith("include")) == [
        "include/greet.h"
    ]
    assert ran(build(c_store, root)) == []

    (root / "src" / "greet.c").write_text(token + FILES["src/greet.c"] + "/* a comment */\n")
    assert ran(build(c_store, root)) == ["hello: cc src/greet.c"]

    (root / "include" / "unused.h").write_text(files["include/unused.h"] + "#define X 2\n")
    assert ran(build(c_store, root)) == []

    (root / "include" / "style.h").write_text(f'/* {run_id} */\n#define GREETING "hi"\n')
    changed = build(c_store, root)
    assert ran(changed) == [
        "hello: cc src/greet.c",
        "hello: link hello.wasm",
        "run: hello.wasm world",
    ]
    run = {s.description: s for s in changed.steps}["hello.wasm world"]
    assert c_store.cas.get_bytes(Digest.from_proto(run.result.stdout_digest)) == b"hi, world\n"


OPTIONS_KILNFILE = """
from kiln.build import c, glob, source, target, wasm

@target
async def signals():
    # signal() and raise() come from the toolchain's libwasi-emulated-signal.
    return await c.program("signals", [source("sig/signals.c")],
                           defines={"_WASI_EMULATED_SIGNAL": None},
                           libs=["wasi-emulated-signal"])

@target
async def units():
    cc = await c.clang()
    # The two halves of c.program, public: one unit with its own flags.
    value = await c.compile_unit(source("src/value.c"), [], ["-O2", "-DVALUE=42"], cc)
    unit = source("src/main.c")
    headers = c.headers_of(unit, glob("include/*.h"), ["-Iinclude"])
    assert [h.path for h in headers] == ["include/value.h"], headers
    main = await c.compile_unit(unit, headers, ["-O2"], cc, include_dirs=["include"])
    return await c.link("units", [main, value], cc, ldflags=["--strip-all"])

@target
async def per_unit():
    return await c.program("per_unit", glob("src/*.c"), headers=glob("include/*.h"),
                           include_dirs=["include"], unit_flags={"src/value.c": ["-DVALUE=7"]})

@target
async def run():
    return [await wasm(await t(), description=f"run {n}")
            for n, t in [("signals", signals), ("units", units), ("per_unit", per_unit)]]
"""

OPTIONS_FILES = {
    "sig/signals.c": "#include <signal.h>\n#include <stdio.h>\n"
    'static void on(int sig) { printf("caught %d\\n", sig); }\n'
    "int main(void) { signal(SIGUSR1, on); raise(SIGUSR1); return 0; }\n",
    "include/value.h": "int value(void);\n",
    "include/unused.h": "#error not included\n",
    "src/value.c": "#ifndef VALUE\n#error VALUE is this unit's own define\n#endif\n"
    "int value(void) { return VALUE; }\n",
    "src/main.c": '#include <stdio.h>\n#include "value.h"\n'
    "#ifdef VALUE\n#error VALUE reached another unit\n#endif\n"
    'int main(void) { printf("%d\\n", value()); return 0; }\n',
}


def test_c_rules_take_defines_libraries_link_flags_and_per_unit_flags(
    c_store, tmp_path: Path
) -> None:
    root = write_project(tmp_path / "p", OPTIONS_KILNFILE, OPTIONS_FILES)
    report = build(c_store, root, "run")
    assert report.ok, report.errors
    steps = {s.description: s for s in report.steps}
    out = {
        n: c_store.cas.get_bytes(Digest.from_proto(steps[f"run {n}"].result.stdout_digest))
        for n in ("signals", "units", "per_unit")
    }
    assert out == {"signals": b"caught 10\n", "units": b"42\n", "per_unit": b"7\n"}
    assert "-lwasi-emulated-signal" in steps["link signals.wasm"].identity["argv"]
    assert "--strip-all" in steps["link units.wasm"].identity["argv"]


REACTOR_KILNFILE = """
from kiln.build import c, source, target, wasm

@target
async def case():
    # A reactor: two functions called on their own, no main.
    return await c.program("case", [source("src/case.c")], headers=[c.guest_header()],
                           cflags=["-O2", "-Wall", "-Wextra", "-Werror"],
                           exports=["shout", "whisper"])

@target
async def caller():
    return await c.program("caller", [source("src/caller.c")], headers=[c.guest_header()],
                           cflags=["-O2", "-Wall", "-Wextra", "-Werror"])

@target
async def run():
    return await wasm(await caller(), "hello", inputs=[await case()], description="run caller")
"""

REACTOR_FILES = {
    "src/case.c": "#include <ctype.h>\n#include <kiln.h>\n#include <stdlib.h>\n"
    "#include <string.h>\n"
    'static const char *prefix = "(no constructor)";\n'
    '__attribute__((constructor)) static void init(void) { prefix = "ok:"; }\n'
    "static void change(int (*each)(int)) {\n"
    "  size_t len;\n  char *text = kiln_input(&len);\n  if (!text) abort();\n"
    '  if (strcmp(text, "quit") == 0) exit(3);\n'
    "  for (size_t i = 0; i < len; i++) text[i] = (char)each((unsigned char)text[i]);\n"
    "  kiln_output_str(prefix);\n  kiln_output(text, len);\n  free(text);\n}\n"
    "void shout(void) { change(toupper); }\n"
    "void whisper(void) { change(tolower); }\n",
    "src/caller.c": "#include <errno.h>\n#include <kiln.h>\n#include <stdio.h>\n"
    "#include <stdlib.h>\n#include <string.h>\n"
    "static void show(const char *module, const char *fn, const char *text) {\n"
    "  char *out = NULL;\n  size_t len = 0;\n"
    "  int status = kiln_call(module, fn, text, strlen(text), (void **)&out, &len);\n"
    '  if (status == -ENOENT) printf("%s %s: ENOENT %s\\n", fn, text, out ? "?" : "NULL");\n'
    '  else printf("%s %s: %d [%s] %zu\\n", fn, text, status, out, len);\n'
    "  free(out);\n}\n"
    "int main(int argc, char **argv) {\n"
    '  show("/case.wasm", "shout", argc > 1 ? argv[1] : "?");\n'
    '  show("case.wasm", "whisper", "Quiet Please");\n'
    '  show("/case.wasm", "shout", "quit");\n'
    '  show("/none.wasm", "shout", "x");\n'
    "  size_t len = 1;\n  errno = 0;\n  void *input = kiln_input(&len);\n"
    '  printf("outside a call: %s %zu %d %d\\n", input ? "input" : "NULL", len,\n'
    '         errno == ENOTSUP, kiln_output("x", 1) == ENOTSUP);\n'
    "  return 0;\n}\n",
}


def test_a_reactor_is_linked_with_exports_and_called_through_kiln_h(
    c_store, tmp_path: Path
) -> None:
    root = write_project(tmp_path / "p", REACTOR_KILNFILE, REACTOR_FILES)
    report = build(c_store, root, "run")
    assert report.ok, report.errors
    steps = {s.description: s for s in report.steps}
    stdout = c_store.cas.get_bytes(Digest.from_proto(steps["run caller"].result.stdout_digest))
    assert stdout.decode().splitlines() == [
        "shout hello: 0 [ok:HELLO] 8",  # _initialize ran the constructor first
        "whisper Quiet Please: 0 [ok:quiet please] 15",
        "shout quit: 3 [] 0",  # exit(3) in the called function: its status, no output
        "shout x: ENOENT NULL",
        "outside a call: NULL 0 1 1",
    ]
    argv = steps["link case.wasm"].identity["argv"]
    assert "--export=shout" in argv and "--export=whisper" in argv
    assert "/usr/lib/wasm32-wasip1/crt1-reactor.o" in argv
    assert "/usr/lib/wasm32-wasip1/crt1-command.o" not in argv
    assert "/usr/lib/wasm32-wasip1/crt1-command.o" in steps["link caller.wasm"].identity["argv"]
    cc = steps["cc src/caller.c"].identity
    assert "-Ikiln-guest" in cc["argv"] and "kiln-guest/kiln.h" in cc["inputs"]


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        ('c.program("p", [source("src/main.c")], libs=["-lm"])', "'-lm' is not a library name"),
        (
            'c.program("p", [source("src/main.c")], unit_flags={"src/other.c": ["-O0"]})',
            "unit_flags names 'src/other.c', which is not one of its sources",
        ),
        ('c.program("p", [source("src/main.c")], defines={"-O2": None})', "not a macro name"),
        (
            'c.program("p", [source("src/main.c")], exports="render")',
            "exports= takes a list of function names, got the string 'render'",
        ),
        (
            'c.program("p", [source("src/main.c")], exports=["render", "--no-entry"])',
            "'--no-entry' is not a function name to export",
        ),
        ('c.program("p", [source("src/main.c")], exports=["main"])', "has no main to export"),
    ],
)
def test_c_rule_options_are_checked(c_store, tmp_path: Path, call: str, fragment: str) -> None:
    kilnfile = "from kiln.build import c, source, target\n\n@target\nasync def p():\n"
    kilnfile += f"    return await {call}\n"
    root = write_project(tmp_path / "p", kilnfile, {"src/main.c": "int main(void) { return 0; }\n"})
    [error] = build(c_store, root).errors
    assert fragment in error.render()
