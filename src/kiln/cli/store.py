"""`kiln store`: put content into the store, get it out, check it."""

from __future__ import annotations

import sys

import click

from kiln.cli.common import HashingProgress, asdict, digest_arg, json_option, open_store
from kiln.cli.report import write_json
from kiln.errors import ExitCode

# ------------------------------------------------------------------ store


@click.group()
def store() -> None:
    """Put content into the store, get it out, check it."""


@store.command("put")
@click.argument("path", type=click.Path())
@click.option("--root", "root_name", metavar="NAME", help="Also keep it from GC as root NAME.")
@json_option
@click.pass_context
def store_put(ctx: click.Context, path: str, root_name: str | None, as_json: bool) -> None:
    """Store the folder (or file) PATH and print its digest.

    A folder becomes a Merkle tree of REAPI Directory messages; its digest is
    the root Directory's. Unchanged files are recognised by their stat data
    and not read again.
    """
    with HashingProgress() as progress:
        result = open_store(ctx).put(path, root=root_name, progress=progress)
    if as_json:
        write_json(
            {
                "digest": str(result.digest),
                "hash": result.digest.hash,
                "size": result.digest.size,
                "kind": result.kind,
                "files_hashed": result.files_hashed,
                "dirs_rebuilt": result.dirs_rebuilt,
                "root": root_name,
            }
        )
    else:
        click.echo(str(result.digest))


@store.command("get")
@click.argument("digest", type=str)
@click.argument("dest", type=click.Path())
@click.option("--blob", is_flag=True, help="DIGEST is a file's blob, not a tree.")
@click.option("--copy", is_flag=True, help="Copy files instead of hard-linking store files.")
@json_option
@click.pass_context
def store_get(
    ctx: click.Context, digest: str, dest: str, blob: bool, copy: bool, as_json: bool
) -> None:
    """Write the tree DIGEST into the new or empty folder DEST.

    Files are hard links to the store's read-only blobs when possible (use
    --copy for files you want to edit).
    """
    d = digest_arg(digest)
    m = open_store(ctx).get(d, dest, blob=blob, copy=copy)
    if as_json:
        write_json({"digest": str(d), "dest": dest, "linked": m.linked, "copied": m.copied})


@store.command("verify")
@json_option
@click.pass_context
def store_verify(ctx: click.Context, as_json: bool) -> None:
    """Re-hash every blob; move corrupt ones to quarantine/ and exit 1."""
    report = open_store(ctx).verify()
    if as_json:
        write_json({"ok": report.ok, **asdict(report)})
    else:
        for c in report.corrupt:
            click.echo(
                f"corrupt: blob {c.expected} hashes to {c.actual}; moved to {c.quarantined_to}",
                err=True,
            )
        state = "ok" if report.ok else f"{len(report.corrupt)} corrupt"
        click.echo(f"{report.checked} blobs, {report.bytes} bytes checked: {state}")
    if not report.ok:
        sys.exit(ExitCode.FAILED)


@store.command("stats")
@json_option
@click.pass_context
def store_stats(ctx: click.Context, as_json: bool) -> None:
    """Show what the store holds."""
    stats = open_store(ctx).stats()
    if as_json:
        write_json(asdict(stats))
        return
    # (start-up: rich is not for kiln store put)
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None)
    for name, value in asdict(stats).items():
        table.add_row(name.replace("_", " "), str(value))
    Console().print(table)


@store.command("diff")
@click.argument("old", type=str)
@click.argument("new", type=str)
@json_option
@click.pass_context
def store_diff(ctx: click.Context, old: str, new: str, as_json: bool) -> None:
    """List paths added (+), removed (-) and changed (~) from tree OLD to NEW."""
    from kiln.model.tree import diff  # (start-up: protobuf, not for kiln store put)

    result = diff(open_store(ctx).cas, digest_arg(old), digest_arg(new))
    if as_json:
        write_json(asdict(result))
        return
    for mark, paths in (("+", result.added), ("-", result.removed), ("~", result.changed)):
        for p in paths:
            click.echo(f"{mark} {p}")
