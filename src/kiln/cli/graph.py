"""``kiln graph`` and ``kiln inputs``: the step graph of a target's last
build (``kiln.engine.step_graph``), and what it read that no step made."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from kiln.cli.build import last_build
from kiln.cli.common import json_option
from kiln.cli.report import write_json
from kiln.engine import history
from kiln.engine.step_graph import StepGraph, dot, step_graph
from kiln.engine.values import outputs_of
from kiln.errors import KilnError
from kiln.exec.specs import FetchSpec

if TYPE_CHECKING:
    from kiln.engine.loader import Project
    from kiln.store.local import Store


def _graph(ctx: click.Context, target: str | None) -> tuple[Project, Store, int, StepGraph]:
    project, store, build_id = last_build(ctx, target)
    rows = history.steps(store, build_id)
    awaits = history.awaits(store, build_id)
    wanted = {target} if target else None
    found = step_graph(store, rows, wanted, awaits, lambda p: (project.root / p).is_file())
    return project, store, build_id, found


@click.command("graph")
@click.argument("target", required=False)
@json_option
@click.pass_context
def graph(ctx: click.Context, target: str | None, as_json: bool) -> None:
    """Print the step graph of TARGET's last build as DOT (or JSON).

    A node per step of TARGET, of the targets it awaited, and of every step
    these need, whatever target asked for it (without TARGET: every step of
    the last build), framed by target; an arrow from a step to each step
    that read its outputs (matched by digest), a dashed one from a target
    to each target that awaited it (a rule may read a step's output to
    decide which steps to run).
    Draw it with e.g. `kiln graph TARGET | dot -Tsvg > graph.svg`.
    Exits 3 if TARGET has not been built with this store.
    """
    _, _, build_id, found = _graph(ctx, target)
    if as_json:
        nodes = [
            {"key": n.key, "label": n.label, "target": n.target, "step": n.step,
             "status": n.status, "fetch": n.fetch}
            for n in found.nodes.values()
        ]  # fmt: skip
        edges = [{"from": e.source, "to": e.to, "inputs": e.paths} for e in found.edges]
        write_json(
            {"build": build_id, "target": target, "nodes": nodes, "edges": edges,
             "awaits": found.awaits}
        )  # fmt: skip
        return
    title = f"kiln: {target or 'all targets'} (build {build_id})"
    click.echo(dot(found, title), nl=False)


@click.command("inputs")
@click.argument("target")
@json_option
@click.pass_context
def inputs(ctx: click.Context, target: str, as_json: bool) -> None:
    """List the source files and fetched inputs TARGET's last build read.

    Those of the steps of TARGET and of the targets it awaited, and of
    every step they need, with digests:
    project files (kind "source"), values a rule placed at a path that is
    no project file ("other"), and what fetch steps downloaded ("fetch",
    with its pin and URLs). Exits 3 if TARGET has not been built with this
    store.
    """
    project, store, _, found = _graph(ctx, target)
    rows = [
        {"kind": "source" if (project.root / i.path).is_file() else "other", "path": i.path,
         "digest": i.digest, "read_by": [found.nodes[k].label for k in i.read_by]}
        for i in found.inputs
    ]  # fmt: skip
    rows += _fetched(store, found)
    rows.sort(key=lambda r: (r["kind"], r["path"]))
    if as_json:
        write_json(rows)
        return
    for r in rows:
        extra = f"  pinned {r['pin']}  from {' '.join(r['urls'])}" if r["kind"] == "fetch" else ""
        click.echo(f"{r['kind']:<6}  {r['path']}  {r['digest']}{extra}")


def _fetched(store: Store, found: StepGraph) -> list[dict[str, Any]]:
    """What the graph's fetch steps downloaded, and which steps read it."""
    rows = []
    for node in found.nodes.values():
        if not node.fetch:
            continue
        record = found.rows[node.key]
        result = record.action_result()
        try:
            made = outputs_of(store, result) if result is not None else {}
        except KilnError:  # its tree was collected since
            made = {}
        spec = FetchSpec.from_argv(record.inputs.get("argv", []))
        readers = [found.nodes[e.to].label for e in found.edges if e.source == node.key]
        rows.append(
            {"kind": "fetch", "path": spec.name,
             "digest": str(made[spec.name].digest) if spec.name in made else None,
             "pin": spec.pin, "urls": list(spec.sources), "read_by": readers}
        )  # fmt: skip
    return rows
