"""Which compiler command lines `kiln cc` memoizes, and why the others run directly."""

from __future__ import annotations

import pytest

from kiln.cc.args import Compile, PassThrough, classify


def test_a_plain_compile() -> None:
    got = classify(["-O2", "-Wall", "-Iinclude", "-DX=1", "-c", "src/a.c", "-o", "obj/a.o"])
    assert got == Compile("src/a.c", "obj/a.o", "c", None, tuple(got.args))


def test_the_output_defaults_to_the_source_name_in_the_working_folder() -> None:
    got = classify(["-c", "src/lib/x.cpp"])
    assert isinstance(got, Compile) and (got.output, got.language) == ("x.o", "c++")


@pytest.mark.parametrize(
    ("args", "dep_file"),
    [
        ("-c a.c -o o/a.o -MD", "o/a.d"),
        ("-c a.c -o o/a.o -MMD -MF deps/a.dep -MT o/a.o", "deps/a.dep"),
        ("-c a.c -oo/a.o -MD -MFx.d", "x.d"),
        ("-c a.c -o o/a.o -MD -MP -MQ a", "o/a.d"),
    ],
)
def test_dependency_files(args: str, dep_file: str) -> None:
    got = classify(args.split())
    assert isinstance(got, Compile) and got.dep_file == dep_file


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ("a.o b.o -o prog", "not a compile"),
        ("-E a.c", "preprocessing only"),
        ("-M a.c", "dependency output without a compile"),
        ("-MM -c a.c", "dependency output without a compile"),
        ("-S a.c", "assembly output"),
        ("-c a.c b.c", "several source files"),
        ("-c -x c -", "stdin"),
        ("-c", "no source file"),
        ("-c a.c @flags.txt", "response file"),
        ("-c a.c -fprofile-use=x.profdata", "profile"),
        ("-c a.c --coverage", "coverage"),
        ("-c a.c -gsplit-dwarf", ".dwo"),
        ("-c a.c -save-temps", "temporary"),
        ("-c a.c -Xclang -load", "front end"),
        ("-c a.c -Wp,-MD,x.d", "preprocessor"),
        ("-c lib.a", "not a known source file"),
        ("-c a.c -o", "-o without its value"),
        ("-c a.c -MF x.d", "-MF without -MD"),
    ],
)
def test_what_is_not_one_cacheable_compile(args: str, reason: str) -> None:
    got = classify(args.split())
    assert isinstance(got, PassThrough) and reason in got.reason, got


def test_separate_values_are_not_taken_for_sources() -> None:
    args = "-c main.c -include config.h -isystem /usr/x -I inc -D N=1 -x c -o m.o"
    got = classify(args.split())
    assert isinstance(got, Compile) and got.source == "main.c" and got.language == "c"
