"""Progress output: a line per step that ran when not on a terminal, and a
live status line (counts and running steps) on one."""

from __future__ import annotations

import io
import time

from kiln.engine.progress import BuildProgress
from kiln.engine.scheduler import StepRecord, StepStatus
from kiln.model.digest import Digest


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
