"""``kiln gocacheprog``: Go's build cache (``GOCACHEPROG``) in Kiln's store."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from kiln.cli.common import json_option
from kiln.cli.report import write_json
from kiln.errors import ExitCode, KilnError
from kiln.store.db import default_home

NAMESPACE_HELP = (
    "Which entries this go command may read and write (default: $KILN_GO_NAMESPACE, else "
    "'default'). Entries never cross namespaces: give each trust domain its own."
)


@click.command("gocacheprog")
@click.option(
    "--namespace", "-n", envvar="KILN_GO_NAMESPACE", default="default", show_default=False,
    help=NAMESPACE_HELP,
)  # fmt: skip
@click.option("--stats", is_flag=True, help="Print the namespace's entries, hits and misses.")
@click.option("--zero-stats", is_flag=True, help="Reset the namespace's hit and miss counts.")
@click.option("--clear", is_flag=True, help="Drop every entry of the namespace.")
@json_option
@click.pass_context
def gocacheprog(
    ctx: click.Context, namespace: str, stats: bool, zero_stats: bool, clear: bool, as_json: bool
) -> None:
    """Serve Go's build cache from the store: set GOCACHEPROG="kiln gocacheprog".

    The go command starts it and sends it its cache requests (JSON on stdin
    and stdout). Outputs are kept in the store's CAS, found again by Go's
    action ID within one namespace, checked against their digest before Go
    reads them, and collected by `kiln gc` like other results. With
    --stats, --zero-stats or --clear it manages the namespace instead.
    """
    from kiln.gocache.entries import GoCache
    from kiln.gocache.protocol import ProtocolError
    from kiln.gocache.serve_fast import serve_with_remote
    from kiln.gocache.session import load_stats
    from kiln.gocache.session import zero_stats as reset
    from kiln.store.local import Store

    home = Path(ctx.obj.get("store") or default_home())
    with Store(home) as store:
        cache = GoCache(store, namespace)
        if not (stats or zero_stats or clear):
            try:
                serve_with_remote(store, namespace)
            except ProtocolError as e:
                raise KilnError(f"{e}; ending the session", exit_code=ExitCode.FAILED) from None
            return
        dropped = cache.clear() if clear else 0
        if zero_stats:
            reset(cache)
        summary = {"namespace": namespace, "entries": cache.count(), **asdict(load_stats(cache))}
        if clear:
            summary["cleared"] = dropped
    if as_json:
        write_json(summary)
        return
    if clear:
        click.echo(f"cleared {dropped} entries of Go cache namespace {namespace!r}")
    if stats or zero_stats:
        click.echo(
            f"namespace {namespace}: {summary['entries']} entries; {summary['hits']} hits, "
            f"{summary['misses']} misses, {summary['puts']} puts, {summary['corrupt']} corrupt "
            f"bodies rebuilt, {summary['errors']} errors"
        )
