"""The ``kiln`` commands about builds: ``build``, ``targets``, ``why``,
``show``, ``log`` and ``trace``. They parse arguments and call
``kiln.engine``; registered on the main group by ``kiln.cli.app``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kiln import api
from kiln.api import BuildReport, BuildRequest
from kiln.cli.build_options import BUILD_OPTIONS, parse_setting
from kiln.cli.common import json_option, open_store
from kiln.cli.report import show_report, write_json
from kiln.engine import history
from kiln.engine.loader import Project, load
from kiln.engine.progress import BuildProgress
from kiln.engine.root import find_root
from kiln.engine.values import outputs_of
from kiln.exec import interrupt
from kiln.model.action import shareable
from kiln.model.digest import EMPTY, Digest

if TYPE_CHECKING:
    from kiln.store import Store


def _project() -> Project:
    return load(find_root(Path.cwd()))


def _build_options(command: Callable[..., None]) -> Callable[..., None]:
    """The click options of ``kiln build``, from its one table of options."""
    for option in reversed(BUILD_OPTIONS):
        if option.takes_count:
            kind: dict[str, Any] = {"type": click.IntRange(min=1)}
        elif option.repeatable:
            kind = {"metavar": option.metavar, "multiple": True, "callback": _settings}
        elif option.metavar:
            kind = {"metavar": option.metavar}
        else:
            kind = {"is_flag": True}
        command = click.option(*option.flags, option.field, help=option.help, **kind)(command)
    return command


def _settings(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[tuple[str, str], ...]:
    try:
        return tuple(parse_setting(v) for v in values)
    except ValueError as e:
        raise click.BadParameter(f"{e}; write -D NAME=VALUE", ctx, param) from None


@click.command("build")
@click.argument("targets", nargs=-1)
@_build_options
@click.option("-v", "--verbose", is_flag=True, help="Show each step's command as it starts.")
@click.option(
    "--watch", is_flag=True,
    help="After the build, build again whenever a file of the project changes, until Ctrl-C.",
)  # fmt: skip
@click.pass_context
def build(
    ctx: click.Context,
    targets: tuple[str, ...],
    verbose: bool,
    watch: bool,
    jobs: int | None,
    keep_going: bool,
    allow_unpinned: bool,
    remote_cache: str | None,
    remote_exec: str | None,
    remote_fallback: bool,
    settings: tuple[tuple[str, str], ...],
    as_json: bool,
) -> None:
    """Build TARGETS (default: every target) of the project's kilnfile.py.

    Each target's value lands, read-only, in kiln-out/TARGET/ under the
    project root and is kept from garbage collection. Steps whose result is
    in the store do not run again. What a step that ran wrote to stderr
    (warnings) is shown after its line. Exits 1 if a step or target failed,
    130 if interrupted (Ctrl-C stops the running steps; a second one quits
    without waiting for them).

    With --watch, builds again after each change in the project (a failed
    build too), until Ctrl-C (exit 130) or SIGTERM (exit 143); with --json,
    one report per build, each on one line.
    """
    request = BuildRequest(
        targets, store=ctx.obj.get("store"), jobs=jobs, keep_going=keep_going,
        allow_unpinned=allow_unpinned, stamp_checked=ctx.obj.get("stamp_checked", False),
        remote_cache=remote_cache, remote_exec=remote_exec, remote_fallback=remote_fallback,
        settings=settings,
    )  # fmt: skip
    if watch:  # (--watch is not in the table of options: the fast path never answers it)
        from kiln.cli.watch import watch_builds

        def once(request: BuildRequest) -> None:
            _build_and_show(request, verbose, as_json, one_line=True)

        sys.exit(watch_builds(request, once, as_json))
    report = _build_and_show(request, verbose, as_json)
    if report.errors:
        sys.exit(report.exit_code)


def _build_and_show(
    request: BuildRequest, verbose: bool, as_json: bool, one_line: bool = False
) -> BuildReport:
    """One build, shown as `kiln build` shows it: its progress, then its report."""
    with BuildProgress(verbose=verbose, json=as_json) as progress:
        report = _build(request, progress)
    show_report(report, as_json, progress.json_fields(), one_line=one_line)
    return report


def _build(
    request: BuildRequest, progress: BuildProgress, store: Store | None = None
) -> BuildReport:
    """``kiln.api.build`` shown by ``progress``; Ctrl-C stops its steps."""
    with interrupt.first_ctrl_c_stops(progress.interrupted):
        return api.build(request, progress, store=store)


def build_with_progress(request: BuildRequest, store: Store | None = None) -> BuildReport:
    """``kiln.api.build`` with the build's progress shown on stderr."""
    with BuildProgress() as progress:
        return _build(request, progress, store)


def build_for_check(store: Store, targets: list[str], jobs: int | None = None) -> list[Any]:
    """Build ``targets`` for `kiln check`, ``jobs`` steps at a time (never
    answered from the stamp: it needs the steps) and return their step
    records; a failed build is an error (there is nothing sound to compare)."""
    request = BuildRequest(targets, store=store.home, from_stamp=False, jobs=jobs)
    report = build_with_progress(request, store)
    if report.errors:
        raise report.errors[0]
    return list(report.steps)


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
        write_json(rows)
        return
    width = max((len(r["name"]) for r in rows), default=0)
    for r in rows:
        first_line = r["doc"].splitlines()[0] if r["doc"] else ""
        click.echo(f"{r['name']:<{width}}  {first_line}".rstrip())


def last_build(
    ctx: click.Context, target: str | None, with_steps: bool = True
) -> tuple[Project, Store, int]:
    """The project, the store and the id of the project's last build, or of
    the last build that included ``target``; ``with_steps``: skip builds
    answered from their stamp."""
    project = _project()
    store = open_store(ctx)
    if target is None:
        return project, store, history.last_build(store, project.root, with_steps)
    project.target(target)
    return project, store, history.last_build_of(store, project.root, target, with_steps)


def _last_steps(
    ctx: click.Context, target: str | None, with_steps: bool = True
) -> tuple[Store, int, list[Any]]:
    """The store, the id and the steps (of ``target``) of ``last_build``."""
    _, store, build_id = last_build(ctx, target, with_steps)
    return store, build_id, history.steps(store, build_id, target)


def _no_steps(target: str, build_id: int) -> None:
    click.echo(f"kiln: {target} requested no steps in its last build (build {build_id})", err=True)


@click.command("why")
@click.argument("target", required=False)
@json_option
@click.pass_context
def why(ctx: click.Context, target: str | None, as_json: bool) -> None:
    """Say why each step of the last build ran instead of being a cache hit.

    For every step that ran (of TARGET, or of every target), names what its
    key was computed from that differs from the last time that step ran:
    an input file or upstream output, an argument, an environment variable.
    First, why the build file was evaluated at all (what the last stamp saw
    that differs: a source, a setting, an environment variable or host
    file the build file read) and why no stamp was filed, if so.
    With TARGET: in the last build that included TARGET, even if later
    builds did not; exits 3 if TARGET has not been built with this store.
    """
    store, build_id, rows = _last_steps(ctx, target, with_steps=False)
    ran = [r for r in rows if r.status in ("executed", "remote-executed", "failed")]
    report = [
        {"target": r.target, "step": r.step, "key": r.key,
         "reasons": history.explain(history.previous_run(store, r), r),
         "calls_ran": history.calls_ran(r)}
        for r in ran
    ]  # fmt: skip
    if as_json:
        write_json(report)
        return
    evaluated = history.evaluation(store, build_id)
    if evaluated.get("because"):
        click.echo(f"the build file was evaluated because {evaluated['because']}")
    if evaluated.get("not_stamped"):
        click.echo(f"no stamp was filed (the next build evaluates again): "
                   f"{evaluated['not_stamped']}")  # fmt: skip
    if not report:
        which = f"the last build of {target}" if target else "the last build"
        click.echo(f"nothing ran in {which} (build {build_id}): every step was a cache hit")
    for item in report:
        click.echo(f"{item['target']}: {item['step']}")
        for reason in item["reasons"]:
            click.echo(f"  {reason}")
        if item["calls_ran"]:
            count = len(item["calls_ran"])
            click.echo(f"  inside it, {count} memoized call(s) ran (no cached result for "
                       "their module, export, input and limits):")  # fmt: skip
            for call in item["calls_ran"][:SHOWN_CALLS]:
                click.echo(f"    {call['export']} of {call['module'][:12]} on input "
                           f"{call['input'][:12]}")  # fmt: skip


@click.command("show")
@click.argument("target")
@json_option
@click.pass_context
def show(ctx: click.Context, target: str, as_json: bool) -> None:
    """List TARGET's steps in its last build: keys, inputs, outputs, status.

    That is the last build that included TARGET, even if later builds did
    not; exits 3 if TARGET has not been built with this store.
    """
    from kiln.exec.wasm_calls import call_counts, calls_of  # (start-up: only `kiln show`)

    store, build_id, rows = _last_steps(ctx, target)
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
                "origin": _origin(r.status, result),
                "calls": calls_of(result) if result else [],
                "call_counts": call_counts(result) if result else None,
                "requested_by": r.inputs.get("requested_by"),
            }
        )
    if as_json:
        write_json(items)
        return
    if not items:
        _no_steps(target, build_id)
    names = {item["key"]: item["step"] for item in items}
    for item in items:
        click.echo(f"{item['step']}  [{item['status']}]  key {item['key']}")
        if item["requested_by"]:
            by = item["requested_by"]
            click.echo(f"  requested by: {names.get(by, 'step ' + by)} (while it ran)")
        if item["origin"]:
            click.echo(f"  result from: {item['origin']}")
        click.echo(f"  command: {' '.join(item['argv'])}")
        for path, digest in item["inputs"].items():
            click.echo(f"  in  {path}  {digest}")
        for path, digest in item["outputs"].items():
            click.echo(f"  out {path}  {digest}")
        if item["secrets"]:
            click.echo(
                f"  secrets: {', '.join(item['secrets'])} (result kept out of shared caches)"
            )
        _echo_calls(item["calls"], item["call_counts"])


SHOWN_CALLS = 20  # `kiln show` lists this many of a step's calls, then counts the rest


def _echo_calls(calls: list[dict[str, Any]], counts: dict[str, int] | None) -> None:
    """A step's memoized calls, as ``kiln show`` lists them."""
    if not counts or not counts["total"]:
        return
    total, ran = counts["total"], counts["ran"]
    click.echo(f"  memoized calls: {total}, {ran} ran, {total - ran} from the cache "
               "(when the step ran)")  # fmt: skip
    for call in calls[:SHOWN_CALLS]:
        indent = "  " * call["depth"]
        how = f"ran in {call['seconds']:.4f} s" if call["ran"] else "cached"
        outcome = f"{how}, status {call['status']}, fuel {call['fuel']}"
        click.echo(f"    {indent}{call['export']} of {call['module'][:12]} on input "
                   f"{call['input'][:12]}: {outcome}")  # fmt: skip
    if total > SHOWN_CALLS:
        click.echo(f"    ... and {total - SHOWN_CALLS} more (--json lists the first "
                   f"{len(calls)})")  # fmt: skip


def _origin(status: str, result: Any) -> str | None:
    """Where a step's result came from, when not from this machine."""
    worker = result.execution_metadata.worker if result is not None else ""
    if status == "remote-cached":
        return f"the remote cache (produced by {worker or 'an unnamed worker'})"
    if status == "remote-executed":
        return f"remote worker {worker or '(unnamed)'}"
    return None


@click.command("log")
@click.argument("target")
@click.pass_context
def log(ctx: click.Context, target: str) -> None:
    """Print the stdout and stderr of TARGET's steps in its last build.

    That is the last build that included TARGET, even if later builds did
    not; exits 3 if TARGET has not been built with this store.
    """
    store, build_id, rows = _last_steps(ctx, target)
    if not rows:
        _no_steps(target, build_id)
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
    project = _project()
    store = open_store(ctx)
    build_id = history.last_build(store, project.root, with_steps=True)
    rows = history.steps(store, build_id)
    data = history.chrome_trace(rows, history.build_started(store, build_id))
    Path(output).write_text(json.dumps(data))
    click.echo(f"wrote {output}: {len(rows)} steps of build {build_id}")
