"""`kiln server start|stop|status|install-client`: the resident server
(``kiln.server.daemon``) and its native client."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from kiln.cli.common import json_option, parse_age
from kiln.cli.report import write_json
from kiln.errors import ExitCode
from kiln.server import daemon as resident
from kiln.server.client import ask, place
from kiln.store import db


def _home(ctx: click.Context) -> Path:
    store = ctx.obj.get("store")
    return Path(store) if store else db.default_home()


@click.group()
def server() -> None:
    """A resident server that makes builds start warm.

    While it runs, `kiln build` and `kiln check` on its store are run by a
    fresh process forked from it, with Kiln imported and the store's
    compiled WebAssembly modules (clang...) already loaded. Set
    KILN_SERVER=off to run a command without it. `kiln server
    install-client` installs a native `kiln` that reaches it faster.
    """


@server.command("start")
@click.option(
    "--idle",
    default="3h",
    show_default=True,
    help="Exit after this long with nothing to do (e.g. 30m, 8h).",
)
@json_option
@click.pass_context
def server_start(ctx: click.Context, idle: str, as_json: bool) -> None:
    """Start the server for the store (nothing to do if it runs)."""
    status = resident.start(_home(ctx), parse_age(idle))
    _show(status, as_json)


@server.command("stop")
@json_option
@click.pass_context
def server_stop(ctx: click.Context, as_json: bool) -> None:
    """Stop the server once the commands it runs have finished."""
    answer = resident.stop(_home(ctx))
    if as_json:
        write_json({"stopped": answer is not None})
    elif answer is None:
        click.echo("kiln: no server runs for this store", err=True)
    else:
        click.echo("kiln server: stopped")


@server.command("status")
@json_option
@click.pass_context
def server_status(ctx: click.Context, as_json: bool) -> None:
    """Show the server of the store; exit code 3 when none runs."""
    status = ask(_home(ctx), {"op": "status"})
    if status is None:
        if as_json:
            write_json({"server": None})
        else:
            click.echo("kiln: no server runs for this store", err=True)
        raise SystemExit(ExitCode.NOT_FOUND)
    _show(status, as_json)


@server.command("install-client")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@json_option
@click.pass_context
def server_install_client(ctx: click.Context, folder: Path, as_json: bool) -> None:
    """Install the native client `kiln` in FOLDER; put FOLDER first on PATH.

    It hands `kiln build`, `kiln check` and `kiln gocacheprog` to this
    store's server in about 2 ms, where Python takes tens of milliseconds
    to start; it runs every other command, and all of them when no server
    runs (or KILN_SERVER=off, or another store is named), with this
    installation's Python. It refuses to replace a FOLDER/kiln or
    FOLDER/kiln.conf that it did not write.
    """
    from kiln.server.native_client import default_fallback, install_client

    where = folder.absolute()
    listening = place(_home(ctx))
    fallback = default_fallback()
    made = install_client(where, Path(listening.home), fallback)
    if as_json:
        write_json({
            "folder": str(where), "files": [str(p) for p in made], "store": listening.home,
            "socket": listening.socket, "fallback": fallback,
        })  # fmt: skip
        return
    click.echo(f"installed the native kiln client in {where} (for the store {listening.home})")
    click.echo(f'  use it:   export PATH="{where}:$PATH"')
    click.echo("  then `kiln build`, `kiln check` and `kiln gocacheprog` reach the server")
    click.echo("  (kiln server start) in about 2 ms; the rest, and all without a server, run")
    click.echo(f"  {' '.join(fallback)}")


def _show(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        write_json(status)
        return
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status["started"]))
    click.echo(f"kiln server: pid {status['pid']}, store {status['store']}, up since {since}")
    click.echo(
        f"  {status['served']} commands served, {status['commands_running']} running; "
        f"exits after {status['idle_timeout_s']:g} s idle"
    )
    for name in status["modules"]:
        click.echo(f"  module loaded: {name}")
