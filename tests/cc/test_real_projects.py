"""`kiln cc` on real C projects nobody here wrote, fetched pinned from PyPI
(tests/cc/sdists.py): LuaJIT 2.1 with its own Makefile, and Lua 5.4 with
CMake. Through the real resident server and the native `kiln-cc` client."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cc.sdists import lupa_third_party
from kiln.exec.native import bwrap_path
from server_helpers import serving

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bwrap_path() is None or not all(shutil.which(t) for t in ("gcc", "make", "cmake")),
        reason="needs bubblewrap, gcc, make and cmake",
    ),
]
LUA_SCRIPT = "local t = {} for i = 1, 10 do t[i] = i * i end print(table.concat(t, ','), 2^53)"
LUA_OUTPUT = b"1,4,9,16,25,36,49,64,81,100\t9.007199254741e+15\n"
CMAKELISTS = """\
cmake_minimum_required(VERSION 3.13)
project(lua C)
file(GLOB sources ${CMAKE_SOURCE_DIR}/*.c)
list(REMOVE_ITEM sources ${CMAKE_SOURCE_DIR}/lua.c ${CMAKE_SOURCE_DIR}/luac.c
     ${CMAKE_SOURCE_DIR}/onelua.c ${CMAKE_SOURCE_DIR}/ltests.c)
add_library(lualib STATIC ${sources})
target_compile_definitions(lualib PUBLIC LUA_USE_LINUX)
add_executable(lua lua.c)
target_link_libraries(lua lualib m dl)
"""


@pytest.fixture(scope="module")
def third_party(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lupa_third_party(tmp_path_factory.mktemp("lupa"))


def make(tree: Path, *args: str) -> None:
    run = subprocess.run(["make", "-j2", "-s", *args], cwd=tree, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]


def objects(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.o"))}


def cc_stats(served) -> dict:
    got = served.kiln("cc", "--stats", "--json")
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout)


def dependents(makefile_dep: Path, header: str) -> set[str]:
    """The objects whose rule in LuaJIT's own Makefile.dep names ``header``."""
    text = makefile_dep.read_text().replace("\\\n", " ")
    found = set()
    for line in text.splitlines():
        targets, _, prerequisites = line.partition(":")
        if header in prerequisites.split():
            found.update(t for t in targets.split() if t.endswith(".o"))
    return found


@pytest.mark.network
def test_luajit_with_its_own_makefile(third_party, tmp_path):
    """`make -j2 CC="kiln-cc gcc"`: objects identical to plain gcc's;
    after `make clean`, every compile a hit; after a header change,
    exactly the units that include it compile again."""
    with serving(tmp_path / "store") as served:
        served.start()
        launcher = tmp_path / "launcher"
        setup = served.kiln("cc", "--setup", str(launcher))
        assert setup.returncode == 0, setup.stderr
        cc = f"CC={launcher}/kiln-cc gcc"
        tree = tmp_path / "kiln"
        shutil.copytree(third_party / "luajit21", tree)
        make(tree, cc)
        built = objects(tree / "src")
        assert len(built) > 100
        assert_plain_gcc_agrees(tree / "src", built, tmp_path / "plain")
        first = cc_stats(served)
        assert first["misses"] == len(built) and first["hits"] == 0 and first["failed"] == 0
        served.kiln("cc", "--zero-stats")

        make(tree, "clean")
        make(tree, cc)
        assert objects(tree / "src") == built
        again = cc_stats(served)
        assert again["hits"] == len(built) and again["misses"] == 0

        served.kiln("cc", "--zero-stats")
        header = tree / "src" / "lj_ccallback.h"
        header.write_text(header.read_text() + "\n/* changed */\n")
        expected = dependents(tree / "src" / "Makefile.dep", "lj_ccallback.h")
        expected |= {name.replace(".o", "_dyn.o") for name in expected}
        expected |= {f"host/{name}" for name in expected}
        expected &= set(built)
        make(tree, "clean")
        make(tree, cc)
        changed = cc_stats(served)
        assert changed["misses"] == len(expected) > 0
        assert changed["hits"] == len(built) - len(expected)

    program = [str(tree / "src" / "luajit"), "-e", LUA_SCRIPT]
    assert subprocess.run(program, capture_output=True).stdout == LUA_OUTPUT


def assert_plain_gcc_agrees(src: Path, built: dict[str, bytes], scratch: Path) -> None:
    """Every seventh compile of the Makefile's own (`make -n`), run with plain
    gcc, gives the object kiln cc gave."""
    listed = subprocess.run(["make", "-n", "-B"], cwd=src, capture_output=True, text=True)
    compiles = [line.split() for line in listed.stdout.splitlines()
                if re.fullmatch(r"gcc .* -c -o \S+\.o \S+\.c", line.strip())]  # fmt: skip
    assert len(compiles) > 100
    scratch.mkdir()
    for argv in compiles[::7]:
        out = argv.index("-o") + 1
        name, argv[out] = argv[out], str(scratch / "plain.o")
        subprocess.run(argv, cwd=src, check=True, capture_output=True)
        assert (scratch / "plain.o").read_bytes() == built[name], name


def cmake_build(source: Path, launcher: Path | None) -> Path:
    build = source / "build"
    configure = ["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"]
    if launcher is not None:
        configure.append(f"-DCMAKE_C_COMPILER_LAUNCHER={launcher}/kiln-cc")
    for argv in (configure, ["cmake", "--build", str(build), "-j2"]):
        run = subprocess.run(argv, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return build


@pytest.mark.network
def test_lua_with_cmake_shares_hits_between_checkouts(third_party, tmp_path):
    """CMake names every file by absolute path; a second checkout in
    another folder is all hits, and the programs behave the same."""

    def checkout(where: Path) -> Path:
        shutil.copytree(third_party / "lua54", where)
        (where / "CMakeLists.txt").write_text(CMAKELISTS)
        return where

    plain = cmake_build(checkout(tmp_path / "plain"), None)
    with serving(tmp_path / "store") as served:
        served.start()
        launcher = tmp_path / "launcher"
        assert served.kiln("cc", "--setup", str(launcher)).returncode == 0
        first = cmake_build(checkout(tmp_path / "one" / "lua"), launcher)
        units = cc_stats(served)["misses"]
        assert units >= 31
        served.kiln("cc", "--zero-stats")
        second = cmake_build(checkout(tmp_path / "two" / "elsewhere"), launcher)
        totals = cc_stats(served)
        assert totals["hits"] == units and totals["misses"] == 0
        deps = list(second.rglob("lapi.c.o.d"))
        assert deps and str(tmp_path / "two" / "elsewhere") in deps[0].read_text()
    outputs = {
        subprocess.run([str(b / "lua"), "-e", LUA_SCRIPT], capture_output=True).stdout
        for b in (plain, first, second)
    }
    assert len(outputs) == 1 and re.match(rb"1,4,9", outputs.pop())


def test_a_masquerade_folder_first_on_path(tmp_path):
    """`PATH=<setup folder>:$PATH make`: the Makefile's plain `gcc` is cached."""
    project = tmp_path / "p"
    project.mkdir()
    (project / "a.c").write_text("int a(void) { return 1; }\n")
    (project / "b.c").write_text("int a(void);\nint main(void) { return a() - 1; }\n")
    (project / "Makefile").write_text(
        "prog: a.o b.o\n\tgcc -o $@ a.o b.o\n%.o: %.c\n\tgcc -O2 -c $< -o $@\n"
    )
    with serving(tmp_path / "store") as served:
        served.start()
        launcher = tmp_path / "launcher"
        assert served.kiln("cc", "--setup", str(launcher)).returncode == 0
        env = {**os.environ, "PATH": f"{launcher}:{os.environ['PATH']}",
               "KILN_HOME": str(served.home)}  # fmt: skip
        for _ in range(2):
            run = subprocess.run(["make", "-B", "-s"], cwd=project, env=env, capture_output=True)
            assert run.returncode == 0, run.stderr
        totals = cc_stats(served)
    assert (totals["misses"], totals["hits"]) == (2, 2)
    assert any("no -c" in reason for reason in totals["direct"])
    assert subprocess.run([str(project / "prog")]).returncode == 0


def test_without_a_server_the_launcher_caches_through_python(tmp_path):
    """No server: kiln-cc runs `python -m kiln.cc.launch`, which is slow but
    caches the same way."""
    project = tmp_path / "p"
    project.mkdir()
    (project / "a.c").write_text("int a(void) { return 1; }\n")
    with serving(tmp_path / "store") as served:
        launcher = tmp_path / "launcher"
        assert served.kiln("cc", "--setup", str(launcher)).returncode == 0
        for _ in range(2):
            run = subprocess.run([str(launcher / "kiln-cc"), "gcc", "-c", "a.c"], cwd=project,
                                 env=served.env, capture_output=True)  # fmt: skip
            assert run.returncode == 0, run.stderr
        totals = cc_stats(served)
        assert served.status() is None  # (no server was started)
    assert (totals["misses"], totals["hits"]) == (1, 1)
