"""`kiln clean`: removing the project's outputs (not the store's cache)."""

from __future__ import annotations

from pathlib import Path

import click

from kiln.cli.common import json_option
from kiln.cli.report import write_json
from kiln.engine import kiln_out
from kiln.engine.root import find_root
from kiln.errors import ExitCode, KilnError


@click.command("clean")
@click.argument("targets", nargs=-1, metavar="[TARGET]...")
@json_option
def clean(targets: tuple[str, ...], as_json: bool) -> None:
    """Remove TARGETS' outputs (default: all) from kiln-out/.

    Only folders Kiln placed there are removed, with its notes on them;
    anything else in kiln-out/ stays. The store keeps every result, so the
    next build puts the outputs back without running a step.
    """
    root = find_root(Path.cwd())
    for name in targets:
        if not name.isidentifier():
            raise KilnError(
                f"{name!r} is not a target name",
                hint="`kiln targets` lists the targets",
                exit_code=ExitCode.BAD_INPUT,
            )
    try:
        kiln_out.check_folder(root)
    except kiln_out.NotAFolder as e:
        raise kiln_out.refused(e, "nothing removed") from None
    chosen = list(targets) or kiln_out.marked(root)
    removed, kept, absent = [], [], []
    for name in chosen:
        outcome = kiln_out.remove(root, name)
        (removed if outcome else kept if outcome is None else absent).append(name)
    if not targets:
        kiln_out.tidy(root)
    if as_json:
        write_json({"ok": True, "project": str(root), "removed": removed, "kept": kept,
                    "absent": absent})  # fmt: skip
        return
    for name in removed:
        click.echo(f"removed {kiln_out.OUTPUT_DIR}/{name}")
    for name in kept:
        click.echo(f"kept {kiln_out.OUTPUT_DIR}/{name}: not placed there by Kiln", err=True)
    for name in absent:
        click.echo(f"no output of {name!r} in {kiln_out.OUTPUT_DIR}/")
    if not chosen:
        click.echo("nothing to remove")
