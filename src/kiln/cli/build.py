"""The ``kiln`` commands about builds: ``build``, ``targets``, ``why``,
``show``, ``log`` and ``trace``. They parse arguments and call
``kiln.engine``; registered on the main group by ``kiln.cli.app``."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kiln.cli.common import asdict, emit_json, json_option, open_store

if TYPE_CHECKING:
    from kiln.engine.loader import Project
    from kiln.store import Store


def _project() -> Project:
    from kiln.engine.loader import load
    from kiln.engine.root import find_root

    return load(find_root(Path.cwd()))


@click.command("build")
@click.argument("targets", nargs=-1)
@click.option(
    "-j", "--jobs", type=click.IntRange(min=1), help="Steps run at once (default: CPU cores)."
)
@click.option(
    "-k", "--keep-going", is_flag=True, help="After a failure, still run what does not need it."
)
@click.option(
    "--allow-unpinned",
    is_flag=True,
    help="Let fetches without a digest download, then fail showing the digest to pin.",
)
@json_option
@click.pass_context
def build(
    ctx: click.Context,
    targets: tuple[str, ...],
    jobs: int | None,
    keep_going: bool,
    allow_unpinned: bool,
    as_json: bool,
) -> None:
    """Build TARGETS (default: every target) of the project's kilnfile.py.

    Each target's value lands, read-only, in kiln-out/TARGET/ under the
    project root and is kept from garbage collection. Steps whose result is
    in the store do not run again. Exits 1 if a step or target failed.
    """
    from kiln.cli import entry as quick
    from kiln.engine import stamp
    from kiln.engine.root import find_root

    started = time.perf_counter()
    root = find_root(Path.cwd())
    key = stamp.stamp_key(list(targets) or None)
    store = open_store(ctx)
    # The entry point (kiln.cli.entry) may have just found this stamp stale.
    stale = quick.declined(store.home, root, key)
    answer = None if stale else stamp.answer(store.conn, store.cas.root, root, key)
    if answer is not None:
        _report_unchanged(*answer, as_json, time.perf_counter() - started)
        return

    from kiln.engine.evaluation import Build
    from kiln.engine.progress import BuildProgress
    from kiln.engine.scheduler import StepStatus

    project = _project()
    names = list(targets) or sorted(project.targets)
    for name in names:
        project.target(name)  # unknown names fail before anything runs
    with BuildProgress() as progress:
        report = Build(
            store, project, jobs=jobs, keep_going=keep_going, on_change=progress.on_change,
            allow_unpinned=allow_unpinned, on_download=progress.on_download,
        ).run(names, stamp_as=key)  # fmt: skip
    for error in report.errors:
        click.echo(f"kiln: error: {error.render()}", err=True)
    if as_json:
        emit_json(report.summary())
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


def build_for_check(store: Store, targets: list[str]) -> list[Any]:
    """Build ``targets`` for `kiln check` and return their step records;
    a failed build is an error (there is nothing sound to compare)."""
    from kiln.engine.evaluation import Build
    from kiln.engine.progress import BuildProgress

    project = _project()
    for name in targets:
        project.target(name)
    with BuildProgress() as progress:
        report = Build(store, project, on_change=progress.on_change).run(targets)
    if report.errors:
        raise report.errors[0]
    return list(report.steps)


def _report_unchanged(
    stamp: dict[str, Any], restored: list[str], as_json: bool, seconds: float
) -> None:
    """What `kiln build` says when the stamp shows nothing changed."""
    if as_json:
        emit_json(
            {
                "ok": True, "executed": 0, "cached": stamp["steps"], "failed": 0, "skipped": 0,
                "executed_keys": [], "files_hashed": 0, "seconds": round(seconds, 3),
                "build_id": None, "unchanged": True, "restored": restored,
                "targets": {
                    name: {"output": output, "digest": digest, "error": None}
                    for name, (output, digest) in stamp["targets"].items()
                },
            }
        )  # fmt: skip
        return
    from kiln.cli.entry import say_unchanged

    say_unchanged(stamp, restored, seconds)


@click.command("targets")
@json_option
def targets_command(as_json: bool) -> None:
    """List the targets of the project's kilnfile.py with their docstrings."""
    project = _project()
    rows = [
        {"name": t.name, "doc": t.doc, "where": t.where}
        for t in sorted(project.targets.values(), key=lambda t: t.name)
    ]
    if as_json:
        emit_json(rows)
        return
    width = max((len(r["name"]) for r in rows), default=0)
    for r in rows:
        first_line = r["doc"].splitlines()[0] if r["doc"] else ""
        click.echo(f"{r['name']:<{width}}  {first_line}".rstrip())


def _last_steps(
    ctx: click.Context, target: str | None, with_steps: bool = True
) -> tuple[Any, list[Any]]:
    """The store and the steps of the project's last build (of ``target``);
    ``with_steps``: skip builds answered from their stamp."""
    from kiln.engine import history

    project = _project()
    if target is not None:
        project.target(target)
    store = open_store(ctx)
    build_id = history.last_build(store, project.root, with_steps)
    return store, history.steps(store, build_id, target)


@click.command("why")
@click.argument("target", required=False)
@json_option
@click.pass_context
def why(ctx: click.Context, target: str | None, as_json: bool) -> None:
    """Say why each step of the last build ran instead of being a cache hit.

    For every step that ran (of TARGET, or of every target), names what its
    key was computed from that differs from the last time that step ran:
    an input file or upstream output, an argument, an environment variable.
    """
    from kiln.engine import history

    store, rows = _last_steps(ctx, target, with_steps=False)
    ran = [r for r in rows if r.status in ("executed", "failed")]
    report = [
        {"target": r.target, "step": r.step, "key": r.key,
         "reasons": history.explain(history.previous_run(store, r), r)}
        for r in ran
    ]  # fmt: skip
    if as_json:
        emit_json(report)
        return
    if not report:
        click.echo("nothing ran in the last build: every step was a cache hit")
    for item in report:
        click.echo(f"{item['target']}: {item['step']}")
        for reason in item["reasons"]:
            click.echo(f"  {reason}")


@click.command("show")
@click.argument("target")
@json_option
@click.pass_context
def show(ctx: click.Context, target: str, as_json: bool) -> None:
    """List TARGET's steps in the last build: keys, inputs, outputs, status."""
    from kiln.engine.values import outputs_of
    from kiln.model.action import shareable
    from kiln.model.digest import Digest

    store, rows = _last_steps(ctx, target)
    items = []
    for r in rows:
        result = r.action_result()
        platform = r.inputs.get("platform", {})
        outputs = {p: str(v.digest) for p, v in outputs_of(store, result).items()} if result else {}
        items.append(
            {
                "step": r.step,
                "key": r.key,
                "status": r.status,
                "exit_code": result.exit_code if result else None,
                "seconds": round(r.finished - r.started, 4)
                if r.started is not None and r.finished is not None
                else None,
                "argv": r.inputs.get("argv", []),
                "inputs": r.inputs.get("inputs", {}),
                "outputs": outputs,
                "stdout": str(Digest.from_proto(result.stdout_digest)) if result else None,
                "secrets": [n for n in platform.get("secrets", "").split(",") if n],
                "shareable": shareable(platform),
            }
        )
    if as_json:
        emit_json(items)
        return
    for item in items:
        click.echo(f"{item['step']}  [{item['status']}]  key {item['key']}")
        click.echo(f"  command: {' '.join(item['argv'])}")
        for path, digest in item["inputs"].items():
            click.echo(f"  in  {path}  {digest}")
        for path, digest in item["outputs"].items():
            click.echo(f"  out {path}  {digest}")
        if item["secrets"]:
            click.echo(
                f"  secrets: {', '.join(item['secrets'])} (result kept out of shared caches)"
            )


@click.command("log")
@click.argument("target")
@click.pass_context
def log(ctx: click.Context, target: str) -> None:
    """Print the stdout and stderr of TARGET's steps in the last build."""
    from kiln.model.digest import EMPTY, Digest

    store, rows = _last_steps(ctx, target)
    for r in rows:
        result = r.action_result()
        if result is None:
            click.echo(f"== {r.target}: {r.step} [{r.status}, never ran]")
            continue
        click.echo(f"== {r.target}: {r.step} [{r.status}, exit code {result.exit_code}]")
        for name, proto in (("stdout", result.stdout_digest), ("stderr", result.stderr_digest)):
            digest = Digest.from_proto(proto)
            if digest == EMPTY:
                continue
            data = store.cas.get_bytes(digest)
            click.echo(f"-- {name}")
            if data is None:  # history outlives blobs: a GC may have collected it
                click.echo(f"(not in the store any more: {digest} was collected since)")
            else:
                click.echo(data.decode(errors="replace").rstrip("\n"))


@click.command("trace")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    default="kiln-trace.json",
    show_default=True,
    help="Where to write the trace.",
)
@click.pass_context
def trace(ctx: click.Context, output: str) -> None:
    """Write the last build as a Chrome trace (open it in ui.perfetto.dev).

    One lane per worker slot; cache hits are instant events on their own lane.
    """
    import json

    from kiln.engine import history

    project = _project()
    store = open_store(ctx)
    build_id = history.last_build(store, project.root, with_steps=True)
    rows = history.steps(store, build_id)
    data = history.chrome_trace(rows, history.build_started(store, build_id))
    Path(output).write_text(json.dumps(data))
    click.echo(f"wrote {output}: {len(rows)} steps of build {build_id}")


@click.command("doctor")
@json_option
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check what this machine offers Kiln, with fixes for what is missing.

    Exits 1 if something Kiln needs is missing (warnings do not count).
    """
    from kiln.cli.doctor import FAIL, run_checks
    from kiln.store.local import default_home

    home = Path(ctx.obj.get("store") or default_home())
    checks = run_checks(home)
    if as_json:
        emit_json([asdict(c) for c in checks])
    else:
        for c in checks:
            click.echo(f"{c.status:>4}  {c.name}: {c.detail}")
            if c.fix and c.status != "ok":
                click.echo(f"      fix: {c.fix}")
    if any(c.status == FAIL for c in checks):
        sys.exit(1)
