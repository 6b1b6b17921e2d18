"""`kiln store`, `kiln root` and `kiln gc`: the store's content, its named roots, its garbage."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from kiln.cli.common import (
    HashingProgress,
    asdict,
    digest_arg,
    json_option,
    open_store,
    parse_age,
    parse_size,
)
from kiln.cli.report import write_json
from kiln.errors import ExitCode, KilnError

if TYPE_CHECKING:
    pass


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
    from kiln.model.tree import diff

    result = diff(open_store(ctx).cas, digest_arg(old), digest_arg(new))
    if as_json:
        write_json(asdict(result))
        return
    for mark, paths in (("+", result.added), ("-", result.removed), ("~", result.changed)):
        for p in paths:
            click.echo(f"{mark} {p}")


# ------------------------------------------------------------------ roots


@click.group()
def root() -> None:
    """Named GC roots: what `kiln gc` never deletes."""


@root.command("add")
@click.argument("name")
@click.argument("digest")
@click.option("--kind", type=click.Choice(["tree", "blob", "action"]), default="tree")
@click.pass_context
def root_add(ctx: click.Context, name: str, digest: str, kind: str) -> None:
    """Keep DIGEST (a tree, a blob or an action key) from GC as root NAME."""
    d = digest_arg(digest)
    s = open_store(ctx)
    if kind != "action" and not s.cas.has(d):
        from kiln.errors import digest_not_found

        raise digest_not_found(d)
    s.add_root(name, d, kind)


@root.command("rm")
@click.argument("name")
@click.pass_context
def root_rm(ctx: click.Context, name: str) -> None:
    """Remove root NAME (its content becomes collectable)."""
    if not open_store(ctx).remove_root(name):
        raise KilnError(f"no root named {name!r}", exit_code=ExitCode.NOT_FOUND)


@root.command("list")
@json_option
@click.pass_context
def root_list(ctx: click.Context, as_json: bool) -> None:
    """List the named roots."""
    roots = open_store(ctx).roots()
    if as_json:
        write_json([{"name": n, "kind": k, "digest": str(d), "created": c} for n, k, d, c in roots])
        return
    for n, k, d, _ in roots:
        click.echo(f"{n}\t{k}\t{d}")


# --------------------------------------------------------------------- gc


@click.command("gc")
@click.option(
    "--max-size",
    type=str,
    metavar="SIZE",
    help="Shrink the store to this size (e.g. 10G), LRU first.",
)
@click.option(
    "--max-age", type=str, metavar="AGE", help="Delete what was not used for this long (e.g. 30d)."
)
@click.option("--dry-run", is_flag=True, help="Report what would be deleted; delete nothing.")
@click.option(
    "--timeout",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Seconds to wait for in-flight writes to end.",
)
@json_option
@click.pass_context
def gc_command(
    ctx: click.Context,
    max_size: str | None,
    max_age: str | None,
    dry_run: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Delete blobs and cache entries that no root reaches.

    Without --max-size or --max-age, everything unreachable goes. Content
    in use by a running build (its session's temporary roots) is never
    deleted, and GC waits for in-flight writes to finish. Sandbox folders
    and cgroups left by killed builds go too.
    """
    from kiln.exec.native import reap_leftovers
    from kiln.store import GcPolicy

    policy = GcPolicy(
        max_size=parse_size(max_size) if max_size else None,
        max_age=parse_age(max_age) if max_age else None,
        dry_run=dry_run,
    )
    store = open_store(ctx)
    if not dry_run:
        reap_leftovers(store.home)
    report = store.gc(policy, timeout=timeout)
    if as_json:
        write_json(asdict(report))
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"{verb} {report.deleted_blobs} blobs ({report.deleted_bytes} bytes) and "
        f"{report.evicted_actions} cache entries; kept {report.kept_blobs} blobs "
        f"({report.kept_bytes} bytes) and {report.kept_actions} cache entries"
    )
    for name in report.dangling_roots:
        click.echo(f"warning: root {name!r} names content missing from the store", err=True)


# The build commands live in their own module; importing it registers them.
