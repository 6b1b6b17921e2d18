"""Progress output: a line per step that ran when not on a terminal, and a
live status line (counts and running steps) on one."""

from __future__ import annotations

import io
import time

from kiln.engine.progress import BuildProgress, printable
from kiln.engine.scheduler import StepRecord, StepStatus
from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2


def _record(seq: int, description: str) -> StepRecord:
    return StepRecord(seq, "t", description, Digest.of_bytes(str(seq).encode()), {})


def _move(progress: BuildProgress, record: StepRecord, status: StepStatus, started=None) -> None:
    record.status = status
    record.started = started
    record.finished = time.time() if status is not StepStatus.PENDING else None
    progress.on_change(record)


def test_plain_output_names_steps_that_ran_or_failed_only() -> None:
    out = io.StringIO()
    with BuildProgress(out, live=False) as progress:
        a, b, c = _record(0, "compile a"), _record(1, "compile b"), _record(2, "link")
        for r in (a, b, c):
            progress.on_change(r)
        _move(progress, a, StepStatus.CACHED)
        _move(progress, b, StepStatus.PENDING, started=time.time())
        _move(progress, b, StepStatus.EXECUTED, started=b.started)
        _move(progress, c, StepStatus.FAILED, started=time.time())
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("kiln: ran    t: compile b (")
    assert lines[1].startswith("kiln: FAILED t: link (")
    assert progress.counts[StepStatus.CACHED] == 1 and progress.counts[StepStatus.PENDING] == 0


def test_live_line_counts_and_names_running_steps() -> None:
    progress = BuildProgress(io.StringIO(), live=False)
    done, running = _record(0, "compile a"), _record(1, "compile b")
    progress.on_change(done)
    progress.on_change(running)
    _move(progress, done, StepStatus.EXECUTED, started=time.time())
    _move(progress, running, StepStatus.PENDING, started=time.time())
    text = progress._render().plain
    assert text.startswith("kiln: 1/2 done (0 cached), 1 running, 0 failed")
    assert "t: compile b" in text


def test_large_downloads_are_reported_by_quarter_without_a_terminal() -> None:
    out = io.StringIO()
    progress = BuildProgress(stream=out, live=False)
    total = 32 << 20
    for done in range(0, total + 1, 1 << 20):
        progress.on_download("http://127.0.0.1/big.tar.gz", done, total)
    progress.on_download("http://127.0.0.1/small.txt", 10, 10)  # small: not reported
    assert out.getvalue().splitlines() == [
        f"kiln: downloading big.tar.gz: {p}% of 32 MiB" for p in (25, 50, 75, 100)
    ]


def test_live_line_shows_the_total_so_far_and_how_long_long_steps_run() -> None:
    progress = BuildProgress(io.StringIO(), live=False)
    records = [_record(i, f"compile {i}") for i in range(3)]
    for r in records:
        progress.on_change(r)
    _move(progress, records[0], StepStatus.CACHED)
    _move(progress, records[1], StepStatus.PENDING, started=time.time() - 12.3)
    _move(progress, records[2], StepStatus.PENDING, started=time.time())
    text = progress._render().plain
    assert text.startswith("kiln: 1/3 done (1 cached), 2 running, 0 failed")
    assert "[t: compile 1 12 s, t: compile 2]" in text  # the longest first; short ones untimed


def test_verbose_shows_each_command_as_it_starts() -> None:
    out = io.StringIO()
    with BuildProgress(out, live=False, verbose=True) as progress:
        r = StepRecord(0, "t", "cc a.c", Digest.of_bytes(b"0"), {"argv": ["cc", "-c", "a b.c"]})
        progress.on_change(r)
        _move(progress, r, StepStatus.PENDING, started=time.time())
    assert out.getvalue().splitlines() == ["kiln: start  t: cc -c 'a b.c'  (cc a.c)"]


def test_printable_escapes_what_a_terminal_would_act_on() -> None:
    hostile = b"ok\tline\n\x1b[2J\x1b]0;title\x07\r\xc2\x9b\xe2\x80\xae\xff"
    assert printable(hostile) == "ok\tline\n\\x1b[2J\\x1b]0;title\\x07\\r\\x9b\\u202e\ufffd"


def test_a_slow_compile_is_announced_without_a_terminal() -> None:
    out = io.StringIO()
    with BuildProgress(out, live=False) as progress, progress.on_slow("compiling a module"):
        pass
    lines = out.getvalue().splitlines()
    assert lines[0] == "kiln: compiling a module (once: later builds reuse it)..."
    assert lines[1].startswith("kiln: done compiling a module (") and len(lines) == 2


def test_an_interruption_names_what_it_stops() -> None:
    out = io.StringIO()
    progress = BuildProgress(out, live=False)
    r = _record(0, "sleep")
    progress.on_change(r)
    _move(progress, r, StepStatus.PENDING, started=time.time() - 5)
    progress.interrupted()
    assert "kiln: interrupted: stopping 1 running step: t: sleep (5 s); Ctrl-C again" in (
        out.getvalue()
    )


def test_on_a_terminal_a_steps_stderr_is_printed_above_the_live_line(store) -> None:
    out = io.StringIO()
    with BuildProgress(out, live=True) as progress:
        progress.on_store(store)
        quiet, noisy = _record(0, "quiet step"), _record(1, "noisy step")
        for r, stderr in ((quiet, b""), (noisy, b"warning: \x1b[1munused\x1b[0m\n")):
            with store.writing():
                digest = store.cas.put_bytes(stderr)
            r.result = re_pb2.ActionResult(stderr_digest=digest.to_proto())
            progress.on_change(r)
            _move(progress, r, StepStatus.EXECUTED, started=time.time())
    text = out.getvalue()
    assert "kiln: ran    t: noisy step (" in text and "warning: \\x1b[1munused\\x1b[0m" in text
    assert text.count("kiln: ran") == 1  # on a terminal, only steps with stderr get a line
    assert progress.stderr[0]["stderr"] == "warning: \\x1b[1munused\\x1b[0m"


def test_a_step_requested_again_as_it_ran_is_not_counted_as_a_cached_one(store) -> None:
    out = io.StringIO()
    with BuildProgress(out, live=False) as progress:
        progress.on_store(store)
        with store.writing():
            digest = store.cas.put_bytes(b"warning\n")
        first, again = _record(0, "cc"), _record(1, "cc")
        again.key = first.key
        for r in (first, again):
            r.result = re_pb2.ActionResult(stderr_digest=digest.to_proto())
            progress.on_change(r)
        _move(progress, first, StepStatus.EXECUTED, started=time.time())
        _move(progress, again, StepStatus.CACHED)
    assert out.getvalue().count("warning") == 1 and "cached step" not in out.getvalue()
