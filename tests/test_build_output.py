"""What `kiln build` shows of its steps: the stderr of steps that ran,
after their line (as ninja does), escaped and cut; only a count for cache
hits; in the JSON report with --json; commands with -v."""

from __future__ import annotations

import json
from pathlib import Path

import wasmtime

from conftest import run_kiln
from native_helpers import needs_bubblewrap

KILNFILE = """
from kiln.build import native, target


@target
async def warns():
    return await native("sh", "-c", "echo warn >&2; echo ok > out",
                        tools=["sh"], outputs=["out"], description="compile")


@target
async def noisy():
    return await native(
        "sh", "-c", "printf 'red \\\\033[31mRED\\\\033]0;title\\\\007\\\\n' >&2; "
        "seq 1 5000 >&2; echo ok > out",
        tools=["sh", "seq"], outputs=["out"], description="shout")
"""


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "p"
    project.mkdir()
    (project / "kilnfile.py").write_text(KILNFILE)
    return project


def _kiln(home: Path, project: Path, *args: str):
    return run_kiln(home, *args, cwd=project, env={"KILN_SERVER": "off"})


@needs_bubblewrap
def test_a_steps_warnings_follow_its_line_once(home: Path, tmp_path: Path) -> None:
    project = _project(tmp_path)
    first = _kiln(home, project, "build", "warns")
    assert first.returncode == 0, first.stderr
    lines = first.stderr.splitlines()
    step = next(i for i, line in enumerate(lines) if line.startswith("kiln: ran    warns: compile"))
    assert lines[step + 1] == "warn"
    # A cache hit (the build file changed, not the step): not shown again, counted.
    (project / "kilnfile.py").write_text(KILNFILE + "\n# edited\n")
    again = _kiln(home, project, "build", "warns")
    assert again.returncode == 0, again.stderr
    assert "warn\n" not in again.stderr
    assert "kiln: 1 cached step wrote to stderr: `kiln log warns`" in again.stderr


@needs_bubblewrap
def test_hostile_and_huge_stderr_is_escaped_and_cut(home: Path, tmp_path: Path) -> None:
    project = _project(tmp_path)
    proc = _kiln(home, project, "build", "noisy")
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr
    assert "red \\x1b[31mRED\\x1b]0;title\\x07" in proc.stderr
    assert "\n29\n" in proc.stderr and "\n30\n" not in proc.stderr  # 30 lines shown
    assert "`kiln log noisy` shows it" in proc.stderr


@needs_bubblewrap
def test_json_carries_the_stderr_and_verbose_shows_commands(home: Path, tmp_path: Path) -> None:
    project = _project(tmp_path)
    proc = _kiln(home, project, "build", "--json", "-v", "warns")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["stderr"] == [
        {"target": "warns", "step": "compile", "stderr": "warn", "truncated": False, "bytes": 5}
    ]
    assert "warn\n" not in proc.stderr  # in the JSON instead
    assert "kiln: start  warns: sh -c 'echo warn >&2; echo ok > out'  (compile)" in proc.stderr


def test_compiling_a_large_module_is_announced_without_a_terminal(
    home: Path, tmp_path: Path
) -> None:
    project = tmp_path / "big"
    project.mkdir()
    filler = "\\00" * (1 << 20)  # a data segment makes the module over a MiB
    module = f'(module (memory 17) (data (i32.const 0) "{filler}") (func (export "_start")))'
    (project / "big.wasm").write_bytes(wasmtime.wat2wasm(module))
    (project / "kilnfile.py").write_text(
        "from kiln.build import source, target, wasm\n\n\n@target\nasync def t():\n"
        "    await wasm(source('big.wasm'))\n    return source('big.wasm')\n"
    )
    first = _kiln(home, project, "build")
    assert first.returncode == 0, first.stderr
    lines = first.stderr.splitlines()
    start = lines.index(
        "kiln: compiling a 1.0 MiB WebAssembly module for this CPU (once: later builds reuse it)..."
    )
    assert lines[start + 1].startswith(
        "kiln: done compiling a 1.0 MiB WebAssembly module for this CPU ("
    )
    kilnfile = project / "kilnfile.py"
    kilnfile.write_text(kilnfile.read_text().replace("'big.wasm'))", "'big.wasm'), 'again')"))
    again = _kiln(home, project, "build")  # the step runs again, the module is not compiled
    assert again.returncode == 0 and "compiling" not in again.stderr
    assert "kiln: ran    t: big.wasm again" in again.stderr


def test_kiln_wasm_run_announces_a_large_compile_and_its_end_without_a_terminal(
    home: Path, tmp_path: Path
) -> None:
    filler = "\\00" * (1 << 20)
    module = f'(module (memory 17) (data (i32.const 0) "{filler}") (func (export "_start")))'
    (tmp_path / "big.wasm").write_bytes(wasmtime.wat2wasm(module))
    proc = _kiln(home, tmp_path, "wasm", "run", "big.wasm")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    start = lines.index("kiln: compiling a 1.0 MiB WebAssembly module for this CPU...")
    assert lines[start + 1].startswith(
        "kiln: done compiling a 1.0 MiB WebAssembly module for this CPU ("
    )
