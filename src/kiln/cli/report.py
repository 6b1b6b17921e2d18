"""What ``kiln build`` prints: the targets' folders on stdout, errors and a
one-line verdict on stderr, or with ``--json`` the report's summary.
Standard library only: the fast path prints with it too."""

from __future__ import annotations

import os
import sys

from kiln.engine.report import BuildReport, StepStatus


def write_json(obj: object, one_line: bool = False) -> None:
    """``obj`` as indented JSON on stdout (what every ``--json`` prints);
    ``one_line``: on one line (``kiln build --watch --json``: a report per line)."""
    import json  # (start-up: this module is on the no-op path)

    text = json.dumps(obj, indent=None if one_line else 2, sort_keys=True, default=str)
    sys.stdout.write(text + "\n")
    if one_line:
        sys.stdout.flush()  # (a reader of the lines gets each one as it is made)


def show_report(
    report: BuildReport,
    as_json: bool,
    shown: dict[str, object] | None = None,
    cwd: str | None = None,
    one_line: bool = False,
) -> None:
    """Print a build's report; ``shown``: what the progress display would
    have printed of the steps' stderr (``BuildProgress.json_fields``), for
    the JSON report; ``cwd``: the folder output paths are relative to (the
    current one by default); ``one_line``: the JSON report on one line."""
    for warning in report.warnings:
        sys.stderr.write(f"kiln: warning: {warning}\n")
    if report.forgotten:
        sys.stderr.write(
            f"kiln: removed the outputs of targets kilnfile.py no longer defines: "
            f"{', '.join(report.forgotten)}\n"
        )
    for error in report.errors:
        sys.stderr.write(f"kiln: error: {error.render()}\n")
    if as_json:
        summary = {**report.summary(), "stderr": [], "cached_stderr": {}, **(shown or {})}
        if report.errors:  # what every failed --json command says
            summary.update(error=report.errors[0].message, hint=report.errors[0].hint)
        write_json(summary, one_line)
        return
    for t in report.targets:
        if t.output is not None:
            sys.stdout.write(f"{t.name}: {os.path.relpath(t.output, cwd)}\n")
    sys.stdout.flush()
    sys.stderr.write(f"kiln: {_verdict(report)}\n")


def _verdict(report: BuildReport) -> str:
    cached = report.count(StepStatus.CACHED)
    if report.unchanged:
        put_back = (
            f"; restored {', '.join(report.restored)} from the store" if report.restored else ""
        )
        return (
            f"nothing to do: no source changed since the last build{put_back} "
            f"({cached} {steps_word(cached)}, {report.seconds:.3f} s)"
        )
    executed = report.count(StepStatus.EXECUTED)
    remote_hits = report.count(StepStatus.REMOTE_CACHED)
    remote_ran = report.count(StepStatus.REMOTE_EXECUTED)
    if report.ok and executed + remote_ran == 0 and not remote_hits:
        verdict = (
            f"nothing to do: all {cached} steps were cached" if cached != 1
            else "nothing to do: its one step was cached"
        )  # fmt: skip
    else:
        failed = report.count(StepStatus.FAILED)
        ran = f"{executed} {steps_word(executed)} ran"
        ran += f" here, {remote_ran} remotely" if remote_ran else ""
        hits = f"{cached} cached"
        hits += f" ({remote_hits} more from the remote)" if remote_hits else ""
        verdict = f"{ran}, {hits}, {failed} failed"
        calls = report.calls()
        if calls["ran"] or calls["cached"]:
            total = calls["ran"] + calls["cached"]
            verdict += f"; in them, {total} memoized calls, {calls['ran']} ran"
    return f"{verdict} ({report.seconds:.2f} s)"


def steps_word(count: int) -> str:
    """``step`` or ``steps``, as ``count`` asks."""
    return "step" if count == 1 else "steps"
