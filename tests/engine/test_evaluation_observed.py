"""What a build file reads from the host while it is evaluated (environment
variables, files, folder listings) is tracked by the no-op stamp, and what
no stamp can capture (a program started) prevents one (engine/observe.py)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from engine_helpers import settle

from kiln.engine.observe import Observation, observing

# A target whose step's command comes from wherever READ says; TEXTKIT's
# `chapters` and `count` both succeed on book.txt.
TARGET = '''

@target
async def picked():
    """A step chosen by what the build file read."""
    mode = {read}
    return await wasm(source(TEXTKIT), mode.strip(), "book.txt", "picked.out",
                      inputs=[source("book.txt")], outputs=["picked.out"])
'''


@pytest.fixture
def kiln_in(example: Path, tmp_path: Path):
    import subprocess
    import sys

    kiln = str(Path(sys.executable).parent / "kiln")
    home = tmp_path / "home"

    def run(*args: str, env: dict[str, str] | None = None, code: int = 0):
        full = {**os.environ, "KILN_HOME": str(home), "KILN_SERVER": "off", **(env or {})}
        proc = subprocess.run([kiln, *args], cwd=example, env=full, capture_output=True, text=True)
        assert proc.returncode == code, proc.stderr
        return proc

    return run


def _with_target(example: Path, read: str, prelude: str = "") -> Path:
    kilnfile = example / "kilnfile.py"
    kilnfile.write_text(prelude + kilnfile.read_text() + TARGET.format(read=read))
    settle(example, kilnfile)
    return kilnfile


def _build(kiln_in, env: dict[str, str] | None = None) -> dict:
    return json.loads(kiln_in("build", "picked", "--json", env=env).stdout)


def _picked_step(example: Path, kiln_in) -> str:
    [step] = json.loads(kiln_in("show", "picked", "--json").stdout)
    return step["step"]


def _edit_then_count(example: Path, kiln_in, path: Path, text: str, because: str) -> None:
    """Write ``text`` to ``path``: the next build evaluates again for
    ``because`` and picks `count`; the one after is answered by its stamp."""
    path.write_text(text)
    settle(example, path)
    changed = _build(kiln_in)
    assert changed["evaluated_because"] == because
    assert "count" in _picked_step(example, kiln_in)
    assert _build(kiln_in)["unchanged"]


def test_an_environment_variable_the_build_file_read_is_in_the_stamp(example, kiln_in) -> None:
    _with_target(example, 'os.environ.get("MODE", "chapters")', prelude="import os\n")
    first = _build(kiln_in, {"MODE": "chapters"})
    assert first["executed"] == 1 and not first["unchanged"]
    again = _build(kiln_in, {"MODE": "chapters"})
    assert again["unchanged"]  # the same environment: the stamp answers
    changed = _build(kiln_in, {"MODE": "count"})  # never a stale "nothing to do"
    assert not changed["unchanged"]
    assert changed["evaluated_because"] == "environment variable MODE changed"
    assert "count" in _picked_step(example, kiln_in)
    proc = kiln_in("build", "picked", env={"MODE": "count"})
    assert "nothing to do: no source changed" in proc.stderr
    unset = _build(kiln_in)  # unset is a value too
    assert not unset["unchanged"] and "chapters" in _picked_step(example, kiln_in)


def test_reading_the_environment_warns_once_naming_the_line(example, kiln_in) -> None:
    kilnfile = _with_target(
        example, 'os.getenv("MODE", "chapters") + os.environ.get("OTHER", "")',
        prelude="import os\n",
    )  # fmt: skip
    proc = kiln_in("build", "picked")
    warnings = [line for line in proc.stderr.splitlines() if "read environment variable" in line]
    line = kilnfile.read_text().splitlines().index(
        '    mode = os.getenv("MODE", "chapters") + os.environ.get("OTHER", "")'
    ) + 1
    assert warnings == [
        f"kiln: warning: {kilnfile}:{line}: the build file read environment variable MODE "
        "directly (and 1 more); the stamp tracks it, but `setting()` and `source()` say what "
        "a build depends on"
    ]


def test_a_host_file_and_a_folder_listing_the_build_file_read_are_in_the_stamp(
    example, kiln_in, tmp_path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    mode = outside / "mode.txt"
    mode.write_text("chapters\n")
    settle(example, mode)
    _with_target(
        example, f'open({str(mode)!r}).read() if len(os.listdir({str(outside)!r})) == 1 '
        'else "count"', prelude="import os\n",
    )  # fmt: skip
    assert not _build(kiln_in)["unchanged"]
    assert _build(kiln_in)["unchanged"]
    _edit_then_count(example, kiln_in, mode, "count\n", f"the file {mode} changed")
    mode.write_text("chapters\n")
    (outside / "another").write_text("")
    settle(example, outside / "another")
    listed = _build(kiln_in)
    assert listed["evaluated_because"] in (
        f"the folder {outside} has other entries", f"the file {mode} changed"
    )
    assert "count" in _picked_step(example, kiln_in)  # two entries: count


def test_an_imported_helper_module_is_in_the_stamp(example, kiln_in) -> None:
    helper = example / "modes.py"
    helper.write_text('MODE = "chapters"\n')
    _with_target(example, "modes.MODE", prelude="import modes\n")
    settle(example, helper)
    assert not _build(kiln_in)["unchanged"]
    assert _build(kiln_in)["unchanged"]
    helper.write_text('MODE = "count"\n')
    settle(example, helper)
    changed = _build(kiln_in)
    assert not changed["unchanged"] and changed["evaluated_because"] == f"{helper} changed"
    assert "count" in _picked_step(example, kiln_in)


def test_a_build_file_that_runs_a_program_is_never_answered_from_the_stamp(
    example, kiln_in
) -> None:
    kilnfile = _with_target(
        example, 'subprocess.run(["echo", "chapters"], capture_output=True, text=True).stdout',
        prelude="import subprocess\n",
    )  # fmt: skip
    for _ in range(2):
        report = _build(kiln_in)
        assert not report["unchanged"]
        assert report["not_stamped"].startswith(f"{kilnfile}:")
        assert "the build file started a program (subprocess.Popen)" in report["not_stamped"]
    why = kiln_in("why").stdout
    assert "no stamp was filed (the next build evaluates again): " in why
    assert "started a program" in why


def test_settings_come_from_d_then_kiln_toml_and_are_in_the_stamp(example, kiln_in) -> None:
    _with_target(example, 'setting("mode", default="chapters")',
                 prelude="from kiln.build import setting\n")  # fmt: skip
    assert "chapters" in (_build(kiln_in), _picked_step(example, kiln_in))[1]
    toml = example / "kiln.toml"
    _edit_then_count(example, kiln_in, toml, '[settings]\nmode = "count"\n', f"{toml} changed")
    over = json.loads(kiln_in("build", "picked", "-D", "mode=chapters", "--json").stdout)
    assert over["evaluated_because"] == "other settings: -D mode"
    assert "chapters" in _picked_step(example, kiln_in)
    toml.write_text("[settings\n")
    settle(example, toml)
    proc = kiln_in("build", "picked", code=2)
    assert f"kiln: error: {toml}: cannot read the project's settings" in proc.stderr


def test_kilns_own_reads_are_not_the_build_files(example, kiln_in) -> None:
    """A build file that reads nothing itself gets no warning and a stamp,
    though Kiln reads its config, its environment and the sources meanwhile."""
    first = kiln_in("build", "--json", env={"KILN_STEP_TIMEOUT": "60"})
    report = json.loads(first.stdout)
    assert report["warnings"] == [] and report["not_stamped"] is None
    assert json.loads(kiln_in("build", "--json").stdout)["unchanged"]


def test_an_observation_sees_only_its_own_threads_reads(tmp_path) -> None:
    target = tmp_path / "f"
    target.write_text("x")
    seen = Observation()
    with observing(seen):
        other = threading.Thread(target=lambda: (os.environ.get("ELSEWHERE"), target.read_text()))
        other.start()
        other.join()
        os.environ.get("HERE")
    assert "ELSEWHERE" not in seen.env and str(target) not in seen.files
    assert seen.env == {"HERE": None}
    assert os.environ.__class__ is os._Environ  # the real one is back


def test_two_threads_observe_their_own_builds_at_once() -> None:
    first, second = Observation(), Observation()
    inside = threading.Barrier(2)

    def observe(obs: Observation, name: str) -> None:
        with observing(obs):
            inside.wait()
            os.environ.get(name)
            inside.wait()

    threads = [threading.Thread(target=observe, args=(o, n))
               for o, n in ((first, "FIRST"), (second, "SECOND"))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (first.env, second.env) == ({"FIRST": None}, {"SECOND": None})
    assert os.environ.__class__ is os._Environ


def test_a_variables_value_never_lands_in_the_store(example, kiln_in, tmp_path) -> None:
    """A build file may read a token from the environment: the stamp keeps
    a digest of it, not the value."""
    _with_target(example, '"chapters" if os.environ.get("API_TOKEN") else "count"',
                 prelude="import os\n")  # fmt: skip
    token = "s3cr3t-token-7f1e9c"
    assert not _build(kiln_in, {"API_TOKEN": token})["unchanged"]
    assert _build(kiln_in, {"API_TOKEN": token})["unchanged"]
    assert not _build(kiln_in, {"API_TOKEN": token + "2"})["unchanged"]
    home = tmp_path / "home"
    stored = b"".join(p.read_bytes() for p in home.glob("kiln.db*") if p.is_file())
    assert stored and token.encode() not in stored
