"""The ``kiln`` commands about builds: ``build``, ``targets``, ``why``,
``show``, ``log`` and ``trace``. They parse arguments and call
``kiln.engine``; registered on the main group by ``kiln.cli``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from kiln.cli import _emit_json, _open_store, cli, json_option

if TYPE_CHECKING:
    from kiln.engine.loader import Project


def _project() -> Project:
    from kiln.engine.loader import find_root, load

    return load(find_root(Path.cwd()))


@cli.command("build")
@click.argument("targets", nargs=-1)
@click.option(
    "-j", "--jobs", type=click.IntRange(min=1), help="Steps run at once (default: CPU cores)."
)
@click.option(
    "-k", "--keep-going", is_flag=True, help="After a failure, still run what does not need it."
)
@json_option
@click.pass_context
def build(
    ctx: click.Context, targets: tuple[str, ...], jobs: int | None, keep_going: bool, as_json: bool
) -> None:
    """Build TARGETS (default: every target) of the project's kilnfile.py.

    Each target's value lands, read-only, in kiln-out/TARGET/ under the
    project root and is kept from garbage collection. Steps whose result is
    in the store do not run again. Exits 1 if a step or target failed.
    """
    from kiln.engine.build import Build
    from kiln.engine.progress import BuildProgress
    from kiln.engine.scheduler import StepStatus

    project = _project()
    names = list(targets) or sorted(project.targets)
    for name in names:
        project.target(name)  # unknown names fail before anything runs
    store = _open_store(ctx)
    with BuildProgress() as progress:
        report = Build(
            store, project, jobs=jobs, keep_going=keep_going, on_change=progress.on_change
        ).run(names)
    for error in report.errors:
        click.echo(f"kiln: error: {error.render()}", err=True)
    if as_json:
        _emit_json(report.summary())
    else:
        for t in report.targets:
            if t.output is not None:
                click.echo(f"{t.name}: {os.path.relpath(t.output)}")
        executed = report.count(StepStatus.EXECUTED)
        cached = report.count(StepStatus.CACHED)
        failed = report.count(StepStatus.FAILED)
        if report.ok and executed == 0:
            verdict = f"nothing to do: all {cached} steps were cached"
        else:
            verdict = f"{executed} steps ran, {cached} cached, {failed} failed"
        click.echo(f"kiln: {verdict} ({report.seconds:.2f} s)", err=True)
    if report.errors:
        sys.exit(max(e.exit_code for e in report.errors))


@cli.command("targets")
@json_option
def targets_command(as_json: bool) -> None:
    """List the targets of the project's kilnfile.py with their docstrings."""
    project = _project()
    rows = [
        {"name": t.name, "doc": t.doc, "where": t.where}
        for t in sorted(project.targets.values(), key=lambda t: t.name)
    ]
    if as_json:
        _emit_json(rows)
        return
    width = max((len(r["name"]) for r in rows), default=0)
    for r in rows:
        first_line = r["doc"].splitlines()[0] if r["doc"] else ""
        click.echo(f"{r['name']:<{width}}  {first_line}".rstrip())
