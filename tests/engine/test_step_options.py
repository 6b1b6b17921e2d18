"""A step's own options, through a build: ``timeout=`` (outside the key, not
retried, with a config default), declared outputs that must be created,
commands given as lists refused, and ``tools=[]`` with ``runtimes=``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from engine_helpers import build, ran, write_project

from kiln.api import StepStatus
from native_helpers import needs_bubblewrap as native_only


def _project(root: Path, body: str, files: dict[str, str | bytes] | None = None) -> Path:
    return write_project(
        root, "from kiln.build import native, source, target, wasm\n" + body, files
    )


def _error(report) -> str:
    assert not report.ok
    e = report.errors[0]
    return f"{e.message} (hint: {e.hint})"


# ------------------------------------------------------------------ timeout


@native_only
def test_a_native_timeout_fails_once_names_the_step_and_how_to_raise_it(
    store, tmp_path: Path
) -> None:
    root = _project(
        tmp_path / "p",
        """
@target
async def slow():
    return await native("sleep", "30", tools=["sleep"], timeout=1, description="nap")
""",
    )
    started = time.monotonic()
    report = build(store, root)
    message = _error(report)
    assert time.monotonic() - started < 15
    assert "step 'nap' of target 'slow'" in message
    assert "wall-clock timeout of 1 s" in message and "not cached" in message
    assert "native(..., timeout=SECONDS)" in message and "step-timeout" in message
    (step,) = report.steps
    assert step.status is StepStatus.FAILED and step.attempts == 1  # not retried
    assert ran(build(store, root)) == []  # nothing cached: it runs (and fails) again
    assert not build(store, root).ok


@native_only
def test_the_timeout_is_not_part_of_the_key(store, tmp_path: Path) -> None:
    step = 'native("sh", "-c", "echo hi > out.txt", tools=["sh"], outputs=["out.txt"]{})'
    kilnfile = "\n@target\nasync def t():\n    return await " + step + "\n"
    root = _project(tmp_path / "p", kilnfile.format(", timeout=50"))
    first = build(store, root)
    assert first.ok, first.errors
    _project(root, kilnfile.format(", timeout=70"))
    again = build(store, root)
    assert again.ok and ran(again) == []
    assert again.steps[0].key == first.steps[0].key
    _project(root, kilnfile.format(""))
    assert ran(build(store, root)) == []


@native_only
def test_the_config_sets_the_default_timeout(store, tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text("step-timeout = 1\n")
    monkeypatch.setenv("KILN_CONFIG", str(config))
    root = _project(
        tmp_path / "p",
        """
@target
async def slow():
    return await native("sleep", "30", tools=["sleep"], description="nap")
""",
    )
    message = _error(build(store, root))
    assert "wall-clock timeout of 1 s" in message and str(config) in message


def test_a_bad_timeout_is_refused_with_file_and_line(store, tmp_path: Path) -> None:
    root = _project(
        tmp_path / "p",
        """
@target
async def t():
    return await wasm(source("tool.wasm"), timeout=-5)
""",
        {"tool.wasm": ""},
    )
    message = _error(build(store, root))
    assert "kilnfile.py:5" in message and "timeout=) must be a positive number" in message


def test_a_bad_config_timeout_is_refused(tmp_path: Path) -> None:
    from kiln.config import load_config
    from kiln.errors import KilnError

    config = tmp_path / "config.toml"
    config.write_text('step-timeout = "soon"\n')
    with pytest.raises(KilnError, match="step-timeout must be a positive number"):
        load_config(config)
    config.write_text("step-timeout = 90\n")
    assert load_config(config).step_timeout == 90.0
    assert load_config(tmp_path / "none.toml").step_timeout == 600.0


def test_the_environment_sets_the_timeout_over_the_file(tmp_path: Path, monkeypatch) -> None:
    from kiln.config import load_config
    from kiln.errors import KilnError

    config = tmp_path / "config.toml"
    config.write_text("step-timeout = 90\n")
    monkeypatch.setenv("KILN_STEP_TIMEOUT", "1200")
    assert load_config(config).step_timeout == 1200.0
    assert load_config(tmp_path / "none.toml").step_timeout == 1200.0
    monkeypatch.setenv("KILN_STEP_TIMEOUT", "a while")
    with pytest.raises(KilnError, match="KILN_STEP_TIMEOUT must be a positive number"):
        load_config(config)


def test_a_wasm_timeout_interrupts_the_guest(store, tmp_path: Path, guest) -> None:
    root = _project(
        tmp_path / "p",
        """
@target
async def spin():
    return await wasm(source("spin.wasm"), fuel=10**15, timeout=0.5, description="spin")
""",
        {"spin.wasm": guest("spin").read_bytes()},
    )
    started = time.monotonic()
    report = build(store, root)
    message = _error(report)
    assert time.monotonic() - started < 15
    assert "step 'spin' of target 'spin'" in message and "timeout of 0.5 s" in message
    assert "wasm(..., timeout=SECONDS)" in message
    assert report.steps[0].attempts == 1


# ------------------------------------------------------------------ outputs


def test_a_wasm_output_not_created_fails_the_step(store, tmp_path: Path, guest) -> None:
    root = _project(
        tmp_path / "p",
        """
@target
async def t():
    return await wasm(source("cat.wasm"), "tmp/o.txt", outputs=["x.txt"],
                      description="no output")
""",
        {"cat.wasm": guest("cat").read_bytes()},
    )
    report = build(store, root)
    message = _error(report)
    assert "target 't': step 'no output' failed" in message
    assert "declared output x.txt was not created" in message
    assert report.steps[0].status is StepStatus.FAILED
    assert not build(store, root).ok  # a failure, never cached


@native_only
def test_a_native_output_not_created_fails_the_step(store, tmp_path: Path) -> None:
    root = _project(
        tmp_path / "p",
        """
@target
async def t():
    step = await native("sh", "-c", "echo a > a.txt", tools=["sh"],
                        outputs=["a.txt", "x.txt", "d"], description="half")
    return step.outputs["x.txt"]
""",
    )
    message = _error(build(store, root))
    assert "target 't': step 'half' failed" in message
    assert "declared outputs d, x.txt were not created" in message
    assert "KeyError" not in message


@pytest.mark.parametrize("kind", ["native", "wasm"])
def test_a_command_given_as_a_list_is_refused(store, tmp_path: Path, kind: str) -> None:
    call = (
        'native(["gcc", "-v"], tools=["gcc"])'
        if kind == "native"
        else 'wasm(source("t.wasm"), ["-v"])'
    )
    root = _project(
        tmp_path / "p", f"\n@target\nasync def t():\n    return await {call}\n", {"t.wasm": ""}
    )
    message = _error(build(store, root))
    assert "kilnfile.py:5" in message
    assert f"{kind}() takes the command as separate arguments" in message
    assert f"{kind}(*command, ...)" in message
    assert ("native('gcc', '-v', ...)" if kind == "native" else "wasm(tool, '-v', ...)") in message


# ----------------------------------------------------------- tools, runtimes

HELLO_C = """#include <stdio.h>
int main(int argc, char **argv) {
    FILE *f = fopen("out.txt", "w");
    if (!f) return 1;
    fprintf(f, "hello from %s\\n", argv[1]);
    return fclose(f) != 0;
}
"""


@native_only
def test_a_program_built_in_the_build_runs_with_only_its_runtime(store, tmp_path: Path) -> None:
    root = _project(
        tmp_path / "p",
        """
async def program(*flags):
    name = "hello" + "".join(flags)
    step = await native("gcc", *flags, "-o", name, "hello.c", tools=["gcc"],
                        inputs=[source("hello.c")], outputs=[name], description=f"cc {name}")
    return step.file(name)

async def run(exe, **declared):
    step = await native(f"./{exe.path}", exe.path, inputs=[exe], outputs=["out.txt"],
                        description=f"run {exe.path}", **declared)
    return step.file("out.txt")

@target
async def dynamic():
    return await run(await program(), tools=[], runtimes=["c"])

@target
async def static():
    return await run(await program("-static"), tools=[])

@target
async def without_runtime():
    return await run(await program(), tools=[])
""",
        {"hello.c": HELLO_C},
    )
    report = build(store, root, "dynamic", "static")
    assert report.ok, report.errors
    out = root / "kiln-out"
    assert (out / "dynamic" / "out.txt").read_text() == "hello from hello\n"
    assert (out / "static" / "out.txt").read_text() == "hello from hello-static\n"
    run = next(s for s in report.steps if s.description == "run hello")
    platform = run.identity["platform"]
    assert platform["tool-names"] == "runtime:c"  # keyed on the C runtime, not on gcc
    missing = build(store, root, "without_runtime")
    assert not missing.ok  # no loader in the sandbox without the runtime
    message = _error(missing)
    assert "run hello" in message and "exit code 127" in message
    assert "./hello is there, but not the dynamic loader it names" in message
    assert "runtimes=['c']" in message


def test_runtimes_are_identified_by_their_files_and_packages() -> None:
    from kiln.errors import KilnError
    from kiln.exec.tools import Dpkg, identity, resolve

    dpkg = Dpkg()
    c = resolve("runtime:c", dpkg)
    cxx = resolve("runtime:c++", dpkg)
    assert any(p.startswith("libc6=") for p in c.packages)
    assert any(p.startswith("libstdc++6=") for p in cxx.packages)
    assert set(c.packages) <= set(cxx.packages)
    assert identity([c]) != identity([cxx])
    with pytest.raises(KilnError, match="unknown runtime 'fortran'"):
        resolve("runtime:fortran", dpkg)


@native_only
def test_a_program_that_is_not_there_gets_no_loader_hint(store, tmp_path: Path) -> None:
    root = _project(
        tmp_path / "p",
        """
@target
async def t():
    return await native("./nothing", tools=[], runtimes=["c"], description="run nothing")
""",
    )
    message = _error(build(store, root))
    assert "cannot run ./nothing: No such file or directory" in message
    assert "dynamic loader" not in message


def test_a_native_step_without_a_description_is_named_by_its_command() -> None:
    from kiln.engine.rules import _default_description

    assert _default_description(("/usr/bin/gcc", "-O2", "src/a/b.c", "-o")) == "gcc -O2 b.c"
    script = 'while read n; do ./hello "$n"; done < names.txt > out.txt'
    assert _default_description(("sh", "-c", script)) == f"sh -c {script[:37]}..."
