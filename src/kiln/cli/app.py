"""The ``kiln`` command: parses arguments and calls the Python API.

Exit codes (see ``kiln.errors.ExitCode``): 0 success, 1 the command found a
problem, 2 bad usage or input, 3 not found in the store, 4 store unusable.
User errors print one line (and a hint), never a traceback.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from kiln import __version__
from kiln.cli import build, check, fetch, server, store, wasm
from kiln.errors import ExitCode, KilnError

if TYPE_CHECKING:
    pass




@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit codes: 0 ok, 1 problem found, 2 bad usage or input, "
    "3 not in the store, 4 store unusable.",
)
@click.version_option(__version__, "--version", "-V", prog_name="kiln")
@click.option(
    "--store",
    type=click.Path(file_okay=False),
    envvar="KILN_HOME",
    help="Store folder (default: $KILN_HOME, else $XDG_CACHE_HOME/kiln, else ~/.cache/kiln).",
)
@click.pass_context
def cli(ctx: click.Context, store: str | None) -> None:
    """Kiln: every build step a pure, memoized, sandboxed function.

    The store holds content by SHA-256 digest, written as <hex>/<size>.
    """
    ctx.ensure_object(dict)
    ctx.obj["store"] = store


for command in (
    store.store, store.root, store.gc_command, wasm.wasm, check.check,
    build.build, build.targets_command, build.why, build.show, build.log, build.trace,
    build.doctor, fetch.prefetch, server.server,
):  # fmt: skip
    cli.add_command(command)


def run(argv: list[str] | None, stamp_checked: bool = False) -> int:
    """Run one command; its exit code. ``stamp_checked``: the caller has
    just found that the build stamp of this ``kiln build`` cannot answer."""
    try:
        cli.main(
            args=argv, prog_name="kiln", standalone_mode=False,
            obj={"stamp_checked": stamp_checked},
        )  # fmt: skip
    except KilnError as e:
        click.echo(f"kiln: error: {e.render()}", err=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return ExitCode.BAD_INPUT
    except (click.Abort, KeyboardInterrupt):
        click.echo("kiln: interrupted", err=True)
        return 130
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        click.echo(f"kiln: error: {where}{e.strerror or e}", err=True)
        return ExitCode.FAILED
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else ExitCode.FAILED
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
