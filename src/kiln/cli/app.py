"""The ``kiln`` command: parses arguments and calls the Python API.

Exit codes (see ``kiln.errors.ExitCode``): 0 success, 1 the command found a
problem, 2 bad usage or input, 3 not found in the store, 4 store unusable.
User errors print one line (and a hint), never a traceback.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

import click

from kiln import __version__
from kiln.errors import ExitCode, KilnError

if TYPE_CHECKING:
    pass




# Each command's module and function; a module is imported only when one of
# its commands runs (or `--help` lists them), so `kiln store put` does not
# load the build engine.
COMMANDS = {
    "build": ("kiln.cli.build", "build"),
    "check": ("kiln.cli.check", "check"),
    "doctor": ("kiln.cli.doctor", "doctor"),
    "gc": ("kiln.cli.store", "gc_command"),
    "log": ("kiln.cli.build", "log"),
    "prefetch": ("kiln.cli.fetch", "prefetch"),
    "root": ("kiln.cli.store", "root"),
    "server": ("kiln.cli.server", "server"),
    "show": ("kiln.cli.build", "show"),
    "store": ("kiln.cli.store", "store"),
    "targets": ("kiln.cli.build", "targets_command"),
    "trace": ("kiln.cli.build", "trace"),
    "wasm": ("kiln.cli.wasm", "wasm"),
    "why": ("kiln.cli.build", "why"),
}


class _Commands(click.Group):
    """The command group, loading each command from ``COMMANDS`` on demand."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        where = COMMANDS.get(name)
        if where is None:
            return None
        module, function = where
        return getattr(importlib.import_module(module), function)


@click.group(
    cls=_Commands,
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
