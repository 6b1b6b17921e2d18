"""`kiln build --watch`: real `kiln` processes on small projects, edited
while they watch; what each build ran, what it placed in kiln-out, and
how the command ends (SIGINT 130, SIGTERM 143, no traceback). Without and
with the resident server, through inotify and through the polling
fallback. Every wait has a deadline; edits are made atomically (a file
written elsewhere, then renamed into the project) so that a loaded machine
cannot split one edit into two builds."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import wasmtime

from conftest import KILN
from kiln.cli import watch as cli_watch
from kiln.server.watch import ProjectWatch
from server_helpers import WAIT_S, gone, serving
from spin_guest import spin_wat

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="inotify is Linux's")

KILNFILE = """
from kiln.build import source, target, wasm
from names import A

CAT = "tools/cat.wasm"


@target
async def a():
    return await wasm(source(CAT), "out", A, inputs=[source(A)], outputs=["out"],
                      description="cat a")


@target
async def b():
    return await wasm(source(CAT), "out", "b.txt", inputs=[source("b.txt")], outputs=["out"],
                      description="cat b")
"""

# A wasm step that counts through a function call (where Wasmtime notices
# an interruption): seconds of work, stopped at once.
SPIN = spin_wat(5_000_000_000)
SPIN_KILNFILE = """
from kiln.build import source, target, wasm


@target
async def spin():
    await wasm(source("spin.wasm"), fuel=10**12, description="spin")
    return source("spin.wasm")
"""

VERDICT = re.compile(r"kiln: (\d+ steps? ran, .*|nothing to do: .*) \([^()]*\d s\)")


def _kiln_watching_at_most(folders: int) -> list[str]:
    """`kiln` whose project watch gives up beyond ``folders`` folders (0:
    at once, as on a network file system)."""
    return [sys.executable, "-c", (
        "import sys\n"
        "from kiln.cli import watch\n"
        "from kiln.server.watch import ProjectWatch\n"
        f"watch.ProjectWatch = lambda root: ProjectWatch(root, max_folders={folders})\n"
        "from kiln.cli.entry import main\n"
        "sys.argv = ['kiln', *sys.argv[1:]]\n"
        "main()\n"
    )]  # fmt: skip


class Lines:
    """The lines a stream gives, read by a thread as they come."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self.done = False
        self._changed = threading.Condition()
        self.cursor = 0  # lines before it are already expected
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.done = True
            self._changed.notify_all()

    def expect(self, pattern: str | re.Pattern[str]) -> re.Match[str]:
        """The first line from the cursor on that matches ``pattern`` (the
        cursor then moves past it); fails after ``WAIT_S`` seconds."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + WAIT_S
        with self._changed:
            while True:
                for i in range(self.cursor, len(self.lines)):
                    found = regex.fullmatch(self.lines[i])
                    if found:
                        self.cursor = i + 1
                        return found
                left = deadline - time.monotonic()
                assert left > 0 and not self.done, (
                    f"no line matching {regex.pattern!r} in:\n" + "\n".join(self.lines)
                )
                self._changed.wait(left)

    def since(self, start: int) -> list[str]:
        with self._changed:
            return self.lines[start : self.cursor]

    def all(self) -> str:
        with self._changed:
            return "\n".join(self.lines)


class Watching:
    """A running `kiln build --watch`, its stdout and stderr read as they come."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.out = Lines(self.proc.stdout)
        self.err = Lines(self.proc.stderr)

    def build(self) -> tuple[str, list[str]]:
        """The next build's verdict (without its time) and the lines of
        stderr it printed before it."""
        start = self.err.cursor
        verdict = self.err.expect(VERDICT).group(1)
        return verdict, self.err.since(start)

    def end(self, signum: int) -> int:
        """Send ``signum``; the exit code."""
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=WAIT_S)


@contextmanager
def watching(argv: list[str], cwd: Path, env: dict[str, str]) -> Iterator[Watching]:
    w = Watching(argv, cwd, env)
    try:
        yield w
    finally:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()


def _env(home: Path, **more: str) -> dict[str, str]:
    return {**os.environ, "KILN_HOME": str(home), "KILN_SERVER": "off", **more}


def _project(tmp_path: Path, tools: dict[str, bytes]) -> Path:
    project = tmp_path / "p"
    (project / "tools").mkdir(parents=True)
    (project / "tools" / "cat.wasm").write_bytes(tools["tools/cat.wasm"])
    (project / "kilnfile.py").write_text(KILNFILE)
    (project / "names.py").write_text('A = "a.txt"\n')
    for name, text in (("a.txt", "one\n"), ("b.txt", "two\n"), ("c.txt", "see\n")):
        (project / name).write_text(text)
    return project


def _edit(path: Path, text: str) -> None:
    """Replace ``path``'s content in one step: written next to the project,
    renamed into it (one event)."""
    staged = path.parents[1] / f"staged-{path.name}"
    staged.write_text(text)
    os.replace(staged, path)


def _output(project: Path, target: str) -> str:
    return (project / "kiln-out" / target / "out").read_text()


def test_rebuilds_what_changed_goes_on_after_failures_and_ends_on_ctrl_c(
    tmp_path: Path, tools
) -> None:
    project = _project(tmp_path, tools)
    with watching([KILN, "build", "--watch"], project, _env(tmp_path / "home")) as w:
        assert w.build()[0] == "2 steps ran, 0 cached, 0 failed"
        w.err.expect(f"kiln: watching {re.escape(str(project))} for changes \\(Ctrl-C to stop\\)")
        assert _output(project, "a") == "one\n"

        _edit(project / "a.txt", "three\n")
        w.err.expect("kiln: changed: a.txt")  # (the first: kiln-out made no build)
        verdict, lines = w.build()
        assert verdict == "1 step ran, 1 cached, 0 failed"
        ran = [line for line in lines if line.startswith("kiln: ran")]
        assert len(ran) == 1 and ran[0].startswith("kiln: ran    a: cat a ("), lines
        assert _output(project, "a") == "three\n"

        _edit(project / "b.txt", "FAIL\n")
        w.err.expect("kiln: changed: b.txt")
        verdict, lines = w.build()
        assert verdict == "0 steps ran, 1 cached, 1 failed"
        assert "kiln: error: target 'b': step 'cat b' failed with exit code 3" in lines
        assert "    cat: b.txt says FAIL (hint: `kiln log b` shows its full output)" in lines

        _edit(project / "b.txt", "fixed\n")  # the watch went on
        w.err.expect("kiln: changed: b.txt")
        assert w.build()[0] == "1 step ran, 1 cached, 0 failed"
        assert _output(project, "b") == "fixed\n"

        _edit(project / "kilnfile.py", KILNFILE + "\n@target\nasync def (:\n")
        w.err.expect("kiln: changed: kilnfile.py")
        w.err.expect(r"kiln: error: .*kilnfile\.py:\d+: syntax error: .*")
        _edit(project / "kilnfile.py", KILNFILE)
        w.err.expect("kiln: changed: kilnfile.py")
        assert w.build()[0] == "nothing to do: all 2 steps were cached"

        # A module of the project's, imported by the build file: read again.
        _edit(project / "names.py", 'A = "c.txt"\n')
        w.err.expect("kiln: changed: names.py")
        assert w.build()[0] == "1 step ran, 1 cached, 0 failed"
        assert _output(project, "a") == "see\n"

        assert w.end(signal.SIGINT) == 130
    w.err.expect("kiln: SIGINT: stopped watching after 7 builds")  # (no build besides)
    assert "Traceback" not in w.err.all()
    assert not (project / "__pycache__").exists()  # (the helper module was not compiled)


def test_json_prints_one_report_per_build_on_a_line(tmp_path: Path, tools) -> None:
    project = _project(tmp_path, tools)
    argv = [KILN, "build", "--watch", "--json", "a"]
    with watching(argv, project, _env(tmp_path / "home")) as w:
        first = json.loads(w.out.expect(r"\{.*\}").group())
        assert (first["ok"], first["executed"], first["cached"]) == (True, 1, 0)
        assert list(first["targets"]) == ["a"]
        _edit(project / "a.txt", "FAIL\n")
        failed = json.loads(w.out.expect(r"\{.*\}").group())
        assert (failed["ok"], failed["failed"]) == (False, 1)
        assert "failed with exit code 3" in failed["error"]
        _edit(project / "kilnfile.py", "oops(\n")
        bad = json.loads(w.out.expect(r"\{.*\}").group())
        assert bad["ok"] is False and "syntax error" in bad["error"]
        _edit(project / "kilnfile.py", KILNFILE)
        assert json.loads(w.out.expect(r"\{.*\}").group())["failed"] == 1  # (a.txt still fails)
        _edit(project / "a.txt", "four\n")
        again = json.loads(w.out.expect(r"\{.*\}").group())
        assert (again["ok"], again["executed"]) == (True, 1)
        assert w.end(signal.SIGINT) == 130
    assert len(w.out.lines) == 5  # nothing else on stdout: a waiting watch prints no report
    assert "Traceback" not in w.err.all()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_a_build_stops_it_as_ctrl_c_does(tmp_path: Path, signum: int) -> None:
    project = tmp_path / "p"
    project.mkdir()
    (project / "kilnfile.py").write_text(SPIN_KILNFILE)
    (project / "spin.wasm").write_bytes(wasmtime.wat2wasm(SPIN))
    argv = [KILN, "build", "--watch", "-v"]
    with watching(argv, project, _env(tmp_path / "home")) as w:
        w.err.expect(r"kiln: start  spin: .*")
        sent = time.monotonic()
        assert w.end(signum) == 128 + signum
        took = time.monotonic() - sent
    name = signal.Signals(signum).name
    w.err.expect(r"kiln: interrupted: stopping 1 running step: spin: spin \(\d+ s\); .*")
    w.err.expect(f"kiln: {name}: the build was interrupted; stopped watching after 1 build")
    assert "Traceback" not in w.err.all()
    assert took < 20, w.err.all()  # stopped, not run to its end
    assert not (project / "kiln-out" / "spin").exists()


def test_without_inotify_it_compares_the_files_every_second(tmp_path: Path, tools) -> None:
    project = _project(tmp_path, tools)
    argv = [*_kiln_watching_at_most(0), "build", "--watch"]
    with watching(argv, project, _env(tmp_path / "home")) as w:
        w.err.expect(
            "kiln: warning: not watching through inotify: the project has more than 0 "
            "folders; comparing the project's files every 1 s instead"
        )
        assert w.build()[0] == "2 steps ran, 0 cached, 0 failed"
        _edit(project / "a.txt", "polled\n")
        w.err.expect("kiln: changed: a.txt")
        assert w.build()[0] == "1 step ran, 1 cached, 0 failed"
        assert _output(project, "a") == "polled\n"
        assert w.end(signal.SIGTERM) == 143
    w.err.expect("kiln: SIGTERM: stopped watching after 2 builds")
    assert "Traceback" not in w.err.all()


def test_a_watch_that_gives_up_on_the_way_is_replaced_by_scans(tmp_path: Path, tools) -> None:
    project = _project(tmp_path, tools)  # two folders: the root and tools/
    argv = [*_kiln_watching_at_most(2), "build", "--watch"]
    with watching(argv, project, _env(tmp_path / "home")) as w:
        assert w.build()[0] == "2 steps ran, 0 cached, 0 failed"
        (project / "docs").mkdir()  # one folder too many
        w.err.expect(
            "kiln: warning: not watching through inotify: the project has more than 2 "
            "folders; comparing the project's files every 1 s instead"
        )
        w.err.expect("kiln: the watch could not tell what changed: building again")
        assert w.build()[0].startswith("nothing to do: ")
        _edit(project / "a.txt", "scanned\n")
        w.err.expect("kiln: changed: a.txt")
        assert w.build()[0] == "1 step ran, 1 cached, 0 failed"
        assert _output(project, "a") == "scanned\n"
        assert w.end(signal.SIGINT) == 130
    w.err.expect("kiln: SIGINT: stopped watching after 3 builds")
    assert "Traceback" not in w.err.all()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_through_the_server(tmp_path: Path, tools, signum: int) -> None:
    """The server runs the watch in its child, as any build; the client's
    signals reach it there."""
    project = _project(tmp_path, tools)
    with serving(tmp_path / "home") as served:
        served.start()
        with watching([KILN, "build", "--watch"], project, served.env) as w:
            assert w.build()[0] == "2 steps ran, 0 cached, 0 failed"
            [command] = served.status()["commands"]
            assert command["argv"] == ["build", "--watch"] and command["pid"] != w.proc.pid
            _edit(project / "a.txt", "served\n")
            w.err.expect("kiln: changed: a.txt")
            assert w.build()[0] == "1 step ran, 1 cached, 0 failed"
            assert _output(project, "a") == "served\n"
            assert w.end(signum) == 128 + signum
        w.err.expect(f"kiln: {signal.Signals(signum).name}: stopped watching after 2 builds")
        assert "Traceback" not in w.err.all()
        served.wait_until(
            lambda: served.status()["commands_running"] == 0, "the server to reap the watch"
        )


def test_stopping_the_server_ends_its_watches(tmp_path: Path, tools) -> None:
    """`kiln server stop` does not wait for a watch, which never ends by
    itself: the watch is ended as by SIGTERM, and the server exits."""
    project = _project(tmp_path, tools)
    with serving(tmp_path / "home") as served:
        pid = served.start()["pid"]
        with watching([KILN, "build", "--watch"], project, served.env) as w:
            assert w.build()[0] == "2 steps ran, 0 cached, 0 failed"
            stopped = served.kiln("server", "stop")
            assert stopped.returncode == 0, stopped.stderr
            assert w.proc.wait(timeout=60) == 143
        w.err.expect("kiln: SIGTERM: stopped watching after 1 build")
        served.wait_until(lambda: gone(pid), "the server to exit")


# ---------------------------------------------------------------- in-process


def test_what_kiln_writes_itself_is_no_change(tmp_path: Path) -> None:
    project = tmp_path / "p"
    (project / "src").mkdir(parents=True)
    (project / ".git").mkdir()
    store = project / "store"
    store.mkdir()
    changes = cli_watch._Events(ProjectWatch(str(project)), str(project), str(store))
    try:
        (project / "kiln-out" / ".kiln").mkdir(parents=True)
        (project / "kiln-out" / ".kiln" / "clock").write_text("")
        (project / ".git" / "index").write_text("")
        (store / "kiln.db").write_text("")
        (project / "src" / "new").mkdir()  # an empty folder: no file changed
        (project / "src" / "main.c").write_text("int main;\n")
        assert changes.wait() == [str(project / "src" / "main.c")]
    finally:
        changes.close()


def test_a_burst_of_changes_is_one(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cli_watch, "QUIET_S", 0.5)  # (wide: the machine may be loaded)
    monkeypatch.setattr(cli_watch, "SETTLE_S", 30.0)
    project = tmp_path / "p"
    project.mkdir()
    changes = cli_watch._Events(ProjectWatch(str(project)), str(project), None)
    names = [f"f{i}.c" for i in range(5)]

    def checkout() -> None:
        for name in names:
            (project / name).write_text(name)
            time.sleep(0.01)

    writer = threading.Thread(target=checkout)
    writer.start()
    try:
        assert changes.wait() == [str(project / n) for n in names]  # one wait: one build
        writer.join()
        assert changes._watch.drain() == 0  # (every event was read while settling)
    finally:
        writer.join()
        changes.close()


def test_scans_name_what_was_added_changed_and_removed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cli_watch, "POLL_S", 0.01)
    project = tmp_path / "p"
    (project / "kiln-out").mkdir(parents=True)
    (project / "old.c").write_text("old")
    (project / "same.c").write_text("same")
    (project / "edited.c").write_text("x")
    scans = cli_watch._Scans(str(project), None)
    (project / "old.c").unlink()
    (project / "new.c").write_text("new")
    (project / "edited.c").write_text("xy")
    (project / "kiln-out" / "out").write_text("ignored")
    assert scans.wait() == [str(project / n) for n in ("edited.c", "new.c", "old.c")]


def test_the_changed_line_names_a_few_paths(tmp_path: Path) -> None:
    root = str(tmp_path)
    paths = [os.path.join(root, n) for n in ("a", "b/c", "d", "e", "f")]
    assert cli_watch._describe(paths[:1], root) == "kiln: changed: a"
    assert cli_watch._describe(paths, root) == "kiln: changed: a, b/c, d and 2 more"
    assert cli_watch._describe(None, root) == (
        "kiln: the watch could not tell what changed: building again"
    )


def test_the_fast_paths_never_answer_watch() -> None:
    from kiln.cli import build_options

    assert build_options.parse(["build", "--watch"]) is None
    assert build_options.parse(["build", "a", "--watch", "--json"]) is None
