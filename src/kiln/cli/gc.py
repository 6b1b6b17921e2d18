"""`kiln gc` and `kiln root`: deleting what no root reaches, and the named roots."""

from __future__ import annotations

import click

from kiln.cli.common import asdict, digest_arg, json_option, open_store, parse_age, parse_size
from kiln.cli.report import write_json
from kiln.engine import retention
from kiln.errors import ExitCode, KilnError, digest_not_found
from kiln.exec.native import reap_leftovers
from kiln.store import GcPolicy

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
    and cgroups left by killed builds go too (a running build's stay).

    The roots of projects that are gone (or no longer hold a kilnfile.py)
    are dropped. (A build drops those of targets its kilnfile.py no longer
    defines, with the kiln-out/TARGET folders Kiln placed for them: gc never
    runs build files.)
    """
    policy = GcPolicy(
        max_size=parse_size(max_size) if max_size else None,
        max_age=parse_age(max_age) if max_age else None,
        dry_run=dry_run,
    )
    store = open_store(ctx)
    pruned = None
    if not dry_run:
        reap_leftovers(store.home)
        pruned = retention.prune(store.conn)
    report = store.gc(policy, timeout=timeout)
    if as_json:
        history = pruned._asdict() if pruned is not None else None
        write_json({**asdict(report), "history": history})
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"{verb} {report.deleted_blobs} blobs ({report.deleted_bytes} bytes) and "
        f"{report.evicted_actions} cache entries; kept {report.kept_blobs} blobs "
        f"({report.kept_bytes} bytes) and {report.kept_actions} cache entries"
    )
    if pruned is not None and (pruned.builds or pruned.source_files or pruned.roots):
        gone = f", {pruned.projects} of projects no longer there" if pruned.projects else ""
        gone += f" (and {pruned.roots} roots of their targets)" if pruned.roots else ""
        click.echo(
            f"forgot {pruned.builds} old builds ({pruned.steps} steps) and "
            f"{pruned.source_files} stale source records{gone}"
        )
    for name in report.dangling_roots:
        click.echo(f"warning: root {name!r} names content missing from the store", err=True)
