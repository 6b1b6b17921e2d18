"""The ``kiln`` command: parses arguments and calls the Python API.

Exit codes (see ``kiln.errors.ExitCode``): 0 success, 1 the command found a
problem, 2 bad usage or input, 3 not found in the store, 4 store unusable.
User errors print one line (and a hint), never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from kiln import __version__
from kiln.errors import ExitCode, KilnError

# Each command: its module, its function there, and its summary for
# `kiln --help` (the first sentence of its docstring; tests/test_cli.py
# checks they agree). A module is imported only when one of its commands
# runs: `kiln store put` does not load the build engine, and `kiln --help`
# loads no command module at all.
COMMANDS = {
    "build": ("kiln.cli.build", "build",
              "Build TARGETS (default: every target) of the project's kilnfile.py."),
    "check": ("kiln.cli.check", "check", "Check that results are reproducible."),
    "clean": ("kiln.cli.clean", "clean", "Remove TARGETS' outputs (default: all) from kiln-out/."),
    "doctor": ("kiln.cli.doctor", "doctor",
               "Check what this machine offers Kiln, with fixes for what is missing."),
    "gc": ("kiln.cli.gc", "gc_command", "Delete blobs and cache entries that no root reaches."),
    "log": ("kiln.cli.build", "log",
            "Print the stdout and stderr of TARGET's steps in the last build."),
    "prefetch": ("kiln.cli.fetch", "prefetch",
                 "Download URL into the store and print its digest, to pin in a build file "
                 "as fetch.url(URL, digest=...)."),
    "remote": ("kiln.cli.remote", "remote",
               "The REAPI remote cache and execution engine this machine uses."),
    "root": ("kiln.cli.gc", "root", "Named GC roots: what `kiln gc` never deletes."),
    "server": ("kiln.cli.server", "server", "A resident server that makes builds start warm."),
    "show": ("kiln.cli.build", "show",
             "List TARGET's steps in the last build: keys, inputs, outputs, status."),
    "store": ("kiln.cli.store", "store", "Put content into the store, get it out, check it."),
    "targets": ("kiln.cli.build", "targets_command",
                "List the targets of the project's kilnfile.py with their docstrings."),
    "trace": ("kiln.cli.build", "trace",
              "Write the last build as a Chrome trace (open it in ui.perfetto.dev)."),
    "wasm": ("kiln.cli.wasm", "wasm",
             "Run WebAssembly (WASI preview 1) modules as deterministic actions."),
    "worker": ("kiln.cli.remote", "worker",
               "Run Kiln steps for a REAPI engine's clients, as one of its workers."),
    "why": ("kiln.cli.build", "why",
            "Say why each step of the last build ran instead of being a cache hit."),
}  # fmt: skip


class _Commands(click.Group):
    """The command group, loading each command from ``COMMANDS`` on demand."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        where = COMMANDS.get(name)
        if where is None:
            return None
        module, function, _ = where
        return getattr(importlib.import_module(module), function)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The list of commands, summaries from ``COMMANDS``: no command is loaded."""
        limit = formatter.width - 6 - max(map(len, COMMANDS))
        rows = [
            (name, click.Command(name, help=summary).get_short_help_str(limit))
            for name, (_, _, summary) in sorted(COMMANDS.items())
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


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
