"""`kiln check`: are results reproducible (run again, or under a second engine)?"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import click

from kiln.cli.build import build_for_check
from kiln.cli.common import asdict, digest_arg, json_option, open_store, status
from kiln.cli.report import steps_word, write_json
from kiln.engine.check import check_engines, is_wasm_action, rebuild_steps
from kiln.errors import ExitCode, KilnError

if TYPE_CHECKING:
    from kiln.store import Store


@click.command("check")
@click.argument("items", nargs=-1, required=True, metavar="TARGET|KEY...")
@click.option(
    "--engine",
    type=click.Choice(["node"]),
    help="Compare wasm results with a second engine (node: Node.js's V8).",
)
@click.option(
    "--timeout",
    type=float,
    default=600.0,
    show_default=True,
    metavar="SECONDS",
    help="Wall-clock limit of each run under the second engine.",
)
@click.option(
    "-j", "--jobs", type=click.IntRange(min=1), metavar="N",
    help="Steps built, and run again, at once (default: CPU cores; under --engine node "
    "they run again one at a time).",
)  # fmt: skip
@json_option
@click.pass_context
def check(
    ctx: click.Context, items: tuple[str, ...], engine: str | None, timeout: float,
    jobs: int | None, as_json: bool,
) -> None:  # fmt: skip
    """Check that results are reproducible.

    `kiln check TARGET...` builds the targets (from the cache where it can),
    then runs every step of theirs again, ignoring and not touching the
    cache, and compares exit code, stdout, stderr and every output by
    digest. Pinned fetches are not run again.

    With --engine node, each wasm step (of TARGETs, or each action KEY as
    `kiln wasm run --json` prints it) runs again under the second engine
    with the same virtual WASI instead. Exits 1 if anything differs.
    """
    store = open_store(ctx)
    keys = [i for i in items if _looks_like_key(i)]
    targets = [i for i in items if not _looks_like_key(i)]
    if keys and engine is None:
        raise KilnError(
            "checking an action KEY needs a second engine",
            hint="add --engine node, or name a TARGET to rebuild its steps",
            exit_code=ExitCode.BAD_INPUT,
        )
    checks: list[Any] = [digest_arg(k) for k in keys]
    if targets:
        jobs = jobs or os.cpu_count() or 1
        records = build_for_check(store, targets, jobs)
        if engine is None:
            _report_rebuild(store, records, as_json, jobs)
            return
        checks += [r.key for r in records if r.result is not None and is_wasm_action(store, r.key)]
    reports = []
    for key in checks:
        with status(f"running {key} under {engine}"):
            reports.append(check_engines(store, key, engine or "node", timeout))
    if as_json:
        write_json([{**asdict(r), "identical": r.identical} for r in reports])
    else:
        for r in reports:
            if r.identical:
                click.echo(f"{r.key}: identical under wasmtime and {r.other_engine}")
                continue
            click.echo(f"{r.key}: DIFFERS between wasmtime and {r.other_engine}")
            for d in r.differences:
                click.echo(f"  {d.what}: wasmtime {d.reference}, {r.other_engine} {d.other}")
    if not all(r.identical for r in reports):
        sys.exit(ExitCode.FAILED)


def _looks_like_key(text: str) -> bool:
    digest_hash, sep, size = text.partition("/")
    return bool(sep) and len(digest_hash) == 64 and size.isdigit()


def _report_rebuild(store: Store, records: list[Any], as_json: bool, jobs: int) -> None:
    with status("running the steps again") as line:
        on_step = getattr(line, "update", None)
        checks = rebuild_steps(store, records, lambda d: on_step and on_step(f"running {d}"), jobs)
    differing = [c for c in checks if not c.identical]
    if as_json:
        write_json([{**asdict(c), "identical": c.identical} for c in checks])
    else:
        for c in differing:
            click.echo(f"{c.target}: {c.step}: DIFFERS when run again (key {c.key})")
            for d in c.differences:
                click.echo(f"  {d.what}: first {d.reference}, again {d.other}")
        ran = sum(1 for c in checks if not c.skipped)
        verdict = f"{len(differing)} differ" if differing else "all identical"
        click.echo(f"kiln: {ran} {steps_word(ran)} run again: {verdict}", err=True)
    if differing:
        sys.exit(ExitCode.FAILED)
